//! TUN mode (`shimgate up --tun`), the network-driver shim, across three
//! hosts in network namespaces (needs root):
//!
//! ```text
//!  sg-dev  198.51.100.2 ──veth── 198.51.100.1  sg-gw  203.0.113.1 ──veth── 203.0.113.2  sg-intra
//!  shimgate up --tun, curl                shimgate-gateway (no forwarding)        servers
//! ```
//!
//! Programs in sg-dev use no proxy setting at all: the interface and its
//! routes bring them to the gateway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::harness::hosts::{INTRA, gateway_in, three_hosts};
use crate::harness::netns;
use crate::harness::origin::{CHUNK, Hasher, pattern_chunk};
use crate::harness::proc::run;
use crate::harness::*;

const INTRA_NET: &str = "203.0.113.0/24";
/// A port policy does not open (the rule names 8000-8999).
const FORBIDDEN_PORT: u16 = 9000;

/// The routes `shimgate status --json` says the TUN interface has.
fn tun_routes(dev: &Device) -> Vec<String> {
    let out = dev.status(&["--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["tun"]["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn link_exists(ns: &str, dev: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "link", "show", dev]);
    run(&mut cmd, Duration::from_secs(10)).ok()
}

/// A connect from inside `ns` (non-blocking, with a timeout), its error kind.
fn connect_error(ns: &str, to: SocketAddr) -> Option<std::io::Error> {
    netns::in_netns(Some(ns), || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).err()
    })
}

#[test]
fn every_program_reaches_the_intranet_with_no_setting() {
    if !netns::require_root("tun::every_program_reaches_the_intranet_with_no_setting") {
        return;
    }
    let hosts = three_hosts("intranet page through TUN");
    let (dev_ns, gw_ns, intra_ns) = (&hosts.dev_ns, &hosts.gw_ns, &hosts.intra_ns);
    let mut gw = Gateway::init_spec(Backend::Sqlite, gateway_in(gw_ns, vec![]));
    gw.allow(INTRA_NET, &["--ports", "8000-8999"]);
    gw.serve();

    let ns = dev_ns.name.as_str();
    let sink = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8090)),
        Mode::Sink,
    );
    let source_len = 48 << 20;
    let source = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8091)),
        Mode::Source { len: source_len },
    );

    let socks = SocketAddr::from(([127, 0, 0, 1], 1080));
    let mut dev = Device::new_in("tun-laptop", Some(ns), socks);
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up_args = vec!["--tun".into()];
    dev.up();
    assert!(
        link_exists(ns, "shimgate0"),
        "no shimgate0 in sg-dev after `up --tun`\n{}",
        dev.logs()
    );
    poll(
        "the intranet's route to appear in `status --json`",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            tun_routes(&dev)
                .contains(&INTRA_NET.to_owned())
                .then_some(())
        },
    );
    let status = dev.status(&[]);
    assert!(
        status.stdout.contains("tun:     shimgate0") && status.stdout.contains(INTRA_NET),
        "`shimgate status` does not show TUN mode and its route: {status}"
    );

    // curl with no proxy setting
    let url = format!("http://{INTRA}:8080/");
    let out = curl(Some(ns), None, None, &url);
    assert!(
        out.ok(),
        "curl {url} (no proxy) in TUN mode: {out}\n{}",
        dev.logs()
    );
    assert_eq!(out.stdout, hosts.body, "wrong page through TUN");
    hosts
        .web
        .expect_accepted(1, "the intranet server saw the TUN flow");
    poll(
        "the TUN flow's audit entry, naming the TUN shim",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            gw.ok(&["audit", "--action", "tunnel", "--limit", "50"])
                .contains("shim=tun")
                .then_some(())
        },
    );

    // The far end's answer, before anything looks connected: a closed port
    // is ECONNREFUSED, a port policy does not open is "administratively
    // prohibited" (EHOSTUNREACH), both for a non-blocking connect.
    let closed = SocketAddr::new(INTRA.into(), 8081);
    let e = connect_error(ns, closed).expect("a connect to a closed intranet port succeeded");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "closed port {closed}: {e}"
    );
    let forbidden = SocketAddr::new(INTRA.into(), FORBIDDEN_PORT);
    let e = connect_error(ns, forbidden).expect("a connect policy forbids succeeded");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "a port policy does not open: {e} (expected ICMP prohibited, EHOSTUNREACH)"
    );

    // A far-end close is an end of data, every time.
    let web = SocketAddr::new(INTRA.into(), 8080);
    let ends = netns::in_netns(Some(ns), || {
        (0..100)
            .filter(|_| {
                let Ok(mut s) = TcpStream::connect_timeout(&web, Duration::from_secs(10)) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut page = String::new();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_to_string(&mut page).is_ok()
                    && page.ends_with(&hosts.body)
            })
            .count()
    });
    assert_eq!(
        ends, 100,
        "of 100 flows, only {ends} saw the page and then EOF"
    );

    // Bytes both ways, checked, with half-close: the sink answers after our
    // EOF, the source closes after its last byte.
    let up_len: usize = 32 << 20;
    let (sent_hash, answer) = netns::in_netns(Some(ns), || {
        let mut s = TcpStream::connect(sink.addr).expect("connect to the sink through TUN");
        let mut hasher = Hasher::new();
        let mut chunk = vec![0u8; CHUNK];
        for i in 0..(up_len / CHUNK) as u64 {
            pattern_chunk(i, &mut chunk);
            hasher.update(&chunk);
            s.write_all(&chunk).expect("write to the sink");
        }
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .expect("the sink's answer after our half-close");
        (hasher.hex(), answer)
    });
    assert_eq!(
        answer.trim(),
        sent_hash,
        "the sink got other bytes than were sent"
    );
    let got = netns::in_netns(Some(ns), || {
        let mut s = TcpStream::connect(source.addr).expect("connect to the source through TUN");
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf).expect("read from the source") {
                0 => break,
                k => {
                    hasher.update(&buf[..k]);
                    n += k as u64;
                }
            }
        }
        (n, hasher.hex())
    });
    let (len, hash) = source.wait_hash(Duration::from_secs(10));
    assert_eq!(got, (len, hash), "the source's bytes arrived changed");
    assert_eq!(len, source_len);

    // A killed `up` leaves nothing behind, and the next one starts clean.
    let ip = |net: &str| -> Vec<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns, "route", "show", net]);
        run(&mut cmd, Duration::from_secs(10))
            .stdout
            .lines()
            .map(String::from)
            .collect()
    };
    dev.kill();
    poll(
        "shimgate0 to go with the killed `up`",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || (!link_exists(ns, "shimgate0")).then_some(()),
    );
    assert!(
        ip(INTRA_NET).is_empty(),
        "a route outlived `up`: {:?}",
        ip(INTRA_NET)
    );
    dev.up();
    poll(
        "the route to come back after a restart",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            tun_routes(&dev)
                .contains(&INTRA_NET.to_owned())
                .then_some(())
        },
    );
    let out = curl(Some(ns), None, None, &url);
    assert!(out.ok(), "curl through TUN after a restart: {out}");
}
