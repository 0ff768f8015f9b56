//! UDP associations: a device's datagrams, framed on one HTTP/2 stream
//! (`wire::datagram`) or sealed on the association's UDP channel
//! (`wire::udpchannel`, [`crate::udpchannel`]), sent from one socket per
//! association. Answers go back the way the device last sent.
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
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Response, StatusCode};
use shimgate_registry::Proto;
use shimgate_wire::datagram::{self, Decoder};
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::Origin;
use shimgate_wire::splice;
use shimgate_wire::tunnel::TunnelError;
use shimgate_wire::udpchannel::{CHANNEL_HEADER, ConnSecret, Packet};
use tokio::net::UdpSocket;

use crate::cache::Identity;
use crate::respond::refuse;
use crate::setup::Gateway;
use crate::udpchannel::{Arrival, Registration, Shortcut};
use shimgate_registry::Rule;

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

/// One association's state: where its destinations may go and what it has moved.
struct Association<'a> {
    gw: &'a Gateway,
    who: &'a Identity,
    origin: Option<Origin>,
    rules: Arc<Vec<Rule>>,
    /// The socket towards the intranet, and what the channel's receiving
    /// task may send on it by itself.
    shortcut: Arc<Shortcut>,
    /// Per destination: where policy lets it go, or why not.
    decided: HashMap<Destination, Result<SocketAddr, TunnelError>>,
    sent_to: HashSet<SocketAddr>,
    counts: Counts,
}

impl Association<'_> {
    /// Sends one of the device's datagrams on, under policy.
    async fn forward(&mut self, dest: Destination, payload: &[u8]) {
        if !self.gw.device_datagrams.allow(self.who.device_id) {
            self.counts.refused += 1;
            self.gw.refuse_over_limit(
                self.who,
                "datagrams_per_second",
                "serve --datagrams-per-second",
            );
            return;
        }
        if !self.decided.contains_key(&dest) {
            if self.decided.len() >= MAX_DESTINATIONS {
                self.counts.refused += 1;
                return;
            }
            let to = self
                .gw
                .dialer
                .allowed(
                    self.who,
                    self.origin.as_ref(),
                    &self.rules,
                    &dest,
                    Proto::Udp,
                )
                .await
                .and_then(|addrs| addrs.first().copied().ok_or(TunnelError::NotAllowed));
            match &to {
                Ok(addr) => {
                    // Answers from there are let through from now on, and
                    // the channel's receiving task may send there itself.
                    self.sent_to.insert(*addr);
                    self.shortcut.allow(dest.clone(), *addr);
                }
                Err(e) => {
                    tracing::info!(device = %self.who.device_name, %dest, reason = %e, "udp destination refused")
                }
            }
            self.decided.insert(dest.clone(), to);
        }
        match self.decided.get(&dest) {
            Some(Ok(to)) => {
                let to = self.shortcut.mapped(*to);
                if self.shortcut.sock.send_to(payload, to).await.is_ok() {
                    self.counts.sent += 1;
                    self.counts.bytes_sent += payload.len() as u64;
                }
            }
            _ => self.counts.refused += 1,
        }
    }

    /// An answer from `from`, if this association has sent there: where it
    /// came from, as the device is told.
    fn answer(&mut self, from: SocketAddr, n: usize) -> Option<Destination> {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        if !self.sent_to.contains(&from) {
            metrics::counter!("shimgate_udp_unsolicited_total").increment(1);
            return None;
        }
        let far = Destination::from_addr(from).ok()?;
        self.counts.received += 1;
        self.counts.bytes_received += n as u64;
        Some(far)
    }
}

impl Gateway {
    /// `POST /v1/udp`: runs one association until it ends. `secret` keys
    /// its UDP channel, when the device offers one and this gateway has a
    /// UDP port.
    pub(crate) async fn udp(
        &self,
        req: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
        secret: Option<&ConnSecret>,
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
        let shortcut = Arc::new(Shortcut::new(
            Arc::new(sock),
            Arc::clone(&self.device_datagrams),
            who.device_id,
        ));
        let offered = req.headers().contains_key(CHANNEL_HEADER);
        let mut channel = match (offered, self.channels.get(), secret) {
            (true, Some(channels), Some(secret)) => {
                channels.register(secret, Arc::clone(&shortcut))
            }
            _ => None,
        };
        let mut ok = Response::builder().status(StatusCode::OK);
        if let Some(c) = &channel {
            ok = ok.header(CHANNEL_HEADER, format!("{:016x} {}", c.id, c.port()));
        }
        let Ok(ok) = ok.body(()) else {
            return;
        };
        let Ok(mut send) = respond.send_response(ok, false) else {
            return;
        };
        let started = std::time::Instant::now();
        let mut assoc = Association {
            gw: self,
            who,
            origin: crate::auditlog::origin_of(&req),
            rules: self.cache.rules(),
            shortcut: Arc::clone(&shortcut),
            decided: HashMap::new(),
            sent_to: HashSet::new(),
            counts: Counts::default(),
        };
        metrics::counter!("shimgate_udp_associations_total").increment(1);
        tracing::debug!(device = %who.device_name, channel = channel.is_some(), "udp association open");
        let mut recv = req.into_body();
        let mut decoder = Decoder::default();
        let mut buf = vec![0u8; datagram::MAX_PAYLOAD + 1];
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
                        match frame {
                            Ok((dest, payload)) => {
                                shortcut.stream_used();
                                assoc.forward(dest, &payload).await;
                            }
                            Err(e) => tracing::debug!(device = %who.device_name, error = %e, "bad udp frame dropped"),
                        }
                    }
                    if decoder.pending() > MAX_PENDING {
                        break "the device sent a frame larger than any datagram";
                    }
                }
                // What the receiving task left to this one (it has counted
                // the datagram and noted where the device is).
                Some(arrival) = next_arrival(&mut channel) => {
                    match (arrival.packet, &mut channel) {
                        (Packet::Probe, Some(c)) => c.answer_probe(arrival.from).await,
                        (Packet::Datagram(dest, payload), _) => assoc.forward(dest, &payload).await,
                        (Packet::Probe, None) => {}
                    }
                }
                got = shortcut.sock.recv_from(&mut buf) => {
                    // This answer and whatever else has arrived: on the
                    // channel one packet each, on the stream in one write.
                    let mut got = got;
                    let mut batch = BytesMut::new();
                    while batch.len() < datagram::BATCH {
                        let Ok((n, from)) = got else { break };
                        if let (Some(far), Some(payload)) = (assoc.answer(from, n), buf.get(..n)) {
                            let on_channel = match (&mut channel, shortcut.answers_to()) {
                                (Some(c), Some(to)) => c.send_datagram(&far, payload, to).await,
                                _ => false,
                            };
                            if !on_channel {
                                let _ = datagram::encode_into(&far, payload, &mut batch);
                            }
                        }
                        got = shortcut.sock.try_recv_from(&mut buf);
                    }
                    if !batch.is_empty() && splice::send_all(&mut send, batch.freeze()).await.is_err() {
                        break "the device's stream failed";
                    }
                }
                _ = tokio::time::sleep(IDLE) => break "idle",
            }
        };
        let _ = send.send_data(Bytes::new(), true);
        // The receiving task's own sends join this task's.
        drop(channel);
        let counts = &mut assoc.counts;
        counts.sent += shortcut.sent.load(Ordering::Relaxed);
        counts.bytes_sent += shortcut.bytes_sent.load(Ordering::Relaxed);
        let by_channel = shortcut.by_channel.load(Ordering::Relaxed);
        metrics::counter!("shimgate_udp_datagrams_total", "direction" => "up")
            .increment(counts.sent);
        metrics::counter!("shimgate_udp_datagrams_total", "direction" => "down")
            .increment(counts.received);
        metrics::counter!("shimgate_udp_bytes_total", "direction" => "up")
            .increment(counts.bytes_sent);
        metrics::counter!("shimgate_udp_bytes_total", "direction" => "down")
            .increment(counts.bytes_received);
        metrics::counter!("shimgate_udp_channel_datagrams_total").increment(by_channel);
        tracing::debug!(device = %who.device_name, why, sent = counts.sent, received = counts.received,
            refused = counts.refused, by_channel, "udp association closed");
        let mut dests: Vec<String> = assoc.decided.keys().map(ToString::to_string).collect();
        dests.sort();
        let flow = crate::auditlog::Flow {
            who,
            action: "udp.association",
            target: dests.join(","),
            origin: assoc.origin.clone(),
            moved: format!(
                "proto=udp sent={} received={} refused={} up={} down={} by_channel={}",
                counts.sent,
                counts.received,
                counts.refused,
                counts.bytes_sent,
                counts.bytes_received,
                by_channel
            ),
            started,
        };
        self.broker.audit.record(flow.entry());
    }
}

/// The next packet on the association's channel; never, without one.
async fn next_arrival(channel: &mut Option<Registration>) -> Option<Arrival> {
    match channel {
        Some(c) => c.arrivals.recv().await,
        None => std::future::pending().await,
    }
}

/// One socket for both families where the host has IPv6, else IPv4 only.
async fn bind() -> io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).await {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).await,
    }
}
