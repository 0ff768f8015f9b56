//! Parts of docs/CLI.md not covered elsewhere: files and modes, `init`
//! refusing to overwrite, token options (`--expires`, `--uses`, cancel).

use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use shimgate_wire::code::EnrollmentCode;

use crate::harness::socks;
use crate::harness::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_modes_and_init_refusing_to_overwrite() {
    let gw = Gateway::start(Backend::Sqlite);
    for f in ["ca.crt", "ca.key", "gateway.toml"] {
        assert!(gw.data_dir.join(f).is_file(), "init did not create {f}");
    }
    assert_eq!(
        mode(&gw.data_dir.join("ca.key")),
        0o600,
        "ca.key must be 0600"
    );
    let ca_before = std::fs::read(gw.ca_cert()).unwrap();
    let out = gw.cli(&["init", "--name", "localhost"]);
    assert!(
        !out.ok(),
        "a second `init` must refuse to overwrite the CA: {out}"
    );
    assert!(
        out.stderr.to_lowercase().contains("exist"),
        "a second `init` should say the CA exists: {out}"
    );
    assert_eq!(
        std::fs::read(gw.ca_cert()).unwrap(),
        ca_before,
        "a refused `init` changed ca.crt"
    );

    // without --quiet the code is printed among other text
    let out = gw.ok(&["token", "create", "--user", "dave"]);
    assert!(
        out.contains("sg1-"),
        "`token create` did not print a code: {out}"
    );

    let dev = Device::enrolled(&gw, "erin", "files-laptop");
    for f in ["config.toml", "device.key", "device.crt", "ca.crt"] {
        assert!(
            dev.config_dir.join(f).is_file(),
            "enroll did not create {f}"
        );
    }
    assert_eq!(
        mode(&dev.config_dir.join("device.key")),
        0o600,
        "device.key must be 0600"
    );
    assert_eq!(
        std::fs::read(dev.config_dir.join("ca.crt")).unwrap(),
        ca_before,
        "the device stored another CA than the gateway's"
    );
    let config = std::fs::read_to_string(dev.config_toml()).unwrap();
    assert!(
        config.contains(&format!("localhost:{}", gw.port())),
        "config.toml should name the gateway: {config}"
    );
}

#[test]
fn token_expiry_formats_uses_and_cancel() {
    let gw = Gateway::start(Backend::Sqlite);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (arg, secs) in [("30s", 30), ("10m", 600), ("24h", 86400), ("7d", 7 * 86400)] {
        let code: EnrollmentCode = gw.token_with("frank", &["--expires", arg]).parse().unwrap();
        let delta = code.expires_at - now;
        assert!(
            (secs - 5..=secs + 30).contains(&delta),
            "--expires {arg}: the code expires in {delta} s, expected about {secs}"
        );
    }

    // --uses 2: two devices, the third is refused
    let code = gw.token_with("grace", &["--uses", "2"]);
    for name in ["uses-1", "uses-2"] {
        Device::new(name).enroll(&code).expect_ok();
    }
    let out = Device::new("uses-3").enroll(&code);
    assert!(!out.ok(), "a --uses 2 code enrolled a third device: {out}");
    let devices = gw.device_list();
    assert!(
        devices.contains("uses-1") && devices.contains("uses-2") && !devices.contains("uses-3")
    );

    // cancel: the code stops working
    let code = gw.token("heidi");
    let id = code.parse::<EnrollmentCode>().unwrap().token_id_hex();
    let list = gw.ok(&["token", "list"]);
    assert!(
        list.contains(&id),
        "`token list` should show the token id {id}: {list}"
    );
    gw.ok(&["token", "cancel", &id]);
    let out = Device::new("cancelled-laptop").enroll(&code);
    assert!(!out.ok(), "a cancelled code still enrolled a device: {out}");
    assert!(!gw.device_list().contains("cancelled-laptop"));
}

/// `policy add --ports` takes a list, stored and listed as written, and
/// applies to each port in it; a bad item is refused by name and nothing is
/// stored.
#[test]
fn policy_rules_take_a_list_of_ports() {
    let list = "22,53,80,443,5432,8000-8100";
    let web = Origin::http(V4, &unique_body("port list"));
    let closed = Origin::start(V4, Mode::Echo);
    let mut gw = Gateway::init(Backend::Sqlite);
    let web_port = web.port().to_string();
    gw.allow("127.0.0.1/32", &["--ports", &format!("{list},{web_port}")]);
    let listed = gw.ok(&["policy", "list"]);
    assert!(
        listed.contains(&format!("{list},{web_port}")),
        "the list is not shown as written:\n{listed}"
    );
    for (bad, named) in [
        ("22,0", "\"0\""),
        ("22,70000", "\"70000\""),
        ("90-80", "\"90-80\""),
        ("80,abc", "\"abc\""),
    ] {
        let out = gw.cli(&[
            "policy",
            "add",
            "allow",
            "--to",
            "192.0.2.0/24",
            "--ports",
            bad,
        ]);
        assert!(!out.ok(), "--ports {bad} was accepted");
        assert!(
            out.stderr.contains(named),
            "--ports {bad}: the message does not name {named}: {}",
            out.stderr
        );
    }
    assert_eq!(
        gw.ok(&["policy", "list"]),
        listed,
        "a refused rule changed the policy"
    );
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, "list-laptop");
    let page = socks::http_get(socks::connect_ok(dev.socks, V4, web.port()), "127.0.0.1");
    assert!(page.contains("port list"), "{page}");
    socks::connect_expect(dev.socks, V4, closed.port(), socks::NOT_ALLOWED);
}
