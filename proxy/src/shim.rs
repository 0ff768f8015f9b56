//! The shim socket: `up`'s side of the socket shim (`shimgate run`). The
//! preload library in a program asks here, one request per connection, for
//! the split, for a VPN name's fake addresses, and to carry a connection.
//!
//! A connection is carried as [`crate::hold`] describes: the program's
//! socket waits at the hold address while the way to the destination opens
//! ([`crate::flow`], the same as for a SOCKS client); the answer goes back
//! on the request's connection, then the program's socket is completed (or
//! reset) from the hold address and spliced to the tunnel.
//!
//! Who asks is known from the socket (SO_PEERCRED: uid and pid, and the
//! program from `/proc`), and logged with every flow. The socket is in the
//! config directory (0700), created 0600: only the device's user can use it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shimgate_wire::dest::{Destination, Host};
use shimgate_wire::enroll::{RESOLVE_PATH, ResolveRequest, Resolved};
use shimgate_wire::origin::{self, Origin};
use shimgate_wire::shimsock::{MAX_LINE, Reply, Request, Split};
use shimgate_wire::tunnel::TunnelError;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::fakeaddr::{FAKE_V4, FAKE_V6, FakeMap};
use crate::hold::Hold;
use crate::pac::Pac;
use crate::peer::Peers;
use crate::pool::Pool;
use crate::status::{Board, ShimCounts};

/// A program has this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway has this long to say whether a name exists.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the shim socket's requests need.
pub struct Shim {
    pub pool: Arc<Pool>,
    pub peers: Arc<Peers>,
    pub pac: Arc<Pac>,
    pub fake: FakeMap,
    pub hold: Hold,
    pub board: Arc<Board>,
    pub counts: Counts,
    pub new_names: NewNames,
}

/// New names handed fake addresses in a minute, at most: the map never
/// reuses an address, so a program spraying names could otherwise use it up.
const NEW_NAMES_PER_MINUTE: u32 = 1000;

/// Counts new names per minute.
#[derive(Default)]
pub struct NewNames(std::sync::Mutex<Option<(std::time::Instant, u32)>>);

impl NewNames {
    fn allow(&self) -> bool {
        let mut window = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match window.as_mut() {
            Some((start, n)) if now.duration_since(*start) < Duration::from_secs(60) => {
                *n += 1;
                *n <= NEW_NAMES_PER_MINUTE
            }
            _ => {
                *window = Some((now, 1));
                true
            }
        }
    }
}

/// Flows carried for `shimgate run` programs, for `shimgate status`.
#[derive(Default)]
pub struct Counts {
    tcp_open: AtomicU64,
    udp_open: AtomicU64,
    tcp_total: AtomicU64,
    udp_total: AtomicU64,
}

/// One open flow, counted until dropped.
struct Counted<'a>(&'a AtomicU64);

impl Counts {
    fn open<'a>(open: &'a AtomicU64, total: &AtomicU64) -> Counted<'a> {
        open.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(1, Ordering::Relaxed);
        Counted(open)
    }

    fn snapshot(&self) -> ShimCounts {
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShimCounts {
            tcp_open: read(&self.tcp_open),
            udp_open: read(&self.udp_open),
            tcp_total: read(&self.tcp_total),
            udp_total: read(&self.udp_total),
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often the counts reach `status.json` (only when they changed):
/// not once per flow, which would write the file twice per connection.
const STATUS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot listen on the shim socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hold(#[from] crate::hold::HoldError),
    #[error(transparent)]
    Fake(#[from] crate::fakeaddr::FakeError),
}

/// Who is on the other end of a shim socket connection.
pub(crate) struct Asker {
    /// The shim the question came through (TUN mode's DNS responder asks too).
    shim: origin::Shim,
    uid: Option<u32>,
    /// The uid's name in this machine's accounts.
    user: Option<String>,
    pid: Option<i32>,
    program: Option<String>,
}

/// The name of local user `uid` (files, LDAP: whatever NSS the machine
/// has), remembered: a shim connection is opened per connect, and a
/// directory lookup may be slow.
fn user_name(uid: u32) -> Option<String> {
    static KNOWN: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<u32, Option<String>>>,
    > = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(name) = known.lock().ok().and_then(|k| k.get(&uid).cloned()) {
        return name;
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: every pointer is to a live local of the right type, and `buf`
    // outlives the `pw_name` read from it.
    let name = unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found);
        (rc == 0 && !found.is_null() && !pw.pw_name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned()
        })
    };
    if let Ok(mut k) = known.lock() {
        k.insert(uid, name.clone());
    }
    name
}

impl Asker {
    fn of(stream: &UnixStream) -> Asker {
        let cred = stream.peer_cred().ok();
        let pid = cred.as_ref().and_then(|c| c.pid());
        let program = pid
            .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
            .map(|p| p.display().to_string());
        let uid = cred.map(|c| c.uid());
        Asker {
            shim: origin::Shim::Socket,
            uid,
            user: uid.and_then(user_name),
            pid,
            program,
        }
    }

    /// A question from TUN mode: no process is known.
    pub(crate) const TUN: Asker = Asker {
        shim: origin::Shim::Tun,
        uid: None,
        user: None,
        pid: None,
        program: None,
    };

    fn origin(&self) -> Origin {
        Origin {
            shim: self.shim,
            uid: self.uid,
            user: self.user.clone(),
            program: self.program.clone(),
        }
    }
}

/// Binds the shim socket at `path` (replacing a stale one: a live `up`
/// holding it was refused earlier, at the SOCKS port) and serves it until
/// `stop`.
pub fn start(path: PathBuf, shim: Arc<Shim>, stop: CancellationToken) -> Result<(), ShimError> {
    let listen_error = |source| ShimError::Listen {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_error(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(listen_error)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    tracing::info!(socket = %path.display(), hold = ?shim.hold.addrs(), "socket shim listening");
    tokio::spawn(publish_counts(Arc::clone(&shim), stop.clone()));
    // One accept loop per worker on the same socket, as for the SOCKS port:
    // a request is served on the thread of the gateway connection that will
    // carry its flow, with no hop between threads on the way.
    for worker in 0..shim.pool.workers() {
        let listener = listener.try_clone().map_err(listen_error)?;
        let (shim2, stop) = (Arc::clone(&shim), stop.clone());
        shim.pool.spawn_on(worker, async move {
            match UnixListener::from_std(listener) {
                Ok(listener) => shim2.serve(listener, worker, stop).await,
                Err(e) => {
                    tracing::error!(error = %e, worker, "shim socket: cannot listen on this worker")
                }
            }
        });
    }
    tokio::spawn(async move {
        stop.cancelled().await;
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Keeps `status.json`'s shim counts current until `stop`.
async fn publish_counts(shim: Arc<Shim>, stop: CancellationToken) {
    let mut shown = ShimCounts::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STATUS_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let now = shim.counts.snapshot();
        if now != shown {
            shim.board.update(|s| s.shim = now);
            shown = now;
        }
    }
}

impl Shim {
    /// Accepts programs' requests on `listener` (one of several on the same
    /// socket, one per worker) and serves each on this worker.
    async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        worker: usize,
        stop: CancellationToken,
    ) {
        crate::listener::accept_until(
            "shim",
            &stop,
            || listener.accept(),
            |(stream, _)| {
                let slot = self.pool.pick_for(worker);
                tokio::spawn(Arc::clone(&self).handle(stream, slot));
            },
        )
        .await;
    }

    /// Serves one request; a flow goes on pool slot `slot`, whose worker
    /// this runs on.
    async fn handle(self: Arc<Self>, stream: UnixStream, slot: usize) {
        let asker = Asker::of(&stream);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if asker.uid != Some(me) {
            // The socket is the device user's (0600 in its config directory);
            // another user's program gets nothing, whatever the file mode.
            tracing::warn!(uid = ?asker.uid, pid = ?asker.pid, "shim socket request from another user refused");
            return;
        }
        let mut limited = BufReader::new(stream).take(MAX_LINE as u64);
        let mut line = String::new();
        let read = limited.read_line(&mut line);
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(_)) if line.ends_with('\n') => Request::parse(&line),
            _ => {
                tracing::debug!(pid = ?asker.pid, "shim request incomplete");
                return;
            }
        };
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(pid = ?asker.pid, program = ?asker.program, error = %e, "shim request refused");
                return;
            }
        };
        let mut stream = limited.into_inner().into_inner();
        match request {
            Request::Split => {
                let _ = answer(&mut stream, &Reply::Split(self.split())).await;
            }
            Request::Resolve { name } => {
                let reply = self.resolve(&name, &asker).await;
                let _ = answer(&mut stream, &reply).await;
            }
            Request::Name { addr } => {
                let _ = answer(&mut stream, &self.name(addr, &asker)).await;
            }
            Request::Connect { to, from } => self.connect(stream, to, from, &asker, slot).await,
            Request::Udp { to, from } => self.udp(stream, to, from, &asker).await,
        }
    }

    /// The split the PAC file makes: the VPN range, the fake ranges and
    /// the networks policy routes here; names under the VPN domain and the
    /// domains policy routes here.
    pub(crate) fn split(&self) -> Split {
        let routes = self.pac.routes();
        let nets = [
            self.pac.vpn_range().to_string(),
            FAKE_V4.to_string(),
            FAKE_V6.to_string(),
        ]
        .into_iter()
        .chain(routes.cidrs.iter().cloned())
        .collect();
        let domains = std::iter::once(self.pac.vpn_domain().to_owned())
            .chain(routes.domains.iter().cloned())
            .filter(|d| Host::parse(d).is_ok_and(|h| h.name().is_some()))
            .collect();
        Split {
            nets,
            domains,
            hold: self.hold.addrs().to_vec(),
        }
    }

    /// A VPN name's fake addresses: handed out once the gateway says, under
    /// policy, that the name exists (a name already in the map keeps its
    /// addresses; a device's name is checked when it is connected to).
    pub(crate) async fn resolve(self: &Arc<Self>, name: &str, asker: &Asker) -> Reply {
        if let Some((v4, v6)) = self.fake.get(name) {
            return Reply::Addrs { v4, v6 };
        }
        let Ok(host) = Host::parse(name) else {
            return Reply::NoName;
        };
        if self.peers.destination(&host).is_none() {
            match self.ask_gateway(name, &asker.origin()).await {
                Ok(_) => {}
                Err(TunnelError::UnknownName) => return Reply::NoName,
                Err(e) => {
                    tracing::info!(name, reason = %e, pid = ?asker.pid, program = ?asker.program, "no fake address");
                    let errno = match e {
                        TunnelError::NotAllowed => libc::EACCES,
                        _ => libc::EAGAIN,
                    };
                    return Reply::Refused {
                        errno,
                        reason: e.to_string(),
                    };
                }
            }
        }
        if !self.new_names.allow() {
            tracing::warn!(name, pid = ?asker.pid, program = ?asker.program, "too many new VPN names at once; refusing for now");
            return Reply::Refused {
                errno: libc::EAGAIN,
                reason: format!("more than {NEW_NAMES_PER_MINUTE} new VPN names in a minute"),
            };
        }
        // The map is written and synced before the answer: off the runtime.
        let (shim, owned) = (Arc::clone(self), name.to_owned());
        let assigned = tokio::task::spawn_blocking(move || shim.fake.addrs_for(&owned))
            .await
            .unwrap_or_else(|_| Err(crate::fakeaddr::FakeError::NotAName(name.to_owned())));
        match assigned {
            Ok((v4, v6)) => {
                tracing::debug!(name, %v4, %v6, pid = ?asker.pid, program = ?asker.program, "fake addresses");
                Reply::Addrs { v4, v6 }
            }
            Err(crate::fakeaddr::FakeError::NotAName(_)) => Reply::NoName,
            Err(e) => {
                tracing::error!(error = %e, "cannot hand out a fake address");
                Reply::Refused {
                    errno: libc::EAGAIN,
                    reason: e.to_string(),
                }
            }
        }
    }

    /// A reverse lookup: the VPN name a fake address stands for, from the
    /// map alone (this user's programs were handed it already), or
    /// `noname` for any other address.
    fn name(&self, addr: IpAddr, asker: &Asker) -> Reply {
        match self.fake.name_of(addr) {
            Some(name) => Reply::Name(name),
            None => {
                tracing::debug!(%addr, pid = ?asker.pid, program = ?asker.program, "no name for the address");
                Reply::NoName
            }
        }
    }

    /// `POST path` with `body` to the gateway on behalf of `origin`, within
    /// `wait`: its answer's body, or why not as a program would be told (no
    /// gateway: network unreachable; 403: not allowed).
    pub(crate) async fn call_gateway(
        &self,
        path: &str,
        body: Vec<u8>,
        origin: &Origin,
        wait: Duration,
    ) -> Result<Vec<u8>, TunnelError> {
        let call = async {
            let send = self
                .pool
                .any_connection()
                .await
                .map_err(|_| TunnelError::NetworkUnreachable)?;
            crate::client::call_from(&send, http::Method::POST, path, Some(body), Some(origin))
                .await
                .map_err(|e| match e {
                    crate::client::ClientError::Refused { status, .. }
                        if status == http::StatusCode::FORBIDDEN =>
                    {
                        TunnelError::NotAllowed
                    }
                    _ => TunnelError::General,
                })
        };
        tokio::time::timeout(wait, call)
            .await
            .map_err(|_| TunnelError::TimedOut)?
    }

    /// Whether the gateway says `name` exists and policy could let this
    /// device's program `origin` reach it; for a device's name, its VPN
    /// address when the gateway gives it.
    pub(crate) async fn ask_gateway(
        &self,
        name: &str,
        origin: &Origin,
    ) -> Result<Option<std::net::Ipv4Addr>, TunnelError> {
        let body = serde_json::to_vec(&ResolveRequest {
            name: name.to_owned(),
        })
        .map_err(|_| TunnelError::General)?;
        let answer = self
            .call_gateway(RESOLVE_PATH, body, origin, RESOLVE_TIMEOUT)
            .await?;
        let resolved =
            serde_json::from_slice::<Resolved>(&answer).map_err(|_| TunnelError::General)?;
        match resolved.answer.as_str() {
            "exists" => Ok(resolved.vpn_ip),
            other => Err(other.parse().unwrap_or(TunnelError::General)),
        }
    }

    /// The destination a program's address stands for: the name behind a
    /// fake address, or the address itself.
    pub(crate) fn destination(&self, to: SocketAddr) -> Result<Destination, TunnelError> {
        Destination::new(self.host_of(to.ip())?, to.port()).map_err(TunnelError::from)
    }

    /// The host a program's address stands for: the name behind a fake
    /// address, or the address itself.
    pub(crate) fn host_of(&self, ip: IpAddr) -> Result<Host, TunnelError> {
        if !crate::fakeaddr::is_fake(ip) {
            return Ok(Host::Ip(ip));
        }
        let name = self.fake.name_of(ip).ok_or(TunnelError::HostUnreachable)?;
        Host::parse(&name).map_err(TunnelError::from)
    }

    async fn connect(
        &self,
        mut stream: UnixStream,
        to: SocketAddr,
        from: SocketAddr,
        asker: &Asker,
        slot: usize,
    ) {
        let open = async {
            let dest = self.destination(to)?;
            let origin = asker.origin();
            tracing::info!(%dest, shim = "socket", uid = ?asker.uid, pid = ?asker.pid, program = %asker.program.as_deref().unwrap_or("?"), proto = "tcp", "flow");
            crate::flow::open(&self.pool, &self.peers, slot, &dest, &origin).await
        };
        // The completion's socket is made while the gateway is being asked
        // (join polls `open` first, so its request leaves before).
        let (opened, completion) = tokio::join!(open, async { self.hold.prepare(from) });
        let completion = match completion {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(%to, error = %e, "the program's socket cannot be completed");
                return;
            }
        };
        let way = match opened {
            Ok(way) => way,
            Err(e) => {
                tracing::info!(%to, reason = %e, pid = ?asker.pid, program = ?asker.program, "socket shim connection refused");
                let reply = Reply::Refused {
                    errno: e.errno(),
                    reason: e.to_string(),
                };
                // Told first, so whatever wakes the program finds the answer.
                let _ = answer(&mut stream, &reply).await;
                completion.reset().await;
                return;
            }
        };
        // Told first, as a refusal is; the request's connection is closed
        // only once the program's socket is complete.
        if answer(&mut stream, &Reply::Ok).await.is_err() {
            // The program gave up (it closed the socket, or exited).
            return;
        }
        let completed = completion.connect().await;
        drop(stream);
        match completed {
            Ok(sock) => {
                let _counted = Counts::open(&self.counts.tcp_open, &self.counts.tcp_total);
                way.carry(sock, &self.peers).await;
            }
            Err(e) => tracing::info!(%to, error = %e, "the program's socket went away"),
        }
    }
}

impl Shim {
    /// A UDP relay for the program's socket at `from` and `to`, until the
    /// program closes its socket.
    async fn udp(&self, mut stream: UnixStream, to: SocketAddr, from: SocketAddr, asker: &Asker) {
        let bound = match self.destination(to) {
            Ok(dest) => match crate::shimudp::bind(from).await {
                Ok(relay) => Ok((dest, relay)),
                Err(e) => Err((e, e.to_string())),
            },
            Err(e) => Err((e, e.to_string())),
        };
        let (dest, relay) = match bound {
            Ok(b) => b,
            Err((e, reason)) => {
                tracing::info!(%to, %reason, pid = ?asker.pid, program = ?asker.program, "socket shim udp refused");
                let _ = answer(
                    &mut stream,
                    &Reply::Refused {
                        errno: e.errno(),
                        reason,
                    },
                )
                .await;
                return;
            }
        };
        let Ok(addr) = relay.local_addr() else { return };
        if answer(&mut stream, &Reply::Relay(addr)).await.is_err() {
            return;
        }
        let origin = asker.origin();
        tracing::info!(%dest, shim = "socket", uid = ?asker.uid, pid = ?asker.pid, program = %asker.program.as_deref().unwrap_or("?"), proto = "udp", "flow");
        let _counted = Counts::open(&self.counts.udp_open, &self.counts.udp_total);
        crate::shimudp::run(relay, stream, dest, &self.pool, &self.peers, &origin).await;
    }
}

async fn answer(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    stream.write_all(reply.encode().as_bytes()).await
}
