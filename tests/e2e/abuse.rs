//! Protocol abuse against real processes: each case asserts what happens to
//! the abuser and that everybody else is unaffected.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::h2raw::{self, RawH2};
use crate::harness::socks::{connect_ok, http_get};
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

/// Connections that open TCP to the gateway and never start (or finish) a
/// TLS handshake are closed at the handshake deadline; a device connects
/// and tunnels normally during the flood.
#[test]
fn silent_and_stalled_tls_clients_do_not_hold_the_gateway() {
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let mut gw = Gateway::init(Backend::Sqlite);
    gw.allow("127.0.0.1/32", &[]);
    gw.serve();
    let addr = SocketAddr::from(([127, 0, 0, 1], gw.port()));
    let flooded = Instant::now();
    let mut flood: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).expect("connect to the gateway"))
        .collect();
    // some send half a ClientHello and stop
    for s in flood.iter_mut().take(100) {
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .unwrap();
    }
    let dev = Device::enrolled_up(&gw, USER, "bystander");
    page_through(&dev, &origin);
    // measured from the flood's start: the handshake deadline is 10 s
    closed_within(&mut flood[500], Duration::from_secs(30));
    let silent = flooded.elapsed();
    let stalled = closed_within(&mut flood[0], Duration::from_secs(5));
    eprintln!(
        "[e2e] silent TLS clients closed {silent:?} after the flood began, half-handshake ones {stalled:?} later"
    );
    // 10 s, plus room for a loaded machine (13.9 s seen with the load average at 6)
    assert!(
        flooded.elapsed() <= Duration::from_secs(20),
        "the flood was still held {:?} after it began",
        flooded.elapsed()
    );
    page_through(&dev, &origin);
}

/// Garbage (an oversized length, then non-JSON) on a device's control
/// stream ends that stream only: the same connection still carries tunnels.
#[test]
fn garbage_on_a_control_stream_ends_only_that_stream() {
    use bytes::Bytes;
    use shimgate_proxy::config::{ConfigDir, DeviceConfig};
    let origin = Origin::http(V4, &unique_body("abuse bystander"));
    let (gw, dev) = setup(Backend::Sqlite, &["127.0.0.1/32"], "laptop");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = ConfigDir::new(dev.config_dir.clone());
    let config = DeviceConfig::load(&dir).unwrap();
    let tls = shimgate_proxy::tls::device(&dir).unwrap();
    let name = shimgate_proxy::tls::server_name(&config.server_name).unwrap();
    let (conn, _) = rt
        .block_on(shimgate_proxy::client::connect_device(
            &config.gateway,
            name,
            tls,
        ))
        .expect("the device connects");
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
