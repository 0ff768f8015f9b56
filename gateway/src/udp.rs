//! UDP associations: a device's datagrams, framed on one HTTP/2 stream
//! (`wire::datagram`), sent from one socket per association.
//!
//! Policy is asked (for UDP) once per new destination, with the same
//! resolution and SSRF rules as a TCP tunnel. Answers come back only from
//! addresses this association has sent to, as a NAT with address-dependent
//! filtering does: nothing elsewhere in the intranet can slip a datagram
//! (a spoofed DNS answer) to the device. An association ends when the device
//! closes its stream, when the device's connection ends, or after
//! [`IDLE`] without a datagram either way.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Response, StatusCode};
use shimgate_registry::Proto;
use shimgate_wire::datagram::{self, Decoder};
use shimgate_wire::dest::Destination;
use shimgate_wire::splice;
use shimgate_wire::tunnel::TunnelError;
use tokio::net::UdpSocket;

use crate::cache::Identity;
use crate::respond::refuse;
use crate::setup::Gateway;

/// An association with no datagram either way for this long ends.
pub const IDLE: Duration = Duration::from_secs(120);
/// Destinations one association may have (each a policy decision kept for
/// its life); past it, datagrams to new ones are dropped.
const MAX_DESTINATIONS: usize = 1024;
/// Bytes of partial frames a device may leave unread on the stream.
const MAX_PENDING: usize = 2 * (datagram::MAX_PAYLOAD + 300);

/// What one association has seen so far.
#[derive(Default)]
struct Counts {
    sent: u64,
    received: u64,
    refused: u64,
    bytes_sent: u64,
    bytes_received: u64,
}

impl Gateway {
    /// `POST /v1/udp`: runs one association until it ends.
    pub(crate) async fn udp(
        &self,
        req: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
    ) {
        let _place = match self.admit_tunnel(who) {
            Ok(p) => p,
            Err(e) => return refuse(&mut respond, e),
        };
        let sock = match bind().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(device = %who.device_name, error = %e, "no UDP socket for an association");
                return refuse(&mut respond, TunnelError::General);
            }
        };
        // Read once: the family decides how every IPv4 destination is written.
        let dual_stack = sock.local_addr().is_ok_and(|a| a.is_ipv6());
        let origin = crate::auditlog::origin_of(&req);
        let started = std::time::Instant::now();
        let Ok(ok) = Response::builder().status(StatusCode::OK).body(()) else {
            return;
        };
        let Ok(mut send) = respond.send_response(ok, false) else {
            return;
        };
        metrics::counter!("shimgate_udp_associations_total").increment(1);
        tracing::debug!(device = %who.device_name, "udp association open");
        let mut recv = req.into_body();
        let mut decoder = Decoder::default();
        // Per destination: where policy lets it go, or why not.
        let mut decided: HashMap<Destination, Result<SocketAddr, TunnelError>> = HashMap::new();
        let mut sent_to: HashSet<SocketAddr> = HashSet::new();
        let mut counts = Counts::default();
        let mut buf = vec![0u8; datagram::MAX_PAYLOAD + 1];
        let rules = self.cache.rules();
        let why = loop {
            tokio::select! {
                chunk = recv.data() => {
                    let chunk = match chunk {
                        None => break "the device closed it",
                        Some(Err(_)) => break "the device's stream failed",
                        Some(Ok(c)) => c,
                    };
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    decoder.push(&chunk);
                    while let Some(frame) = decoder.next_datagram() {
                        let (dest, payload) = match frame {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::debug!(device = %who.device_name, error = %e, "bad udp frame dropped");
                                continue;
                            }
                        };
                        if !self.device_datagrams.allow(who.device_id) {
                            counts.refused += 1;
                            self.refuse_over_limit(who, "datagrams_per_second", "serve --datagrams-per-second");
                            continue;
                        }
                        if !decided.contains_key(&dest) {
                            if decided.len() >= MAX_DESTINATIONS {
                                counts.refused += 1;
                                continue;
                            }
                            let to = self
                                .dialer
                                .allowed(who, origin.as_ref(), &rules, &dest, Proto::Udp)
                                .await
                                .and_then(|addrs| addrs.first().copied().ok_or(TunnelError::NotAllowed));
                            if let Err(e) = &to {
                                tracing::info!(device = %who.device_name, %dest, reason = %e, "udp destination refused");
                            }
                            decided.insert(dest.clone(), to);
                        }
                        match decided.get(&dest) {
                            Some(Ok(to)) => {
                                if sock.send_to(&payload, mapped(dual_stack, *to)).await.is_ok() {
                                    sent_to.insert(*to);
                                    counts.sent += 1;
                                    counts.bytes_sent += payload.len() as u64;
                                }
                            }
                            _ => counts.refused += 1,
                        }
                    }
                    if decoder.pending() > MAX_PENDING {
                        break "the device sent a frame larger than any datagram";
                    }
                }
                got = sock.recv_from(&mut buf) => {
                    // This answer and whatever else has arrived, to the
                    // device in one write.
                    let mut got = got;
                    let mut batch = BytesMut::new();
                    while batch.len() < datagram::BATCH {
                        let Ok((n, from)) = got else { break };
                        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                        if !sent_to.contains(&from) {
                            metrics::counter!("shimgate_udp_unsolicited_total").increment(1);
                        } else if let (Some(payload), Ok(far)) = (buf.get(..n), Destination::from_addr(from))
                            && datagram::encode_into(&far, payload, &mut batch).is_ok()
                        {
                            counts.received += 1;
                            counts.bytes_received += n as u64;
                        }
                        got = sock.try_recv_from(&mut buf);
                    }
                    if !batch.is_empty() && splice::send_all(&mut send, batch.freeze()).await.is_err() {
                        break "the device's stream failed";
                    }
                }
                _ = tokio::time::sleep(IDLE) => break "idle",
            }
        };
        let _ = send.send_data(Bytes::new(), true);
        metrics::counter!("shimgate_udp_datagrams_total", "direction" => "up")
            .increment(counts.sent);
        metrics::counter!("shimgate_udp_datagrams_total", "direction" => "down")
            .increment(counts.received);
        metrics::counter!("shimgate_udp_bytes_total", "direction" => "up")
            .increment(counts.bytes_sent);
        metrics::counter!("shimgate_udp_bytes_total", "direction" => "down")
            .increment(counts.bytes_received);
        tracing::debug!(device = %who.device_name, why, sent = counts.sent, received = counts.received,
            refused = counts.refused, "udp association closed");
        let mut dests: Vec<String> = decided.keys().map(ToString::to_string).collect();
        dests.sort();
        let flow = crate::auditlog::Flow {
            who,
            action: "udp.association",
            target: dests.join(","),
            origin,
            moved: format!(
                "proto=udp sent={} received={} refused={} up={} down={}",
                counts.sent,
                counts.received,
                counts.refused,
                counts.bytes_sent,
                counts.bytes_received
            ),
            started,
        };
        self.broker.audit.record(flow.entry());
    }
}

/// One socket for both families where the host has IPv6, else IPv4 only.
async fn bind() -> io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).await,
    }
}

/// `to` as a socket of that family takes it: an IPv4 address as IPv4-mapped IPv6 on a
/// dual-stack socket.
fn mapped(dual_stack: bool, to: SocketAddr) -> SocketAddr {
    match (dual_stack, to.ip()) {
        (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port()),
        _ => to,
    }
}
