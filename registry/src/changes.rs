//! The change sequence and change notification that let gateways refresh their caches.
//!
//! Every transaction that changes devices, certificates, policy or group membership bumps the
//! single `change_seq` row *first*. That also serializes those transactions (on Postgres the
//! row lock is held until commit; on SQLite writes are serialized anyway). On Postgres a
//! trigger on that row sends `NOTIFY shimgate_changes, '<seq>'`, delivered at commit.

use sqlx::AnyConnection;
use sqlx::postgres::PgListener;

use crate::{Error, Registry, Result};

/// The Postgres NOTIFY channel (see the trigger in `migrations/postgres`).
pub const CHANGE_CHANNEL: &str = "shimgate_changes";

/// Bumps the change sequence inside the caller's transaction and returns the new value.
pub(crate) async fn bump(conn: &mut AnyConnection) -> Result<i64> {
    let seq: i64 =
        sqlx::query_scalar("UPDATE change_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| Error::Corrupt("the change_seq row is missing".into()))?;
    Ok(seq)
}

impl Registry {
    /// The current change sequence number. It only grows; every change to devices,
    /// certificates, policy rules or group membership increases it.
    pub async fn change_seq(&self) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM change_seq WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        seq.ok_or_else(|| Error::Corrupt("the change_seq row is missing".into()))
    }

    /// Postgres: a listener on the change channel (its own connection, outside the pool).
    /// SQLite: `Ok(None)`; poll [`Registry::change_seq`] instead.
    pub async fn subscribe(&self) -> Result<Option<Changes>> {
        let Some(url) = &self.pg_url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(Some(Changes { listener }))
    }
}

/// A subscription to registry changes (Postgres only).
pub struct Changes {
    listener: PgListener,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Changes {
    /// Waits until something changed. Notifications that arrived together are coalesced into
    /// one return. Returns `Err` when the listener's connection broke (changes may have been
    /// missed: reload everything); calling `next` again reconnects and listens again.
    pub async fn next(&mut self) -> Result<()> {
        match self.listener.try_recv().await? {
            Some(_) => {
                while self.listener.next_buffered().is_some() {}
                Ok(())
            }
            None => Err(Error::ListenerLost),
        }
    }
}
