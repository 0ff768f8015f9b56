//! Protocol abuse against real processes: each case asserts what happens to
//! the abuser and that everybody else is unaffected.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::h2raw::{self, RawH2};
use crate::harness::socks::{self, connect_ok, http_get};
use crate::harness::*;

/// Waits until the other end closes `s` (EOF or reset); how long it took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return t.elapsed(),
            Ok(_) => {}
        }
        assert!(t.elapsed() < limit, "still open after {limit:?}");
    }
}

fn page_through(dev: &Device, origin: &Origin) {
    let s = connect_ok(dev.socks, V4, origin.port());
    assert!(
        http_get(s, "127.0.0.1").contains("abuse bystander"),
        "a bystander's tunnel broke during the abuse"
    );
}

/// A SOCKS client that sends one byte and then nothing (slowloris) is
/// dropped at the handshake deadline; tunnels of others work meanwhile.
#[test]
fn a_slow_socks_client_is_dropped_and_others_are_served() {
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let (_gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(dev.socks).unwrap();
            s.write_all(&[5]).unwrap();
            s
        })
        .collect();
    page_through(&dev, &origin);
    let took = closed_within(&mut slow[0], Duration::from_secs(30));
    eprintln!("[e2e] slow SOCKS client dropped after {took:?}");
    assert!(
        took <= Duration::from_secs(12),
        "dropped only after {took:?}"
    );
    for s in slow.iter_mut().skip(1) {
        closed_within(s, Duration::from_secs(5));
    }
    page_through(&dev, &origin);
}

/// Raises this process's open-file limit to its hard limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Lets the kernel pick the source port at connect, not at bind: picking
/// at bind ignores the destination, so ten thousand binds to one address
/// search an ever fuller port range (seconds of CPU).
fn no_port_at_bind(sock: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a live socket with a c_int option value.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "IP_BIND_ADDRESS_NO_PORT: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether the other end has closed `s` (EOF or reset), without waiting.
fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let closed = match s.peek(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Without a device certificate, one source address may hold 256
/// connections (`UNAUTHENTICATED_PER_ADDRESS` in gateway/src/server.rs).
const PER_ADDRESS: usize = 256;

/// Opens `n` TCP connections to `to` from source address `from`; each with
/// the moment it connected.
fn open_from(from: &str, to: SocketAddr, n: usize) -> Vec<(TcpStream, Instant)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            no_port_at_bind(&sock);
            sock.bind(from).unwrap();
            let s = sock.connect(to).await.expect("connect to the gateway");
            let s = s.into_std().unwrap();
            s.set_nonblocking(false).unwrap();
            out.push((s, Instant::now()));
        }
        out
    })
}

/// One address (127.0.0.2) opens more TCP connections to the gateway than
/// its whole connection limit (10,000) and never starts a TLS handshake:
/// it holds at most its per-address share, and a device on another address
/// enrolls, connects and tunnels meanwhile. Connections that never start,
/// or stop half way through, a handshake (from 127.0.0.3) are closed at the
/// handshake deadline, 10 s after they connected.
#[test]
fn silent_and_stalled_tls_clients_do_not_hold_the_gateway() {
    const FLOOD: usize = 10_500;
    let limit = raise_nofile();
    assert!(
        limit > FLOOD as u64 + 500,
        "this test needs {} open files; the hard limit is {limit}",
        FLOOD + 500
    );
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("127.0.0.1/32", &[]);
    gw.serve();
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.port()));
    let t = Instant::now();
    let flood = open_from("127.0.0.2", addr, FLOOD);
    eprintln!("[e2e] {FLOOD} connections opened in {:?}", t.elapsed());
    let dev = Device::enrolled_up(&gw, USER, "bystander");
    page_through(&dev, &origin);
    let held = flood.iter().filter(|(s, _)| !is_closed(s)).count();
    eprintln!("[e2e] {held} of {FLOOD} held by the gateway while a device tunnels");
    assert!(
        held <= PER_ADDRESS,
        "one address holds {held} connections without a certificate"
    );
    drop(flood);

    let mut slow = open_from("127.0.0.3", addr, 200);
    // half of them send half a ClientHello and stop
    for (s, _) in slow.iter_mut().take(100) {
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .unwrap();
    }
    let mut longest = Duration::ZERO;
    for (s, opened) in slow.iter_mut() {
        closed_within(s, Duration::from_secs(30));
        longest = longest.max(opened.elapsed());
    }
    eprintln!(
        "[e2e] silent and half-handshake connections closed at most {longest:?} after they connected"
    );
    // 10 s, plus room for a loaded machine
    assert!(
        longest <= Duration::from_secs(20),
        "a connection without a handshake was held {longest:?}"
    );
    page_through(&dev, &origin);
}

/// Garbage (an oversized length, then non-JSON) on a device's control
/// stream ends that stream only: the same connection still carries tunnels.
#[test]
fn garbage_on_a_control_stream_ends_only_that_stream() {
    use bytes::Bytes;
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let (gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = dev.connect_to_gateway(&rt);
    for garbage in [
        Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, b'x']),
        Bytes::from_static(b"\0\0\0\x05{{{{{"),
        Bytes::from_static(b"\0\0\0\x1a{\"type\":\"launch_missiles\"}"),
    ] {
        let ended = rt.block_on(async {
            let req = http::Request::builder()
                .method("POST")
                .uri(shimgate_wire::control::CONTROL_PATH)
                .body(())
                .unwrap();
            let mut send = conn.send.clone().ready().await.unwrap();
            let (response, mut stream) = send.send_request(req, false).unwrap();
            stream.send_data(garbage, false).unwrap();
            let response = response
                .await
                .expect("the gateway answers the control stream");
            let mut body = response.into_body();
            // the gateway ends the stream (reset or end) instead of waiting
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match body.data().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    }
                }
            })
            .await
            .is_ok()
        });
        assert!(
            ended,
            "the gateway kept a control stream carrying garbage open"
        );
        assert!(
            !conn.closed.is_cancelled(),
            "garbage on one stream closed the whole connection"
        );
    }
    // the same connection still opens tunnels
    let opened = rt.block_on(async {
        let req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("127.0.0.1:{}", origin.port()))
            .body(())
            .unwrap();
        let mut send = conn.send.clone().ready().await.unwrap();
        let (response, _stream) = send.send_request(req, false).unwrap();
        response.await.map(|r| r.status())
    });
    assert_eq!(
        opened.expect("a tunnel on the same connection"),
        http::StatusCode::OK
    );
    let logs = gw.logs();
    for why in ["larger than the limit", "malformed control message"] {
        assert!(
            logs.contains(why),
            "the gateway did not log ending a bad control stream ({why}):\n{logs}"
        );
    }
    page_through(&dev, &origin);
}

/// What a raw HTTP/2 client needs to reach the gateway as `dev` would:
/// the address, the TLS name, and TLS configs without and with its
/// certificate.
fn raw_h2_configs(
    gw: &Gateway,
    dev: &Device,
) -> (
    SocketAddr,
    String,
    std::sync::Arc<rustls::ClientConfig>,
    std::sync::Arc<rustls::ClientConfig>,
) {
    use shimgate_proxy::config::{ConfigDir, DeviceConfig};
    let dir = ConfigDir::new(dev.config_dir.clone());
    let name = DeviceConfig::load(&dir).unwrap().server_name;
    let ca = shimgate_wire::pki::load_certs(&gw.ca_cert()).unwrap();
    let anonymous =
        shimgate_proxy::tls::pinned(shimgate_wire::pki::fingerprint_bytes(&ca[0])).unwrap();
    let device = shimgate_proxy::tls::device(&dir).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.port()));
    (addr, name, anonymous, device)
}

/// Reads frames until `last` is reset; the streams reset on the way, with
/// their error codes.
fn resets_until(h2: &mut RawH2, last: u32) -> Vec<(u32, u32)> {
    let mut resets = Vec::new();
    loop {
        let f = h2.until("RST_STREAM frames", |f| f.kind == h2raw::RST_STREAM);
        resets.push((f.stream, f.error_code().unwrap_or(u32::MAX)));
        if f.stream == last {
            return resets;
        }
    }
}

/// A finished request on `stream` is answered: the stream was taken.
fn answered(h2: &mut RawH2, stream: u32) {
    h2.send(h2raw::DATA, h2raw::END_STREAM, stream, b"not json")
        .unwrap();
    h2.until("an answer on a stream the gateway took", |f| {
        f.stream == stream && f.kind == h2raw::HEADERS
    });
}

/// An HTTP/2 client that opens more streams than its connection allows
/// (4 without a certificate, `MAX_STREAMS` with one) has exactly the
/// streams beyond the limit refused; the ones it was given still work.
#[test]
fn streams_beyond_the_limit_are_refused_and_the_rest_work() {
    use shimgate_wire::enroll::{ENROLL_PATH, RENEW_PATH};
    use shimgate_wire::h2tuning::MAX_STREAMS;
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let (gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let (addr, name, anonymous, device) = raw_h2_configs(&gw, &dev);
    let post = |path| {
        h2raw::hpack(&[
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", name.as_str()),
        ])
    };
    // Requests without a body's end: each holds its stream open.
    let mut h2 = RawH2::connect(addr, &name, anonymous);
    let block = post(ENROLL_PATH);
    for i in 0..6 {
        h2.send(h2raw::HEADERS, h2raw::END_HEADERS, 1 + 2 * i, &block)
            .unwrap();
    }
    let refused = resets_until(&mut h2, 11);
    assert_eq!(
        refused,
        [(9, h2raw::REFUSED_STREAM), (11, h2raw::REFUSED_STREAM)],
        "without a certificate: streams beyond the 4th"
    );
    answered(&mut h2, 1);

    let mut h2 = RawH2::connect(addr, &name, device);
    let block = post(RENEW_PATH);
    let t = Instant::now();
    for i in 0..MAX_STREAMS + 2 {
        h2.send(h2raw::HEADERS, h2raw::END_HEADERS, 1 + 2 * i, &block)
            .unwrap();
    }
    let over = 1 + 2 * MAX_STREAMS;
    let refused = resets_until(&mut h2, over + 2);
    eprintln!(
        "[e2e] {} streams opened on one connection in {:?}",
        MAX_STREAMS + 2,
        t.elapsed()
    );
    assert_eq!(
        refused,
        [
            (over, h2raw::REFUSED_STREAM),
            (over + 2, h2raw::REFUSED_STREAM)
        ],
        "with a certificate: streams beyond MAX_STREAMS"
    );
    page_through(&dev, &origin);
    answered(&mut h2, over - 2);
}

/// Header blocks beyond the limit (`MAX_HEADER_LIST`, 16 KiB): one a little
/// over costs the abuser its stream (the connection carries tunnels after
/// it); one far over (4×, as h2 counts) ends the connection. Without a
/// certificate, frames beyond HTTP/2's default 16 KiB, or a header block
/// spread over CONTINUATION frames past the limit, end the connection.
#[test]
fn oversized_header_blocks_are_refused() {
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let (gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let (addr, name, anonymous, device) = raw_h2_configs(&gw, &dev);
    let target = format!("127.0.0.1:{}", origin.port());
    let connect = |stream, h2: &mut RawH2, pad: &str| {
        h2.request(
            stream,
            &[
                (":method", "CONNECT"),
                (":authority", &target),
                ("x-pad", pad),
            ],
        )
        .unwrap()
    };
    let pad = "a".repeat(80 * 1024);

    let mut h2 = RawH2::connect(addr, &name, device);
    connect(1, &mut h2, &pad[..20 * 1024]);
    let f = h2.until("the oversized request's end", |f| {
        f.stream == 1 && matches!(f.kind, h2raw::HEADERS | h2raw::RST_STREAM)
    });
    if f.kind == h2raw::HEADERS {
        // h2 answers 431 first, then resets the stream
        let f = h2.until("the oversized request's reset", |f| f.stream == 1);
        assert_eq!(f.kind, h2raw::RST_STREAM, "a 20 KiB header block was taken");
    }
    // the same connection still tunnels
    connect(3, &mut h2, "");
    h2.until("the tunnel's answer", |f| {
        f.stream == 3 && f.kind == h2raw::HEADERS
    });
    h2.send(
        h2raw::DATA,
        0,
        3,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut page = Vec::new();
    loop {
        let f = h2.until("the page through the tunnel", |f| {
            f.stream == 3 && f.kind == h2raw::DATA
        });
        page.extend_from_slice(&f.payload);
        if String::from_utf8_lossy(&page).contains("abuse bystander") {
            break;
        }
        assert_eq!(
            f.flags & h2raw::END_STREAM,
            0,
            "the tunnel ended without the page"
        );
    }
    connect(5, &mut h2, &pad);
    let f = h2.until("GOAWAY after an 80 KiB header block", |f| {
        f.kind == h2raw::GOAWAY
    });
    assert_ne!(f.error_code(), Some(0), "a GOAWAY without an error");
    assert!(
        h2.next().is_err(),
        "the connection stayed open after GOAWAY"
    );

    // Without a certificate: one 32 KiB HEADERS frame.
    let mut h2 = RawH2::connect(addr, &name, anonymous.clone());
    h2.request(1, &[(":method", "POST"), ("x-pad", &pad[..32 * 1024])])
        .unwrap();
    let f = h2.until("GOAWAY", |f| f.kind == h2raw::GOAWAY);
    assert_eq!(f.error_code(), Some(h2raw::FRAME_SIZE_ERROR));

    // Without a certificate: a header value announced as 1 MB, sent in
    // CONTINUATION frames of 16 KiB; 8 of them (128 KiB) must be too many.
    let mut h2 = RawH2::connect(addr, &name, anonymous);
    let mut start = h2raw::hpack(&[(":method", "POST")]);
    start.extend_from_slice(&[0, 5]);
    start.extend_from_slice(b"x-pad");
    start.extend_from_slice(&[127, 0xc1, 0x83, 0x3d]); // 1,000,000 as an HPACK integer
    h2.send(h2raw::HEADERS, 0, 1, &start).unwrap();
    let chunk = [b'a'; 16 * 1024];
    for _ in 0..8 {
        if h2.send(h2raw::CONTINUATION, 0, 1, &chunk).is_err() {
            break; // already closed
        }
    }
    let f = h2.until("GOAWAY", |f| f.kind == h2raw::GOAWAY);
    eprintln!(
        "[e2e] CONTINUATION flood ended with GOAWAY code {:?}",
        f.error_code()
    );
    assert_ne!(f.error_code(), Some(0), "a GOAWAY without an error");
    assert!(
        h2.next().is_err(),
        "the connection stayed open after GOAWAY"
    );
    page_through(&dev, &origin);
}

/// `serve --max-connections N`: connection N+1 is closed at once (and
/// logged), the N before it are held, and a place freed is taken again.
#[test]
fn the_connection_limit_is_a_flag() {
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.serve_args(&["--max-connections", "3"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.port()));
    // The harness's readiness probe holds a place until the gateway sees it
    // close: take all three once it has.
    let held = poll(
        "three connections held",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let held = open_from("127.0.0.2", addr, 3);
            std::thread::sleep(Duration::from_millis(200));
            held.iter().all(|(s, _)| !is_closed(s)).then_some(held)
        },
    );
    let (mut over, _) = open_from("127.0.0.2", addr, 1).remove(0);
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(over.read(&mut [0u8; 1]), Ok(0)),
        "connection 4 of 3 was not closed at once"
    );
    assert!(
        held.iter().all(|(s, _)| !is_closed(s)),
        "a connection within the limit was closed"
    );
    assert!(
        gw.logs().contains("connection limit reached"),
        "{}",
        gw.logs()
    );
    drop(held);
    let again = poll(
        "a place freed to be taken again",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let (s, _) = open_from("127.0.0.2", addr, 1).remove(0);
            std::thread::sleep(Duration::from_millis(200));
            (!is_closed(&s)).then_some(s)
        },
    );
    drop(again);
    assert!(
        gw.cli(&["serve", "--max-connections", "0"])
            .stderr
            .contains("is not a number from 1 to 1000000"),
        "--max-connections 0 must be refused with a clear message"
    );
}

/// A load balancer's TCP health check (connect, close without a byte) is
/// counted in `/metrics`, not logged at INFO; a real TLS failure still is.
#[test]
fn health_checks_are_counted_not_logged() {
    let mut gw = Gateway::init(Backend::Sqlite);
    let console = SocketAddr::from(([127, 0, 0, 1], crate::harness::env::free_port()));
    gw.serve_args(&["--console", &console.to_string()]);
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.port()));
    let silent = || {
        let out = curl_args(None, &["-sS", &format!("http://{console}/metrics")]);
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("shimgate_silent_connections_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    let before = poll(
        "the console's /metrics",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            curl_args(None, &["-sS", &format!("http://{console}/metrics")])
                .ok()
                .then(|| silent().unwrap_or(0))
        },
    );
    for _ in 0..3 {
        drop(TcpStream::connect(addr).expect("connect"));
    }
    poll(
        "three health checks counted",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || silent().filter(|n| *n >= before + 3),
    );
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
        .expect("write");
    poll(
        "the TLS failure logged",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || gw.logs().contains("TLS handshake refused").then_some(()),
    );
    assert_eq!(
        gw.logs().matches("TLS handshake refused").count(),
        1,
        "health checks logged as TLS failures:\n{}",
        gw.logs()
    );
}

/// Per-device limits: a device over its limit of tunnels open at once, or
/// of new tunnels per second, is refused 0x02 (and both logs say so), while
/// another device goes on as before.
#[test]
fn a_device_over_its_limits_leaves_the_others_alone() {
    let echo = Origin::start(V4, Mode::Echo);
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("127.0.0.1/32", &[]);
    gw.serve_args(&[
        "--console",
        "off",
        "--max-tunnels-per-device",
        "30",
        "--tunnels-per-second",
        "25",
    ]);
    let flooder = Device::enrolled_up(&gw, USER, "flooder");
    let bystander = Device::enrolled_up(&gw, USER, "bystander");
    let sequential = |dev: &Device, n: usize| -> Vec<Duration> {
        (0..n)
            .map(|i| {
                let t = Instant::now();
                let mut s = connect_ok(dev.socks, V4, echo.port());
                let msg = format!("bystander {i}");
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                t.elapsed()
            })
            .collect()
    };
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let before = p50(sequential(&bystander, 20));

    // Open at once: 30 held, the 31st refused.
    let held: Vec<TcpStream> = (0..30)
        .map(|_| connect_ok(flooder.socks, V4, echo.port()))
        .collect();
    socks::connect_expect(flooder.socks, V4, echo.port(), socks::NOT_ALLOWED);
    drop(held);

    // New per second: a flood of 300 as fast as the device can, while the
    // bystander tunnels 20 times.
    let flood = {
        let proxy = flooder.socks;
        let port = echo.port();
        std::thread::spawn(move || {
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..300 {
                match socks::connect(proxy, V4, port) {
                    Ok((socks::SUCCEEDED, _)) => ok += 1,
                    Ok((socks::NOT_ALLOWED, _)) => refused += 1,
                    other => panic!("flooder got {other:?}"),
                }
            }
            (ok, refused)
        })
    };
    let during = p50(sequential(&bystander, 20));
    let (ok, refused) = flood.join().unwrap();
    eprintln!(
        "[e2e] flood: {ok} tunnels, {refused} refused; bystander p50 {before:?} before, {during:?} during"
    );
    assert!(
        refused > 0,
        "300 tunnels at once passed a limit of 25 per second"
    );
    assert!(
        during < before * 10 + Duration::from_millis(50),
        "the bystander slowed from {before:?} to {during:?} while another device flooded"
    );
    let logs = gw.logs();
    assert!(logs.contains("a device is over its limit"), "{logs}");
    assert!(
        flooder.logs().contains("over this device's limit"),
        "{}",
        flooder.logs()
    );
}
