//! Opening a registry: migrations (run twice, from two instances) on both backends, and how
//! SQLite paths and URLs are opened.

use std::net::Ipv4Addr;
use std::time::Duration;

use shimgate_registry::{Backend, Registry};
use sqlx::Connection;

use crate::harness::{Env, Kind, both_backends, open};

both_backends!(migrate_twice);

async fn migrate_twice(env: Env) {
    let expected = match env.kind {
        Kind::Sqlite => Backend::Sqlite,
        Kind::Postgres => Backend::Postgres,
    };
    assert_eq!(env.reg.backend(), expected);
    env.reg.ping().await.expect("ping");
    assert_eq!(env.reg.change_seq().await.expect("seq"), 0);
    let alice = env.reg.ensure_user("alice").await.expect("user");

    env.reg.migrate().await.expect("second migrate");
    let other = env.reopen().await;
    other
        .migrate()
        .await
        .expect("migrate from a second instance");
    other.ping().await.expect("ping second instance");
    assert_eq!(
        other.user_by_name("alice").await.expect("lookup"),
        Some(alice),
        "data survives re-running migrations"
    );
}

#[tokio::test]
async fn sqlite_path_is_created_in_wal_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    let target = path.to_str().expect("utf-8").to_owned();
    assert!(!path.exists());
    let reg = open(&target).await;
    assert!(path.exists(), "a plain path is created");
    reg.ensure_user("alice").await.expect("write");

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{target}"))
        .await
        .expect("raw");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");

    // A `sqlite:` URL to the same file sees the same data.
    let by_url = open(&format!("sqlite://{target}?mode=rwc")).await;
    assert!(by_url.user_by_name("alice").await.expect("read").is_some());
    assert_eq!(by_url.backend(), Backend::Sqlite);
}

#[tokio::test]
async fn sqlite_url_without_create_mode_needs_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.db");
    let url = format!("sqlite://{}", missing.to_str().expect("utf-8"));
    assert!(Registry::connect(&url).await.is_err());
    assert!(!missing.exists());
}

#[tokio::test]
async fn sqlite_path_with_awkward_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("my dir #1 ?x=%20&y ü");
    std::fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("reg istry.db");
    let target = path.to_str().expect("utf-8").to_owned();
    let reg = open(&target).await;
    reg.ensure_user("alice").await.expect("write");
    assert!(path.exists(), "the file is where the path says");
    let again = open(&target).await;
    assert!(again.user_by_name("alice").await.expect("read").is_some());
}

#[tokio::test]
async fn sqlite_in_memory_keeps_its_data() {
    let reg = open("sqlite::memory:").await;
    reg.ensure_user("alice").await.expect("write");
    let alice = reg
        .user_by_name("alice")
        .await
        .expect("read")
        .expect("alice");
    let d = reg
        .create_device(alice.id, "laptop", 1)
        .await
        .expect("device");
    assert_eq!(d.vpn_ip, Ipv4Addr::new(100, 64, 0, 1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reg.list_devices().await.expect("list").len(), 1);
}

/// A SQLite registry in a temporary directory with the migrations before
/// `version` applied: the directory (removed on drop), the registry's
/// target and URL, and a pool on it.
async fn sqlite_migrated_before(
    version: i64,
) -> (tempfile::TempDir, String, String, sqlx::SqlitePool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("registry.db");
    let target = path.to_str().expect("utf-8 temp path").to_owned();
    let url = format!("sqlite://{target}?mode=rwc");
    let mut before: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    before
        .run(&pool)
        .await
        .unwrap_or_else(|e| panic!("migrations before {version}: {e}"));
    (dir, target, url, pool)
}

/// Migration 0009 rebuilds SQLite's devices table (a CHECK cannot be
/// changed in place): a registry with devices, certificates pointing at
/// them and a deleted device keeps every row, every reference, and its id
/// counter (addresses outside 100.64.0.0/10: `devices::a_chosen_vpn_range`).
#[tokio::test]
async fn sqlite_devices_survive_the_vpn_range_migration() {
    use sqlx::Executor;
    let (_dir, target, url, pool) = sqlite_migrated_before(9).await;
    for sql in [
        "INSERT INTO users (id, name, created_at) VALUES (1, 'alice', 1)",
        "INSERT INTO devices (id, name, user_id, vpn_ip, created_at, last_gateway) \
         VALUES (1, 'one', 1, 1681915905, 1, 'gw-a'), (2, 'two', 1, 1681915906, 1, NULL), \
                (3, 'three', 1, 1681915907, 1, NULL)",
        "INSERT INTO certificates (device_id, serial_hex, fingerprint_sha256, not_after, created_at) \
         VALUES (1, '01', 'f1', 9, 1), (2, '02', 'f2', 9, 1)",
        "DELETE FROM devices WHERE id = 3",
    ] {
        pool.execute(sql).await.expect(sql);
    }
    pool.close().await;

    let reg = open(&target).await;
    let devices = reg.list_devices().await.expect("list");
    let held: Vec<(i64, &str, Ipv4Addr, Option<&str>)> = devices
        .iter()
        .map(|d| {
            (
                d.device.id,
                d.device.name.as_str(),
                d.device.vpn_ip,
                d.device.last_gateway.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [
            (1, "one", Ipv4Addr::new(100, 64, 0, 1), Some("gw-a")),
            (2, "two", Ipv4Addr::new(100, 64, 0, 2), None)
        ]
    );
    let pool = sqlx::SqlitePool::connect(&url).await.expect("reopen");
    let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&pool)
        .await
        .expect("foreign key check");
    assert!(broken.is_empty(), "dangling references: {broken:?}");
    let certs: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM certificates c JOIN devices d ON d.id = c.device_id",
    )
    .fetch_one(&pool)
    .await
    .expect("certificates");
    assert_eq!(certs, 2);
    pool.close().await;

    let alice = reg
        .user_by_name("alice")
        .await
        .expect("alice")
        .expect("alice");
    let next = reg
        .create_device(alice.id, "four", 2)
        .await
        .expect("create");
    assert_eq!(
        next.id, 4,
        "the deleted device's id is not handed out again"
    );
}

/// Migration 0012 rebuilds SQLite's policy_rules table (to let a rule name
/// ICMP): every rule keeps each column, and a removed rule's id is not
/// handed out again.
#[tokio::test]
async fn sqlite_rules_survive_the_icmp_migration() {
    use shimgate_registry::{Action, NewRule, Ports, Proto};
    use sqlx::Executor;
    let (_dir, target, _url, pool) = sqlite_migrated_before(12).await;
    for sql in [
        "INSERT INTO policy_rules (id, subject_kind, subject_name, dest, port_lo, port_hi, ports, \
         proto, program, local_user, action, created_by, created_at) VALUES \
         (1, 'group', 'ops', '192.0.2.0/24', 22, 8100, '22,53,8000-8100', 'udp', 'psql', 'alice', \
          'allow', 'admin', 7), \
         (2, 'everyone', NULL, 'intranet.corp', 1, 65535, '', 'any', NULL, NULL, 'deny', 'admin', 8), \
         (3, 'user', 'bob', '10.0.0.0/8', 80, 80, '', 'tcp', NULL, NULL, 'allow', 'admin', 9)",
        "DELETE FROM policy_rules WHERE id = 3",
    ] {
        pool.execute(sql).await.expect(sql);
    }
    pool.close().await;

    let reg = open(&target).await;
    let summaries: Vec<(i64, String)> = reg
        .list_rules()
        .await
        .expect("list")
        .iter()
        .map(|r| (r.id, r.summary()))
        .collect();
    assert_eq!(
        summaries,
        [
            (
                1,
                "allow group:ops -> 192.0.2.0/24 ports 22,53,8000-8100 udp program=psql local-user=alice"
                    .to_owned()
            ),
            (2, "deny * -> intranet.corp ports 1-65535 any".to_owned()),
        ]
    );
    let ping = NewRule {
        subject: "*".parse().expect("subject"),
        dest: "192.0.2.0/24".parse().expect("dest"),
        ports: Ports::all(),
        proto: Proto::Icmp,
        program: None,
        local_user: None,
        action: Action::Allow,
        created_by: "admin".into(),
    };
    let added = reg.add_rule(ping.clone()).await.expect("an icmp rule");
    assert_eq!(added.id, 4, "the removed rule's id is not handed out again");
    assert_eq!(reg.list_rules().await.expect("list")[2].proto, Proto::Icmp);
    let with_ports = NewRule {
        ports: "22".parse().expect("ports"),
        ..ping
    };
    assert!(
        reg.add_rule(with_ports).await.is_err(),
        "an icmp rule limited to a port was stored"
    );
}
