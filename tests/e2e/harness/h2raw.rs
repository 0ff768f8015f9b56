//! A raw HTTP/2 client over TLS that writes frames by hand, for abuse tests:
//! it does what a well-behaved HTTP/2 library won't (open more streams than
//! the server allows, send header blocks over the server's limit, flood
//! CONTINUATION frames).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// HTTP/2 error codes (RFC 9113 §7).
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub struct RawH2 {
    tls: StreamOwned<ClientConnection, TcpStream>,
}

impl RawH2 {
    /// TLS to `addr`, the client preface and an empty SETTINGS frame; returns
    /// once the server's SETTINGS arrived and were acknowledged, so that its
    /// limits apply to every frame sent after.
    pub fn connect(addr: SocketAddr, name: &str, tls: Arc<ClientConfig>) -> RawH2 {
        let name = ServerName::try_from(name.to_owned()).expect("a server name");
        let conn = ClientConnection::new(tls, name).expect("a TLS client");
        let sock = TcpStream::connect(addr).expect("connect to the gateway");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut h2 = RawH2 {
            tls: StreamOwned::new(conn, sock),
        };
        h2.tls
            .write_all(PREFACE)
            .expect("TLS handshake and preface");
        h2.send(SETTINGS, 0, 0, &[]).unwrap();
        loop {
            let f = h2.next().expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break;
            }
        }
        h2.send(SETTINGS, ACK, 0, &[]).unwrap();
        h2
    }

    pub fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .expect("a frame length")
            .to_be_bytes();
        let mut head = [0u8; 9];
        head[..3].copy_from_slice(&len[1..]);
        head[3] = kind;
        head[4] = flags;
        head[5..].copy_from_slice(&stream.to_be_bytes());
        self.tls.write_all(&head)?;
        self.tls.write_all(payload)?;
        self.tls.flush()
    }

    /// A request's header block in one HEADERS frame, without END_STREAM.
    pub fn request(&mut self, stream: u32, headers: &[(&str, &str)]) -> io::Result<()> {
        self.send(HEADERS, END_HEADERS, stream, &hpack(headers))
    }

    /// The next frame from the server; an error at EOF or after the read timeout.
    pub fn next(&mut self) -> io::Result<Frame> {
        let mut head = [0u8; 9];
        self.tls.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.tls.read_exact(&mut payload)?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames until one satisfies `want`; panics on EOF first.
    pub fn until(&mut self, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.next() {
                Ok(f) if want(&f) => return f,
                Ok(_) => {}
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    }
}

/// An HPACK header block of literal fields without indexing or Huffman
/// coding: the simplest encoding every decoder must take.
pub fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        for s in [name, value] {
            integer(&mut out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}
