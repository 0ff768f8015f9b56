//! Peer to peer: a device reaches another device's exported service with a
//! key the gateway brokered, directly, or through the gateway's relay when
//! the direct path is cut; and every refusal gets its SOCKS reply.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::netns::{self, Netns, veth};
use crate::harness::origin::Hasher;
use crate::harness::socks::{self, connect_expect, connect_ok};
use crate::harness::*;

const BULK: u64 = 100 * 1024 * 1024;

/// Polls `alice ping bob` until it succeeds, and returns its output: the
/// readiness signal that bob is online for peer sessions.
pub(crate) fn wait_peer_ready(alice: &Device, bob: &str) -> String {
    poll(
        &format!("`shimgate ping {bob}` to succeed"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let out = alice.cli(&["ping", bob, "-c", "1"]);
            out.ok().then_some(out.stdout)
        },
    )
}

/// Downloads everything `socks` gives for `target:port`; returns (bytes, sha256).
fn download(socks: SocketAddr, target: &str, port: u16) -> (u64, String) {
    let mut s = connect_ok(socks, target, port);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let t = Instant::now();
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) => panic!("peer download broke after {got} bytes: {e}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "[e2e] peer download: {got} bytes in {secs:.2}s ({:.0} MiB/s)",
        got as f64 / secs / 1048576.0
    );
    (got, h.hex())
}

/// Bytes through every interface of namespace `ns` (received + sent).
fn netns_bytes(ns: &str) -> u64 {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-n", ns, "-j", "-s", "link", "show"]);
    let out = run(&mut cmd, Duration::from_secs(10)).expect_ok();
    let links: serde_json::Value = serde_json::from_str(&out.stdout).expect("ip -j output");
    links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["ifname"] != "lo")
                .map(|l| {
                    l["stats64"]["rx"]["bytes"].as_u64().unwrap_or(0)
                        + l["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// ```text
///  sg-alice 198.51.100.2 ── 198.51.100.1 sg-gw 203.0.113.1 ── 203.0.113.2 sg-bob
///  sg-alice 192.0.2.1 ─────────── (their LAN) ─────────────── 192.0.2.2 sg-bob
/// ```
/// The gateway does not forward: alice reaches bob only over the LAN.
/// alice, the gateway and bob on three hosts, plus a LAN between the two
/// devices (their direct path), with a route between them via the gateway
/// too (which does not forward):
///
/// ```text
///  sg-alice 198.51.100.2 ── 198.51.100.1 sg-pgw 203.0.113.1 ── 203.0.113.2 sg-bob
///           192.0.2.1 ─────────────── LAN ─────────────────── 192.0.2.2
/// ```
///
/// bob exports a web page and a 100 MiB source on its loopback; policy lets
/// alice reach both. Both devices are up.
pub(crate) struct ThreeHosts {
    // processes first: fields drop in order, the namespaces last
    pub(crate) alice: Device,
    pub(crate) bob: Device,
    pub(crate) gw: Gateway,
    pub(crate) web: Origin,
    source: Origin,
    pub(crate) body: String,
    /// A UDP echo bob exports (`PORT/udp`).
    echo: crate::udp::UdpEcho,
    socks: SocketAddr,
    pub(crate) alice_ns: Netns,
    gw_ns: Netns,
    bob_ns: Netns,
}

/// 200 datagrams to bob's UDP echo by name through alice's UDP ASSOCIATE
/// (from alice's namespace); how many came back whole.
fn udp_exchange(ns: &str, socks: SocketAddr, port: u16) -> usize {
    use crate::udp::{Association, To};
    netns::in_netns(Some(ns), || {
        let a = Association::open(socks);
        (0..200u32)
            .filter(|i| {
                let payload = format!("datagram {i}");
                a.send(To::Name("bob.vpn.internal", port), payload.as_bytes());
                a.recv_named(Duration::from_secs(10))
                    .is_some_and(|(_, _, got)| got == payload.as_bytes())
            })
            .count()
    })
}

fn ip_cmd(args: &[&str]) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args);
    run(&mut cmd, Duration::from_secs(10)).expect_ok();
}

pub(crate) fn three_hosts() -> ThreeHosts {
    let alice_ns = Netns::new("sg-alice-");
    let gw_ns = Netns::new("sg-pgw-");
    let bob_ns = Netns::new("sg-bob-");
    veth(&alice_ns, "198.51.100.2/24", &gw_ns, "198.51.100.1/24");
    veth(&gw_ns, "203.0.113.1/24", &bob_ns, "203.0.113.2/24");
    veth(&alice_ns, "192.0.2.1/24", &bob_ns, "192.0.2.2/24");
    gw_ns.sysctl("net.ipv4.ip_forward=0");
    ip_cmd(&[
        "-n",
        &alice_ns.name,
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.51.100.1",
    ]);
    ip_cmd(&[
        "-n",
        &bob_ns.name,
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "203.0.113.1",
    ]);

    // bob's services, on bob's loopback only
    let body = unique_body("bob's page");
    let web = Origin::from_listener(
        netns::bind_in(Some(&bob_ns.name), "127.0.0.1:0".parse().unwrap()),
        Mode::Http { body: body.clone() },
    );
    let source = Origin::from_listener(
        netns::bind_in(Some(&bob_ns.name), "127.0.0.1:0".parse().unwrap()),
        Mode::Source { len: BULK },
    );
    let echo = netns::in_netns(Some(&bob_ns.name), crate::udp::UdpEcho::start);

    let gw_addr = SocketAddr::new(Ipv4Addr::new(198, 51, 100, 1).into(), 8443);
    let spec = GatewaySpec {
        netns: Some(gw_ns.name.clone()),
        listen: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 8443),
        names: vec!["gw.shimgate.test".into()],
        ips: vec!["198.51.100.1".into(), "203.0.113.1".into()],
        public_addr: Some(gw_addr.to_string()),
        aliases: vec![],
        vpn_range: None,
    };
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    for port in [web.port(), source.port()] {
        gw.allow(
            "bob.vpn.internal",
            &["--ports", &port.to_string(), "--user", "alice"],
        );
    }
    let udp_port = echo.addr.port().to_string();
    gw.allow(
        "bob.vpn.internal",
        &["--ports", &udp_port, "--proto", "udp", "--user", "alice"],
    );
    gw.serve();

    let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);
    let mut alice = Device::new_in("alice", Some(&alice_ns.name), socks);
    alice.enroll(&gw.token("alice")).expect_ok();
    let mut bob = Device::new_in("bob", Some(&bob_ns.name), socks);
    // bob dials the gateway at its own side's address
    let bob_code = gw.token("bob");
    bob.enroll(&bob_code).expect_ok();
    let config = std::fs::read_to_string(bob.config_toml()).unwrap();
    std::fs::write(
        bob.config_toml(),
        config.replace("198.51.100.1:8443", "203.0.113.1:8443"),
    )
    .unwrap();
    for port in [web.port(), source.port()] {
        bob.cli(&["export", &port.to_string()]).expect_ok();
    }
    bob.cli(&["export", &format!("{udp_port}/udp")]).expect_ok();
    alice.up();
    bob.up();
    ThreeHosts {
        alice,
        bob,
        gw,
        web,
        source,
        body,
        echo,
        socks,
        alice_ns,
        gw_ns,
        bob_ns,
    }
}

#[test]
fn direct_then_relayed_then_direct_again() {
    if !netns::require_root("peer::direct_then_relayed_then_direct_again") {
        return;
    }
    let net = three_hosts();
    let ThreeHosts {
        alice,
        bob,
        gw,
        web,
        source,
        body,
        socks,
        alice_ns,
        gw_ns,
        ..
    } = &net;
    let socks = *socks;
    let ping = wait_peer_ready(alice, "bob");
    assert!(
        ping.contains("path direct"),
        "ping should go direct: {ping}"
    );

    // by name and by VPN IP
    let ns = Some(alice_ns.name.as_str());
    let url = format!("http://bob.vpn.internal:{}/", web.port());
    let out = curl(ns, Some("--socks5-hostname"), Some(socks), &url);
    assert!(out.ok(), "curl {url} from alice: {out}");
    assert_eq!(&out.stdout, body);
    let status: serde_json::Value =
        serde_json::from_str(&bob.status(&["--json"]).stdout).expect("bob status --json");
    let bob_ip = status["vpn_ip"].as_str().expect("bob's VPN IP").to_owned();
    let url = format!("http://{bob_ip}:{}/", web.port());
    let out = curl(ns, Some("--socks5"), Some(socks), &url);
    assert!(out.ok(), "curl {url} from alice: {out}");
    assert_eq!(&out.stdout, body);

    // 100 MiB direct: the gateway's interfaces see almost none of it
    let before = netns_bytes(&gw_ns.name);
    let (got, hash) = netns::in_netns(ns, || download(socks, "bob.vpn.internal", source.port()));
    let through_gw = netns_bytes(&gw_ns.name) - before;
    let (sent, sent_hash) = source.wait_hash(Duration::from_secs(10));
    assert_eq!((got, &hash), (sent, &sent_hash), "direct download differs");
    eprintln!(
        "[e2e] direct: {got} bytes moved, {through_gw} bytes through the gateway's interfaces"
    );
    assert!(
        through_gw < BULK / 20,
        "{through_gw} bytes crossed the gateway's interfaces during a direct transfer of {got}"
    );
    let peers = alice.cli(&["peers"]).expect_ok().stdout;
    assert!(
        peers.contains("bob"),
        "`shimgate peers` should list bob: {peers}"
    );
    // UDP to bob's export, direct
    let relayed = || gw.logs().matches("peer session relayed").count();
    let relayed_before = relayed();
    let udp_port = net.echo.addr.port();
    assert_eq!(
        udp_exchange(&alice_ns.name, socks, udp_port),
        200,
        "UDP, direct"
    );
    assert_eq!(
        relayed(),
        relayed_before,
        "direct UDP went through the relay"
    );

    // cut the LAN: the same request goes through the relay, still whole
    ip_cmd(&[
        "-n",
        &alice_ns.name,
        "route",
        "add",
        "prohibit",
        "192.0.2.2/32",
    ]);
    let before = netns_bytes(&gw_ns.name);
    let started = Instant::now();
    let (got, hash) = netns::in_netns(ns, || download(socks, "bob.vpn.internal", source.port()));
    let through_gw = netns_bytes(&gw_ns.name) - before;
    let hashes = source.wait_hash(Duration::from_secs(10));
    assert_eq!((got, hash), hashes, "relayed download differs");
    eprintln!(
        "[e2e] relayed: {got} bytes in {:?}, {through_gw} bytes through the gateway's interfaces",
        started.elapsed()
    );
    // in from bob and out to alice, each at least the payload (ciphertext
    // carries a tag per frame)
    assert!(
        through_gw > 2 * BULK,
        "only {through_gw} bytes crossed the gateway for a relayed transfer of {got}"
    );
    let logs = gw.logs();
    assert!(
        logs.contains("peer session relayed"),
        "gateway log lacks the relay:\n{logs}"
    );
    // UDP to bob's export, relayed: a session of its own through the gateway
    let relayed_before = relayed();
    assert_eq!(
        udp_exchange(&alice_ns.name, socks, udp_port),
        200,
        "UDP, relayed"
    );
    assert!(relayed() > relayed_before, "relayed UDP took no relay");
    let view = alice.cli(&["peers", "--json"]).expect_ok().stdout;
    assert!(view.contains("bob"), "{view}");

    // the gateway never logged a session key (a 32-byte key in base64 is 43
    // characters and one '=')
    for line in logs.lines() {
        let key_like = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
            .any(|w| w.len() == 44 && w.ends_with('=') && !w.ends_with("=="));
        assert!(
            !key_like,
            "a gateway log line holds something shaped like a key: {line}"
        );
    }

    // restore the LAN: new sessions go direct again once the retry delay passed
    ip_cmd(&[
        "-n",
        &alice_ns.name,
        "route",
        "del",
        "prohibit",
        "192.0.2.2/32",
    ]);
    let ping = poll(
        "a new session to go direct again",
        Duration::from_secs(20),
        Duration::from_millis(500),
        || {
            let out = alice.cli(&["ping", "bob", "-c", "1"]);
            out.stdout.contains("path direct").then_some(out.stdout)
        },
    );
    eprintln!("[e2e] {ping}");
    let out = curl(
        ns,
        Some("--socks5-hostname"),
        Some(socks),
        &format!("http://bob.vpn.internal:{}/", web.port()),
    );
    assert_eq!(&out.stdout, body, "after restoring the LAN: {out}");

    // the operator sees every session: who, to whom, port, path, bytes
    let audit = poll(
        "the session reports to reach the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let a = gw.ok(&["audit", "--action", "peer.", "--limit", "200"]);
            (a.contains("ended: relayed") && a.contains("ended: direct")).then_some(a)
        },
    );
    let target = format!("bob:{}", source.port());
    assert!(
        audit
            .lines()
            .any(|l| l.contains("alice") && l.contains("peer.session ") && l.contains(&target)),
        "no grant entry for alice -> {target}:\n{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("peer.relay") && l.contains(&target)),
        "no relay entry:\n{audit}"
    );
    assert!(
        audit.contains(&format!("{BULK} received")),
        "no session end with the 100 MiB received:\n{audit}"
    );
}

/// Bytes the initiator sends before its first transport frame: session id,
/// then one frame holding `e` (32) and the empty payload's tag (16).
const HANDSHAKE_BYTES: usize = 16 + 2 + 48;

/// A TCP forwarder in front of bob's peer listener: keeps the first bytes
/// of the first connection (session id + first handshake message), and can
/// flip one bit of what the initiator sends at a given offset.
struct Recorder {
    first: Arc<Mutex<Vec<u8>>>,
    flip_at: Arc<Mutex<Option<usize>>>,
}

impl Recorder {
    fn start(listen: SocketAddr, to: SocketAddr) -> Recorder {
        let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("recorder on {listen}: {e}"));
        let first = Arc::new(Mutex::new(Vec::new()));
        let flip_at = Arc::new(Mutex::new(None));
        let (keep, flip) = (Arc::clone(&first), Arc::clone(&flip_at));
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut a) = conn else { continue };
                let Ok(mut b) = TcpStream::connect(to) else {
                    continue;
                };
                let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
                let keep = Arc::clone(&keep);
                let flip = *flip.lock().unwrap();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    let mut offset = 0usize;
                    while let Ok(n) = a.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut k = keep.lock().unwrap();
                        if k.len() < HANDSHAKE_BYTES {
                            k.extend_from_slice(&buf[..n]);
                        }
                        drop(k);
                        if let Some(at) = flip
                            && (offset..offset + n).contains(&at)
                        {
                            buf[at - offset] ^= 0x04;
                        }
                        offset += n;
                        if b.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut b2, &mut a2);
                    let _ = a2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { first, flip_at }
    }
}

/// Everything on this host: refusals with their SOCKS replies, a replayed
/// handshake, and a revoked peer's live link cut.
#[test]
fn refusals_replay_and_revocation() {
    let web = Origin::http(V4, &unique_body("bob's page"));
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 1024,
            every: Duration::from_millis(5),
        },
    );
    let closed_port = crate::harness::env::free_port();
    let forbidden = Origin::http(V4, "forbidden");
    let sink = Origin::start(V4, Mode::Sink);
    let lab_web = Origin::http(V4, "lab page");
    let sales_web = Origin::http(V4, "sales page");
    let mut gw = Gateway::init(Backend::Sqlite);
    for port in [web.port(), stream.port(), sink.port(), closed_port] {
        gw.allow("bob.vpn.internal", &["--ports", &port.to_string()]);
    }
    // rules on the peer's group rather than its name
    gw.ok(&["user", "add", "bob", "--group", "lab"]);
    gw.allow(
        "group:lab",
        &["--ports", &lab_web.port().to_string(), "--user", "alice"],
    );
    gw.allow("group:sales", &["--ports", &sales_web.port().to_string()]);
    gw.serve();
    let mut alice = Device::enrolled(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    // bob's listener on 127.0.0.2; the recorder takes 127.0.0.1 at the same
    // port, which is where the gateway sends alice (the address it sees bob at)
    let port = crate::harness::env::free_port();
    let config = std::fs::read_to_string(bob.config_toml()).unwrap();
    std::fs::write(
        bob.config_toml(),
        config.replace(
            "peer_listen = \"0.0.0.0:0\"",
            &format!("peer_listen = \"127.0.0.2:{port}\""),
        ),
    )
    .unwrap();
    let recorder = Recorder::start(
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 2], port)),
    );
    for p in [
        web.port(),
        stream.port(),
        sink.port(),
        forbidden.port(),
        lab_web.port(),
        sales_web.port(),
    ] {
        bob.cli(&["export", &p.to_string()]).expect_ok();
    }
    alice.up();
    bob.up();
    wait_peer_ready(&alice, "bob");

    let out = curl(
        None,
        Some("--socks5-hostname"),
        Some(alice.socks),
        &format!("http://bob.vpn.internal:{}/", web.port()),
    );
    assert!(out.ok(), "{out}");
    web.expect_accepted(1, "bob's web service");

    // the same session id again: bob refuses, nothing reaches the service
    let first = recorder.first.lock().unwrap().clone();
    assert!(
        first.len() >= HANDSHAKE_BYTES,
        "recorded {} bytes",
        first.len()
    );
    let mut replay = TcpStream::connect(("127.0.0.2", port)).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    replay.write_all(&first[..HANDSHAKE_BYTES]).unwrap();
    let mut buf = [0u8; 64];
    match replay.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("bob answered a replayed handshake with {n} bytes"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("bob neither closed nor answered a replayed handshake: {e}"),
    }
    web.expect_accepted(1, "a replayed handshake reached bob's service");

    // one bit flipped in alice's first transport frame: bob forwards nothing
    *recorder.flip_at.lock().unwrap() = Some(HANDSHAKE_BYTES + 2 + 3);
    let mut s = connect_ok(alice.socks, "bob.vpn.internal", sink.port());
    s.write_all(b"transfer 100 to mallory").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (received, _) = sink.wait_hash(Duration::from_secs(10));
    assert_eq!(received, 0, "bob forwarded bytes from a tampered frame");
    *recorder.flip_at.lock().unwrap() = None;

    // policy: bob exports it, but no rule lets alice in
    connect_expect(
        alice.socks,
        "bob.vpn.internal",
        forbidden.port(),
        socks::NOT_ALLOWED,
    );
    // a rule for bob's group lets alice in; one for a group bob is not in does not
    let lab_url = format!("http://bob.vpn.internal:{}/", lab_web.port());
    let out = curl(None, Some("--socks5-hostname"), Some(alice.socks), &lab_url);
    assert_eq!(
        out.stdout, "lab page",
        "{lab_url} through a group:lab rule: {out}"
    );
    connect_expect(
        alice.socks,
        "bob.vpn.internal",
        sales_web.port(),
        socks::NOT_ALLOWED,
    );
    forbidden.expect_accepted(0, "a forbidden peer port");
    // allowed, but bob does not export it
    connect_expect(alice.socks, "bob.vpn.internal", closed_port, socks::REFUSED);
    // no such device
    connect_expect(
        alice.socks,
        "carol.vpn.internal",
        web.port(),
        socks::HOST_UNREACHABLE,
    );
    connect_expect(
        alice.socks,
        "100.127.255.254",
        web.port(),
        socks::HOST_UNREACHABLE,
    );

    // bob stops exporting a port: new requests to it are refused at once
    bob.cli(&["export", "--remove", &sink.port().to_string()])
        .expect_ok();
    poll(
        "the gateway to learn that bob stopped exporting the port",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let (code, _) = socks::connect(alice.socks, "bob.vpn.internal", sink.port()).ok()?;
            (code == socks::REFUSED).then_some(())
        },
    );

    // a live link, then bob is revoked: the link is cut within 1 s
    let mut live = connect_ok(alice.socks, "bob.vpn.internal", stream.port());
    live.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < 16 * 1024 {
        match live.read(&mut buf) {
            Ok(0) => panic!("the peer stream ended before the revoke"),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the peer stream broke before the revoke: {e}"),
        }
        assert!(Instant::now() < deadline, "the peer stream is not flowing");
    }
    gw.ok(&["device", "revoke", "bob"]);
    let revoked = Instant::now();
    loop {
        match live.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "the link to revoked bob is still open 5 s after `device revoke`"
        );
    }
    let cut = revoked.elapsed();
    eprintln!("[e2e] peer link cut {cut:?} after `device revoke` returned");
    assert!(
        cut < Duration::from_secs(1),
        "peer link cut after {cut:?}, not within 1 s"
    );
    connect_expect(
        alice.socks,
        "bob.vpn.internal",
        web.port(),
        socks::HOST_UNREACHABLE,
    );

    // bob offline: fails fast, no hang
    bob.stop();
    let t = Instant::now();
    connect_expect(
        alice.socks,
        "bob.vpn.internal",
        web.port(),
        socks::HOST_UNREACHABLE,
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "an offline peer took {:?} to refuse",
        t.elapsed()
    );
    alice.stop();
}

/// Every readable, writable mapping of process `pid` (heap, stacks,
/// anonymous memory): where a leftover key would be.
fn writable_memory(pid: u32) -> Vec<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else {
            continue;
        };
        let mut buf = vec![0u8; (hi - lo) as usize];
        if mem.seek(SeekFrom::Start(lo)).is_ok() && mem.read_exact(&mut buf).is_ok() {
            out.push(buf);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return false;
    };
    hay.iter()
        .enumerate()
        .filter(|(_, b)| **b == first)
        .any(|(i, _)| hay.get(i..i + needle.len()) == Some(needle))
}

/// The gateway makes K, sends it to both devices, and keeps no copy: after
/// the grant, K is nowhere in its memory, raw or in base64 (needs root to
/// read another process's memory).
#[test]
fn the_gateway_keeps_no_copy_of_a_session_key() {
    if !netns::require_root("peer::the_gateway_keeps_no_copy_of_a_session_key") {
        return;
    }
    let web = Origin::http(V4, "bob's page");
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("bob.vpn.internal", &["--ports", &web.port().to_string()]);
    gw.serve();
    let alice = Device::enrolled(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    bob.cli(&["export", &web.port().to_string()]).expect_ok();
    bob.up();
    let pid = gw.pid().expect("gateway pid");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = alice.connect_to_gateway(&rt);
    let grant = poll(
        "a grant for bob",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            rt.block_on(shimgate_proxy::peer::request_grant(
                conn.send.clone(),
                "bob",
                web.port(),
                Default::default(),
            ))
            .ok()
        },
    );
    let key = *grant.key.bytes();
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(key)
    };
    // A few more sessions, so that buffers the first one used get reused.
    for _ in 0..3 {
        rt.block_on(shimgate_proxy::peer::request_grant(
            conn.send.clone(),
            "bob",
            web.port(),
            Default::default(),
        ))
        .expect("another grant");
    }
    let regions = writable_memory(pid);
    let scanned: usize = regions.iter().map(Vec::len).sum();
    assert!(
        scanned > 1 << 20,
        "read only {scanned} bytes of the gateway's memory"
    );
    let raw = regions.iter().any(|r| contains(r, &key));
    let text = regions.iter().any(|r| contains(r, b64.as_bytes()));
    eprintln!(
        "[e2e] scanned {scanned} bytes of the gateway's writable memory: raw key {raw}, base64 key {text}"
    );
    assert!(
        !raw,
        "the gateway's memory still holds a granted key (raw bytes)"
    );
    assert!(
        !text,
        "the gateway's memory still holds a granted key (base64)"
    );
    // the scan does find a key where one is: this process still holds the grant
    let ours = writable_memory(std::process::id());
    assert!(
        ours.iter().any(|r| contains(r, grant.key.bytes())),
        "the scanner missed the key in this process, which holds it"
    );
}

/// The network interfaces of namespace `ns`, loopback aside.
fn links_of(ns: &str) -> Vec<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-n", ns, "-j", "link", "show"]);
    let out = run(&mut cmd, Duration::from_secs(10)).expect_ok();
    let links: serde_json::Value = serde_json::from_str(&out.stdout).expect("ip -j link show");
    links
        .as_array()
        .expect("a list of links")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|name| *name != "lo")
        .map(str::to_owned)
        .collect()
}

/// bob's host vanishes mid-transfer: its links go down, so no FIN or RST
/// tells anyone. alice's SOCKS client sees a reset within the dead-peer
/// timeout instead of hanging, the gateway takes bob offline (new requests
/// answered 0x04 at once), and when bob's host is back, bob reconnects by
/// itself and new sessions work.
#[test]
fn a_peer_that_vanishes_mid_transfer_is_noticed() {
    use shimgate_wire::liveness::DEAD_PEER_TIMEOUT;
    if !netns::require_root("peer::a_peer_that_vanishes_mid_transfer_is_noticed") {
        return;
    }
    let net = three_hosts();
    wait_peer_ready(&net.alice, "bob");
    let ns = Some(net.alice_ns.name.as_str());
    let bob_ns = net.bob_ns.name.as_str();
    let links = links_of(bob_ns);
    let (socks, source, web) = (net.socks, net.source.port(), net.web.port());
    let (got, ended, how) = netns::in_netns(ns, || {
        let mut s = connect_ok(socks, "bob.vpn.internal", source);
        s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < 1024 * 1024 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => panic!("the transfer ended after {got} bytes, before the cut"),
                Ok(n) => got += n,
            }
        }
        for link in &links {
            ip_cmd(&["-n", bob_ns, "link", "set", link, "down"]);
        }
        let cut = Instant::now();
        let how = loop {
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got += n,
                Err(e) => break Some(e.kind()),
            }
        };
        (got, cut.elapsed(), how)
    });
    eprintln!("[e2e] bob vanished after {got} bytes; alice's client saw {how:?} {ended:?} later");
    assert_eq!(
        how,
        Some(ErrorKind::ConnectionReset),
        "alice's client should see a reset (None: a clean end of a cut-short transfer)"
    );
    assert!(
        ended <= DEAD_PEER_TIMEOUT + Duration::from_secs(10),
        "the transfer ended only {ended:?} after bob vanished"
    );

    let offline = poll(
        "the gateway to answer that bob is offline",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            netns::in_netns(ns, || {
                let asked = Instant::now();
                match socks::connect(socks, "bob.vpn.internal", web) {
                    Ok((socks::HOST_UNREACHABLE, _)) => Some(asked.elapsed()),
                    _ => None,
                }
            })
        },
    );
    eprintln!("[e2e] bob offline for new sessions; the refusal took {offline:?}");
    assert!(
        offline < Duration::from_secs(1),
        "offline answered in {offline:?}"
    );

    for link in &links {
        ip_cmd(&["-n", bob_ns, "link", "set", link, "up"]);
    }
    // the link going down took its routes with it
    ip_cmd(&[
        "-n",
        bob_ns,
        "route",
        "replace",
        "198.51.100.0/24",
        "via",
        "203.0.113.1",
    ]);
    let back = Instant::now();
    poll(
        "a new session to bob after bob's host came back",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            netns::in_netns(ns, || {
                match socks::connect(socks, "bob.vpn.internal", web) {
                    Ok((socks::SUCCEEDED, s)) => {
                        socks::http_get(s, "bob").contains(&net.body).then_some(())
                    }
                    _ => None,
                }
            })
        },
    );
    eprintln!(
        "[e2e] new sessions to bob {:?} after its host came back",
        back.elapsed()
    );
}

/// UDP to another device: bob exports a UDP echo (`export PORT/udp`), and a
/// program of alice's started with `shimgate run` exchanges checksummed
/// datagrams with `bob.vpn.internal` over a peer session, none lost or
/// altered; the gateway grants it as UDP, and a UDP port bob does not
/// export is refused.
#[test]
fn udp_to_a_peer_export() {
    let echo = crate::udp::UdpEcho::start();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port bob won't export");
    let silent_port = silent.local_addr().expect("its address").port();
    let web = Origin::http(V4, &unique_body("bob's page, for readiness"));
    let mut gw = Gateway::init(Backend::Sqlite);
    for port in [echo.addr.port(), silent_port] {
        gw.allow(
            "bob.vpn.internal",
            &["--ports", &port.to_string(), "--proto", "udp"],
        );
    }
    gw.allow("bob.vpn.internal", &["--ports", &web.port().to_string()]);
    gw.serve();
    let mut alice = Device::enrolled(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    bob.cli(&["export", &format!("{}/udp", echo.addr.port())])
        .expect_ok();
    let out = bob.cli(&["export", &web.port().to_string()]).expect_ok();
    assert!(
        out.stdout
            .contains(&format!("offering 127.0.0.1:{} (UDP)", echo.addr.port())),
        "{out}"
    );
    alice.up();
    bob.up();
    wait_peer_ready(&alice, "bob");

    let run = |args: &[&str]| {
        let mut all = vec!["run", "--", "/usr/bin/python3", "-c"];
        all.extend_from_slice(args);
        alice.cli_within(&all, Duration::from_secs(120))
    };
    let fake = run(&[crate::shim::GETADDRINFO, "bob.vpn.internal"]);
    let fake = fake.stdout.trim().to_owned();
    assert!(
        fake.starts_with("198.18."),
        "bob's name under `run`: {fake}"
    );
    let port = echo.addr.port().to_string();
    let out = run(&[crate::shim::UDP_ECHO_CLIENT, &fake, &port, "20000"]);
    assert!(out.ok(), "the UDP client under `run`: {out}");
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(
        words.get(..6),
        Some(&["20000", "0", "0", "0", "connected", fake.as_str()][..]),
        "answered, lost, corrupted, from elsewhere, the connected socket's answer, its peer: {out}"
    );
    eprintln!(
        "udp to a peer through the socket shim: {}",
        out.stdout.trim()
    );
    // The same exchange with a port bob does not export: no session, and
    // so no answer (as a host with nothing on that port would give).
    const ONE_DATAGRAM: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"anyone?", (sys.argv[1], int(sys.argv[2])))
try:
    print("answered", s.recvfrom(100)[0])
except socket.timeout:
    print("no answer")
"#;
    let out = run(&[ONE_DATAGRAM, &fake, &silent_port.to_string()]);
    assert_eq!(out.stdout.trim(), "no answer", "{out}");
    let out = run(&[ONE_DATAGRAM, &fake, &port]);
    assert!(out.stdout.starts_with("answered"), "{out}");

    // A SOCKS client's UDP ASSOCIATE to the same export, by name: the
    // answers name bob as their source.
    use crate::udp::{Association, To};
    let a = Association::open(alice.socks);
    for i in 0..200u32 {
        let payload = format!("datagram {i}");
        a.send(
            To::Name("bob.vpn.internal", echo.addr.port()),
            payload.as_bytes(),
        );
        let got = a.recv_named(Duration::from_secs(10));
        assert_eq!(
            got,
            Some((
                "bob.vpn.internal".to_owned(),
                echo.addr.port(),
                payload.into_bytes()
            )),
            "answer {i} through UDP ASSOCIATE"
        );
    }
    let audit = poll(
        "the UDP peer session in the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let a = gw.ok(&["audit", "--action", "peer.session", "--limit", "50"]);
            a.lines()
                .any(|l| l.contains(&format!("bob:{port}")) && l.contains("proto=udp"))
                .then_some(a)
        },
    );
    assert!(!audit.is_empty());
}

/// The VPN range chosen at `init` is the one devices get their addresses
/// from and the one a device takes for peers: alice reaches bob's export at
/// bob's VPN IP in that range (with the fixed range of before, that address
/// went to the gateway, whose policy refuses it).
#[test]
fn a_vpn_range_chosen_at_init() {
    let body = unique_body("bob's page in a chosen range");
    let web = Origin::http(V4, &body);
    // A documentation range this host holds no address in: the gateway
    // guards its own addresses (this machine kind has 192.0.2.2 on eth0).
    let prefix = ["203.0.113", "198.51.100", "192.0.2"]
        .into_iter()
        .find(|p| (1..=3).all(|h| std::net::UdpSocket::bind(format!("{p}.{h}:0")).is_err()))
        .expect("a documentation /24 this host has no address in");
    let range = format!("{prefix}.0/24");
    let mut gw = Gateway::init_spec(Backend::Sqlite, GatewaySpec::localhost().vpn_range(&range));
    gw.allow("bob.vpn.internal", &["--ports", &web.port().to_string()]);
    gw.serve();
    let mut alice = Device::enrolled(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    for d in [&alice, &bob] {
        let c = std::fs::read_to_string(d.config_dir.join("config.toml")).expect("config.toml");
        assert!(c.contains(&format!("vpn_range = \"{range}\"")), "{c}");
    }
    bob.cli(&["export", &web.port().to_string()]).expect_ok();
    alice.up();
    bob.up();
    wait_peer_ready(&alice, "bob");
    let status: serde_json::Value =
        serde_json::from_str(&bob.status(&["--json"]).stdout).expect("bob status --json");
    let bob_ip = status["vpn_ip"].as_str().expect("bob's VPN IP").to_owned();
    assert!(
        bob_ip.starts_with(&format!("{prefix}.")),
        "bob's VPN IP: {bob_ip}"
    );
    let url = format!("http://{bob_ip}:{}/", web.port());
    let out = curl(None, Some("--socks5"), Some(alice.socks), &url);
    assert!(out.ok(), "curl {url} from alice: {out}");
    assert_eq!(out.stdout, body);
}
