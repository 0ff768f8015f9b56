//! Devices: names, VPN address allocation (a property test included), revoking, re-enabling
//! and approval.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use shimgate_registry::{DeviceStatus, Error, VpnRange};

use crate::harness::{Env, Kind, both_backends, cert, fingerprint};

both_backends!(
    devices,
    concurrent_device_creation,
    many_devices_get_sequential_addresses,
    a_chosen_vpn_range,
    a_vpn_range_cannot_strand_devices,
    address_allocation_properties,
    revoke,
    reenable,
    approval
);

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

    r.touch_device(d1.id, 500, "gw-a").await.expect("touch");
    assert_eq!(
        r.device_by_id(d1.id)
            .await
            .expect("get")
            .map(|d| (d.last_seen, d.last_gateway)),
        Some((Some(500), Some("gw-a".to_owned())))
    );
    assert!(matches!(
        r.touch_device(987_654, 500, "gw-a").await,
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
        let (first, last) = VpnRange::DEFAULT.hosts();
        assert!((first..=last).contains(ip));
    }
    assert!(ips.contains(&Ipv4Addr::new(100, 64, 0, 255)));
    assert!(ips.contains(&Ipv4Addr::new(100, 64, 1, 0)));
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len());
}

/// A range claimed on a new registry is where addresses come from (its
/// last host is TUN mode's DNS responder's, never a device's), until it is
/// full; a gateway configured with another
/// range is refused, naming both.
async fn a_chosen_vpn_range(env: Env) {
    let r = &env.reg;
    assert_eq!(r.vpn_range().await.expect("range"), VpnRange::DEFAULT);
    let small: VpnRange = "198.51.100.0/30".parse().expect("range");
    r.claim_vpn_range(small).await.expect("first claim");
    r.claim_vpn_range(small)
        .await
        .expect("the same claim again");
    assert_eq!(r.vpn_range().await.expect("range"), small);
    let alice = r.ensure_user("alice").await.expect("alice");
    let a = r.create_device(alice.id, "a", 1).await.expect("a");
    assert_eq!(a.vpn_ip, Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(small.dns(), Ipv4Addr::new(198, 51, 100, 2));
    let full = r.create_device(alice.id, "c", 1).await;
    assert!(
        matches!(full, Err(Error::AddressPoolExhausted(range)) if range == small),
        "{full:?}"
    );
    let other = r.claim_vpn_range(VpnRange::DEFAULT).await;
    let msg = format!("{:?}", other.expect_err("another range is refused"));
    assert!(
        msg.contains("198.51.100.0/30") && msg.contains("100.64.0.0/10"),
        "{msg}"
    );
    assert_eq!(r.vpn_range().await.expect("range"), small);
}

/// A registry from before the range could be chosen keeps its devices'
/// addresses: a range that would leave one outside is refused, and the
/// default (which holds them) is taken.
async fn a_vpn_range_cannot_strand_devices(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    r.create_device(alice.id, "old", 1).await.expect("device");
    let other: VpnRange = "10.99.0.0/16".parse().expect("range");
    let refused = r.claim_vpn_range(other).await;
    let msg = format!("{:?}", refused.expect_err("stranding is refused"));
    assert!(msg.contains("outside 10.99.0.0/16"), "{msg}");
    r.claim_vpn_range(VpnRange::DEFAULT)
        .await
        .expect("the default holds them");
    assert_eq!(r.vpn_range().await.expect("range"), VpnRange::DEFAULT);
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
                let (first, last) = VpnRange::DEFAULT.hosts();
                let first = u32::from(first);
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
                            prop_assert!(u32::from(d.vpn_ip) <= u32::from(last));
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
