//! Several gateways on one Postgres registry: each says it is alive once a second (its
//! heartbeat), `shimgate-gateway gateway list` on any of them shows them all with the devices
//! each holds, `device list` which gateway each device last connected to, and a gateway that
//! stops beating (killed) is shown down within a few seconds. A revocation through one reaches
//! the others.

use std::time::{Duration, Instant};

use crate::harness::socks;
use crate::harness::*;

/// `gateway list`'s row for gateway `name`: its columns (GATEWAY ADDRESS REGION VERSION DEVICES
/// STATE, then the last heartbeat).
fn row(list: &str, name: &str) -> Option<Vec<String>> {
    list.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

/// Polls `gateway list` (asked of `gw`) until `want` holds for gateway `name`'s row.
fn wait_for_row(
    gw: &Gateway,
    name: &str,
    what: &str,
    limit: Duration,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    poll(
        &format!("gateway list to show {name} {what}"),
        limit,
        Duration::from_millis(100),
        || row(&gw.ok(&["gateway", "list"]), name).filter(|r| want(r)),
    )
}

const STATE: usize = 5;
const DEVICES: usize = 4;

#[test]
fn gateways_on_one_registry_are_listed_and_a_dead_one_shown_down() {
    let mut a = Gateway::init(Backend::Postgres);
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    let mut b = Gateway::init_on(a.db.shared(), b_spec);
    a.serve_args(&["--console", "off", "--region", "eu-west"]);
    b.serve();

    let version = env!("CARGO_PKG_VERSION");
    let ra = wait_for_row(&a, "localhost", "up", Duration::from_secs(10), |r| {
        r.get(STATE).map(String::as_str) == Some("up")
    });
    assert_eq!(
        ra[1..DEVICES],
        [&format!("localhost:{}", a.port()), "eu-west", version],
        "{ra:?}"
    );
    let rb = wait_for_row(&b, "gw-b.test", "up", Duration::from_secs(10), |r| {
        r.get(STATE).map(String::as_str) == Some("up")
    });
    assert_eq!(rb[2], "-", "no region given: {rb:?}");
    assert_eq!(rb[DEVICES], "0", "{rb:?}");

    // A device connected to a: a holds one device, b none.
    let dev = Device::enrolled_up(&a, "alice", "laptop");
    wait_for_row(
        &b,
        "localhost",
        "holding one device",
        Duration::from_secs(10),
        |r| r.get(DEVICES).map(String::as_str) == Some("1"),
    );
    // The registry, read through b, says the device is on a.
    let devices = b.device_list();
    let laptop = devices
        .lines()
        .find(|l| l.starts_with("laptop "))
        .unwrap_or_else(|| panic!("laptop is not listed: {devices}"));
    assert_eq!(
        laptop.split_whitespace().last(),
        Some("localhost"),
        "device list's GATEWAY column: {devices}"
    );

    // b dies without a word: shown down within a few seconds, a unaffected.
    b.kill();
    let killed = Instant::now();
    let rb = wait_for_row(&a, "gw-b.test", "down", Duration::from_secs(15), |r| {
        r.get(STATE).map(String::as_str) == Some("down")
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(6),
        "shown down {took:?} after it died: {rb:?}"
    );
    let ra = row(&a.ok(&["gateway", "list"]), "localhost").expect("a is still listed");
    assert_eq!(ra[DEVICES..=STATE], ["1", "up"], "{ra:?}");

    // The device gone, a holds none; b, forgotten, is no longer listed.
    drop(dev);
    wait_for_row(
        &a,
        "localhost",
        "holding no device",
        Duration::from_secs(10),
        |r| r.get(DEVICES).map(String::as_str) == Some("0"),
    );
    assert!(a.ok(&["gateway", "forget", "gw-b.test"]).contains("forgot"));
    assert!(row(&a.ok(&["gateway", "list"]), "gw-b.test").is_none());
    let out = a.cli(&["gateway", "forget", "gw-b.test"]);
    assert!(
        !out.ok() && out.stderr.contains("no gateway named gw-b.test"),
        "{out}"
    );
}

/// A revocation made through one gateway cuts the device's live tunnel on
/// another within 1 s (every gateway hears the registry's NOTIFY), and the
/// device's next request there is refused.
#[test]
fn a_revocation_through_one_gateway_cuts_tunnels_on_another() {
    let mut a = Gateway::init(Backend::Postgres);
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    // Devices reach b by its address (the name is not in any resolver).
    b_spec.public_addr = Some(b_spec.listen.to_string());
    let mut b = Gateway::init_on(a.db.shared(), b_spec);
    a.allow("127.0.0.1/32", &[]);
    a.serve_args(&["--console", "off"]);
    b.serve();
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 1024,
            every: Duration::from_millis(5),
        },
    );
    let dev = Device::enrolled_up(&b, "alice", "roaming-laptop");
    let mut live = crate::revoke::flowing(&dev, stream.port());

    a.ok(&["device", "revoke", "roaming-laptop"]);
    let (end, cut) = crate::revoke::cut_after(&mut live, Instant::now());
    eprintln!("[e2e] tunnel on b cut ({end}) {cut:?} after the revocation through a returned");
    assert!(
        cut < Duration::from_secs(1),
        "the revoked device's tunnel on the other gateway was cut after {cut:?}, expected < 1 s"
    );
    match socks::connect(dev.socks, V4, stream.port()) {
        Ok((code, _)) => assert_eq!(code, socks::NOT_ALLOWED, "{}", socks::reply_name(code)),
        Err(e) => panic!("no SOCKS reply for the revoked device ({e}); expected 0x02"),
    }
}
