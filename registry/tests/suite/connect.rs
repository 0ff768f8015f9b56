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
