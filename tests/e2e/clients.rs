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

use crate::harness::env::{free_port, is_root, which};
use crate::harness::proc::run_input;
use crate::harness::servers::{GitServer, Sshd, client, run_client, tempdir, tool};
use crate::harness::socks::{self, Target};
use crate::harness::*;

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
    let ssh = tool("ssh", "openssh-client");
    let nc = nc();
    let port = free_port();
    let server = Sshd::start(None, SocketAddr::new(V4, port));

    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");
    let proxy = format!("ProxyCommand={} -X 5 -x {} %h %p", nc.display(), dev.socks);
    let run_ssh = || {
        run_client(
            &mut server.ssh_command(&ssh, server.dir(), &["-o", &proxy]),
            None,
        )
    };

    // no rule for loopback yet: nc's SOCKS request is refused
    let out = run_ssh();
    assert!(
        !out.ok() && !out.stdout.contains(Sshd::MARKER),
        "ssh reached sshd although no rule allows it: the proxy was bypassed\n{out}"
    );
    assert!(
        out.stderr.contains(NC_NOT_ALLOWED),
        "ssh's ProxyCommand should report the gateway's SOCKS refusal (0x02): {out}"
    );
    assert!(
        !server.log().contains("Accepted publickey"),
        "sshd accepted a login while the proxy refused: {}",
        server.log()
    );

    gw.allow("127.0.0.1/32", &["--ports", &port.to_string()]);
    wait_until_allowed(dev.socks, V4, port);
    let out = run_ssh().expect_ok();
    assert_eq!(
        out.stdout.trim(),
        Sshd::MARKER,
        "ssh through the proxy should print the marker: {out}"
    );
    assert!(
        server
            .log()
            .contains("Accepted publickey for root from 127.0.0.1"),
        "sshd did not log the login: {}",
        server.log()
    );
}

/// `git -c http.proxy=socks5h://SOCKS clone http://localhost:PORT/repo.git`
/// from a dumb-HTTP static file server; the gateway resolves `localhost`.
#[test]
fn git_clone_socks5h_dumb_http() {
    let port = free_port();
    let server = GitServer::start(None, SocketAddr::new(V4, port));
    let d = server.dir();
    let git_cmd = |args: &[&str]| server.git(args);
    let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
    let content = server.content();

    let (gw, dev) = setup(Backend::Sqlite, &[], "laptop");
    let proxy = format!("http.proxy=socks5h://{}", dev.socks);
    let url = server.url("localhost");

    // no rule for loopback yet: the clone fails, the server sees no request
    let denied = d.join("denied");
    let out = git_cmd(&["-c", &proxy, "clone", &url, &path(&denied)]);
    assert!(
        !out.ok() && !denied.join("README").exists(),
        "git cloned although no rule allows the server: the proxy was bypassed\n{out}"
    );
    assert!(
        !server.log().contains("GET /repo.git"),
        "the HTTP server was asked for the repository while the proxy refused: {}",
        server.log()
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
    assert_eq!(
        log.stdout.trim(),
        GitServer::SUBJECT,
        "unexpected history: {log}"
    );
    assert!(
        server.log().contains("GET /repo.git/info/refs"),
        "the HTTP server did not log the dumb-HTTP requests: {}",
        server.log()
    );
}
