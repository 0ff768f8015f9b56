//! The console's sign-in state, shared by every gateway on the registry:
//! administrators' sessions (keyed by the SHA-256 of the session cookie,
//! which is stored nowhere) and the token buckets that throttle sign-in
//! attempts.

use sqlx::Row;

use crate::{Registry, Result};

/// A signed-in administrator's session, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub admin: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// Signed in with a one-time password not yet replaced.
    pub must_change: bool,
    /// The outcome of the last action (ok, text), taken by the read that
    /// returns it.
    pub flash: Option<(bool, String)>,
}

/// How long sessions live, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Without a request.
    pub idle: i64,
    /// In any case.
    pub lifetime: i64,
}

/// A token bucket: `burst` attempts at once, then one per `every_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub burst: f64,
    pub every_ms: i64,
}

/// Buckets untouched this long are full again and are deleted.
const THROTTLE_FORGET_MS: i64 = 3_600_000;

impl Registry {
    /// Stores a new session under `key` (the cookie's SHA-256, hex), and
    /// deletes the sessions that have lapsed.
    pub async fn create_console_session(
        &self,
        key: &str,
        session: &ConsoleSession,
        now: i64,
        limits: SessionLimits,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE last_at < $1 OR created_at < $2")
            .bind(now - limits.idle)
            .bind(now - limits.lifetime)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (key_sha256, admin, csrf, must_change, created_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(key)
        .bind(&session.admin)
        .bind(&session.csrf)
        .bind(i64::from(session.must_change))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live session stored under `key`, its idle clock restarted and
    /// its flash message taken; `None` (and the row deleted) once lapsed.
    pub async fn console_session(
        &self,
        key: &str,
        now: i64,
        limits: SessionLimits,
    ) -> Result<Option<ConsoleSession>> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT admin, csrf, must_change, created_at, last_at, flash_ok, flash_text \
             FROM console_sessions WHERE key_sha256 = $1",
        )
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created: i64 = row.try_get("created_at")?;
        let last: i64 = row.try_get("last_at")?;
        if now - last > limits.idle || now - created > limits.lifetime {
            sqlx::query("DELETE FROM console_sessions WHERE key_sha256 = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query(
            "UPDATE console_sessions SET last_at = $2, flash_ok = NULL, flash_text = NULL \
             WHERE key_sha256 = $1",
        )
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let flash_ok: Option<i64> = row.try_get("flash_ok")?;
        let flash_text: Option<String> = row.try_get("flash_text")?;
        Ok(Some(ConsoleSession {
            admin: row.try_get("admin")?,
            csrf: row.try_get("csrf")?,
            must_change: row.try_get::<i64, _>("must_change")? != 0,
            flash: flash_ok.zip(flash_text).map(|(ok, text)| (ok != 0, text)),
        }))
    }

    /// Leaves a message for the session's next page.
    pub async fn set_console_flash(&self, key: &str, ok: bool, text: &str) -> Result<()> {
        sqlx::query(
            "UPDATE console_sessions SET flash_ok = $2, flash_text = $3 WHERE key_sha256 = $1",
        )
        .bind(key)
        .bind(i64::from(ok))
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The session's administrator has replaced their one-time password.
    pub async fn console_password_changed(&self, key: &str) -> Result<()> {
        sqlx::query("UPDATE console_sessions SET must_change = 0 WHERE key_sha256 = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a session (sign-out, or a new sign-in from the same browser).
    pub async fn end_console_session(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE key_sha256 = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes one attempt from the bucket `name` (refilled since its last
    /// use, at most to `bucket.burst`); false when it had none left. One
    /// statement, so attempts on several gateways at once each count. A
    /// refused attempt still takes what refilled, down to one attempt's
    /// debt, so that hammering does not keep a bucket at the edge.
    pub async fn take_attempt(&self, name: &str, bucket: Bucket, now_ms: i64) -> Result<bool> {
        let per_ms = 1.0 / bucket.every_ms.max(1) as f64;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM console_throttle WHERE at_ms < $1")
            .bind(now_ms - THROTTLE_FORGET_MS)
            .execute(&mut *tx)
            .await?;
        let left: f64 = sqlx::query_scalar(
            "INSERT INTO console_throttle (name, tokens, at_ms) VALUES ($1, $2 - 1.0, $3) \
             ON CONFLICT (name) DO UPDATE SET \
               tokens = CASE \
                 WHEN console_throttle.tokens + ($3 - console_throttle.at_ms) * $4 >= $2 THEN $2 - 1.0 \
                 WHEN console_throttle.tokens + ($3 - console_throttle.at_ms) * $4 - 1.0 < -1.0 THEN -1.0 \
                 ELSE console_throttle.tokens + ($3 - console_throttle.at_ms) * $4 - 1.0 END, \
               at_ms = $3 \
             RETURNING tokens",
        )
        .bind(name)
        .bind(bucket.burst)
        .bind(now_ms)
        .bind(per_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(left >= 0.0)
    }
}
