//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7): a relay socket for one client,
//! whose datagrams ride one association with the gateway
//! ([`crate::association`]), which sends them on under policy.
//!
//! The relay binds the address the client's TCP connection came in on
//! (loopback for a local client), not every interface. Only the client may
//! use it: the source must be the TCP connection's address (and the port the
//! request named, if it named one); the first datagram from there pins the
//! client's port. Fragments (FRAG ≠ 0) and malformed headers are dropped.
//! The association ends with its TCP connection, or when the gateway ends
//! the stream (the TCP connection is then closed, so the client knows).
//!
//! Datagrams to another device's UDP export go over peer sessions instead:
//! each such destination gets a loopback relay socket, as a program's
//! socket does under the socket shim ([`crate::shimudp::to_peer`]), which
//! the association reaches from one inner loopback socket.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::server::states::CommandRead;
use fast_socks5::util::target_addr::TargetAddr;
use shimgate_wire::datagram;
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::Origin;
use shimgate_wire::tunnel::TunnelError;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::association::Association;
use crate::peer::Peers;
use crate::pool::Pool;

/// Most peer destinations one association may have at once.
const MAX_PEER_DESTINATIONS: usize = 64;

/// An association's peer destinations: a relay per destination (each
/// carried by [`crate::shimudp::to_peer`]), reached from `inner`.
struct PeerRelays {
    inner: Option<UdpSocket>,
    relay_of: HashMap<Destination, SocketAddr>,
    dest_of: HashMap<SocketAddr, Destination>,
    stop: CancellationToken,
}

impl PeerRelays {
    /// Where datagrams for `dest` go; a new relay (and the work that
    /// carries it, to add to the association's) for a destination seen
    /// first.
    async fn relay_for(&mut self, dest: &Destination) -> Option<(SocketAddr, Option<UdpSocket>)> {
        if let Some(relay) = self.relay_of.get(dest) {
            return Some((*relay, None));
        }
        if self.relay_of.len() >= MAX_PEER_DESTINATIONS {
            return None;
        }
        if self.inner.is_none() {
            self.inner = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.ok();
        }
        let inner = self.inner.as_ref()?.local_addr().ok()?;
        let relay = crate::shimudp::bind(inner).await.ok()?;
        let addr = relay.local_addr().ok()?;
        self.relay_of.insert(dest.clone(), addr);
        self.dest_of.insert(addr, dest.clone());
        Some((addr, Some(relay)))
    }

    /// The next answer from a peer: its destination and payload.
    async fn recv<'b>(&self, buf: &'b mut [u8]) -> Option<(Destination, &'b [u8])> {
        let Some(inner) = &self.inner else {
            return std::future::pending().await;
        };
        let (n, from) = inner.recv_from(buf).await.ok()?;
        let dest = self.dest_of.get(&from)?.clone();
        Some((dest, buf.get(..n)?))
    }
}

/// Who may send to the relay.
struct Client {
    ip: std::net::IpAddr,
    /// The port the request named, or the one the first datagram came from.
    port: Option<u16>,
}

impl Client {
    /// Whether `from` is the client, pinning its port on first use.
    fn admits(&mut self, from: SocketAddr) -> bool {
        if from.ip().to_canonical() != self.ip {
            return false;
        }
        match self.port {
            Some(p) => p == from.port(),
            None => {
                self.port = Some(from.port());
                true
            }
        }
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.port.map(|p| SocketAddr::new(self.ip, p))
    }
}

/// Serves one UDP ASSOCIATE request. `local` is where the client's TCP
/// connection arrived, `peer` where it came from, `hint` the address the
/// client said it would send from (often all zeros).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn associate(
    proto: Socks5ServerProtocol<TcpStream, CommandRead>,
    local: SocketAddr,
    peer: SocketAddr,
    hint: &TargetAddr,
    pool: &Pool,
    peers: &Peers,
    slot: usize,
) -> Result<(), crate::socks::SocksError> {
    let opened = async {
        let relay = UdpSocket::bind(SocketAddr::new(local.ip(), 0))
            .await
            .map_err(|_| TunnelError::General)?;
        let association = Association::open(pool, slot, &Origin::SOCKS).await?;
        Ok::<_, TunnelError>((relay, association))
    };
    let (relay, mut association) = match opened.await {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(%peer, reason = %e, "udp association refused");
            proto.reply_error(&crate::socks::reply_for(e)).await?;
            return Ok(());
        }
    };
    let bound = relay.local_addr()?;
    let mut control = proto.reply_success(bound).await?;
    let hinted_port = match hint {
        TargetAddr::Ip(a) if a.port() != 0 => Some(a.port()),
        _ => None,
    };
    let mut client = Client {
        ip: peer.ip().to_canonical(),
        port: hinted_port,
    };
    tracing::debug!(%peer, relay = %bound, "udp association open");
    let mut buf = vec![0u8; datagram::MAX_PAYLOAD + 512];
    let mut from_peer = vec![0u8; datagram::MAX_PAYLOAD];
    let mut to_peers = PeerRelays {
        inner: None,
        relay_of: HashMap::new(),
        dest_of: HashMap::new(),
        stop: CancellationToken::new(),
    };
    let mut carriers = futures::stream::FuturesUnordered::new();
    let why = loop {
        tokio::select! {
            // The client's TCP connection: its end is the association's end.
            () = crate::shimudp::closed(&mut control) => break "the client closed its TCP connection",
            got = relay.recv_from(&mut buf) => {
                // This datagram and whatever else has arrived, to the
                // gateway in one write (or one packet each on the channel).
                let mut got = got;
                while association.pending() < datagram::BATCH {
                    if let Ok((n, from)) = got {
                        let Some((dest, payload)) = accept(&mut client, buf.get(..n), from) else {
                            got = relay.try_recv_from(&mut buf);
                            continue;
                        };
                        if let Some(device) = peers.destination(dest.host()) {
                            match to_peers.relay_for(&dest).await {
                                Some((relay, new)) => {
                                    if let Some(new) = new {
                                        let stop = to_peers.stop.clone();
                                        carriers.push(crate::shimudp::to_peer(new, dest.clone(), device, pool, peers, stop));
                                    }
                                    if let Some(inner) = &to_peers.inner {
                                        let _ = inner.send_to(&payload, relay).await;
                                    }
                                }
                                None => tracing::info!(%dest, "no relay for another peer destination: dropped"),
                            }
                        } else {
                            association.push(&dest, &payload).await;
                        }
                    }
                    got = relay.try_recv_from(&mut buf);
                    if got.is_err() {
                        break;
                    }
                }
                if association.flush().await.is_err() {
                    break "the gateway's stream failed";
                }
            }
            Some((from, payload)) = to_peers.recv(&mut from_peer) => {
                if let Some(to) = client.addr() {
                    let _ = relay.send_to(&socks_header(&from, payload), to).await;
                }
            }
            _ = futures::StreamExt::next(&mut carriers), if !carriers.is_empty() => {}
            got = association.recv() => {
                let Ok((from, payload)) = got else { break "the gateway ended it" };
                if let Some(to) = client.addr() {
                    let _ = relay.send_to(&socks_header(&from, &payload), to).await;
                }
            }
        }
    };
    association.close();
    // The peer sessions close their links on the way out.
    to_peers.stop.cancel();
    while futures::StreamExt::next(&mut carriers).await.is_some() {}
    tracing::debug!(%peer, why, "udp association closed");
    Ok(())
}

/// A datagram from `from` on the relay, if it is the client's and well
/// formed: its destination and payload.
fn accept(
    client: &mut Client,
    packet: Option<&[u8]>,
    from: SocketAddr,
) -> Option<(Destination, Bytes)> {
    if !client.admits(from) {
        tracing::debug!(%from, "udp datagram from another address dropped");
        return None;
    }
    let datagram = packet.and_then(socks_datagram);
    if datagram.is_none() {
        tracing::debug!(%from, "malformed or fragmented socks datagram dropped");
    }
    datagram
}

/// A SOCKS UDP request datagram: `RSV(2) | FRAG(1) | ATYP | ADDR | PORT |
/// DATA`. `None` for a fragment or a malformed header.
fn socks_datagram(packet: &[u8]) -> Option<(Destination, Bytes)> {
    let (head, rest) = packet.split_at_checked(3)?;
    if head.get(2) != Some(&0) {
        return None;
    }
    let mut rest = Bytes::copy_from_slice(rest);
    let dest = datagram::take_address(&mut rest).ok()?;
    Some((dest, rest))
}

/// The header a SOCKS client expects before an answer from `from`.
fn socks_header(from: &Destination, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(3 + 19 + payload.len());
    out.extend_from_slice(&[0, 0, 0]);
    datagram::put_address(from, &mut out);
    out.extend_from_slice(payload);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socks_datagrams() {
        let packet = [0, 0, 0, 1, 192, 0, 2, 53, 0, 53, b'q'];
        let (dest, data) = socks_datagram(&packet).unwrap();
        assert_eq!(dest.to_string(), "192.0.2.53:53");
        assert_eq!(&data[..], b"q");
        // A fragment, a truncated header, a bad name, no header at all.
        for bad in [
            &[0, 0, 1, 1, 192, 0, 2, 53, 0, 53, b'q'][..],
            &[0, 0, 0, 1, 192, 0],
            &[0, 0, 0, 3, 3, b'a', b' ', b'b', 0, 53],
            &[0, 0],
        ] {
            assert!(socks_datagram(bad).is_none(), "{bad:?}");
        }
        let back = socks_header(&dest, b"a");
        assert_eq!(&back[..], &[0, 0, 0, 1, 192, 0, 2, 53, 0, 53, b'a']);
    }

    #[test]
    fn only_the_client_may_send() {
        let mut c = Client {
            ip: "127.0.0.1".parse().unwrap(),
            port: None,
        };
        assert!(!c.admits("127.0.0.2:5000".parse().unwrap()));
        assert!(c.admits("127.0.0.1:5000".parse().unwrap()));
        assert!(!c.admits("127.0.0.1:5001".parse().unwrap()), "pinned");
        assert_eq!(c.addr(), Some("127.0.0.1:5000".parse().unwrap()));
    }
}
