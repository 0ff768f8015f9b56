//! Peer-to-peer sessions on the device (DESIGN.md "Peer to peer";
//! docs/ARCHITECTURE.md "Peer protocol").
//!
//! Requesting side: a SOCKS CONNECT to `NAME.<vpn domain>` or a VPN IP
//! asks the gateway for a session ([`Peers::dial`]), tries the peer's
//! endpoints directly, falls back to a relay stream through the gateway,
//! and runs the Noise handshake over whichever path worked.
//!
//! Exporting side: offers arrive on the control stream
//! ([`crate::control`]) and wait in [`Peers::offers`] until the
//! requester's handshake claims them (once: the entry is removed on first
//! use) or they expire. A claimed session is spliced to `127.0.0.1:PORT`,
//! and only for ports this device exports. A UDP session (`export
//! 5353/udp`) carries one datagram per link frame between the requester's
//! program and a UDP socket connected to `127.0.0.1:PORT`
//! ([`Peers::run_datagrams`]).
//!
//! Every live link is in [`Peers::links`], so `shimgate peers` can show it
//! and a revocation can cut it.
//!
//! One job a file: `dial.rs` is the requesting side (grant, direct with
//! staggered endpoints, else relay; `ping`); `answer.rs` the exporting
//! side (offers, the peer listener, the handshake, serving the port);
//! `links.rs` carries opened sessions and keeps the live links (counters,
//! cutting, audit reports); `view.rs` is what `shimgate peers` shows
//! (`peers.json`); `endpoints.rs` this machine's addresses for the
//! listener. This file holds the state they share: [`Peers`].

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use shimgate_wire::control::{DeviceMsg, Exports, PeerPath, PeerProto, SessionId, SessionKey};
use shimgate_wire::dest::Host;
use shimgate_wire::identity::VpnRange;
use shimgate_wire::peerlink::Link;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod answer;
mod dial;
mod endpoints;
mod links;
mod view;

pub use dial::{DIRECT_TIMEOUT, RETRY_DIRECT, ping, request_grant};
pub use endpoints::local_endpoints;
pub use links::UDP_IDLE;
pub use view::{PeerView, read_view};

/// A link over any byte stream: a TCP socket (direct) or a relay stream.
pub type AnyLink = Link<Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>>;

/// An offer the gateway made: a requester may claim it once, before it expires.
struct Offer {
    key: SessionKey,
    from: String,
    port: u16,
    proto: PeerProto,
    expires: Instant,
}

/// Which end of a peer session this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This device asked for the session (a local program connected).
    Requester,
    /// This device exports the service the other one asked for.
    Exporter,
}

/// One live link, for `shimgate peers` and for cutting.
struct LinkEntry {
    peer: String,
    port: u16,
    path: PeerPath,
    why: Option<String>,
    side: Side,
    started: i64,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    cancel: CancellationToken,
}

/// Byte totals of ended links, per peer.
#[derive(Default, Clone, Copy)]
struct Totals {
    sessions: u64,
    sent: u64,
    received: u64,
}

/// A peer session's way in, once its handshake is done.
pub struct Opened {
    pub link: AnyLink,
    pub session: SessionId,
    pub peer: String,
    pub peer_ip: IpAddr,
    pub path: PeerPath,
    /// Why the direct path was not used, when it was not.
    pub why: Option<String>,
    /// When the SOCKS request started, for the setup time in the logs.
    pub asked: Instant,
}

pub struct Peers {
    me: String,
    vpn_domain: String,
    vpn_range: VpnRange,
    offers: DashMap<SessionId, Offer>,
    links: DashMap<u64, LinkEntry>,
    ended: DashMap<String, Totals>,
    next_link: AtomicU64,
    exports: RwLock<Exports>,
    direct_failed: DashMap<String, (Instant, String)>,
    /// Reports for the gateway's audit log, sent on the control stream.
    reports: mpsc::Sender<DeviceMsg>,
}

impl Peers {
    /// The device's peer state; the receiver carries reports to the
    /// control stream.
    pub fn new(
        me: &str,
        vpn_domain: &str,
        vpn_range: VpnRange,
        exports: Exports,
    ) -> (Arc<Peers>, mpsc::Receiver<DeviceMsg>) {
        let (reports, rx) = mpsc::channel(1024);
        let peers = Peers {
            me: me.to_owned(),
            vpn_domain: vpn_domain.trim_end_matches('.').to_ascii_lowercase(),
            vpn_range,
            offers: DashMap::new(),
            links: DashMap::new(),
            ended: DashMap::new(),
            next_link: AtomicU64::new(0),
            exports: RwLock::new(exports),
            direct_failed: DashMap::new(),
            reports,
        };
        (Arc::new(peers), rx)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The peer a destination's host names, if it names one: a name under
    /// the VPN domain (as `NAME`), or an address in the VPN range.
    pub fn destination(&self, host: &Host) -> Option<String> {
        match host {
            Host::Ip(IpAddr::V4(ip)) => self.vpn_range.contains(*ip).then(|| ip.to_string()),
            Host::Ip(IpAddr::V6(_)) => None,
            Host::Name(name) => shimgate_wire::control::device_in_domain(name, &self.vpn_domain),
        }
    }

    pub fn exports(&self) -> Exports {
        match self.exports.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the exported ports; true if they changed.
    pub fn set_exports(&self, ports: Exports) -> bool {
        let mut guard = match self.exports.write() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *guard != ports;
        *guard = ports;
        changed
    }
}

fn boxed_rd<R: AsyncRead + Send + Unpin + 'static>(r: R) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(r)
}

fn boxed_wr<W: AsyncWrite + Send + Unpin + 'static>(w: W) -> Box<dyn AsyncWrite + Send + Unpin> {
    Box::new(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_destinations() {
        let (p, _) = Peers::new(
            "alice",
            "vpn.internal",
            VpnRange::DEFAULT,
            Exports::default(),
        );
        let peer = |h: &str| p.destination(&Host::parse(h).unwrap());
        assert_eq!(peer("bob.vpn.internal").as_deref(), Some("bob"));
        assert_eq!(peer("BOB.VPN.Internal.").as_deref(), Some("bob"));
        assert_eq!(peer("100.64.0.7").as_deref(), Some("100.64.0.7"));
        assert_eq!(peer("vpn.internal"), None);
        assert_eq!(peer("a.b.vpn.internal"), None);
        assert_eq!(peer("bobvpn.internal"), None);
        assert_eq!(peer("intranet.internal"), None);
        assert_eq!(peer("10.0.0.1"), None);
        assert_eq!(peer("100.128.0.1"), None);
        assert_eq!(peer("::ffff:100.64.0.7"), None);
    }
}
