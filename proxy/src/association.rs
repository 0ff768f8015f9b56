//! A UDP association with the gateway, as every shim's UDP uses it: its
//! HTTP/2 stream (`POST /v1/udp`, `wire::datagram` frames) and, when the
//! gateway grants one, its UDP channel (`wire::udpchannel`: one sealed
//! packet per datagram to the gateway's UDP port, no HTTP/2 on the way).
//!
//! Datagrams go on the channel once the gateway has answered a probe on it
//! (so UDP gets through both ways), on the stream until then and whenever
//! the channel stops answering: a network that blocks UDP to the gateway
//! costs speed, not datagrams. Probes go every second until one is answered,
//! then every [`KEEPALIVE`] (which also keeps a NAT's mapping open).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::{Method, Request};
use shimgate_wire::datagram::{self, Decoder, UDP_PATH};
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::{ORIGIN_HEADER, Origin};
use shimgate_wire::splice;
use shimgate_wire::tunnel::TunnelError;
use shimgate_wire::udpchannel::{CHANNEL_HEADER, Opener, Packet, Sealer, Side};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::client;
use crate::pool::Pool;

/// Between probes while the channel has not answered yet.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Between probes once it has.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Probes unanswered in a row before datagrams go back to the stream.
const UNANSWERED: u32 = 3;

/// The stream ended or failed: the association is over.
#[derive(Debug)]
pub(crate) struct Ended;

/// One association: send with [`Association::push`] and [`Association::flush`],
/// receive with [`Association::recv`].
pub(crate) struct Association {
    down: RecvStream,
    up: SendStream<Bytes>,
    decoder: Decoder,
    /// Frames for the stream, sent at the next flush.
    batch: BytesMut,
    channel: Option<Channel>,
}

struct Channel {
    sock: UdpSocket,
    sealer: Sealer,
    opener: Opener,
    /// Whether the gateway has answered on it (and not gone quiet since).
    heard: bool,
    unanswered: u32,
    next_probe: Instant,
    buf: Vec<u8>,
}

impl Channel {
    async fn probe(&mut self) {
        self.next_probe = Instant::now() + if self.heard { KEEPALIVE } else { PROBE_EVERY };
        self.unanswered += 1;
        if self.heard && self.unanswered > UNANSWERED {
            tracing::info!(
                "the gateway's UDP port stopped answering: datagrams go on the TLS connection"
            );
            self.heard = false;
        }
        if let Ok(p) = self.sealer.probe() {
            let _ = self.sock.send(&p).await;
        }
    }
}

impl Association {
    /// Opens an association on pool slot `slot`, offering a channel.
    pub(crate) async fn open(
        pool: &Pool,
        slot: usize,
        origin: &Origin,
    ) -> Result<Association, TunnelError> {
        let (send, base) = pool.datagram_carrier(slot).await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(UDP_PATH)
            .header(ORIGIN_HEADER, origin.encode());
        if base.is_some() {
            req = req.header(CHANNEL_HEADER, "1");
        }
        let req = req.body(()).map_err(|_| TunnelError::General)?;
        let (response, up) = client::open_stream(send, req, None).await?;
        let granted = response
            .headers()
            .get(CHANNEL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grant);
        let channel = match (granted, base) {
            (Some((id, port)), Some(base)) => {
                Channel::open(&base, SocketAddr::new(base.gateway, port), id).await
            }
            _ => None,
        };
        let mut association = Association {
            down: response.into_body(),
            up,
            decoder: Decoder::default(),
            batch: BytesMut::new(),
            channel,
        };
        if let Some(c) = &mut association.channel {
            c.probe().await;
        }
        Ok(association)
    }

    /// Sends one datagram to `dest`: on the channel at once, or into the
    /// stream's next write.
    pub(crate) async fn push(&mut self, dest: &Destination, payload: &[u8]) {
        if let Some(c) = &mut self.channel
            && c.heard
            && let Ok(packet) = c.sealer.datagram(dest, payload)
            && c.sock.send(&packet).await.is_ok()
        {
            return;
        }
        let _ = datagram::encode_into(dest, payload, &mut self.batch);
    }

    /// Bytes waiting for the stream.
    pub(crate) fn pending(&self) -> usize {
        self.batch.len()
    }

    /// Sends what waits for the stream.
    pub(crate) async fn flush(&mut self) -> Result<(), Ended> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let frames = self.batch.split().freeze();
        splice::send_all(&mut self.up, frames)
            .await
            .map_err(|_| Ended)
    }

    /// The next datagram from the gateway, by either way: where it came
    /// from, and its payload. Cancel-safe (for `select!`).
    pub(crate) async fn recv(&mut self) -> Result<(Destination, Bytes), Ended> {
        loop {
            if let Some(frame) = self.decoder.next_datagram() {
                match frame {
                    Ok(d) => return Ok(d),
                    Err(e) => {
                        tracing::debug!(error = %e, "bad udp frame from the gateway dropped");
                        continue;
                    }
                }
            }
            let probe_at = self.channel.as_ref().map(|c| c.next_probe);
            tokio::select! {
                chunk = self.down.data() => {
                    let chunk = match chunk {
                        Some(Ok(c)) => c,
                        _ => return Err(Ended),
                    };
                    let _ = self.down.flow_control().release_capacity(chunk.len());
                    self.decoder.push(&chunk);
                }
                Some(packet) = channel_packet(&mut self.channel) => {
                    if let Some(d) = packet {
                        return Ok(d);
                    }
                }
                () = probe_due(probe_at) => {
                    if let Some(c) = &mut self.channel {
                        c.probe().await;
                    }
                }
            }
        }
    }

    /// Ends the association (the gateway forgets it at once).
    pub(crate) fn close(mut self) {
        let _ = self.up.send_data(Bytes::new(), true);
    }
}

impl Channel {
    async fn open(base: &client::ChannelBase, to: SocketAddr, id: u64) -> Option<Channel> {
        let any: SocketAddr = if to.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(any).await.ok()?;
        sock.connect(to).await.ok()?;
        let (sealer, opener) = base.secret.ends(id, Side::Device);
        Some(Channel {
            sock,
            sealer,
            opener,
            heard: false,
            unanswered: 0,
            next_probe: Instant::now(),
            buf: vec![0u8; 65_536],
        })
    }
}

/// A packet off the channel: `Some(datagram)`, or `None` for a probe's
/// answer (or nothing usable). Never resolves without a channel.
async fn channel_packet(channel: &mut Option<Channel>) -> Option<Option<(Destination, Bytes)>> {
    let Some(c) = channel else {
        return std::future::pending().await;
    };
    // An error here is an ICMP answer to an earlier send (the port is
    // closed): the probes notice if it lasts.
    let n = c.sock.recv(&mut c.buf).await.ok()?;
    let packet = c.buf.get(..n)?;
    match c.opener.open(packet) {
        Ok(packet) => {
            if !c.heard {
                tracing::debug!("the gateway's UDP port answers: datagrams go on the UDP channel");
            }
            c.heard = true;
            c.unanswered = 0;
            Some(match packet {
                Packet::Probe => None,
                Packet::Datagram(from, payload) => Some((from, payload)),
            })
        }
        Err(e) => {
            tracing::debug!(error = %e, "udp channel packet dropped");
            Some(None)
        }
    }
}

async fn probe_due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `ID PORT` as the gateway grants a channel.
fn parse_grant(text: &str) -> Option<(u64, u16)> {
    let (id, port) = text.split_once(' ')?;
    Some((u64::from_str_radix(id, 16).ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants() {
        assert_eq!(parse_grant("00000000000000ff 8443"), Some((255, 8443)));
        for bad in ["", "ff", "ff 70000", "zz 8443", "ff  8443"] {
            assert_eq!(parse_grant(bad), None, "{bad:?}");
        }
    }
}
