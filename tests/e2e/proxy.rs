//! The main path: SOCKS5 client → `shimgate up` → gateway → origin.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::harness::origin::{CHUNK, Hasher, pattern_chunk};
use crate::harness::socks::{self, connect_ok};
use crate::harness::*;

/// curl `--socks5` (IP literal) and `--socks5-hostname` (`localhost`,
/// resolved by the gateway) to an HTTP origin on 127.0.0.1.
fn curl_ipv4_and_hostname(backend: Backend) {
    let body = unique_body("curl v4");
    let origin = Origin::http(V4, &body);
    let (_gw, dev) = setup(backend, &["127.0.0.1/32"], "laptop");

    let out = curl(
        None,
        Some("--socks5"),
        Some(dev.socks),
        &format!("http://127.0.0.1:{}/", origin.port()),
    )
    .expect_ok();
    assert_eq!(out.stdout, body, "curl --socks5 got the wrong body");
    origin.expect_accepted(1, "origin connections");

    let out = curl(
        None,
        Some("--socks5-hostname"),
        Some(dev.socks),
        &format!("http://localhost:{}/", origin.port()),
    )
    .expect_ok();
    assert_eq!(
        out.stdout, body,
        "curl --socks5-hostname localhost got the wrong body"
    );
    origin.expect_accepted(2, "origin connections");
}
both_backends!(curl_ipv4_and_hostname);

/// An IPv6 destination, `[::1]`, allowed by `::1/128`.
#[test]
fn curl_ipv6_destination() {
    let body = unique_body("curl v6");
    let origin = Origin::http(V6, &body);
    let (_gw, dev) = setup(Backend::Sqlite, &["::1/128"], "laptop6");

    let out = curl(
        None,
        Some("--socks5"),
        Some(dev.socks),
        &format!("http://[::1]:{}/", origin.port()),
    )
    .expect_ok();
    assert_eq!(out.stdout, body);

    // the same through our own client, checking ATYP 4 explicitly
    let s = connect_ok(dev.socks, V6, origin.port());
    let resp = socks::http_get(s, "[::1]");
    assert!(resp.ends_with(&body), "unexpected response: {resp:?}");
    origin.expect_accepted(2, "origin connections");
}

/// Domain destinations: a gateway `--alias` name matched by a domain-suffix
/// rule; a name outside the rule is refused without dialling.
#[test]
fn domain_destination_via_alias_and_domain_rule() {
    let body = unique_body("alias");
    let origin = Origin::http(V4, &body);
    let spec = GatewaySpec::localhost()
        .alias(format!("web.corp.test:80=127.0.0.1:{}", origin.port()))
        .alias(format!("web.other.test:80=127.0.0.1:{}", origin.port()));
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("corp.test", &[]);
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, "laptop");

    let out = curl(
        None,
        Some("--socks5-hostname"),
        Some(dev.socks),
        "http://web.corp.test/",
    )
    .expect_ok();
    assert_eq!(
        out.stdout, body,
        "alias web.corp.test:80 should reach the origin"
    );
    origin.expect_accepted(1, "origin connections");

    // same origin behind an alias no allow rule names
    socks::connect_expect(dev.socks, "web.other.test", 80, socks::NOT_ALLOWED);
    origin.expect_accepted(1, "a refused request must not be dialled");
}

/// The client writes its request, shuts down its write side, and still gets
/// the whole response (the origin answers only after seeing EOF).
#[test]
fn half_close_keeps_the_other_direction() {
    let origin = Origin::start(V4, Mode::ReadThenReply { extra: 3 * CHUNK });
    let (_gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");

    let mut s = connect_ok(dev.socks, V4, origin.port());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut h = Hasher::new();
    h.update(&request);
    let expected_head = format!("received {} sha256 {}\n", request.len(), h.hex());
    s.write_all(&request).unwrap();
    s.shutdown(Shutdown::Write).unwrap();

    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap_or_else(|e| {
        panic!(
            "after the client's half-close, the response did not arrive ({e}); got {} bytes: \
             the origin never saw EOF, or the proxy closed both directions",
            resp.len()
        )
    });
    assert!(
        resp.starts_with(expected_head.as_bytes()),
        "response head {:?}, expected {expected_head:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(120)])
    );
    assert_eq!(
        resp.len(),
        expected_head.len() + 3 * CHUNK,
        "response truncated after half-close"
    );
}

const BULK: u64 = 100 * 1024 * 1024;

/// 100 MiB down and 100 MiB up; SHA-256 computed at both ends must match.
#[test]
fn bulk_100mib_sha256_both_directions() {
    let source = Origin::start(V4, Mode::Source { len: BULK });
    let sink = Origin::start(V4, Mode::Sink);
    let (_gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");

    // download
    let mut s = connect_ok(dev.socks, V4, source.port());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let t = Instant::now();
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) => panic!("download broke after {got} bytes: {e}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let down_hash = h.hex();
    let (sent, sent_hash) = source.wait_hash(Duration::from_secs(10));
    eprintln!(
        "[e2e] download: {got} bytes in {secs:.2}s ({:.0} MiB/s)",
        got as f64 / secs / 1048576.0
    );
    assert_eq!(got, sent, "download: byte count differs");
    assert_eq!(down_hash, sent_hash, "download: SHA-256 differs");

    // upload, then half-close; the sink answers with the hash it computed
    let mut s = connect_ok(dev.socks, V4, sink.port());
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let t = Instant::now();
    let mut h = Hasher::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut i = 0;
    while sent < BULK {
        let n = ((BULK - sent) as usize).min(CHUNK);
        pattern_chunk(i, &mut chunk);
        h.update(&chunk[..n]);
        s.write_all(&chunk[..n])
            .unwrap_or_else(|e| panic!("upload broke after {sent} bytes: {e}"));
        sent += n as u64;
        i += 1;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let up_hash = h.hex();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("no answer from the sink after upload: {e}"));
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "[e2e] upload: {sent} bytes in {secs:.2}s ({:.0} MiB/s)",
        sent as f64 / secs / 1048576.0
    );
    let (received, sink_hash) = sink.wait_hash(Duration::from_secs(10));
    assert_eq!(
        received, BULK,
        "upload: the origin received a different byte count"
    );
    assert_eq!(sink_hash, up_hash, "upload: SHA-256 differs");
    assert_eq!(
        answer.trim(),
        up_hash,
        "upload: the origin's answer did not come back"
    );
}
