//! Policy refusals and unreachable destinations, with exact SOCKS replies.

use std::time::Duration;

use crate::harness::env::closed_port;
use crate::harness::socks::{self, connect, connect_expect, connect_ok};
use crate::harness::*;

/// No allow rule: 0x02, and the origin never sees a connection. Adding an
/// allow rule while the gateway runs makes the same request succeed.
#[test]
fn no_allow_rule_is_denied() {
    let origin = Origin::start(V4, Mode::Echo);
    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");

    connect_expect(dev.socks, V4, origin.port(), socks::NOT_ALLOWED);
    connect_expect(dev.socks, "localhost", origin.port(), socks::NOT_ALLOWED);
    origin.expect_accepted(0, "a denied request must not be dialled");

    // positive control: the refusal was the policy's
    gw.allow("127.0.0.1/32", &[]);
    poll(
        "an allow rule added at run time to take effect",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || match connect(dev.socks, V4, origin.port()) {
            Ok((socks::SUCCEEDED, _)) => Some(()),
            _ => None,
        },
    );
}

/// An explicit deny beats an allow; other ports the allow covers still work.
#[test]
fn explicit_deny_wins() {
    let denied = Origin::start(V4, Mode::Echo);
    let allowed = Origin::start(V4, Mode::Echo);
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("127.0.0.0/8", &[]);
    gw.deny("127.0.0.1/32", &["--ports", &denied.port().to_string()]);
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, "laptop");

    connect_expect(dev.socks, V4, denied.port(), socks::NOT_ALLOWED);
    connect_expect(dev.socks, "localhost", denied.port(), socks::NOT_ALLOWED);
    denied.expect_accepted(0, "a denied request must not be dialled");

    let _s = connect_ok(dev.socks, V4, allowed.port());
    allowed.expect_accepted(1, "origin connections");
}

/// Loopback is refused unless an allow rule's CIDR lies inside it: allowing
/// everything (`0.0.0.0/0`, `::/0`) or the name `localhost` is not enough.
#[test]
fn loopback_needs_a_rule_naming_it() {
    let o4 = Origin::start(V4, Mode::Echo);
    let o6 = Origin::start(V6, Mode::Echo);
    let (gw, dev) = setup(
        Backend::Sqlite,
        &["0.0.0.0/0", "::/0", "localhost"],
        "laptop",
    );

    connect_expect(dev.socks, V4, o4.port(), socks::NOT_ALLOWED);
    connect_expect(dev.socks, "localhost", o4.port(), socks::NOT_ALLOWED);
    connect_expect(
        dev.socks,
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        o4.port(),
        socks::NOT_ALLOWED,
    );
    connect_expect(dev.socks, V6, o6.port(), socks::NOT_ALLOWED);
    // the gateway's own port, too
    connect_expect(dev.socks, V4, gw.port(), socks::NOT_ALLOWED);
    // cloud metadata, link-local, and loopback hidden in NAT64 or
    // IPv4-compatible IPv6, although 0.0.0.0/0 and ::/0 are allowed
    for (addr, what) in [
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
        ("::127.0.0.1", "IPv4-compatible 127.0.0.1"),
        ("fe80::1", "IPv6 link-local"),
    ] {
        let ip: std::net::IpAddr = addr.parse().unwrap();
        let (code, _) = socks::connect(dev.socks, ip, 80)
            .unwrap_or_else(|e| panic!("no SOCKS reply for {what}: {e}"));
        assert_eq!(
            code,
            socks::NOT_ALLOWED,
            "{what} ({addr}) was not refused by policy"
        );
    }
    o4.expect_accepted(0, "loopback was dialled without a rule naming it");
    o6.expect_accepted(0, "::1 was dialled without a rule naming it");
}

/// A closed port → 0x05.
#[test]
fn closed_port_is_refused_0x05() {
    let (_gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    connect_expect(dev.socks, V4, closed_port(), socks::REFUSED);
}

/// A name that does not resolve → 0x04 (allowed by a domain rule, so the
/// refusal is the resolver's, not the policy's).
#[test]
fn unresolvable_name_is_host_unreachable_0x04() {
    let (_gw, dev) = setup(Backend::Sqlite, &["invalid", "127.0.0.1/32"], "laptop");
    let t = std::time::Instant::now();
    connect_expect(
        dev.socks,
        "nonexistent.invalid",
        80,
        socks::HOST_UNREACHABLE,
    );
    eprintln!("[e2e] 0x04 after {:?}", t.elapsed());
}

/// Policy subjects: `--group` and `--user` rules apply to those users'
/// devices only; `--ports` limits a rule to those ports.
#[test]
fn rules_apply_to_their_subjects_and_ports() {
    let staff_only = Origin::start(V4, Mode::Echo);
    let bob_only = Origin::start(V4, Mode::Echo);
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.ok(&["user", "add", "alice", "--group", "staff"]);
    gw.ok(&["user", "add", "bob"]);
    let users = gw.ok(&["user", "list"]);
    assert!(
        users.contains("alice") && users.contains("staff") && users.contains("bob"),
        "user list: {users}"
    );
    gw.allow(
        "127.0.0.1/32",
        &[
            "--group",
            "staff",
            "--ports",
            &staff_only.port().to_string(),
        ],
    );
    let p = bob_only.port();
    gw.allow(
        "127.0.0.1/32",
        &["--user", "bob", "--ports", &format!("{}-{}", p, p + 1)],
    );
    gw.serve();
    let alice = Device::enrolled_up(&gw, "alice", "alice-laptop");
    let bob = Device::enrolled_up(&gw, "bob", "bob-laptop");

    let _a = connect_ok(alice.socks, V4, staff_only.port());
    connect_expect(bob.socks, V4, staff_only.port(), socks::NOT_ALLOWED);
    staff_only.expect_accepted(1, "a --group staff rule let bob (not in staff) through");

    let _b = connect_ok(bob.socks, V4, bob_only.port());
    connect_expect(alice.socks, V4, bob_only.port(), socks::NOT_ALLOWED);
    bob_only.expect_accepted(1, "a --user bob rule let alice through");
}
