//! Registry backends: a SQLite file in the gateway's data dir (the
//! default), or a fresh Postgres database per test, created from
//! `DATABASE_URL` and dropped afterwards.

use sqlx::Connection;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The registry of one gateway (or several sharing it).
pub struct Database {
    /// `--database-url` for the gateway; `None` means its SQLite default.
    pub url: Option<String>,
    /// Drops the database when dropped.
    _pg: Option<PgGuard>,
}

impl Database {
    pub fn create(backend: Backend) -> Database {
        match backend {
            Backend::Sqlite => Database {
                url: None,
                _pg: None,
            },
            Backend::Postgres => {
                let admin = admin_url();
                let name = super::env::unique("sg_e2e_");
                pg_exec(&admin, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| {
                    panic!("cannot create Postgres database {name} via {admin}: {e}")
                });
                let url = with_database(&admin, &name);
                eprintln!("[e2e] created Postgres database {name}");
                Database {
                    url: Some(url),
                    _pg: Some(PgGuard { admin, name }),
                }
            }
        }
    }
}

struct PgGuard {
    admin: String,
    name: String,
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        if std::env::var_os("SHIMGATE_KEEP_TMP").is_some() {
            eprintln!("[e2e] keeping Postgres database {}", self.name);
            return;
        }
        if let Err(e) = pg_exec(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("[e2e] warning: could not drop database {}: {e}", self.name);
        }
    }
}

impl Database {
    /// Makes Postgres refuse (and cut) every connection to this database,
    /// or accept them again: a registry outage with the server still up.
    pub fn refuse_connections(&self, refuse: bool) {
        let db = self
            .url
            .as_deref()
            .and_then(|u| u.split('?').next())
            .and_then(|u| u.rsplit('/').next())
            .expect("a Postgres database (Backend::Postgres)")
            .to_owned();
        admin_sql(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS {}",
            !refuse
        ));
        if refuse {
            admin_sql(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
            ));
        }
    }
}

/// Runs one statement on the server of `DATABASE_URL`.
fn admin_sql(sql: &str) {
    use sqlx::Executor;
    let url = admin_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

fn admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DATABASE_URL is not set: the Postgres variants of the e2e tests need a server \
             (tests/run.sh sets it up; or export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres)"
        ),
    }
}

/// The same server URL with another database name.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

fn pg_exec(url: &str, sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sql = sql.to_owned();
    rt.block_on(async move {
        let mut conn = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            sqlx::PgConnection::connect(url),
        )
        .await
        .map_err(|_| "timed out connecting".to_owned())?
        .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        Ok(())
    })
}

#[test]
fn database_url_rewriting() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
}
