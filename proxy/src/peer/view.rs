//! What `shimgate peers` shows: a line a peer from the live links and the
//! totals of ended ones, published as `peers.json` in the config dir.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shimgate_host::{clock, files};
use shimgate_wire::control::PeerPath;
use tokio_util::sync::CancellationToken;

use super::{Peers, Side};
use crate::config::ConfigDir;

impl Peers {
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
