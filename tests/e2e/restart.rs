//! The gateway goes away (stopped, or killed) and comes back: the proxy
//! fails fast meanwhile and recovers on its own.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::harness::socks::{self, connect, connect_ok};
use crate::harness::*;

/// How the gateway goes away.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// SIGTERM: it stops in order.
    Stopped,
    /// SIGKILL: nothing is flushed or closed by the gateway itself.
    Killed,
}

fn gateway_restart(backend: Backend) {
    gateway_goes_and_returns(backend, Gone::Stopped)
}
both_backends!(gateway_restart);

fn gateway_killed(backend: Backend) {
    gateway_goes_and_returns(backend, Gone::Killed)
}
both_backends!(gateway_killed);

fn gateway_goes_and_returns(backend: Backend, gone: Gone) {
    let body = unique_body("restart");
    let origin = Origin::http(V4, &body);
    let (mut gw, mut dev) = setup(backend, &["127.0.0.1/32"], "laptop");
    let resp = socks::http_get(connect_ok(dev.socks, V4, origin.port()), "127.0.0.1");
    assert!(resp.ends_with(&body));
    // a transfer under way when the gateway goes
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 16 * 1024,
            every: Duration::from_millis(10),
        },
    );
    let mut open = connect_ok(dev.socks, V4, stream.port());
    open.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64 * 1024];
    assert!(
        open.read(&mut buf).unwrap() > 0,
        "the transfer did not start"
    );

    match gone {
        Gone::Stopped => gw.stop(),
        Gone::Killed => gw.kill(),
    }
    let stopped = Instant::now();
    let ended = loop {
        match open.read(&mut buf) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) => break Some(e.kind()),
        }
    };
    eprintln!(
        "[e2e] the open tunnel ended with {ended:?} {:?} after the gateway stopped",
        stopped.elapsed()
    );
    assert_eq!(
        ended,
        Some(std::io::ErrorKind::ConnectionReset),
        "an open tunnel should end with a reset when the gateway is {gone:?} (None: a clean end)"
    );

    // fails fast: a reply, non-zero, within 5 s
    for attempt in 0..3 {
        let t = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let socks_addr = dev.socks;
        let port = origin.port();
        std::thread::spawn(move || {
            let _ = tx.send(connect(socks_addr, V4, port).map(|(code, _)| code));
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(code)) => assert_ne!(
                code,
                socks::SUCCEEDED,
                "attempt {attempt}: SOCKS CONNECT succeeded with the gateway down"
            ),
            Ok(Err(e)) => panic!(
                "attempt {attempt}: with the gateway down the proxy closed the connection \
                 without a SOCKS reply ({e}); expected 0x01"
            ),
            Err(_) => panic!("attempt {attempt}: no SOCKS reply within 5 s with the gateway down"),
        }
        eprintln!("[e2e] gateway down: refused in {:?}", t.elapsed());
    }
    dev.assert_running("the gateway was down");
    origin.expect_accepted(1, "origin connections");
    // The device's log says why its connection ended, in words.
    poll(
        "the device to log why its gateway connection ended",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            dev.logs()
                .lines()
                .any(|l| {
                    l.contains("gateway connection ended")
                        && l.contains("shutting down or restarting")
                })
                .then_some(())
        },
    );

    // same port, same data dir
    gw.serve();
    let t = Instant::now();
    let resp = poll(
        "the proxy to tunnel again after the gateway restarted",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || match connect(dev.socks, V4, origin.port()) {
            Ok((socks::SUCCEEDED, s)) => Some(socks::http_get(s, "127.0.0.1")),
            _ => None,
        },
    );
    eprintln!("[e2e] tunnelling again {:?} after the restart", t.elapsed());
    assert!(
        t.elapsed() <= Duration::from_secs(2),
        "new SOCKS connections succeeded only {:?} after the gateway was back",
        t.elapsed()
    );
    assert!(
        resp.ends_with(&body),
        "unexpected response after restart: {resp:?}"
    );
    poll(
        "`shimgate status` to exit 0 again after the gateway restarted",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (dev.status(&[]).code() == Some(0)).then_some(()),
    );
    // what the registry held before is all there
    assert!(
        gw.device_list().contains("laptop"),
        "the registry lost the device"
    );
}

/// With the gateway's port answering TCP but not TLS (a gateway half up), a
/// device retries with growing pauses, never in a tight loop, and keeps
/// retrying.
#[test]
fn reconnects_back_off() {
    let (mut gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let port = gw.port();
    gw.stop();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the gateway's port");
    listener.set_nonblocking(true).unwrap();
    let window = Duration::from_secs(8);
    let start = Instant::now();
    let mut attempts = Vec::new();
    while start.elapsed() < window {
        match listener.accept() {
            // closed at once: the device's TLS handshake fails
            Ok(_) => attempts.push(start.elapsed()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "[e2e] {} reconnection attempts in {window:?}, gaps {gaps:?}",
        attempts.len()
    );
    assert!(
        attempts.len() >= 3,
        "the device stopped retrying: {attempts:?}"
    );
    assert!(
        attempts.len() <= 40,
        "reconnecting in a tight loop: {} attempts",
        attempts.len()
    );
    // growing pauses: more attempts in the window's first half than in its second
    let first_half = attempts.iter().filter(|t| **t < window / 2).count();
    assert!(
        first_half > attempts.len() - first_half,
        "the pauses do not grow: {gaps:?}"
    );
    drop(dev);
}
