//! `POST /v1/ping`: one ICMP echo sent for a device, to a destination policy
//! lets it ping (`--proto icmp`, or `any` over every port), and whether it
//! came back. Each ping is audited as `ping`.
//!
//! The echo goes out on an unprivileged ICMP socket (what `ping` itself
//! uses on Linux): the kernel picks the identifier and hands this socket
//! only the replies that carry it, so no raw socket or CAP_NET_RAW is
//! needed, only a group inside `net.ipv4.ping_group_range`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::StatusCode;
use shimgate_wire::dest::Host;
use shimgate_wire::ping::{ECHOED, PingRequest, Pinged};
use shimgate_wire::tunnel::TunnelError;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::cache::Identity;
use crate::respond::{send_error, send_json};
use crate::setup::Gateway;

/// An echo not back by then is lost (as `ping` counts it).
const ECHO_WAIT: Duration = Duration::from_secs(3);
/// Payload of the gateway's echo: the device answers its program with the
/// program's own, so this only needs to be recognisable.
const PAYLOAD: &[u8] = b"shimgate-ping";

impl Gateway {
    /// Pings the destination a device names, under policy, and answers
    /// whether it echoed.
    pub(crate) async fn ping(
        &self,
        req: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
    ) {
        let Some(call) = self
            .admit_call(req, &mut respond, who, shimgate_wire::enroll::MAX_BODY)
            .await
        else {
            return;
        };
        let origin = call.origin;
        let host = call
            .body
            .and_then(|b| serde_json::from_slice::<PingRequest>(&b).ok())
            .and_then(|r| Host::parse(&r.host).ok());
        let Some(host) = host else {
            return send_error(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "give an address or name to ping",
            );
        };
        let started = std::time::Instant::now();
        let rules = self.cache.rules();
        let answer = match self
            .dialer
            .pingable(who, origin.as_ref(), &rules, &host)
            .await
        {
            Ok(addrs) => match addrs.first() {
                Some(addr) => echo(*addr).await,
                None => Err(TunnelError::HostUnreachable),
            },
            Err(e) => Err(e),
        };
        let answer = match answer {
            Ok(()) => ECHOED.to_owned(),
            Err(e) => e.as_str().to_owned(),
        };
        metrics::counter!("shimgate_pings_total").increment(1);
        let flow = crate::auditlog::Flow {
            who,
            action: "ping",
            target: host.to_string(),
            origin,
            moved: format!("proto=icmp answer={answer}"),
            started,
        };
        self.broker.audit.record(flow.entry());
        send_json(&mut respond, StatusCode::OK, &Pinged { answer });
    }
}

/// Sends one echo request to `to` and waits for its reply.
async fn echo(to: IpAddr) -> Result<(), TunnelError> {
    let sock = match icmp_socket(to) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no ICMP socket for a ping: the gateway's group must be in \
                net.ipv4.ping_group_range (e.g. sysctl -w net.ipv4.ping_group_range=\"0 2147483647\")");
            return Err(TunnelError::General);
        }
    };
    if let Err(e) = sock.connect(SocketAddr::new(to, 0)).await {
        return Err(TunnelError::from_io(&e));
    }
    let seq: u16 = rand::random();
    let request = echo_request(to, seq);
    if let Err(e) = sock.send(&request).await {
        return Err(TunnelError::from_io(&e));
    }
    let wait = async {
        let mut buf = [0u8; 1500];
        loop {
            let n = sock.recv(&mut buf).await?;
            if buf.get(..n).is_some_and(|reply| is_reply(to, seq, reply)) {
                return Ok::<(), io::Error>(());
            }
        }
    };
    match tokio::time::timeout(ECHO_WAIT, wait).await {
        Ok(Ok(())) => Ok(()),
        // An ICMP error the far side's routers sent (unreachable) comes back
        // as the socket's error.
        Ok(Err(e)) => Err(TunnelError::from_io(&e)),
        Err(_) => Err(TunnelError::TimedOut),
    }
}

fn icmp_socket(to: IpAddr) -> io::Result<UdpSocket> {
    let (domain, proto) = match to {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(proto))?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(std::net::UdpSocket::from(sock))
}

/// Echo request type for the address family.
fn request_type(to: IpAddr) -> u8 {
    if to.is_ipv4() { 8 } else { 128 }
}

/// An echo request: type, code 0, checksum and identifier left to the
/// kernel (it fills both on ICMP sockets), sequence, payload.
fn echo_request(to: IpAddr, seq: u16) -> Vec<u8> {
    let mut p = vec![request_type(to), 0, 0, 0, 0, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    p
}

/// Whether `reply` (as an ICMP socket hands it: the ICMP header on) is the
/// echo reply to our request `seq`.
fn is_reply(to: IpAddr, seq: u16, reply: &[u8]) -> bool {
    let reply_type = if to.is_ipv4() { 0 } else { 129 };
    reply.first() == Some(&reply_type)
        && reply.get(6..8) == Some(&seq.to_be_bytes()[..])
        && reply.get(8..) == Some(PAYLOAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_by_type_sequence_and_payload() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mut reply = echo_request(v4, 7);
        assert!(!is_reply(v4, 7, &reply), "a request is no reply");
        reply[0] = 0;
        assert!(is_reply(v4, 7, &reply));
        assert!(!is_reply(v4, 8, &reply));
        assert!(!is_reply(v4, 7, &reply[..10]));
        assert!(!is_reply(v4, 7, &[]));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut reply6 = echo_request(v6, 7);
        reply6[0] = 129;
        assert!(is_reply(v6, 7, &reply6) && !is_reply(v4, 7, &reply6));
    }
}
