//! What every registry test shares: a migrated registry on SQLite (a temporary directory) or on
//! Postgres (a fresh database created through `DATABASE_URL` and dropped afterwards), the
//! `both_backends!` macro that runs a test on each, and helpers that make records.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use sha2::{Digest, Sha256};
use shimgate_registry::{NewCertificate, Registry};
use sqlx::{Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// What every test gets: a migrated registry, and where it lives so it can open more.
#[derive(Clone)]
pub struct Env {
    pub kind: Kind,
    /// What `Registry::connect` was given.
    pub target: String,
    /// An sqlx URL for raw inspection of the database.
    pub raw_url: String,
    pub reg: Registry,
}

impl Env {
    /// A second, independent registry instance on the same database (its own pool).
    pub async fn reopen(&self) -> Registry {
        Registry::connect(&self.target)
            .await
            .expect("opening a second registry instance")
    }

    /// A raw connection to the database, for checks the API cannot make.
    pub async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.raw_url)
            .await
            .expect("raw connection")
    }
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let path_start = main[authority_start..]
        .find('/')
        .map_or(main.len(), |i| authority_start + i);
    format!("{}/{db}{query}", &main[..path_start])
}

pub async fn open(target: &str) -> Registry {
    let reg = Registry::connect(target).await.expect("connect");
    reg.migrate().await.expect("migrate");
    reg
}

pub async fn run<F, Fut>(kind: Kind, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("registry.db");
            let target = path.to_str().expect("utf-8 temp path").to_owned();
            let reg = open(&target).await;
            let raw_url = format!("sqlite://{target}");
            body(Env {
                kind,
                target,
                raw_url,
                reg,
            })
            .await;
        }
        Kind::Postgres => {
            let base = match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => url,
                _ => {
                    if std::env::var("SHIMGATE_SKIP_POSTGRES").as_deref() == Ok("1") {
                        eprintln!("SHIMGATE_SKIP_POSTGRES=1: skipping the Postgres half");
                        return;
                    }
                    panic!(
                        "DATABASE_URL is not set, so the Postgres half of the registry suite \
                         cannot run. Point it at a server where it may create databases, e.g. \
                         DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres, or set \
                         SHIMGATE_SKIP_POSTGRES=1 to skip Postgres deliberately."
                    );
                }
            };
            let name = format!("shimgate_t_{}", hex::encode(rand::random::<[u8; 8]>()));
            let mut admin = sqlx::PgConnection::connect(&base)
                .await
                .expect("connecting to DATABASE_URL");
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("CREATE DATABASE");
            let target = with_database(&base, &name);
            let env_target = target.clone();
            let outcome = AssertUnwindSafe(async move {
                let reg = open(&env_target).await;
                body(Env {
                    kind,
                    raw_url: env_target.clone(),
                    target: env_target,
                    reg,
                })
                .await;
            })
            .catch_unwind()
            .await;
            let dropped = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
            if let Err(panic) = outcome {
                std::panic::resume_unwind(panic);
            }
            dropped.expect("DROP DATABASE");
        }
    }
}

/// Runs each named `async fn(Env)` as `<name>::sqlite` and `<name>::postgres`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                crate::harness::run(crate::harness::Kind::Sqlite, super::$name).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::harness::run(crate::harness::Kind::Postgres, super::$name).await
            }
        }
    )*};
}
pub(crate) use both_backends;

pub fn fingerprint(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

pub fn cert(device_id: i64, seed: &str, not_after: i64) -> NewCertificate {
    NewCertificate {
        device_id,
        serial_hex: hex::encode(&Sha256::digest(seed.as_bytes())[..16]),
        fingerprint_hex: fingerprint(seed),
        not_after,
        now: 1,
    }
}

#[test]
fn database_url_rewriting() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "t1"),
        "postgres://u:p@h/t1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
}
