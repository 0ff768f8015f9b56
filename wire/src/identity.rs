//! Device names, the SPIFFE-style URI that names a device in its
//! certificate (`spiffe://<trust domain>/device/<name>`), and the range
//! devices' VPN addresses come from.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The VPN's address range, chosen once per deployment (`init --vpn-range`):
/// the registry hands devices their VPN IPs from it (never its network or
/// broadcast address), and a device treats an address in it as a peer.
///
/// Only a range [`VpnRange::new`] accepted exists, so every holder can
/// count on at least two host addresses and on a range no host already
/// uses for something else (loopback, multicast, link-local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VpnRange(Ipv4Net);

impl VpnRange {
    /// RFC 6598 shared address space, 100.64.0.0/10: what every deployment
    /// used before the range could be chosen. Tailscale and carrier-grade
    /// NAT use it too.
    pub const DEFAULT: VpnRange = VpnRange(Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10));

    /// Checks a range: IPv4, /8 to /30, given by its network address, and
    /// not overlapping 0.0.0.0/8, loopback, link-local, multicast or the
    /// reserved 240.0.0.0/4.
    pub fn new(net: Ipv4Net) -> Result<VpnRange, BadVpnRange> {
        let bad = |why: &'static str| {
            Err(BadVpnRange {
                range: net.to_string(),
                why,
            })
        };
        if !(8..=30).contains(&net.prefix_len()) {
            return bad("it must be between /8 and /30");
        }
        if net.trunc() != net {
            return bad("give the network address (e.g. 10.99.0.0/16, not 10.99.1.2/16)");
        }
        let reserved = [
            (Ipv4Addr::new(0, 0, 0, 0), 8),
            (Ipv4Addr::new(127, 0, 0, 0), 8),
            (Ipv4Addr::new(169, 254, 0, 0), 16),
            (Ipv4Addr::new(224, 0, 0, 0), 4),
            (Ipv4Addr::new(240, 0, 0, 0), 4),
        ];
        let overlaps = reserved.into_iter().any(|(ip, len)| {
            let r = Ipv4Net::new_assert(ip, len);
            r.contains(&net.network()) || net.contains(&r.network())
        });
        if overlaps {
            return bad(
                "it overlaps addresses hosts keep for themselves (this network, loopback, link-local, multicast or reserved)",
            );
        }
        Ok(VpnRange(net))
    }

    pub fn net(self) -> Ipv4Net {
        self.0
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    /// The first and last address a device may be given (the network and
    /// broadcast addresses are never handed out, nor [`VpnRange::dns`]).
    pub fn hosts(self) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(self.0.network()) + 1;
        let last = u32::from(self.0.broadcast()) - 2;
        (Ipv4Addr::from(first), Ipv4Addr::from(last))
    }

    /// TUN mode's DNS responder on every device: the range's last host
    /// address, the same everywhere and never a device's.
    pub fn dns(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.0.broadcast()) - 1)
    }
}

impl Default for VpnRange {
    fn default() -> VpnRange {
        VpnRange::DEFAULT
    }
}

impl std::fmt::Display for VpnRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for VpnRange {
    type Err = BadVpnRange;

    fn from_str(s: &str) -> Result<VpnRange, BadVpnRange> {
        let net = s.trim().parse::<Ipv4Net>().map_err(|_| BadVpnRange {
            range: s.to_owned(),
            why: "it is not an IPv4 network like 100.64.0.0/10",
        })?;
        VpnRange::new(net)
    }
}

impl serde::Serialize for VpnRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VpnRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<VpnRange, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a VPN range was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{range:?} cannot be the VPN range: {why}")]
pub struct BadVpnRange {
    pub range: String,
    pub why: &'static str,
}

/// Why a device name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "device names are 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-' (got {0:?})"
)]
pub struct BadDeviceName(pub String);

/// Checks a device name: it becomes a DNS label under the VPN domain.
pub fn check_device_name(name: &str) -> Result<(), BadDeviceName> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(BadDeviceName(name.to_owned()))
    }
}

/// Turns a host name into an acceptable device name ("My-Laptop.local" → "my-laptop").
pub fn device_name_from_hostname(host: &str) -> String {
    let label = host
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let cleaned: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "device".into()
    } else {
        cleaned.into()
    }
}

pub fn device_uri(trust_domain: &str, device: &str) -> String {
    format!("spiffe://{trust_domain}/device/{device}")
}

/// The device name from a device URI of the given trust domain.
pub fn parse_device_uri<'a>(trust_domain: &str, uri: &'a str) -> Option<&'a str> {
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?;
    let name = rest.strip_prefix("/device/")?;
    check_device_name(name).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpn_ranges() {
        let ok = |s: &str| s.parse::<VpnRange>().map(|r| r.to_string());
        assert_eq!(ok("100.64.0.0/10").as_deref(), Ok("100.64.0.0/10"));
        assert_eq!(ok(" 10.99.0.0/16 ").as_deref(), Ok("10.99.0.0/16"));
        assert_eq!(ok("192.0.2.0/30").as_deref(), Ok("192.0.2.0/30"));
        for bad in [
            "10.99.1.2/16",
            "10.0.0.0/7",
            "192.0.2.0/31",
            "127.0.0.0/8",
            "0.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/8",
            "240.0.0.0/8",
            "96.0.0.0/3",
            "fd00::/64",
            "nonsense",
        ] {
            assert!(bad.parse::<VpnRange>().is_err(), "{bad} was accepted");
        }
        let r: VpnRange = "198.51.100.0/24".parse().unwrap();
        assert_eq!(
            r.hosts(),
            (
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 253)
            )
        );
        assert_eq!(r.dns(), Ipv4Addr::new(198, 51, 100, 254));
        assert!(r.contains(Ipv4Addr::new(198, 51, 100, 7)));
        assert!(!r.contains(Ipv4Addr::new(198, 51, 101, 7)));
        assert_eq!(
            VpnRange::DEFAULT.hosts().1,
            Ipv4Addr::new(100, 127, 255, 253)
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"198.51.100.0/24\"");
        assert_eq!(serde_json::from_str::<VpnRange>(&json).unwrap(), r);
        assert!(serde_json::from_str::<VpnRange>("\"127.0.0.0/8\"").is_err());
    }

    #[test]
    fn names() {
        assert!(check_device_name("alice-laptop").is_ok());
        for bad in ["", "-a", "a-", "Alice", "a.b", "a b", &"x".repeat(64)] {
            assert!(check_device_name(bad).is_err(), "{bad}");
        }
        assert_eq!(device_name_from_hostname("My_Laptop.local"), "my-laptop");
        assert_eq!(device_name_from_hostname("..."), "device");
    }

    #[test]
    fn uris() {
        let uri = device_uri("shimgate", "bob");
        assert_eq!(parse_device_uri("shimgate", &uri), Some("bob"));
        assert_eq!(parse_device_uri("other", &uri), None);
        assert_eq!(
            parse_device_uri("shimgate", "spiffe://shimgate/device/../x"),
            None
        );
        assert_eq!(
            parse_device_uri("shimgate", "spiffe://shimgateX/device/bob"),
            None
        );
    }
}
