//! Network namespaces made and removed by the tests (needs root).
//!
//! Code that must run "inside" a namespace without a child process (a
//! readiness probe, binding the intranet server's socket) runs on a thread
//! that has `setns(2)`-ed into it: a socket belongs to the namespace of the
//! thread that created it, wherever it is used afterwards.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use super::env::{is_root, unique};
use super::proc::run;

/// Runs `f` on a fresh thread inside namespace `ns` (or here if `None`).
pub fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
            // SAFETY: setns on a valid namespace fd, affecting only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("thread inside namespace panicked")
    })
}

pub fn can_connect(ns: Option<&str>, addr: SocketAddr) -> bool {
    in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
}

pub fn bind_in(ns: Option<&str>, addr: SocketAddr) -> TcpListener {
    in_netns(ns, || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {ns:?}: {e}"))
    })
}

/// Fails loudly unless we are root, or returns `false` (skip) when
/// `SHIMGATE_SKIP_NETNS=1`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("SHIMGATE_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("[e2e] SKIPPED {test}: not root and SHIMGATE_SKIP_NETNS=1");
        return false;
    }
    panic!(
        "{test} needs root (network namespaces); run the suite as root, \
         or set SHIMGATE_SKIP_NETNS=1 to skip it explicitly"
    );
}

fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(&mut cmd, Duration::from_secs(20)).expect_ok();
}

/// A namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `sysctl -w` inside the namespace.
    pub fn sysctl(&self, setting: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "sysctl", "-w", setting]);
        run(&mut cmd, Duration::from_secs(20)).expect_ok();
    }

    /// One `nft` command inside the namespace (its tables go with it).
    pub fn nft(&self, command: &str) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "nft", command]);
        run(&mut cmd, Duration::from_secs(20)).expect_ok();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes a test left behind in the namespace (a daemon a script
        // started, say) would keep it alive: kill them first.
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid the kernel just listed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "[e2e] warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("[e2e] warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// Connects `a` and `b` with a veth pair, `a_addr`/`b_addr` in CIDR form.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) {
    let ia = unique("sgva");
    let ib = unique("sgvb");
    // interface names are limited to 15 bytes
    let ia = &ia[..ia.len().min(15)];
    let ib = &ib[..ib.len().min(15)];
    // made directly inside the namespaces, so nothing is left behind in ours
    ip(&[
        "link", "add", ia, "netns", &a.name, "type", "veth", "peer", "name", ib, "netns", &b.name,
    ]);
    ip(&["-n", &a.name, "addr", "add", a_addr, "dev", ia]);
    ip(&["-n", &b.name, "addr", "add", b_addr, "dev", ib]);
    ip(&["-n", &a.name, "link", "set", ia, "up"]);
    ip(&["-n", &b.name, "link", "set", ib, "up"]);
}

/// A switch: a namespace holding a bridge, with one veth to each member
/// (`addr` in CIDR form on the member's side). Returns the switch's
/// namespace (deleted on drop like any other).
pub fn bridge(members: &[(&Netns, &str)]) -> Netns {
    let switch = Netns::new("sg-sw-");
    ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &switch.name, "link", "set", "br0", "up"]);
    for (member, addr) in members {
        let ia = unique("sgba");
        let ib = unique("sgbb");
        let ia = &ia[..ia.len().min(15)];
        let ib = &ib[..ib.len().min(15)];
        ip(&[
            "link",
            "add",
            ia,
            "netns",
            &member.name,
            "type",
            "veth",
            "peer",
            "name",
            ib,
            "netns",
            &switch.name,
        ]);
        ip(&["-n", &switch.name, "link", "set", ib, "master", "br0", "up"]);
        ip(&["-n", &member.name, "addr", "add", addr, "dev", ia]);
        ip(&["-n", &member.name, "link", "set", ia, "up"]);
    }
    switch
}

impl Netns {
    /// `/etc/hosts` for processes started with `ip netns exec` in this
    /// namespace (it bind-mounts `/etc/netns/NAME/hosts`); removed on drop.
    pub fn hosts(&self, entries: &[(String, String)]) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {dir}: {e}"));
        let mut text = String::from("127.0.0.1 localhost\n");
        for (addr, name) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(format!("{dir}/hosts"), text).expect("write hosts");
    }
}

/// The harness itself: namespaces, veth, a server bound inside one
/// namespace, reached from another, not from ours.
#[test]
fn harness_selftest_namespaces() {
    use std::io::Read;
    if !require_root("harness::netns::harness_selftest_namespaces") {
        return;
    }
    let a = Netns::new("sg-ta-");
    let b = Netns::new("sg-tb-");
    veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
    let addr: SocketAddr = "192.0.2.2:8080".parse().unwrap();
    let origin = super::Origin::from_listener(
        bind_in(Some(&b.name), addr),
        super::Mode::Http {
            body: "hello".into(),
        },
    );
    let body = in_netns(Some(&a.name), || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut v = String::new();
        s.read_to_string(&mut v).unwrap();
        v
    });
    assert!(body.ends_with("hello"), "{body:?}");
    assert!(
        !can_connect(None, addr),
        "reached a namespace's address from ours"
    );
    assert_eq!(origin.accepted(), 1);
}
