//! Online registration: one-time codes, expiry, CA pinning, and a device of
//! another CA.

use std::time::{Duration, Instant};

use shimgate_wire::code::EnrollmentCode;

use crate::harness::socks::{self, connect};
use crate::harness::*;

fn lower(out: &Out) -> String {
    out.text().to_lowercase()
}

/// A failed CLI run must say why, without a panic or a backtrace.
fn assert_clear_failure(out: &Out, words: &[&str], why: &str) {
    assert!(!out.ok(), "{why}: expected a non-zero exit: {out}");
    assert!(
        !out.stderr.contains("panicked"),
        "{why}: the CLI panicked instead of explaining: {out}"
    );
    let text = lower(out);
    assert!(
        words.iter().any(|w| text.contains(w)),
        "{why}: the message should mention one of {words:?}: {out}"
    );
}

/// Devices the gateway's registry lists (by the names the tests use).
fn listed(gw: &Gateway, name: &str) -> bool {
    gw.device_list().contains(name)
}

/// The second use of a one-time code fails with a clear message; only the
/// first device is registered.
fn code_reuse_is_refused(backend: Backend) {
    let gw = Gateway::start(backend);
    let code = gw.token(USER);

    let first = Device::new("first-laptop");
    let out = first.enroll(&code).expect_ok();
    assert!(
        out.stdout.contains("first-laptop"),
        "enroll should print the device name: {out}"
    );
    assert!(
        first.config_dir.join("device.crt").is_file(),
        "no device.crt after enroll"
    );
    assert!(
        first.config_dir.join("config.toml").is_file(),
        "no config.toml after enroll"
    );

    let second = Device::new("second-laptop");
    let out = second.enroll(&code);
    assert_clear_failure(
        &out,
        &["used", "already", "invalid", "unknown", "token", "code"],
        "reusing an enrollment code",
    );
    assert!(listed(&gw, "first-laptop"));
    assert!(
        !listed(&gw, "second-laptop"),
        "a reused code registered a device"
    );
    assert!(
        !second.config_dir.join("device.crt").exists(),
        "a refused enrollment left a device certificate"
    );
}
both_backends!(code_reuse_is_refused);

/// `token create --expires 2s`, wait past it: enroll fails, saying so.
#[test]
fn expired_code_is_refused() {
    let gw = Gateway::start(Backend::Sqlite);
    let created = Instant::now();
    let code = gw.token_with(USER, &["--expires", "2s"]);
    let parsed: EnrollmentCode = code
        .parse()
        .expect("the gateway printed an unparsable code");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now..=now + 3).contains(&parsed.expires_at),
        "--expires 2s: code expires at {}, now is {now}",
        parsed.expires_at
    );
    // waiting on the clock is the point of this test
    let wait = Duration::from_secs(3).saturating_sub(created.elapsed());
    std::thread::sleep(wait);

    let dev = Device::new("late-laptop");
    let out = dev.enroll(&code);
    assert_clear_failure(&out, &["expire"], "enrolling with an expired code");
    assert!(
        !listed(&gw, "late-laptop"),
        "an expired code registered a device"
    );
}

/// A code from gateway A re-pointed at gateway B (another CA) fails: the
/// device pins A's CA fingerprint, B's certificate does not match, and B
/// registers nothing.
#[test]
fn code_pointing_at_another_gateway_fails_ca_pin() {
    let a = Gateway::start(Backend::Sqlite);
    let b = Gateway::start(Backend::Sqlite);
    let code_a: EnrollmentCode = a.token(USER).parse().unwrap();
    // B has its own token table: a token id/secret valid at B too makes sure
    // that only the CA pin can be the reason for the refusal
    let code_b: EnrollmentCode = b.token(USER).parse().unwrap();
    assert_ne!(
        code_a.ca_fingerprint, code_b.ca_fingerprint,
        "two `init`s made the same CA"
    );
    let forged = EnrollmentCode {
        gateway: format!("localhost:{}", b.port()),
        ..code_b.clone()
    };
    let forged = EnrollmentCode {
        ca_fingerprint: code_a.ca_fingerprint,
        ..forged
    };

    // A's code, literally re-pointed at B
    let a_at_b = EnrollmentCode {
        gateway: format!("localhost:{}", b.port()),
        ..code_a.clone()
    };
    let dev = Device::new("redirected-laptop");
    let out = dev.enroll(&a_at_b.to_string());
    assert_clear_failure(
        &out,
        &["fingerprint", "certificate", "ca ", "ca's", "pin", "trust"],
        "enrolling with A's code re-pointed at gateway B",
    );
    assert!(
        !listed(&b, "redirected-laptop"),
        "gateway B registered a device for A's code"
    );

    let dev = Device::new("misled-laptop");
    let out = dev.enroll(&forged.to_string());
    assert_clear_failure(
        &out,
        &["fingerprint", "certificate", "ca ", "ca's", "pin", "trust"],
        "enrolling against a gateway whose CA does not match the code",
    );
    assert!(
        !listed(&b, "misled-laptop"),
        "gateway B registered a device despite the CA mismatch"
    );
    assert!(!listed(&a, "misled-laptop"));

    // control: B's own, untouched code still works (the pin was the only problem)
    let ok = Device::new("honest-laptop");
    ok.enroll(&code_b.to_string()).expect_ok();
    assert!(listed(&b, "honest-laptop"));
}

/// A device enrolled at gateway B, pointed at gateway A: it cannot tunnel,
/// whether it trusts B's CA (A's server certificate fails) or A's CA too
/// (A must reject B's client certificate).
#[test]
fn device_of_another_ca_cannot_tunnel() {
    let origin = Origin::start(V4, Mode::Echo);
    let mut a = Gateway::init(Backend::Sqlite);
    a.allow("127.0.0.1/32", &[]);
    a.serve();
    let mut b = Gateway::init(Backend::Sqlite);
    b.allow("127.0.0.1/32", &[]);
    b.serve();

    // sanity: at B it works
    let mut dev = Device::enrolled_up(&b, USER, "stranger");
    let _ok = socks::connect_ok(dev.socks, V4, origin.port());
    origin.expect_accepted(1, "origin connections");
    dev.stop();

    // re-point config.toml at A
    let path = dev.config_toml();
    let config = std::fs::read_to_string(&path).unwrap();
    let mut found = false;
    let config: String = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("gateway") && line.contains('=') {
                found = true;
                format!("gateway = \"localhost:{}\"", a.port())
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        found,
        "config.toml has no `gateway = ...` line (docs/CLI.md): {config}"
    );
    std::fs::write(&path, config + "\n").unwrap();

    let assert_cannot_tunnel = |dev: &Device, what: &str| {
        for _ in 0..3 {
            match connect(dev.socks, V4, origin.port()) {
                Ok((code, _)) => assert_ne!(
                    code,
                    socks::SUCCEEDED,
                    "{what}: a device of another CA got a tunnel through gateway A"
                ),
                Err(e) => panic!(
                    "{what}: expected a non-zero SOCKS reply (0x01: gateway unreachable), \
                     the proxy closed the connection instead: {e}"
                ),
            }
        }
        origin.expect_accepted(
            1,
            &format!("{what}: gateway A dialled for a foreign device"),
        );
    };

    // 1. still trusting B's CA only
    dev.up_unconnected();
    assert_cannot_tunnel(&dev, "device trusting B's CA, pointed at A");
    assert_ne!(
        dev.status(&[]).code(),
        Some(0),
        "status says connected to a gateway of another CA"
    );
    dev.stop();

    // 2. trusting A's CA too (so only A's client-certificate check stands in the way)
    std::fs::copy(a.ca_cert(), dev.config_dir.join("ca.crt")).unwrap();
    dev.up_unconnected();
    assert_cannot_tunnel(&dev, "device with B's certificate and A's CA, pointed at A");
    assert_ne!(
        dev.status(&[]).code(),
        Some(0),
        "status says connected with a foreign certificate"
    );
    assert!(!a.device_list().contains("stranger"));
}

/// A malformed code is reported as such, before any network traffic.
#[test]
fn malformed_code_is_explained() {
    let dev = Device::new("typo-laptop");
    let out = dev.enroll("sg1-thisisnotavalidcode");
    assert_clear_failure(
        &out,
        &["code", "checksum", "copied", "short", "base64"],
        "enrolling with a malformed code",
    );
}
