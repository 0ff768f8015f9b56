//! Three hosts in network namespaces (needs root):
//!
//! ```text
//!  sg-dev  198.51.100.2 ──veth── 198.51.100.1  sg-gw  203.0.113.1 ──veth── 203.0.113.2  sg-intra
//!  shimgate up, curl                      shimgate-gateway (no forwarding)        HTTP server :8080
//! ```
//!
//! The device reaches the intranet only through the gateway.

use std::net::{Ipv4Addr, SocketAddr};

use super::dns::{self, RebindingDns};
use super::netns::{self, Netns, veth};
use super::{GatewaySpec, Mode, Origin, unique_body};

pub const GW_DEV_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const GW_INTRA_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INTRA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// The three hosts of this file, with an HTTP server at INTRA:8080 serving
/// `body` and a DNS server in sg-gw that answers every name's first A query
/// with INTRA and later ones with loopback (`.invalid` names: NXDOMAIN).
/// Fields drop in order: the namespaces last, after what runs in them.
pub struct ThreeHosts {
    pub web: Origin,
    pub dns: RebindingDns,
    pub body: String,
    pub dev_ns: Netns,
    pub gw_ns: Netns,
    /// Deleted last (fields drop in order).
    pub intra_ns: Netns,
}

pub fn three_hosts(what: &str) -> ThreeHosts {
    let dev_ns = Netns::new("sg-dev-");
    let gw_ns = Netns::new("sg-gw-");
    let intra_ns = Netns::new("sg-intra-");
    veth(&dev_ns, "198.51.100.2/24", &gw_ns, "198.51.100.1/24");
    veth(&gw_ns, "203.0.113.1/24", &intra_ns, "203.0.113.2/24");
    gw_ns.sysctl("net.ipv4.ip_forward=0");
    let body = unique_body(what);
    let web = Origin::from_listener(
        netns::bind_in(Some(&intra_ns.name), SocketAddr::new(INTRA.into(), 8080)),
        Mode::Http { body: body.clone() },
    );
    let dns_sock = netns::in_netns(Some(&gw_ns.name), || {
        std::net::UdpSocket::bind("127.0.0.1:53").expect("bind a DNS server in sg-gw")
    });
    let dns = RebindingDns::start(dns_sock, INTRA, Ipv4Addr::LOCALHOST);
    dns::use_nameserver(&gw_ns.name, "127.0.0.1:53".parse().unwrap());
    ThreeHosts {
        web,
        dns,
        body,
        dev_ns,
        gw_ns,
        intra_ns,
    }
}

/// A gateway in sg-gw listening on its device side, with `aliases`.
pub fn gateway_in(gw_ns: &Netns, aliases: Vec<String>) -> GatewaySpec {
    let listen = SocketAddr::new(GW_DEV_SIDE.into(), 8443);
    GatewaySpec {
        netns: Some(gw_ns.name.clone()),
        listen,
        names: vec!["gw.shimgate.test".into()],
        ips: vec![GW_DEV_SIDE.to_string()],
        public_addr: Some(listen.to_string()),
        aliases,
        vpn_range: None,
    }
}
