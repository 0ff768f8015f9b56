//! The exporting side: offers the gateway made, the peer listener and
//! relay streams, claiming an offer once, the handshake, then serving
//! `127.0.0.1:PORT` (TCP or UDP), or echoing for a ping (port 0).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use shimgate_wire::control::{PeerPath, PeerProto, SessionId, SessionKey};
use shimgate_wire::peerlink::{self, Link, Prologue};
use shimgate_wire::tunnel::TunnelError;
use shimgate_wire::{liveness, splice};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dial::open_relay;
use super::{AnyLink, Offer, Opened, Peers, Side, boxed_rd, boxed_wr};

impl Peers {
    /// The gateway offered a session: keep it if the port is exported over
    /// `proto` (or is 0, a ping, over TCP). Returns the reason to decline
    /// otherwise.
    pub fn offered(
        &self,
        session: SessionId,
        key: SessionKey,
        from: String,
        (port, proto): (u16, PeerProto),
        expires_in_ms: u64,
    ) -> Result<(), TunnelError> {
        let ping = port == 0 && proto == PeerProto::Tcp;
        if !ping && !self.exports().contains(proto, port) {
            return Err(TunnelError::Refused);
        }
        let now = Instant::now();
        self.offers.retain(|_, o| o.expires > now);
        let ttl = Duration::from_millis(expires_in_ms.min(60_000));
        self.offers.insert(
            session,
            Offer {
                key,
                from,
                port,
                proto,
                expires: now + ttl,
            },
        );
        Ok(())
    }

    /// Accepts peers' connections until `stop`.
    pub async fn listen(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        crate::listener::accept_until(
            "peer",
            &stop,
            || listener.accept(),
            |(sock, from)| {
                liveness::prepare(&sock);
                let peers = Arc::clone(&self);
                tokio::spawn(async move {
                    let (rd, wr) = sock.into_split();
                    peers
                        .answer(
                            boxed_rd(rd),
                            boxed_wr(wr),
                            PeerPath::Direct,
                            from.to_string(),
                        )
                        .await
                });
            },
        )
        .await;
    }

    /// The gateway asked for a relay stream for `session`: open it and
    /// answer the handshake on it.
    pub async fn answer_relay(self: Arc<Self>, send: SendRequest<Bytes>, session: SessionId) {
        let (h2_send, h2_recv) = match open_relay(send, session).await {
            Ok(s) => s,
            Err(e) => {
                return tracing::info!(%session, reason = %e, "could not open the relay stream");
            }
        };
        let (rd, wr) = tokio::io::split(splice::H2Io::new(h2_send, h2_recv));
        self.answer(
            boxed_rd(rd),
            boxed_wr(wr),
            PeerPath::Relayed,
            "the gateway relay".into(),
        )
        .await;
    }

    /// The exporting side of one link: claim the session named in the
    /// first bytes (once), run the handshake, then serve the port.
    async fn answer(
        &self,
        rd: Box<dyn AsyncRead + Send + Unpin>,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
        path: PeerPath,
        from: String,
    ) {
        let (id, rd) = match peerlink::read_session_id(rd).await {
            Ok(x) => x,
            Err(e) => {
                return tracing::debug!(%from, error = %e, "peer connection without a session");
            }
        };
        let session = SessionId(id);
        let Some((_, offer)) = self.offers.remove(&session) else {
            return tracing::info!(%from, %session, "peer handshake refused: unknown, used or expired session");
        };
        if offer.expires <= Instant::now() {
            return tracing::info!(%from, %session, "peer handshake refused: session expired");
        }
        let prologue = Prologue {
            session_id: id,
            initiator: &offer.from,
            responder: &self.me,
            port: offer.port,
            proto: offer.proto,
        };
        let link = match peerlink::respond(rd, wr, offer.key.bytes(), &prologue).await {
            Ok(l) => l,
            Err(e) => {
                return tracing::warn!(%from, peer = %offer.from, %session, error = %e, "peer handshake failed");
            }
        };
        tracing::info!(peer = %offer.from, port = offer.port, %path, %session, "peer session open");
        if offer.port == 0 {
            let (id, entry) = self.track(&offer.from, 0, path, None, Side::Exporter);
            tokio::select! {
                _ = echo(link) => {}
                _ = entry.2.cancelled() => {}
            }
            return self.untrack(id);
        }
        if !self.exports().contains(offer.proto, offer.port) {
            return tracing::info!(peer = %offer.from, port = offer.port, proto = %offer.proto, "port no longer exported: closing");
        }
        let opened = |link| Opened {
            link,
            session,
            peer: offer.from.clone(),
            peer_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            path,
            why: None,
            asked: Instant::now(),
        };
        if offer.proto == PeerProto::Udp {
            let service = SocketAddr::from((Ipv4Addr::LOCALHOST, offer.port));
            let sock = match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await {
                Ok(s) if s.connect(service).await.is_ok() => s,
                _ => {
                    return tracing::warn!(
                        port = offer.port,
                        "no UDP socket for an exported service"
                    );
                }
            };
            let never = std::future::pending();
            let ended = self
                .run_datagrams(&sock, opened(link), Side::Exporter, offer.port, never)
                .await;
            if let Err(e) = ended {
                tracing::info!(peer = %offer.from, error = %e, "peer udp session ended with an error");
            }
            return;
        }
        let local = match TcpStream::connect((Ipv4Addr::LOCALHOST, offer.port)).await {
            Ok(s) => s,
            Err(e) => {
                return tracing::warn!(port = offer.port, error = %e, "exported service not reachable on 127.0.0.1");
            }
        };
        let _ = local.set_nodelay(true);
        match self
            .run(local, opened(link), Side::Exporter, offer.port)
            .await
        {
            Ok(m) => {
                tracing::debug!(peer = %offer.from, sent = m.sent, received = m.received, "peer session closed")
            }
            Err(e) => {
                tracing::info!(peer = %offer.from, error = %e, "peer session ended with an error")
            }
        }
    }
}

/// Answers every frame with itself: `shimgate ping`'s far end.
async fn echo(link: AnyLink) -> Result<(), peerlink::LinkError> {
    let Link {
        mut reader,
        mut writer,
    } = link;
    while let Some(data) = reader.recv().await? {
        let data = data.to_vec();
        writer.send(&data).await?;
    }
    writer.close().await
}

#[cfg(test)]
mod tests {
    use shimgate_wire::control::Exports;

    use super::*;

    #[test]
    fn offers_only_for_exported_ports() {
        let exports = Exports {
            tcp: vec![8000],
            udp: vec![5353],
        };
        let (p, _) = Peers::new(
            "bob",
            "vpn.internal",
            shimgate_wire::identity::VpnRange::DEFAULT,
            exports,
        );
        let id = SessionId([1; 16]);
        let offer = |port: u16, proto: PeerProto| {
            let key = SessionKey::random().unwrap();
            p.offered(id, key, "alice".into(), (port, proto), 1000)
        };
        assert!(offer(8000, PeerProto::Tcp).is_ok());
        assert!(offer(0, PeerProto::Tcp).is_ok(), "a ping");
        assert!(offer(5353, PeerProto::Udp).is_ok());
        for (port, proto) in [
            (22, PeerProto::Tcp),
            (5353, PeerProto::Tcp),
            (8000, PeerProto::Udp),
            (0, PeerProto::Udp),
        ] {
            assert_eq!(
                offer(port, proto),
                Err(TunnelError::Refused),
                "{port}/{proto}"
            );
        }
    }
}
