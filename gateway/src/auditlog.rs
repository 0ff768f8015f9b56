//! Audit entries from the data path (tunnels, UDP associations, peer
//! sessions, relays), written in the background by one task, in order.
//!
//! Why not a task per entry: a burst of sessions then holds every pooled
//! registry connection at once (the benchmark saw 4-second pool waits), and
//! a registry outage loses the entries. Here an entry waits in a bounded
//! buffer and is retried until the registry takes it; only when the buffer
//! is full is an entry dropped, and that is counted and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use shimgate_host::clock;
use shimgate_registry::{NewAudit, Registry};
use shimgate_wire::origin::{ORIGIN_HEADER, Origin};

use crate::cache::Identity;
use tokio::sync::mpsc;

/// Entries waiting for the registry, at most.
const BUFFER: usize = 100_000;
/// Entries written in one transaction, at most (a burst of sessions costs
/// one commit per batch, not one per session).
const BATCH: usize = 256;
/// How long the writer lets entries gather after the first one arrives:
/// at a steady few thousand tunnels a second, one commit (an fsync on
/// SQLite) per entry cost the tunnel path a tenth of its setup time; this
/// bounds commits to about 1/LINGER a second, and delays an entry by at
/// most this much.
const LINGER: Duration = Duration::from_millis(20);
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct AuditLog {
    tx: mpsc::Sender<NewAudit>,
    /// This gateway's name, which every entry carries.
    gateway: String,
    /// Queued and not yet committed: in the buffer, or in the batch being
    /// written (which has left the buffer).
    unwritten: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer for gateway `gateway`; it runs until the `AuditLog`
    /// is dropped and its buffer is empty.
    pub fn start(registry: Registry, gateway: &str) -> AuditLog {
        let (tx, rx) = mpsc::channel(BUFFER);
        let unwritten = Arc::new(AtomicUsize::new(0));
        tokio::spawn(writer(registry, rx, Arc::clone(&unwritten)));
        AuditLog {
            tx,
            gateway: gateway.to_owned(),
            unwritten,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues an entry, as this gateway's; never waits.
    pub fn record(&self, mut entry: NewAudit) {
        entry.gateway = Some(self.gateway.clone());
        // Counted before it is queued, so the writer never subtracts first.
        self.unwritten.fetch_add(1, Ordering::SeqCst);
        if self.tx.try_send(entry).is_err() {
            self.unwritten.fetch_sub(1, Ordering::SeqCst);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            metrics::counter!("shimgate_audit_dropped_total").increment(1);
            if n.is_power_of_two() {
                tracing::error!(
                    dropped = n,
                    "audit buffer full (the registry is not keeping up or is down): entries are being lost"
                );
            }
        }
    }

    /// Entries not yet written.
    pub fn pending(&self) -> usize {
        self.unwritten.load(Ordering::SeqCst)
    }

    /// Waits until the buffer is written or `limit` passes (at shutdown).
    pub async fn flush(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.pending();
        if left > 0 {
            tracing::warn!(
                left,
                "stopping with audit entries the registry has not taken"
            );
        }
    }
}

impl crate::setup::Gateway {
    /// Writes an entry at once, as this gateway's: for admin actions and enrollments, rare, and
    /// whose entry should be in place when the answer goes out. A failure is logged, not fatal
    /// to the action already done.
    pub(crate) async fn audit_now(&self, mut entry: NewAudit) {
        entry.gateway = Some(self.config.name().to_owned());
        let action = entry.action.clone();
        if let Err(e) = self.registry.audit(entry).await {
            tracing::warn!(error = %e, action, "could not write the audit entry");
        }
    }
}

/// What one flow (a tunnel or a UDP association) was, for its audit entry.
pub struct Flow<'a> {
    pub who: &'a Identity,
    /// `tunnel` or `udp.association`.
    pub action: &'static str,
    pub target: String,
    /// The program that made it, as its device says (unknown if it did not).
    pub origin: Option<Origin>,
    /// Bytes (tunnel) or datagrams (association) each way, in words.
    pub moved: String,
    pub started: std::time::Instant,
}

impl Flow<'_> {
    /// The entry, as the flow ends: the device acts; the detail says whose
    /// it is, which program made it, what it moved and for how long.
    pub fn entry(&self) -> NewAudit {
        let origin = self
            .origin
            .as_ref()
            .map_or_else(|| "origin=unknown".to_owned(), Origin::encode);
        NewAudit {
            at: clock::now(),
            actor: self.who.device_name.clone(),
            action: self.action.to_owned(),
            target: self.target.clone(),
            source_addr: None,
            detail: format!(
                "user={} {origin} {} secs={:.3}",
                self.who.user_name,
                self.moved,
                self.started.elapsed().as_secs_f64()
            ),
            gateway: None,
        }
    }
}

/// The origin a request's [`ORIGIN_HEADER`] gives, if well formed.
pub fn origin_of<B>(req: &http::Request<B>) -> Option<Origin> {
    req.headers()
        .get(ORIGIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Origin::parse)
}

async fn writer(registry: Registry, mut rx: mpsc::Receiver<NewAudit>, unwritten: Arc<AtomicUsize>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if batch.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        let mut wait = RETRY_START;
        loop {
            match registry.audit_batch(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.len(), retry_in_ms = wait.as_millis() as u64, "could not write audit entries; keeping them");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
        unwritten.fetch_sub(batch.len(), Ordering::SeqCst);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> NewAudit {
        NewAudit {
            at: 1,
            actor: "test".into(),
            action: "peer.session".into(),
            target: format!("t{i}"),
            source_addr: None,
            detail: String::new(),
            gateway: None,
        }
    }

    #[tokio::test]
    async fn entries_arrive_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("r.db").display().to_string();
        let registry = Registry::connect(&url).await.unwrap();
        registry.migrate().await.unwrap();
        let log = AuditLog::start(registry.clone(), "gw-a.test");
        for i in 0..50 {
            log.record(entry(i));
        }
        log.flush(Duration::from_secs(10)).await;
        assert_eq!(log.pending(), 0);
        let rows = registry.list_audit(100).await.unwrap();
        let targets: Vec<String> = rows.iter().rev().map(|r| r.target.clone()).collect();
        let expected: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
        assert_eq!(targets, expected);
        assert!(
            rows.iter()
                .all(|r| r.gateway.as_deref() == Some("gw-a.test")),
            "every entry names the gateway that wrote it"
        );
    }
}
