//! Device certificates: recording issued ones and the revocation view gateways cache.

use std::net::Ipv4Addr;

use sqlx::Row;

use crate::changes::bump;
use crate::devices::ip_from_db;
use crate::{Error, Registry, Result, validate};

/// A certificate the gateway CA just issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    pub device_id: i64,
    /// The certificate serial number, hex (stored lowercase).
    pub serial_hex: String,
    /// SHA-256 of the certificate's DER, 64 hex digits (stored lowercase).
    pub fingerprint_hex: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds; recorded as the issue time.
    pub now: i64,
}

/// What a gateway needs to accept or refuse a presented certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertState {
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint_hex: String,
    pub serial_hex: String,
    pub device_id: i64,
    pub device_name: String,
    pub user_id: i64,
    pub user_name: String,
    /// The user's groups, sorted.
    pub groups: Vec<String>,
    pub vpn_ip: Ipv4Addr,
    pub not_after: i64,
    /// The certificate or its device is revoked, or the device still awaits approval: either
    /// way the gateway refuses it.
    pub revoked: bool,
    /// A newer certificate of the device has been used: refused for new connections.
    pub superseded: bool,
}

impl Registry {
    /// Records an issued certificate and bumps the change sequence. Fails with `NotFound` for
    /// an unknown device, `DeviceRevoked` for a revoked one, `Conflict` if the fingerprint is
    /// already recorded.
    pub async fn record_certificate(&self, c: NewCertificate) -> Result<()> {
        let serial = validate::hex("certificate serial", &c.serial_hex, None)?;
        let fingerprint = validate::hex("certificate fingerprint", &c.fingerprint_hex, Some(64))?;
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let device = sqlx::query("SELECT name, revoked_at FROM devices WHERE id = $1")
            .bind(c.device_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("device id", c.device_id.to_string()))?;
        let revoked_at: Option<i64> = device.try_get("revoked_at")?;
        if revoked_at.is_some() {
            let name: String = device.try_get("name")?;
            return Err(Error::DeviceRevoked(name));
        }
        let inserted = sqlx::query(
            "INSERT INTO certificates (device_id, serial_hex, fingerprint_sha256, not_after, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.device_id)
        .bind(&serial)
        .bind(&fingerprint)
        .bind(c.not_after)
        .bind(c.now)
        .execute(&mut *tx)
        .await
        .map_err(Error::from);
        match inserted {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict(format!(
                "certificate {fingerprint} is already recorded"
            ))),
            Err(e) => Err(e),
            Ok(_) => {
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// Every certificate still valid at `now` (`not_after > now`), revoked or not, with its
    /// device, user and groups.
    pub async fn certificate_states(&self, now: i64) -> Result<Vec<CertState>> {
        let rows = sqlx::query(
            "SELECT c.fingerprint_sha256, c.serial_hex, c.not_after, c.revoked_at, c.superseded_at, \
                    d.id AS device_id, d.name AS device_name, d.vpn_ip, \
                    d.revoked_at AS device_revoked_at, d.approval_requested_at, \
                    u.id AS user_id, u.name AS user_name \
             FROM certificates c \
             JOIN devices d ON d.id = c.device_id \
             JOIN users u ON u.id = d.user_id \
             WHERE c.not_after > $1 ORDER BY c.id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let groups = self.all_memberships().await?;
        rows.iter()
            .map(|row| {
                let user_id: i64 = row.try_get("user_id")?;
                let cert_revoked: Option<i64> = row.try_get("revoked_at")?;
                let device_revoked: Option<i64> = row.try_get("device_revoked_at")?;
                let pending: Option<i64> = row.try_get("approval_requested_at")?;
                let superseded: Option<i64> = row.try_get("superseded_at")?;
                Ok(CertState {
                    fingerprint_hex: row.try_get("fingerprint_sha256")?,
                    serial_hex: row.try_get("serial_hex")?,
                    device_id: row.try_get("device_id")?,
                    device_name: row.try_get("device_name")?,
                    user_id,
                    user_name: row.try_get("user_name")?,
                    groups: groups.get(&user_id).cloned().unwrap_or_default(),
                    vpn_ip: ip_from_db(row.try_get("vpn_ip")?)?,
                    not_after: row.try_get("not_after")?,
                    revoked: cert_revoked.is_some()
                        || device_revoked.is_some()
                        || pending.is_some(),
                    superseded: superseded.is_some(),
                })
            })
            .collect()
    }

    /// The device presenting certificate `fingerprint_hex` has used it: its certificates issued
    /// before it are superseded (refused for new connections). Bumps the change sequence when
    /// that changed anything; returns how many were superseded.
    pub async fn supersede_older_certificates(
        &self,
        fingerprint_hex: &str,
        now: i64,
    ) -> Result<u64> {
        let fingerprint = validate::hex("certificate fingerprint", fingerprint_hex, Some(64))?;
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE certificates SET superseded_at = $2 \
             WHERE superseded_at IS NULL \
               AND device_id = (SELECT device_id FROM certificates WHERE fingerprint_sha256 = $1) \
               AND id < (SELECT id FROM certificates WHERE fingerprint_sha256 = $1)",
        )
        .bind(&fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        bump(&mut tx).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Revokes one certificate by fingerprint (the device stays active) and bumps the change
    /// sequence. Returns false if there is no such unrevoked certificate.
    pub async fn revoke_certificate(&self, fingerprint_hex: &str, now: i64) -> Result<bool> {
        let fingerprint = validate::hex("certificate fingerprint", fingerprint_hex, Some(64))?;
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let changed = sqlx::query(
            "UPDATE certificates SET revoked_at = $2 WHERE fingerprint_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&fingerprint)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}
