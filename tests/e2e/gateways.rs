//! Several gateways on one Postgres registry: each says it is alive once a second (its
//! heartbeat), `shimgate-gateway gateway list` on any of them shows them all with the devices
//! each holds, `device list` which gateway each device last connected to, and a gateway that
//! stops beating (killed) is shown down within a few seconds. A revocation through one reaches
//! the others.

use std::time::{Duration, Instant};

use crate::harness::socks;
use crate::harness::*;

/// `gateway list`'s row for gateway `name`: its columns (GATEWAY ADDRESS REGION VERSION DEVICES
/// STATE, then the last heartbeat).
fn row(list: &str, name: &str) -> Option<Vec<String>> {
    list.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(name))
}

/// Polls `gateway list` (asked of `gw`) until `want` holds for gateway `name`'s row.
fn wait_for_row(
    gw: &Gateway,
    name: &str,
    what: &str,
    limit: Duration,
    want: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    poll(
        &format!("gateway list to show {name} {what}"),
        limit,
        Duration::from_millis(100),
        || row(&gw.ok(&["gateway", "list"]), name).filter(|r| want(r)),
    )
}

const STATE: usize = 5;
const DEVICES: usize = 4;

#[test]
fn gateways_on_one_registry_are_listed_and_a_dead_one_shown_down() {
    let mut a = Gateway::init(Backend::Postgres);
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    let mut b = Gateway::init_on(a.db.shared(), b_spec);
    a.serve_args(&["--console", "off", "--region", "eu-west"]);
    b.serve();

    let version = env!("CARGO_PKG_VERSION");
    let ra = wait_for_row(&a, "localhost", "up", Duration::from_secs(10), |r| {
        r.get(STATE).map(String::as_str) == Some("up")
    });
    assert_eq!(
        ra[1..DEVICES],
        [&format!("localhost:{}", a.port()), "eu-west", version],
        "{ra:?}"
    );
    let rb = wait_for_row(&b, "gw-b.test", "up", Duration::from_secs(10), |r| {
        r.get(STATE).map(String::as_str) == Some("up")
    });
    assert_eq!(rb[2], "-", "no region given: {rb:?}");
    assert_eq!(rb[DEVICES], "0", "{rb:?}");

    // A device connected to a: a holds one device, b none.
    let dev = Device::enrolled_up(&a, "alice", "laptop");
    wait_for_row(
        &b,
        "localhost",
        "holding one device",
        Duration::from_secs(10),
        |r| r.get(DEVICES).map(String::as_str) == Some("1"),
    );
    // The registry, read through b, says the device is on a.
    let devices = b.device_list();
    let laptop = devices
        .lines()
        .find(|l| l.starts_with("laptop "))
        .unwrap_or_else(|| panic!("laptop is not listed: {devices}"));
    assert_eq!(
        laptop.split_whitespace().last(),
        Some("localhost"),
        "device list's GATEWAY column: {devices}"
    );

    // b dies without a word: shown down within a few seconds, a unaffected.
    b.kill();
    let killed = Instant::now();
    let rb = wait_for_row(&a, "gw-b.test", "down", Duration::from_secs(15), |r| {
        r.get(STATE).map(String::as_str) == Some("down")
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(6),
        "shown down {took:?} after it died: {rb:?}"
    );
    let ra = row(&a.ok(&["gateway", "list"]), "localhost").expect("a is still listed");
    assert_eq!(ra[DEVICES..=STATE], ["1", "up"], "{ra:?}");

    // The device gone, a holds none; b, forgotten, is no longer listed.
    drop(dev);
    wait_for_row(
        &a,
        "localhost",
        "holding no device",
        Duration::from_secs(10),
        |r| r.get(DEVICES).map(String::as_str) == Some("0"),
    );
    assert!(a.ok(&["gateway", "forget", "gw-b.test"]).contains("forgot"));
    assert!(row(&a.ok(&["gateway", "list"]), "gw-b.test").is_none());
    let out = a.cli(&["gateway", "forget", "gw-b.test"]);
    assert!(
        !out.ok() && out.stderr.contains("no gateway named gw-b.test"),
        "{out}"
    );
}

/// A revocation made through one gateway cuts the device's live tunnel on
/// another within 1 s (every gateway hears the registry's NOTIFY), and the
/// device's next request there is refused.
#[test]
fn a_revocation_through_one_gateway_cuts_tunnels_on_another() {
    let mut a = Gateway::init(Backend::Postgres);
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    // Devices reach b by its address (the name is not in any resolver).
    b_spec.public_addr = Some(b_spec.listen.to_string());
    let mut b = Gateway::init_on(a.db.shared(), b_spec);
    a.allow("127.0.0.1/32", &[]);
    a.serve_args(&["--console", "off"]);
    b.serve();
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 1024,
            every: Duration::from_millis(5),
        },
    );
    let dev = Device::enrolled_up(&b, "alice", "roaming-laptop");
    let mut live = crate::revoke::flowing(&dev, stream.port());

    a.ok(&["device", "revoke", "roaming-laptop"]);
    let (end, cut) = crate::revoke::cut_after(&mut live, Instant::now());
    eprintln!("[e2e] tunnel on b cut ({end}) {cut:?} after the revocation through a returned");
    assert!(
        cut < Duration::from_secs(1),
        "the revoked device's tunnel on the other gateway was cut after {cut:?}, expected < 1 s"
    );
    match socks::connect(dev.socks, V4, stream.port()) {
        Ok((code, _)) => assert_eq!(code, socks::NOT_ALLOWED, "{}", socks::reply_name(code)),
        Err(e) => panic!("no SOCKS reply for the revoked device ({e}); expected 0x02"),
    }
}

/// A certificate signing request for a fresh P-256 key, from openssl (the
/// gateway takes only its public key).
fn csr() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-keyout", "/dev/null", "-subj", "/CN=racer"])
        .output()
        .expect("running openssl");
    assert!(out.status.success(), "openssl req: {out:?}");
    String::from_utf8(out.stdout).expect("PEM is ASCII")
}

/// `POST /v1/enroll` with `code` as device `name`, by curl (HTTP/2 over
/// TLS, the gateway's certificate not checked: the race is about the
/// registry), from source address `from` so that the per-address limit on
/// enrollments does not decide. Started, not waited for.
fn enroll_with_curl(
    gw: &Gateway,
    from: &str,
    code: &str,
    name: &str,
    csr: &str,
) -> std::process::Child {
    let code: shimgate_wire::code::EnrollmentCode = code.parse().expect("an enrollment code");
    let body = serde_json::json!({
        "token_id": code.token_id_hex(),
        "secret": shimgate_wire::pki::hex(&code.secret),
        "device_name": name,
        "csr_pem": csr,
    });
    std::process::Command::new(crate::harness::env::curl())
        .args([
            "--http2",
            "-k",
            "-sS",
            "--max-time",
            "30",
            "--interface",
            from,
        ])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            &body.to_string(),
        ])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://127.0.0.1:{}/v1/enroll", gw.port()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting curl")
}

/// What an enrollment started by [`enroll_with_curl`] answered: the HTTP
/// status and the JSON body.
fn answer(child: std::process::Child) -> (u16, serde_json::Value) {
    let out = child.wait_with_output().expect("waiting for curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| {
        panic!(
            "curl printed no status: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let status = status.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl's status {status:?} ({})",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// Two gateways on one Postgres, no shared memory: one code redeemed at
/// both at the same moment makes one device, every time; and 100
/// enrollments at once, half through each, get 100 different VPN addresses
/// and use each code exactly as often as it allows.
#[test]
fn enrollments_racing_across_gateways() {
    let a = {
        let mut a = Gateway::init(Backend::Postgres);
        a.serve_args(&["--console", "off"]);
        a
    };
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    let mut b = Gateway::init_on(a.db.shared(), b_spec);
    b.serve_args(&["--console", "off"]);
    let csr = csr();

    for round in 0..10 {
        let code = a.token("alice");
        let name = format!("twice-{round}");
        let at_a = enroll_with_curl(&a, "127.0.1.1", &code, &name, &csr);
        let at_b = enroll_with_curl(&b, "127.0.2.1", &code, &name, &csr);
        let answers = [answer(at_a), answer(at_b)];
        let won: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one enrollment wins: {answers:?}"
        );
        let lost = answers.iter().find(|(s, _)| *s != 200).expect("a loser");
        assert_eq!(lost.0, 403, "round {round}: {answers:?}");
        assert!(
            lost.1["error"]
                .as_str()
                .is_some_and(|e| e.contains("already used")),
            "round {round}: {answers:?}"
        );
    }
    let listed = a.device_list();
    let twice = listed.lines().filter(|l| l.starts_with("twice-")).count();
    assert_eq!(twice, 10, "one device per raced code: {listed}");

    // Ten codes of ten uses, five made by each gateway and redeemed there
    // (the gateways limit attempts per code to ten at once).
    const CODES: usize = 10;
    const USES: usize = 10;
    const N: usize = CODES * USES;
    let codes: Vec<(&Gateway, String)> = (0..CODES)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            (gw, gw.token_with("bob", &["--uses", &USES.to_string()]))
        })
        .collect();
    let children: Vec<_> = (0..N)
        .map(|i| {
            let (gw, code) = &codes[i % CODES];
            let from = format!("127.0.{}.{}", 10 + i / 200, 1 + i % 200);
            enroll_with_curl(gw, &from, code, &format!("crowd-{i}"), &csr)
        })
        .collect();
    let mut ips = std::collections::HashSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let (status, body) = answer(child);
        assert_eq!(status, 200, "enrollment {i}: {body}");
        let ip = body["vpn_ip"].as_str().expect("a VPN address").to_owned();
        assert!(
            ips.insert(ip.clone()),
            "enrollment {i} got {ip} a second time"
        );
    }
    assert_eq!(ips.len(), N);
    // The uses are counted in the registry: an eleventh use of a's code is
    // refused at b too (at a, the attempts limit would answer first).
    let (status, body) = answer(enroll_with_curl(
        &b,
        "127.0.3.1",
        &codes[0].1,
        "one-more",
        &csr,
    ));
    assert_eq!(status, 403, "a code's eleventh use: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("already used")),
        "{body}"
    );
    let listed = b.device_list();
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("crowd-")).count(),
        N,
        "{listed}"
    );
}
