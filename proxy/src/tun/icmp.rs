//! TUN mode's pings. To a peer's VPN address, each echo request travels
//! over a peer ping session (`shimgate ping`'s, port 0), kept open per peer
//! while pings come, so a running `ping` is one session, not one per
//! packet. To anything else routed here, the gateway pings for the device
//! (`POST /v1/ping`), where policy allows ICMP. Either way the reply is
//! written to the interface only once the far end has echoed, so `ping`
//! measures the real round trip and a host that is away gets none; a
//! refusal is the ICMP error a router would send.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shimgate_wire::control::PeerProto;
use shimgate_wire::origin::Origin;
use shimgate_wire::peerlink::Link;
use shimgate_wire::ping::{ECHOED, PING_PATH, PingRequest, Pinged};
use shimgate_wire::tunnel::TunnelError;
use tokio::sync::mpsc;

use super::Shim;
use super::packet::{self, Echo, Packet, Refusal, Unreachable};

/// A peer's ping session with no ping for this long closes.
const IDLE: Duration = Duration::from_secs(10);
/// A ping the peer has not echoed after this long is lost (and its
/// session closed; the next ping opens another).
const ECHO_WAIT: Duration = Duration::from_secs(5);
/// Echo requests waiting per peer; past it they are dropped (as a link
/// that is full would).
const QUEUE: usize = 64;
/// Pings through the gateway waiting for their answer at once; past it
/// they are dropped (a flood gets no more than this many calls in flight).
pub const THROUGH_GATEWAY_AT_ONCE: usize = 64;
/// How long the gateway's answer may take: its own wait for the echo, and
/// the way there and back.
const GATEWAY_WAIT: Duration = Duration::from_secs(5);

/// The ping session keeper of each peer being pinged.
#[derive(Default)]
pub struct Pings {
    peers: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
}

impl Pings {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Vec<u8>>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shim {
    /// A ping from a program: to the peer when the address (or the name a
    /// fake address stands for) is a peer's, otherwise through the gateway.
    pub(super) fn echo(self: &Arc<Self>, echo: Echo, pkt: &[u8]) {
        let Ok(host) = self.socket.host_of(IpAddr::V4(echo.dst)) else {
            self.answer(packet::unreachable(pkt, Unreachable::Host));
            return;
        };
        let Some(peer) = self.socket.peers.destination(&host) else {
            self.echo_through_gateway(host.to_string(), pkt);
            return;
        };
        let mut peers = self.pings.lock();
        let keeper = peers.entry(peer.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let slot = self.socket.pool.pick();
            let (me, peer) = (Arc::clone(self), peer.clone());
            self.socket
                .pool
                .spawn_on(slot, async move { me.keep_pinging(slot, peer, rx).await });
            tx
        });
        if let Err(mpsc::error::TrySendError::Closed(request)) = keeper.try_send(pkt.to_vec()) {
            // That keeper just ended (idle): start another.
            peers.remove(&peer);
            drop(peers);
            if let Some(Packet::Echo(echo)) = packet::parse(&request) {
                self.echo(echo, &request);
            }
        }
    }

    /// Asks the gateway to ping `host` (an address, or the name a fake
    /// address stands for), and answers the program as the far end did.
    fn echo_through_gateway(self: &Arc<Self>, host: String, pkt: &[u8]) {
        let Ok(slot) = Arc::clone(&self.ping_slots).try_acquire_owned() else {
            return;
        };
        let (me, request) = (Arc::clone(self), pkt.to_vec());
        tokio::spawn(async move {
            let answer = me.ask_gateway_to_ping(host).await;
            drop(slot);
            let reply = match answer {
                Ok(()) => match packet::parse(&request) {
                    Some(Packet::Echo(echo)) => Some(packet::echo_reply(&echo)),
                    _ => None,
                },
                // No echo came back: as on a network, no answer at all.
                Err(TunnelError::TimedOut) => None,
                Err(e) => match packet::refusal(e) {
                    Refusal::Unreachable(why) => packet::unreachable(&request, why),
                    Refusal::Reset => packet::unreachable(&request, Unreachable::Host),
                },
            };
            me.answer(reply);
        });
    }

    /// One `POST /v1/ping`: whether the far end echoed, or why not.
    async fn ask_gateway_to_ping(&self, host: String) -> Result<(), TunnelError> {
        let body = serde_json::to_vec(&PingRequest { host }).map_err(|_| TunnelError::General)?;
        let answer = self
            .socket
            .call_gateway(PING_PATH, body, &Origin::TUN, GATEWAY_WAIT)
            .await?;
        let pinged: Pinged = serde_json::from_slice(&answer).map_err(|_| TunnelError::General)?;
        if pinged.answer == ECHOED {
            Ok(())
        } else {
            Err(pinged.answer.parse().unwrap_or(TunnelError::General))
        }
    }

    /// Carries `peer`'s echo requests, one at a time, until none came for
    /// [`IDLE`].
    async fn keep_pinging(&self, slot: usize, peer: String, mut requests: mpsc::Receiver<Vec<u8>>) {
        let mut link = None;
        while let Ok(Some(request)) = tokio::time::timeout(IDLE, requests.recv()).await {
            let Some(Packet::Echo(echo)) = packet::parse(&request) else {
                continue;
            };
            if link.is_none() {
                let opened = match self.socket.pool.sender(slot).await {
                    Ok(send) => self.socket.peers.dial(send, &peer, 0, PeerProto::Tcp).await,
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(opened) => link = Some(opened.link),
                    Err(e) => {
                        tracing::info!(%peer, reason = %e, "no ping session");
                        self.answer(packet::unreachable(&request, Unreachable::Host));
                        continue;
                    }
                }
            }
            let Some(Link { reader, writer }) = link.as_mut() else {
                continue;
            };
            // ident and sequence first, so an empty ping is not an empty frame
            let mut payload = Vec::with_capacity(4 + echo.data.len());
            payload.extend_from_slice(&echo.ident.to_be_bytes());
            payload.extend_from_slice(&echo.seq.to_be_bytes());
            payload.extend_from_slice(echo.data);
            let echoed = async {
                writer.send(&payload).await?;
                let mut got = Vec::with_capacity(payload.len());
                while got.len() < payload.len() {
                    match reader.recv().await? {
                        Some(d) => got.extend_from_slice(d),
                        None => return Err(shimgate_wire::peerlink::LinkError::Truncated),
                    }
                }
                Ok(got == payload)
            };
            match tokio::time::timeout(ECHO_WAIT, echoed)
                .await
                .unwrap_or(Ok(false))
            {
                Ok(true) => self.answer(Some(packet::echo_reply(&echo))),
                // A lost ping, as on a network: the next one opens a session.
                Ok(false) | Err(_) => link = None,
            }
        }
        // Out of the map first: a ping that comes meanwhile starts a new keeper.
        self.pings.lock().remove(&peer);
        if let Some(mut l) = link {
            let _ = l.writer.close().await;
        }
    }
}
