//! The requesting side: ask the gateway for a session ([`Peers::dial`]),
//! try the peer's endpoints directly, else relay through the gateway, and
//! run the handshake over whichever path worked; `shimgate ping` over it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request};
use shimgate_wire::control::{
    Grant, PeerPath, PeerProto, RELAY_PATH, SESSION_HEADER, SESSION_PATH, SessionId, SessionRequest,
};
use shimgate_wire::peerlink::{self, Link, Prologue};
use shimgate_wire::tunnel::TunnelError;
use shimgate_wire::{liveness, splice};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Opened, Peers, boxed_rd, boxed_wr};
use crate::client;

/// All direct attempts of one session together get this long.
pub const DIRECT_TIMEOUT: Duration = Duration::from_millis(800);
/// Head start of each endpoint over the next (the gateway lists the most
/// likely first).
const STAGGER: Duration = Duration::from_millis(150);
/// After a direct attempt to a peer failed, new sessions to it go straight
/// to the relay for this long, then try direct again.
pub const RETRY_DIRECT: Duration = Duration::from_secs(5);
/// How long a grant request may take (it includes the peer's acceptance).
const GRANT_TIMEOUT: Duration = Duration::from_secs(5);

impl Peers {
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

pub(super) async fn open_relay(
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
