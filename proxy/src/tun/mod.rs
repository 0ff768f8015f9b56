//! TUN mode (`shimgate up --tun`), the network-driver shim: a TUN
//! interface holding the device's VPN address, routes for the VPN range and
//! the networks policy routes here, and a userspace TCP stack
//! (netstack-smoltcp) that terminates the TCP flows of every program on
//! the machine and hands each to the tunnel layer (`flow::open`, as the
//! SOCKS port and the socket shim do), so policy and audit are the same.
//!
//! The far end's answer reaches the program: a SYN is held (`flows.rs`)
//! until the gateway or the peer has the far end connected; only then does
//! the stack see it and answer. A refusal is answered here, as a router
//! would (`packet.rs`): a reset for a closed port, ICMP unreachable or
//! administratively prohibited for the rest.
//!
//! Tasks: `read` (interface → flow table → stack), `write` (stack →
//! interface, noting each flow's sequence), `accept` (the stack's streams →
//! their ways), the stack's own runner, and the route keeper.

mod flows;
mod icmp;
pub mod packet;
pub mod routes;
mod udp;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use netstack_smoltcp::StackBuilder;
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::Origin;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tun_rs::{AsyncDevice, DeviceBuilder};

use self::flows::{FlowStream, Flows, SharedFlows, Syn};
use self::packet::{FlowKey, Packet, Refusal, Segment, Unreachable};
use self::routes::Installed;
use crate::config::DeviceConfig;
use crate::pac::Pac;
use crate::peer::Peers;
use crate::pool::Pool;
use crate::status::{Board, TunView};

/// The interface's name unless `--tun-name` says otherwise.
pub const DEFAULT_NAME: &str = "shimgate0";
/// The interface's MTU: Ethernet's, so programs' segments fit the links
/// their bytes travel on after the gateway.
pub const MTU: u16 = 1500;
/// Each flow's receive and send window in the stack: bounds what one flow
/// buffers on the device when the program or the far end reads slowly.
const WINDOW: u32 = 256 * 1024;
/// How often the routes are compared with what policy routes here.
const ROUTES_EVERY: Duration = Duration::from_secs(5);

/// What `up --tun` was asked for.
#[derive(Debug, Clone)]
pub struct TunSettings {
    pub name: String,
    /// Route networks that overlap ones this machine is attached to.
    pub allow_overlap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "cannot create the TUN interface {name}: {source} (TUN mode needs root or CAP_NET_ADMIN, and /dev/net/tun)"
    )]
    Create {
        name: String,
        source: std::io::Error,
    },
    #[error("the device's VPN address {0:?} in config.toml is not an IPv4 address; enroll again")]
    VpnIp(String),
    #[error(
        "the VPN range {range} overlaps {attached} on {dev}, a network this machine is attached to; choose another range at the gateway's init, or pass --allow-overlap"
    )]
    RangeOverlap {
        range: String,
        attached: String,
        dev: String,
    },
    #[error(transparent)]
    Route(#[from] routes::RouteError),
    #[error("the TCP stack: {0}")]
    Stack(std::io::Error),
}

/// The shared parts every TUN task uses.
struct Shim {
    dev: AsyncDevice,
    flows: SharedFlows,
    udp: udp::UdpFlows,
    pings: icmp::Pings,
    pool: Arc<Pool>,
    peers: Arc<Peers>,
}

/// Creates the interface and starts its tasks; they run until `stop`
/// fires, and the interface (with its routes) goes when this process does.
pub async fn start(
    settings: &TunSettings,
    config: &DeviceConfig,
    pool: Arc<Pool>,
    peers: Arc<Peers>,
    pac: Arc<Pac>,
    board: Arc<Board>,
    stop: CancellationToken,
) -> Result<(), TunError> {
    let range = config.vpn_range;
    let ip: Ipv4Addr = config
        .vpn_ip
        .parse()
        .map_err(|_| TunError::VpnIp(config.vpn_ip.clone()))?;
    let attached = routes::attached(&settings.name).await?;
    if !settings.allow_overlap
        && let Some(a) = attached
            .iter()
            .find(|a| routes::overlap(a.net, range.net().into()))
    {
        return Err(TunError::RangeOverlap {
            range: range.net().to_string(),
            attached: a.net.to_string(),
            dev: a.dev.clone(),
        });
    }
    let dev = DeviceBuilder::new()
        .name(&settings.name)
        .ipv4(ip, range.net().prefix_len(), None)
        .mtu(MTU)
        .build_async()
        .map_err(|source| TunError::Create {
            name: settings.name.clone(),
            source,
        })?;
    let (stack, runner, _udp, listener) = StackBuilder::default()
        .enable_tcp(true)
        .mtu(usize::from(MTU))
        .tcp_recv_buffer_size(WINDOW)
        .tcp_send_buffer_size(WINDOW)
        .build()
        .map_err(TunError::Stack)?;
    let (Some(runner), Some(listener)) = (runner, listener) else {
        return Err(TunError::Stack(std::io::Error::other(
            "the stack was built without TCP",
        )));
    };
    let shim = Arc::new(Shim {
        dev,
        flows: Arc::new(Flows::default()),
        udp: udp::UdpFlows::default(),
        pings: icmp::Pings::default(),
        pool,
        peers,
    });
    let (to_stack, from_stack) = stack.split();
    let (release, released) = mpsc::channel(flows::MAX_OPENING);
    tokio::spawn(until(stop.clone(), async move {
        if let Err(e) = runner.await {
            tracing::error!(error = %e, "the TUN interface's TCP stack stopped");
        }
    }));
    tokio::spawn(until(
        stop.clone(),
        Arc::clone(&shim).read(to_stack, release, released),
    ));
    tokio::spawn(until(stop.clone(), Arc::clone(&shim).write(from_stack)));
    tokio::spawn(until(stop.clone(), Arc::clone(&shim).accept(listener)));
    let gateways = gateway_addresses(&config.gateway).await;
    tokio::spawn(until(
        stop,
        keep_routes(settings.clone(), gateways, pac, board, Arc::clone(&shim)),
    ));
    tracing::info!(dev = %settings.name, address = %ip, range = %range.net(), "TUN interface up");
    Ok(())
}

/// Runs `task` until `stop` fires.
async fn until(stop: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        () = stop.cancelled() => {}
    }
}

/// The addresses the gateway's name has now: never routed into the interface.
async fn gateway_addresses(gateway: &str) -> Vec<IpAddr> {
    match tokio::net::lookup_host(gateway).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!(%gateway, error = %e, "cannot resolve the gateway's address to keep it out of the TUN routes");
            Vec::new()
        }
    }
}

/// Keeps the routes through the interface equal to what policy routes
/// here, and `status` told of them and of the flows.
async fn keep_routes(
    settings: TunSettings,
    gateways: Vec<IpAddr>,
    pac: Arc<Pac>,
    board: Arc<Board>,
    shim: Arc<Shim>,
) {
    let mut installed = Installed::new(&settings.name);
    let mut said = BTreeSet::new();
    let mut shown = None;
    loop {
        match routes::attached(&settings.name).await {
            Ok(attached) => {
                let (want, skipped) = routes::plan(
                    &pac.routes().cidrs,
                    &gateways,
                    &attached,
                    settings.allow_overlap,
                );
                for why in skipped {
                    if said.insert(why.clone()) {
                        tracing::warn!("{why}");
                    }
                }
                installed.sync(&want).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read this machine's networks"),
        }
        let view = TunView {
            dev: settings.name.clone(),
            routes: installed.routes().iter().map(|n| n.to_string()).collect(),
            flows: shim.flows.len(),
            udp_flows: shim.udp.len(),
        };
        // status.json is rewritten only when something changed.
        if shown.as_ref() != Some(&view) {
            shown = Some(view.clone());
            board.update(|s| s.tun = Some(view));
        }
        // At once when policy's routes change; the timer catches changes
        // to this machine's own networks.
        tokio::select! {
            () = pac.changed() => {}
            () = tokio::time::sleep(ROUTES_EVERY) => {}
        }
    }
}

impl Shim {
    /// Packets from the interface: SYNs are held and asked about, other TCP
    /// segments go to the stack, everything else is answered as a router
    /// would. Released SYNs (the far end answered) come back on `released`.
    async fn read(
        self: Arc<Self>,
        mut to_stack: futures::stream::SplitSink<netstack_smoltcp::Stack, Vec<u8>>,
        release: mpsc::Sender<Vec<u8>>,
        mut released: mpsc::Receiver<Vec<u8>>,
    ) {
        let mut buf = vec![0u8; usize::from(MTU) + 64];
        loop {
            let pkt = tokio::select! {
                n = self.dev.recv(&mut buf) => match n {
                    Ok(n) => match buf.get(..n) {
                        Some(pkt) => match self.inbound(pkt, &release) {
                            Some(()) => pkt.to_vec(),
                            None => continue,
                        },
                        None => continue,
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "reading the TUN interface");
                        return;
                    }
                },
                Some(syn) = released.recv() => syn,
            };
            if let Err(e) = to_stack.send(pkt).await {
                tracing::error!(error = %e, "the TUN interface's TCP stack is gone");
                return;
            }
        }
    }

    /// What to do with a packet from the interface: `Some` passes it to the
    /// stack.
    fn inbound(self: &Arc<Self>, pkt: &[u8], release: &mpsc::Sender<Vec<u8>>) -> Option<()> {
        match packet::parse(pkt)? {
            Packet::Tcp(seg) if seg.syn && !seg.ack => {
                if seg.is_open() {
                    self.syn(seg, pkt, release);
                }
                None
            }
            Packet::Tcp(seg) => {
                self.flows.seen_from_program(&seg);
                Some(())
            }
            Packet::Udp { key, payload } => {
                self.udp(key, payload, pkt);
                None
            }
            Packet::Echo(echo) => {
                self.echo(echo, pkt);
                None
            }
            Packet::IcmpError => None,
            Packet::Other { dest } => {
                tracing::debug!(%dest, "not carried in TUN mode: answered prohibited");
                self.answer(packet::unreachable(pkt, Unreachable::Prohibited));
                None
            }
        }
    }

    /// A program's connection attempt: ask the far end, hold the SYN.
    fn syn(self: &Arc<Self>, seg: Segment, pkt: &[u8], release: &mpsc::Sender<Vec<u8>>) {
        match self.flows.syn(seg.key) {
            Syn::Drop => {}
            Syn::Refuse => self.answer(Some(packet::reset_syn(&seg))),
            Syn::Open => {
                let slot = self.pool.pick();
                let (me, syn, release) = (Arc::clone(self), pkt.to_vec(), release.clone());
                self.pool
                    .spawn_on(slot, async move { me.open(slot, seg, syn, release).await });
            }
        }
    }

    async fn open(&self, slot: usize, seg: Segment, syn: Vec<u8>, release: mpsc::Sender<Vec<u8>>) {
        let opened = match Destination::from_addr(seg.key.dest) {
            Ok(dest) => crate::flow::open(&self.pool, &self.peers, slot, &dest, &Origin::TUN).await,
            Err(e) => Err(e.into()),
        };
        match opened {
            Ok(way) => {
                self.flows.ready(seg.key, way);
                if release.send(syn).await.is_err() {
                    self.flows.end(seg.key);
                }
            }
            Err(e) => {
                self.flows.end(seg.key);
                let answer = match packet::refusal(e) {
                    Refusal::Reset => Some(packet::reset_syn(&seg)),
                    Refusal::Unreachable(why) => packet::unreachable(&syn, why),
                };
                self.answer(answer);
            }
        }
    }

    /// Writes a packet of the shim's own to the interface.
    fn answer(&self, pkt: Option<Vec<u8>>) {
        if let Some(pkt) = pkt
            && let Err(e) = self.dev.try_send(&pkt)
        {
            tracing::debug!(error = %e, "cannot write an answer to the TUN interface");
        }
    }

    /// Packets from the stack to the interface.
    async fn write(
        self: Arc<Self>,
        mut from_stack: futures::stream::SplitStream<netstack_smoltcp::Stack>,
    ) {
        while let Some(pkt) = from_stack.next().await {
            let pkt = match pkt {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "the TUN interface's TCP stack failed");
                    return;
                }
            };
            if let Some(Packet::Tcp(seg)) = packet::parse(&pkt) {
                self.flows.seen_to_program(&seg);
            }
            if let Err(e) = self.dev.send(&pkt).await {
                tracing::error!(error = %e, "writing the TUN interface");
                return;
            }
        }
    }

    /// The stack's streams, each joined with the way opened for its SYN.
    async fn accept(self: Arc<Self>, mut listener: netstack_smoltcp::TcpListener) {
        while let Some((stream, program, dest)) = listener.next().await {
            let key = FlowKey { program, dest };
            let Some((way, program_reset)) = self.flows.take(key) else {
                // Not a SYN this shim released: nothing to carry it.
                tracing::debug!(%program, %dest, "a TUN stream without a way: dropped");
                continue;
            };
            let slot = self.pool.pick();
            let me = Arc::clone(&self);
            self.pool.spawn_on(slot, async move {
                me.carry(key, FlowStream::new(stream), way, program_reset)
                    .await
            });
        }
    }

    async fn carry(
        &self,
        key: FlowKey,
        stream: FlowStream,
        way: crate::flow::Way,
        program_reset: CancellationToken,
    ) {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let carried = tokio::select! {
            r = way.carry_halves(&mut rd, &mut wr, &self.peers) => r,
            () = program_reset.cancelled() => Err(()),
        };
        if carried.is_err()
            && !program_reset.is_cancelled()
            && let Some(seq) = self.flows.next_seq(key)
        {
            // The far end failed: the program sees a reset, not an end of data.
            self.answer(Some(packet::reset(key, seq, None)));
        }
        self.flows.end(key);
    }
}
