//! Enrollment tokens: issuing, redeeming (one use at a time, atomically), listing, cancelling.
//! A token is a secret record (`crate::secret`): only the SHA-256 of its secret is stored; its
//! id is public. Its text form is the enrollment code (`shimgate_wire::code`).

use sqlx::Row;

use crate::secret::{self, Credential};
use crate::{Device, Error, RedeemError, Registry, Result};
use shimgate_host::clock;

/// A request to issue an enrollment token.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The user the enrolling device will belong to (must exist).
    pub user: String,
    /// Who issued it (for the listing and audit).
    pub created_by: String,
    /// Unix seconds; the token is refused from this moment on.
    pub expires_at: i64,
    /// How many devices may enroll with it (at least 1).
    pub uses: u32,
}

/// A freshly issued token. The secret exists only here: the registry keeps its hash.
#[derive(Clone)]
pub struct IssuedToken {
    pub id: [u8; 16],
    pub secret: [u8; 32],
    pub expires_at: i64,
    pub user: String,
}

impl IssuedToken {
    /// The id as stored and listed (lowercase hex).
    pub fn id_hex(&self) -> String {
        secret::id_hex(&self.id)
    }

    /// The token issued for a credential just stored.
    pub(crate) fn new(key: Credential, expires_at: i64, user: String) -> Self {
        let Credential { id, secret } = key;
        Self {
            id,
            secret,
            expires_at,
            user,
        }
    }
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        secret::debug_struct(f, "IssuedToken", &self.id)
            .field("expires_at", &self.expires_at)
            .field("user", &self.user)
            .finish()
    }
}

/// What a successful redemption entitles: enrolling a device for this user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenGrant {
    pub user_id: i64,
    pub user_name: String,
    pub token_id_hex: String,
    /// The device name the token fixes (tokens made by invitations), overriding the one the
    /// device asks for.
    pub device_name: Option<String>,
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub id_hex: String,
    pub user: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
    pub cancelled: bool,
    /// `expires_at <= now` for the `now` given to `list_tokens`.
    pub expired: bool,
}

impl Registry {
    /// Issues a token with a random id and secret. Fails with `NotFound` if the user does not
    /// exist and `Invalid` if `uses` is 0.
    pub async fn create_token(&self, t: NewToken) -> Result<IssuedToken> {
        if t.uses == 0 {
            return Err(Error::invalid("token uses", "must be at least 1"));
        }
        let key = Credential::generate();
        let inserted = sqlx::query(
            "INSERT INTO enrollment_tokens \
             (id, secret_sha256, user_id, created_by, created_at, expires_at, uses_left) \
             SELECT $1, $2, id, $3, $4, $5, $6 FROM users WHERE name = $7",
        )
        .bind(key.id_hex())
        .bind(key.stored_hash())
        .bind(&t.created_by)
        .bind(clock::now())
        .bind(t.expires_at)
        .bind(i64::from(t.uses))
        .bind(&t.user)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::not_found("user", t.user));
        }
        Ok(IssuedToken::new(key, t.expires_at, t.user))
    }

    /// Consumes one use of a token, atomically: concurrent redemptions of the last use cannot
    /// both succeed. A wrong secret is reported as `Unknown`, like a missing token, and is
    /// checked (in constant time) before anything else about the token is revealed.
    pub async fn redeem_token(
        &self,
        id: &[u8; 16],
        secret: &[u8; 32],
        now: i64,
    ) -> Result<TokenGrant, RedeemError> {
        let id_hex = secret::id_hex(id);
        let row = sqlx::query(
            "SELECT t.secret_sha256, t.user_id, u.name AS user_name, t.device_name \
             FROM enrollment_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
        )
        .bind(&id_hex)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(RedeemError::Unknown);
        };
        if !secret::matches(&row, secret)? {
            return Err(RedeemError::Unknown);
        }
        let grant = TokenGrant {
            user_id: row.try_get("user_id")?,
            user_name: row.try_get("user_name")?,
            token_id_hex: id_hex,
            device_name: row.try_get("device_name")?,
        };

        let consumed = sqlx::query(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE id = $1 AND uses_left > 0 AND expires_at > $2 AND cancelled_at IS NULL",
        )
        .bind(&grant.token_id_hex)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if consumed == 1 {
            return Ok(grant);
        }

        // Refused: say why, from the state as it is now.
        let state = sqlx::query(
            "SELECT uses_left, expires_at, cancelled_at FROM enrollment_tokens WHERE id = $1",
        )
        .bind(&grant.token_id_hex)
        .fetch_optional(&self.pool)
        .await?;
        let Some(state) = state else {
            return Err(RedeemError::Unknown);
        };
        let cancelled_at: Option<i64> = state.try_get("cancelled_at")?;
        let expires_at: i64 = state.try_get("expires_at")?;
        let uses_left: i64 = state.try_get("uses_left")?;
        Err(if cancelled_at.is_some() {
            RedeemError::Cancelled
        } else if expires_at <= now {
            RedeemError::Expired
        } else if uses_left <= 0 {
            RedeemError::UsedUp
        } else {
            // Consistent state says redeemable, yet the update matched nothing.
            RedeemError::Db(Error::Corrupt(format!(
                "token {} could not be consumed",
                grant.token_id_hex
            )))
        })
    }

    /// Every token, newest first, with whether it had expired at `now`.
    pub async fn list_tokens(&self, now: i64) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT t.id, u.name AS user_name, t.created_by, t.created_at, t.expires_at, \
                    t.uses_left, t.cancelled_at \
             FROM enrollment_tokens t JOIN users u ON u.id = t.user_id \
             ORDER BY t.created_at DESC, t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let expires_at: i64 = row.try_get("expires_at")?;
                let uses_left: i64 = row.try_get("uses_left")?;
                let cancelled_at: Option<i64> = row.try_get("cancelled_at")?;
                Ok(TokenRow {
                    id_hex: row.try_get("id")?,
                    user: row.try_get("user_name")?,
                    created_by: row.try_get("created_by")?,
                    created_at: row.try_get("created_at")?,
                    expires_at,
                    uses_left: u32::try_from(uses_left)
                        .map_err(|_| Error::Corrupt(format!("token uses_left {uses_left}")))?,
                    cancelled: cancelled_at.is_some(),
                    expired: expires_at <= now,
                })
            })
            .collect()
    }

    /// Cancels a token by its hex id. Returns false if there is no such token or it was
    /// already cancelled.
    pub async fn cancel_token(&self, id_hex: &str) -> Result<bool> {
        let id_hex = id_hex.trim().to_ascii_lowercase();
        let changed = sqlx::query(
            "UPDATE enrollment_tokens SET cancelled_at = $2 WHERE id = $1 AND cancelled_at IS NULL",
        )
        .bind(&id_hex)
        .bind(clock::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }

    /// Records that `device_id` enrolled with this token (the latest one, for a token with
    /// several uses), so that whoever made the code can see the result.
    pub async fn link_token_device(&self, token_id_hex: &str, device_id: i64) -> Result<()> {
        sqlx::query("UPDATE enrollment_tokens SET device_id = $2 WHERE id = $1")
            .bind(token_id_hex)
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The device that enrolled with this token, if one has.
    pub async fn token_device(&self, token_id_hex: &str) -> Result<Option<Device>> {
        let device_id: Option<Option<i64>> =
            sqlx::query_scalar("SELECT device_id FROM enrollment_tokens WHERE id = $1")
                .bind(token_id_hex)
                .fetch_optional(&self.pool)
                .await?;
        match device_id.flatten() {
            Some(id) => self.device_by_id(id).await,
            None => Ok(None),
        }
    }
}
