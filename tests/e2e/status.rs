//! `shimgate status`: exit codes 4 (not running), 0 (connected), 3 (running,
//! not connected), and what it names.

use std::time::Duration;

use crate::harness::*;

#[test]
fn status_exit_codes_and_output() {
    let mut gw = Gateway::start(Backend::Sqlite);
    let mut dev = Device::enrolled(&gw, "carol", "status-laptop");

    let out = dev.status(&[]);
    assert_eq!(
        out.code(),
        Some(4),
        "status before `up` should exit 4 (not running): {out}"
    );

    dev.up(); // waits for exit 0
    let out = dev.status(&[]);
    assert_eq!(out.code(), Some(0), "{out}");
    let text = out.stdout.clone();
    for (what, needle) in [
        ("device", "status-laptop".to_owned()),
        ("user", "carol".to_owned()),
        ("gateway", format!(":{}", gw.port())),
    ] {
        assert!(
            text.contains(&needle),
            "status output should name the {what} ({needle:?}): {out}"
        );
    }

    let out = dev.status(&["--json"]);
    assert_eq!(out.code(), Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"));
    let flat = json.to_string();
    assert!(
        flat.contains("status-laptop") && flat.contains("carol"),
        "status --json: {flat}"
    );

    // gateway gone: running but not connected
    gw.stop();
    poll(
        "`shimgate status` to exit 3 with the gateway stopped",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || (dev.status(&[]).code() == Some(3)).then_some(()),
    );
    gw.serve();
    poll(
        "`shimgate status` to exit 0 after the gateway came back",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || (dev.status(&[]).code() == Some(0)).then_some(()),
    );

    dev.stop();
    let out = dev.status(&[]);
    assert_eq!(
        out.code(),
        Some(4),
        "status after `up` stopped should exit 4: {out}"
    );
}

/// The peer listener opens only while the device exports something, on the
/// address `up --peer-listen` pins, and `status` says where (or that it is
/// closed).
#[test]
fn the_peer_listener_opens_only_with_exports() {
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.serve();
    let pinned = std::net::SocketAddr::from(([127, 0, 0, 1], crate::harness::env::free_port()));
    let mut dev = Device::new("quiet-laptop");
    dev.enroll(&gw.token(USER)).expect_ok();
    dev.up_args = vec!["--peer-listen".into(), pinned.to_string()];
    dev.up();
    let listening = |want: Option<&str>| {
        let out = dev.status(&["--json"]);
        let s: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
        let at = s["peer_listen"].as_str().map(str::to_owned);
        let open = std::net::TcpStream::connect(pinned).is_ok();
        (at.as_deref() == want && open == want.is_some()).then_some(())
    };
    poll(
        "a device exporting nothing to listen on no port",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || listening(None),
    );
    let text = dev.status(&[]).stdout;
    assert!(text.contains("not listening (nothing exported)"), "{text}");

    dev.cli(&["export", "8000"]).expect_ok();
    let at = pinned.to_string();
    poll(
        "the peer listener to open on the pinned address",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || listening(Some(&at)),
    );
    let text = dev.status(&[]).stdout;
    assert!(text.contains(&format!("listening on {pinned}")), "{text}");

    dev.cli(&["export", "--remove", "8000"]).expect_ok();
    poll(
        "the peer listener to close with the last export",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || listening(None),
    );
}
