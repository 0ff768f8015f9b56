//! The gateway's UDP port (the TLS listener's port number, over UDP): the
//! associations' channel packets (`wire::udpchannel`) arrive here. One task
//! opens each with its association's key. A datagram to a destination the
//! association's policy decisions already allow it sends on by itself
//! ([`Shortcut`]): handing every datagram to the association's task, on
//! another thread, cost a wake-up each and a third of the rate. The rest
//! (probes, new destinations, datagrams over the device's limit) go to the
//! association's task ([`crate::udp`]), which also sends answers from this
//! same socket. A packet naming no open association, or not opening with
//! its key, is counted and dropped before it costs more than a map lookup
//! and one decryption.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use shimgate_wire::dest::Destination;
use shimgate_wire::udpchannel::{self, ConnSecret, Opener, Packet, Sealer, Side};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ratelimit::RateLimit;

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
    sock: UdpSocket,
    port: u16,
    open: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    opener: Opener,
    to_association: mpsc::Sender<Arrival>,
    shortcut: Arc<Shortcut>,
}

/// What one association shares with the receiving task: where it may send
/// without asking its task, and what the task needs to know of it.
pub(crate) struct Shortcut {
    /// The association's socket towards the intranet.
    pub(crate) sock: Arc<UdpSocket>,
    dual_stack: bool,
    /// Destinations policy allowed, and where they go.
    allowed: RwLock<HashMap<Destination, SocketAddr>>,
    /// Where the device's latest authentic packet came from.
    device_at: Mutex<Option<SocketAddr>>,
    /// Whether the device's last datagram came on the channel (answers go
    /// the way it last sent).
    in_use: AtomicBool,
    /// Datagrams (and their bytes) the receiving task sent on by itself.
    pub(crate) sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    /// Datagrams that came on the channel, either way they were sent on.
    pub(crate) by_channel: AtomicU64,
    limit: Arc<RateLimit<i64>>,
    device_id: i64,
}

impl Shortcut {
    pub(crate) fn new(
        sock: Arc<UdpSocket>,
        limit: Arc<RateLimit<i64>>,
        device_id: i64,
    ) -> Shortcut {
        Shortcut {
            // Read once: the family decides how every IPv4 destination is written.
            dual_stack: sock.local_addr().is_ok_and(|a| a.is_ipv6()),
            sock,
            allowed: RwLock::new(HashMap::new()),
            device_at: Mutex::new(None),
            in_use: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            by_channel: AtomicU64::new(0),
            limit,
            device_id,
        }
    }

    /// `to` as this association's socket takes it: an IPv4 address as
    /// IPv4-mapped IPv6 on a dual-stack socket.
    pub(crate) fn mapped(&self, to: SocketAddr) -> SocketAddr {
        match (self.dual_stack, to.ip()) {
            (true, IpAddr::V4(v4)) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port()),
            _ => to,
        }
    }

    /// Policy allowed `dest`, to `to`: the receiving task may send there.
    pub(crate) fn allow(&self, dest: Destination, to: SocketAddr) {
        if let Ok(mut allowed) = self.allowed.write() {
            allowed.insert(dest, to);
        }
    }

    /// Where answers go on the channel, if they go there.
    pub(crate) fn answers_to(&self) -> Option<SocketAddr> {
        if !self.in_use.load(Ordering::Relaxed) {
            return None;
        }
        self.device_at.lock().ok().and_then(|a| *a)
    }

    /// The device sent a datagram on the stream: answers go there too.
    pub(crate) fn stream_used(&self) {
        self.in_use.store(false, Ordering::Relaxed);
    }

    /// Sends `payload` on if `dest` is allowed and the device is within its
    /// limit; otherwise the association's task must see it.
    fn try_forward(&self, dest: &Destination, payload: &[u8]) -> bool {
        let to = match self.allowed.read() {
            Ok(allowed) => allowed.get(dest).copied(),
            Err(_) => None,
        };
        let Some(to) = to else { return false };
        if !self.limit.allow(self.device_id) {
            return false;
        }
        // A full socket buffer drops the datagram, as the network would.
        if self.sock.try_send_to(payload, self.mapped(to)).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.bytes_sent
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        true
    }
}

/// One association's place on the port; leaves it when dropped.
pub(crate) struct Registration {
    pub(crate) id: u64,
    sealer: Sealer,
    pub(crate) arrivals: mpsc::Receiver<Arrival>,
    channels: Arc<Channels>,
}

impl Registration {
    /// The UDP port the device sends to.
    pub(crate) fn port(&self) -> u16 {
        self.channels.port
    }

    /// Answers a probe that came from `to`.
    pub(crate) async fn answer_probe(&mut self, to: SocketAddr) {
        if let Ok(answer) = self.sealer.probe() {
            let _ = self.channels.sock.send_to(&answer, to).await;
        }
    }

    /// Sends the device at `to` a datagram from `far`; false if it is too
    /// large for one packet (the stream must carry it).
    pub(crate) async fn send_datagram(
        &mut self,
        far: &Destination,
        payload: &[u8],
        to: SocketAddr,
    ) -> bool {
        match self.sealer.datagram(far, payload) {
            Ok(packet) => {
                let _ = self.channels.sock.send_to(&packet, to).await;
                true
            }
            Err(_) => false,
        }
    }
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
    pub(crate) fn register(
        self: &Arc<Self>,
        secret: &ConnSecret,
        shortcut: Arc<Shortcut>,
    ) -> Option<Registration> {
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
                shortcut,
            },
        );
        Some(Registration {
            id,
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
                    Ok(packet) => {
                        let s = &entry.shortcut;
                        // Only an authentic packet gets here: the device is where it came from.
                        if let Ok(mut at) = s.device_at.lock() {
                            *at = Some(from);
                        }
                        let done = match &packet {
                            Packet::Datagram(dest, payload) => {
                                s.in_use.store(true, Ordering::Relaxed);
                                s.by_channel.fetch_add(1, Ordering::Relaxed);
                                s.try_forward(dest, payload)
                            }
                            Packet::Probe => false,
                        };
                        if done {
                            Ok(())
                        } else {
                            entry
                                .to_association
                                .try_send(Arrival { from, packet })
                                .map_err(|_| "queue full")
                        }
                    }
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
