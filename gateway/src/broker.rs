//! The peer key broker (patent steps 104–109): who is online for peer
//! sessions, brokering a session key between two devices, and relaying a
//! session's (still encrypted) bytes when the devices can't reach each
//! other. docs/ARCHITECTURE.md "Peer protocol" has the messages and states.
//!
//! Invariants:
//! - A key K exists in the gateway only between [`Broker::request`] making
//!   it and the grant being written: it is never stored in a map, never
//!   logged, and its buffers are wiped when dropped.
//! - A session is granted only after the responder accepted it, and only
//!   if policy allows the requester to reach that port on that device.
//! - A relay joins exactly the two devices of a session, once, before the
//!   session expires.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use shimgate_host::clock;
use shimgate_registry::{NewAudit, Proto, Rule};
use shimgate_wire::control::{
    self, Decoder, DeviceMsg, Exports, GatewayMsg, Grant, PeerProto, SESSION_HEADER, SessionId,
    SessionKey, SessionRequest,
};
use shimgate_wire::splice;
use shimgate_wire::tunnel::TunnelError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::activity::PeerLog;
use crate::auditlog::AuditLog;
use crate::cache::{Cache, CertStatus, Identity};
use crate::policy::{self, Target};

mod decide;

use decide::{Role, Session};

/// How long a granted session may take to start its handshake (or relay).
pub const SESSION_TTL: Duration = Duration::from_secs(10);
/// How long the responder has to accept an offer.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the responder has to open its relay stream.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting for one device's control stream.
const CONTROL_QUEUE: usize = 256;
/// How often online devices are re-checked against revocation, and
/// expired sessions dropped.
const SWEEP: Duration = Duration::from_millis(100);

/// A device with an open control stream.
struct Online {
    device_id: i64,
    fingerprint: String,
    user: String,
    /// Its owner's groups, for `group:NAME` policy destinations.
    groups: Vec<String>,
    vpn_ip: Ipv4Addr,
    /// The address its control stream came from (what NAT shows).
    observed: IpAddr,
    listen_port: u16,
    addrs: Vec<SocketAddr>,
    exports: Exports,
    tx: mpsc::Sender<GatewayMsg>,
    /// Which control stream this entry belongs to (a reconnect replaces it).
    stream: u64,
}

/// A responder's answer to an offer.
type Answer = Result<(), TunnelError>;
/// The responder's half of a relay.
type RelayHalf = (SendStream<Bytes>, RecvStream);

pub struct Broker {
    /// DNS domain of devices (`bob.<vpn_domain>`).
    vpn_domain: String,
    /// The gateway's own address, which policy guards.
    own: SocketAddr,
    /// By device name.
    online: DashMap<String, Online>,
    by_ip: DashMap<Ipv4Addr, String>,
    sessions: DashMap<SessionId, Session>,
    offers: DashMap<SessionId, oneshot::Sender<Answer>>,
    relays: DashMap<SessionId, oneshot::Sender<RelayHalf>>,
    next_stream: AtomicU64,
    /// Bytes the gateway has relayed for peer sessions (all ciphertext).
    pub relayed_bytes: AtomicU64,
    /// Recent sessions and path counts, for the console.
    pub log: PeerLog,
    /// Where session audit entries go.
    pub audit: AuditLog,
}

/// What a device asked for, resolved.
struct PeerTarget {
    name: String,
    vpn_ip: Ipv4Addr,
    groups: Vec<String>,
}

impl Broker {
    pub fn new(vpn_domain: &str, own: SocketAddr, audit: AuditLog) -> Broker {
        Broker {
            vpn_domain: vpn_domain.to_owned(),
            own,
            online: DashMap::new(),
            by_ip: DashMap::new(),
            sessions: DashMap::new(),
            offers: DashMap::new(),
            relays: DashMap::new(),
            next_stream: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
            log: PeerLog::default(),
            audit,
        }
    }

    /// The device `who` wants to reach `req.peer:req.port`. Returns the
    /// grant to send back, or the reason for the SOCKS reply.
    pub async fn request(
        &self,
        who: &Identity,
        from: IpAddr,
        req: &SessionRequest,
        rules: &[Rule],
    ) -> Result<Grant, TunnelError> {
        let domain = self.vpn_domain.as_str();
        let target = self
            .resolve(&req.peer, domain)
            .ok_or(TunnelError::HostUnreachable)?;
        if target.name == who.device_name {
            return Err(TunnelError::Refused);
        }
        let allowed = |port: u16| self.allows(who, &target, rules, port, req.proto);
        let (tx, endpoints) = {
            let peer = self.online.get(&target.name);
            let exports = peer.as_deref().map(|p| &p.exports);
            decide::permit(exports, req.port, req.proto, allowed)?;
            // Online, or `permit` would have refused.
            let Some(peer) = peer else {
                return Err(TunnelError::HostUnreachable);
            };
            let endpoints = decide::endpoints(peer.listen_port, peer.observed, &peer.addrs, from);
            (peer.tx.clone(), endpoints)
        };
        let session = SessionId::random();
        let key = SessionKey::random().map_err(|_| TunnelError::General)?;
        let (answer_tx, answer) = oneshot::channel();
        self.offers.insert(session, answer_tx);
        self.sessions.insert(
            session,
            Session {
                initiator: who.device_name.clone(),
                responder: target.name.clone(),
                port: req.port,
                expires: Instant::now() + SESSION_TTL,
                relayed: false,
            },
        );
        let offer = GatewayMsg::Offer {
            session,
            key: key.clone(),
            from: who.device_name.clone(),
            from_user: who.user_name.clone(),
            port: req.port,
            proto: req.proto,
            expires_in_ms: SESSION_TTL.as_millis() as u64,
        };
        let outcome = match tx.try_send(offer) {
            Ok(()) => match tokio::time::timeout(ACCEPT_TIMEOUT, answer).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => Err(TunnelError::HostUnreachable),
                Err(_) => Err(TunnelError::TimedOut),
            },
            Err(_) => Err(TunnelError::HostUnreachable),
        };
        self.offers.remove(&session);
        if let Err(e) = outcome {
            self.sessions.remove(&session);
            tracing::info!(from = %who.device_name, to = %target.name, port = req.port, reason = %e, "peer session refused by the peer");
            return Err(e);
        }
        tracing::info!(from = %who.device_name, to = %target.name, port = req.port, %session, "peer session granted");
        self.log
            .granted(session, &who.device_name, &target.name, req.port);
        audit(
            &self.audit,
            &who.device_name,
            "peer.session",
            format!("{}:{}", target.name, req.port),
            Some(from),
            format!(
                "granted session {session} (user {}) proto={}",
                who.user_name, req.proto
            ),
        );
        Ok(Grant {
            session,
            key,
            peer: target.name,
            peer_ip: IpAddr::V4(target.vpn_ip),
            port: req.port,
            endpoints,
            expires_in_ms: SESSION_TTL.as_millis() as u64,
        })
    }

    /// Whether policy lets `who` reach `target` on `port` over `proto`.
    fn allows(
        &self,
        who: &Identity,
        target: &PeerTarget,
        rules: &[Rule],
        port: u16,
        proto: PeerProto,
    ) -> bool {
        let fqdn = format!("{}.{}", target.name, self.vpn_domain);
        let t = Target {
            name: Some(&fqdn),
            addr: IpAddr::V4(target.vpn_ip),
            port,
            proto: match proto {
                PeerProto::Tcp => Proto::Tcp,
                PeerProto::Udp => Proto::Udp,
            },
            alias: false,
            peer_groups: Some(&target.groups),
            origin: None,
        };
        policy::allows(rules, who, &t, self.own)
    }

    /// For a name under the VPN domain (`bob.<vpn domain>`; `None` for any
    /// other name), the device's VPN address for `who`'s DNS: its own, or a
    /// peer's that is online and that policy lets `who` reach on one of its
    /// exports (or ping); else host unreachable, and the device hands out
    /// an address standing for the name.
    pub fn peer_address(
        &self,
        who: &Identity,
        name: &str,
        rules: &[Rule],
    ) -> Option<Result<Ipv4Addr, TunnelError>> {
        let device = control::device_in_domain(name, &self.vpn_domain)?;
        Some(
            self.reachable_peer(who, &device, rules)
                .ok_or(TunnelError::HostUnreachable),
        )
    }

    fn reachable_peer(&self, who: &Identity, device: &str, rules: &[Rule]) -> Option<Ipv4Addr> {
        let target = self.resolve(device, &self.vpn_domain)?;
        if target.name == who.device_name {
            return Some(who.vpn_ip);
        }
        let peer = self.online.get(&target.name)?;
        let exports = &peer.exports;
        let reachable = exports
            .tcp
            .iter()
            .map(|p| (*p, PeerProto::Tcp))
            .chain(exports.udp.iter().map(|p| (*p, PeerProto::Udp)))
            .chain(std::iter::once((0, PeerProto::Tcp)))
            .any(|(port, proto)| {
                decide::permit(Some(exports), port, proto, |p| {
                    self.allows(who, &target, rules, p, proto)
                })
                .is_ok()
            });
        reachable.then_some(target.vpn_ip)
    }

    fn resolve(&self, peer: &str, domain: &str) -> Option<PeerTarget> {
        let name = if let Ok(ip) = peer.parse::<Ipv4Addr>() {
            self.by_ip.get(&ip).map(|n| n.value().clone())?
        } else {
            // A bare device name is accepted too (`shimgate ping bob`).
            control::device_in_domain(peer, domain)
                .unwrap_or_else(|| peer.trim_end_matches('.').to_ascii_lowercase())
        };
        let (vpn_ip, groups) = {
            let online = self.online.get(&name)?;
            (online.vpn_ip, online.groups.clone())
        };
        Some(PeerTarget {
            name,
            vpn_ip,
            groups,
        })
    }

    /// Serves one device's control stream until it or its connection ends.
    pub async fn control(
        &self,
        who: Arc<Identity>,
        from: IpAddr,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let Ok(ok) = Response::builder().status(StatusCode::OK).body(()) else {
            return;
        };
        let Ok(mut send) = respond.send_response(ok, false) else {
            return;
        };
        let mut recv = req.into_body();
        let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut decoder = Decoder::default();
        let ended = loop {
            tokio::select! {
                data = recv.data() => {
                    let chunk = match data {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => break format!("control stream failed: {e}"),
                        None => break "control stream closed".to_owned(),
                    };
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    if let Err(e) = decoder.push(&chunk) {
                        break e.to_string();
                    }
                    let mut failed = None;
                    loop {
                        match decoder.message::<DeviceMsg>() {
                            Ok(Some(msg)) => {
                                if let Err(e) = self.on_message(&who, from, msg, &tx, stream) {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { break "control queue closed".to_owned() };
                    let Ok(wire) = control::encode(&msg) else { continue };
                    // Wiped when h2 is done with it: an offer holds a key.
                    if let Err(e) = send.send_data(Bytes::from_owner(wire), false) {
                        break format!("control stream failed: {e}");
                    }
                }
            }
        };
        tracing::info!(device = %who.device_name, reason = %ended, "control stream ended");
        let removed = self
            .online
            .remove_if(&who.device_name, |_, o| o.stream == stream);
        if let Some((_, o)) = removed {
            self.by_ip
                .remove_if(&o.vpn_ip, |_, name| *name == who.device_name);
            tracing::info!(device = %who.device_name, "device offline for peer sessions");
        }
    }

    fn on_message(
        &self,
        who: &Identity,
        from: IpAddr,
        msg: DeviceMsg,
        tx: &mpsc::Sender<GatewayMsg>,
        stream: u64,
    ) -> Result<(), String> {
        match msg {
            DeviceMsg::Announce {
                listen_port,
                addrs,
                exports,
                udp_exports,
            } => {
                decide::announce(&addrs, &exports, &udp_exports)?;
                let exports = Exports {
                    tcp: exports,
                    udp: udp_exports,
                };
                tracing::info!(device = %who.device_name, %exports, listen_port, "device online for peer sessions");
                self.by_ip.insert(who.vpn_ip, who.device_name.clone());
                self.online.insert(
                    who.device_name.clone(),
                    Online {
                        device_id: who.device_id,
                        fingerprint: who.fingerprint.clone(),
                        user: who.user_name.clone(),
                        groups: who.groups.clone(),
                        vpn_ip: who.vpn_ip,
                        observed: from,
                        listen_port,
                        addrs,
                        exports,
                        tx: tx.clone(),
                        stream,
                    },
                );
            }
            DeviceMsg::Accept { session } => self.answer(who, session, Ok(())),
            DeviceMsg::Decline { session, reason } => {
                let e = reason.parse().unwrap_or(TunnelError::Refused);
                self.answer(who, session, Err(e));
            }
            DeviceMsg::Ended {
                session,
                path,
                sent,
                received,
                why,
            } => {
                self.log
                    .ended(session, &who.device_name, path, sent, received);
                let detail = match why {
                    Some(why) => format!(
                        "session {session} ended: {path} ({why}), {sent} bytes sent, {received} received (as the device reports)"
                    ),
                    None => format!(
                        "session {session} ended: {path}, {sent} bytes sent, {received} received (as the device reports)"
                    ),
                };
                audit(
                    &self.audit,
                    &who.device_name,
                    "peer.session.end",
                    String::new(),
                    Some(from),
                    detail,
                );
            }
        }
        Ok(())
    }

    /// Passes an accept/decline on, only from the device the offer went to.
    fn answer(&self, who: &Identity, session: SessionId, answer: Answer) {
        let mine = decide::may_answer(self.sessions.get(&session).as_deref(), &who.device_name);
        if !mine {
            return;
        }
        if let Some((_, waiting)) = self.offers.remove(&session) {
            let _ = waiting.send(answer);
        }
    }

    /// A relay stream for a session: the initiator's waits for the
    /// responder's, then the two are joined.
    pub async fn relay(
        &self,
        who: &Identity,
        req: Request<RecvStream>,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), TunnelError> {
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(SessionId::parse)
            .ok_or(TunnelError::NotAllowed)?;
        let role = {
            let mut s = self.sessions.get_mut(&session);
            decide::relay_role(s.as_deref_mut(), &who.device_name, Instant::now())?
        };
        let ok = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .map_err(|_| TunnelError::General)?;
        match role {
            Role::Responder => {
                let waiting = self
                    .relays
                    .remove(&session)
                    .ok_or(TunnelError::NotAllowed)?
                    .1;
                let send = respond
                    .send_response(ok, false)
                    .map_err(|_| TunnelError::General)?;
                let _ = waiting.send((send, req.into_body()));
                Ok(())
            }
            Role::Initiator { responder, port } => {
                let (half_tx, half) = oneshot::channel();
                self.relays.insert(session, half_tx);
                let asked = self
                    .online
                    .get(&responder)
                    .map(|o| o.tx.clone())
                    .map(|tx| tx.try_send(GatewayMsg::Relay { session }).is_ok())
                    .unwrap_or(false);
                let theirs = if asked {
                    tokio::time::timeout(RELAY_TIMEOUT, half)
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                };
                self.relays.remove(&session);
                let Some(theirs) = theirs else {
                    return Err(TunnelError::HostUnreachable);
                };
                let send = respond
                    .send_response(ok, false)
                    .map_err(|_| TunnelError::General)?;
                tracing::info!(from = %who.device_name, to = %responder, port, %session, "peer session relayed");
                self.log.relaying(session);
                let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
                let joined = splice::join((send, req.into_body()), theirs, &up, &down).await;
                let (up, down) = (up.into_inner(), down.into_inner());
                self.relayed_bytes.fetch_add(up + down, Ordering::Relaxed);
                self.log.relay_ended(session, up, down);
                let how = match joined {
                    Ok(()) => "ended".to_owned(),
                    Err(e) => format!("ended with an error ({e})"),
                };
                tracing::info!(from = %who.device_name, to = %responder, port, %session, up, down, "peer relay {how}");
                audit(
                    &self.audit,
                    &who.device_name,
                    "peer.relay",
                    format!("{responder}:{port}"),
                    None,
                    format!(
                        "session {session} relayed through the gateway: {up} bytes up, {down} down (ciphertext), {how}"
                    ),
                );
                Ok(())
            }
        }
    }

    /// Until `stop`: drops expired sessions, takes devices whose
    /// certificate is no longer valid off the online list, telling every
    /// other online device to cut its links with them, and tells every
    /// online device when policy has changed, so their routes follow.
    pub async fn sweep(self: Arc<Self>, cache: Arc<Cache>, stop: CancellationToken) {
        let mut rules = cache.rules();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP) => {}
                _ = stop.cancelled() => return,
            }
            let now_rules = cache.rules();
            if !Arc::ptr_eq(&now_rules, &rules) && *now_rules != *rules {
                self.tell_everyone(|| GatewayMsg::RoutesChanged);
            }
            rules = now_rules;
            let now = Instant::now();
            self.sessions.retain(|_, s| s.live(now));
            let gone: Vec<(String, u64)> = self
                .online
                .iter()
                .filter(|o| !matches!(cache.status(&o.fingerprint), CertStatus::Active(_)))
                .map(|o| (o.key().clone(), o.stream))
                .collect();
            for (name, stream) in gone {
                if let Some((_, o)) = self.online.remove_if(&name, |_, o| o.stream == stream) {
                    self.by_ip.remove_if(&o.vpn_ip, |_, n| *n == name);
                    tracing::info!(device = %name, device_id = o.device_id, user = %o.user, "device no longer valid: telling its peers to cut their links");
                }
                self.tell_everyone(|| GatewayMsg::PeerGone {
                    device: name.clone(),
                });
            }
        }
    }

    /// Sends a message to every online device (one whose queue is full
    /// misses it).
    fn tell_everyone(&self, msg: impl Fn() -> GatewayMsg) {
        let everyone: Vec<mpsc::Sender<GatewayMsg>> =
            self.online.iter().map(|o| o.tx.clone()).collect();
        for tx in everyone {
            let _ = tx.try_send(msg());
        }
    }

    /// How many devices are online for peer sessions.
    pub fn online(&self) -> usize {
        self.online.len()
    }
}

/// Queues an audit entry (written in the background, see [`AuditLog`]).
fn audit(
    log: &AuditLog,
    actor: &str,
    action: &str,
    target: String,
    source: Option<IpAddr>,
    detail: String,
) {
    log.record(NewAudit {
        at: clock::now(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        source_addr: source.map(|s| s.to_string()),
        detail,
        gateway: None,
    });
}
