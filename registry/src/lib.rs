//! The shimgate registry: users, groups, enrollment tokens, devices and their VPN addresses,
//! certificates, policy rules, the audit log, change notification for gateways, the gateways'
//! heartbeats, and what the web console needs: administrators, their sessions and sign-in
//! throttles, invitations and API tokens.
//!
//! One [`Registry`] works over Postgres (production, several gateways sharing one database) or
//! SQLite (the embedded default). The same runtime-checked queries run on both through the sqlx
//! `Any` driver; only the DDL in `migrations/postgres` and `migrations/sqlite` differs. Times are
//! `i64` unix seconds, ids are `i64`.
//!
//! Gateways keep what they need in memory and refresh it when [`Registry::change_seq`] moves
//! (SQLite: poll it) or when [`Registry::subscribe`] reports a change (Postgres LISTEN/NOTIFY).
//! To avoid missing a change, read `change_seq` *before* loading a snapshot such as
//! [`Registry::certificate_states`].

mod admins;
mod api_tokens;
mod audit;
mod certs;
mod changes;
mod connect;
mod console_state;
mod devices;
mod error;
mod gateways;
mod invitations;
mod policy;
mod rules;
mod secret;
mod tokens;
mod users;
mod validate;

use std::sync::Arc;

use sqlx::AnyPool;
use sqlx::{Any, Transaction};

pub use admins::{Admin, MIN_PASSWORD_CHARS};
pub use api_tokens::{ApiTokenRow, IssuedApiToken};
pub use audit::{AuditQuery, AuditRow, MAX_PAGE as MAX_AUDIT_PAGE, NewAudit};
pub use certs::{CertState, NewCertificate};
pub use changes::{CHANGE_CHANNEL, Changes};
pub use console_state::{Bucket, ConsoleSession, SessionLimits};
pub use devices::{Device, DeviceRow, DeviceStatus};
pub use error::{Error, RedeemError, Result};
pub use gateways::{GatewayRow, Heartbeat};
pub use invitations::{InvitationRow, Invitee, IssuedInvitation, NewInvitation, Redemption};
pub use policy::{Action, Dest, LocalUser, ParseError, Ports, Program, Proto, Subject};
pub use rules::{NewRule, Rule};
pub use shimgate_wire::identity::VpnRange;
pub use tokens::{IssuedToken, NewToken, TokenGrant, TokenRow};
pub use users::{User, UserRow};

/// Which database a [`Registry`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A handle on the registry database. Cloning is cheap (it shares one connection pool).
#[derive(Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: Backend,
    /// Kept for `subscribe` (Postgres only). May hold a password: never log it.
    pg_url: Option<Arc<str>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Registry {
    /// Creates or upgrades the schema. Safe to run repeatedly and from several processes
    /// (Postgres takes an advisory lock). Refuses a schema a newer release migrated
    /// ([`Error::SchemaNewer`]): this build's queries may not fit it.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &PG_MIGRATOR,
            Backend::Sqlite => &SQLITE_MIGRATOR,
        };
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(applied) => Error::SchemaNewer {
                applied,
                known: migrator.iter().map(|m| m.version).max().unwrap_or(0),
            },
            e => Error::Migrate(e),
        })
    }

    /// The database behind this registry.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every pooled connection; later calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so it waits on the busy timeout instead of failing on lock upgrade.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_schema_from_a_newer_release_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("registry.db");
        let registry = Registry::connect(&path.display().to_string())
            .await
            .expect("open the registry");
        registry.migrate().await.expect("first migration");
        registry
            .migrate()
            .await
            .expect("migrating again changes nothing");
        // What a newer release leaves behind: a migration this build does not have.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&registry.pool)
        .await
        .expect("record a newer migration");
        let known = SQLITE_MIGRATOR.iter().map(|m| m.version).max();
        match registry.migrate().await {
            Err(Error::SchemaNewer {
                applied: 9999,
                known: k,
            }) => assert_eq!(Some(k), known),
            other => panic!("expected SchemaNewer, got {other:?}"),
        }
    }
}
