//! Real SOCKS5 clients other than curl through `shimgate up`: OpenBSD
//! netcat (`nc -X 5 -x`), ssh with `ProxyCommand='nc -X 5 ...'` to a private
//! sshd, and `git clone` with `http.proxy=socks5h://` from a dumb-HTTP server.
//!
//! Everything is on loopback, so a client that bypassed the proxy would reach
//! its server just as well. Each test therefore starts with no rule for the
//! destination (loopback is refused unless a rule names it): the client must
//! fail, and its server must see nothing; only after `policy add allow` does
//! the same client succeed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::env::{free_port, is_root, unique, which};
use crate::harness::netns::can_connect;
use crate::harness::proc::{Proc, clean_env, run_input};
use crate::harness::socks::{self, Target};
use crate::harness::*;

const CLIENT_LIMIT: Duration = Duration::from_secs(60);
const READY_LIMIT: Duration = Duration::from_secs(20);
/// How long a rule added with `policy add` may take to reach the gateway.
const POLICY_LIMIT: Duration = Duration::from_secs(15);

/// OpenBSD netcat (`-X 5 -x`): `nc.openbsd`, else `nc` if it is that one.
fn nc() -> PathBuf {
    if let Some(p) = which("nc.openbsd") {
        return p;
    }
    let p = which("nc").unwrap_or_else(|| {
        panic!("nc is not installed: `apt-get install netcat-openbsd` (tests/run.sh installs it)")
    });
    let help = run_input(Command::new(&p).arg("-h"), None, Duration::from_secs(10));
    assert!(
        help.text().contains("-X proxy_protocol"),
        "{} is not the OpenBSD netcat (no -X): `apt-get install netcat-openbsd`",
        p.display()
    );
    p
}

fn tool(name: &str, package: &str) -> PathBuf {
    which(name)
        .or_else(|| {
            let sbin = Path::new("/usr/sbin").join(name);
            sbin.is_file().then_some(sbin)
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: `apt-get install {package}` (tests/run.sh installs it)"
            )
        })
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// A client command with no proxy variables and `HOME` in a temp dir.
fn client(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd, home);
    cmd
}

fn wait_until_allowed(proxy: SocketAddr, target: impl Into<Target>, port: u16) {
    let target = target.into();
    poll(
        &format!("an allow rule added at run time to let {target:?}:{port} through"),
        POLICY_LIMIT,
        Duration::from_millis(100),
        || match socks::connect(proxy, target.clone(), port) {
            Ok((socks::SUCCEEDED, _)) => Some(()),
            _ => None,
        },
    );
}

/// Marks a command with a unique environment variable, which what it starts
/// inherits (ssh's ProxyCommand, git's remote helper): dropping the mark,
/// panic or not, SIGKILLs every process that still carries it, and their
/// descendants (sshd's per-connection processes leave its process group and
/// overwrite their environment with their title, as the listener does: a
/// server's own pid is given as a root).
struct Tagged {
    tag: String,
    /// An unreaped child of ours whose descendants are killed too.
    root: Option<libc::pid_t>,
}

const TAG_VAR: &str = "SHIMGATE_E2E_TAG";

impl Tagged {
    fn new(cmd: &mut Command) -> Tagged {
        let tag = unique("client");
        cmd.env(TAG_VAR, &tag);
        Tagged { tag, root: None }
    }

    /// The processes carrying the mark, and all their descendants.
    fn pids(&self) -> Vec<libc::pid_t> {
        let wanted = format!("{TAG_VAR}={}", self.tag);
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        let all: Vec<libc::pid_t> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        let mut found: Vec<libc::pid_t> = all
            .iter()
            .copied()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == wanted.as_bytes()))
            })
            .collect();
        found.extend(self.root.filter(|pid| all.contains(pid)));
        // (pid, ppid, zombie?) from /proc/PID/stat: "pid (comm) state ppid ..."
        let procs: Vec<(libc::pid_t, libc::pid_t, bool)> = all
            .iter()
            .filter_map(|&pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
                let zombie = rest.next()? == "Z";
                let ppid = rest.next()?.parse().ok()?;
                Some((pid, ppid, zombie))
            })
            .collect();
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            for &(pid, ppid, _) in &procs {
                if ppid == parent && !found.contains(&pid) {
                    found.push(pid);
                }
            }
            i += 1;
        }
        // the dead, waiting to be reaped, need no killing
        found.retain(|pid| !procs.iter().any(|&(p, _, zombie)| p == *pid && zombie));
        found
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            // stopped processes cannot fork: look again, then kill them all
            for &pid in &pids {
                // SAFETY: kill(2) on a process that carries this test's mark
                // or descends from one.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
            }
            let mut pids2 = self.pids();
            pids2.extend(pids);
            for pid in pids2 {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[e2e] processes marked {} still alive", self.tag);
    }
}

/// `run_input` for a client, marked: nothing it started outlives the call.
fn run_client(cmd: &mut Command, input: Option<&[u8]>) -> Out {
    let _mark = Tagged::new(cmd);
    run_input(cmd, input, CLIENT_LIMIT)
}

/// A server program, ready once `addr` accepts TCP connections. It and
/// everything it started are killed on drop, panic or not; its logs are
/// printed on panic.
struct Server {
    // dropped first: kills the server's descendants while it is still their parent
    _mark: Tagged,
    proc: Proc,
}

impl Server {
    fn start(name: &str, cmd: &mut Command, log_dir: &Path, addr: SocketAddr) -> Server {
        let mut mark = Tagged::new(cmd);
        let proc = Proc::spawn(name, cmd, log_dir);
        mark.root = Some(proc.pid() as libc::pid_t);
        let mut server = Server { _mark: mark, proc };
        poll(
            &format!("{name} to accept TCP connections on {addr}"),
            READY_LIMIT,
            Duration::from_millis(25),
            || {
                if let Some(status) = server.proc.exited() {
                    panic!("{name} exited ({status}) while starting");
                }
                can_connect(None, addr).then_some(())
            },
        );
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.proc.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.proc.logs());
        }
        // then `_mark` kills everything, and dropping `proc` reaps the leader
    }
}

/// `nc -N -w 20 -X 5 -x SOCKS HOST PORT` with `input` on stdin.
fn nc_through(socks: SocketAddr, host: &str, port: u16, input: &[u8], home: &Path) -> Out {
    let mut cmd = client(&nc(), home);
    cmd.args(["-N", "-w", "20", "-X", "5", "-x"])
        .arg(socks.to_string())
        .arg(host)
        .arg(port.to_string());
    run_client(&mut cmd, Some(input))
}

/// netcat-openbsd's message for SOCKS5 reply 0x02.
const NC_NOT_ALLOWED: &str = "not allowed by ruleset";

/// `nc -X 5 -x`: bytes sent to an echo origin (by address) come back, and a
/// page comes from an HTTP origin (by name, resolved by the gateway).
#[test]
fn netcat_socks5() {
    let home = tempdir("sg-e2e-nc-");
    let marker = unique_body("nc echo");
    let payload: String = (0..5000)
        .map(|i| format!("{i:05} {marker}"))
        .collect::<String>();
    let echo = Origin::start(V4, Mode::Echo);
    let body = unique_body("nc http");
    let web = Origin::http(V4, &body);
    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");

    // no rule for loopback yet: refused by the gateway, nothing dialled
    let out = nc_through(
        dev.socks,
        "127.0.0.1",
        echo.port(),
        payload.as_bytes(),
        home.path(),
    );
    assert!(
        !out.ok() && !out.stdout.contains(&marker),
        "nc reached the echo origin although no rule allows it: the proxy was bypassed\n{out}"
    );
    assert!(
        out.stderr.contains(NC_NOT_ALLOWED),
        "nc should report the gateway's SOCKS refusal (0x02): {out}"
    );
    echo.expect_accepted(0, "a denied nc request must not be dialled");

    gw.allow("127.0.0.1/32", &[]);
    wait_until_allowed(dev.socks, V4, echo.port());
    // the one probe that got through (the refused ones were never dialled)
    echo.expect_accepted(1, "the allow probe");

    let out = nc_through(
        dev.socks,
        "127.0.0.1",
        echo.port(),
        payload.as_bytes(),
        home.path(),
    )
    .expect_ok();
    assert_eq!(
        out.stdout.len(),
        payload.len(),
        "nc: echoed byte count differs"
    );
    assert!(
        out.stdout == payload,
        "nc: the echo differs from what was sent"
    );
    echo.expect_accepted(2, "echo origin connections");

    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let out = nc_through(
        dev.socks,
        "localhost",
        web.port(),
        request.as_bytes(),
        home.path(),
    )
    .expect_ok();
    assert!(
        out.stdout.starts_with("HTTP/1.1 200") && out.stdout.ends_with(&body),
        "nc: the page did not arrive through the proxy: {out}"
    );
    web.expect_accepted(1, "HTTP origin connections");
}

/// `ssh -o ProxyCommand='nc -X 5 -x SOCKS %h %p'` to a private sshd on
/// 127.0.0.1 runs a command there.
#[test]
fn ssh_proxycommand_netcat() {
    if !is_root() {
        if std::env::var("SHIMGATE_SKIP_NETNS").as_deref() == Ok("1") {
            eprintln!("[e2e] SKIPPED ssh_proxycommand_netcat: not root and SHIMGATE_SKIP_NETNS=1");
            return;
        }
        panic!(
            "ssh_proxycommand_netcat needs root (a private sshd logging in as root); run the \
             suite as root, or set SHIMGATE_SKIP_NETNS=1 to skip the tests that need root"
        );
    }
    const MARKER: &str = "hello-through-shimgate";
    let sshd = tool("sshd", "openssh-server");
    let ssh = tool("ssh", "openssh-client");
    let keygen = tool("ssh-keygen", "openssh-client");
    let nc = nc();

    let tmp = tempdir("sg-e2e-ssh-");
    let d = tmp.path();
    for key in ["host_key", "client_key"] {
        let mut cmd = Command::new(&keygen);
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "shimgate-e2e", "-f"])
            .arg(d.join(key));
        run_input(&mut cmd, None, CLIENT_LIMIT).expect_ok();
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = free_port();
    let mut config = format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_key\n\
         PidFile none\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         LogLevel VERBOSE\n",
        dir = d.display()
    );
    std::fs::write(d.join("sshd_config"), &config).unwrap();
    // OpenSSH >= 9.8 would lock 127.0.0.1 out for a while after the readiness
    // probes that close before authenticating; older ones lack the option.
    let mut check = Command::new(&sshd);
    check
        .args(["-t", "-o", "PerSourcePenalties=no", "-f"])
        .arg(d.join("sshd_config"));
    if run_input(&mut check, None, CLIENT_LIMIT).ok() {
        config.push_str("PerSourcePenalties no\n");
        std::fs::write(d.join("sshd_config"), &config).unwrap();
    }
    // sshd insists on its privilege separation directory
    std::fs::create_dir_all("/run/sshd").unwrap();
    let mut cmd = Command::new(&sshd);
    cmd.args(["-D", "-e", "-o", "UsePAM=no", "-o", "StrictModes=no", "-f"])
        .arg(d.join("sshd_config"));
    let server = Server::start("sshd", &mut cmd, d, SocketAddr::new(V4, port));

    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");
    let run_ssh = || {
        let mut cmd = client(&ssh, d);
        cmd.args(["-F", "/dev/null", "-o"])
            .arg(format!(
                "ProxyCommand={} -X 5 -x {} %h %p",
                nc.display(),
                dev.socks
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(d.join("client_key"))
            .args(["-p", &port.to_string(), "root@127.0.0.1", "echo", MARKER]);
        run_client(&mut cmd, None)
    };

    // no rule for loopback yet: nc's SOCKS request is refused
    let out = run_ssh();
    assert!(
        !out.ok() && !out.stdout.contains(MARKER),
        "ssh reached sshd although no rule allows it: the proxy was bypassed\n{out}"
    );
    assert!(
        out.stderr.contains(NC_NOT_ALLOWED),
        "ssh's ProxyCommand should report the gateway's SOCKS refusal (0x02): {out}"
    );
    assert!(
        !server.stderr().contains("Accepted publickey"),
        "sshd accepted a login while the proxy refused: {}",
        server.stderr()
    );

    gw.allow("127.0.0.1/32", &["--ports", &port.to_string()]);
    wait_until_allowed(dev.socks, V4, port);
    let out = run_ssh().expect_ok();
    assert_eq!(
        out.stdout.trim(),
        MARKER,
        "ssh through the proxy should print the marker: {out}"
    );
    assert!(
        server
            .stderr()
            .contains("Accepted publickey for root from 127.0.0.1"),
        "sshd did not log the login: {}",
        server.stderr()
    );
}

/// `git -c http.proxy=socks5h://SOCKS clone http://localhost:PORT/repo.git`
/// from a dumb-HTTP static file server; the gateway resolves `localhost`.
#[test]
fn git_clone_socks5h_dumb_http() {
    let git = tool("git", "git");
    let python = tool("python3", "python3");
    let tmp = tempdir("sg-e2e-git-");
    let d = tmp.path();
    let home = d.join("home");
    let served = d.join("served");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&served).unwrap();
    let git_cmd = |args: &[&str]| {
        let mut cmd = client(&git, &home);
        cmd.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .args([
                "-c",
                "user.name=shimgate e2e",
                "-c",
                "user.email=e2e@shimgate.invalid",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgSign=false",
            ])
            .args(args);
        run_client(&mut cmd, None)
    };
    let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();

    // a bare repository with one commit, prepared for dumb HTTP
    let work = d.join("work");
    let content = unique_body("git");
    git_cmd(&["init", "-q", &path(&work)]).expect_ok();
    std::fs::write(work.join("README"), &content).unwrap();
    git_cmd(&["-C", &path(&work), "add", "README"]).expect_ok();
    git_cmd(&["-C", &path(&work), "commit", "-q", "-m", "one commit"]).expect_ok();
    let bare = served.join("repo.git");
    git_cmd(&["clone", "-q", "--bare", &path(&work), &path(&bare)]).expect_ok();
    git_cmd(&["-C", &path(&bare), "update-server-info"]).expect_ok();

    let port = free_port();
    let mut cmd = Command::new(&python);
    cmd.args([
        "-u",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(&served)
    .arg(port.to_string());
    let server = Server::start("http.server", &mut cmd, d, SocketAddr::new(V4, port));

    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");
    let proxy = format!("http.proxy=socks5h://{}", dev.socks);
    let url = format!("http://localhost:{port}/repo.git");

    // no rule for loopback yet: the clone fails, the server sees no request
    let denied = d.join("denied");
    let out = git_cmd(&["-c", &proxy, "clone", &url, &path(&denied)]);
    assert!(
        !out.ok() && !denied.join("README").exists(),
        "git cloned although no rule allows the server: the proxy was bypassed\n{out}"
    );
    assert!(
        !server.stderr().contains("GET /repo.git"),
        "the HTTP server was asked for the repository while the proxy refused: {}",
        server.stderr()
    );

    gw.allow("127.0.0.1/32", &["--ports", &port.to_string()]);
    wait_until_allowed(dev.socks, "localhost", port);
    let clone = d.join("clone");
    git_cmd(&["-c", &proxy, "clone", &url, &path(&clone)]).expect_ok();
    let got = std::fs::read_to_string(clone.join("README"))
        .unwrap_or_else(|e| panic!("the clone has no README ({e})"));
    assert_eq!(
        got, content,
        "the cloned file differs from the committed one"
    );
    let log = git_cmd(&["-C", &path(&clone), "log", "--format=%s"]).expect_ok();
    assert_eq!(log.stdout.trim(), "one commit", "unexpected history: {log}");
    assert!(
        server.stderr().contains("GET /repo.git/info/refs"),
        "the HTTP server did not log the dumb-HTTP requests: {}",
        server.stderr()
    );
}
