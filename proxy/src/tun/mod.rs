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
pub mod resolver;
pub mod routes;
mod udp;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use netstack_smoltcp::StackBuilder;
use shimgate_wire::dest::Host;
use shimgate_wire::dns;
use shimgate_wire::origin::Origin;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tun_rs::{AsyncDevice, DeviceBuilder};

use self::flows::{FlowStream, Flows, SharedFlows, Syn};
use self::packet::{FlowKey, Packet, Refusal, Segment, Unreachable};
use self::routes::Installed;
use crate::config::DeviceConfig;
use crate::pac::Pac;
use crate::shim::Asker;
use crate::status::{Board, TunView};
use shimgate_wire::shimsock::Reply;

/// The interface's name unless `--tun-name` says otherwise.
pub const DEFAULT_NAME: &str = "shimgate0";
/// The interface's MTU: as large as an IP packet goes. Every TCP flow
/// ends in the stack here (the far side is the gateway's own TCP), so
/// nothing on the program's side needs Ethernet's 1500; programs then send
/// ~64 KiB segments, and TUN mode's cost is per packet (tests/bench/tun.sh:
/// bulk 0.19 -> 0.40 GB/s, device CPU 5.9 -> 2.5 s/GB against 1500).
pub const MTU: u16 = 65_520;
/// Each flow's receive and send window in the stack: bounds what one flow
/// buffers on the device when the program or the far end reads slowly.
const WINDOW: u32 = 256 * 1024;
/// A way opened for a SYN that the stack has not made a stream for after
/// this long is dropped (the program gave up on its handshake).
const UNCLAIMED: Duration = Duration::from_secs(10);
/// DNS queries being answered (or forwarded) at once.
const DNS_AT_ONCE: usize = 256;
/// How long the gateway may take over a query for a routed name: its
/// resolvers' own wait, and the way there and back.
const GATEWAY_DNS_WAIT: Duration = Duration::from_secs(6);
/// How often the routes are compared with what policy routes here.
const ROUTES_EVERY: Duration = Duration::from_secs(5);

/// What `up --tun` was asked for.
#[derive(Debug, Clone)]
pub struct TunSettings {
    pub name: String,
    /// Route networks that overlap ones this machine is attached to.
    pub allow_overlap: bool,
    /// How the DNS responder is wired into the system resolver.
    pub dns: resolver::DnsMode,
    /// Where a rewritten resolv.conf's original is kept.
    pub resolv_backup: std::path::PathBuf,
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
    #[error(transparent)]
    Resolver(#[from] resolver::ResolverError),
    #[error("the TCP stack: {0}")]
    Stack(std::io::Error),
}

/// The shared parts every TUN task uses.
struct Shim {
    dev: AsyncDevice,
    flows: SharedFlows,
    udp: udp::UdpFlows,
    pings: icmp::Pings,
    /// The socket shim's names and fake addresses, shared: a name resolves
    /// to the same address for every shim.
    socket: Arc<crate::shim::Shim>,
    /// The DNS responder's address, and the resolvers it passes other names to.
    responder: SocketAddr,
    upstream: Vec<SocketAddr>,
    /// Queries being answered at once, at most [`DNS_AT_ONCE`].
    dns_slots: Arc<tokio::sync::Semaphore>,
    /// Pings waiting on the gateway, at most [`icmp::THROUGH_GATEWAY_AT_ONCE`].
    ping_slots: Arc<tokio::sync::Semaphore>,
}

/// TUN mode running: dropping it undoes the DNS wiring (the interface and
/// routes go with the process).
pub struct Running {
    pub dns: resolver::Wired,
}

/// Creates the interface and starts its tasks; they run until `stop`
/// fires, and the interface (with its routes) goes when this process does.
pub async fn start(
    settings: &TunSettings,
    config: &DeviceConfig,
    socket: Arc<crate::shim::Shim>,
    board: Arc<Board>,
    stop: CancellationToken,
) -> Result<Running, TunError> {
    resolver::recover(&settings.resolv_backup);
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
    let responder = range.dns();
    let shim = Arc::new(Shim {
        dev,
        flows: Arc::new(Flows::default()),
        udp: udp::UdpFlows::default(),
        pings: icmp::Pings::default(),
        socket: Arc::clone(&socket),
        responder: SocketAddr::from((responder, 53)),
        upstream: resolver::upstream(responder),
        dns_slots: Arc::new(tokio::sync::Semaphore::new(DNS_AT_ONCE)),
        ping_slots: Arc::new(tokio::sync::Semaphore::new(icmp::THROUGH_GATEWAY_AT_ONCE)),
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
    // Before the DNS wiring: the gateway's name must resolve as it always did.
    let gateways = gateway_addresses(&config.gateway).await;
    let dns = resolver::wire(
        settings.dns,
        &settings.name,
        responder,
        &socket.split().domains,
        &settings.resolv_backup,
    )
    .await?;
    let pac = Arc::clone(&socket.pac);
    let view = TunView {
        dev: settings.name.clone(),
        dns: format!("{responder} ({})", dns.mode),
        ..TunView::default()
    };
    // The route keeper also keeps systemd-resolved's domains current.
    let keeper = TunSettings {
        dns: dns.mode,
        ..settings.clone()
    };
    tokio::spawn(until(
        stop,
        keep_routes(
            keeper,
            config.gateway.clone(),
            gateways,
            pac,
            board,
            Arc::clone(&shim),
            view,
        ),
    ));
    tracing::info!(dev = %settings.name, address = %ip, range = %range.net(), dns = %responder, dns_mode = %dns.mode, upstream = ?shim.upstream, "TUN interface up");
    Ok(Running { dns })
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
    gateway: String,
    mut gateways: Vec<IpAddr>,
    pac: Arc<Pac>,
    board: Arc<Board>,
    shim: Arc<Shim>,
    mut view: TunView,
) {
    let mut installed = Installed::new(&settings.name);
    let mut said = BTreeSet::new();
    let mut shown = None;
    let mut domains = shim.socket.split().domains;
    loop {
        // One read of the split (policy's routes) per round.
        let split = shim.socket.split();
        if settings.dns == resolver::DnsMode::Resolved && split.domains != domains {
            match resolver::set_domains(&settings.name, &split.domains).await {
                Ok(()) => domains = split.domains.clone(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give systemd-resolved the VPN's domains")
                }
            }
        }
        match routes::attached(&settings.name).await {
            // Without the gateway's addresses no route can be known not to
            // capture its own connections: none is added until they are.
            Ok(_) if gateways.is_empty() => {
                if said.insert("no gateway address".to_owned()) {
                    tracing::warn!(gateway = %gateway, "the gateway's address is not known: no routes into the TUN interface until it resolves");
                }
                gateways = gateway_addresses(&gateway).await;
            }
            Ok(attached) => {
                // The VPN range is the interface address's own prefix route.
                let range = shim.socket.pac.vpn_range().to_string();
                let nets: Vec<String> = split.nets.into_iter().filter(|n| *n != range).collect();
                let (want, skipped) =
                    routes::plan(&nets, &gateways, &attached, settings.allow_overlap);
                for why in skipped {
                    if said.insert(why.clone()) {
                        tracing::warn!("{why}");
                    }
                }
                installed.sync(&want).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read this machine's networks"),
        }
        view.routes = installed.routes().iter().map(|n| n.to_string()).collect();
        view.flows = shim.flows.len();
        view.udp_flows = shim.udp.len();
        // status.json is rewritten only when something changed.
        if shown.as_ref() != Some(&view) {
            shown = Some(view.clone());
            board.update(|s| s.tun = Some(view.clone()));
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
            Packet::Udp { key, payload } if key.dest == self.responder => {
                // Queries answered at once are bounded; past it one is
                // dropped, and the program's resolver asks again.
                if let Ok(slot) = Arc::clone(&self.dns_slots).try_acquire_owned() {
                    let (me, query) = (Arc::clone(self), payload.to_vec());
                    tokio::spawn(async move {
                        me.dns(key, query).await;
                        drop(slot);
                    });
                }
                None
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
        // No TCP connection has port 0 at either end (the stack could not
        // take one): refused as a closed port.
        if seg.key.dest.port() == 0 || seg.key.program.port() == 0 {
            self.answer(Some(packet::reset_syn(&seg)));
            return;
        }
        match self.flows.syn(seg.key) {
            Syn::Drop => {}
            Syn::Refuse => self.answer(Some(packet::reset_syn(&seg))),
            Syn::Open => {
                let slot = self.socket.pool.pick();
                let (me, syn, release) = (Arc::clone(self), pkt.to_vec(), release.clone());
                self.socket
                    .pool
                    .spawn_on(slot, async move { me.open(slot, seg, syn, release).await });
            }
        }
    }

    async fn open(&self, slot: usize, seg: Segment, syn: Vec<u8>, release: mpsc::Sender<Vec<u8>>) {
        let opened = match self.socket.destination(seg.key.dest) {
            Ok(dest) => {
                crate::flow::open(
                    &self.socket.pool,
                    &self.socket.peers,
                    slot,
                    &dest,
                    &Origin::TUN,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(way) => {
                self.flows.ready(seg.key, way);
                if release.send(syn).await.is_err() {
                    self.flows.end(seg.key);
                    return;
                }
                tokio::time::sleep(UNCLAIMED).await;
                self.flows.expire_unclaimed(seg.key);
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

    /// A query to the DNS responder: VPN names (the VPN domain, domains
    /// policy routes here) are answered from the socket shim's map, after
    /// the gateway, so they resolve as under `shimgate run`; other names go
    /// to the resolvers this machine had.
    async fn dns(&self, key: FlowKey, query: Vec<u8>) {
        let Some(q) = dns::parse(&query) else {
            return;
        };
        let split = self.socket.split();
        let ours = split
            .domains
            .iter()
            .any(|d| d == "." || q.name == *d || q.name.ends_with(&format!(".{d}")));
        let answer = if ours {
            match q.qtype {
                dns::TYPE_A | dns::TYPE_AAAA => match self.peer_address(&q.name).await {
                    Some(ip) => dns::answer(&q, dns::NOERROR, &[ip.into()]),
                    None => match self.socket.resolve(&q.name, &Asker::TUN).await {
                        Reply::Addrs { v4, v6 } => {
                            dns::answer(&q, dns::NOERROR, &[v4.into(), v6.into()])
                        }
                        Reply::NoName => dns::answer(&q, dns::NXDOMAIN, &[]),
                        Reply::Refused { errno, .. } if errno == libc::EACCES => {
                            dns::answer(&q, dns::REFUSED, &[])
                        }
                        _ => dns::answer(&q, dns::SERVFAIL, &[]),
                    },
                },
                // Peers have addresses only: "no such data".
                _ if self
                    .socket
                    .peers
                    .destination(&Host::Name(q.name.clone()))
                    .is_some() =>
                {
                    dns::answer(&q, dns::NOERROR, &[])
                }
                // SRV, TXT, MX... of a routed name: the intranet's DNS,
                // through the gateway, as it answers.
                _ => match self.ask_gateway_dns(&query).await {
                    Some(a) => a,
                    None => dns::answer(&q, dns::SERVFAIL, &[]),
                },
            }
        } else {
            match shimgate_host::resolvers::ask(&self.upstream, &query).await {
                Some(a) => a,
                None => dns::answer(&q, dns::SERVFAIL, &[]),
            }
        };
        self.answer(Some(packet::datagram(key, &answer)));
    }

    /// A device's VPN address for its name under the VPN domain, as the
    /// gateway gives it to this device (online, and reachable under policy).
    async fn peer_address(&self, name: &str) -> Option<Ipv4Addr> {
        let host = Host::parse(name).ok()?;
        self.socket.peers.destination(&host)?;
        self.socket
            .ask_gateway(name, &Origin::TUN)
            .await
            .ok()
            .flatten()
    }

    /// `POST /v1/dns`: the gateway's resolvers' answer to `query`.
    async fn ask_gateway_dns(&self, query: &[u8]) -> Option<Vec<u8>> {
        let answer = self
            .socket
            .call_gateway(
                dns::DNS_PATH,
                query.to_vec(),
                &Origin::TUN,
                GATEWAY_DNS_WAIT,
            )
            .await
            .ok()?;
        // Only an answer to this query goes back to the program.
        (dns::id(&answer) == dns::id(query)).then_some(answer)
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
            let slot = self.socket.pool.pick();
            let me = Arc::clone(&self);
            self.socket.pool.spawn_on(slot, async move {
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
            r = way.carry_halves(&mut rd, &mut wr, &self.socket.peers) => r,
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
