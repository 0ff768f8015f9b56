//! The registry test suite. Every test is written once and runs against both backends:
//! SQLite in a temporary directory, and Postgres in a fresh database created through
//! `DATABASE_URL` (and dropped afterwards). Without `DATABASE_URL` the Postgres half fails,
//! unless `SHIMGATE_SKIP_POSTGRES=1` says to skip it.

use std::collections::HashSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use sha2::{Digest, Sha256};
use shimgate_registry::{
    Action, AuditQuery, Backend, Dest, DeviceStatus, Error, Invitee, NewAudit, NewCertificate,
    NewInvitation, NewRule, NewToken, Ports, Proto, RedeemError, Redemption, Registry, Subject,
    VPN_RANGE,
};
use sqlx::{Connection, Executor};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// What every test gets: a migrated registry, and where it lives so it can open more.
#[derive(Clone)]
struct Env {
    kind: Kind,
    /// What `Registry::connect` was given.
    target: String,
    /// An sqlx URL for raw inspection of the database.
    raw_url: String,
    reg: Registry,
}

impl Env {
    /// A second, independent registry instance on the same database (its own pool).
    async fn reopen(&self) -> Registry {
        Registry::connect(&self.target)
            .await
            .expect("opening a second registry instance")
    }

    /// A raw connection to the database, for checks the API cannot make.
    async fn raw(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.raw_url)
            .await
            .expect("raw connection")
    }
}

/// `base` with its database name replaced by `db`.
fn with_database(base: &str, db: &str) -> String {
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

async fn open(target: &str) -> Registry {
    let reg = Registry::connect(target).await.expect("connect");
    reg.migrate().await.expect("migrate");
    reg
}

async fn run<F, Fut>(kind: Kind, body: F)
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
                crate::run(crate::Kind::Sqlite, super::$name).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                crate::run(crate::Kind::Postgres, super::$name).await
            }
        }
    )*};
}

both_backends!(
    migrate_twice,
    users_and_groups,
    tokens,
    concurrent_redeem,
    devices,
    concurrent_device_creation,
    many_devices_get_sequential_addresses,
    address_allocation_properties,
    revoke,
    certificate_expiry,
    certificate_supersede,
    certificate_validation,
    rules,
    audit,
    admins,
    invitations_for_a_user,
    invitations_for_a_group,
    api_tokens,
    audit_search,
    reenable,
    approval,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fingerprint(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn cert(device_id: i64, seed: &str, not_after: i64) -> NewCertificate {
    NewCertificate {
        device_id,
        serial_hex: hex::encode(&Sha256::digest(seed.as_bytes())[..16]),
        fingerprint_hex: fingerprint(seed),
        not_after,
        now: 1,
    }
}

fn token(user: &str, expires_at: i64, uses: u32) -> NewToken {
    NewToken {
        user: user.into(),
        created_by: "admin".into(),
        expires_at,
        uses,
    }
}

fn rule(subject: &str, dest: &str, ports: (u16, u16), action: Action) -> NewRule {
    NewRule {
        subject: subject.parse().expect("subject"),
        dest: dest.parse().expect("dest"),
        ports: Ports::range(ports.0, ports.1).expect("ports"),
        proto: Proto::Tcp,
        program: None,
        local_user: None,
        action,
        created_by: "admin".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests, each run on both backends
// ---------------------------------------------------------------------------------------------

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

async fn users_and_groups(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    assert_eq!(alice.name, "alice");
    assert_eq!(r.ensure_user("alice").await.expect("alice again"), alice);
    let bob = r.ensure_user("bob").await.expect("bob");
    assert_ne!(alice.id, bob.id);
    assert_eq!(
        r.user_by_name("bob").await.expect("lookup"),
        Some(bob.clone())
    );
    assert_eq!(r.user_by_name("carol").await.expect("lookup"), None);
    assert!(matches!(
        r.ensure_user("").await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        r.ensure_user("bad\nname").await,
        Err(Error::Invalid { .. })
    ));

    let seq0 = r.change_seq().await.expect("seq");
    r.add_to_group("alice", "ops").await.expect("add");
    r.add_to_group("alice", "dev").await.expect("add");
    let seq1 = r.change_seq().await.expect("seq");
    assert!(seq1 >= seq0 + 2, "membership changes bump the sequence");
    r.add_to_group("alice", "ops")
        .await
        .expect("add again is fine");
    assert_eq!(
        r.change_seq().await.expect("seq"),
        seq1,
        "a no-op add does not bump"
    );
    r.add_to_group("bob", "ops").await.expect("add");

    assert_eq!(r.groups_of(alice.id).await.expect("groups"), ["dev", "ops"]);
    assert_eq!(r.groups_of(bob.id).await.expect("groups"), ["ops"]);
    assert!(r.groups_of(987_654).await.expect("groups").is_empty());

    assert!(matches!(
        r.add_to_group("nobody", "ops").await,
        Err(Error::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        r.add_to_group("alice", "").await,
        Err(Error::Invalid { .. })
    ));

    let users = r.list_users().await.expect("list");
    let summary: Vec<(&str, Vec<&str>)> = users
        .iter()
        .map(|u| {
            (
                u.user.name.as_str(),
                u.groups.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("alice", vec!["dev", "ops"]), ("bob", vec!["ops"])]
    );

    let seq2 = r.change_seq().await.expect("seq");
    assert!(r.remove_from_group("bob", "ops").await.expect("remove"));
    assert!(r.change_seq().await.expect("seq") > seq2);
    assert!(
        !r.remove_from_group("bob", "ops")
            .await
            .expect("remove again")
    );
    assert!(r.groups_of(bob.id).await.expect("groups").is_empty());
}

async fn tokens(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");

    // Missing user and zero uses are refused.
    assert!(matches!(
        r.create_token(token("nobody", 1000, 1)).await,
        Err(Error::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        r.create_token(token("alice", 1000, 0)).await,
        Err(Error::Invalid { .. })
    ));

    let t1 = r.create_token(token("alice", 1000, 1)).await.expect("t1");
    assert_eq!(t1.user, "alice");
    assert_eq!(t1.expires_at, 1000);
    assert!(
        !format!("{t1:?}").contains(&hex::encode(t1.secret)),
        "Debug must not show the secret"
    );

    // Only the hash of the secret is stored.
    let mut raw = env.raw().await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sha256 FROM enrollment_tokens WHERE id = $1")
            .bind(hex::encode(t1.id))
            .fetch_one(&mut raw)
            .await
            .expect("raw read");
    assert_eq!(stored, Sha256::digest(t1.secret).to_vec());
    assert_ne!(stored, t1.secret.to_vec());

    // Wrong secret and unknown id look the same.
    let mut wrong = t1.secret;
    wrong[0] ^= 1;
    assert!(matches!(
        r.redeem_token(&t1.id, &wrong, 10).await,
        Err(RedeemError::Unknown)
    ));
    assert!(matches!(
        r.redeem_token(&[7u8; 16], &t1.secret, 10).await,
        Err(RedeemError::Unknown)
    ));

    let grant = r
        .redeem_token(&t1.id, &t1.secret, 10)
        .await
        .expect("redeem");
    assert_eq!(grant.user_id, alice.id);
    assert_eq!(grant.user_name, "alice");
    assert_eq!(grant.token_id_hex, hex::encode(t1.id));
    assert!(matches!(
        r.redeem_token(&t1.id, &t1.secret, 11).await,
        Err(RedeemError::UsedUp)
    ));
    // A wrong secret still says Unknown for a used-up token (no state leaks without it).
    assert!(matches!(
        r.redeem_token(&t1.id, &wrong, 11).await,
        Err(RedeemError::Unknown)
    ));

    // Expiry: refused at and after expires_at, accepted just before.
    let t2 = r.create_token(token("alice", 1000, 1)).await.expect("t2");
    assert!(matches!(
        r.redeem_token(&t2.id, &t2.secret, 1000).await,
        Err(RedeemError::Expired)
    ));
    assert!(matches!(
        r.redeem_token(&t2.id, &t2.secret, 5000).await,
        Err(RedeemError::Expired)
    ));
    r.redeem_token(&t2.id, &t2.secret, 999)
        .await
        .expect("redeem just before expiry");

    // Cancelled.
    let t3 = r.create_token(token("alice", 1000, 2)).await.expect("t3");
    assert!(r.cancel_token(&t3.id_hex()).await.expect("cancel"));
    assert!(!r.cancel_token(&t3.id_hex()).await.expect("cancel again"));
    assert!(!r.cancel_token("00112233").await.expect("cancel unknown"));
    assert!(matches!(
        r.redeem_token(&t3.id, &t3.secret, 10).await,
        Err(RedeemError::Cancelled)
    ));

    // Several uses: exactly N.
    let t4 = r.create_token(token("alice", 1000, 3)).await.expect("t4");
    for i in 0..3 {
        r.redeem_token(&t4.id, &t4.secret, 10 + i)
            .await
            .expect("redeem within uses");
    }
    assert!(matches!(
        r.redeem_token(&t4.id, &t4.secret, 20).await,
        Err(RedeemError::UsedUp)
    ));

    // Listing.
    let list = r.list_tokens(500).await.expect("list");
    assert_eq!(list.len(), 4);
    let row = |id: &[u8; 16]| {
        list.iter()
            .find(|t| t.id_hex == hex::encode(id))
            .cloned()
            .expect("token listed")
    };
    let r1 = row(&t1.id);
    assert_eq!((r1.uses_left, r1.cancelled, r1.expired), (0, false, false));
    assert_eq!(r1.user, "alice");
    assert_eq!(r1.created_by, "admin");
    assert_eq!(r1.expires_at, 1000);
    let r3 = row(&t3.id);
    assert_eq!((r3.uses_left, r3.cancelled), (2, true));
    assert_eq!(row(&t4.id).uses_left, 0);
    assert!(
        r.list_tokens(1000)
            .await
            .expect("list")
            .iter()
            .all(|t| t.expired)
    );
}

async fn concurrent_redeem(env: Env) {
    let r = env.reg.clone();
    let other = env.reopen().await;
    r.ensure_user("alice").await.expect("alice");

    for uses in [1u32, 3] {
        let t = r
            .create_token(token("alice", 1000, uses))
            .await
            .expect("token");
        let mut tasks = Vec::new();
        for i in 0..16 {
            // Half through each instance: two pools, like two gateways or a gateway and a CLI.
            let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
            let (id, secret) = (t.id, t.secret);
            tasks.push(tokio::spawn(async move {
                reg.redeem_token(&id, &secret, 10).await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => won += 1,
                Err(RedeemError::UsedUp) => {}
                Err(e) => panic!("unexpected redeem error: {e}"),
            }
        }
        assert_eq!(won, uses, "exactly {uses} of 16 concurrent redeems win");
    }
}

async fn devices(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let bob = r.ensure_user("bob").await.expect("bob");

    let seq0 = r.change_seq().await.expect("seq");
    let d1 = r.create_device(alice.id, "laptop", 100).await.expect("d1");
    assert!(r.change_seq().await.expect("seq") > seq0, "creation bumps");
    assert_eq!(d1.name, "laptop");
    assert_eq!(d1.user_id, alice.id);
    assert_eq!(d1.user_name, "alice");
    assert_eq!(d1.vpn_ip, Ipv4Addr::new(100, 64, 0, 1));
    assert_eq!(d1.status, DeviceStatus::Active);
    assert_eq!(d1.created_at, 100);
    assert_eq!(d1.last_seen, None);

    let d2 = r.create_device(bob.id, "laptop", 101).await.expect("d2");
    let d3 = r.create_device(alice.id, "laptop", 102).await.expect("d3");
    let d4 = r
        .create_device(alice.id, "laptop-2", 103)
        .await
        .expect("d4");
    assert_eq!(
        [&d2.name, &d3.name, &d4.name],
        ["laptop-2", "laptop-3", "laptop-2-2"]
    );
    assert_eq!(
        [d2.vpn_ip, d3.vpn_ip, d4.vpn_ip],
        [
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(100, 64, 0, 3),
            Ipv4Addr::new(100, 64, 0, 4)
        ]
    );
    assert_eq!(d2.user_name, "bob");

    // LIKE metacharacters in names are literal.
    let p1 = r.create_device(alice.id, "lap%", 104).await.expect("p1");
    let p2 = r.create_device(alice.id, "lap%", 105).await.expect("p2");
    let u1 = r.create_device(alice.id, "l_ptop", 106).await.expect("u1");
    assert_eq!([&p1.name, &p2.name, &u1.name], ["lap%", "lap%-2", "l_ptop"]);

    assert_eq!(
        r.device_by_name("laptop-2").await.expect("get"),
        Some(d2.clone())
    );
    assert_eq!(r.device_by_id(d3.id).await.expect("get"), Some(d3.clone()));
    assert_eq!(r.device_by_name("desktop").await.expect("get"), None);
    assert_eq!(r.device_by_id(987_654).await.expect("get"), None);

    assert!(matches!(
        r.create_device(987_654, "ghost", 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        r.create_device(alice.id, "", 1).await,
        Err(Error::Invalid { .. })
    ));

    r.touch_device(d1.id, 500).await.expect("touch");
    assert_eq!(
        r.device_by_id(d1.id)
            .await
            .expect("get")
            .map(|d| d.last_seen),
        Some(Some(500))
    );
    assert!(matches!(
        r.touch_device(987_654, 500).await,
        Err(Error::NotFound { .. })
    ));

    r.record_certificate(cert(d1.id, "d1-a", 2000))
        .await
        .expect("cert");
    r.record_certificate(cert(d1.id, "d1-b", 3000))
        .await
        .expect("cert");
    let list = r.list_devices().await.expect("list");
    assert_eq!(list.len(), 7);
    assert_eq!(list[0].device.name, "laptop");
    assert_eq!(list[0].device.last_seen, Some(500));
    assert_eq!(list[0].cert_not_after, Some(3000));
    assert_eq!(list[1].device, d2);
    assert_eq!(list[1].cert_not_after, None);
}

async fn concurrent_device_creation(env: Env) {
    let r = env.reg.clone();
    let other = env.reopen().await;
    let alice = r.ensure_user("alice").await.expect("alice");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
        tasks.push(tokio::spawn(async move {
            reg.create_device(alice.id, "phone", 100).await
        }));
    }
    let mut names = HashSet::new();
    let mut ips = HashSet::new();
    for task in tasks {
        let d = task.await.expect("task").expect("create_device");
        names.insert(d.name);
        ips.insert(d.vpn_ip);
    }
    let expected_names: HashSet<String> = std::iter::once("phone".to_owned())
        .chain((2..=10).map(|n| format!("phone-{n}")))
        .collect();
    assert_eq!(names, expected_names);
    let expected_ips: HashSet<Ipv4Addr> = (1..=10).map(|n| Ipv4Addr::new(100, 64, 0, n)).collect();
    assert_eq!(ips, expected_ips);
}

async fn many_devices_get_sequential_addresses(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let mut ips = Vec::new();
    for i in 0..260 {
        let d = r
            .create_device(alice.id, "node", i)
            .await
            .expect("create_device");
        ips.push(d.vpn_ip);
    }
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    for (i, ip) in ips.iter().enumerate() {
        let offset = u32::try_from(i).expect("small") + 1;
        assert_eq!(u32::from(*ip), base + offset, "address #{i} is sequential");
        assert!(VPN_RANGE.contains(ip));
        assert_ne!(*ip, VPN_RANGE.network());
        assert_ne!(*ip, VPN_RANGE.broadcast());
    }
    assert!(ips.contains(&Ipv4Addr::new(100, 64, 0, 255)));
    assert!(ips.contains(&Ipv4Addr::new(100, 64, 1, 0)));
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len());
}

/// One step of [`address_allocation_properties`].
#[derive(Debug, Clone)]
enum AddrOp {
    Create,
    /// Of this case's devices, the one at this index (modulo their number).
    Revoke(usize),
    Reenable(usize),
    /// Remove the row outright (raw SQL: the API never deletes a device,
    /// revoking keeps the row), the one way an address becomes free.
    Delete(usize),
}

/// Property test (proptest generates the steps and shrinks a failure) of
/// VPN address allocation against a model, the set of addresses held by a
/// device row: each new device gets the lowest address no row holds (so
/// never a duplicate), inside 100.64.0.0/10 without its network and
/// broadcast addresses; revoking or re-enabling keeps the address, so a
/// revoked device's address goes to nobody else; only a deleted row's
/// address is handed out again.
async fn address_allocation_properties(env: Env) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let op = prop_oneof![
        3 => Just(AddrOp::Create),
        1 => any::<usize>().prop_map(AddrOp::Revoke),
        1 => any::<usize>().prop_map(AddrOp::Reenable),
        1 => any::<usize>().prop_map(AddrOp::Delete),
    ];
    let ops = proptest::collection::vec(op, 1..40);
    let case = AtomicUsize::new(0);
    let handle = tokio::runtime::Handle::current();
    let env = &env;

    let one_case = |ops: Vec<AddrOp>| -> Result<(), TestCaseError> {
        let n = case.fetch_add(1, Ordering::Relaxed);
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let r = &env.reg;
                let held = |rows: Vec<shimgate_registry::DeviceRow>| -> Vec<u32> {
                    rows.iter().map(|d| u32::from(d.device.vpn_ip)).collect()
                };
                // Earlier cases left devices behind: they are part of the model.
                let mut taken: BTreeSet<u32> = held(r.list_devices().await.expect("list"))
                    .into_iter()
                    .collect();
                let user = r.ensure_user(&format!("u{n}")).await.expect("user");
                let mut mine: Vec<(i64, String, Ipv4Addr)> = Vec::new();
                let first = u32::from(VPN_RANGE.network()) + 1;
                for (step, op) in ops.iter().enumerate() {
                    let pick = |i: usize| (!mine.is_empty()).then(|| i % mine.len());
                    match op {
                        AddrOp::Create => {
                            let want = (first..).find(|a| !taken.contains(a)).expect("free");
                            let d = r
                                .create_device(user.id, "node", step as i64)
                                .await
                                .expect("create_device");
                            prop_assert_eq!(
                                u32::from(d.vpn_ip),
                                want,
                                "not the lowest free address"
                            );
                            prop_assert!(VPN_RANGE.contains(&d.vpn_ip));
                            prop_assert_ne!(d.vpn_ip, VPN_RANGE.network());
                            prop_assert_ne!(d.vpn_ip, VPN_RANGE.broadcast());
                            taken.insert(want);
                            mine.push((d.id, d.name, d.vpn_ip));
                        }
                        AddrOp::Revoke(i) | AddrOp::Reenable(i) => {
                            let Some(i) = pick(*i) else { continue };
                            let (_, name, ip) = &mine[i];
                            let d = if matches!(op, AddrOp::Revoke(_)) {
                                r.revoke_device(name, step as i64).await.expect("revoke")
                            } else {
                                r.reenable_device(name, step as i64)
                                    .await
                                    .expect("reenable")
                            };
                            prop_assert_eq!(d.vpn_ip, *ip, "{:?} moved the address", op);
                        }
                        AddrOp::Delete(i) => {
                            let Some(i) = pick(*i) else { continue };
                            let (id, _, ip) = mine.swap_remove(i);
                            let mut raw = env.raw().await;
                            sqlx::query("DELETE FROM devices WHERE id = $1")
                                .bind(id)
                                .execute(&mut raw)
                                .await
                                .expect("delete");
                            taken.remove(&u32::from(ip));
                        }
                    }
                    let now = held(r.list_devices().await.expect("list"));
                    let unique: BTreeSet<u32> = now.iter().copied().collect();
                    prop_assert_eq!(unique.len(), now.len(), "two devices share an address");
                    prop_assert_eq!(&unique, &taken, "after {:?}", op);
                }
                Ok(())
            })
        })
    };
    let config = Config {
        cases: 12,
        // Cases share one database; a saved seed would not reproduce alone.
        failure_persistence: None,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&ops, one_case);
    if let Err(e) = result {
        panic!("address allocation: {e}");
    }
}

async fn revoke(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    r.add_to_group("alice", "ops").await.expect("group");
    let laptop = r.create_device(alice.id, "laptop", 100).await.expect("dev");
    let phone = r.create_device(alice.id, "phone", 100).await.expect("dev");
    let mut c = cert(laptop.id, "laptop", 5000);
    c.fingerprint_hex = c.fingerprint_hex.to_uppercase();
    c.serial_hex = "0A1B".into();
    r.record_certificate(c).await.expect("cert");
    r.record_certificate(cert(phone.id, "phone", 5000))
        .await
        .expect("cert");

    let states = r.certificate_states(100).await.expect("states");
    assert_eq!(states.len(), 2);
    let s = &states[0];
    assert_eq!(s.fingerprint_hex, fingerprint("laptop"), "stored lowercase");
    assert_eq!(s.serial_hex, "0a1b");
    assert_eq!((s.device_id, s.device_name.as_str()), (laptop.id, "laptop"));
    assert_eq!((s.user_id, s.user_name.as_str()), (alice.id, "alice"));
    assert_eq!(s.groups, ["ops"]);
    assert_eq!(s.vpn_ip, laptop.vpn_ip);
    assert_eq!(s.not_after, 5000);
    assert!(!s.revoked);

    let mut changes = r.subscribe().await.expect("subscribe");
    match env.kind {
        Kind::Postgres => assert!(changes.is_some(), "Postgres subscribes"),
        Kind::Sqlite => assert!(changes.is_none(), "SQLite has no notifications"),
    }
    let seq0 = r.change_seq().await.expect("seq");

    // Revoke through a different instance (like the CLI, or another gateway).
    let other = env.reopen().await;
    let revoked = other.revoke_device("laptop", 200).await.expect("revoke");
    assert_eq!(revoked.status, DeviceStatus::Revoked);
    assert_eq!(revoked.id, laptop.id);

    assert!(r.change_seq().await.expect("seq") > seq0);
    if let Some(changes) = changes.as_mut() {
        tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a notification within 10 s")
            .expect("listener healthy");
    }

    let states = r.certificate_states(100).await.expect("states");
    let by_device = |id: i64| {
        states
            .iter()
            .find(|s| s.device_id == id)
            .map(|s| s.revoked)
            .expect("cert state")
    };
    assert!(by_device(laptop.id), "the revoked device's certificate");
    assert!(!by_device(phone.id), "another device is untouched");
    assert_eq!(
        r.device_by_name("laptop")
            .await
            .expect("get")
            .map(|d| d.status),
        Some(DeviceStatus::Revoked)
    );
    assert_eq!(
        r.device_by_name("phone")
            .await
            .expect("get")
            .map(|d| d.status),
        Some(DeviceStatus::Active)
    );

    // A revoked device gets no new certificates; revoking again is harmless.
    assert!(matches!(
        r.record_certificate(cert(laptop.id, "laptop-2", 6000)).await,
        Err(Error::DeviceRevoked(name)) if name == "laptop"
    ));
    let again = r.revoke_device("laptop", 300).await.expect("revoke again");
    assert_eq!(again.status, DeviceStatus::Revoked);
    assert!(matches!(
        r.revoke_device("nope", 300).await,
        Err(Error::NotFound { .. })
    ));

    // Revoking a single certificate leaves its device active.
    let seq1 = r.change_seq().await.expect("seq");
    assert!(
        r.revoke_certificate(&fingerprint("phone"), 400)
            .await
            .expect("revoke cert")
    );
    assert!(
        !r.revoke_certificate(&fingerprint("phone"), 400)
            .await
            .expect("again")
    );
    assert!(r.change_seq().await.expect("seq") > seq1);
    let states = r.certificate_states(100).await.expect("states");
    assert!(states.iter().all(|s| s.revoked));
    assert_eq!(
        r.device_by_name("phone")
            .await
            .expect("get")
            .map(|d| d.status),
        Some(DeviceStatus::Active)
    );
    if let Some(changes) = changes.as_mut() {
        tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a notification for the later changes")
            .expect("listener healthy");
    }
}

async fn certificate_expiry(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    r.record_certificate(cert(d.id, "a", 100)).await.expect("a");
    r.record_certificate(cert(d.id, "b", 200)).await.expect("b");
    let fps = |states: Vec<shimgate_registry::CertState>| -> Vec<String> {
        states.into_iter().map(|s| s.fingerprint_hex).collect()
    };
    assert_eq!(
        fps(r.certificate_states(50).await.expect("states")),
        [fingerprint("a"), fingerprint("b")]
    );
    assert_eq!(
        fps(r.certificate_states(100).await.expect("states")),
        [fingerprint("b")],
        "not_after is exclusive"
    );
    assert_eq!(
        fps(r.certificate_states(199).await.expect("states")),
        [fingerprint("b")]
    );
    assert!(r.certificate_states(200).await.expect("states").is_empty());
}

/// A renewed certificate in use supersedes the device's older ones (not
/// other devices', not newer ones), once, with a change notification.
async fn certificate_supersede(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    let other = r.create_device(alice.id, "phone", 2).await.expect("dev");
    for (device, name) in [(d.id, "a"), (other.id, "p"), (d.id, "b"), (d.id, "c")] {
        r.record_certificate(cert(device, name, 5000))
            .await
            .expect(name);
    }
    let superseded = || async {
        let mut names: Vec<String> = r
            .certificate_states(0)
            .await
            .expect("states")
            .into_iter()
            .filter(|s| s.superseded)
            .map(|s| s.fingerprint_hex)
            .collect();
        names.sort();
        names
    };
    let seq0 = r.change_seq().await.expect("seq");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("b"), 10)
            .await
            .expect("b in use"),
        1
    );
    assert!(r.change_seq().await.expect("seq") > seq0);
    assert_eq!(superseded().await, [fingerprint("a")]);
    let seq1 = r.change_seq().await.expect("seq");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("b"), 11)
            .await
            .expect("again"),
        0
    );
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("a"), 11)
            .await
            .expect("an older one"),
        0
    );
    assert_eq!(r.change_seq().await.expect("seq"), seq1, "nothing changed");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("c"), 12)
            .await
            .expect("c in use"),
        1
    );
    let mut want = vec![fingerprint("a"), fingerprint("b")];
    want.sort();
    assert_eq!(
        superseded().await,
        want,
        "the phone's certificate is untouched"
    );
}

async fn certificate_validation(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    let seq0 = r.change_seq().await.expect("seq");
    r.record_certificate(cert(d.id, "a", 100)).await.expect("a");
    assert!(r.change_seq().await.expect("seq") > seq0, "recording bumps");
    let seq1 = r.change_seq().await.expect("seq");

    assert!(matches!(
        r.record_certificate(cert(d.id, "a", 100)).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        r.record_certificate(cert(987_654, "z", 100)).await,
        Err(Error::NotFound { .. })
    ));
    let mut short = cert(d.id, "c", 100);
    short.fingerprint_hex.truncate(40);
    assert!(matches!(
        r.record_certificate(short).await,
        Err(Error::Invalid { .. })
    ));
    let mut bad_serial = cert(d.id, "c", 100);
    bad_serial.serial_hex = "xyz".into();
    assert!(matches!(
        r.record_certificate(bad_serial).await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        r.change_seq().await.expect("seq"),
        seq1,
        "refused records change nothing"
    );
    assert_eq!(r.certificate_states(0).await.expect("states").len(), 1);
}

async fn rules(env: Env) {
    let r = &env.reg;
    let seq0 = r.change_seq().await.expect("seq");
    let a = r
        .add_rule(rule("group:ops", "10.0.0.0/8", (22, 22), Action::Allow))
        .await
        .expect("a");
    let b = r
        .add_rule(rule("*", "Intranet.Internal", (1, 65535), Action::Deny))
        .await
        .expect("b");
    let c = r
        .add_rule(NewRule {
            proto: Proto::Udp,
            ..rule("user:alice", "2001:db8::1/32", (443, 8443), Action::Allow)
        })
        .await
        .expect("c");
    assert!(r.change_seq().await.expect("seq") >= seq0 + 3);

    assert_eq!(a.subject, Subject::Group("ops".into()));
    assert_eq!(b.dest, Dest::Domain("intranet.internal".into()));
    assert_eq!(c.dest.to_string(), "2001:db8::/32", "host bits dropped");
    assert_eq!(c.ports.to_string(), "443-8443");
    assert_eq!((a.proto, c.proto), (Proto::Tcp, Proto::Udp));
    assert_eq!(a.created_by, "admin");

    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed, [a.clone(), b.clone(), c.clone()]);

    // Validation (ports can't be made wrong: `Ports` parses or refuses).
    assert!(Ports::range(0, 10).is_err() && Ports::range(100, 99).is_err());
    for bad in [
        NewRule {
            subject: Subject::User(String::new()),
            ..rule("*", "10.0.0.0/8", (1, 2), Action::Allow)
        },
        NewRule {
            dest: Dest::Domain("*.example.com".into()),
            ..rule("*", "10.0.0.0/8", (1, 2), Action::Allow)
        },
    ] {
        assert!(
            matches!(r.add_rule(bad.clone()).await, Err(Error::Invalid { .. })),
            "{bad:?} should be refused"
        );
    }
    assert_eq!(r.list_rules().await.expect("list").len(), 3);

    let seq1 = r.change_seq().await.expect("seq");
    assert!(r.remove_rule(b.id).await.expect("remove"));
    assert!(r.change_seq().await.expect("seq") > seq1);
    assert!(!r.remove_rule(b.id).await.expect("remove again"));
    assert!(!r.remove_rule(987_654).await.expect("remove unknown"));
    assert_eq!(r.list_rules().await.expect("list"), [a, c]);

    // A rule stored before rules had a protocol (the column's default) still means TCP only.
    let mut raw = env.raw().await;
    sqlx::query(
        "INSERT INTO policy_rules \
         (subject_kind, subject_name, dest, port_lo, port_hi, action, created_by, created_at) \
         VALUES ('everyone', NULL, '192.0.2.0/24', 53, 53, 'allow', 'old', 0)",
    )
    .execute(&mut raw)
    .await
    .expect("a rule as the old schema wrote it");
    let old = r.list_rules().await.expect("list");
    let old = old.last().expect("the old rule");
    assert_eq!(old.proto, Proto::Tcp);
    assert_eq!(old.ports.to_string(), "53", "ports from the old columns");

    // A list of ports is stored and listed as written.
    let list = r
        .add_rule(NewRule {
            ports: "22, 53,80,443,5432,8000-8100".parse().expect("a port list"),
            ..rule("*", "10.20.0.0/16", (1, 1), Action::Allow)
        })
        .await
        .expect("a rule with a port list");
    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed.last(), Some(&list));
    assert_eq!(list.ports.to_string(), "22,53,80,443,5432,8000-8100");

    // Limits to a program and a local user on the device read back; the old rule has none.
    assert_eq!((&old.program, &old.local_user), (&None, &None));
    let limited = r
        .add_rule(NewRule {
            program: Some("/usr/bin/psql".parse().expect("a program")),
            local_user: Some("1000".parse().expect("a uid")),
            ..rule("*", "10.20.0.0/16", (5432, 5432), Action::Allow)
        })
        .await
        .expect("a rule limited to a program");
    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed.last(), Some(&limited));
    assert_eq!(
        limited.summary(),
        "allow * -> 10.20.0.0/16 ports 5432 tcp program=/usr/bin/psql local-user=1000"
    );
}

async fn audit(env: Env) {
    let r = &env.reg;
    let entry = |at: i64, target: &str, source: Option<&str>| NewAudit {
        at,
        actor: "admin".into(),
        action: "device.revoke".into(),
        target: target.into(),
        source_addr: source.map(Into::into),
        detail: format!("detail {target}"),
    };
    r.audit(entry(10, "a", Some("192.0.2.1:5555")))
        .await
        .expect("audit");
    r.audit(entry(30, "c", None)).await.expect("audit");
    r.audit(entry(20, "b", None)).await.expect("audit");
    r.audit(entry(30, "d", Some("[2001:db8::1]:443")))
        .await
        .expect("audit");

    let all = r.list_audit(10).await.expect("list");
    let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(
        targets,
        ["d", "c", "b", "a"],
        "newest first, ties by insertion"
    );
    assert_eq!(all[0].source_addr.as_deref(), Some("[2001:db8::1]:443"));
    assert_eq!(all[1].source_addr, None);
    assert_eq!(all[3].at, 10);
    assert_eq!(all[3].actor, "admin");
    assert_eq!(all[3].action, "device.revoke");
    assert_eq!(all[3].detail, "detail a");

    let two = r.list_audit(2).await.expect("list");
    assert_eq!(two, all[..2]);
    assert!(r.list_audit(0).await.expect("list").is_empty());
    assert!(r.list_audit(-5).await.expect("list").is_empty());
}

async fn admins(env: Env) {
    let r = &env.reg;
    assert!(matches!(
        r.create_admin("root", "short", false).await,
        Err(Error::Invalid { .. })
    ));
    let admin = r
        .create_admin("root", "correct horse battery", true)
        .await
        .expect("create admin");
    assert_eq!(admin.name, "root");
    assert!(admin.one_time);
    assert!(matches!(
        r.create_admin("root", "another long password", false).await,
        Err(Error::Conflict(_))
    ));

    // Only an argon2id hash is stored.
    let mut raw = env.raw().await;
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM console_admins WHERE name = 'root'")
            .fetch_one(&mut raw)
            .await
            .expect("raw read");
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));

    let ok = r
        .check_admin_password("root", "correct horse battery")
        .await
        .expect("check");
    assert_eq!(ok, Some(admin.clone()));
    for (name, pw) in [
        ("root", "correct horse batterY"),
        ("root", ""),
        ("nobody", "correct horse battery"),
    ] {
        assert_eq!(
            r.check_admin_password(name, pw).await.expect("check"),
            None,
            "{name}/{pw}"
        );
    }
    assert_eq!(
        r.check_admin_password("root", &"x".repeat(5000))
            .await
            .expect("check"),
        None
    );

    r.set_admin_password("root", "a brand new password", false)
        .await
        .expect("set password");
    assert_eq!(
        r.check_admin_password("root", "correct horse battery")
            .await
            .expect("check"),
        None
    );
    let changed = r
        .check_admin_password("root", "a brand new password")
        .await
        .expect("check")
        .expect("the new password works");
    assert!(!changed.one_time, "a chosen password is not one-time");
    assert!(matches!(
        r.set_admin_password("nobody", "a brand new password", false)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(r.list_admins().await.expect("list"), [changed]);
}

fn redemption(device: &str, user: Option<&str>) -> Redemption {
    Redemption {
        device_name: device.into(),
        user_name: user.map(Into::into),
        token_expires_at: 900,
    }
}

async fn invitations_for_a_user(env: Env) {
    let r = &env.reg;
    let invite = |invitee: Invitee, uses: u32| NewInvitation {
        invitee,
        created_by: "root".into(),
        expires_at: 1000,
        uses,
    };
    assert!(matches!(
        r.create_invitation(invite(Invitee::User("nobody".into()), 1))
            .await,
        Err(Error::NotFound { .. })
    ));
    let alice = r.ensure_user("alice").await.expect("alice");
    assert!(matches!(
        r.create_invitation(invite(Invitee::User("alice".into()), 0))
            .await,
        Err(Error::Invalid { .. })
    ));
    let inv = r
        .create_invitation(invite(Invitee::User("alice".into()), 1))
        .await
        .expect("invite");
    assert!(!format!("{inv:?}").contains(&inv.secret_hex()));

    let mut raw = env.raw().await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM invitations WHERE id = $1")
        .bind(inv.id_hex())
        .fetch_one(&mut raw)
        .await
        .expect("raw read");
    assert_eq!(stored, Sha256::digest(inv.secret).to_vec());

    let mut wrong = inv.secret;
    wrong[5] ^= 0x40;
    assert!(matches!(
        r.check_invitation(&inv.id, &wrong, 10).await,
        Err(RedeemError::Unknown)
    ));
    assert!(matches!(
        r.redeem_invitation(&inv.id, &wrong, redemption("laptop", None), 10)
            .await,
        Err(RedeemError::Unknown)
    ));
    let seen = r
        .check_invitation(&inv.id, &inv.secret, 10)
        .await
        .expect("check");
    assert_eq!(seen.invitee, Invitee::User("alice".into()));
    assert_eq!((seen.max_uses, seen.uses_left), (1, 1));
    assert!(matches!(
        r.check_invitation(&inv.id, &inv.secret, 1000).await,
        Err(RedeemError::Expired)
    ));
    // A bad device name is refused and uses nothing up.
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("", None), 10)
            .await,
        Err(RedeemError::Db(Error::Invalid { .. }))
    ));

    let token = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("laptop", None), 10)
        .await
        .expect("redeem");
    assert_eq!(token.user, "alice");
    assert_eq!(token.expires_at, 900);
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("laptop", None), 11)
            .await,
        Err(RedeemError::UsedUp)
    ));

    // The token it made is an ordinary one that fixes the device name...
    let grant = r
        .redeem_token(&token.id, &token.secret, 20)
        .await
        .expect("redeem token");
    assert_eq!(grant.user_id, alice.id);
    assert_eq!(grant.device_name.as_deref(), Some("laptop"));
    // ... and, once a device enrolled with it, leads to that device.
    assert_eq!(r.token_device(&grant.token_id_hex).await.expect("q"), None);
    let dev = r
        .create_device(alice.id, "laptop", 20)
        .await
        .expect("device");
    r.link_token_device(&grant.token_id_hex, dev.id)
        .await
        .expect("link");
    assert_eq!(
        r.token_device(&grant.token_id_hex).await.expect("q"),
        Some(dev)
    );

    // Cancelling.
    let inv2 = r
        .create_invitation(invite(Invitee::User("alice".into()), 3))
        .await
        .expect("invite");
    assert!(r.cancel_invitation(&inv2.id_hex()).await.expect("cancel"));
    assert!(!r.cancel_invitation(&inv2.id_hex()).await.expect("again"));
    assert!(matches!(
        r.cancel_invitation("not hex").await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        r.redeem_invitation(&inv2.id, &inv2.secret, redemption("pc", None), 10)
            .await,
        Err(RedeemError::Cancelled)
    ));
    let list = r.list_invitations(10).await.expect("list");
    assert_eq!(list.len(), 2);
    let row = list
        .iter()
        .find(|i| i.id_hex == inv2.id_hex())
        .expect("listed");
    assert!(row.cancelled && !row.expired);
    assert_eq!((row.max_uses, row.uses_left), (3, 3));
}

async fn invitations_for_a_group(env: Env) {
    let r = &env.reg;
    r.ensure_user("boss").await.expect("boss");
    assert!(matches!(
        r.create_invitation(NewInvitation {
            invitee: Invitee::Group("staff".into()),
            created_by: "root".into(),
            expires_at: 1000,
            uses: 2,
        })
        .await,
        Err(Error::NotFound { .. })
    ));
    r.ensure_user("carol").await.expect("carol");
    r.add_to_group("carol", "staff").await.expect("group");
    let inv = r
        .create_invitation(NewInvitation {
            invitee: Invitee::Group("staff".into()),
            created_by: "root".into(),
            expires_at: 1000,
            uses: 2,
        })
        .await
        .expect("invite");

    // A group invitation needs a user name, and not that of a non-member.
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("pc", None), 10)
            .await,
        Err(RedeemError::Db(Error::Invalid { .. }))
    ));
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("pc", Some("boss")), 10)
            .await,
        Err(RedeemError::Db(Error::Conflict(_)))
    ));
    let seq = r.change_seq().await.expect("seq");
    let t1 = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("pc", Some("dave")), 10)
        .await
        .expect("new user");
    assert_eq!(t1.user, "dave");
    assert!(
        r.change_seq().await.expect("seq") > seq,
        "membership changed"
    );
    let dave = r.user_by_name("dave").await.expect("q").expect("dave");
    assert_eq!(r.groups_of(dave.id).await.expect("groups"), ["staff"]);
    let t2 = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("phone", Some("carol")), 11)
        .await
        .expect("an existing member");
    assert_eq!(t2.user, "carol");
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("x", Some("erin")), 12)
            .await,
        Err(RedeemError::UsedUp)
    ));
    assert!(
        r.user_by_name("erin").await.expect("q").is_none(),
        "a refused redemption creates nobody"
    );
}

async fn api_tokens(env: Env) {
    let r = &env.reg;
    let t = r.create_api_token("ci", "root").await.expect("create");
    let bearer = t.bearer();
    assert!(!format!("{t:?}").contains(&hex::encode(t.secret)));
    let row = r
        .check_api_token(&bearer, 50)
        .await
        .expect("check")
        .expect("valid");
    assert_eq!((row.name.as_str(), row.last_used), ("ci", Some(50)));

    let mut raw = env.raw().await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_tokens WHERE id = $1")
        .bind(t.id_hex())
        .fetch_one(&mut raw)
        .await
        .expect("raw read");
    assert_eq!(stored, Sha256::digest(t.secret).to_vec());

    let mut wrong = t.clone();
    wrong.secret[31] ^= 1;
    for bad in [
        wrong.bearer(),
        String::new(),
        "sga_00_00".into(),
        "garbage".into(),
    ] {
        assert_eq!(r.check_api_token(&bad, 51).await.expect("check"), None);
    }
    assert!(r.revoke_api_token(&t.id_hex()).await.expect("revoke"));
    assert!(!r.revoke_api_token(&t.id_hex()).await.expect("again"));
    assert_eq!(r.check_api_token(&bearer, 52).await.expect("check"), None);
    let list = r.list_api_tokens().await.expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].revoked);
    assert_eq!(list[0].last_used, Some(50));
}

async fn audit_search(env: Env) {
    let r = &env.reg;
    let entry = |at: i64, actor: &str, action: &str, target: &str| NewAudit {
        at,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        source_addr: None,
        detail: String::new(),
    };
    for i in 0..30 {
        let (actor, action) = if i % 3 == 0 {
            ("root", "device.revoke")
        } else {
            ("cli:x", "token_create")
        };
        r.audit(entry(i, actor, action, &format!("t{i}")))
            .await
            .expect("audit");
    }
    r.audit(entry(99, "root", "devices", "t_%"))
        .await
        .expect("audit");
    let q = |actor: &str, action: &str, target: &str, offset: i64, limit: i64| AuditQuery {
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        offset,
        limit,
    };
    let all = r.search_audit(&q("", "", "", 0, 100)).await.expect("all");
    assert_eq!(all.len(), 31);
    let page2 = r.search_audit(&q("", "", "", 10, 10)).await.expect("page");
    assert_eq!(page2, all[10..20]);
    let roots = r.search_audit(&q("root", "", "", 0, 100)).await.expect("q");
    assert_eq!(roots.len(), 11);
    let revokes = r
        .search_audit(&q("", "device", "", 0, 100))
        .await
        .expect("q");
    assert_eq!(revokes.len(), 10, "a prefix matches at a dot only");
    assert!(revokes.iter().all(|e| e.action == "device.revoke"));
    let exact = r
        .search_audit(&q("", "device.revoke", "t3", 0, 100))
        .await
        .expect("q");
    assert_eq!(exact.len(), 1);
    assert_eq!(
        r.search_audit(&q("", "token", "", 0, 100))
            .await
            .expect("q")
            .len(),
        0,
        "wildcards in the filter are literal"
    );
    assert_eq!(
        r.search_audit(&q("", "", "t_%", 0, 100))
            .await
            .expect("q")
            .len(),
        1
    );
    assert!(
        r.search_audit(&q("", "", "", -3, -1))
            .await
            .expect("q")
            .is_empty()
    );
}

async fn reenable(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let dev = r
        .create_device(alice.id, "laptop", 1)
        .await
        .expect("device");
    r.record_certificate(cert(dev.id, "c1", 5000))
        .await
        .expect("cert");
    r.revoke_device("laptop", 100).await.expect("revoke");
    let states = r.certificate_states(150).await.expect("states");
    assert!(states.iter().all(|c| c.revoked));
    let seq = r.change_seq().await.expect("seq");
    let back = r.reenable_device("laptop", 200).await.expect("reenable");
    assert_eq!(back.status, DeviceStatus::Active);
    assert!(r.change_seq().await.expect("seq") > seq);
    let states = r.certificate_states(150).await.expect("states");
    assert!(
        states
            .iter()
            .any(|c| c.fingerprint_hex == fingerprint("c1") && !c.revoked),
        "the certificate revoked with the device is valid again"
    );
    assert_eq!(
        r.reenable_device("laptop", 201)
            .await
            .expect("again")
            .status,
        DeviceStatus::Active
    );
    assert!(matches!(
        r.reenable_device("nope", 200).await,
        Err(Error::NotFound { .. })
    ));
}

async fn approval(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    assert!(!r.require_approval().await.expect("setting"));
    let before = r
        .create_device(alice.id, "before", 1)
        .await
        .expect("device");
    assert_eq!(before.status, DeviceStatus::Active);

    r.set_require_approval(true).await.expect("on");
    r.set_require_approval(true).await.expect("on again");
    assert!(r.require_approval().await.expect("setting"));
    let waiting = r
        .create_device(alice.id, "waiting", 2)
        .await
        .expect("device");
    assert_eq!(waiting.status, DeviceStatus::Pending);
    r.record_certificate(cert(waiting.id, "w1", 5000))
        .await
        .expect("cert");
    let refused = |states: &[shimgate_registry::CertState]| {
        states
            .iter()
            .find(|c| c.fingerprint_hex == fingerprint("w1"))
            .map(|c| c.revoked)
    };
    assert_eq!(
        refused(&r.certificate_states(10).await.expect("states")),
        Some(true),
        "a pending device's certificate is refused"
    );
    let listed = r.list_devices().await.expect("list");
    assert_eq!(
        listed[0].device.status,
        DeviceStatus::Active,
        "earlier devices keep their state"
    );
    assert_eq!(listed[1].device.status, DeviceStatus::Pending);

    let seq = r.change_seq().await.expect("seq");
    let approved = r.approve_device("waiting").await.expect("approve");
    assert_eq!(approved.status, DeviceStatus::Active);
    assert!(r.change_seq().await.expect("seq") > seq);
    assert_eq!(
        refused(&r.certificate_states(10).await.expect("states")),
        Some(false)
    );
    assert!(matches!(
        r.approve_device("nope").await,
        Err(Error::NotFound { .. })
    ));
    r.set_require_approval(false).await.expect("off");
    assert!(!r.require_approval().await.expect("setting"));
    let after = r.create_device(alice.id, "after", 3).await.expect("device");
    assert_eq!(after.status, DeviceStatus::Active);
}

// ---------------------------------------------------------------------------------------------
// SQLite specifics
// ---------------------------------------------------------------------------------------------

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
