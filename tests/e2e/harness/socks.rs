//! A minimal SOCKS5 client (RFC 1928, no authentication), so that tests can
//! assert reply codes exactly.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

pub const CONNECT: u8 = 0x01;
pub const BIND: u8 = 0x02;
pub const UDP_ASSOCIATE: u8 = 0x03;

pub const SUCCEEDED: u8 = 0x00;
pub const GENERAL_FAILURE: u8 = 0x01;
pub const NOT_ALLOWED: u8 = 0x02;
pub const NETWORK_UNREACHABLE: u8 = 0x03;
pub const HOST_UNREACHABLE: u8 = 0x04;
pub const REFUSED: u8 = 0x05;
pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

/// How long to wait for the proxy's reply before calling it a hang.
pub const REPLY_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub enum Target {
    Ip(IpAddr),
    Name(String),
}

impl From<IpAddr> for Target {
    fn from(ip: IpAddr) -> Target {
        Target::Ip(ip)
    }
}
impl From<Ipv4Addr> for Target {
    fn from(ip: Ipv4Addr) -> Target {
        Target::Ip(ip.into())
    }
}
impl From<Ipv6Addr> for Target {
    fn from(ip: Ipv6Addr) -> Target {
        Target::Ip(ip.into())
    }
}
impl From<&str> for Target {
    fn from(name: &str) -> Target {
        Target::Name(name.to_owned())
    }
}

pub use shimgate_wire::tunnel::socks_reply_name as reply_name;

/// The proxy's answer to a request.
#[derive(Debug)]
pub struct Reply {
    pub code: u8,
    /// BND.ADDR:BND.PORT when it is an address (for UDP ASSOCIATE: the relay).
    pub bound: Option<SocketAddr>,
}

/// Greeting (no-auth) + request with `cmd`; returns the reply and the stream
/// (positioned after the reply). `Err` means the proxy closed or broke the
/// connection instead of answering.
pub fn request(
    proxy: SocketAddr,
    cmd: u8,
    target: impl Into<Target>,
    port: u16,
) -> io::Result<(Reply, TcpStream)> {
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))?;
    s.set_read_timeout(Some(REPLY_LIMIT))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(io::Error::other(format!(
            "proxy refused the no-auth method: {choice:?}"
        )));
    }
    let mut req = vec![5, cmd, 0];
    match target.into() {
        Target::Ip(IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Target::Ip(IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Target::Name(name) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req)?;
    let reply = read_reply(&mut s)?;
    s.set_read_timeout(None)?;
    Ok((reply, s))
}

/// Reads `VER REP RSV ATYP BND.ADDR BND.PORT`.
pub fn read_reply(s: &mut TcpStream) -> io::Result<Reply> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    if head[0] != 5 {
        return Err(io::Error::other(format!("bad reply version {head:?}")));
    }
    let bound = match head[3] {
        1 => {
            let mut a = [0u8; 6];
            s.read_exact(&mut a)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([a[4], a[5]])))
        }
        4 => {
            let mut a = [0u8; 18];
            s.read_exact(&mut a)?;
            let octets: [u8; 16] = a[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([a[16], a[17]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len)?;
            let mut skip = vec![0u8; len[0] as usize + 2];
            s.read_exact(&mut skip)?;
            None
        }
        other => {
            return Err(io::Error::other(format!(
                "bad reply address type {other} (reply code {:#04x})",
                head[1]
            )));
        }
    };
    Ok(Reply {
        code: head[1],
        bound,
    })
}

/// CONNECT; returns the reply code and the stream.
pub fn connect(
    proxy: SocketAddr,
    target: impl Into<Target>,
    port: u16,
) -> io::Result<(u8, TcpStream)> {
    request(proxy, CONNECT, target, port).map(|(r, s)| (r.code, s))
}

/// CONNECT that must succeed.
pub fn connect_ok(proxy: SocketAddr, target: impl Into<Target>, port: u16) -> TcpStream {
    let target = target.into();
    match connect(proxy, target.clone(), port) {
        Ok((SUCCEEDED, s)) => s,
        Ok((code, _)) => panic!(
            "SOCKS CONNECT {target:?}:{port} via {proxy}: reply {code:#04x} ({}), expected success",
            reply_name(code)
        ),
        Err(e) => panic!("SOCKS CONNECT {target:?}:{port} via {proxy}: no reply: {e}"),
    }
}

/// CONNECT that must be answered with exactly `expected`.
pub fn connect_expect(proxy: SocketAddr, target: impl Into<Target>, port: u16, expected: u8) {
    let target = target.into();
    match connect(proxy, target.clone(), port) {
        Ok((code, _)) => assert_eq!(
            code,
            expected,
            "SOCKS CONNECT {target:?}:{port}: reply {code:#04x} ({}), expected {expected:#04x} ({})",
            reply_name(code),
            reply_name(expected)
        ),
        Err(e) => panic!(
            "SOCKS CONNECT {target:?}:{port}: the proxy closed the connection without a reply \
             ({e}); expected reply {expected:#04x} ({})",
            reply_name(expected)
        ),
    }
}

/// A minimal HTTP/1.1 GET over an established stream; returns the whole
/// response (the origin closes after answering).
pub fn http_get(mut s: TcpStream, host: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading the HTTP response through the tunnel: {e}"));
    String::from_utf8_lossy(&buf).into_owned()
}
