//! The peer listener, open only while this device has something to answer
//! (an exported service): a device that exports nothing listens on no port.
//! Its address is `peer_listen` in config.toml or `up --peer-listen`
//! (firewalls and NAT rules need a fixed port); with port 0 the port the
//! system picks first is kept for the life of `up`, so a closed and reopened
//! listener comes back where peers knew it. Also what every listener of
//! `up` shares: a port shared by several workers, and the accept loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::peer::Peers;
use crate::pool::Pool;
use crate::status::Board;

/// How long a listener waits after a failed accept (out of descriptors,
/// say) before it tries again, rather than spinning.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Accepts with `accept` until `stop`, handing each accepted connection to
/// `each`; a failed accept is logged (naming listener `what`) and retried.
pub(crate) async fn accept_until<S, F>(
    what: &'static str,
    stop: &CancellationToken,
    mut accept: impl FnMut() -> F,
    mut each: impl FnMut(S),
) where
    F: std::future::Future<Output = std::io::Result<S>>,
{
    loop {
        let accepted = tokio::select! {
            a = accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok(s) => each(s),
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// A listener on `addr` that other listeners of this process share
/// (SO_REUSEPORT: the kernel spreads connections over them).
pub(crate) fn shared_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

struct Open {
    bound: SocketAddr,
    stop: CancellationToken,
}

pub struct PeerListener {
    wanted: SocketAddr,
    advertise: Vec<SocketAddr>,
    peers: Arc<Peers>,
    pool: Arc<Pool>,
    board: Arc<Board>,
    stop: CancellationToken,
    open: Mutex<Option<Open>>,
    /// The port a `:0` address got the first time, reused after.
    port: Mutex<u16>,
}

impl PeerListener {
    pub fn new(
        wanted: SocketAddr,
        advertise: Vec<SocketAddr>,
        peers: Arc<Peers>,
        pool: Arc<Pool>,
        board: Arc<Board>,
        stop: CancellationToken,
    ) -> Arc<PeerListener> {
        Arc::new(PeerListener {
            port: Mutex::new(wanted.port()),
            wanted,
            advertise,
            peers,
            pool,
            board,
            stop,
            open: Mutex::new(None),
        })
    }

    /// Opens the listener if this device exports something, closes it if
    /// not. An error leaves it closed (peers then reach this device only
    /// through the gateway's relay).
    pub fn follow_exports(&self) -> std::io::Result<()> {
        let exporting = !self.peers.exports().is_empty();
        let mut open = match self.open.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (exporting, open.as_ref()) {
            (true, None) => {
                let at = self.bind_addr();
                let bound = self.start(at)?;
                tracing::info!(addr = %bound.bound, "peer listener up");
                self.board
                    .update(|s| s.peer_listen = Some(bound.bound.to_string()));
                *open = Some(bound);
            }
            (false, Some(o)) => {
                o.stop.cancel();
                tracing::info!(addr = %o.bound, "peer listener closed: nothing exported");
                self.board.update(|s| s.peer_listen = None);
                *open = None;
            }
            _ => {}
        }
        Ok(())
    }

    fn bind_addr(&self) -> SocketAddr {
        let port = self.port.lock().map(|p| *p).unwrap_or(0);
        SocketAddr::new(self.wanted.ip(), port)
    }

    /// One listener per worker on the same port (SO_REUSEPORT), as for
    /// SOCKS: a peer's link, and the local service it reaches, stay on one
    /// thread.
    fn start(&self, at: SocketAddr) -> std::io::Result<Open> {
        let first = shared_listener(at)?;
        let bound = first.local_addr()?;
        let mut listeners = vec![first.into_std()?];
        for _ in 1..self.pool.workers() {
            listeners.push(shared_listener(bound)?.into_std()?);
        }
        if let Ok(mut p) = self.port.lock() {
            *p = bound.port();
        }
        let stop = self.stop.child_token();
        for (worker, listener) in listeners.into_iter().enumerate() {
            let (peers, stop) = (Arc::clone(&self.peers), stop.clone());
            self.pool.spawn_on(worker, async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => peers.listen(l, stop).await,
                    Err(e) => tracing::error!(error = %e, "peer listener lost"),
                }
            });
        }
        Ok(Open { bound, stop })
    }

    /// What the control stream announces: the listening port and the
    /// addresses peers may try, or port 0 and none while closed.
    pub fn endpoints(&self) -> (u16, Vec<SocketAddr>) {
        let open = match self.open.lock() {
            Ok(o) => o,
            Err(poisoned) => poisoned.into_inner(),
        };
        match open.as_ref() {
            Some(o) => {
                let mut addrs = crate::peer::local_endpoints(o.bound);
                addrs.extend(self.advertise.iter().copied());
                (o.bound.port(), addrs)
            }
            None => (0, Vec::new()),
        }
    }
}
