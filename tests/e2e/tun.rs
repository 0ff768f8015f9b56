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
use crate::harness::origin::{CHUNK, Hasher, pattern_chunk};
use crate::harness::proc::run;
use crate::harness::*;
use crate::harness::{env, netns};

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

/// Waits until `status --json` lists the intranet's route.
fn wait_for_route(dev: &Device, when: &str) {
    poll(
        &format!("the intranet's route in `status --json` {when}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            tun_routes(dev)
                .contains(&INTRA_NET.to_owned())
                .then_some(())
        },
    );
}

fn link_exists(ns: &str, dev: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns, "link", "show", dev]);
    run(&mut cmd, Duration::from_secs(10)).ok()
}

/// Everything `s` sends until its end: bytes and their SHA-256.
fn read_hashed(s: &mut TcpStream) -> (u64, String) {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf).expect("read through TUN") {
            0 => return (n, hasher.hex()),
            k => {
                hasher.update(&buf[..k]);
                n += k as u64;
            }
        }
    }
}

/// The resident memory of process `pid`, KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Lets this process hold `n` descriptors (1,000 flows at once).
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
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
    let mut gw = Gateway::init_spec(
        Backend::Sqlite,
        gateway_in(gw_ns, vec![format!("intranet.corp:80={INTRA}:8080")]),
    );
    gw.allow(INTRA_NET, &["--ports", "8000-8999"]);
    gw.allow("intranet.corp", &["--ports", "80"]);
    gw.allow(INTRA_NET, &["--ports", "5432"]);
    // a routed domain the intranet's DNS says does not exist
    gw.allow("corp.invalid", &["--ports", "80"]);
    gw.allow(
        &format!("{INTRA}/32"),
        &["--ports", "53,8095", "--proto", "udp"],
    );
    // The gateway pings on unprivileged ICMP sockets, as `ping` does: a
    // namespace of `ip netns add` lets no group open one.
    let mut sysctl = Command::new("ip");
    sysctl.args(["netns", "exec", &gw_ns.name, "sysctl", "-qw"]);
    sysctl.arg("net.ipv4.ping_group_range=0 2147483647");
    assert!(run(&mut sysctl, Duration::from_secs(10)).ok());
    // The gateway's resolver: the intranet's DNS server.
    crate::harness::dns::use_nameserver(&gw_ns.name, SocketAddr::new(INTRA.into(), 53));
    gw.serve();
    let dns = crate::harness::dns::RebindingDns::start(
        netns::in_netns(Some(&intra_ns.name), || {
            std::net::UdpSocket::bind(SocketAddr::new(INTRA.into(), 53))
                .expect("bind DNS in sg-intra")
        }),
        INTRA,
        INTRA,
    );
    let echo_sock = netns::in_netns(Some(&intra_ns.name), || {
        std::net::UdpSocket::bind(SocketAddr::new(INTRA.into(), 8095)).expect("bind a UDP echo")
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo_sock.recv_from(&mut buf) {
            let _ = echo_sock.send_to(&buf[..n], from);
        }
    });

    let ns = dev_ns.name.as_str();
    // sg-dev's own resolver, which names outside the VPN still go to
    let elsewhere = crate::harness::dns::RebindingDns::start(
        netns::in_netns(Some(ns), || {
            std::net::UdpSocket::bind("127.0.0.1:53").expect("bind a resolver in sg-dev")
        }),
        std::net::Ipv4Addr::new(192, 0, 2, 7),
        std::net::Ipv4Addr::new(192, 0, 2, 7),
    );
    crate::harness::dns::use_nameserver(ns, "127.0.0.1:53".parse().unwrap());
    let resolv_conf = format!("/etc/netns/{ns}/resolv.conf");
    let original = std::fs::read_to_string(&resolv_conf).unwrap();
    let sink = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8090)),
        Mode::Sink,
    );
    let source_len = 1 << 30;
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
    wait_for_route(&dev, "after `up --tun`");
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

    // VPN names for every program: resolv.conf names the responder, a name
    // policy routes here resolves (to an address standing for it, as under
    // `shimgate run`) and curl reaches it by name; other names go to the
    // resolver the namespace had.
    let rewritten = std::fs::read_to_string(&resolv_conf).unwrap();
    assert!(
        rewritten.contains("nameserver 100.127.255.254")
            && !rewritten.contains("nameserver 127.0.0.1"),
        "resolv.conf does not name the VPN's DNS responder:\n{rewritten}"
    );
    assert!(
        rewritten.contains("options timeout:1"),
        "resolv.conf lost its other lines:\n{rewritten}"
    );
    let getent = |name: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "getent", "ahostsv4", name]);
        run(&mut cmd, Duration::from_secs(20))
    };
    let out = getent("intranet.corp");
    assert!(
        out.ok() && out.stdout.starts_with("198.18."),
        "getent ahostsv4 intranet.corp in TUN mode: {out}\n{}",
        dev.logs()
    );
    let out = curl(Some(ns), None, None, "http://intranet.corp/");
    assert!(
        out.ok(),
        "curl http://intranet.corp/ (by name, no proxy) in TUN mode: {out}"
    );
    assert_eq!(out.stdout, hosts.body, "wrong page by name through TUN");
    // IPv6: the name's IPv6 address (one standing for it), an IPv6 socket.
    let mut curl6 = Command::new("ip");
    curl6.args(["netns", "exec", ns]).arg(env::curl()).args([
        "-6",
        "-sS",
        "--max-time",
        "20",
        "http://intranet.corp/",
    ]);
    let out = run(&mut curl6, Duration::from_secs(30));
    assert_eq!(
        out.stdout,
        hosts.body,
        "curl -6 http://intranet.corp/ in TUN mode: {out}\n{}",
        dev.logs()
    );
    // Other record types of a routed name come from the intranet's DNS
    // through the gateway, as it answers them; a routed name it says does
    // not exist is NXDOMAIN.
    let dig = env::which("dig").expect("dig (tests/lib/setup.sh installs bind9-dnsutils)");
    let ask = |args: &[&str]| {
        let mut q = Command::new("ip");
        q.args(["netns", "exec", ns])
            .arg(&dig)
            .args(["+tries=1", "+time=10"])
            .args(args);
        run(&mut q, Duration::from_secs(30))
    };
    let out = ask(&["+short", "SRV", "_postgres._tcp.intranet.corp"]);
    assert_eq!(
        out.stdout.trim(),
        format!(
            "0 0 {} {}.",
            crate::harness::dns::SRV_PORT,
            crate::harness::dns::SRV_TARGET
        ),
        "an SRV record of a routed name in TUN mode: {out}\n{}",
        dev.logs()
    );
    for args in [
        &["SRV", "_postgres._tcp.corp.invalid"][..],
        &["A", "db.corp.invalid"][..],
    ] {
        let out = ask(args);
        assert!(
            out.stdout.contains("status: NXDOMAIN"),
            "{args:?}, a routed name the intranet's DNS does not know: {out}"
        );
    }
    let out = getent("www.example.org");
    assert!(
        out.ok() && out.stdout.starts_with("192.0.2.7"),
        "a name outside the VPN did not reach the namespace's own resolver: {out}"
    );
    assert!(
        elsewhere.a_queries() >= 1,
        "sg-dev's resolver was not asked"
    );

    // ssh to a real sshd, as any program would: no ProxyCommand.
    let sshd = crate::harness::servers::Sshd::start(
        Some(&intra_ns.name),
        SocketAddr::new(INTRA.into(), 8022),
    );
    let mut ssh = Command::new("ip");
    ssh.args(["netns", "exec", ns, "ssh"])
        .args(sshd.ssh_args(&[]));
    let out = run(&mut ssh, Duration::from_secs(30));
    assert_eq!(
        out.stdout.trim(),
        crate::harness::servers::Sshd::MARKER,
        "ssh in TUN mode: {out}\n{}",
        sshd.log()
    );

    // psql to a real Postgres in the intranet, by address, no setting.
    let pg_dir = crate::harness::servers::tempdir("sg-e2e-tun-pg-");
    let _pg = crate::harness::db::PgServer::start(
        Some(&intra_ns.name),
        pg_dir.path().join("pg"),
        &INTRA.to_string(),
        5432,
    );
    let mut psql = Command::new("ip");
    psql.args(["netns", "exec", ns, "psql", "-h", &INTRA.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-Atc", "select 40 + 2"]);
    let out = run(&mut psql, Duration::from_secs(30));
    assert_eq!(out.stdout.trim(), "42", "psql in TUN mode: {out}");

    // A statically linked program, which no preloaded library reaches.
    let busybox = env::which("busybox").expect("busybox-static (tests/lib/setup.sh installs it)");
    let mut wget = Command::new("ip");
    wget.args(["netns", "exec", ns])
        .arg(&busybox)
        .args(["wget", "-q", "-O", "-", &url]);
    let out = run(&mut wget, Duration::from_secs(20));
    assert!(out.ok(), "static busybox wget {url} in TUN mode: {out}");
    assert_eq!(out.stdout, hosts.body, "wrong page for busybox wget");

    // UDP: a real DNS client to the intranet's server, and 100 datagrams
    // echoed, from a plain socket with no setting.
    let mut q = Command::new("ip");
    q.args(["netns", "exec", ns]).arg(&dig).args([
        "+short",
        "+tries=1",
        "+time=5",
        &format!("@{INTRA}"),
        "host.corp.internal",
    ]);
    let out = run(&mut q, Duration::from_secs(20));
    assert_eq!(
        out.stdout.trim(),
        INTRA.to_string(),
        "dig @{INTRA} in TUN mode: {out}"
    );
    assert!(
        dns.a_queries() >= 1,
        "the intranet's DNS server was not asked"
    );
    let echoed = netns::in_netns(Some(ns), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect(SocketAddr::new(INTRA.into(), 8095)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        // Up to the first datagram lost: the rest would only wait as long.
        (0..100)
            .take_while(|i| {
                let msg = format!("datagram {i}");
                s.send(msg.as_bytes()).is_ok()
                    && s.recv(&mut buf).is_ok_and(|n| &buf[..n] == msg.as_bytes())
            })
            .count()
    });
    assert_eq!(
        echoed, 100,
        "of 100 datagrams through TUN, {echoed} came back"
    );

    // ping through the gateway: refused as a router would ("packet
    // filtered") until a rule allows ICMP there, then echoed end to end,
    // and audited.
    let ping = |count: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "ping", "-n", "-c", count, "-i", "0.2"])
            .args(["-W", "5", &INTRA.to_string()]);
        run(&mut cmd, Duration::from_secs(30))
    };
    let out = ping("1");
    assert!(
        !out.ok() && out.stdout.contains("Packet filtered"),
        "ping {INTRA} with no ICMP rule was not answered \"prohibited\": {out}"
    );
    let cli_ping = || dev.cli(&["ping", "-c", "2", &INTRA.to_string()]);
    let out = cli_ping();
    assert!(
        !out.ok() && out.stdout.contains("not-allowed"),
        "`shimgate ping {INTRA}` with no ICMP rule: {out}"
    );
    gw.allow(&format!("{INTRA}/32"), &["--proto", "icmp"]);
    poll(
        "a ping through the gateway once a rule allows ICMP",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || ping("1").ok().then_some(()),
    );
    let out = ping("3");
    assert!(
        out.ok() && out.stdout.contains("3 received"),
        "ping {INTRA} through the gateway: {out}\n{}",
        dev.logs()
    );
    // Routes follow policy as an admin changes it: the gateway tells the
    // device at once (without that, the device's next poll is a minute away).
    let added_net = "192.0.2.128/25";
    let route_shown = |shown: bool| {
        poll(
            &format!("the route to {added_net} shown={shown} within 5 s of the policy change"),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                let mut cmd = Command::new("ip");
                cmd.args(["-n", ns, "route", "show", added_net]);
                let out = run(&mut cmd, Duration::from_secs(10));
                (out.stdout.contains("shimgate0") == shown).then_some(())
            },
        )
    };
    let added = gw.ok(&["policy", "add", "allow", "--to", added_net]);
    route_shown(true);
    let id = added
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no rule id in {added:?}"));
    gw.ok(&["policy", "remove", id]);
    route_shown(false);

    // `shimgate ping` asks the gateway too, TUN mode or not.
    let out = cli_ping();
    assert!(
        out.ok() && out.stdout.contains("2 of 2 echoed"),
        "`shimgate ping {INTRA}` through the gateway: {out}"
    );
    let audit = gw.ok(&["audit", "--action", "ping", "--limit", "50"]);
    assert!(
        audit.contains(&INTRA.to_string()) && audit.contains("answer=echoed"),
        "the pings' audit entries: {audit}"
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
    let up_len: usize = 1 << 30;
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
        read_hashed(&mut s)
    });
    let (len, hash) = source.wait_hash(Duration::from_secs(10));
    assert_eq!(got, (len, hash), "the source's bytes arrived changed");
    assert_eq!(len, source_len);

    // A program that does not read: the device buffers a bounded amount
    // (the stack's window, HTTP/2's), not what the far end has to send.
    let big: u64 = 256 << 20;
    let flood = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8094)),
        Mode::Source { len: big },
    );
    let pid = dev.pid().expect("up runs");
    let before = vm_rss_kib(pid);
    let (stalled, got) = netns::in_netns(Some(ns), || {
        let mut s = TcpStream::connect(flood.addr).expect("connect to the flood through TUN");
        std::thread::sleep(Duration::from_secs(3));
        let stalled = vm_rss_kib(pid);
        (stalled, read_hashed(&mut s))
    });
    assert_eq!(
        got,
        flood.wait_hash(Duration::from_secs(10)),
        "the flood arrived changed"
    );
    let grew = stalled.saturating_sub(before);
    eprintln!(
        "[e2e] a stalled reader of {} MiB: the device's VmRSS grew {grew} KiB",
        big >> 20
    );
    assert!(
        grew < 64 * 1024,
        "the device buffered {grew} KiB for a program that did not read (bound: 64 MiB of a 256 MiB flood)"
    );

    // Resets both ways: the far end's reaches the program as ECONNRESET,
    // the program's reaches the far end as one.
    let resetter = netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8092));
    let far = std::thread::spawn(move || {
        let (mut first, _) = resetter.accept().expect("the far end accepts");
        // Once the program's first bytes are here: the flow is carried.
        let mut byte = [0u8; 1];
        first
            .read_exact(&mut byte)
            .expect("the program's first byte");
        socket2::SockRef::from(&first)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(first); // a reset to the program
        let (mut second, _) = resetter.accept().expect("the far end accepts again");
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match second.read(&mut buf) {
                Ok(0) => return Err("an end of data".to_owned()),
                Ok(_) => continue,
                Err(e) => return Ok(e.kind()),
            }
        }
    });
    let to = SocketAddr::new(INTRA.into(), 8092);
    let (program_saw, _) = netns::in_netns(Some(ns), || {
        let mut s = TcpStream::connect(to).expect("connect to the resetting far end");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"x").unwrap();
        let mut buf = [0u8; 16];
        let first = s.read(&mut buf).map_err(|e| e.kind());
        let mut s = TcpStream::connect(to).expect("connect again");
        s.write_all(b"some bytes").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s); // a reset to the far end
        (first, ())
    });
    assert_eq!(
        program_saw,
        Err(std::io::ErrorKind::ConnectionReset),
        "the far end's reset did not reach the program as one"
    );
    let far_saw = far.join().expect("the far end's thread");
    assert_eq!(
        far_saw,
        Ok(std::io::ErrorKind::ConnectionReset),
        "the program's reset did not reach the far end as one"
    );

    // 1,000 flows open at once, each checked.
    let echo = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8093)),
        Mode::Echo,
    );
    raise_fd_limit(4096);
    let echoed = netns::in_netns(Some(ns), || {
        let mut flows: Vec<TcpStream> = (0..1000)
            .map(|i| {
                TcpStream::connect(echo.addr)
                    .unwrap_or_else(|e| panic!("flow {i} of 1000 through TUN: {e}"))
            })
            .collect();
        for (i, s) in flows.iter_mut().enumerate() {
            s.write_all(format!("flow {i:04}\n").as_bytes()).unwrap();
        }
        let mut echoed = 0;
        for (i, s) in flows.iter_mut().enumerate() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let mut line = [0u8; 10];
            if s.read_exact(&mut line).is_ok() && line == *format!("flow {i:04}\n").as_bytes() {
                echoed += 1;
            }
        }
        echoed
    });
    assert_eq!(
        echoed, 1000,
        "of 1,000 concurrent flows, {echoed} echoed their own line"
    );

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
    assert_ne!(
        std::fs::read_to_string(&resolv_conf).unwrap(),
        original,
        "a killed `up` cannot restore resolv.conf; `down` or the next start must"
    );
    let out = dev.down();
    assert!(
        out.ok() && out.stdout.contains("not running"),
        "`shimgate down` with no `up` running: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(&resolv_conf).unwrap(),
        original,
        "`shimgate down` after a killed `up --tun` did not put resolv.conf back"
    );
    dev.up();
    wait_for_route(&dev, "after a restart");
    let out = curl(Some(ns), None, None, &url);
    assert!(out.ok(), "curl through TUN after a restart: {out}");
    let out = dev.down();
    assert!(
        out.ok() && out.stdout.contains("stopped `shimgate up`"),
        "`shimgate down`: {out}"
    );
    assert!(
        !link_exists(ns, "shimgate0") && ip(INTRA_NET).is_empty(),
        "the interface or its route outlived `shimgate down`"
    );
    assert_eq!(
        std::fs::read_to_string(&resolv_conf).unwrap(),
        original,
        "resolv.conf after `shimgate down`"
    );
}

/// A peer by its VPN address, with no setting: alice in TUN mode reaches
/// bob's export as any program would, direct, and a port bob does not
/// export is refused as a closed port.
#[test]
fn a_peer_by_its_vpn_address() {
    if !netns::require_root("tun::a_peer_by_its_vpn_address") {
        return;
    }
    let mut net = crate::peer::three_hosts();
    let status: serde_json::Value =
        serde_json::from_str(&net.bob.status(&["--json"]).stdout).expect("bob status --json");
    let bob_ip = status["vpn_ip"].as_str().expect("bob's VPN IP").to_owned();
    net.alice.stop();
    let ns = net.alice_ns.name.clone();
    // the namespace's own resolv.conf, for TUN mode to rewrite (VPN names)
    crate::harness::dns::use_nameserver(&ns, "127.0.0.1:53".parse().unwrap());
    net.alice.up_args = vec!["--tun".into(), "--dns".into(), "resolv-conf".into()];
    net.alice.up();
    crate::peer::wait_peer_ready(&net.alice, "bob");
    let url = format!("http://{bob_ip}:{}/", net.web.port());
    let out = curl(Some(&ns), None, None, &url);
    assert!(
        out.ok(),
        "curl {url} (no proxy) from alice in TUN mode: {out}\n{}",
        net.alice.logs()
    );
    assert_eq!(out.stdout, net.body, "wrong page from bob through TUN");
    let unexported = SocketAddr::new(bob_ip.parse().unwrap(), 1);
    let e =
        connect_error(&ns, unexported).expect("a connect to a port bob does not export succeeded");
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH)
        ),
        "a port bob does not export: {e}"
    );

    // ping, an ICMP echo carried over a peer ping session
    let ping = |target: &str| {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", &ns, "ping", "-c", "3", "-i", "0.2", "-W", "5", target,
        ]);
        run(&mut cmd, Duration::from_secs(30))
    };
    let out = ping(&bob_ip);
    assert!(
        out.ok() && out.stdout.contains("3 received"),
        "ping {bob_ip} (bob) from alice in TUN mode: {out}\n{}",
        net.alice.logs()
    );
    // and by name, through the DNS responder, which answers with bob's own
    // VPN address (the gateway gives it: bob is online and alice may reach it)
    let mut getent = Command::new("ip");
    getent.args([
        "netns",
        "exec",
        &ns,
        "getent",
        "ahostsv4",
        "bob.vpn.internal",
    ]);
    let out = run(&mut getent, Duration::from_secs(20));
    assert!(
        out.stdout.starts_with(&format!("{bob_ip} ")),
        "bob.vpn.internal did not resolve to bob's VPN address {bob_ip}: {out}"
    );
    let out = ping("bob.vpn.internal");
    assert!(
        out.ok() && out.stdout.contains("3 received"),
        "ping bob.vpn.internal from alice in TUN mode: {out}\n{}",
        net.alice.logs()
    );
    let by_name = format!("http://bob.vpn.internal:{}/", net.web.port());
    let out = curl(Some(&ns), None, None, &by_name);
    assert_eq!(out.stdout, net.body, "curl {by_name} in TUN mode: {out}");
    let nobody = "100.64.255.254";
    let out = ping(nobody);
    assert!(
        !out.ok(),
        "ping {nobody}, no device's address, was answered: {out}"
    );
}
