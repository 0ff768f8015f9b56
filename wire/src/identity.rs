//! Device names, the SPIFFE-style URI that names a device in its
//! certificate (`spiffe://<trust domain>/device/<name>`), and the range
//! devices' VPN addresses come from.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The VPN's address range (RFC 6598 shared address space): the registry
/// hands devices their VPN IPs from it (never its network or broadcast
/// address), and a device treats an address in it as a peer.
pub const VPN_RANGE: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);

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
