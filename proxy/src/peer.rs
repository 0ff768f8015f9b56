//! Peer-to-peer sessions on the device (DESIGN.md "Peer to peer";
//! docs/ARCHITECTURE.md "Peer protocol").
//!
//! Requesting side: a SOCKS CONNECT to `NAME.<vpn domain>` or a VPN IP
//! asks the gateway for a session ([`Peers::dial`]), tries the peer's
//! endpoints directly, falls back to a relay stream through the gateway,
//! and runs the Noise handshake over whichever path worked.
//!
//! Exporting side: offers arrive on the control stream
//! ([`crate::control`]) and wait in [`Peers::offers`] until the
//! requester's handshake claims them (once: the entry is removed on first
//! use) or they expire. A claimed session is spliced to `127.0.0.1:PORT`,
//! and only for ports this device exports. A UDP session (`export
//! 5353/udp`) carries one datagram per link frame between the requester's
//! program and a UDP socket connected to `127.0.0.1:PORT`
//! ([`Peers::run_datagrams`]).
//!
//! Every live link is in [`Peers::links`], so `shimgate peers` can show it
//! and a revocation can cut it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use h2::client::SendRequest;
use http::{Method, Request};
use serde::{Deserialize, Serialize};
use shimgate_host::{clock, files};
use shimgate_wire::control::{
    DeviceMsg, Exports, Grant, PeerPath, PeerProto, RELAY_PATH, SESSION_HEADER, SESSION_PATH,
    SessionId, SessionKey, SessionRequest,
};
use shimgate_wire::dest::Host;
use shimgate_wire::identity::VPN_RANGE;
use shimgate_wire::peerlink::{self, Link, Prologue};
use shimgate_wire::tunnel::TunnelError;
use shimgate_wire::{liveness, splice};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client;
use crate::config::ConfigDir;

/// A link over any byte stream: a TCP socket (direct) or a relay stream.
pub type AnyLink = Link<Box<dyn AsyncRead + Send + Unpin>, Box<dyn AsyncWrite + Send + Unpin>>;

/// All direct attempts of one session together get this long.
pub const DIRECT_TIMEOUT: Duration = Duration::from_millis(800);
/// Head start of each endpoint over the next (the gateway lists the most
/// likely first).
const STAGGER: Duration = Duration::from_millis(150);
/// After a direct attempt to a peer failed, new sessions to it go straight
/// to the relay for this long, then try direct again.
pub const RETRY_DIRECT: Duration = Duration::from_secs(5);
/// A UDP session with no datagram from the local side for this long ends.
pub const UDP_IDLE: Duration = Duration::from_secs(120);
/// How long a grant request may take (it includes the peer's acceptance).
const GRANT_TIMEOUT: Duration = Duration::from_secs(5);

/// An offer the gateway made: a requester may claim it once, before it expires.
struct Offer {
    key: SessionKey,
    from: String,
    port: u16,
    proto: PeerProto,
    expires: Instant,
}

/// Which end of a peer session this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This device asked for the session (a local program connected).
    Requester,
    /// This device exports the service the other one asked for.
    Exporter,
}

/// One live link, for `shimgate peers` and for cutting.
struct LinkEntry {
    peer: String,
    port: u16,
    path: PeerPath,
    why: Option<String>,
    side: Side,
    started: i64,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    cancel: CancellationToken,
}

/// Byte totals of ended links, per peer.
#[derive(Default, Clone, Copy)]
struct Totals {
    sessions: u64,
    sent: u64,
    received: u64,
}

/// A peer session's way in, once its handshake is done.
pub struct Opened {
    pub link: AnyLink,
    pub session: SessionId,
    pub peer: String,
    pub peer_ip: IpAddr,
    pub path: PeerPath,
    /// Why the direct path was not used, when it was not.
    pub why: Option<String>,
    /// When the SOCKS request started, for the setup time in the logs.
    pub asked: Instant,
}

pub struct Peers {
    me: String,
    vpn_domain: String,
    offers: DashMap<SessionId, Offer>,
    links: DashMap<u64, LinkEntry>,
    ended: DashMap<String, Totals>,
    next_link: AtomicU64,
    exports: RwLock<Exports>,
    direct_failed: DashMap<String, (Instant, String)>,
    /// Reports for the gateway's audit log, sent on the control stream.
    reports: mpsc::Sender<DeviceMsg>,
}

impl Peers {
    /// The device's peer state; the receiver carries reports to the
    /// control stream.
    pub fn new(
        me: &str,
        vpn_domain: &str,
        exports: Exports,
    ) -> (Arc<Peers>, mpsc::Receiver<DeviceMsg>) {
        let (reports, rx) = mpsc::channel(1024);
        let peers = Peers {
            me: me.to_owned(),
            vpn_domain: vpn_domain.trim_end_matches('.').to_ascii_lowercase(),
            offers: DashMap::new(),
            links: DashMap::new(),
            ended: DashMap::new(),
            next_link: AtomicU64::new(0),
            exports: RwLock::new(exports),
            direct_failed: DashMap::new(),
            reports,
        };
        (Arc::new(peers), rx)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The peer a destination's host names, if it names one: a name under
    /// the VPN domain (as `NAME`), or an address in the VPN range.
    pub fn destination(&self, host: &Host) -> Option<String> {
        match host {
            Host::Ip(IpAddr::V4(ip)) => VPN_RANGE.contains(ip).then(|| ip.to_string()),
            Host::Ip(IpAddr::V6(_)) => None,
            Host::Name(name) => shimgate_wire::control::device_in_domain(name, &self.vpn_domain),
        }
    }

    pub fn exports(&self) -> Exports {
        match self.exports.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the exported ports; true if they changed.
    pub fn set_exports(&self, ports: Exports) -> bool {
        let mut guard = match self.exports.write() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *guard != ports;
        *guard = ports;
        changed
    }

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

    /// Cuts every link with `device` (it was revoked), or every link.
    pub fn cut(&self, device: Option<&str>) {
        for link in self.links.iter() {
            if device.is_none_or(|d| d == link.peer) {
                tracing::info!(peer = %link.peer, "cutting peer link: the peer is no longer on the VPN");
                link.cancel.cancel();
            }
        }
        if let Some(d) = device {
            self.offers.retain(|_, o| o.from != d);
        }
    }

    /// Asks the gateway for a session with `peer` on `port` over `proto`,
    /// then connects directly or through the relay and runs the handshake.
    pub async fn dial(
        &self,
        send: SendRequest<Bytes>,
        peer: &str,
        port: u16,
        proto: PeerProto,
    ) -> Result<Opened, TunnelError> {
        let asked = Instant::now();
        let grant = request_grant(send.clone(), peer, port, proto);
        let grant = tokio::time::timeout(GRANT_TIMEOUT, grant)
            .await
            .map_err(|_| TunnelError::TimedOut)??;
        let prologue = Prologue {
            session_id: grant.session.0,
            initiator: &self.me,
            responder: &grant.peer,
            port,
            proto,
        };
        let recent_failure = self
            .direct_failed
            .get(&grant.peer)
            .filter(|f| f.0.elapsed() < RETRY_DIRECT)
            .map(|f| f.1.clone());
        let why = match recent_failure {
            Some(why) => format!("direct failed recently: {why}"),
            None => match connect_direct(&grant.endpoints).await {
                Ok(sock) => {
                    liveness::prepare(&sock);
                    let (rd, wr) = sock.into_split();
                    match peerlink::initiate(
                        boxed_rd(rd),
                        boxed_wr(wr),
                        grant.key.bytes(),
                        &prologue,
                    )
                    .await
                    {
                        Ok(link) => {
                            self.direct_failed.remove(&grant.peer);
                            return Ok(Opened {
                                link,
                                session: grant.session,
                                peer: grant.peer,
                                peer_ip: grant.peer_ip,
                                path: PeerPath::Direct,
                                why: None,
                                asked,
                            });
                        }
                        Err(e) => format!("handshake on the direct path failed: {e}"),
                    }
                }
                Err(why) => {
                    self.direct_failed
                        .insert(grant.peer.clone(), (Instant::now(), why.clone()));
                    why
                }
            },
        };
        tracing::info!(peer = %grant.peer, port, reason = %why, "peer not reachable directly: relaying through the gateway");
        let (h2_send, h2_recv) = open_relay(send, grant.session).await?;
        let (rd, wr) = tokio::io::split(splice::H2Io::new(h2_send, h2_recv));
        let link = peerlink::initiate(boxed_rd(rd), boxed_wr(wr), grant.key.bytes(), &prologue)
            .await
            .map_err(|e| {
                tracing::warn!(peer = %grant.peer, error = %e, "peer handshake through the relay failed");
                TunnelError::General
            })?;
        Ok(Opened {
            link,
            session: grant.session,
            peer: grant.peer,
            peer_ip: grant.peer_ip,
            path: PeerPath::Relayed,
            why: Some(why),
            asked,
        })
    }

    /// Moves bytes between a local socket and an opened session until both
    /// sides are done (or the peer is cut), then reports it for the audit
    /// log when this side started it.
    pub async fn run(
        &self,
        local: TcpStream,
        opened: Opened,
        side: Side,
        port: u16,
    ) -> Result<peerlink::Moved, peerlink::LinkError> {
        let (id, entry) = self.track(&opened.peer, port, opened.path, opened.why.clone(), side);
        let (mut rd, mut wr) = local.into_split();
        let result = tokio::select! {
            r = peerlink::splice(&mut rd, &mut wr, opened.link, &entry.0, &entry.1) => r,
            _ = entry.2.cancelled() => Err(peerlink::LinkError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer link cut: the peer is no longer on the VPN",
            ))),
        };
        if result.is_err() {
            splice::reset(rd, wr);
        }
        self.untrack(id);
        self.report_end(side, opened.session, opened.path, opened.why, &entry);
        result
    }

    /// Carries datagrams between `sock` (a UDP socket connected to the one
    /// program socket or service it serves) and an opened UDP session, one
    /// link frame per datagram, until the peer closes the link, `until`
    /// resolves (the requester's program closed its socket), nothing moves
    /// for [`UDP_IDLE`], or the peer is cut.
    pub async fn run_datagrams(
        &self,
        sock: &UdpSocket,
        opened: Opened,
        side: Side,
        port: u16,
        until: impl std::future::Future<Output = ()>,
    ) -> Result<(), peerlink::LinkError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Opened {
            link,
            session,
            peer,
            path,
            why,
            ..
        } = opened;
        let (id, entry) = self.track(&peer, port, path, why.clone(), side);
        let Link {
            mut reader,
            mut writer,
        } = link;
        let mut buf = vec![0u8; shimgate_wire::datagram::MAX_PAYLOAD];
        let (sent, received, cut) = (&entry.0, &entry.1, &entry.2);
        tokio::pin!(until);
        let result = loop {
            tokio::select! {
                got = tokio::time::timeout(UDP_IDLE, sock.recv(&mut buf)) => match got {
                    Err(_) => break writer.close().await,
                    Ok(got) => {
                        // This datagram and whatever else has arrived, in
                        // one write. ECONNREFUSED: an earlier datagram met
                        // a closed port.
                        let mut got = got;
                        let mut sealed = Ok(());
                        while writer.pending() < shimgate_wire::datagram::BATCH {
                            let Ok(n) = got else { break };
                            sealed = writer.push_datagram(buf.get(..n).unwrap_or_default());
                            if sealed.is_err() {
                                break;
                            }
                            sent.fetch_add(n as u64, Relaxed);
                            got = sock.try_recv(&mut buf);
                        }
                        if let Err(e) = sealed {
                            break Err(e);
                        }
                        if let Err(e) = writer.flush().await {
                            break Err(e);
                        }
                    }
                },
                frame = reader.recv() => match frame {
                    Ok(Some(datagram)) => {
                        if sock.send(datagram).await.is_ok() {
                            received.fetch_add(datagram.len() as u64, Relaxed);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                () = &mut until => break writer.close().await,
                () = cut.cancelled() => break Err(peerlink::LinkError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "peer link cut: the peer is no longer on the VPN",
                ))),
            }
        };
        self.untrack(id);
        self.report_end(side, session, path, why, &entry);
        result
    }

    /// Reports an ended link for the gateway's audit log, when this side
    /// started it.
    fn report_end(
        &self,
        side: Side,
        session: SessionId,
        path: PeerPath,
        why: Option<String>,
        (sent, received, _): &(Arc<AtomicU64>, Arc<AtomicU64>, CancellationToken),
    ) {
        if side == Side::Requester {
            let _ = self.reports.try_send(DeviceMsg::Ended {
                session,
                path,
                sent: sent.load(Ordering::Relaxed),
                received: received.load(Ordering::Relaxed),
                why,
            });
        }
    }

    /// Registers a live link; returns its id, counters and cut switch.
    fn track(
        &self,
        peer: &str,
        port: u16,
        path: PeerPath,
        why: Option<String>,
        side: Side,
    ) -> (u64, (Arc<AtomicU64>, Arc<AtomicU64>, CancellationToken)) {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let cancel = CancellationToken::new();
        self.links.insert(
            id,
            LinkEntry {
                peer: peer.to_owned(),
                port,
                path,
                why,
                side,
                started: clock::now(),
                sent: Arc::clone(&sent),
                received: Arc::clone(&received),
                cancel: cancel.clone(),
            },
        );
        (id, (sent, received, cancel))
    }

    fn untrack(&self, id: u64) {
        if let Some((_, link)) = self.links.remove(&id) {
            let mut t = self.ended.entry(link.peer).or_default();
            t.sessions += 1;
            t.sent += link.sent.load(Ordering::Relaxed);
            t.received += link.received.load(Ordering::Relaxed);
        }
    }

    /// Accepts peers' connections until `stop`.
    pub async fn listen(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((sock, from)) => {
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
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
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

    /// What `shimgate peers` shows.
    pub fn view(&self) -> Vec<PeerView> {
        let mut out: std::collections::BTreeMap<String, PeerView> = Default::default();
        let now = clock::now();
        for link in self.links.iter() {
            let v = out
                .entry(link.peer.clone())
                .or_insert_with(|| PeerView::named(&link.peer));
            v.active += 1;
            v.sent += link.sent.load(Ordering::Relaxed);
            v.received += link.received.load(Ordering::Relaxed);
            v.path = Some(link.path);
            v.why = link.why.clone();
            v.ports.push(link.port);
            v.key_age_secs = Some(
                v.key_age_secs
                    .map_or(now - link.started, |a| a.min(now - link.started)),
            );
            v.started_here |= link.side == Side::Requester;
        }
        for t in self.ended.iter() {
            let v = out
                .entry(t.key().clone())
                .or_insert_with(|| PeerView::named(t.key()));
            v.ended += t.sessions;
            v.sent += t.sent;
            v.received += t.received;
        }
        for v in out.values_mut() {
            v.ports.sort_unstable();
            v.ports.dedup();
        }
        out.into_values().collect()
    }

    /// Writes `peers.json` once a second while it changes, until `stop`.
    pub async fn publish(self: Arc<Self>, dir: ConfigDir, stop: CancellationToken) {
        let mut last = Vec::new();
        loop {
            let json = serde_json::to_vec_pretty(&self.view()).unwrap_or_default();
            if json != last {
                if let Err(e) = files::write_atomic(&dir.peers(), &json, files::PUBLIC) {
                    tracing::warn!(error = %e, "cannot write peers.json");
                }
                last = json;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => {
                    let _ = std::fs::remove_file(dir.peers());
                    return;
                }
            }
        }
    }
}

/// One peer's line in `shimgate peers`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct PeerView {
    pub peer: String,
    /// Links open now, and ended since `up` started.
    pub active: u64,
    pub ended: u64,
    /// Path of the newest open link, and why it is relayed if it is.
    pub path: Option<PeerPath>,
    pub why: Option<String>,
    pub ports: Vec<u16>,
    /// Bytes this device sent to the peer / received from it, all links.
    pub sent: u64,
    pub received: u64,
    /// Age of the newest open link's key (each link has its own).
    pub key_age_secs: Option<i64>,
    /// Whether this device started any of the open links.
    pub started_here: bool,
}

impl PeerView {
    fn named(peer: &str) -> PeerView {
        PeerView {
            peer: peer.to_owned(),
            active: 0,
            ended: 0,
            path: None,
            why: None,
            ports: Vec::new(),
            sent: 0,
            received: 0,
            key_age_secs: None,
            started_here: false,
        }
    }
}

pub fn read_view(dir: &ConfigDir) -> Option<Vec<PeerView>> {
    let bytes = std::fs::read(dir.peers()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn boxed_rd<R: AsyncRead + Send + Unpin + 'static>(r: R) -> Box<dyn AsyncRead + Send + Unpin> {
    Box::new(r)
}

fn boxed_wr<W: AsyncWrite + Send + Unpin + 'static>(w: W) -> Box<dyn AsyncWrite + Send + Unpin> {
    Box::new(w)
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

/// Tries the endpoints in order: each starts when the one before failed or
/// has had [`STAGGER`] to connect; the first to connect wins.
async fn connect_direct(endpoints: &[SocketAddr]) -> Result<TcpStream, String> {
    use futures::StreamExt;
    let race = async {
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut next = endpoints.iter();
        let mut last = "the peer announced no endpoint".to_owned();
        loop {
            if let Some(a) = next.next() {
                let a = *a;
                pending.push(async move {
                    TcpStream::connect(a).await.map_err(|e| format!("{a}: {e}"))
                });
            } else if pending.is_empty() {
                return Err(last);
            }
            let more = next.len() > 0;
            tokio::select! {
                r = pending.next(), if !pending.is_empty() => match r {
                    Some(Ok(sock)) => return Ok(sock),
                    Some(Err(e)) => last = e,
                    None => {}
                },
                _ = tokio::time::sleep(STAGGER), if more => {}
            }
        }
    };
    match tokio::time::timeout(DIRECT_TIMEOUT, race).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no endpoint answered within {} ms",
            DIRECT_TIMEOUT.as_millis()
        )),
    }
}

/// `POST /v1/peer/session`: the gateway's grant for a session with `peer`
/// on `port` over `proto`, or why not.
pub async fn request_grant(
    send: SendRequest<Bytes>,
    peer: &str,
    port: u16,
    proto: PeerProto,
) -> Result<Grant, TunnelError> {
    let body = serde_json::to_vec(&SessionRequest {
        peer: peer.to_owned(),
        port,
        proto,
    })
    .map_err(|_| TunnelError::General)?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(SESSION_PATH)
        .body(())
        .map_err(|_| TunnelError::General)?;
    let (response, _) = client::open_stream(send, req, Some(Bytes::from(body))).await?;
    // The grant holds the session key: read it into a buffer that is wiped
    // on drop and never reallocated.
    let mut json = zeroize::Zeroizing::new(Vec::with_capacity(shimgate_wire::control::MAX_MESSAGE));
    shimgate_wire::body::read_into(
        &mut response.into_body(),
        shimgate_wire::control::MAX_MESSAGE,
        &mut json,
    )
    .await
    .map_err(|_| TunnelError::General)?;
    serde_json::from_slice(&json).map_err(|_| TunnelError::General)
}

async fn open_relay(
    send: SendRequest<Bytes>,
    session: SessionId,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), TunnelError> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(RELAY_PATH)
        .header(SESSION_HEADER, session.to_string())
        .body(())
        .map_err(|_| TunnelError::General)?;
    let (response, stream) = client::open_stream(send, req, None).await?;
    Ok((stream, response.into_body()))
}

/// Round trips of `count` small frames over an opened session: what
/// `shimgate ping` reports.
pub async fn ping(opened: Opened, count: usize) -> Result<Vec<Duration>, peerlink::LinkError> {
    let Link {
        mut reader,
        mut writer,
    } = opened.link;
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let payload = (i as u64).to_be_bytes();
        let t = Instant::now();
        writer.send(&payload).await?;
        let mut got = Vec::new();
        while got.len() < payload.len() {
            match reader.recv().await? {
                Some(d) => got.extend_from_slice(d),
                None => return Err(peerlink::LinkError::Truncated),
            }
        }
        if got != payload {
            return Err(peerlink::LinkError::Tampered);
        }
        times.push(t.elapsed());
    }
    writer.close().await?;
    Ok(times)
}

/// This machine's addresses a peer might reach the listener at: every
/// interface address except loopback and IPv6 link-local (useless without
/// a scope), with the listener's port.
pub fn local_endpoints(listen: SocketAddr) -> Vec<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return vec![listen];
    }
    interface_addrs()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .filter(|ip| listen.is_ipv6() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(ip, listen.port()))
        .take(shimgate_wire::control::MAX_LIST)
        .collect()
}

fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we only read and then
    // free exactly once with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its size.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_destinations() {
        let (p, _) = Peers::new("alice", "vpn.internal", Exports::default());
        let peer = |h: &str| p.destination(&Host::parse(h).unwrap());
        assert_eq!(peer("bob.vpn.internal").as_deref(), Some("bob"));
        assert_eq!(peer("BOB.VPN.Internal.").as_deref(), Some("bob"));
        assert_eq!(peer("100.64.0.7").as_deref(), Some("100.64.0.7"));
        assert_eq!(peer("vpn.internal"), None);
        assert_eq!(peer("a.b.vpn.internal"), None);
        assert_eq!(peer("bobvpn.internal"), None);
        assert_eq!(peer("intranet.internal"), None);
        assert_eq!(peer("10.0.0.1"), None);
        assert_eq!(peer("100.128.0.1"), None);
        assert_eq!(peer("::ffff:100.64.0.7"), None);
    }

    #[test]
    fn offers_only_for_exported_ports() {
        let exports = Exports {
            tcp: vec![8000],
            udp: vec![5353],
        };
        let (p, _) = Peers::new("bob", "vpn.internal", exports);
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

    #[test]
    fn interface_addresses_exclude_loopback() {
        let eps = local_endpoints("0.0.0.0:4000".parse().unwrap());
        assert!(
            eps.iter()
                .all(|a| !a.ip().is_loopback() && a.port() == 4000)
        );
        assert_eq!(
            local_endpoints("192.0.2.1:4000".parse().unwrap()),
            vec!["192.0.2.1:4000".parse().unwrap()]
        );
    }
}
