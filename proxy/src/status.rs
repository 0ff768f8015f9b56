//! `status.json`: what `shimgate up` is doing, for `shimgate status`.
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
    let bytes = std::fs::read(dir.status()).ok()?;
    let status: Status = serde_json::from_slice(&bytes).ok()?;
    alive(status.pid).then_some(status)
}
