//! `device revoke`: live tunnels cut within 1 s, new ones refused, other
//! devices untouched. SQLite propagates by polling, Postgres by NOTIFY.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::harness::socks::{self, connect, connect_ok};
use crate::harness::*;

fn revoke_cuts_live_tunnels(backend: Backend) {
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 1024,
            every: Duration::from_millis(5),
        },
    );
    let echo = Origin::start(V4, Mode::Echo);
    let (gw, dev) = setup(backend, &["127.0.0.1/32"], "doomed-laptop");
    let bystander = Device::enrolled_up(&gw, "bob", "bystander-laptop");

    let mut live = flowing(&dev, stream.port());
    let mut other = connect_ok(bystander.socks, V4, echo.port());
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    gw.ok(&["device", "revoke", "doomed-laptop"]);
    let (end, cut) = cut_after(&mut live, Instant::now());
    eprintln!("[e2e] {backend:?}: tunnel cut ({end}) {cut:?} after `device revoke` returned");
    assert!(
        cut < Duration::from_secs(1),
        "{backend:?}: the revoked device's live tunnel was cut after {cut:?}, expected < 1 s"
    );

    // new requests of the revoked device are refused
    // only the bystander's tunnel so far
    echo.expect_accepted(1, "the bystander's tunnel");
    let before = 1;
    match connect(dev.socks, V4, echo.port()) {
        Ok((code, _)) => assert_eq!(
            code,
            socks::NOT_ALLOWED,
            "a revoked device got SOCKS reply {code:#04x} ({}), expected 0x02",
            socks::reply_name(code)
        ),
        Err(e) => panic!(
            "a revoked device's SOCKS request was closed without a reply ({e}); expected 0x02"
        ),
    }
    echo.expect_accepted(before, "the gateway dialled for a revoked device");
    // and its log says so, in words
    poll(
        "the revoked device to log why it cannot connect",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            dev.logs()
                .contains("the gateway revoked this device")
                .then_some(())
        },
    );

    // the other device is untouched
    other.write_all(b"bystander").unwrap();
    let mut back = [0u8; 9];
    other
        .read_exact(&mut back)
        .expect("another device's tunnel broke when one device was revoked");
    assert_eq!(&back, b"bystander");
    let _fresh = connect_ok(bystander.socks, V4, echo.port());
}
both_backends!(revoke_cuts_live_tunnels);

/// A tunnel through `dev` to a `Mode::Stream` origin on `port`, once 32 KiB
/// have come through it.
pub(crate) fn flowing(dev: &Device, port: u16) -> std::net::TcpStream {
    let mut live = connect_ok(dev.socks, V4, port);
    live.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < 32 * 1024 {
        match live.read(&mut buf) {
            Ok(0) => panic!("the stream ended before the revoke"),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("the stream broke before the revoke: {e}"),
        }
        assert!(Instant::now() < deadline, "the stream is not flowing");
    }
    live
}

/// Reads `live` until it ends: how (EOF or the error) and how long after
/// `revoked` (a revocation that returned then). Panics after 10 s.
pub(crate) fn cut_after(live: &mut std::net::TcpStream, revoked: Instant) -> (String, Duration) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut after = 0usize;
    let end = loop {
        match live.read(&mut buf) {
            Ok(0) => break "EOF".to_owned(),
            Ok(n) => after += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => break format!("error {e}"),
        }
        if revoked.elapsed() > Duration::from_secs(10) {
            panic!(
                "the revoked device's tunnel is still open 10 s after the revocation returned \
                 ({after} bytes received since)"
            );
        }
    };
    (end, revoked.elapsed())
}
