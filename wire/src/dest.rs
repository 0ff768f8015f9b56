//! Where a flow goes: the one destination type every shim on the device
//! (the SOCKS port today; the socket shim and TUN next) hands the tunnel
//! layer, that travels as the HTTP/2 CONNECT authority, and that the gateway
//! dials. One parse and one rule for what a host name is, on both ends, so
//! the device never sends what the gateway would read as another host.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Why a destination was refused (the SOCKS reply is 0x08, address type not
/// supported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestError {
    #[error("{0:?} is not a host name or an IP address")]
    BadHost(String),
    #[error("port 0 is not a destination")]
    PortZero,
    #[error("{0:?} is not HOST:PORT")]
    BadAuthority(String),
}

/// The host part: an address, or a name only the gateway resolves (socks5h
/// semantics). A name is lowercase, without a trailing dot, of labels of
/// 1–63 letters, digits, `-` or `_`, at most 253 bytes in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// A host as a program names it (a SOCKS domain, a name it looked up):
    /// an IP address in its usual text form, or a host name.
    pub fn parse(text: &str) -> Result<Host, DestError> {
        // An address, also with a trailing dot (`10.0.0.1.`): what the
        // device sends must read back as the same kind of host (found by the
        // connect_authority fuzz target).
        let name = text.strip_suffix('.').unwrap_or(text);
        if let Ok(ip) = name.parse() {
            return Ok(Host::Ip(ip));
        }
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(Host::Name(name.to_ascii_lowercase()))
        } else {
            Err(DestError::BadHost(text.to_owned()))
        }
    }

    /// The host of a URI authority, where an IPv6 address is in brackets.
    pub fn parse_uri_host(text: &str) -> Result<Host, DestError> {
        match text.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<std::net::Ipv6Addr>()
                .map(|a| Host::Ip(IpAddr::V6(a)))
                .map_err(|_| DestError::BadHost(text.to_owned())),
            None if text.contains(':') => Err(DestError::BadHost(text.to_owned())),
            None => Host::parse(text),
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            Host::Ip(_) => None,
        }
    }
}

impl fmt::Display for Host {
    /// As in a URI authority (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A host and a port other than 0. Shown (and sent as the CONNECT
/// authority) as `host:port`, `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    host: Host,
    port: u16,
}

impl Destination {
    pub fn new(host: Host, port: u16) -> Result<Destination, DestError> {
        if port == 0 {
            return Err(DestError::PortZero);
        }
        Ok(Destination { host, port })
    }

    pub fn from_addr(addr: SocketAddr) -> Result<Destination, DestError> {
        Destination::new(Host::Ip(addr.ip()), addr.port())
    }

    /// The authority of a CONNECT request, as the gateway receives it.
    pub fn from_authority(authority: &http::uri::Authority) -> Result<Destination, DestError> {
        let port = authority
            .port_u16()
            .ok_or_else(|| DestError::BadAuthority(authority.to_string()))?;
        Destination::new(Host::parse_uri_host(authority.host())?, port)
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl From<DestError> for crate::tunnel::TunnelError {
    fn from(_: DestError) -> Self {
        crate::tunnel::TunnelError::AddressNotSupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(s: &str) -> Result<Destination, DestError> {
        Destination::from_authority(&s.parse().unwrap())
    }

    #[test]
    fn hosts() {
        assert_eq!(
            Host::parse("::1").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("192.0.2.1").unwrap(),
            Host::Ip("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            Host::parse("Intranet.Internal.").unwrap(),
            Host::Name("intranet.internal".into())
        );
        assert_eq!(
            Host::parse("_srv.x-y.test").unwrap(),
            Host::Name("_srv.x-y.test".into())
        );
        assert_eq!(
            Host::parse("10.0.0.110.").unwrap(),
            Host::Ip("10.0.0.110".parse().unwrap()),
            "an address with a trailing dot is the address"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "a.b..",
            "bad host",
            "x/y",
            "evil@intranet.internal",
            "a?b",
            "a#b",
            "a:1",
            "[::1]",
            "bob.vpn.internal\0",
            &"a".repeat(64),
            &format!("{}.b", "a.".repeat(126)),
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorities() {
        assert_eq!(
            authority("[::1]:22").unwrap(),
            Destination::new(Host::Ip("::1".parse().unwrap()), 22).unwrap()
        );
        assert_eq!(
            authority("Wiki.Corp.:443").unwrap().to_string(),
            "wiki.corp:443"
        );
        for bad in ["x:0", "[zz]:1", "a..b:80", "host"] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }

    /// What the device sends, the gateway reads back as the same destination.
    #[test]
    fn round_trip_through_a_connect_request() {
        for d in [
            Destination::new(Host::Name("intranet.internal".into()), 80),
            Destination::new(Host::Ip("2001:db8::1".parse().unwrap()), 443),
            Destination::new(Host::Ip("192.0.2.1".parse().unwrap()), 8080),
            Destination::new(Host::parse("_srv.x-y.test").unwrap(), 65535),
            Destination::new(Host::parse("10.0.0.110.").unwrap(), 80),
        ] {
            let d = d.unwrap();
            let uri: http::Uri = d.to_string().parse().unwrap();
            let back = Destination::from_authority(uri.authority().unwrap()).unwrap();
            assert_eq!(back, d);
        }
    }

    #[test]
    fn port_zero_is_refused() {
        assert_eq!(
            Destination::from_addr("192.0.2.1:0".parse().unwrap()),
            Err(DestError::PortZero)
        );
    }
}
