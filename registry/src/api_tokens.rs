//! API tokens for `/api/v1`: `sga_<id hex>_<secret hex>`. A token is a secret record
//! (`crate::secret`): the id is public; only the SHA-256 of the secret is stored, compared in
//! constant time; a revoked token stops working at once.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::secret::{self, Credential};
use crate::{Registry, Result, validate};
use shimgate_host::clock;

const PREFIX: &str = "sga_";

/// A freshly created API token. The bearer string exists only here.
#[derive(Clone)]
pub struct IssuedApiToken {
    pub id: [u8; 16],
    pub secret: [u8; 32],
    pub name: String,
}

impl IssuedApiToken {
    pub fn id_hex(&self) -> String {
        secret::id_hex(&self.id)
    }

    /// What a client sends in `Authorization: Bearer ...`.
    pub fn bearer(&self) -> String {
        format!(
            "{PREFIX}{}_{}",
            hex::encode(self.id),
            hex::encode(self.secret)
        )
    }
}

impl std::fmt::Debug for IssuedApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        secret::debug_struct(f, "IssuedApiToken", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

/// An API token as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiTokenRow {
    pub id_hex: String,
    pub name: String,
    pub created_by: String,
    pub created_at: i64,
    pub last_used: Option<i64>,
    pub revoked: bool,
}

fn row_to_token(row: &AnyRow) -> Result<ApiTokenRow> {
    let revoked_at: Option<i64> = row.try_get("revoked_at")?;
    Ok(ApiTokenRow {
        id_hex: row.try_get("id")?,
        name: row.try_get("name")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
        last_used: row.try_get("last_used")?,
        revoked: revoked_at.is_some(),
    })
}

/// Splits a bearer string into id and secret; `None` if it is not one.
fn parse_bearer(bearer: &str) -> Option<([u8; 16], [u8; 32])> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id: [u8; 16] = hex::decode(id).ok()?.try_into().ok()?;
    let secret: [u8; 32] = hex::decode(secret).ok()?.try_into().ok()?;
    Some((id, secret))
}

impl Registry {
    /// Creates an API token labelled `name`.
    pub async fn create_api_token(&self, name: &str, created_by: &str) -> Result<IssuedApiToken> {
        validate::name("API token name", name)?;
        let key = Credential::generate();
        sqlx::query(
            "INSERT INTO api_tokens (id, secret_sha256, name, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.id_hex())
        .bind(key.stored_hash())
        .bind(name)
        .bind(created_by)
        .bind(clock::now())
        .execute(&self.pool)
        .await?;
        let Credential { id, secret } = key;
        Ok(IssuedApiToken {
            id,
            secret,
            name: name.to_owned(),
        })
    }

    /// The token a bearer string stands for, if it is well formed, known, matches and is not
    /// revoked; records its use at `now`. Anything else is `None`, indistinguishably.
    pub async fn check_api_token(&self, bearer: &str, now: i64) -> Result<Option<ApiTokenRow>> {
        let Some((id, secret)) = parse_bearer(bearer.trim()) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, secret_sha256, name, created_by, created_at, last_used, revoked_at \
             FROM api_tokens WHERE id = $1",
        )
        .bind(secret::id_hex(&id))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if !secret::matches(&row, &secret)? {
            return Ok(None);
        }
        let token = row_to_token(&row)?;
        if token.revoked {
            return Ok(None);
        }
        sqlx::query("UPDATE api_tokens SET last_used = $2 WHERE id = $1")
            .bind(&token.id_hex)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(Some(ApiTokenRow {
            last_used: Some(now),
            ..token
        }))
    }

    /// Every API token, newest first.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, name, created_by, created_at, last_used, revoked_at FROM api_tokens \
             ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_token).collect()
    }

    /// Revokes an API token by hex id. Returns false if there is none or it was revoked.
    pub async fn revoke_api_token(&self, id_hex: &str) -> Result<bool> {
        let id_hex = validate::hex("API token id", id_hex.trim(), Some(32))?;
        let changed = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(&id_hex)
        .bind(clock::now())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_round_trip_and_garbage() {
        let t = IssuedApiToken {
            id: [1; 16],
            secret: [2; 32],
            name: "ci".into(),
        };
        assert_eq!(parse_bearer(&t.bearer()), Some(([1; 16], [2; 32])));
        assert!(!format!("{t:?}").contains(&hex::encode([2u8; 32])));
        for bad in [
            "",
            "sga_",
            "sga__",
            "xyz_00_00",
            "sga_zz_zz",
            "sga_0101_0202",
            "sga_é_é",
        ] {
            assert_eq!(parse_bearer(bad), None, "{bad:?}");
        }
    }
}
