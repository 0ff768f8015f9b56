//! The gateway's listener: accepts TCP, does the TLS handshake, reads the
//! device identity from the verified certificate, runs HTTP/2 on the
//! connection and dispatches each stream: `CONNECT` opens a tunnel, the
//! enrollment paths go to [`crate::enroll`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use shimgate_host::clock;
use shimgate_registry::Registry;
use shimgate_wire::control::{self, CONTROL_PATH, RELAY_PATH, SESSION_PATH, SessionRequest};
use shimgate_wire::datagram::UDP_PATH;
use shimgate_wire::dest::{Destination, Host};
use shimgate_wire::dns::DNS_PATH;
use shimgate_wire::enroll::{
    ENROLL_PATH, RENEW_PATH, RESOLVE_PATH, ROUTES_PATH, ResolveRequest, Resolved, WHOAMI_PATH,
    WhoAmI,
};
use shimgate_wire::ping::PING_PATH;
use shimgate_wire::tunnel::{BOUND_HEADER, TunnelError};
use shimgate_wire::udpchannel::ConnSecret;
use shimgate_wire::{h2tuning, pki, splice};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cache::{CertStatus, Identity};
use crate::ratelimit::Place;
use crate::respond::{read_body, refuse, send_error, send_json};
use crate::setup::Gateway;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS connections the gateway holds at once by default (each device keeps a
/// few; tunnels are streams inside them and don't count): `serve
/// --max-connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Connections one source address may have open without a device
/// certificate (still in the TLS handshake, or enrolling). A flood from one
/// address then cannot take the connection limit from everybody; a NAT with
/// many devices behind it is unaffected, as a device's connection leaves the
/// count once its certificate is checked (milliseconds after it connects).
pub const UNAUTHENTICATED_PER_ADDRESS: usize = 256;
/// Streams a client without a certificate may have open (it may only enroll).
const ANONYMOUS_STREAMS: u32 = 4;
/// How long a connection without a certificate may stay.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);
/// How long a stopping gateway waits for buffered audit entries to be written.
const AUDIT_FLUSH_AT_STOP: Duration = Duration::from_secs(3);

impl Gateway {
    /// Accepts connections until `stop` fires, then writes out buffered audit
    /// entries. Keeps the cached registry view fresh meanwhile.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        tokio::spawn(crate::cache::refresh(
            Arc::clone(&self.cache),
            self.registry.clone(),
            stop.clone(),
        ));
        tokio::spawn(Arc::clone(&self.broker).sweep(Arc::clone(&self.cache), stop.clone()));
        tokio::spawn(crate::heartbeat::run(Arc::clone(&self), stop.clone()));
        tokio::spawn(crate::servercert::keep_renewed(
            Arc::clone(&self),
            stop.clone(),
        ));
        match listener
            .local_addr()
            .and_then(crate::udpchannel::Channels::bind)
        {
            Ok(channels) => {
                tracing::info!(
                    port = channels.port(),
                    "UDP channel port open (device datagrams as UDP; over the TLS connection where it is blocked)"
                );
                tokio::spawn(Arc::clone(&channels).receive(stop.clone()));
                let _ = self.channels.set(channels);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no UDP port beside the TLS listener: device datagrams ride the TLS connection")
            }
        }
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => break,
            };
            match accepted {
                Ok((sock, peer)) => {
                    let Some(slot) = self.unauthenticated.take(peer.ip()) else {
                        self.refuse_per_address(peer);
                        continue;
                    };
                    let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                        tracing::warn!(%peer, limit = self.max_connections, "connection limit reached: refusing (serve --max-connections)");
                        continue;
                    };
                    metrics::counter!("shimgate_connections_total").increment(1);
                    let gw = Arc::clone(&self);
                    let stop = stop.clone();
                    let worker = self.workers.pick();
                    self.workers.spawn_on(worker, async move {
                        let _permit = permit;
                        gw.connection(sock, peer, stop, slot).await
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Peer-session entries still buffered reach the registry before the process ends.
        self.broker.audit.flush(AUDIT_FLUSH_AT_STOP).await;
    }

    /// The registry this gateway serves from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A call of `who` that asks the gateway to do some work for it (look
    /// a name up, ping): admitted as a tunnel, within the same limits, and
    /// its body read (at most `limit`). `None` when refused, answered here.
    pub(crate) async fn admit_call(
        &self,
        req: Request<RecvStream>,
        respond: &mut SendResponse<Bytes>,
        who: &Identity,
        limit: usize,
    ) -> Option<Call> {
        let place = match self.admit_tunnel(who) {
            Ok(p) => p,
            Err(e) => {
                refuse(respond, e);
                return None;
            }
        };
        let origin = crate::auditlog::origin_of(&req);
        let mut body = req.into_body();
        let body = read_body(&mut body, limit).await.ok();
        Some(Call {
            _place: place,
            origin,
            body,
        })
    }

    /// A new tunnel or UDP association of `who`, within its device's limits:
    /// its place among the device's open ones (given back on drop), or the
    /// refusal.
    pub(crate) fn admit_tunnel(&self, who: &Identity) -> Result<Place<i64>, TunnelError> {
        if !self.lease.held() {
            return Err(TunnelError::RegistryLost);
        }
        if !self.device_tunnels.allow(who.device_id) {
            self.refuse_over_limit(who, "tunnels_per_second", "serve --tunnels-per-second");
            return Err(TunnelError::OverLimit);
        }
        self.device_open.take(who.device_id).ok_or_else(|| {
            self.refuse_over_limit(who, "open_tunnels", "serve --max-tunnels-per-device");
            TunnelError::OverLimit
        })
    }

    /// Counts a refusal for a device limit and logs it at doubling counts (a
    /// flood must not flood the log).
    pub(crate) fn refuse_over_limit(
        &self,
        who: &Identity,
        limit: &'static str,
        flag: &'static str,
    ) {
        metrics::counter!("shimgate_device_limit_refusals_total", "limit" => limit).increment(1);
        let n = self
            .over_limit
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n.is_power_of_two() {
            tracing::warn!(device = %who.device_name, user = %who.user_name, limit, flag, refused_so_far = n,
                "a device is over its limit: refusing");
        }
    }

    /// A connection over [`UNAUTHENTICATED_PER_ADDRESS`]: closed at once,
    /// counted, and logged at doubling counts (a flood must not flood the log).
    fn refuse_per_address(&self, peer: SocketAddr) {
        metrics::counter!("shimgate_connections_refused_total", "reason" => "per_address")
            .increment(1);
        let n = self
            .refused_per_address
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n.is_power_of_two() {
            tracing::warn!(%peer, limit = UNAUTHENTICATED_PER_ADDRESS, refused_so_far = n,
                "too many connections without a device certificate from one address: refusing");
        }
    }

    /// One TLS connection. `unauthenticated` is its place under the
    /// per-address cap, given back once a device certificate is checked.
    async fn connection(
        self: Arc<Self>,
        sock: TcpStream,
        peer: SocketAddr,
        stop: CancellationToken,
        unauthenticated: Place,
    ) {
        shimgate_wire::liveness::prepare(&sock);
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        // A load balancer's TCP health check connects and closes without a
        // byte: not worth an on-call admin's attention, only a count.
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout_at(deadline, sock.peek(&mut [0u8; 1])).await
        {
            tracing::debug!(%peer, "connection closed before sending anything (a health check?)");
            metrics::counter!("shimgate_silent_connections_total").increment(1);
            return;
        }
        let buffered = tokio::io::BufReader::with_capacity(h2tuning::TLS_READ_BUFFER, sock);
        let accept = self.tls.accept(buffered).into_fallible();
        let tls = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err((e, sock))) => {
                tracing::info!(%peer, error = %e, "TLS handshake refused");
                metrics::counter!("shimgate_handshake_failures_total", "reason" => "tls")
                    .increment(1);
                linger(sock.into_inner()).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                metrics::counter!("shimgate_handshake_failures_total", "reason" => "timeout")
                    .increment(1);
                return;
            }
        };
        // The verifier already checked the certificate; check again here so
        // that no path (e.g. a resumed session) skips the registry.
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| pki::fingerprint(c));
        // Registered before the status check, so a revocation landing in
        // between still finds (and cuts) this connection.
        let cancel = stop.child_token();
        // Keys this connection's UDP channels; derived here, as the TLS
        // state moves into HTTP/2 below.
        let secret = ConnSecret::export(tls.get_ref().1).map(Arc::new);
        let _live = presented
            .as_ref()
            .map(|fp| self.cache.register(fp, cancel.clone()));
        // The verifier refused a superseded certificate during the
        // handshake (with an alert the device reports); one superseded since
        // then, by its renewal's first use racing this handshake, is let in
        // as a connection already open is, rather than cut without a word.
        let ident = match presented {
            None => None,
            Some(fp) => match self.cache.status(&fp) {
                CertStatus::Active(id) => Some(id),
                _ => {
                    tracing::info!(%peer, fingerprint = %fp, "certificate not valid (revoked or unknown)");
                    metrics::counter!("shimgate_handshake_failures_total", "reason" => "certificate").increment(1);
                    return;
                }
            },
        };
        let _unauthenticated = match ident {
            Some(_) => None,
            None => Some(unauthenticated),
        };
        let _online = ident
            .as_ref()
            .and_then(|id| self.device_connections.take(id.device_id));
        if let Some(id) = &ident {
            tracing::info!(%peer, device = %id.device_name, user = %id.user_name, "device connected");
            let (registry, device_id, gateway) = (
                self.registry.clone(),
                id.device_id,
                self.config.name().to_owned(),
            );
            let supersede = self
                .cache
                .renewed(device_id)
                .then(|| id.fingerprint.clone());
            tokio::spawn(async move {
                if let Err(e) = registry
                    .touch_device(device_id, clock::now(), &gateway)
                    .await
                {
                    tracing::debug!(error = %e, "could not record last-seen");
                }
                // A renewed certificate in use: the older ones may no longer connect.
                if let Some(fp) = supersede {
                    match registry
                        .supersede_older_certificates(&fp, clock::now())
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            device_id,
                            superseded = n,
                            "a renewed certificate is in use: older ones refused from now on"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not supersede older certificates; retried at the next connection")
                        }
                    }
                }
            });
        }
        let mut builder = h2::server::Builder::new();
        builder
            .max_header_list_size(h2tuning::MAX_HEADER_LIST)
            .max_send_buffer_size(h2tuning::CHUNK * 4);
        // Without a certificate a client may only enroll: a few streams, for
        // a short while, with HTTP/2's default (small) frames and windows,
        // so that what it can make the gateway buffer stays small.
        let deadline = match ident {
            Some(_) => {
                builder
                    .max_concurrent_streams(h2tuning::MAX_STREAMS)
                    .initial_window_size(h2tuning::STREAM_WINDOW)
                    .initial_connection_window_size(h2tuning::CONNECTION_WINDOW)
                    .max_frame_size(h2tuning::MAX_FRAME);
                None
            }
            None => {
                builder.max_concurrent_streams(ANONYMOUS_STREAMS);
                Some(tokio::time::Instant::now() + ANONYMOUS_LIFETIME)
            }
        };
        let handshake = builder.handshake::<_, Bytes>(tls);
        let mut h2 = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "HTTP/2 handshake failed");
                metrics::counter!("shimgate_handshake_failures_total", "reason" => "http2")
                    .increment(1);
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "HTTP/2 handshake timed out");
                return;
            }
        };
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                next = h2.accept() => match next {
                    Some(Ok((req, respond))) => {
                        let gw = Arc::clone(&self);
                        let ident = ident.clone();
                        let secret = secret.clone();
                        tokio::spawn(async move { gw.request(req, respond, ident, peer, secret.as_deref()).await });
                    }
                    Some(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                        break;
                    }
                    None => break,
                },
                _ = &mut expired => {
                    tracing::info!(%peer, "closing an enrollment connection that stayed too long");
                    break;
                }
                _ = cancel.cancelled() => {
                    if let Some(id) = &ident {
                        tracing::info!(%peer, device = %id.device_name, "closing connection: certificate revoked or gateway stopping");
                    }
                    break;
                }
            }
        }
        if let Some(id) = &ident {
            tracing::info!(%peer, device = %id.device_name, "device disconnected");
        }
    }

    async fn request(
        self: Arc<Self>,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        ident: Option<Arc<Identity>>,
        peer: SocketAddr,
        secret: Option<&ConnSecret>,
    ) {
        // The rights of a connection are re-read for every stream: a group
        // change or an expiry applies to connections already open.
        let ident = match ident {
            Some(id) => match self.cache.status(&id.fingerprint) {
                CertStatus::Active(now) => Some(now),
                _ => return refuse(&mut respond, TunnelError::NotAllowed),
            },
            None => None,
        };
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str(), ident) {
            (Method::POST, ENROLL_PATH, _) if !self.enroll_limit.allow(peer.ip()) => {
                tracing::info!(%peer, "enrollment attempts from this address are rate limited");
                send_error(
                    &mut respond,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many enrollment attempts from this address: wait a minute and try again",
                )
            }
            (Method::POST, ENROLL_PATH, _) => {
                crate::enroll::enroll(&self, req, respond, peer).await
            }
            (Method::CONNECT, _, Some(id)) => self.tunnel(req, respond, &id).await,
            (Method::POST, CONTROL_PATH, Some(id)) => {
                self.broker.control(id, peer.ip(), req, respond).await
            }
            (Method::POST, UDP_PATH, Some(id)) => self.udp(req, respond, &id, secret).await,
            (Method::POST, SESSION_PATH, Some(id)) => {
                self.peer_session(req, respond, &id, peer).await
            }
            (Method::POST, RELAY_PATH, Some(id)) => {
                if let Err(e) = self.broker.relay(&id, req, &mut respond).await {
                    tracing::info!(device = %id.device_name, reason = %e, "peer relay refused");
                    refuse(&mut respond, e);
                }
            }
            (Method::POST, RENEW_PATH, Some(id)) => {
                crate::enroll::renew(&self, req, respond, &id, peer).await
            }
            (Method::GET, WHOAMI_PATH, Some(id)) => {
                let me = WhoAmI {
                    device_name: id.device_name.clone(),
                    user: id.user_name.clone(),
                    vpn_ip: id.vpn_ip.to_string(),
                };
                send_json(&mut respond, StatusCode::OK, &me);
            }
            (Method::POST, RESOLVE_PATH, Some(id)) => self.resolve(req, respond, &id).await,
            (Method::POST, PING_PATH, Some(id)) => self.ping(req, respond, &id).await,
            (Method::POST, DNS_PATH, Some(id)) => self.dns(req, respond, &id).await,
            (Method::GET, ROUTES_PATH, Some(id)) => {
                let rules = self.cache.rules();
                let mut routes = crate::policy::routes(&rules, &id);
                // An alias reached through a CIDR rule is a name only the
                // gateway knows; one any program may reach is a route.
                let any_program = crate::policy::for_any_program(&rules);
                routes
                    .domains
                    .extend(self.dialer.allowed_aliases(&id, None, &any_program));
                routes.domains.sort();
                routes.domains.dedup();
                send_json(&mut respond, StatusCode::OK, &routes);
            }
            (_, _, None) => send_error(
                &mut respond,
                StatusCode::UNAUTHORIZED,
                "a device certificate is required: enroll this device first (`shimgate enroll CODE`)",
            ),
            _ => send_error(&mut respond, StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    async fn tunnel(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
    ) {
        let dest = match req.uri().authority().map(Destination::from_authority) {
            Some(Ok(d)) => d,
            _ => return refuse(&mut respond, TunnelError::AddressNotSupported),
        };
        let _place = match self.admit_tunnel(who) {
            Ok(p) => p,
            Err(e) => return refuse(&mut respond, e),
        };
        let origin = crate::auditlog::origin_of(&req);
        let started = std::time::Instant::now();
        let rules = self.cache.rules();
        let sock = match self.dialer.dial(who, origin.as_ref(), &rules, &dest).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(device = %who.device_name, %dest, reason = %e, "tunnel refused");
                return refuse(&mut respond, e);
            }
        };
        let mut ok = Response::builder().status(StatusCode::OK);
        if let Ok(bound) = sock.local_addr() {
            ok = ok.header(BOUND_HEADER, bound.to_string());
        }
        let Ok(response) = ok.body(()) else { return };
        let send = match respond.send_response(response, false) {
            Ok(s) => s,
            Err(e) => {
                return tracing::debug!(error = %e, "device went away before the tunnel opened");
            }
        };
        tracing::debug!(device = %who.device_name, %dest, "tunnel open");
        let _open = self.tunnels.open(&who.device_name, &dest.to_string());
        metrics::counter!("shimgate_streams_total").increment(1);
        let moved = match splice::splice(sock, send, req.into_body()).await {
            Ok(moved) => {
                metrics::counter!("shimgate_bytes_total", "direction" => "up").increment(moved.up);
                metrics::counter!("shimgate_bytes_total", "direction" => "down")
                    .increment(moved.down);
                tracing::debug!(device = %who.device_name, %dest, up = moved.up, down = moved.down, "tunnel closed");
                format!("proto=tcp up={} down={}", moved.up, moved.down)
            }
            Err(e) => {
                tracing::debug!(device = %who.device_name, %dest, error = %e, "tunnel ended with an error");
                format!("proto=tcp error={e}")
            }
        };
        let flow = crate::auditlog::Flow {
            who,
            action: "tunnel",
            target: dest.to_string(),
            origin,
            moved,
            started,
        };
        self.broker.audit.record(flow.entry());
    }
}

/// An admitted call ([`Gateway::admit_call`]).
pub(crate) struct Call {
    /// Its place among the device's tunnels, held while it is answered.
    _place: Place<i64>,
    /// The program it is for, as the device said.
    pub origin: Option<shimgate_wire::origin::Origin>,
    /// `None` when it was too large, cut off or too slow.
    pub body: Option<Vec<u8>>,
}

impl Gateway {
    /// `POST /v1/resolve`: whether a name exists, under policy; for a
    /// reachable device's name, its VPN address.
    async fn resolve(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
    ) {
        // A lookup costs the resolver as a tunnel does: the same limits.
        let Some(call) = self
            .admit_call(req, &mut respond, who, shimgate_wire::enroll::MAX_BODY)
            .await
        else {
            return;
        };
        let origin = call.origin.as_ref();
        let asked = call
            .body
            .and_then(|b| serde_json::from_slice::<ResolveRequest>(&b).ok());
        let name = asked.and_then(|a| match Host::parse(&a.name) {
            Ok(Host::Name(n)) => Some(n),
            _ => None,
        });
        let Some(name) = name else {
            return send_error(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "give a host name to resolve",
            );
        };
        let rules = self.cache.rules();
        // A device's name is the broker's to answer, never asked of DNS.
        let found = match self.broker.peer_address(who, &name, &rules) {
            Some(peer) => peer.map(Some),
            None => self
                .dialer
                .exists(who, origin, &rules, &name)
                .await
                .map(|()| None),
        };
        let resolved = match found {
            Ok(vpn_ip) => Resolved {
                answer: "exists".to_owned(),
                vpn_ip,
            },
            Err(e) => {
                tracing::debug!(device = %who.device_name, %name, reason = %e, "name not handed a fake address");
                Resolved {
                    answer: e.as_str().to_owned(),
                    vpn_ip: None,
                }
            }
        };
        send_json(&mut respond, StatusCode::OK, &resolved);
    }

    /// `POST /v1/peer/session`: broker a session, answer with the grant.
    async fn peer_session(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
        peer: SocketAddr,
    ) {
        let mut body = req.into_body();
        let wanted = read_body(&mut body, control::MAX_MESSAGE)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<SessionRequest>(&b).ok());
        let Some(wanted) = wanted else {
            return send_error(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "malformed peer session request",
            );
        };
        if !self.lease.held() {
            return refuse(&mut respond, TunnelError::RegistryLost);
        }
        if !self.device_peer_sessions.allow(who.device_id) {
            self.refuse_over_limit(
                who,
                "peer_sessions_per_second",
                "serve --peer-sessions-per-second",
            );
            return refuse(&mut respond, TunnelError::OverLimit);
        }
        let rules = self.cache.rules();
        let granted = self.broker.request(who, peer.ip(), &wanted, &rules).await;
        let grant = match granted {
            Ok(g) => g,
            Err(e) => return refuse(&mut respond, e),
        };
        let Ok(json) = control::to_json(&grant) else {
            return refuse(&mut respond, TunnelError::General);
        };
        // The key leaves the gateway here; `grant` and `json` wipe their
        // copies when dropped.
        drop(grant);
        let Ok(resp) = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(())
        else {
            return;
        };
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(Bytes::from_owner(json), true);
        }
    }
}

/// After a refused handshake the alert is on its way, but the client may
/// still be writing its last flight. Closing at once would answer that with
/// a TCP reset, which can destroy the alert before the client reads it;
/// so half-close and drain briefly, and the client learns *why* (e.g.
/// "certificate revoked").
async fn linger(mut sock: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = sock.shutdown().await;
    let mut sink = [0u8; 1024];
    let drain = async {
        while let Ok(n) = sock.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}
