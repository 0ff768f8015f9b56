//! Console administrators: names and argon2id password hashes (the password itself is never
//! stored or logged). Hashing is slow on purpose, so it runs on the blocking thread pool.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use sqlx::Row;

use crate::{Error, Registry, Result, validate};
use shimgate_host::clock;

/// Shortest password accepted for an administrator.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (argon2 takes any length; this bounds the work per sign-in).
const MAX_PASSWORD_BYTES: usize = 1024;

/// A console administrator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Admin {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// The password was generated and shown once: it must be changed at the next sign-in.
    pub one_time: bool,
}

fn admin_from_row(row: &sqlx::any::AnyRow) -> Result<Admin> {
    let one_time: i64 = row.try_get("one_time")?;
    Ok(Admin {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        one_time: one_time != 0,
    })
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

async fn hash(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Error::invalid("password", format!("cannot be hashed: {e}")))
    })
    .await
    .map_err(|e| Error::Corrupt(format!("password hashing task failed: {e}")))?
}

/// True if `password` matches the PHC string `stored`. Unparsable hashes never match.
async fn verify(password: &str, stored: String) -> bool {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), stored.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A valid argon2id hash of a password nobody knows: checked against when the name is unknown,
/// so that a sign-in takes as long for a missing admin as for a wrong password.
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hpbWdhdGVkZWNveXNhbHQ$TU0+pHu1Zr7DbSRv8Xk5ZHyr4mVkn8oYAbr2Bft6yvA";

impl Registry {
    /// Adds an administrator with this password (at least [`MIN_PASSWORD_CHARS`] characters);
    /// `one_time` if it must be changed at the first sign-in. Fails with `Conflict` if the name
    /// is taken.
    pub async fn create_admin(&self, name: &str, password: &str, one_time: bool) -> Result<Admin> {
        validate::name("admin name", name)?;
        check_password(password)?;
        let hashed = hash(password).await?;
        let created_at = clock::now();
        let inserted = sqlx::query(
            "INSERT INTO console_admins (name, password_hash, created_at, one_time) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(&hashed)
        .bind(created_at)
        .bind(i64::from(one_time))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = inserted else {
            return Err(Error::Conflict(format!("admin {name} already exists")));
        };
        Ok(Admin {
            id: row.try_get("id")?,
            name: name.to_owned(),
            created_at,
            one_time,
        })
    }

    /// Replaces an administrator's password (`one_time`: to be changed at the next sign-in).
    /// Fails with `NotFound` if there is no such admin.
    pub async fn set_admin_password(
        &self,
        name: &str,
        password: &str,
        one_time: bool,
    ) -> Result<()> {
        check_password(password)?;
        let hashed = hash(password).await?;
        let changed = sqlx::query(
            "UPDATE console_admins SET password_hash = $2, one_time = $3 WHERE name = $1",
        )
        .bind(name)
        .bind(&hashed)
        .bind(i64::from(one_time))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::not_found("admin", name));
        }
        Ok(())
    }

    /// The administrator called `name` if `password` is theirs; `None` for an unknown name or a
    /// wrong password alike (both take one argon2 verification).
    pub async fn check_admin_password(&self, name: &str, password: &str) -> Result<Option<Admin>> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, name, password_hash, created_at, one_time FROM console_admins \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            verify(password, DECOY_HASH.to_owned()).await;
            return Ok(None);
        };
        let stored: String = row.try_get("password_hash")?;
        if !verify(password, stored).await {
            return Ok(None);
        }
        admin_from_row(&row).map(Some)
    }

    /// Every administrator, oldest first.
    pub async fn list_admins(&self) -> Result<Vec<Admin>> {
        let rows =
            sqlx::query("SELECT id, name, created_at, one_time FROM console_admins ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(admin_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoy_hash_parses() {
        assert!(argon2::PasswordHash::new(DECOY_HASH).is_ok());
    }
}
