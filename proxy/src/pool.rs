//! The long-lived mTLS HTTP/2 connections to the gateway, and opening a
//! tunnel on one of them.
//!
//! Each slot holds at most one connection. A background task per slot keeps
//! it up, reconnecting with exponential backoff. A tunnel request that finds
//! its slot down does not wait for the backoff: it connects at once, so new
//! SOCKS connections work again as soon as the gateway is back. Tunnels are
//! spread over the slots so bulk transfers use more than one core.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use shimgate_wire::dest::Destination;
use shimgate_wire::origin::{ORIGIN_HEADER, Origin};
use shimgate_wire::tunnel::{BOUND_HEADER, TunnelError};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientError, Connection, StreamError};
use crate::status::Board;
use shimgate_host::workers::Workers;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Where and how to reach the gateway. The TLS config is swapped when the
/// certificate is renewed.
pub struct Connector {
    pub addr: String,
    pub name: ServerName<'static>,
    tls: RwLock<Arc<ClientConfig>>,
}

impl Connector {
    pub fn new(addr: String, name: ServerName<'static>, tls: Arc<ClientConfig>) -> Connector {
        Connector {
            addr,
            name,
            tls: RwLock::new(tls),
        }
    }

    pub fn set_tls(&self, tls: Arc<ClientConfig>) {
        match self.tls.write() {
            Ok(mut t) => *t = tls,
            Err(poisoned) => *poisoned.into_inner() = tls,
        }
    }

    fn tls(&self) -> Arc<ClientConfig> {
        match self.tls.read() {
            Ok(t) => Arc::clone(&t),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Connection>>,
}

/// What a caller takes from a slot's live connection.
struct Handles {
    send: SendRequest<Bytes>,
    closed: CancellationToken,
    /// Keys the UDP channels of associations opened with `send`.
    channel: Option<Arc<client::ChannelBase>>,
}

impl Handles {
    fn of(conn: &Connection) -> Handles {
        Handles {
            send: conn.send.clone(),
            closed: conn.closed.clone(),
            channel: conn.channel.clone(),
        }
    }
}

/// An open tunnel: the two halves of its HTTP/2 stream, and where the
/// gateway dialled from.
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub bound: Option<SocketAddr>,
}

/// Slot `i` and everything that uses it run on worker `i % workers`, so a
/// tunnel's SOCKS socket, its stream and the TLS connection under it share
/// one thread.
pub struct Pool {
    connector: Arc<Connector>,
    slots: Vec<Slot>,
    next: AtomicUsize,
    board: Arc<Board>,
    workers: Workers,
}

impl Pool {
    pub fn new(
        connector: Arc<Connector>,
        size: usize,
        board: Arc<Board>,
        workers: Workers,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            board,
            workers,
        })
    }

    /// The slot for the next tunnel, round robin.
    pub fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// A slot that lives on `worker`, round robin among them (any slot if
    /// the pool is smaller than the number of workers).
    pub fn pick_for(&self, worker: usize) -> usize {
        let (w, n) = (self.workers.len(), self.slots.len());
        let worker = worker % w;
        if worker >= n {
            return self.pick();
        }
        let mine = (n - worker).div_ceil(w);
        worker + (self.next.fetch_add(1, Ordering::Relaxed) % mine) * w
    }

    /// Runs `task` on the worker thread of slot `i`.
    pub fn spawn_on<F>(&self, i: usize, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.workers.spawn_on(i, task);
    }

    pub fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    /// Starts one keeper task per slot; they end when `stop` fires.
    pub fn keep_up(self: &Arc<Self>, stop: CancellationToken) {
        for i in 0..self.slots.len() {
            let pool = Arc::clone(self);
            let stop = stop.clone();
            self.workers
                .spawn_on(i, async move { pool.keeper(i, stop).await });
        }
    }

    async fn keeper(&self, i: usize, stop: CancellationToken) {
        let mut backoff = BACKOFF_START;
        loop {
            let closed = match self.connection(i).await {
                Ok(h) => h.closed,
                Err(e) => {
                    // Once per change: a gateway that stays away must not flood the log.
                    let text = e.to_string();
                    if self.board.snapshot().last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(gateway = %self.connector.addr, slot = i, error = %text, "cannot connect to the gateway");
                    }
                    self.board.update(|s| s.last_error = Some(text));
                    tokio::select! {
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let up_since = tokio::time::Instant::now();
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = stop.cancelled() => return,
            }
            // A connection that drops at once (e.g. refused after the
            // handshake) must not make us reconnect in a tight loop.
            if up_since.elapsed() >= STABLE {
                backoff = BACKOFF_START;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// The slot's connection, connecting first if it is down.
    async fn connection(&self, i: usize) -> Result<Handles, ClientError> {
        let slot = &self.slots[i % self.slots.len()];
        let mut live = slot.live.lock().await;
        if let Some(conn) = live.as_ref()
            && !conn.closed.is_cancelled()
        {
            return Ok(Handles::of(conn));
        }
        let was_live = live.take().is_some();
        if was_live {
            self.board.update(|s| s.live = s.live.saturating_sub(1));
        }
        let (conn, me) = client::connect_device(
            &self.connector.addr,
            self.connector.name.clone(),
            self.connector.tls(),
        )
        .await?;
        tracing::info!(gateway = %self.connector.addr, device = %me.device_name, slot = i, "gateway connected");
        let handles = Handles::of(&conn);
        let board = Arc::clone(&self.board);
        let (closed, end) = (conn.closed.clone(), conn.end());
        let addr = self.connector.addr.clone();
        tokio::spawn(async move {
            closed.cancelled().await;
            tracing::warn!(gateway = %addr, slot = i, why = %end.describe(), "gateway connection ended");
        });
        *live = Some(conn);
        drop(live);
        board.update(|s| {
            s.live += 1;
            s.last_error = None;
        });
        Ok(handles)
    }

    /// Any live connection, for control calls such as renewal.
    pub async fn any_connection(&self) -> Result<SendRequest<Bytes>, ClientError> {
        self.slot_connection(self.pick()).await
    }

    /// Slot `i`'s connection, connecting if it is down (work on its streams
    /// belongs on the slot's worker: [`Pool::spawn_on`]).
    pub async fn slot_connection(&self, i: usize) -> Result<SendRequest<Bytes>, ClientError> {
        self.connection(i).await.map(|h| h.send)
    }

    /// Slot `i`'s connection, for a request of its own (peer sessions).
    pub async fn sender(&self, i: usize) -> Result<SendRequest<Bytes>, TunnelError> {
        self.handles(i).await.map(|h| h.send)
    }

    /// Slot `i`'s connection, for a UDP association: what opens its stream
    /// and, from the same connection, what keys its channel.
    pub(crate) async fn datagram_carrier(
        &self,
        i: usize,
    ) -> Result<(SendRequest<Bytes>, Option<Arc<client::ChannelBase>>), TunnelError> {
        self.handles(i).await.map(|h| (h.send, h.channel))
    }

    /// Slot `i`'s connection, its failure as a tunnel error.
    async fn handles(&self, i: usize) -> Result<Handles, TunnelError> {
        self.connection(i).await.map_err(|e| {
            tracing::warn!(error = %e, "no connection to the gateway");
            tunnel_error(&e)
        })
    }

    /// Asks the gateway, on slot `i`'s connection, for a tunnel to `dest`
    /// for a program `origin` describes. Call it on that slot's worker.
    pub async fn open(
        &self,
        i: usize,
        dest: &Destination,
        origin: &Origin,
    ) -> Result<Tunnel, TunnelError> {
        // A pooled connection may have died since it was last used: one retry
        // on a fresh connection.
        for attempt in 0..2 {
            let Handles { send, closed, .. } = self.handles(i).await?;
            let req = Request::builder()
                .method(Method::CONNECT)
                .uri(dest.to_string())
                .header(ORIGIN_HEADER, origin.encode())
                .body(())
                .map_err(|_| TunnelError::AddressNotSupported)?;
            match client::open_stream(send, req, None).await {
                Ok((response, send)) => {
                    let bound = response
                        .headers()
                        .get(BOUND_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    return Ok(Tunnel {
                        send,
                        recv: response.into_body(),
                        bound,
                    });
                }
                Err(StreamError::Refused(e)) => return Err(e),
                Err(StreamError::Broken(e)) => {
                    tracing::debug!(error = %e, attempt, "gateway connection failed under a request");
                    // Mark *this* connection dead; if another request already
                    // replaced it in the slot, the replacement is untouched.
                    closed.cancel();
                }
            }
        }
        Err(TunnelError::General)
    }
}

/// `d` give or take half: devices that lost the gateway together don't all
/// come back in the same instant.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..1.5))
}

/// What a SOCKS client is told when the gateway can't be reached.
fn tunnel_error(e: &ClientError) -> TunnelError {
    match e {
        ClientError::Revoked | ClientError::Expired | ClientError::Rejected(_) => {
            TunnelError::NotAllowed
        }
        _ => TunnelError::General,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_within_half_either_way() {
        let d = Duration::from_secs(1);
        let samples: Vec<Duration> = (0..1000).map(|_| jitter(d)).collect();
        assert!(samples.iter().all(|s| *s >= d / 2 && *s < d * 3 / 2));
        let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
        assert!(*hi - *lo > d / 2, "jitter barely spreads: {lo:?}..{hi:?}");
    }
}
