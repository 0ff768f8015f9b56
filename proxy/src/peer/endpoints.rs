//! This machine's addresses a peer might reach the listener at, from its
//! interfaces (`getifaddrs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// This machine's addresses a peer might reach the listener at: every
/// interface address except loopback and IPv6 link-local (useless without
/// a scope), with the listener's port.
pub fn local_endpoints(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    interface_addrs()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(ip, listen.port()))
        .take(shimgate_wire::control::MAX_LIST)
        .collect()
}

fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then
    // free exactly once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its size.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses_exclude_loopback() {
        let eps = local_endpoints("0.0.0.0:4000".parse().unwrap());
        assert!(
            eps.iter()
                .all(|a| !a.ip().is_loopback() && a.port() == 4000)
        );
        assert_eq!(
            local_endpoints("192.0.2.1:4000".parse().unwrap()),
            vec!["192.0.2.1:4000".parse().unwrap()]
        );
    }
}
