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
