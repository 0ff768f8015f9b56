//! Protocol abuse against real processes: each case asserts what happens to
//! the abuser and that everybody else is unaffected.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    assert!(
        flooded.elapsed() <= Duration::from_secs(13),
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
