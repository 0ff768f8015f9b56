//! What the socket shim (the preload library inside a program) and
//! `shimgate up` say on the shim socket: one request line, one answer line,
//! one connection each.
//!
//! This file uses `std` only: the preload crate compiles it by path (it links
//! nothing but libc into the programs it is loaded into), so it must not
//! reach into the rest of this crate.
//!
//! ```text
//! connect 10.20.0.5:5432 127.0.0.1:40112   the program's socket is in SYN_SENT
//! ok                                         to the hold address, from 127.0.0.1:40112
//! refused 13 policy refuses db:5432          errno, then why
//! udp 10.20.0.53:53 127.0.0.1:40113        datagrams from the program's socket at
//! relay 127.0.0.1:51234                      40113 to 10.20.0.53:53 go to this relay
//! resolve db.corp.internal
//! addrs 198.18.0.7 2001:2::7                 its addresses from the fake range
//! noname                                     the gateway says it does not exist
//! name 198.18.0.7                            which name a fake address stands for
//! name db.corp.internal                      that name (or noname: not handed out)
//! split
//! split 10.77.0.0/16,198.18.0.0/15 corp.internal,vpn.internal 127.0.0.1:39021 [::1]:39021
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fake ranges `up` hands VPN names addresses from: 198.18.0.0/15
/// (RFC 2544's benchmarking range) and 2001:2::/48 (RFC 5180's).
pub const FAKE_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
pub const FAKE_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48);

/// Whether `ip` is in a fake range (IPv4-mapped IPv6 read as IPv4).
pub fn is_fake(ip: IpAddr) -> bool {
    let v4_shift = 32 - u32::from(FAKE_V4.1);
    let v6_shift = 128 - u32::from(FAKE_V6.1);
    match ip {
        IpAddr::V4(v4) => u32::from(v4) >> v4_shift == u32::from(FAKE_V4.0) >> v4_shift,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_fake(IpAddr::V4(v4)),
            None => u128::from(v6) >> v6_shift == u128::from(FAKE_V6.0) >> v6_shift,
        },
    }
}

/// Longest line either side sends or reads, newline included.
pub const MAX_LINE: usize = 4096;

/// The shim socket's file name in the device's config directory.
pub const SOCKET_FILE: &str = "shim.sock";

/// Environment `shimgate run` gives the program: the shim socket's path,
/// and the split as a `split` answer line.
pub const SOCKET_ENV: &str = "SHIMGATE_SHIM_SOCKET";
pub const SPLIT_ENV: &str = "SHIMGATE_SPLIT";

/// What the shim asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Carry the program's TCP socket, now connecting from `from` to the
    /// hold address, to `to` (an address the program holds: a VPN one, or
    /// one from the fake range standing for a name).
    Connect { to: SocketAddr, from: SocketAddr },
    /// A relay for the program's UDP socket at `from` and destination `to`:
    /// what the socket sends the relay goes to `to`, what `to` answers comes
    /// from the relay. It lasts as long as this request's connection.
    Udp { to: SocketAddr, from: SocketAddr },
    /// The fake addresses standing for a VPN name.
    Resolve { name: String },
    /// The VPN name a fake address stands for (a reverse lookup).
    Name { addr: IpAddr },
    /// Which destinations go through the VPN, and the hold addresses.
    Split,
}

/// What `up` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The far end answered; the program's socket is about to be connected.
    Ok,
    /// The far end, the gateway or policy refused: `errno` is what the
    /// program's `connect` reports, `reason` goes to its log.
    Refused {
        errno: i32,
        reason: String,
    },
    Addrs {
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    },
    /// The relay for a [`Request::Udp`].
    Relay(SocketAddr),
    /// No such name (`EAI_NONAME`), or no name for an address.
    NoName,
    /// The name a fake address stands for ([`Request::Name`]): a host
    /// name ([`host_name_ok`]); one that is not is sent as `noname`.
    Name(String),
    Split(Split),
}

/// The split the PAC file makes too, as the shim applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Networks (`10.77.0.0/16`) whose addresses go through the VPN.
    pub nets: Vec<String>,
    /// Name suffixes under which names go through the VPN; `.` is every name.
    pub domains: Vec<String>,
    /// Where the shim points a socket while its connection is being made.
    pub hold: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad shim socket line: {}", self.0)
    }
}

impl std::error::Error for ParseError {}

/// Items of a list field; `-` is the empty list.
fn list(field: &str) -> Vec<String> {
    match field {
        "-" => Vec::new(),
        f => f.split(',').map(str::to_owned).collect(),
    }
}

fn unlist(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// A refusal's reason as it may travel and be shown on a terminal: no
/// control characters (a line break would end the line, an escape sequence
/// would drive the terminal), at most 512 characters. Applied both ways, so
/// what parses encodes to the same line.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

/// No field may hold a space or a line break: they are the separators.
fn field_ok(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b.is_ascii_whitespace())
}

/// Whether `s` may travel as a [`Reply::Name`]: a host name's characters
/// only (letters, digits, `-`, `_`, `.`), at most 253 of them, and not an
/// address. The program gets it in its own buffer and may print it, so
/// neither end sends nor takes anything else.
pub fn host_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.parse::<IpAddr>().is_err()
}

impl Request {
    /// The line, newline included.
    pub fn encode(&self) -> String {
        match self {
            Request::Connect { to, from } => format!("connect {to} {from}\n"),
            Request::Udp { to, from } => format!("udp {to} {from}\n"),
            Request::Resolve { name } => format!("resolve {name}\n"),
            Request::Name { addr } => format!("name {addr}\n"),
            Request::Split => "split\n".into(),
        }
    }

    pub fn parse(line: &str) -> Result<Request, ParseError> {
        let bad = || ParseError(line.chars().take(80).collect());
        let line = line.trim_end_matches('\n');
        if line.contains('\n') {
            return Err(bad());
        }
        let mut words = line.split(' ');
        let request = match (words.next(), words.next(), words.next()) {
            (Some("connect"), Some(to), Some(from)) => Request::Connect {
                to: to.parse().map_err(|_| bad())?,
                from: from.parse().map_err(|_| bad())?,
            },
            (Some("udp"), Some(to), Some(from)) => Request::Udp {
                to: to.parse().map_err(|_| bad())?,
                from: from.parse().map_err(|_| bad())?,
            },
            (Some("resolve"), Some(name), None) if field_ok(name) => Request::Resolve {
                name: name.to_owned(),
            },
            (Some("name"), Some(addr), None) => Request::Name {
                addr: addr.parse().map_err(|_| bad())?,
            },
            (Some("split"), None, None) => Request::Split,
            _ => return Err(bad()),
        };
        match words.next() {
            None => Ok(request),
            Some(_) => Err(bad()),
        }
    }
}

impl Reply {
    /// The line, newline included. A reason's spaces stay (it is the last
    /// field); its line breaks do not.
    pub fn encode(&self) -> String {
        match self {
            Reply::Ok => "ok\n".into(),
            Reply::Refused { errno, reason } => {
                format!("refused {errno} {}\n", clean_reason(reason))
            }
            Reply::Addrs { v4, v6 } => format!("addrs {v4} {v6}\n"),
            Reply::Relay(addr) => format!("relay {addr}\n"),
            Reply::NoName => "noname\n".into(),
            Reply::Name(name) if host_name_ok(name) => format!("name {name}\n"),
            Reply::Name(_) => "noname\n".into(),
            Reply::Split(s) => {
                let hold: Vec<String> = s.hold.iter().map(ToString::to_string).collect();
                format!(
                    "split {} {} {}\n",
                    unlist(&s.nets),
                    unlist(&s.domains),
                    unlist(&hold)
                )
            }
        }
    }

    pub fn parse(line: &str) -> Result<Reply, ParseError> {
        let bad = || ParseError(line.chars().take(80).collect());
        let line = line.trim_end_matches('\n');
        // One line: a line break inside would make two when sent on.
        if line.contains('\n') {
            return Err(bad());
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, rest) {
            ("ok", "") => Ok(Reply::Ok),
            ("noname", "") => Ok(Reply::NoName),
            ("refused", rest) => {
                let (errno, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                Ok(Reply::Refused {
                    errno: errno.parse().map_err(|_| bad())?,
                    reason: clean_reason(reason),
                })
            }
            ("relay", rest) => Ok(Reply::Relay(rest.parse().map_err(|_| bad())?)),
            ("name", rest) if host_name_ok(rest) => Ok(Reply::Name(rest.to_owned())),
            ("addrs", rest) => {
                let (v4, v6) = rest.split_once(' ').ok_or_else(bad)?;
                Ok(Reply::Addrs {
                    v4: v4.parse().map_err(|_| bad())?,
                    v6: v6.parse().map_err(|_| bad())?,
                })
            }
            ("split", rest) => {
                let fields: Vec<&str> = rest.split(' ').collect();
                let [nets, domains, hold] = fields[..] else {
                    return Err(bad());
                };
                let hold = list(hold)
                    .iter()
                    .map(|h| h.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
                Ok(Reply::Split(Split {
                    nets: list(nets),
                    domains: list(domains),
                    hold,
                }))
            }
            _ => Err(bad()),
        }
    }
}

impl Split {
    /// Whether `name` (lowercase, no trailing dot) goes through the VPN.
    pub fn covers_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        if name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok() {
            return false;
        }
        self.domains.iter().any(|d| {
            d == "."
                || name.eq_ignore_ascii_case(d)
                || (name.len() > d.len()
                    && name
                        .get(name.len() - d.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(d))
                    && name.as_bytes().get(name.len() - d.len() - 1) == Some(&b'.'))
        })
    }

    /// Whether an address goes through the VPN (never a loopback one).
    pub fn covers(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() || ip.is_unspecified() {
            return false;
        }
        self.nets.iter().any(|n| net_contains(n, ip))
    }
}

/// `10.0.0.0/8` contains `ip` (families must match; a bad network contains nothing).
fn net_contains(net: &str, ip: IpAddr) -> bool {
    let Some((base, len)) = net.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(len)) = (base.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (base, ip) {
        (IpAddr::V4(b), IpAddr::V4(a)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(b) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(b), IpAddr::V6(a)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(b) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let requests = [
            Request::Connect {
                to: "[2001:2::5]:443".parse().unwrap(),
                from: "127.0.0.1:40000".parse().unwrap(),
            },
            Request::Resolve {
                name: "db.corp.internal".into(),
            },
            Request::Udp {
                to: "10.20.0.53:53".parse().unwrap(),
                from: "[::1]:40113".parse().unwrap(),
            },
            Request::Split,
            Request::Name {
                addr: "198.18.0.7".parse().unwrap(),
            },
            Request::Name {
                addr: "2001:2::7".parse().unwrap(),
            },
        ];
        for r in requests {
            assert_eq!(Request::parse(&r.encode()), Ok(r.clone()), "{r:?}");
        }
        let replies = [
            Reply::Ok,
            Reply::NoName,
            Reply::Refused {
                errno: 13,
                reason: "policy refuses db:5432".into(),
            },
            Reply::Relay("127.0.0.1:51234".parse().unwrap()),
            Reply::Name("db.corp.internal".into()),
            Reply::Addrs {
                v4: "198.18.0.7".parse().unwrap(),
                v6: "2001:2::7".parse().unwrap(),
            },
            Reply::Split(Split {
                nets: vec!["10.77.0.0/16".into()],
                domains: vec![],
                hold: vec!["[::1]:4".parse().unwrap()],
            }),
        ];
        for r in replies {
            assert_eq!(Reply::parse(&r.encode()), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn hostile_lines_are_errors() {
        for bad in [
            "",
            "connect",
            "connect 1.2.3.4:5",
            "connect a b",
            "connect 1.2.3.4:5 1.2.3.4:6 x",
            "resolve",
            "resolve a b",
            "split x",
            "\u{0}",
            "name",
            "name db.corp.internal",
            "name 198.18.0.7 x",
            "name 198.18.0.7:80",
            "name fe80::1%eth0",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "refused x y",
            "addrs 1.2.3.4",
            "split a b",
            "split - - x",
            "ok x",
            "name",
            "name ",
            "name a b",
            "name a\tb",
            "name 198.18.0.7",
            "name caf\u{e9}.corp",
            "name a\u{1b}[2J",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad:?}");
        }
        let r = Reply::Refused {
            errno: 1,
            reason: "a\nb".into(),
        };
        assert_eq!(r.encode().matches('\n').count(), 1);
        // Found by the shim_lines fuzz target: control characters in a
        // parsed reason (a terminal would obey them) read as spaces, so
        // what parses encodes to the same line.
        assert!(Reply::parse("refused 13 a\nb\n").is_err());
        assert!(Reply::parse("split - a\nb -\n").is_err());
        assert!(Request::parse("resolve a\nb").is_err());
        for line in [
            "refused 13 not allowed by polic\0\0\0y\n",
            "refused 1 \u{1b}[2J",
        ] {
            let parsed = Reply::parse(line).unwrap();
            let Reply::Refused { reason, .. } = &parsed else {
                panic!("{parsed:?}")
            };
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
            assert_eq!(Reply::parse(&parsed.encode()), Ok(parsed.clone()));
        }
    }

    #[test]
    fn a_name_reply_is_a_host_name_or_noname() {
        assert_eq!(
            Reply::parse("name DB.corp-1.internal\n"),
            Ok(Reply::Name("DB.corp-1.internal".into()))
        );
        assert!(Reply::parse("name a\nb\n").is_err());
        assert!(Reply::parse(&format!("name {}\n", "a".repeat(254))).is_err());
        assert!(Reply::parse(&format!("name {}\n", "a".repeat(253))).is_ok());
        // What cannot travel as a name is sent as no name, on one line.
        for name in ["", "a b", "a\nname b", "a\u{1b}[2J", "10.0.0.1", "x\0y"] {
            let line = Reply::Name(name.into()).encode();
            assert_eq!(line, "noname\n", "{name:?}");
        }
        let r = Request::Name {
            addr: "::ffff:198.18.0.7".parse().unwrap(),
        };
        assert_eq!(r.encode(), "name ::ffff:198.18.0.7\n");
        assert_eq!(Request::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn what_the_split_covers() {
        let s = Split {
            nets: vec!["10.77.0.0/16".into(), "2001:2::/48".into(), "bad".into()],
            domains: vec!["corp.internal".into()],
            hold: vec![],
        };
        assert!(s.covers("10.77.3.4".parse().unwrap()));
        assert!(s.covers("::ffff:10.77.3.4".parse().unwrap()));
        assert!(s.covers("2001:2::9".parse().unwrap()));
        assert!(!s.covers("10.78.0.1".parse().unwrap()));
        assert!(s.covers_name("db.corp.internal"));
        assert!(s.covers_name("DB.Corp.Internal."));
        assert!(s.covers_name("corp.internal"));
        assert!(!s.covers_name("xcorp.internal"));
        assert!(!s.covers_name("example.org"));
        let all = Split {
            nets: vec!["0.0.0.0/0".into(), "::/0".into()],
            domains: vec![".".into()],
            hold: vec![],
        };
        assert!(all.covers_name("example.org"));
        assert!(!all.covers_name("localhost"));
        assert!(!all.covers("127.0.0.1".parse().unwrap()));
        assert!(!all.covers("::1".parse().unwrap()));
        assert!(all.covers("192.0.2.1".parse().unwrap()));
    }
}
