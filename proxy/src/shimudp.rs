//! The socket shim's UDP: one relay per program socket and destination.
//!
//! A relay is a UDP socket on loopback connected to the program's socket
//! (so the kernel takes datagrams from that socket only). What the program
//! sends it goes, as it is, to the one destination the relay stands for,
//! over a UDP association with the gateway ([`crate::association`], as the
//! SOCKS port's UDP ASSOCIATE); what comes back goes to the
//! program from the relay, whose address the preload library turns back
//! into the destination's. No header is added on the program's side, so
//! a connected UDP socket is simply connected to its relay, and reads and
//! writes need no interception.
//!
//! A destination on another device (`bob.vpn.internal:5353`, a VPN IP)
//! goes over a UDP peer session instead ([`crate::peer::Peers::run_datagrams`],
//! one link frame per datagram), direct or relayed as TCP sessions are.
//!
//! A relay lasts as long as the shim socket connection that asked for it
//! (the library closes it with the program's socket). The gateway forgets
//! an idle association, and a peer session ends when idle; the next
//! datagram opens a new one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shimgate_wire::control::PeerProto;
use shimgate_wire::datagram;
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::Origin;
use shimgate_wire::tunnel::TunnelError;
use tokio::io::AsyncReadExt;
use tokio::net::{UdpSocket, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::association::Association;
use crate::peer::{Peers, Side};
use crate::pool::Pool;

/// Between two failed attempts to open a peer session, at least this.
const PEER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds a relay for the program's socket at `program` (a loopback address).
pub async fn bind(program: SocketAddr) -> Result<UdpSocket, TunnelError> {
    if !program.ip().is_loopback() {
        return Err(TunnelError::AddressNotSupported);
    }
    let ip = match program.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let relay = UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(|_| TunnelError::General)?;
    relay
        .connect(program)
        .await
        .map_err(|_| TunnelError::General)?;
    Ok(relay)
}

/// Carries datagrams between `relay` and `dest` until `control` (the shim
/// socket connection) closes.
pub async fn run(
    relay: UdpSocket,
    mut control: UnixStream,
    dest: Destination,
    pool: &Pool,
    peers: &Peers,
    origin: &Origin,
) {
    if let Some(peer) = peers.destination(dest.host()) {
        let stop = CancellationToken::new();
        let carry = to_peer(relay, dest, peer, pool, peers, stop.clone());
        tokio::pin!(carry);
        tokio::select! {
            () = &mut carry => return,
            () = closed(&mut control) => stop.cancel(),
        }
        return carry.await;
    }
    let mut association: Option<Association> = None;
    let mut buf = vec![0u8; datagram::MAX_PAYLOAD + 1];
    let (mut sent, mut received) = (0u64, 0u64);
    let why = loop {
        tokio::select! {
            () = closed(&mut control) => break "the program closed its socket",
            got = relay.recv(&mut buf) => {
                if association.is_none() {
                    match Association::open(pool, pool.pick(), origin).await {
                        Ok(a) => association = Some(a),
                        Err(e) => {
                            tracing::info!(%dest, reason = %e, "udp association refused; datagram dropped");
                            continue;
                        }
                    }
                }
                let Some(a) = association.as_mut() else { continue };
                // This datagram and whatever else has arrived, to the
                // gateway in one write (or one packet each on the channel).
                // ECONNREFUSED: an earlier answer met a closed program socket.
                let mut got = got;
                let mut count = 0;
                while a.pending() < datagram::BATCH {
                    let Ok(n) = got else { break };
                    if let Some(payload) = buf.get(..n) {
                        a.push(&dest, payload).await;
                        count += 1;
                    }
                    got = relay.try_recv(&mut buf);
                }
                if a.flush().await.is_err() {
                    association = None;
                    continue;
                }
                sent += count;
            }
            got = async {
                match association.as_mut() {
                    Some(a) => a.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match got {
                    Ok((_, payload)) => {
                        if relay.send(&payload).await.is_ok() {
                            received += 1;
                        }
                    }
                    // The gateway forgot it (idle) or it failed: the next
                    // datagram opens another.
                    Err(_) => association = None,
                }
            }
        }
    };
    if let Some(a) = association {
        a.close();
    }
    tracing::debug!(%dest, why, sent, received, "socket shim udp relay closed");
}

/// Resolves once `control` (the connection a relay lives as long as: the
/// shim socket's, or a SOCKS client's for UDP ASSOCIATE) closes; whatever
/// arrives on it meanwhile is read and dropped.
pub(crate) async fn closed<C: tokio::io::AsyncRead + Unpin>(control: &mut C) {
    let mut sink = [0u8; 64];
    while let Ok(1..) = control.read(&mut sink).await {}
}

/// Carries datagrams between `relay` and a UDP service `peer` exports, over
/// a peer session opened now and again whenever the last one ended (idle,
/// or the peer went away) and the program sends again, until `stop`.
pub(crate) async fn to_peer(
    relay: UdpSocket,
    dest: Destination,
    peer: String,
    pool: &Pool,
    peers: &Peers,
    stop: CancellationToken,
) {
    let port = dest.port();
    loop {
        let opened = match pool.sender(pool.pick()).await {
            Ok(send) => peers.dial(send, &peer, port, PeerProto::Udp).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(opened) => {
                tracing::debug!(peer = %opened.peer, port, path = %opened.path, "peer udp session open");
                let ended = peers
                    .run_datagrams(&relay, opened, Side::Requester, port, stop.cancelled())
                    .await;
                if let Err(e) = ended {
                    tracing::info!(%dest, error = %e, "peer udp session ended");
                }
            }
            Err(e) => {
                tracing::info!(%dest, reason = %e, "no peer udp session; datagrams dropped until the next try");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PEER_RETRY) => {}
                }
            }
        }
        // Open the next session when the program sends again.
        tokio::select! {
            () = stop.cancelled() => return,
            _ = relay.readable() => {}
        }
    }
}
