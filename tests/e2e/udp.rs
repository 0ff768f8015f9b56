//! UDP through the gateway: a SOCKS5 client's UDP ASSOCIATE → `shimgate up`
//! → the association's UDP channel (or its HTTP/2 stream) → the gateway → a
//! UDP server, and back. The client is
//! our own (curl and browsers never use UDP ASSOCIATE), so that every edge of
//! RFC 1928 §7 can be sent on purpose.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::socks::{self, request};
use crate::harness::*;

/// A UDP server on 127.0.0.1 that echoes every datagram to its sender, and
/// sends a copy from a second socket too: an answer from an address the
/// association never sent to, which the gateway must not pass on.
pub(crate) struct UdpEcho {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    pub(crate) fn start() -> UdpEcho {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("echo socket");
        let spoofer = UdpSocket::bind("127.0.0.1:0").expect("spoofer socket");
        UdpEcho::on(sock, spoofer)
    }

    /// Echoes on `sock`, with copies from `spoofer`.
    pub(crate) fn on(sock: UdpSocket, spoofer: UdpSocket) -> UdpEcho {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("echo address");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let _ = spoofer.send_to(b"spoofed", from);
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        UdpEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One UDP ASSOCIATE: the TCP control connection and the client's socket.
pub(crate) struct Association {
    control: TcpStream,
    sock: UdpSocket,
    relay: SocketAddr,
}

pub(crate) enum To<'a> {
    Addr(SocketAddr),
    Name(&'a str, u16),
}

impl Association {
    pub(crate) fn open(proxy: SocketAddr) -> Association {
        let (reply, control) = request(proxy, socks::UDP_ASSOCIATE, Ipv4Addr::UNSPECIFIED, 0)
            .expect("an answer to UDP ASSOCIATE");
        assert_eq!(
            reply.code,
            socks::SUCCEEDED,
            "UDP ASSOCIATE: {}",
            socks::reply_name(reply.code)
        );
        let relay = reply.bound.expect("the relay's address");
        assert_eq!(
            relay.ip(),
            IpAddr::from(Ipv4Addr::LOCALHOST),
            "the relay binds where the TCP connection came in, not every interface"
        );
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        Association {
            control,
            sock,
            relay,
        }
    }

    fn packet(to: &To, frag: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 0, frag];
        match to {
            To::Addr(SocketAddr::V4(a)) => {
                p.push(1);
                p.extend_from_slice(&a.ip().octets());
                p.extend_from_slice(&a.port().to_be_bytes());
            }
            To::Addr(SocketAddr::V6(a)) => {
                p.push(4);
                p.extend_from_slice(&a.ip().octets());
                p.extend_from_slice(&a.port().to_be_bytes());
            }
            To::Name(n, port) => {
                p.push(3);
                p.push(n.len() as u8);
                p.extend_from_slice(n.as_bytes());
                p.extend_from_slice(&port.to_be_bytes());
            }
        }
        p.extend_from_slice(payload);
        p
    }

    pub(crate) fn send(&self, to: To, payload: &[u8]) {
        self.send_raw(&Self::packet(&to, 0, payload));
    }

    fn send_raw(&self, packet: &[u8]) {
        self.sock
            .send_to(packet, self.relay)
            .expect("send to the relay");
    }

    /// The next answer from a source named by name (a peer device): the
    /// name, port and payload, or `None` after `wait`.
    pub(crate) fn recv_named(&self, wait: Duration) -> Option<(String, u16, Vec<u8>)> {
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        assert_eq!(from, self.relay, "an answer from somewhere but the relay");
        let p = &buf[..n];
        assert_eq!(&p[..4], &[0, 0, 0, 3], "RSV, FRAG and a name's ATYP");
        let len = usize::from(p[4]);
        let name = String::from_utf8(p[5..5 + len].to_vec()).expect("a name");
        let port = u16::from_be_bytes([p[5 + len], p[6 + len]]);
        Some((name, port, p[7 + len..].to_vec()))
    }

    /// The next answer (its source and payload), or `None` after `wait`.
    pub(crate) fn recv(&self, wait: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 65536];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        assert_eq!(from, self.relay, "an answer from somewhere but the relay");
        let p = &buf[..n];
        assert_eq!(&p[..3], &[0, 0, 0], "RSV and FRAG of an answer");
        assert_eq!(p[3], 1, "answers name their source as an IPv4 address");
        let ip = Ipv4Addr::new(p[4], p[5], p[6], p[7]);
        let port = u16::from_be_bytes([p[8], p[9]]);
        Some((SocketAddr::new(ip.into(), port), p[10..].to_vec()))
    }
}

/// A payload that says its own number and checks itself: seq, bytes, and
/// the first 8 bytes of their SHA-256.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.extend((0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    let sum = Sha256::digest(&p);
    p.extend_from_slice(&sum[..8]);
    p
}

fn check(p: &[u8]) -> Option<u32> {
    let (body, sum) = p.split_at_checked(p.len().checked_sub(8)?)?;
    let seq = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    (Sha256::digest(body)[..8] == *sum).then_some(seq)
}

/// 2,000 checksummed datagrams of 1 to 1,200 bytes, at most 32 in flight:
/// every one answered, none corrupted, and the spoofed copies from another
/// address of the intranet never reach the client. Also a name (resolved by
/// the gateway, socks5h-style) and the association ending with its TCP
/// connection.
fn udp_echo_through_the_gateway(backend: Backend) {
    let echo = UdpEcho::start();
    let (gw, dev) = setup_udp(
        backend,
        &[&["127.0.0.1/32", "--proto", "udp"]],
        "udp-laptop",
    );
    let a = Association::open(dev.socks);

    const COUNT: u32 = 2_000;
    const WINDOW: u32 = 32;
    let (mut next, mut answered, mut corrupt, mut spoofed) = (0u32, 0u32, 0u32, 0u32);
    let mut seen = vec![false; COUNT as usize];
    let started = Instant::now();
    while answered < COUNT && started.elapsed() < Duration::from_secs(60) {
        while next < COUNT && next - answered < WINDOW {
            let len = 1 + (next as usize * 7919) % 1200;
            a.send(To::Addr(echo.addr), &payload(next, len));
            next += 1;
        }
        let Some((from, p)) = a.recv(Duration::from_secs(5)) else {
            break;
        };
        if from != echo.addr {
            spoofed += 1;
            continue;
        }
        match check(&p) {
            Some(seq) if (seq as usize) < seen.len() && !seen[seq as usize] => {
                seen[seq as usize] = true;
                answered += 1;
            }
            _ => corrupt += 1,
        }
    }
    let rate = f64::from(answered) / started.elapsed().as_secs_f64();
    eprintln!(
        "udp echo: {answered}/{COUNT} answered, {corrupt} corrupted, {spoofed} spoofed let through, {rate:.0} datagrams/s"
    );
    assert_eq!(
        (answered, corrupt, spoofed),
        (COUNT, 0, 0),
        "answered, corrupted, spoofed"
    );

    // By name: the gateway resolves it; the answer names the address.
    a.send(To::Name("localhost", echo.addr.port()), b"by name");
    let (from, p) = a.recv(Duration::from_secs(10)).expect("an answer by name");
    assert_eq!((from, &p[..]), (echo.addr, &b"by name"[..]));

    // The association ends with its TCP connection: the relay's port closes.
    drop(a.control);
    let probe = UdpSocket::bind("127.0.0.1:0").expect("probe");
    probe.connect(a.relay).expect("connect the probe");
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(10);
    let closed = loop {
        let _ = probe.send(&Association::packet(&To::Addr(echo.addr), 0, b"late"));
        match probe.recv(&mut [0u8; 64]) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break true,
            _ if Instant::now() > deadline => break false,
            _ => {}
        }
    };
    assert!(
        closed,
        "the relay still listens after its TCP connection closed"
    );
    // Once the gateway answered a probe on its UDP port, the datagrams went
    // there rather than on the TLS connection.
    let (sent, by_channel) = association_entry(&gw, u64::from(COUNT) + 1);
    assert!(
        by_channel > sent / 2,
        "{by_channel} of {sent} datagrams came on the UDP channel"
    );
    drop(gw);
}
both_backends!(udp_echo_through_the_gateway);

/// The audit entry of the association that sent `sent` datagrams: what it
/// sent, and how many of those came on the UDP channel.
pub(crate) fn association_entry(gw: &Gateway, sent: u64) -> (u64, u64) {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
    };
    poll(
        "the association's entry in the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let audit = gw.ok(&["audit", "--action", "udp.association", "--limit", "20"]);
            audit.lines().find_map(|l| {
                let n = field(l, "sent=")?;
                (n == sent).then_some((n, field(l, "by_channel=")?))
            })
        },
    )
}

/// Policy per destination (a TCP rule opens no UDP; another port is
/// refused and logged), and what the relay drops without ending the
/// association: a fragment, a truncated header, another sender.
#[test]
fn udp_policy_and_hostile_datagrams() {
    let allowed = UdpEcho::start();
    let other = UdpEcho::start();
    let port = allowed.addr.port().to_string();
    let (gw, dev) = setup_udp(
        Backend::Sqlite,
        &[
            &["127.0.0.1/32"],
            &["127.0.0.1/32", "--proto", "udp", "--ports", &port],
        ],
        "udp-policy",
    );
    let a = Association::open(dev.socks);
    let quiet = Duration::from_millis(1500);

    a.send(To::Addr(allowed.addr), b"allowed");
    let (from, p) = a
        .recv(Duration::from_secs(10))
        .expect("the allowed port answers");
    assert_eq!((from, &p[..]), (allowed.addr, &b"allowed"[..]));

    // The TCP rule for all of 127.0.0.1 opens no UDP port but the one named.
    a.send(To::Addr(other.addr), b"refused");
    assert!(
        a.recv(quiet).is_none(),
        "a port only TCP is allowed on answered over UDP"
    );
    let logs = wait_for_log(&gw, "udp destination refused");
    assert!(
        logs.contains(&other.addr.to_string()),
        "the refusal names the destination: {logs}"
    );

    // A fragment and a truncated header are dropped.
    a.send_raw(&Association::packet(
        &To::Addr(allowed.addr),
        1,
        b"fragment",
    ));
    a.send_raw(&[0, 0, 0, 1, 127, 0]);
    // Another sender may not use the relay.
    let intruder = UdpSocket::bind("127.0.0.1:0").expect("intruder");
    intruder
        .send_to(
            &Association::packet(&To::Addr(allowed.addr), 0, b"intruder"),
            a.relay,
        )
        .expect("send");
    intruder.set_read_timeout(Some(quiet)).expect("timeout");
    assert!(
        intruder.recv_from(&mut [0u8; 64]).is_err(),
        "the relay answered a sender that is not its client"
    );
    assert!(
        a.recv(Duration::from_millis(300)).is_none(),
        "a dropped datagram was answered"
    );

    // The association still works.
    a.send(To::Addr(allowed.addr), b"still here");
    let (_, p) = a.recv(Duration::from_secs(10)).expect("still answered");
    assert_eq!(p, b"still here");
    let mut c = a.control;
    c.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    assert!(
        !matches!(c.read(&mut [0u8; 1]), Ok(0)),
        "the proxy closed the association"
    );
}

/// A gateway with these rules (`policy add allow --to ...` arguments), then
/// a device up on it: the rules are in place before the first association.
fn setup_udp(backend: Backend, rules: &[&[&str]], device: &str) -> (Gateway, Device) {
    let mut gw = Gateway::init(backend);
    for rule in rules {
        let (dest, extra) = rule.split_first().expect("a destination");
        gw.allow(dest, extra);
    }
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, device);
    (gw, dev)
}

/// The gateway's log once it contains `needle` (it is written as the
/// refusal happens, a little after the datagram left the client).
fn wait_for_log(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = gw.logs();
        if logs.contains(needle) || Instant::now() > deadline {
            assert!(
                logs.contains(needle),
                "no {needle:?} in the gateway's log:\n{logs}"
            );
            return logs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A device over `--datagrams-per-second` has the rest dropped, the
/// gateway says so, and another device's datagrams still pass.
#[test]
fn udp_datagrams_over_the_device_limit_are_dropped() {
    let echo = UdpEcho::start();
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("127.0.0.1/32", &["--proto", "udp"]);
    gw.serve_args(&["--console", "off", "--datagrams-per-second", "50"]);
    let flood = Device::enrolled_up(&gw, USER, "udp-flood");
    let calm = Device::enrolled_up(&gw, USER, "udp-calm");
    let a = Association::open(flood.socks);
    // 1,000 at once against a bucket of 100 refilling at 50/s.
    for i in 0..1000u32 {
        a.send(To::Addr(echo.addr), &payload(i, 16));
    }
    let mut answered = 0;
    while a.recv(Duration::from_secs(2)).is_some() {
        answered += 1;
    }
    assert!(
        (50..500).contains(&answered),
        "{answered} of 1,000 answered against a limit of 50/s, bursts of 100"
    );
    wait_for_log(&gw, "datagrams_per_second");
    let b = Association::open(calm.socks);
    b.send(To::Addr(echo.addr), b"calm");
    let (_, p) = b
        .recv(Duration::from_secs(10))
        .expect("the other device's answer");
    assert_eq!(p, b"calm");
}
