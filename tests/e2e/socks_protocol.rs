//! The SOCKS5 side of `shimgate up`: unsupported commands and hostile input.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::socks::{self, connect_ok, read_reply, request};
use crate::harness::*;

/// BIND → 0x07; an unknown address type → 0x08.
#[test]
fn bind_and_bad_atyp_are_refused() {
    let origin = Origin::start(V4, Mode::Echo);
    let (_gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");

    let (reply, _) = request(dev.socks, socks::BIND, V4, origin.port())
        .unwrap_or_else(|e| panic!("BIND: no reply from the proxy: {e}"));
    assert_eq!(
        reply.code,
        socks::COMMAND_NOT_SUPPORTED,
        "BIND: reply {:#04x} ({}), expected 0x07",
        reply.code,
        socks::reply_name(reply.code)
    );
    origin.expect_accepted(0, "BIND must not dial anything");

    // ATYP 0x09 does not exist
    let mut s = TcpStream::connect(dev.socks).unwrap();
    s.set_read_timeout(Some(socks::REPLY_LIMIT)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice).unwrap();
    assert_eq!(choice, [5, 0]);
    s.write_all(&[5, 1, 0, 9, 127, 0, 0, 1, 0, 80]).unwrap();
    let reply = read_reply(&mut s)
        .unwrap_or_else(|e| panic!("unknown ATYP: the proxy closed without a reply: {e}"));
    assert_eq!(
        reply.code,
        socks::ADDRESS_TYPE_NOT_SUPPORTED,
        "unknown ATYP: reply {:#04x}, expected 0x08",
        reply.code
    );

    // and the proxy still works
    let mut s = connect_ok(dev.socks, V4, origin.port());
    echo_roundtrip(&mut s, b"still alive");
}

fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("echo through the tunnel failed: {e}"));
    assert_eq!(back, msg);
}

/// Sends `garbage`, then expects the proxy to close the connection within
/// 5 s (it may answer something first).
fn assert_closed_after(proxy: SocketAddr, what: &str, garbage: &[u8]) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // a write error means the proxy already closed: fine
    let _ = s.write_all(garbage);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    let mut got = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                got += n;
                assert!(got < 64 * 1024, "{what}: the proxy keeps sending data");
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return, // reset: closed too
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the proxy kept the connection open for 5 s after garbage"
        );
    }
}

/// Garbage on the SOCKS port closes that connection and nothing else: an
/// open tunnel keeps working and new requests succeed.
#[test]
fn garbage_closes_only_that_connection() {
    let origin = Origin::start(V4, Mode::Echo);
    let (_gw, mut dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");

    let mut tunnel = connect_ok(dev.socks, V4, origin.port());
    echo_roundtrip(&mut tunnel, b"before");

    let mut random = vec![0u8; 4096];
    crate::harness::origin::pattern_chunk(7, &mut random);
    // Neither SOCKS5's version byte (5) nor an HTTP GET's `G` (the PAC
    // reader's): this noise must reach the SOCKS parser and be refused there.
    random[0] = 0x13;
    let mut after_greeting = vec![5, 1, 0];
    after_greeting.extend_from_slice(&random);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
        ),
        ("SOCKS4 request", vec![4, 1, 0, 80, 127, 0, 0, 1, b'u', 0]),
        ("greeting with no methods", vec![5, 0]),
        (
            "greeting then bad request version",
            vec![5, 1, 0, 9, 1, 0, 1, 127, 0, 0, 1, 0, 80],
        ),
        ("4 KiB of noise", random),
        (
            "a greeting, then 4 KiB of noise as the request",
            after_greeting,
        ),
        (
            "TLS ClientHello",
            vec![0x16, 3, 1, 0, 0x2f, 1, 0, 0, 0x2b, 3, 3],
        ),
    ];
    for (what, garbage) in &cases {
        assert_closed_after(dev.socks, what, garbage);
    }
    dev.assert_running("receiving garbage");

    echo_roundtrip(
        &mut tunnel,
        b"after the garbage, the old tunnel still echoes",
    );
    let mut fresh = connect_ok(dev.socks, V4, origin.port());
    echo_roundtrip(&mut fresh, b"and new tunnels work");
    origin.expect_accepted(2, "origin connections");
}
