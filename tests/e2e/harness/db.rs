//! Registry backends: a SQLite file in the gateway's data dir (the
//! default), or a fresh Postgres database per test, created from
//! `DATABASE_URL` and dropped afterwards, or a Postgres server of the
//! test's own ([`PgServer`]) that it can stop and start.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::Connection;

use super::proc::run;

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
    /// The server, when the test owns it.
    server: Option<PgServer>,
}

impl Database {
    pub fn create(backend: Backend) -> Database {
        match backend {
            Backend::Sqlite => Database {
                url: None,
                _pg: None,
                server: None,
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
                    server: None,
                }
            }
        }
    }

    /// A registry on a Postgres server of this test's own, on loopback.
    pub fn own_server() -> Database {
        let dir = tempfile::Builder::new()
            .prefix("sg-e2e-pg-")
            .tempdir()
            .expect("tempdir");
        let port = super::env::free_port();
        let mut server = PgServer::start(None, dir.path().to_path_buf(), "127.0.0.1", port);
        server.owned_dir = Some(dir);
        Database {
            url: Some(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            _pg: None,
            server: Some(server),
        }
    }

    /// Another handle on this Postgres registry, for a second gateway sharing it (the database
    /// is dropped with this one, the first).
    pub fn shared(&self) -> Database {
        assert!(self.url.is_some(), "only a Postgres registry can be shared");
        Database {
            url: self.url.clone(),
            _pg: None,
            server: None,
        }
    }

    /// The server of [`Database::own_server`].
    pub fn server(&self) -> &PgServer {
        self.server.as_ref().expect("a database on its own server")
    }
}

/// A Postgres server of the test's own: Debian's `initdb` and `pg_ctl`, run
/// as the `postgres` user (the tests run as root), optionally inside a
/// network namespace; trusts every client. Stopped (immediately) on drop.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    ns: Option<String>,
    options: String,
    /// Removed on drop, after the server stopped (fields drop after `drop`).
    owned_dir: Option<tempfile::TempDir>,
}

impl PgServer {
    /// `initdb` in `dir`, then [`PgServer::start_again`] listening on
    /// `listen` (`*` or an address) and `port`.
    pub fn start(ns: Option<&str>, dir: PathBuf, listen: &str, port: u16) -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's postgresql (tests/lib/setup.sh installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("initdb under /usr/lib/postgresql/*/bin");
        std::fs::create_dir_all(&dir).unwrap();
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("postgres:").arg(&dir);
        run(&mut chown, Duration::from_secs(10)).expect_ok();
        let server = PgServer {
            options: format!(
                "-p {port} -k {} -c listen_addresses={listen} -c fsync=off",
                dir.display()
            ),
            bin,
            dir,
            ns: ns.map(str::to_owned),
            owned_dir: None,
        };
        let data = server.data();
        let mut init = server.as_postgres(false);
        init.arg(server.bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(&mut init, Duration::from_secs(120)).expect_ok();
        let hba = data.join("pg_hba.conf");
        let mut conf = std::fs::read_to_string(&hba).unwrap();
        conf.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, conf).unwrap();
        server.start_again();
        server
    }

    /// `pg_ctl start`, returning once the server accepts connections.
    pub fn start_again(&self) {
        let mut start = self.as_postgres(true);
        start
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &self.options, "start"]);
        run(&mut start, Duration::from_secs(90)).expect_ok();
    }

    /// `pg_ctl stop -m fast`: every session is cut, the server is gone.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast").expect_ok();
    }

    fn pg_ctl_stop(&self, mode: &str) -> super::proc::Out {
        let mut stop = self.as_postgres(false);
        stop.arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "stop"]);
        run(&mut stop, Duration::from_secs(60))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command run as the `postgres` user; in the namespace if `in_ns`.
    fn as_postgres(&self, in_ns: bool) -> Command {
        let mut c = match (&self.ns, in_ns) {
            (Some(ns), true) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"]);
                c
            }
            _ => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c
            }
        };
        c.current_dir("/");
        c
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
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
