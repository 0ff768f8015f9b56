//! What is happening right now, for the console's sessions page, the API
//! and `/metrics`: tunnels open through the gateway, and the peer sessions
//! it brokered (recent ones kept, bounded), with per-device path counts.
//!
//! Bookkeeping only: nothing here decides anything, and no key is kept.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use serde::Serialize;
use shimgate_host::clock;
use shimgate_wire::control::{PeerPath, SessionId};

/// Peer sessions remembered for the console (oldest dropped first).
const PEER_HISTORY: usize = 500;

/// One tunnel through the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelView {
    pub device: String,
    pub dest: String,
    pub since: i64,
}

/// Open tunnels; an entry goes when its [`TunnelGuard`] drops.
#[derive(Default)]
pub struct Tunnels {
    open: DashMap<u64, TunnelView>,
    next: AtomicU64,
}

/// Removes a tunnel from [`Tunnels`] when the tunnel ends.
pub struct TunnelGuard<'a> {
    tunnels: &'a Tunnels,
    id: u64,
}

impl Drop for TunnelGuard<'_> {
    fn drop(&mut self) {
        self.tunnels.open.remove(&self.id);
    }
}

impl Tunnels {
    pub fn open(&self, device: &str, dest: &str) -> TunnelGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.insert(
            id,
            TunnelView {
                device: device.to_owned(),
                dest: dest.to_owned(),
                since: clock::now(),
            },
        );
        TunnelGuard { tunnels: self, id }
    }

    /// Open tunnels, oldest first.
    pub fn list(&self) -> Vec<TunnelView> {
        let mut out: Vec<TunnelView> = self.open.iter().map(|t| t.value().clone()).collect();
        out.sort_by_key(|t| t.since);
        out
    }
}

/// Where a brokered session stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Granted; the devices connect directly (the gateway hears again at the end).
    Granted,
    /// Its bytes are going through the gateway's relay now.
    Relaying,
    Ended,
}

/// One peer session as the gateway knows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub session: String,
    pub from: String,
    pub to: String,
    pub port: u16,
    pub granted_at: i64,
    pub state: PeerState,
    /// Known once relayed, or once the requester reported the end.
    pub path: Option<PeerPath>,
    /// Bytes the requester sent and received (reported), or relayed.
    pub sent: u64,
    pub received: u64,
    pub ended_at: Option<i64>,
}

/// Sessions per path, for one device (as either end).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PathCounts {
    pub direct: u64,
    pub relayed: u64,
}

#[derive(Default)]
pub struct PeerLog {
    recent: Mutex<VecDeque<(SessionId, PeerView)>>,
    per_device: DashMap<String, PathCounts>,
}

impl PeerLog {
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<(SessionId, PeerView)>) -> R) -> R {
        match self.recent.lock() {
            Ok(mut r) => f(&mut r),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn update(&self, id: SessionId, f: impl FnOnce(&mut PeerView)) {
        self.with(|r| {
            if let Some((_, v)) = r.iter_mut().rev().find(|(s, _)| *s == id) {
                f(v);
            }
        });
    }

    pub fn granted(&self, id: SessionId, from: &str, to: &str, port: u16) {
        metrics::counter!("shimgate_peer_grants_total").increment(1);
        self.with(|r| {
            if r.len() >= PEER_HISTORY {
                r.pop_front();
            }
            r.push_back((
                id,
                PeerView {
                    session: id.to_string(),
                    from: from.to_owned(),
                    to: to.to_owned(),
                    port,
                    granted_at: clock::now(),
                    state: PeerState::Granted,
                    path: None,
                    sent: 0,
                    received: 0,
                    ended_at: None,
                },
            ));
        });
    }

    pub fn relaying(&self, id: SessionId) {
        self.update(id, |v| {
            v.state = PeerState::Relaying;
            v.path = Some(PeerPath::Relayed);
        });
    }

    /// The relay of a session finished: `up` from the requester, `down` to it.
    pub fn relay_ended(&self, id: SessionId, up: u64, down: u64) {
        metrics::counter!("shimgate_peer_relayed_bytes_total").increment(up + down);
        self.update(id, |v| {
            v.sent = v.sent.max(up);
            v.received = v.received.max(down);
        });
    }

    /// The requester reported the end (`who` must be the session's requester).
    pub fn ended(&self, id: SessionId, who: &str, path: PeerPath, sent: u64, received: u64) {
        let mut ends = None;
        self.update(id, |v| {
            if v.from != who || v.state == PeerState::Ended {
                return;
            }
            v.state = PeerState::Ended;
            v.path = Some(path);
            v.sent = v.sent.max(sent);
            v.received = v.received.max(received);
            v.ended_at = Some(clock::now());
            ends = Some((v.from.clone(), v.to.clone()));
        });
        let Some((from, to)) = ends else { return };
        let label = match path {
            PeerPath::Direct => "direct",
            PeerPath::Relayed => "relayed",
        };
        metrics::counter!("shimgate_peer_sessions_total", "path" => label).increment(1);
        for device in [from, to] {
            let mut c = self.per_device.entry(device).or_default();
            match path {
                PeerPath::Direct => c.direct += 1,
                PeerPath::Relayed => c.relayed += 1,
            }
        }
    }

    /// Recent sessions, newest first.
    pub fn list(&self) -> Vec<PeerView> {
        self.with(|r| r.iter().rev().map(|(_, v)| v.clone()).collect())
    }

    /// Ended sessions per path for `device`.
    pub fn counts(&self, device: &str) -> PathCounts {
        self.per_device.get(device).map(|c| *c).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_goes_from_granted_to_ended_and_counts_once() {
        let log = PeerLog::default();
        let id = SessionId([1; 16]);
        log.granted(id, "alice", "bob", 8000);
        assert_eq!(log.list()[0].state, PeerState::Granted);
        // only the requester's report counts
        log.ended(id, "bob", PeerPath::Direct, 1, 2);
        assert_eq!(log.list()[0].state, PeerState::Granted);
        log.ended(id, "alice", PeerPath::Direct, 10, 20);
        log.ended(id, "alice", PeerPath::Direct, 10, 20);
        let v = &log.list()[0];
        assert_eq!(
            (v.state, v.path, v.sent, v.received),
            (PeerState::Ended, Some(PeerPath::Direct), 10, 20)
        );
        assert_eq!(log.counts("alice").direct, 1);
        assert_eq!(log.counts("bob").direct, 1);
        assert_eq!(log.counts("bob").relayed, 0);
    }

    #[test]
    fn history_is_bounded() {
        let log = PeerLog::default();
        for i in 0..(PEER_HISTORY + 10) {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            log.granted(SessionId(id), "a", "b", 1);
        }
        assert_eq!(log.list().len(), PEER_HISTORY);
    }

    #[test]
    fn tunnels_leave_when_their_guard_drops() {
        let t = Tunnels::default();
        let g = t.open("laptop", "intranet.internal:80");
        assert_eq!(t.list().len(), 1);
        drop(g);
        assert!(t.list().is_empty());
    }
}
