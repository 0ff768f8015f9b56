//! Where a TCP flow from a program goes, whichever shim took it (the SOCKS
//! port or the socket shim): a peer session when the destination names a
//! device, otherwise a tunnel through the gateway; then carrying the
//! program's socket over it until both sides are done.

use std::net::SocketAddr;

use shimgate_wire::control::PeerProto;
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::Origin;
use shimgate_wire::splice;
use shimgate_wire::tunnel::TunnelError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::peer::{self, Peers};
use crate::pool::{Pool, Tunnel};

/// An opened way to a destination, not yet carrying anything.
pub enum Way {
    Tunnel {
        tunnel: Tunnel,
        dest: Destination,
    },
    Peer {
        opened: Box<peer::Opened>,
        port: u16,
    },
}

/// Opens the way to `dest` on pool slot `slot`, for the program `origin`
/// describes (sent with a tunnel, for the gateway's audit log).
pub async fn open(
    pool: &Pool,
    peers: &Peers,
    slot: usize,
    dest: &Destination,
    origin: &Origin,
) -> Result<Way, TunnelError> {
    if let Some(peer) = peers.destination(dest.host()) {
        let port = dest.port();
        let opened = match pool.sender(slot).await {
            Ok(send) => peers.dial(send, &peer, port, PeerProto::Tcp).await,
            Err(e) => Err(e),
        };
        return match opened {
            Ok(opened) => {
                tracing::debug!(peer = %opened.peer, port, path = %opened.path, setup_us = opened.asked.elapsed().as_micros() as u64, "peer session open");
                Ok(Way::Peer {
                    opened: Box::new(opened),
                    port,
                })
            }
            Err(e) => {
                tracing::info!(%peer, port, reason = %e, "peer session refused");
                Err(e)
            }
        };
    }
    match pool.open(slot, dest, origin).await {
        Ok(tunnel) => Ok(Way::Tunnel {
            tunnel,
            dest: dest.clone(),
        }),
        Err(e) => {
            tracing::info!(%dest, reason = %e, "tunnel refused");
            Err(e)
        }
    }
}

impl Way {
    /// The far end as the program may be told it: where the gateway dialled
    /// from, or the peer's VPN address.
    pub fn bound(&self) -> SocketAddr {
        match self {
            Way::Tunnel { tunnel, .. } => {
                tunnel.bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
            }
            Way::Peer { opened, port } => SocketAddr::new(opened.peer_ip, *port),
        }
    }

    /// Moves bytes between `sock` and the far end until both are done; on
    /// an error `sock` is closed with a reset.
    pub async fn carry(self, sock: TcpStream, peers: &Peers) {
        let (mut rd, mut wr) = sock.into_split();
        if self.carry_halves(&mut rd, &mut wr, peers).await.is_err() {
            splice::reset(rd, wr);
        }
    }

    /// [`Way::carry`] over any byte stream's halves (a TUN flow's); an
    /// error means the program's side must be reset.
    pub async fn carry_halves<R, W>(self, rd: &mut R, wr: &mut W, peers: &Peers) -> Result<(), ()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match self {
            Way::Tunnel { tunnel, dest } => {
                match splice::splice_halves(rd, wr, tunnel.send, tunnel.recv).await {
                    Ok(moved) => {
                        tracing::debug!(%dest, up = moved.up, down = moved.down, "tunnel closed");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(%dest, error = %e, "tunnel ended with an error");
                        Err(())
                    }
                }
            }
            Way::Peer { opened, port } => {
                let name = opened.peer.clone();
                match peers
                    .run_halves(rd, wr, *opened, peer::Side::Requester, port)
                    .await
                {
                    Ok(m) => {
                        tracing::debug!(peer = %name, port, sent = m.sent, received = m.received, "peer session closed");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::info!(peer = %name, port, error = %e, "peer session ended with an error");
                        Err(())
                    }
                }
            }
        }
    }
}
