//! The broker's decisions, on plain data (no streams, no channels): may a
//! session be offered, which endpoints the requester gets, whether an
//! announcement is acceptable, who may answer an offer, who may open a
//! session's relay and until when. [`super::Broker`] looks the data up and
//! acts on the answer.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use shimgate_wire::control::{Exports, MAX_LIST, PeerProto};
use shimgate_wire::tunnel::TunnelError;
use tokio::time::Instant;

/// A granted session, until it expires. No key here.
pub(super) struct Session {
    pub(super) initiator: String,
    pub(super) responder: String,
    pub(super) port: u16,
    pub(super) expires: Instant,
    pub(super) relayed: bool,
}

impl Session {
    /// Whether it may still be used (and kept) at `now`.
    pub(super) fn live(&self, now: Instant) -> bool {
        self.expires > now
    }
}

/// Who is opening a session's relay stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Role {
    Initiator { responder: String, port: u16 },
    Responder,
}

/// May a session to `port` over `proto` be offered to the peer whose
/// exports are `exports` (`None`: it is offline)? `allowed` is policy for
/// the requester and that peer, by port (the protocol is `proto`'s).
///
/// Refusals in this order: offline, then policy, then not exported.
/// Port 0 is `shimgate ping`: allowed where some exported port is.
pub(super) fn permit(
    exports: Option<&Exports>,
    port: u16,
    proto: PeerProto,
    allowed: impl Fn(u16) -> bool,
) -> Result<(), TunnelError> {
    let Some(exports) = exports else {
        return Err(TunnelError::HostUnreachable);
    };
    let permitted = match (port, proto) {
        (0, PeerProto::Tcp) => exports.tcp.iter().any(|p| allowed(*p)),
        // A ping is TCP's; a UDP session names a port.
        (0, PeerProto::Udp) => false,
        (port, _) => allowed(port),
    };
    if !permitted {
        return Err(TunnelError::NotAllowed);
    }
    if port != 0 && !exports.contains(proto, port) {
        return Err(TunnelError::Refused);
    }
    Ok(())
}

/// Where a peer listening on `listen_port` can be tried from `from`: the
/// address its control stream came from (`observed`) first (that is what
/// NAT leaves reachable), then what it announced (`addrs`); nowhere when it
/// has no listener. Loopback addresses only help a requester on the same
/// host.
pub(super) fn endpoints(
    listen_port: u16,
    observed: IpAddr,
    addrs: &[SocketAddr],
    from: IpAddr,
) -> Vec<SocketAddr> {
    if listen_port == 0 {
        return Vec::new();
    }
    let mut out = vec![SocketAddr::new(observed, listen_port)];
    out.extend(addrs.iter().copied());
    let same_host = from.is_loopback() && observed.is_loopback();
    out.retain(|a| same_host || !a.ip().is_loopback());
    let mut seen = HashSet::new();
    out.retain(|a| seen.insert(*a));
    out
}

/// Checks an `announce`: the reason to end the control stream, if any.
pub(super) fn announce(
    addrs: &[SocketAddr],
    exports: &[u16],
    udp_exports: &[u16],
) -> Result<(), String> {
    if addrs.len() > MAX_LIST || exports.len() > MAX_LIST || udp_exports.len() > MAX_LIST {
        return Err(format!("announcement lists more than {MAX_LIST} entries"));
    }
    // listen_port 0: no peer listener (nothing exported, or it
    // could not be opened); sessions to it go through the relay.
    if exports.contains(&0) || udp_exports.contains(&0) {
        return Err("announcement exports port 0".into());
    }
    Ok(())
}

/// Whether `device` may answer (accept/decline) the offer of `session`
/// (`None`: no such session): only the device the offer went to.
pub(super) fn may_answer(session: Option<&Session>, device: &str) -> bool {
    session.is_some_and(|s| s.responder == device)
}

/// `device` opens a relay stream for `session` (`None`: no such session)
/// at `now`: its role, or the refusal. The initiator's first relay marks
/// the session relayed; there is no second.
pub(super) fn relay_role(
    session: Option<&mut Session>,
    device: &str,
    now: Instant,
) -> Result<Role, TunnelError> {
    let Some(s) = session else {
        return Err(TunnelError::NotAllowed);
    };
    if !s.live(now) {
        return Err(TunnelError::NotAllowed);
    }
    if s.initiator == device && !s.relayed {
        s.relayed = true;
        Ok(Role::Initiator {
            responder: s.responder.clone(),
            port: s.port,
        })
    } else if s.responder == device {
        Ok(Role::Responder)
    } else {
        Err(TunnelError::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use super::*;

    fn exports(tcp: &[u16], udp: &[u16]) -> Exports {
        Exports {
            tcp: tcp.to_vec(),
            udp: udp.to_vec(),
        }
    }

    fn any(_: u16) -> bool {
        true
    }

    fn none(_: u16) -> bool {
        false
    }

    #[test]
    fn offline_is_host_unreachable_before_policy_and_exports() {
        for proto in [PeerProto::Tcp, PeerProto::Udp] {
            for port in [0, 8000] {
                assert_eq!(
                    permit(None, port, proto, any),
                    Err(TunnelError::HostUnreachable)
                );
                assert_eq!(
                    permit(None, port, proto, none),
                    Err(TunnelError::HostUnreachable)
                );
            }
        }
    }

    #[test]
    fn policy_is_asked_before_exports() {
        // Neither allowed nor exported: the policy refusal.
        assert_eq!(
            permit(Some(&exports(&[], &[])), 8000, PeerProto::Tcp, none),
            Err(TunnelError::NotAllowed)
        );
        // Exported but not allowed.
        assert_eq!(
            permit(Some(&exports(&[8000], &[])), 8000, PeerProto::Tcp, none),
            Err(TunnelError::NotAllowed)
        );
        // Allowed but not exported.
        assert_eq!(
            permit(Some(&exports(&[9000], &[])), 8000, PeerProto::Tcp, any),
            Err(TunnelError::Refused)
        );
        assert_eq!(
            permit(Some(&exports(&[8000], &[])), 8000, PeerProto::Tcp, any),
            Ok(())
        );
    }

    #[test]
    fn policy_is_asked_about_the_requested_port() {
        let e = exports(&[8000, 9000], &[]);
        let only_9000 = |p: u16| p == 9000;
        assert_eq!(
            permit(Some(&e), 8000, PeerProto::Tcp, only_9000),
            Err(TunnelError::NotAllowed)
        );
        assert_eq!(permit(Some(&e), 9000, PeerProto::Tcp, only_9000), Ok(()));
    }

    #[test]
    fn udp_and_tcp_exports_are_separate() {
        let tcp_only = exports(&[5353], &[]);
        assert_eq!(permit(Some(&tcp_only), 5353, PeerProto::Tcp, any), Ok(()));
        assert_eq!(
            permit(Some(&tcp_only), 5353, PeerProto::Udp, any),
            Err(TunnelError::Refused)
        );
        let udp_only = exports(&[], &[5353]);
        assert_eq!(permit(Some(&udp_only), 5353, PeerProto::Udp, any), Ok(()));
        assert_eq!(
            permit(Some(&udp_only), 5353, PeerProto::Tcp, any),
            Err(TunnelError::Refused)
        );
    }

    #[test]
    fn ping_is_allowed_where_some_exported_tcp_port_is() {
        let e = exports(&[8000, 9000], &[5353]);
        // Port 0 need not be exported; one allowed exported port suffices.
        assert_eq!(permit(Some(&e), 0, PeerProto::Tcp, |p| p == 9000), Ok(()));
        assert_eq!(
            permit(Some(&e), 0, PeerProto::Tcp, none),
            Err(TunnelError::NotAllowed)
        );
        // Policy is asked about exported ports, not about port 0.
        assert_eq!(
            permit(Some(&e), 0, PeerProto::Tcp, |p| p == 0),
            Err(TunnelError::NotAllowed)
        );
        // Nor about unexported ones.
        assert_eq!(
            permit(Some(&e), 0, PeerProto::Tcp, |p| p == 7000),
            Err(TunnelError::NotAllowed)
        );
        // UDP exports don't count for a ping.
        assert_eq!(
            permit(Some(&e), 0, PeerProto::Tcp, |p| p == 5353),
            Err(TunnelError::NotAllowed)
        );
        assert_eq!(
            permit(Some(&exports(&[], &[5353])), 0, PeerProto::Tcp, any),
            Err(TunnelError::NotAllowed)
        );
        // Nothing exported: nothing to ping.
        assert_eq!(
            permit(Some(&exports(&[], &[])), 0, PeerProto::Tcp, any),
            Err(TunnelError::NotAllowed)
        );
    }

    #[test]
    fn ping_is_tcp_only() {
        let e = exports(&[8000], &[0, 5353]);
        assert_eq!(
            permit(Some(&e), 0, PeerProto::Udp, any),
            Err(TunnelError::NotAllowed)
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    const NAT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn no_listener_no_endpoints() {
        assert!(endpoints(0, NAT, &[sa("10.0.0.5:4000")], LAN).is_empty());
        assert!(endpoints(0, LOOPBACK, &[sa("127.0.0.1:4000")], LOOPBACK).is_empty());
    }

    #[test]
    fn observed_address_first_then_announced_in_order() {
        let addrs = [
            sa("10.0.0.5:4000"),
            sa("192.168.7.9:4000"),
            sa("[2001:db8::5]:4000"),
        ];
        assert_eq!(
            endpoints(4100, NAT, &addrs, LAN),
            vec![
                sa("203.0.113.7:4100"),
                sa("10.0.0.5:4000"),
                sa("192.168.7.9:4000"),
                sa("[2001:db8::5]:4000"),
            ]
        );
        assert_eq!(endpoints(4100, NAT, &[], LAN), vec![sa("203.0.113.7:4100")]);
    }

    #[test]
    fn duplicates_are_dropped_keeping_the_first() {
        let addrs = [
            sa("10.0.0.5:4000"),
            sa("203.0.113.7:4100"),
            sa("10.0.0.5:4000"),
            sa("10.0.0.5:4001"),
        ];
        assert_eq!(
            endpoints(4100, NAT, &addrs, LAN),
            vec![
                sa("203.0.113.7:4100"),
                sa("10.0.0.5:4000"),
                sa("10.0.0.5:4001"),
            ]
        );
    }

    #[test]
    fn loopback_only_when_both_are_on_the_gateways_host() {
        let addrs = [sa("127.0.0.1:4000"), sa("10.0.0.5:4000"), sa("[::1]:4000")];
        // Both on the gateway's host: everything, observed first.
        assert_eq!(
            endpoints(4000, LOOPBACK, &addrs, LOOPBACK),
            vec![sa("127.0.0.1:4000"), sa("10.0.0.5:4000"), sa("[::1]:4000")]
        );
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(
            endpoints(4000, v6, &addrs, LOOPBACK),
            vec![sa("[::1]:4000"), sa("127.0.0.1:4000"), sa("10.0.0.5:4000")]
        );
        // Requester elsewhere: no loopback ones, not even the observed one.
        assert_eq!(
            endpoints(4000, LOOPBACK, &addrs, LAN),
            vec![sa("10.0.0.5:4000")]
        );
        // Requester on the host, peer elsewhere: its loopback ones are its own.
        assert_eq!(
            endpoints(4100, NAT, &addrs, LOOPBACK),
            vec![sa("203.0.113.7:4100"), sa("10.0.0.5:4000")]
        );
        assert_eq!(
            endpoints(4100, NAT, &addrs, LAN),
            vec![sa("203.0.113.7:4100"), sa("10.0.0.5:4000")]
        );
    }

    fn ports(n: usize) -> Vec<u16> {
        (1..=n as u16).collect()
    }

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (1..=n as u16).map(|p| SocketAddr::new(LAN, p)).collect()
    }

    #[test]
    fn announce_accepts_full_lists() {
        assert_eq!(announce(&[], &[], &[]), Ok(()));
        assert_eq!(
            announce(&addrs(MAX_LIST), &ports(MAX_LIST), &ports(MAX_LIST)),
            Ok(())
        );
    }

    #[test]
    fn announce_refuses_long_lists() {
        let too_long = Err(format!("announcement lists more than {MAX_LIST} entries"));
        assert_eq!(announce(&addrs(MAX_LIST + 1), &[], &[]), too_long);
        assert_eq!(announce(&[], &ports(MAX_LIST + 1), &[]), too_long);
        assert_eq!(announce(&[], &[], &ports(MAX_LIST + 1)), too_long);
        // Checked before port 0.
        assert_eq!(announce(&[], &[0], &ports(MAX_LIST + 1)), too_long);
    }

    #[test]
    fn announce_refuses_port_0() {
        let zero = Err("announcement exports port 0".to_owned());
        assert_eq!(announce(&[], &[8000, 0], &[]), zero);
        assert_eq!(announce(&[], &[8000], &[0]), zero);
        // An address with port 0 is not an export.
        assert_eq!(announce(&[SocketAddr::new(LAN, 0)], &[8000], &[53]), Ok(()));
    }

    fn session(expires: Instant) -> Session {
        Session {
            initiator: "alice".into(),
            responder: "bob".into(),
            port: 8000,
            expires,
            relayed: false,
        }
    }

    #[test]
    fn only_the_responder_answers() {
        let s = session(Instant::now() + Duration::from_secs(10));
        assert!(may_answer(Some(&s), "bob"));
        assert!(!may_answer(Some(&s), "alice"));
        assert!(!may_answer(Some(&s), "mallory"));
        assert!(!may_answer(None, "bob"));
    }

    #[test]
    fn relay_roles() {
        let now = Instant::now();
        let mut s = session(now + Duration::from_secs(10));
        assert_eq!(relay_role(Some(&mut s), "bob", now), Ok(Role::Responder));
        assert!(!s.relayed);
        assert_eq!(
            relay_role(Some(&mut s), "mallory", now),
            Err(TunnelError::NotAllowed)
        );
        assert_eq!(
            relay_role(Some(&mut s), "alice", now),
            Ok(Role::Initiator {
                responder: "bob".into(),
                port: 8000
            })
        );
        assert!(s.relayed);
        // One relay per session.
        assert_eq!(
            relay_role(Some(&mut s), "alice", now),
            Err(TunnelError::NotAllowed)
        );
        assert_eq!(relay_role(Some(&mut s), "bob", now), Ok(Role::Responder));
        assert_eq!(relay_role(None, "alice", now), Err(TunnelError::NotAllowed));
    }

    #[test]
    fn sessions_expire() {
        let now = Instant::now();
        let mut s = session(now + Duration::from_secs(10));
        assert!(s.live(now));
        let at_expiry = now + Duration::from_secs(10);
        assert!(!s.live(at_expiry));
        assert!(!s.live(at_expiry + Duration::from_millis(1)));
        for who in ["alice", "bob"] {
            assert_eq!(
                relay_role(Some(&mut s), who, at_expiry),
                Err(TunnelError::NotAllowed)
            );
        }
        // An expired attempt does not use up the initiator's relay.
        assert!(!s.relayed);
    }
}
