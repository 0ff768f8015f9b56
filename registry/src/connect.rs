//! Opening a registry: telling Postgres URLs from SQLite URLs and paths, and preparing SQLite
//! (created if missing, WAL journal, busy timeout) so a CLI and a running gateway can share it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use crate::{Backend, Error, Registry, Result};

/// How long an SQLite connection waits for another writer (possibly another process).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per registry pool.
const MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a pooled connection, including (re)connecting
/// to a Postgres that went away: sqlx retries refused connections until
/// then. Short, so that with the server down enrollment and console writes
/// answer "unavailable" in seconds (a real outage measured 30 s with 30 s
/// here, and the enrolling client's connection was cut first).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl Registry {
    /// Opens the registry at `url_or_path`:
    /// - `postgres://…` or `postgresql://…`: Postgres;
    /// - `sqlite:…`: an SQLite URL, e.g. `sqlite:///var/lib/shimgate/registry.db?mode=rwc`
    ///   (its `mode` decides whether a missing file is created);
    ///   (`sqlite::memory:` gives a private in-memory registry on a single connection);
    /// - anything else: an SQLite file path, created if missing.
    ///
    /// Does not migrate: call [`Registry::migrate`].
    pub async fn connect(url_or_path: &str) -> Result<Registry> {
        sqlx::any::install_default_drivers();
        if url_or_path.starts_with("postgres://") || url_or_path.starts_with("postgresql://") {
            let pool = pool_options().connect(url_or_path).await?;
            return Ok(Registry {
                pool,
                backend: Backend::Postgres,
                pg_url: Some(Arc::from(url_or_path)),
            });
        }

        // The `Any` pool below can only be given a URL, so a plain path becomes one, and the
        // very same URL configures the file first.
        let url = if url_or_path.starts_with("sqlite:") {
            url_or_path.to_owned()
        } else {
            sqlite_url_for_path(url_or_path)?
        };
        let opts = SqliteConnectOptions::from_str(&url)?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);

        // WAL is a property of the database file: set it once here with the native driver
        // (this also creates the file). A URL cannot carry it.
        let conn = opts.connect().await?;
        conn.close().await?;

        let timeout_ms = SQLITE_BUSY_TIMEOUT.as_millis();
        let mut pool_opts = pool_options();
        if url.contains(":memory:") || url.contains("mode=memory") {
            // Each new connection would open a fresh, empty in-memory database: keep exactly
            // one connection alive for the pool's lifetime.
            pool_opts = pool_opts
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = pool_opts
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    let pragma = format!("PRAGMA busy_timeout = {timeout_ms}");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(pragma))
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Registry {
            pool,
            backend: Backend::Sqlite,
            pg_url: None,
        })
    }
}

/// `sqlite:///abs/path?mode=rwc` for a file path, made absolute and percent-encoded
/// (sqlx's own URL builder leaves `%` alone, which breaks paths containing it).
fn sqlite_url_for_path(path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::invalid("registry location", "empty path"));
    }
    let abs = std::path::absolute(path)
        .map_err(|e| Error::invalid("registry location", format!("{path}: {e}")))?;
    let abs = abs
        .to_str()
        .ok_or_else(|| Error::invalid("registry location", format!("{path}: not valid UTF-8")))?;
    let mut url = String::from("sqlite://");
    for b in abs.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

fn pool_options() -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_absolute_encoded_urls() {
        let url = sqlite_url_for_path("data/reg 1%.db").unwrap_or_default();
        assert!(url.starts_with("sqlite:///"), "{url}");
        assert!(url.ends_with("/data/reg%201%25.db?mode=rwc"), "{url}");
        assert_eq!(
            sqlite_url_for_path("/a/b.db").ok().as_deref(),
            Some("sqlite:///a/b.db?mode=rwc")
        );
        assert!(sqlite_url_for_path("").is_err());
    }
}
