//! The socket shim: unmodified programs with no proxy setting, started with
//! `shimgate run`, reach the intranet through the gateway (needs root:
//! the three hosts of [`crate::harness::hosts`]). The device's namespace
//! has no route to the intranet, so anything that arrives went through the
//! gateway.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::harness::db;
use crate::harness::dns::{self, RebindingDns};
use crate::harness::hosts::{GW_INTRA_SIDE, INTRA, gateway_in, three_hosts};
use crate::harness::netns;
use crate::harness::servers;
use crate::harness::*;

const PYTHON: &str = "/usr/bin/python3";

/// An asyncio program: connects to HOST PORT while a 10 ms timer runs in
/// the same event loop; prints the outcome (`connected` or the errno's
/// name), the seconds it took, and how often the timer fired meanwhile.
const ASYNCIO_CONNECT: &str = r#"
import asyncio, errno, sys, time
async def main(host, port):
    ticks = 0
    async def timer():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1
    t = asyncio.create_task(timer())
    start = time.monotonic()
    try:
        r, w = await asyncio.open_connection(host, port)
        peer = w.get_extra_info("peername")
        result = "connected %s:%d" % (peer[0], peer[1])
        w.close()
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    took = time.monotonic() - start
    t.cancel()
    print(result, "%.3f" % took, ticks)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

/// getaddrinfo(NAME): its first address, or the error's name.
pub(crate) const GETADDRINFO: &str = r#"
import socket, sys
try:
    print(socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)[0][4][0])
except socket.gaierror as e:
    print({socket.EAI_NONAME: "EAI_NONAME", socket.EAI_FAIL: "EAI_FAIL", socket.EAI_AGAIN: "EAI_AGAIN"}.get(e.errno, e.errno))
"#;

/// getnameinfo((ADDR, 80), FLAGS...): `host service`, or the error's name.
const GETNAMEINFO: &str = r#"
import socket, sys
flags = 0
for f in sys.argv[2:]:
    flags |= getattr(socket, f)
try:
    print(*socket.getnameinfo((sys.argv[1], 80), flags))
except socket.gaierror as e:
    print({socket.EAI_NONAME: "EAI_NONAME", socket.EAI_AGAIN: "EAI_AGAIN"}.get(e.errno, e.errno))
"#;

/// gethostbyaddr(ADDR) (Python calls gethostbyaddr_r): `name aliases
/// addresses`, or `HOST_NOT_FOUND`.
const GETHOSTBYADDR: &str = r#"
import socket, sys
try:
    print(*socket.gethostbyaddr(sys.argv[1]))
except socket.herror as e:
    print({1: "HOST_NOT_FOUND", 2: "TRY_AGAIN"}.get(e.errno, e.errno))
"#;

/// The C calls with the program's own buffers (ctypes), for 198.18.0.1:
/// getnameinfo(NI_NAMEREQD) with a 5-byte and a 64-byte host buffer, then
/// gethostbyaddr_r with a 16-byte and a 1024-byte buffer (return value,
/// then h_errno on failure or the name).
const SMALL_BUFFERS: &str = r#"
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
sa = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 80) + socket.inet_aton("198.18.0.1") + bytes(8)
out = []
for room in (5, 64):
    host, serv = ctypes.create_string_buffer(room), ctypes.create_string_buffer(32)
    rc = libc.getnameinfo(sa, len(sa), host, room, serv, 32, socket.NI_NAMEREQD)
    out.append("%d:%s" % (rc, host.value.decode() if rc == 0 else "-"))
addr = socket.inet_aton("198.18.0.1")
for room in (16, 1024):
    ret, buf = ctypes.create_string_buffer(64), ctypes.create_string_buffer(room)
    result, herr = ctypes.c_void_p(), ctypes.c_int(0)
    rc = libc.gethostbyaddr_r(addr, 4, socket.AF_INET, ret, buf, ctypes.c_size_t(room), ctypes.byref(result), ctypes.byref(herr))
    name = ctypes.cast(ctypes.c_void_p.from_buffer(ret).value, ctypes.c_char_p).value.decode() if result.value else "-"
    out.append("%d:%s" % (rc, name) if result.value else "%d:%d" % (rc, herr.value))
print(" ".join(out))
"#;

/// A blocking connect; prints `connected` or the errno's name.
const BLOCKING_CONNECT: &str = r#"
import errno, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
    print("connected", s.getpeername()[0])
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// A blocking connect to HOST PORT that SIGALRM interrupts after 0.2 s
/// (Python's handlers have no `SA_RESTART`, so the kernel's connect would
/// return `EINTR`); then whether the socket was still connecting, and a
/// second (blocking) connect's result and the peer once it is done.
const INTERRUPTED_CONNECT: &str = r#"
import errno, signal, socket, sys
class Alarm(Exception):
    pass
def on_alarm(signum, frame):
    raise Alarm()
signal.signal(signal.SIGALRM, on_alarm)
to = (sys.argv[1], int(sys.argv[2]))
s = socket.socket()
signal.setitimer(signal.ITIMER_REAL, 0.2)
try:
    s.connect(to)
    print("not-interrupted")
    sys.exit(0)
except Alarm:
    pass
try:
    s.getpeername()
    state = "connected"
except OSError as e:
    state = "connecting" if e.errno == errno.ENOTCONN else errno.errorcode.get(e.errno, str(e.errno))
again = s.connect_ex(to)
print(state, errno.errorcode.get(again, str(again)), s.getpeername()[0])
"#;

/// A far end that lets a SYN go unanswered for about a second (a socket
/// filter drops it, so the dialler's retransmission is what gets through),
/// then either accepts (the filter is taken off) or refuses (the listener
/// closes, so the retransmitted SYN meets a reset).
struct SlowFarEnd {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowFarEnd {
    fn start(ns: &str, addr: SocketAddr, accept: bool) -> SlowFarEnd {
        let listener = netns::bind_in(Some(ns), addr);
        set_filter(&listener, true);
        let thread = std::thread::spawn(move || {
            // The far end's own behaviour, not synchronisation: it is slow.
            std::thread::sleep(Duration::from_secs(1));
            if accept {
                set_filter(&listener, false);
                listener.set_nonblocking(false).expect("blocking listener");
                let _ = listener.accept();
            }
        });
        SlowFarEnd {
            thread: Some(thread),
        }
    }
}

impl Drop for SlowFarEnd {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Attaches a drop-everything socket filter (the one `up`'s hold address
/// uses), or takes it off.
fn set_filter(listener: &TcpListener, drop_all: bool) {
    if drop_all {
        shimgate_proxy::hold::drop_all_packets(listener).expect("attach the socket filter");
        return;
    }
    let zero: libc::c_int = 0;
    // SAFETY: an int option value.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_FILTER,
            (&raw const zero).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "socket filter: {}", std::io::Error::last_os_error());
}

/// `shimgate run -- ARGS...` on `dev`, in its namespace.
fn run_shimmed(dev: &Device, args: &[&str]) -> Out {
    let mut all = vec!["run", "--"];
    all.extend_from_slice(args);
    dev.cli(&all)
}

/// `outcome seconds ticks` from [`ASYNCIO_CONNECT`].
fn asyncio_connect(dev: &Device, host: &str, port: u16) -> (String, f64, u32) {
    let port = port.to_string();
    let out = run_shimmed(dev, &[PYTHON, "-c", ASYNCIO_CONNECT, host, &port]);
    assert!(out.ok(), "asyncio connect to {host}:{port}: {out}");
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    let [outcome @ .., took, ticks] = &words[..] else {
        panic!("unexpected output: {out}");
    };
    (
        outcome.join(" "),
        took.parse().expect("seconds"),
        ticks.parse().expect("ticks"),
    )
}

/// curl, a shell's child, Python blocking and asyncio, names and
/// addresses, policy refusals, slow far ends, and what must not go
/// through the gateway (nor the device's DNS).
#[test]
fn unmodified_programs_reach_the_intranet() {
    if !netns::require_root("shim::unmodified_programs_reach_the_intranet") {
        return;
    }
    let hosts = three_hosts("page through the socket shim");
    let (dev_ns, gw_ns) = (&hosts.dev_ns, &hosts.gw_ns);
    // A DNS server of the device's own, counting what it is asked.
    let local_dns = RebindingDns::start(
        netns::in_netns(Some(&dev_ns.name), || {
            std::net::UdpSocket::bind("127.0.0.1:53").expect("bind the device's DNS server")
        }),
        Ipv4Addr::new(198, 51, 100, 2),
        Ipv4Addr::new(198, 51, 100, 2),
    );
    dns::use_nameserver(&dev_ns.name, "127.0.0.1:53".parse().unwrap());
    let spec = gateway_in(
        gw_ns,
        vec![
            format!("intranet.corp:80={INTRA}:8080"),
            format!("db.corp:5432={INTRA}:5432"),
            // Routes the suffix svc.corp.invalid to the device, where the
            // gateway's resolver says no name exists (RFC 6761).
            format!("svc.corp.invalid:80={INTRA}:8080"),
        ],
    );
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("203.0.113.0/24", &["--ports", "80,2222,5432,8080-8090"]);
    // One port for one program only.
    gw.allow(
        &format!("{INTRA}/32"),
        &["--ports", "9090", "--program", "curl"],
    );
    gw.serve();
    let socks = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 1080);
    let mut dev = Device::new_in("shim-laptop", Some(&dev_ns.name), socks);
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up();

    // A default route out of the device, and a counter on it for the fake
    // ranges: a fake address must never leave by it.
    let ns_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &dev_ns.name]).args(args);
        run(&mut c, Duration::from_secs(20))
    };
    ns_cmd(&["ip", "route", "add", "default", "via", "198.51.100.1"]).expect_ok();
    ns_cmd(&["nft", "add table inet sgleak"]).expect_ok();
    ns_cmd(&[
        "nft",
        "add chain inet sgleak out { type filter hook output priority 0 ; }",
    ])
    .expect_ok();
    ns_cmd(&[
        "nft",
        "add rule inet sgleak out ip daddr 198.18.0.0/15 counter drop",
    ])
    .expect_ok();
    ns_cmd(&[
        "nft",
        "add rule inet sgleak out ip6 daddr 2001:2::/48 counter drop",
    ])
    .expect_ok();
    let leaked = || {
        let out = ns_cmd(&["nft", "list chain inet sgleak out"]).expect_ok();
        out.stdout
            .split("packets ")
            .skip(1)
            .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>()
    };

    // By address, by a name only the gateway knows, and from a child.
    let url = format!("http://{INTRA}:8080/");
    let out = run_shimmed(&dev, &[&env::curl().to_string_lossy(), "-sS", &url]);
    assert_eq!(out.stdout, hosts.body, "curl by address under `run`: {out}");
    let out = run_shimmed(&dev, &["curl", "-sS", "http://intranet.corp/"]);
    assert_eq!(out.stdout, hosts.body, "curl by name under `run`: {out}");
    let out = run_shimmed(&dev, &["bash", "-c", "curl -sS http://intranet.corp/"]);
    assert_eq!(
        out.stdout, hosts.body,
        "curl started by bash under `run`: {out}"
    );
    hosts.web.expect_accepted(3, "origin connections");
    // A VPN name the gateway says does not exist: EAI_NONAME, no address.
    let out = run_shimmed(
        &dev,
        &[PYTHON, "-c", GETADDRINFO, "nothing.svc.corp.invalid"],
    );
    assert_eq!(out.stdout.trim(), "EAI_NONAME", "{out}");
    let out = run_shimmed(&dev, &[PYTHON, "-c", GETADDRINFO, "svc.corp.invalid"]);
    assert_eq!(
        out.stdout.trim(),
        "198.18.0.2",
        "an alias's name has an address: {out}"
    );
    // gethostbyname2 (getent hosts asks for IPv6 first): the fake address.
    let out = run_shimmed(&dev, &["getent", "hosts", "intranet.corp"]);
    assert_eq!(
        out.stdout.trim(),
        "2001:2::1       intranet.corp",
        "getent hosts under `run`: {out}"
    );
    // Reverse lookups of a fake address give the name back (from `up`'s
    // map, not the device's resolver); the service is the C library's.
    let out = run_shimmed(&dev, &["getent", "hosts", "198.18.0.1"]);
    assert_eq!(
        out.stdout.trim(),
        "198.18.0.1      intranet.corp",
        "getent hosts of a fake address (gethostbyaddr): {out}"
    );
    let out = run_shimmed(&dev, &["getent", "hosts", "2001:2::1"]);
    assert_eq!(
        out.stdout.trim(),
        "2001:2::1       intranet.corp",
        "getent hosts of a fake IPv6 address: {out}"
    );
    let out = run_shimmed(&dev, &["getent", "hosts", "198.18.0.200"]);
    assert_eq!(
        (out.code(), out.stdout.trim()),
        (Some(2), ""),
        "a fake address `up` never handed out has no name: {out}"
    );
    // What the C library calls port 80 (`http`, or `80` without
    // /etc/services), asked for an address that is not a fake one.
    let out = run_shimmed(
        &dev,
        &[PYTHON, "-c", GETNAMEINFO, "127.0.0.1", "NI_NUMERICHOST"],
    );
    let service = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("getnameinfo of 127.0.0.1: {out}"))
        .to_owned();
    for (addr, flags, want) in [
        (
            "198.18.0.1",
            &["NI_NAMEREQD"][..],
            format!("intranet.corp {service}"),
        ),
        (
            "2001:2::1",
            &["NI_NAMEREQD"][..],
            format!("intranet.corp {service}"),
        ),
        ("198.18.0.1", &[][..], format!("intranet.corp {service}")),
        (
            "198.18.0.1",
            &["NI_NAMEREQD", "NI_NUMERICSERV"][..],
            "intranet.corp 80".into(),
        ),
        (
            "198.18.0.1",
            &["NI_NUMERICHOST"][..],
            format!("198.18.0.1 {service}"),
        ),
        ("198.18.0.200", &["NI_NAMEREQD"][..], "EAI_NONAME".into()),
        ("198.18.0.200", &[][..], format!("198.18.0.200 {service}")),
    ] {
        let mut args = vec![PYTHON, "-c", GETNAMEINFO, addr];
        args.extend_from_slice(flags);
        let out = run_shimmed(&dev, &args);
        assert_eq!(
            out.stdout.trim(),
            want,
            "getnameinfo {addr} {flags:?}: {out}"
        );
    }
    let out = run_shimmed(&dev, &[PYTHON, "-c", GETHOSTBYADDR, "198.18.0.1"]);
    assert_eq!(
        out.stdout.trim(),
        "intranet.corp [] ['198.18.0.1']",
        "gethostbyaddr_r of a fake address: {out}"
    );
    let out = run_shimmed(&dev, &[PYTHON, "-c", GETHOSTBYADDR, "198.18.0.200"]);
    assert_eq!(out.stdout.trim(), "HOST_NOT_FOUND", "{out}");
    // Too small a buffer: EAI_OVERFLOW (-12); ERANGE (34) with h_errno
    // NETDB_INTERNAL (-1), then the answer in a big enough one.
    let out = run_shimmed(&dev, &[PYTHON, "-c", SMALL_BUFFERS]);
    assert_eq!(
        out.stdout.trim(),
        "-12:- 0:intranet.corp 34:-1 0:intranet.corp",
        "the program's own buffers: {out}"
    );
    assert_eq!(
        local_dns.a_queries(),
        0,
        "a VPN name reached the device's own DNS server"
    );
    // The counter counts: a name outside the VPN does go to it.
    run_shimmed(&dev, &["getent", "hosts", "www.example"]);
    assert!(
        local_dns.a_queries() > 0,
        "the device's DNS server saw no query for a name outside the VPN"
    );

    // IPv6: the name's IPv6 fake address, an IPv6 socket.
    let out = run_shimmed(&dev, &["curl", "-6", "-sS", "http://intranet.corp/"]);
    assert_eq!(out.stdout, hosts.body, "curl -6 by name under `run`: {out}");

    // psql (libpq: getaddrinfo, non-blocking connect, TCP_NODELAY) to a
    // real Postgres in the intranet, by a name only the gateway knows.
    let pg_dir = tempfile::Builder::new()
        .prefix("sg-e2e-shim-pg-")
        .tempdir()
        .expect("tempdir");
    let _pg = db::PgServer::start(
        Some(&hosts.intra_ns.name),
        pg_dir.path().join("pg"),
        &INTRA.to_string(),
        5432,
    );
    let out = run_shimmed(
        &dev,
        &[
            "psql",
            "-h",
            "db.corp",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-Atc",
            "select 40 + 2",
        ],
    );
    assert_eq!(out.stdout.trim(), "42", "psql under `run`: {out}");

    // ssh to a real sshd, and git clone over HTTP, with no proxy settings.
    let host = INTRA.to_string();
    let intra = Some(hosts.intra_ns.name.as_str());
    let sshd = servers::Sshd::start(intra, SocketAddr::new(INTRA.into(), 2222));
    let mut ssh = vec!["ssh".to_owned()];
    ssh.extend(sshd.ssh_args(&[]));
    let ssh: Vec<&str> = ssh.iter().map(String::as_str).collect();
    let out = run_shimmed(&dev, &ssh);
    assert_eq!(
        out.stdout.trim(),
        servers::Sshd::MARKER,
        "ssh under `run`: {out}"
    );
    assert!(
        sshd.log()
            .contains(&format!("Accepted publickey for root from {GW_INTRA_SIDE}")),
        "sshd did not see the login come from the gateway: {}",
        sshd.log()
    );
    let git = servers::GitServer::start(intra, SocketAddr::new(INTRA.into(), 8090));
    let clone = git.dir().join("shim-clone");
    let clone_path = clone.to_str().expect("UTF-8 temp path");
    let out = run_shimmed(&dev, &["git", "clone", "-q", &git.url(&host), clone_path]);
    assert!(out.ok(), "git clone under `run`: {out}");
    let got = std::fs::read_to_string(clone.join("README")).unwrap_or_default();
    assert_eq!(got, git.content(), "the cloned README");

    assert_eq!(leaked(), 0, "a fake address left by the default route");
    // The counter counts: without `run`, a fake address does go there.
    let direct = curl_args(
        Some(&dev_ns.name),
        &["--connect-timeout", "1", "http://198.18.0.1/"],
    );
    assert!(!direct.ok());
    assert!(leaked() > 0, "the leak counter saw nothing");

    // Without `run` there is no way in.
    // (The SYN goes to the default route, where nothing forwards it.)
    let direct = curl_args(Some(&dev_ns.name), &["--connect-timeout", "1", &url]);
    assert!(
        !direct.ok(),
        "sg-dev reached the intranet directly: {direct}"
    );

    // Blocking connect: allowed, and refused by policy (port 22 is not in
    // the rule) with EACCES.
    let out = run_shimmed(&dev, &[PYTHON, "-c", BLOCKING_CONNECT, &host, "8080"]);
    assert_eq!(out.stdout.trim(), format!("connected {INTRA}"), "{out}");
    let out = run_shimmed(&dev, &[PYTHON, "-c", BLOCKING_CONNECT, &host, "22"]);
    assert_eq!(out.stdout.trim(), "EACCES", "a policy refusal: {out}");
    assert!(
        !out.stderr.contains("shimgate:"),
        "a refusal was written to a stderr that is not a terminal: {out}"
    );
    // On a terminal, the program's user is told why.
    let line = format!(
        "{} --config-dir {} run -- curl -sS http://{INTRA}:22/",
        env::bin(env::DEVICE_BIN).display(),
        dev.config_dir.display()
    );
    let mut script = std::process::Command::new("ip");
    script.args([
        "netns",
        "exec",
        &dev_ns.name,
        "script",
        "-qec",
        &line,
        "/dev/null",
    ]);
    let out = run(&mut script, Duration::from_secs(30));
    assert!(
        out.stdout
            .contains(&format!("shimgate: {INTRA}:22: not allowed by policy")),
        "no refusal message on the terminal: {out}"
    );
    let out = run_shimmed(
        &dev,
        &[
            PYTHON,
            "-c",
            BLOCKING_CONNECT,
            "nosuch.corp.invalid",
            "8080",
        ],
    );
    assert!(!out.stdout.contains("connected"), "{out}");

    // A rule for one program: curl passes, Python is refused by policy.
    let curl_only = Origin::from_listener(
        netns::bind_in(
            Some(&hosts.intra_ns.name),
            SocketAddr::new(INTRA.into(), 9090),
        ),
        Mode::Http {
            body: unique_body("curl only"),
        },
    );
    let out = run_shimmed(&dev, &["curl", "-sS", &format!("http://{INTRA}:9090/")]);
    assert!(out.ok(), "curl, which the rule names: {out}");
    let out = run_shimmed(&dev, &[PYTHON, "-c", BLOCKING_CONNECT, &host, "9090"]);
    assert_eq!(out.stdout.trim(), "EACCES", "another program: {out}");
    curl_only.expect_accepted(1, "the server only curl may reach");

    // Non-blocking connect: the event loop runs on while the far end takes
    // a second, and the result is the far end's.
    let intra = &hosts.intra_ns.name;
    let slow = SlowFarEnd::start(intra, SocketAddr::new(INTRA.into(), 8081), true);
    let (outcome, took, ticks) = asyncio_connect(&dev, &host, 8081);
    assert_eq!(outcome, format!("connected {INTRA}:8081"));
    assert!(
        took >= 0.9,
        "connected after {took} s: before the far end answered"
    );
    assert!(
        ticks >= 40,
        "the timer fired {ticks} times in {took} s: the loop was blocked"
    );
    drop(slow);
    // A blocking connect, interrupted by a signal while the far end is
    // silent: EINTR, the attempt goes on, and a second connect waits for it.
    let slow = SlowFarEnd::start(intra, SocketAddr::new(INTRA.into(), 8081), true);
    let out = run_shimmed(&dev, &[PYTHON, "-c", INTERRUPTED_CONNECT, &host, "8081"]);
    assert_eq!(
        out.stdout.trim(),
        format!("connecting 0 {INTRA}"),
        "a blocking connect interrupted by SIGALRM: {out}"
    );
    drop(slow);
    let refusing = SlowFarEnd::start(intra, SocketAddr::new(INTRA.into(), 8082), false);
    let (outcome, took, ticks) = asyncio_connect(&dev, &host, 8082);
    assert_eq!(outcome, "ECONNREFUSED", "after {took} s");
    assert!(
        took >= 0.9,
        "refused after {took} s: before the far end answered"
    );
    assert!(
        ticks >= 40,
        "the timer fired {ticks} times in {took} s: the loop was blocked"
    );
    drop(refusing);
    let (outcome, _, _) = asyncio_connect(&dev, "intranet.corp", 80);
    assert_eq!(
        outcome, "connected 198.18.0.1:80",
        "the name's fake address is the peer"
    );

    // Not a VPN destination: straight out, not through the gateway (whose
    // policy has no rule for it, so it would have been refused there).
    let own = Origin::from_listener(
        netns::bind_in(Some(&dev_ns.name), "198.51.100.2:0".parse().unwrap()),
        Mode::Http {
            body: unique_body("not through the VPN"),
        },
    );
    let url = format!("http://198.51.100.2:{}/", own.port());
    let out = run_shimmed(&dev, &["curl", "-sS", &url]);
    assert!(out.ok(), "a destination outside the VPN under `run`: {out}");
    own.expect_accepted(1, "the local server");
    let logs = dev.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(" flow") && l.contains("198.51.100.2")),
        "`up` carried a destination outside the VPN:\n{logs}"
    );
    assert!(
        logs.contains("program=/usr/bin/python3"),
        "`up` did not log which program made a flow:\n{logs}"
    );

    // One audit entry per tunnel, naming the program that made it.
    let audit = poll(
        "the tunnels' entries to reach the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let a = gw.ok(&["audit", "--action", "tunnel", "--limit", "500"]);
            // Debian's /usr/bin/psql is a wrapper that runs the version's own.
            a.contains("/bin/psql proto=tcp").then_some(a)
        },
    );
    let psql = audit
        .lines()
        .find(|l| l.contains("/bin/psql proto=tcp"))
        .unwrap_or_default();
    for want in [
        "shim-laptop",
        "db.corp:5432",
        "user=alice",
        "shim=socket",
        "uid=0",
        "local-user=root",
        "proto=tcp",
    ] {
        assert!(
            psql.contains(want),
            "no {want:?} in psql's entry: {psql}\n{audit}"
        );
    }
    assert!(
        audit
            .lines()
            .any(|l| l.contains("program=/usr/bin/curl") && l.contains(&format!("{INTRA}:8080"))),
        "no entry for curl's tunnel:\n{audit}"
    );
}

/// What a preloaded library cannot see into is refused before it starts,
/// with a message naming the way; `--force` runs it anyway.
#[test]
fn static_and_go_programs_are_refused() {
    let dev = Device::new("shim-refusals");
    let busybox = env::which("busybox").expect("busybox-static (tests/lib/setup.sh installs it)");
    let out = dev.cli(&["run", "--", &busybox.to_string_lossy(), "true"]);
    assert!(!out.ok(), "a static program ran under `run`: {out}");
    assert!(out.stderr.contains("statically linked"), "{out}");
    assert!(
        out.stderr.contains("TUN"),
        "the message names TUN mode: {out}"
    );
    let age = env::which("age").expect("age, a Go program (tests/lib/setup.sh installs it)");
    let out = dev.cli(&["run", "--", &age.to_string_lossy(), "--version"]);
    assert!(!out.ok(), "a Go program ran under `run`: {out}");
    assert!(out.stderr.contains("Go program"), "{out}");
    // Dynamic programs pass the check and then need a running `up`.
    let out = dev.cli(&["run", "--", "true"]);
    assert!(!out.ok());
    assert!(out.stderr.contains("shimgate up is not running"), "{out}");
    let out = dev.cli(&["run", "--force", "--", &busybox.to_string_lossy(), "true"]);
    assert!(out.stderr.contains("warning (--force)"), "{out}");
}

/// A UDP client: `count` checksummed datagrams (at most 64 in flight) to
/// HOST PORT with sendto/recvfrom, then one on a connected socket. Prints
/// answered, lost, corrupted, answers from elsewhere, the connected
/// socket's answer and peer, and datagrams/s.
pub(crate) const UDP_ECHO_CLIENT: &str = r#"
import hashlib, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def payload(i):
    body = i.to_bytes(4, "big") + bytes((j * 31 + i) & 255 for j in range(16 + i % 64))
    return body + hashlib.sha256(body).digest()[:8]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
sent = answered = corrupt = elsewhere = 0
seen = bytearray(count)
start = time.monotonic()
while answered < count:
    while sent < count and sent - answered < 64:
        s.sendto(payload(sent), (host, port))
        sent += 1
    try:
        data, src = s.recvfrom(65536)
    except socket.timeout:
        break
    if src != (host, port):
        elsewhere += 1
        continue
    body, check = data[:-8], data[-8:]
    i = int.from_bytes(body[:4], "big")
    if hashlib.sha256(body).digest()[:8] != check or i >= count or seen[i]:
        corrupt += 1
        continue
    seen[i] = 1
    answered += 1
rate = answered / (time.monotonic() - start)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect((host, port))
c.settimeout(5)
c.send(b"connected")
got = c.recv(100).decode()
print(answered, count - answered, corrupt, elsewhere, got, c.getpeername()[0], "%.0f" % rate)
"#;

/// A thread sends UDP to HOST PORT without pause while the main thread
/// forks 300 times; each child sends once and exits. Prints how many
/// children did not exit within 5 s (it stops at the first).
const FORK_WHILE_SENDING: &str = r#"
import os, socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"first", (host, port))
running = True
def hammer():
    while running:
        s.sendto(b"x", (host, port))
threading.Thread(target=hammer, daemon=True).start()
forked = hung = 0
for i in range(300):
    pid = os.fork()
    if pid == 0:
        s.sendto(b"child", (host, port))
        os._exit(0)
    forked += 1
    deadline = time.monotonic() + 5
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung += 1
            break
        time.sleep(0.0005)
    if hung:
        break
running = False
print("forked", forked, "hung", hung)
"#;

/// UDP under `run`: 100,000 checksummed datagrams through the gateway to an
/// echo server in the intranet (none lost, none corrupted, none from
/// elsewhere: the server's copies from another port are dropped at the
/// gateway), a connected UDP socket, and `dig` to a DNS server there.
#[test]
fn udp_programs_reach_the_intranet() {
    if !netns::require_root("shim::udp_programs_reach_the_intranet") {
        return;
    }
    let hosts = three_hosts("udp through the socket shim");
    let intra = Some(hosts.intra_ns.name.as_str());
    let echo_at = SocketAddr::new(INTRA.into(), 5353);
    let echo = netns::in_netns(intra, || {
        let sock = std::net::UdpSocket::bind(echo_at).expect("echo socket");
        let spoofer = std::net::UdpSocket::bind(SocketAddr::new(INTRA.into(), 0)).expect("spoofer");
        crate::udp::UdpEcho::on(sock, spoofer)
    });
    let dns = RebindingDns::start(
        netns::in_netns(intra, || {
            std::net::UdpSocket::bind(SocketAddr::new(INTRA.into(), 53)).expect("bind DNS")
        }),
        INTRA,
        INTRA,
    );
    let mut gw = Gateway::init_spec(Backend::Sqlite, gateway_in(&hosts.gw_ns, vec![]));
    gw.allow("203.0.113.0/24", &["--proto", "udp", "--ports", "53,5353"]);
    gw.serve();
    let socks = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 1080);
    let mut dev = Device::new_in("shim-udp", Some(&hosts.dev_ns.name), socks);
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up();

    let host = INTRA.to_string();
    let port = echo.addr.port().to_string();
    // A few thousand datagrams a second in a debug build beside other tests.
    let out = dev.cli_within(
        &[
            "run",
            "--",
            PYTHON,
            "-c",
            UDP_ECHO_CLIENT,
            &host,
            &port,
            "100000",
        ],
        Duration::from_secs(180),
    );
    assert!(out.ok(), "the UDP client under `run`: {out}");
    eprintln!("udp through the socket shim: {}", out.stdout.trim());
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(
        words.get(..6),
        Some(&["100000", "0", "0", "0", "connected", host.as_str()][..]),
        "answered, lost, corrupted, from elsewhere, the connected socket's answer, its peer: {out}"
    );

    // `status` counts the relays, and none is left open after the program
    // exited (its counts are published once a second, so a snapshot from
    // while the program ran may come first); the audit log has each
    // association, its program, and what it moved.
    poll(
        "`shimgate status` to count the UDP relays, none left open after the program exited",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let out = dev.status(&["--json"]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let counted = v["shim"]["udp_total"].as_u64()? >= 2;
            (counted && v["shim"]["udp_open"].as_u64()? == 0).then_some(())
        },
    );
    let audit = poll(
        "the associations' entries to reach the audit log",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let a = gw.ok(&["audit", "--action", "udp.association", "--limit", "50"]);
            a.contains("sent=100000 received=100000").then_some(a)
        },
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("sent=100000 received=100000")
                && l.contains("shim=socket")
                && l.contains("program=/usr/bin/python3")
                && l.contains(&format!("{INTRA}:5353"))),
        "{audit}"
    );

    let dig = env::which("dig").expect("dig (tests/lib/setup.sh installs bind9-dnsutils)");
    let out = run_shimmed(
        &dev,
        &[
            &dig.to_string_lossy(),
            "+short",
            "+tries=1",
            "+time=5",
            &format!("@{INTRA}"),
            "host.corp.internal",
        ],
    );
    assert_eq!(
        out.stdout.trim(),
        INTRA.to_string(),
        "dig under `run`: {out}"
    );
    assert!(
        dns.a_queries() >= 1,
        "the intranet's DNS server was not asked"
    );

    // Without `run`, no way in.
    let out = netns::in_netns(Some(&hosts.dev_ns.name), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let _ = s.send_to(b"direct", echo_at);
        s.recv_from(&mut [0u8; 64]).is_ok()
    });
    assert!(!out, "sg-dev reached the intranet's UDP echo directly");

    // Forks while another thread sends: the library's locks are held across
    // each fork (pthread_atfork), so no child inherits one taken for good.
    let out = dev.cli_within(
        &["run", "--", PYTHON, "-c", FORK_WHILE_SENDING, &host, &port],
        Duration::from_secs(120),
    );
    assert_eq!(
        out.stdout.trim(),
        "forked 300 hung 0",
        "children that hung in the library after a fork: {out}"
    );
}
