//! Devices: unique names, VPN addresses from 100.64.0.0/10, revocation, last-seen times.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::changes::bump;
use crate::{Error, Registry, Result, validate};
use shimgate_wire::identity::VpnRange;

/// The setting that makes new devices wait for approval.
const REQUIRE_APPROVAL: &str = "require_approval";
/// The setting naming the deployment's VPN range; absent means
/// [`VpnRange::DEFAULT`] (registries from before the range could be chosen).
const VPN_RANGE: &str = "vpn_range";

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Revoked,
    /// Enrolled while new devices needed approval; not yet approved.
    Pending,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub id: i64,
    pub name: String,
    pub user_id: i64,
    pub user_name: String,
    pub vpn_ip: Ipv4Addr,
    pub status: DeviceStatus,
    pub created_at: i64,
    pub last_seen: Option<i64>,
    /// The gateway it last connected to (several may share the registry).
    pub last_gateway: Option<String>,
}

/// A device as listed, with the expiry of its latest certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    pub device: Device,
    /// The largest `not_after` of the device's certificates, if it has any.
    pub cert_not_after: Option<i64>,
}

/// The columns `device_from_row` reads, from `devices d JOIN users u`.
macro_rules! device_select {
    () => {
        "SELECT d.id, d.name, d.user_id, u.name AS user_name, d.vpn_ip, d.created_at, \
                d.last_seen, d.last_gateway, d.revoked_at, d.approval_requested_at \
         FROM devices d JOIN users u ON u.id = d.user_id"
    };
}

/// The first and last address of `range` a device may get, as stored.
fn host_bounds(range: VpnRange) -> (i64, i64) {
    let (first, last) = range.hosts();
    (i64::from(u32::from(first)), i64::from(u32::from(last)))
}

/// The value of setting `name`, if set.
async fn setting(conn: &mut AnyConnection, name: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

/// The VPN range as the registry holds it.
async fn stored_vpn_range(conn: &mut AnyConnection) -> Result<Option<VpnRange>> {
    setting(conn, VPN_RANGE)
        .await?
        .map(|v| {
            v.parse()
                .map_err(|e| Error::Corrupt(format!("setting {VPN_RANGE}: {e}")))
        })
        .transpose()
}

pub(crate) fn ip_from_db(v: i64) -> Result<Ipv4Addr> {
    u32::try_from(v)
        .map(Ipv4Addr::from)
        .map_err(|_| Error::Corrupt(format!("VPN address {v} out of range")))
}

fn device_from_row(row: &AnyRow) -> Result<Device> {
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    let pending: Option<i64> = row.try_get("approval_requested_at")?;
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        user_id: row.try_get("user_id")?,
        user_name: row.try_get("user_name")?,
        vpn_ip: ip_from_db(row.try_get("vpn_ip")?)?,
        status: match (revoked_at, pending) {
            (Some(_), _) => DeviceStatus::Revoked,
            (None, Some(_)) => DeviceStatus::Pending,
            (None, None) => DeviceStatus::Active,
        },
        created_at: row.try_get("created_at")?,
        last_seen: row.try_get("last_seen")?,
        last_gateway: row.try_get("last_gateway")?,
    })
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `wanted` if free, else the first free of `wanted-2`, `wanted-3`, ...
async fn free_name(conn: &mut AnyConnection, wanted: &str) -> Result<String> {
    let taken: HashSet<String> =
        sqlx::query_scalar("SELECT name FROM devices WHERE name = $1 OR name LIKE $2 ESCAPE '\\'")
            .bind(wanted)
            .bind(format!("{}-%", like_escape(wanted)))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    if !taken.contains(wanted) {
        return Ok(wanted.to_owned());
    }
    // At most taken.len() candidates can be taken, so this finds one.
    (2..=taken.len() + 2)
        .map(|n| format!("{wanted}-{n}"))
        .find(|name| !taken.contains(name))
        .ok_or_else(|| Error::Conflict(format!("no free device name like {wanted}")))
}

/// The lowest free address in `range` (as an integer).
async fn free_ip(conn: &mut AnyConnection, range: VpnRange) -> Result<i64> {
    let (first, last) = host_bounds(range);
    let first_taken: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE vpn_ip = $1")
        .bind(first)
        .fetch_one(&mut *conn)
        .await?;
    if first_taken == 0 {
        return Ok(first);
    }
    // The lowest taken address whose successor is free ends the first run of taken ones.
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(d.vpn_ip) + 1 FROM devices d \
         WHERE d.vpn_ip >= $1 AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.vpn_ip = d.vpn_ip + 1)",
    )
    .bind(first)
    .fetch_one(&mut *conn)
    .await?;
    match next {
        Some(ip) if (first..=last).contains(&ip) => Ok(ip),
        _ => Err(Error::AddressPoolExhausted(range)),
    }
}

impl Registry {
    /// Creates a device for `user_id` named `wanted_name`, or `wanted_name-2`, `-3`, ... if
    /// taken, with the lowest free VPN address. Bumps the change sequence. While the
    /// `require_approval` setting is on, the device starts [`DeviceStatus::Pending`].
    pub async fn create_device(&self, user_id: i64, wanted_name: &str, now: i64) -> Result<Device> {
        validate::name("device name", wanted_name)?;
        let mut tx = self.begin_write().await?;
        // First, so concurrent creations queue here and see each other's names and addresses.
        bump(&mut tx).await?;
        let user_name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("user id", user_id.to_string()))?;
        let name = free_name(&mut tx, wanted_name).await?;
        let range = stored_vpn_range(&mut tx).await?.unwrap_or_default();
        let ip = free_ip(&mut tx, range).await?;
        // Read in the same transaction, so a device never slips past a setting just turned on.
        let approval = setting(&mut tx, REQUIRE_APPROVAL).await?;
        let pending = (approval.as_deref() == Some("true")).then_some(now);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO devices (name, user_id, vpn_ip, created_at, approval_requested_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&name)
        .bind(user_id)
        .bind(ip)
        .bind(now)
        .bind(pending)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Device {
            id,
            name,
            user_id,
            user_name,
            vpn_ip: ip_from_db(ip)?,
            status: if pending.is_some() {
                DeviceStatus::Pending
            } else {
                DeviceStatus::Active
            },
            created_at: now,
            last_seen: None,
            last_gateway: None,
        })
    }

    /// The device called `name`, if any.
    pub async fn device_by_name(&self, name: &str) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(device_select!(), " WHERE d.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// The device with this id, if any.
    pub async fn device_by_id(&self, id: i64) -> Result<Option<Device>> {
        let row = sqlx::query(concat!(device_select!(), " WHERE d.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Every device, oldest first, with its latest certificate expiry.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT d.id, d.name, d.user_id, u.name AS user_name, d.vpn_ip, d.created_at, \
                    d.last_seen, d.last_gateway, d.revoked_at, d.approval_requested_at, \
                    (SELECT MAX(c.not_after) FROM certificates c WHERE c.device_id = d.id) \
                        AS cert_not_after \
             FROM devices d JOIN users u ON u.id = d.user_id ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeviceRow {
                    device: device_from_row(row)?,
                    cert_not_after: row.try_get("cert_not_after")?,
                })
            })
            .collect()
    }

    /// Revokes the device called `name` and every certificate it has, bumps the change
    /// sequence (which notifies listeners on Postgres). Revoking again keeps the first
    /// revocation time. Fails with `NotFound` if there is no such device.
    pub async fn revoke_device(&self, name: &str, now: i64) -> Result<Device> {
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let id: i64 = sqlx::query_scalar(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1 RETURNING id",
        )
        .bind(name)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("device", name))?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(concat!(device_select!(), " WHERE d.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let device = device_from_row(&row)?;
        tx.commit().await?;
        Ok(device)
    }

    /// Lifts a device's revocation and restores the certificates that were revoked with it
    /// (those still unexpired), bumping the change sequence so gateways let it back in. Fails
    /// with `NotFound` if there is no such device; a device that is not revoked is unchanged.
    pub async fn reenable_device(&self, name: &str, now: i64) -> Result<Device> {
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let row = sqlx::query("SELECT id, revoked_at FROM devices WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("device", name))?;
        let id: i64 = row.try_get("id")?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        if let Some(at) = revoked_at {
            // Only what the device revocation itself revoked comes back.
            sqlx::query(
                "UPDATE certificates SET revoked_at = NULL \
                 WHERE device_id = $1 AND revoked_at = $2 AND not_after > $3",
            )
            .bind(id)
            .bind(at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE devices SET revoked_at = NULL WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(concat!(device_select!(), " WHERE d.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let device = device_from_row(&row)?;
        tx.commit().await?;
        Ok(device)
    }

    /// Approves a device that enrolled while approval was required, and bumps the change
    /// sequence so gateways let it in. Approving an approved device changes nothing. Fails with
    /// `NotFound` if there is no such device.
    pub async fn approve_device(&self, name: &str) -> Result<Device> {
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let id: i64 = sqlx::query_scalar(
            "UPDATE devices SET approval_requested_at = NULL WHERE name = $1 RETURNING id",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("device", name))?;
        let row = sqlx::query(concat!(device_select!(), " WHERE d.id = $1"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let device = device_from_row(&row)?;
        tx.commit().await?;
        Ok(device)
    }

    /// Whether new devices wait for an administrator's approval.
    pub async fn require_approval(&self) -> Result<bool> {
        let mut conn = self.pool.acquire().await?;
        Ok(setting(&mut conn, REQUIRE_APPROVAL).await?.as_deref() == Some("true"))
    }

    /// Turns the approval requirement for new devices on or off (devices already enrolled keep
    /// their state).
    pub async fn set_require_approval(&self, on: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(REQUIRE_APPROVAL)
        .bind(if on { "true" } else { "false" })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The deployment's VPN range.
    pub async fn vpn_range(&self) -> Result<VpnRange> {
        let mut conn = self.pool.acquire().await?;
        Ok(stored_vpn_range(&mut conn).await?.unwrap_or_default())
    }

    /// Makes `range` the deployment's VPN range, or checks that it already
    /// is: every gateway on one registry claims the range its configuration
    /// names as it starts, and the first claim decides. Refused when the
    /// registry holds another range, or (on a registry from before the range
    /// could be chosen) when an enrolled device's address lies outside it.
    pub async fn claim_vpn_range(&self, range: VpnRange) -> Result<()> {
        let mut tx = self.begin_write().await?;
        match stored_vpn_range(&mut tx).await? {
            Some(held) if held == range => return Ok(()),
            Some(held) => {
                return Err(Error::Conflict(format!(
                    "the registry's VPN range is {held} and this gateway is configured with {range}: \
                     every gateway of a deployment uses one range (set vpn_range = \"{held}\" in gateway.toml)"
                )));
            }
            None => {}
        }
        let (first, last) = host_bounds(range);
        let outside: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE vpn_ip < $1 OR vpn_ip > $2")
                .bind(first)
                .bind(last)
                .fetch_one(&mut *tx)
                .await?;
        if outside > 0 {
            return Err(Error::Conflict(format!(
                "{outside} enrolled device(s) have VPN addresses outside {range}; \
                 the range of a deployment with devices cannot change (keep vpn_range = \"{}\")",
                VpnRange::DEFAULT
            )));
        }
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
            .bind(VPN_RANGE)
            .bind(range.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that the device was just seen, connected to `gateway`. Does not bump the change
    /// sequence.
    pub async fn touch_device(&self, device_id: i64, now: i64, gateway: &str) -> Result<()> {
        let changed =
            sqlx::query("UPDATE devices SET last_seen = $2, last_gateway = $3 WHERE id = $1")
                .bind(device_id)
                .bind(now)
                .bind(gateway)
                .execute(&self.pool)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(Error::not_found("device id", device_id.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_bounds() {
        let (first, last) = host_bounds(VpnRange::DEFAULT);
        assert_eq!(ip_from_db(first).ok(), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(
            ip_from_db(last).ok(),
            Some(Ipv4Addr::new(100, 127, 255, 253))
        );
        assert!(ip_from_db(-1).is_err());
        assert!(ip_from_db(1 << 32).is_err());
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape("a_b%c\\d"), "a\\_b\\%c\\\\d");
        assert_eq!(like_escape("laptop"), "laptop");
    }
}
