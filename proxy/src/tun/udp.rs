//! TUN mode's UDP: one flow per (program address, destination), carried by
//! the socket shim's relay ([`crate::shimudp::run`]: a gateway UDP
//! association, or a UDP peer session for a VPN address), so a datagram
//! takes the same way whichever shim took it.
//!
//! The relay speaks to a loopback UDP socket: `up`'s side of the flow here
//! sends it what the program sent, and writes what comes back to the
//! interface as a datagram from the destination. A flow with nothing either
//! way for [`IDLE`] ends (its relay with it); the next datagram opens
//! another.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shimgate_wire::datagram;
use shimgate_wire::origin::Origin;
use tokio::net::{UdpSocket, UnixStream};

use super::Shim;
use super::packet::{self, FlowKey, Unreachable};

/// A flow with no datagram either way for this long ends.
const IDLE: Duration = Duration::from_secs(60);
/// UDP flows at once; past it a new one is answered with ICMP prohibited.
const MAX_FLOWS: usize = 4096;

struct Flow {
    /// Our end of the relay's loopback pair.
    sock: Arc<UdpSocket>,
    last: Instant,
}

/// Every UDP flow of the TUN interface.
#[derive(Default)]
pub struct UdpFlows {
    table: Mutex<HashMap<FlowKey, Flow>>,
}

impl UdpFlows {
    fn lock(&self) -> MutexGuard<'_, HashMap<FlowKey, Flow>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flows open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Shim {
    /// A datagram from the program: to its flow's relay, opening the flow
    /// if there is none.
    pub(super) fn udp(self: &Arc<Self>, key: FlowKey, payload: &[u8], pkt: &[u8]) {
        let existing = {
            let mut table = self.udp.lock();
            table.get_mut(&key).map(|f| {
                f.last = Instant::now();
                Arc::clone(&f.sock)
            })
        };
        match existing {
            // A full socket buffer drops the datagram, as a congested link would.
            Some(sock) => {
                let _ = sock.try_send(payload);
            }
            None => {
                if let Err(why) = self.open_udp(key, payload) {
                    tracing::info!(program = %key.program, dest = %key.dest, why, "udp flow refused");
                    self.answer(packet::unreachable(pkt, Unreachable::Prohibited));
                }
            }
        }
    }

    /// Opens flow `key` with its first datagram.
    fn open_udp(self: &Arc<Self>, key: FlowKey, first: &[u8]) -> Result<(), &'static str> {
        if self.udp.len() >= MAX_FLOWS {
            return Err("too many UDP flows");
        }
        let dest = self
            .socket
            .destination(key.dest)
            .map_err(|_| "no name for the fake address")?;
        let pair = || -> std::io::Result<(UdpSocket, UdpSocket, UnixStream, UnixStream)> {
            let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let ours = std::net::UdpSocket::bind(loopback)?;
            let relay = std::net::UdpSocket::bind(loopback)?;
            ours.connect(relay.local_addr()?)?;
            relay.connect(ours.local_addr()?)?;
            // Sent before tokio owns the socket: its `try_send` would find
            // no writability reported yet and drop it.
            ours.send(first)?;
            ours.set_nonblocking(true)?;
            relay.set_nonblocking(true)?;
            let (life, relay_life) = std::os::unix::net::UnixStream::pair()?;
            life.set_nonblocking(true)?;
            relay_life.set_nonblocking(true)?;
            Ok((
                UdpSocket::from_std(ours)?,
                UdpSocket::from_std(relay)?,
                UnixStream::from_std(life)?,
                UnixStream::from_std(relay_life)?,
            ))
        };
        let (ours, relay, life, relay_life) = pair().map_err(|_| "no loopback sockets")?;
        let ours = Arc::new(ours);
        self.udp.lock().insert(
            key,
            Flow {
                sock: Arc::clone(&ours),
                last: Instant::now(),
            },
        );
        let slot = self.socket.pool.pick();
        let me = Arc::clone(self);
        self.socket.pool.spawn_on(slot, async move {
            crate::shimudp::run(
                relay,
                relay_life,
                dest,
                &me.socket.pool,
                &me.socket.peers,
                &Origin::TUN,
            )
            .await;
        });
        let me = Arc::clone(self);
        let back = Arc::clone(&ours);
        self.socket.pool.spawn_on(slot, async move {
            me.udp_back(key, back, life).await;
        });
        Ok(())
    }

    /// What the relay sends back, to the program as datagrams from the
    /// destination, until the flow has been idle for [`IDLE`]; dropping
    /// `life` then ends the relay.
    async fn udp_back(&self, key: FlowKey, sock: Arc<UdpSocket>, life: UnixStream) {
        let mut buf = vec![0u8; datagram::MAX_PAYLOAD];
        loop {
            let last = self.udp.lock().get(&key).map(|f| f.last);
            let Some(last) = last else { break };
            let idle_at = last + IDLE;
            tokio::select! {
                got = sock.recv(&mut buf) => {
                    let Ok(n) = got else {
                        self.udp.lock().remove(&key);
                        break;
                    };
                    if let Some(payload) = buf.get(..n) {
                        self.answer(Some(packet::datagram(key, payload)));
                    }
                    if let Some(f) = self.udp.lock().get_mut(&key) {
                        f.last = Instant::now();
                    }
                }
                () = tokio::time::sleep_until(idle_at.into()) => {
                    let mut table = self.udp.lock();
                    if table.get(&key).is_some_and(|f| f.last + IDLE <= Instant::now()) {
                        table.remove(&key);
                        break;
                    }
                }
            }
        }
        drop(life);
    }
}
