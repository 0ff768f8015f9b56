//! The README's demo command, as a new user meets it: `shimgate-gateway
//! demo` prints what to try, the printed curls return the intranet page
//! through the tunnel and bob's page peer to peer, and Ctrl-C stops
//! everything and removes its state.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::env::{bin, free_port, unique};
use crate::harness::proc::{Proc, clean_env, signal};
use crate::harness::socks;
use crate::harness::{curl, curl_args};

#[test]
fn demo_serves_the_intranet_page_and_stops_cleanly() {
    let home = std::env::temp_dir().join(unique("sg-e2e-demo"));
    std::fs::create_dir_all(&home).unwrap();
    let socks: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(bin("shimgate-gateway"));
    cmd.args(["demo", "--socks", &socks.to_string()]);
    clean_env(&mut cmd, &home);
    let mut demo = Proc::spawn("demo", &mut cmd, &home);

    // Ready when it says so (stdout is line-buffered).
    let deadline = Instant::now() + Duration::from_secs(30);
    let banner = loop {
        let out = std::fs::read_to_string(&demo.stdout).unwrap_or_default();
        if out.contains("Ctrl-C stops everything") {
            break out;
        }
        demo.assert_running("starting the demo");
        assert!(
            Instant::now() < deadline,
            "demo not ready in 30 s\n{}",
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let suggested = format!("curl --socks5-hostname {socks} http://intranet.internal/");
    assert!(
        banner.contains(&suggested),
        "the demo does not print {suggested:?}:\n{banner}"
    );

    let page = curl(
        None,
        Some("--socks5-hostname"),
        Some(socks),
        "http://intranet.internal/",
    );
    assert!(
        page.ok() && page.stdout.contains("Welcome to the intranet"),
        "{page:?}\n{}",
        demo.logs()
    );
    // Without the proxy the name means nothing.
    let direct = curl_args(None, &["--max-time", "5", "http://intranet.internal/"]);
    assert!(
        !direct.ok(),
        "intranet.internal resolved without the VPN: {direct:?}"
    );

    // Bob's service, peer to peer, with the command the banner prints.
    let peer_curl = banner
        .lines()
        .find(|l| l.contains("vpn.internal") && l.trim_start().starts_with("curl"))
        .unwrap_or_else(|| panic!("the demo prints no peer-to-peer curl:\n{banner}"));
    let url = peer_curl
        .split_whitespace()
        .last()
        .expect("a URL at the end of the curl line");
    let page = curl(None, Some("--socks5-hostname"), Some(socks), url);
    assert!(
        page.ok() && page.stdout.contains("Hello from bob's device"),
        "{url}: {page:?}\n{}",
        demo.logs()
    );

    // Clients that half-close right after their request (`printf 'GET /
    // HTTP/1.0\r\n\r\n' | nc -N ...`) get the whole page, every time.
    let bob: http::Uri = url.parse().expect("bob's URL");
    let bob_port = bob.port_u16().expect("bob's URL has a port");
    for (host, port, text) in [
        ("intranet.internal", 80, "Welcome to the intranet"),
        ("bob.vpn.internal", bob_port, "Hello from bob's device"),
    ] {
        for i in 0..25 {
            let mut s = socks::connect_ok(socks, host, port);
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
            s.shutdown(Shutdown::Write).expect("half-close");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut page = String::new();
            let _ = s.read_to_string(&mut page);
            assert!(
                page.starts_with("HTTP/1.") && page.contains(" 200 ") && page.contains(text),
                "{host}: request {i} after a half-close got {page:?}\n{}",
                demo.logs()
            );
        }
    }

    // Logs written to a file carry no colour codes.
    assert!(
        !demo.logs().contains('\x1b'),
        "an escape byte in the demo's logs:\n{}",
        demo.logs()
    );

    let state = banner
        .lines()
        .find_map(|l| l.split("registry: ").nth(1))
        .map(|d| std::path::PathBuf::from(d.trim_end_matches(')')))
        .expect("the banner names the demo's directory");
    assert!(state.exists());

    signal(demo.pid(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not stop on Ctrl-C\n{}",
            demo.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "demo exit {status:?}\n{}", demo.logs());
    // The whole demo directory, device side included: late status updates
    // from tasks winding down must not recreate it.
    let root = state.parent().expect("the gateway dir has a parent");
    assert!(!root.exists(), "the demo left {} behind", root.display());
    let _ = std::fs::remove_dir_all(&home);
}
