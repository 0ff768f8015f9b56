//! The gateway's UDP port (the TLS listener's port number, over UDP): the
//! associations' channel packets (`wire::udpchannel`) arrive here. One task
//! opens each with its association's key and hands it to that
//! association's task ([`crate::udp`]), which sends answers from this same
//! socket. A packet naming no open association, or not opening with its
//! key, is counted and dropped before it costs more than a map lookup and
//! one decryption.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use shimgate_wire::udpchannel::{self, ConnSecret, Opener, Packet, Sealer, Side};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Packets one association may have waiting for its task; past it they are
/// dropped, as a full socket buffer drops them.
const QUEUE: usize = 512;
/// Bytes the socket's kernel buffers hold each way, so that a burst from
/// many devices is not dropped before the receiving task runs.
const SOCKET_BUFFER: usize = 4 << 20;

/// A packet for one association, opened.
pub(crate) struct Arrival {
    pub(crate) from: SocketAddr,
    pub(crate) packet: Packet,
}

/// The UDP port and the associations using it.
pub(crate) struct Channels {
    pub(crate) sock: UdpSocket,
    port: u16,
    open: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    opener: Opener,
    to_association: mpsc::Sender<Arrival>,
}

/// One association's place on the port; leaves it when dropped.
pub(crate) struct Registration {
    pub(crate) id: u64,
    pub(crate) port: u16,
    pub(crate) sealer: Sealer,
    pub(crate) arrivals: mpsc::Receiver<Arrival>,
    channels: Arc<Channels>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut open) = self.channels.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl Channels {
    /// Binds `addr` (the TLS listener's address) over UDP.
    pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<Arc<Channels>> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Best effort: without the larger buffers it still works, dropping sooner.
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        let sock = UdpSocket::from_std(sock.into())?;
        let port = sock.local_addr()?.port();
        Ok(Arc::new(Channels {
            sock,
            port,
            open: Mutex::new(HashMap::new()),
        }))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A new association's channel, keyed from its TLS connection's secret.
    pub(crate) fn register(self: &Arc<Self>, secret: &ConnSecret) -> Option<Registration> {
        let mut open = self.open.lock().ok()?;
        let id = loop {
            let id = rand::random::<u64>();
            if !open.contains_key(&id) {
                break id;
            }
        };
        let (sealer, opener) = secret.ends(id, Side::Gateway);
        let (to_association, arrivals) = mpsc::channel(QUEUE);
        open.insert(
            id,
            Entry {
                opener,
                to_association,
            },
        );
        Some(Registration {
            id,
            port: self.port,
            sealer,
            arrivals,
            channels: Arc::clone(self),
        })
    }

    /// Receives until `stop` fires.
    pub(crate) async fn receive(self: Arc<Self>, stop: CancellationToken) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let got = tokio::select! {
                got = self.sock.recv_from(&mut buf) => got,
                _ = stop.cancelled() => return,
            };
            let (n, from) = match got {
                Ok(g) => g,
                Err(e) => {
                    // ICMP errors for earlier sends surface here; nothing to stop for.
                    tracing::debug!(error = %e, "udp channel receive error");
                    continue;
                }
            };
            let Some(packet) = buf.get(..n) else { continue };
            self.deliver(packet, from);
        }
    }

    fn deliver(&self, packet: &[u8], from: SocketAddr) {
        let outcome = {
            let Ok(mut open) = self.open.lock() else {
                return;
            };
            match udpchannel::packet_id(packet).and_then(|id| open.get_mut(&id)) {
                None => Err("unknown"),
                Some(entry) => match entry.opener.open(packet) {
                    Ok(packet) => entry
                        .to_association
                        .try_send(Arrival { from, packet })
                        .map_err(|_| "queue full"),
                    Err(udpchannel::ChannelError::Replayed) => Err("replayed"),
                    Err(udpchannel::ChannelError::Forged | udpchannel::ChannelError::Short) => {
                        Err("forged")
                    }
                    Err(_) => Err("malformed"),
                },
            }
        };
        if let Err(why) = outcome {
            metrics::counter!("shimgate_udp_channel_dropped_total", "why" => why).increment(1);
        }
    }
}
