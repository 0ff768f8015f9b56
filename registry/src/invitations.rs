//! Invitations: a link with a one-time secret (a secret record, `crate::secret`: only its
//! SHA-256 is stored) that lets whoever holds it name a device and get an enrollment code,
//! without an administrator in the loop.
//! An invitation is for one user, or for a group: then the holder also gives a user name, and
//! that user is created and put in the group. It may be used by up to `max_uses` devices.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::changes::bump;
use crate::secret::{self, Credential};
use crate::{Error, IssuedToken, RedeemError, Registry, Result, validate};
use shimgate_host::clock;

/// Who an invitation is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Invitee {
    /// Devices enroll for this (existing) user.
    User(String),
    /// Each holder names a new user (or a member's), who is put in this group.
    Group(String),
}

/// A request to create an invitation.
#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub invitee: Invitee,
    pub created_by: String,
    /// Unix seconds; the invitation is refused from this moment on.
    pub expires_at: i64,
    /// How many devices may be named with it (at least 1).
    pub uses: u32,
}

/// A freshly created invitation. The secret exists only here.
#[derive(Clone)]
pub struct IssuedInvitation {
    pub id: [u8; 16],
    pub secret: [u8; 32],
    pub expires_at: i64,
}

impl IssuedInvitation {
    pub fn id_hex(&self) -> String {
        secret::id_hex(&self.id)
    }

    /// The secret as the invitation link carries it (lowercase hex).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.secret)
    }
}

impl std::fmt::Debug for IssuedInvitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        secret::debug_struct(f, "IssuedInvitation", &self.id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An invitation as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvitationRow {
    pub id_hex: String,
    pub invitee: Invitee,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: u32,
    pub uses_left: u32,
    pub cancelled: bool,
    /// `expires_at <= now` for the `now` the caller gave.
    pub expired: bool,
}

/// What the holder of an invitation supplies to redeem it.
#[derive(Debug, Clone)]
pub struct Redemption {
    /// The name the device will have (already checked by the caller against the device-name
    /// rules of the wire format; checked here against the registry's).
    pub device_name: String,
    /// The holder's user name: required for a group invitation, ignored for a user one.
    pub user_name: Option<String>,
    /// Unix seconds until which the enrollment code may be used.
    pub token_expires_at: i64,
}

/// The columns `row_to_invitation` reads.
macro_rules! invitation_select {
    () => {
        "SELECT i.id, i.secret_sha256, i.user_id, u.name AS user_name, i.group_name, \
                i.created_by, i.created_at, i.expires_at, i.max_uses, i.uses_left, i.cancelled_at \
         FROM invitations i LEFT JOIN users u ON u.id = i.user_id"
    };
}

fn count(row: &AnyRow, col: &str) -> Result<u32> {
    let v: i64 = row.try_get(col)?;
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("invitation {col} {v}")))
}

fn row_to_invitation(row: &AnyRow, now: i64) -> Result<InvitationRow> {
    let user: Option<String> = row.try_get("user_name")?;
    let group: Option<String> = row.try_get("group_name")?;
    let id_hex: String = row.try_get("id")?;
    let invitee = match (user, group) {
        (Some(u), None) => Invitee::User(u),
        (None, Some(g)) => Invitee::Group(g),
        _ => return Err(Error::Corrupt(format!("invitation {id_hex}: bad invitee"))),
    };
    let expires_at: i64 = row.try_get("expires_at")?;
    let cancelled_at: Option<i64> = row.try_get("cancelled_at")?;
    Ok(InvitationRow {
        id_hex,
        invitee,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        expires_at,
        max_uses: count(row, "max_uses")?,
        uses_left: count(row, "uses_left")?,
        cancelled: cancelled_at.is_some(),
        expired: expires_at <= now,
    })
}

/// Whether an invitation can be used now, and if not, why.
fn usable(inv: &InvitationRow) -> Result<(), RedeemError> {
    if inv.cancelled {
        Err(RedeemError::Cancelled)
    } else if inv.expired {
        Err(RedeemError::Expired)
    } else if inv.uses_left == 0 {
        Err(RedeemError::UsedUp)
    } else {
        Ok(())
    }
}

/// The invitation in `row` (read with `invitation_select!`), if `secret` is its secret and it
/// can still be used at `now`. The secret is checked first: a wrong one reads as `Unknown`.
fn checked(row: &AnyRow, secret: &[u8; 32], now: i64) -> Result<InvitationRow, RedeemError> {
    if !secret::matches(row, secret)? {
        return Err(RedeemError::Unknown);
    }
    let inv = row_to_invitation(row, now)?;
    usable(&inv)?;
    Ok(inv)
}

impl Registry {
    /// Creates an invitation. The user (or group) must exist: `NotFound` otherwise.
    pub async fn create_invitation(&self, n: NewInvitation) -> Result<IssuedInvitation> {
        if n.uses == 0 {
            return Err(Error::invalid("invitation uses", "must be at least 1"));
        }
        let (user_id, group) = match &n.invitee {
            Invitee::User(name) => {
                let user = self
                    .user_by_name(name)
                    .await?
                    .ok_or_else(|| Error::not_found("user", name.as_str()))?;
                (Some(user.id), None)
            }
            Invitee::Group(name) => {
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM user_groups WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?;
                if exists.is_none() {
                    return Err(Error::not_found("group", name.as_str()));
                }
                (None, Some(name.clone()))
            }
        };
        let key = Credential::generate();
        sqlx::query(
            "INSERT INTO invitations (id, secret_sha256, user_id, group_name, created_by, \
             created_at, expires_at, max_uses, uses_left) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(key.id_hex())
        .bind(key.stored_hash())
        .bind(user_id)
        .bind(group)
        .bind(&n.created_by)
        .bind(clock::now())
        .bind(n.expires_at)
        .bind(i64::from(n.uses))
        .execute(&self.pool)
        .await?;
        let Credential { id, secret } = key;
        Ok(IssuedInvitation {
            id,
            secret,
            expires_at: n.expires_at,
        })
    }

    /// The invitation, if `secret` is its secret and it can still be used at `now`. A wrong
    /// secret reads as `Unknown`, like a missing invitation.
    pub async fn check_invitation(
        &self,
        id: &[u8; 16],
        secret: &[u8; 32],
        now: i64,
    ) -> Result<InvitationRow, RedeemError> {
        let row = sqlx::query(concat!(invitation_select!(), " WHERE i.id = $1"))
            .bind(secret::id_hex(id))
            .fetch_optional(&self.pool)
            .await?
            .ok_or(RedeemError::Unknown)?;
        checked(&row, secret, now)
    }

    /// Uses an invitation once: checks it, creates (for a group invitation) the user and their
    /// membership, and issues a one-use enrollment token that names the device. Atomic: the
    /// last use cannot be taken twice, and a refusal changes nothing.
    pub async fn redeem_invitation(
        &self,
        id: &[u8; 16],
        secret: &[u8; 32],
        r: Redemption,
        now: i64,
    ) -> Result<IssuedToken, RedeemError> {
        validate::name("device name", &r.device_name)?;
        let id_hex = secret::id_hex(id);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(invitation_select!(), " WHERE i.id = $1"))
            .bind(&id_hex)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(RedeemError::Unknown)?;
        let inv = checked(&row, secret, now)?;
        let (user_id, user_name): (i64, String) = match &inv.invitee {
            Invitee::User(name) => (row.try_get("user_id")?, name.clone()),
            Invitee::Group(group) => {
                let name = r.user_name.as_deref().unwrap_or_default();
                validate::name("user name", name)?;
                // Membership changes what the gateways cached: bump first, as everywhere.
                bump(&mut tx).await?;
                let existing: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM users WHERE name = $1")
                        .bind(name)
                        .fetch_optional(&mut *tx)
                        .await?;
                let user_id = match existing {
                    // Someone else's name would hand out their rights: only a member of the
                    // invited group may be named again.
                    Some(uid) => {
                        let member: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM group_members m JOIN user_groups g \
                             ON g.id = m.group_id WHERE g.name = $1 AND m.user_id = $2",
                        )
                        .bind(group)
                        .bind(uid)
                        .fetch_one(&mut *tx)
                        .await?;
                        if member == 0 {
                            return Err(RedeemError::Db(Error::Conflict(format!(
                                "the user name {name} is taken: choose another"
                            ))));
                        }
                        uid
                    }
                    None => {
                        let uid: i64 = sqlx::query_scalar(
                            "INSERT INTO users (name, created_at) VALUES ($1, $2) RETURNING id",
                        )
                        .bind(name)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO group_members (group_id, user_id, created_at) \
                             SELECT id, $2, $3 FROM user_groups WHERE name = $1",
                        )
                        .bind(group)
                        .bind(uid)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        uid
                    }
                };
                (user_id, name.to_owned())
            }
        };
        let consumed = sqlx::query(
            "UPDATE invitations SET uses_left = uses_left - 1 \
             WHERE id = $1 AND uses_left > 0 AND expires_at > $2 AND cancelled_at IS NULL",
        )
        .bind(&id_hex)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if consumed != 1 {
            return Err(RedeemError::UsedUp);
        }
        let token = Credential::generate();
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_sha256, user_id, created_by, created_at, \
             expires_at, uses_left, device_name, invitation_id) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)",
        )
        .bind(token.id_hex())
        .bind(token.stored_hash())
        .bind(user_id)
        .bind(format!("invitation:{id_hex}"))
        .bind(now)
        .bind(r.token_expires_at)
        .bind(&r.device_name)
        .bind(&id_hex)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(IssuedToken::new(token, r.token_expires_at, user_name))
    }

    /// Every invitation, newest first.
    pub async fn list_invitations(&self, now: i64) -> Result<Vec<InvitationRow>> {
        let rows = sqlx::query(concat!(
            invitation_select!(),
            " ORDER BY i.created_at DESC, i.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| row_to_invitation(r, now)).collect()
    }

    /// Cancels an invitation by hex id. Returns false if there is none or it was cancelled.
    pub async fn cancel_invitation(&self, id_hex: &str) -> Result<bool> {
        let id_hex = validate::hex("invitation id", id_hex.trim(), Some(32))?;
        let changed = sqlx::query(
            "UPDATE invitations SET cancelled_at = $2 WHERE id = $1 AND cancelled_at IS NULL",
        )
        .bind(&id_hex)
        .bind(clock::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }
}
