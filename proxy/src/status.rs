//! `status.json`: what `shimgate up` is doing, for `shimgate status`, and
//! which process to stop for `shimgate down`.
//!
//! `up` rewrites the file (atomically) whenever the state changes; `status`
//! trusts it only if the process that wrote it is still alive.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use shimgate_host::{clock, files};

use crate::config::ConfigDir;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Status {
    pub pid: u32,
    pub connected: bool,
    /// Unix seconds: when the current state (connected or not) began.
    pub since: i64,
    pub device: String,
    pub user: String,
    pub vpn_ip: String,
    pub gateway: String,
    pub socks: String,
    /// Live connections to the gateway, out of `pool`.
    pub live: usize,
    pub pool: usize,
    pub last_error: Option<String>,
    /// Where the peer listener is, while this device exports something.
    #[serde(default)]
    pub peer_listen: Option<String>,
    /// What `shimgate run` programs have open through the socket shim.
    #[serde(default)]
    pub shim: ShimCounts,
    /// TUN mode, when on.
    #[serde(default)]
    pub tun: Option<TunView>,
}

/// TUN mode as `status` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TunView {
    /// The interface.
    pub dev: String,
    /// Networks routed into it besides the VPN range.
    pub routes: Vec<String>,
    /// TCP flows through it now.
    pub flows: usize,
    /// UDP flows through it now.
    #[serde(default)]
    pub udp_flows: usize,
    /// The DNS responder and how it is wired in.
    #[serde(default)]
    pub dns: String,
}

/// The socket shim's flows: open now, and since `up` started.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShimCounts {
    pub tcp_open: u64,
    pub udp_open: u64,
    pub tcp_total: u64,
    pub udp_total: u64,
}

/// The shared, written-through status of a running `up`.
pub struct Board {
    dir: ConfigDir,
    /// `None` once the proxy has stopped: late updates from tasks still
    /// winding down must not write the file again.
    state: Mutex<Option<Status>>,
}

impl Board {
    pub fn new(dir: ConfigDir, initial: Status) -> Board {
        let board = Board {
            dir,
            state: Mutex::new(Some(initial)),
        };
        board.update(|_| {});
        board
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        let mut guard = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(state) = guard.as_mut() else { return };
        let was = state.connected;
        change(state);
        state.connected = state.live > 0;
        if state.connected != was {
            state.since = clock::now();
        }
        if let Ok(json) = serde_json::to_vec_pretty(state)
            && let Err(e) = files::write_atomic(&self.dir.status(), &json, files::PUBLIC)
        {
            tracing::warn!(error = %e, "cannot write status.json");
        }
    }

    pub fn snapshot(&self) -> Status {
        let guard = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.clone().unwrap_or_default()
    }

    /// Marks the proxy as stopped: removes the file and ignores later updates.
    pub fn remove(&self) {
        let mut guard = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = None;
        let _ = std::fs::remove_file(self.dir.status());
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// The status of a running `up`, or `None` if none runs for this config dir.
pub fn read(dir: &ConfigDir) -> Option<Status> {
    written(dir).filter(|s| alive(s.pid))
}

/// What status.json says, whether or not its writer still runs.
fn written(dir: &ConfigDir) -> Option<Status> {
    let bytes = std::fs::read(dir.status()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Why `shimgate down` could not stop the running `up`.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(
        "`shimgate up` (pid {pid}) runs as another user: stop it as that user (`sudo shimgate down` for `sudo shimgate up`)"
    )]
    NotPermitted { pid: u32 },
    #[error(
        "`shimgate up` (pid {pid}) did not stop within {secs} s of SIGTERM: `kill -9 {pid}` ends it (its interface and routes go with it; the next `up` or `down` puts resolv.conf back)"
    )]
    StillRunning { pid: u32, secs: u64 },
    #[error("cannot stop pid {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
}

/// Stops the `up` running for `dir`, if one is, and waits up to `wait` for
/// it to exit (it takes its interface, routes and DNS settings down as it
/// goes). Then puts back a resolv.conf that a crashed `up --tun` left
/// rewritten. The pid it stopped, or `None` when none was running.
pub fn stop(dir: &ConfigDir, wait: std::time::Duration) -> Result<Option<u32>, StopError> {
    let running = written(dir).map(|s| s.pid);
    let stopped = match running {
        Some(pid) => terminate(pid, wait)?.then_some(pid),
        None => None,
    };
    crate::tun::resolver::recover(&dir.resolv_backup());
    Ok(stopped)
}

/// SIGTERM to `pid` if it is a shimgate process, and wait for its exit;
/// `false` when no such process runs (a stale file, or a reused pid).
fn terminate(pid: u32, wait: std::time::Duration) -> Result<bool, StopError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(false);
    };
    // A pidfd names this process even if the pid is reused meanwhile.
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        return Ok(false);
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim_end() != "shimgate" {
        return Ok(false);
    }
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal, no info, no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGTERM,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            Some(libc::EPERM) => Err(StopError::NotPermitted { pid }),
            _ => Err(StopError::Signal { pid, source: e }),
        };
    }
    // The pidfd turns readable when the process has exited.
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + wait;
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, its count, a timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        let interrupted =
            ready < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR);
        if !interrupted {
            break ready;
        }
    };
    if ready == 1 {
        Ok(true)
    } else {
        Err(StopError::StillRunning {
            pid,
            secs: wait.as_secs(),
        })
    }
}
