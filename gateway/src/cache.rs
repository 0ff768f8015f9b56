//! The gateway's in-memory view of the registry, which hot paths read
//! without touching the database: which certificates are valid and whose
//! they are, the policy rules, and the live device connections (so a
//! revocation can cut them).
//!
//! Invariant: a certificate not in [`Cache::certs`] is refused, even if the
//! CA signed it. The view is refreshed on change notifications (Postgres
//! LISTEN/NOTIFY) or by polling the registry's change counter (SQLite).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use shimgate_host::clock;
use shimgate_registry::{CertState, Registry, Rule};
use tokio_util::sync::CancellationToken;

/// Who is on the other end of a device connection, as the registry knows it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub fingerprint: String,
    pub device_id: i64,
    pub device_name: String,
    pub user_name: String,
    pub groups: Vec<String>,
    pub vpn_ip: Ipv4Addr,
    pub not_after: i64,
    pub revoked: bool,
    /// A newer certificate of the device has been used: refused for new
    /// connections, while connections it holds go on.
    pub superseded: bool,
}

impl From<CertState> for Identity {
    fn from(c: CertState) -> Identity {
        Identity {
            fingerprint: c.fingerprint_hex,
            device_id: c.device_id,
            device_name: c.device_name,
            user_name: c.user_name,
            groups: c.groups,
            vpn_ip: c.vpn_ip,
            not_after: c.not_after,
            revoked: c.revoked,
            superseded: c.superseded,
        }
    }
}

pub enum CertStatus {
    Active(Arc<Identity>),
    Revoked,
    /// Only from [`Cache::handshake_status`].
    Superseded,
    Unknown,
}

struct LiveConn {
    fingerprint: String,
    cancel: CancellationToken,
}

#[derive(Default)]
pub struct Cache {
    certs: DashMap<String, Arc<Identity>>,
    rules: RwLock<Arc<Vec<Rule>>>,
    live: DashMap<u64, LiveConn>,
    next_conn: AtomicU64,
    /// One reload at a time, applied in the order their snapshots were
    /// read: an older snapshot applied last would undo a revocation.
    reloading: tokio::sync::Mutex<()>,
    /// Counts reloads; certificates this gateway issued are remembered with
    /// the count at the time, so a reload whose snapshot was read before
    /// they were committed does not drop them.
    epoch: AtomicU64,
    issued: DashMap<String, u64>,
    /// Devices holding more than one usable certificate (a renewal not yet
    /// used): their next connection with the newest supersedes the others.
    renewed: DashMap<i64, ()>,
}

/// Removes a live connection from the cache when the connection ends.
pub struct LiveGuard {
    cache: Arc<Cache>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.cache.live.remove(&self.id);
    }
}

impl Cache {
    pub fn status(&self, fingerprint: &str) -> CertStatus {
        // Clone out: never hold a dashmap guard longer than this line.
        let found = self.certs.get(fingerprint).map(|r| Arc::clone(r.value()));
        match found {
            Some(id) if id.revoked => CertStatus::Revoked,
            Some(id) if id.not_after <= clock::now() => CertStatus::Unknown,
            Some(id) => CertStatus::Active(id),
            None => CertStatus::Unknown,
        }
    }

    /// The status for a new connection: a superseded certificate is refused
    /// there, while [`Cache::status`] (streams on connections already open)
    /// still accepts it.
    pub fn handshake_status(&self, fingerprint: &str) -> CertStatus {
        match self.status(fingerprint) {
            CertStatus::Active(id) if id.superseded => CertStatus::Superseded,
            other => other,
        }
    }

    /// Whether the device may hold certificates that a connection with its
    /// newest one supersedes.
    pub fn renewed(&self, device_id: i64) -> bool {
        self.renewed.contains_key(&device_id)
    }

    /// Adds a certificate this gateway just issued.
    pub fn insert(&self, id: Identity) {
        let usable = |c: &Identity| !c.revoked && !c.superseded;
        let another = self.certs.iter().any(|c| {
            c.device_id == id.device_id && c.fingerprint != id.fingerprint && usable(c.value())
        });
        if another {
            self.renewed.insert(id.device_id, ());
        }
        self.issued
            .insert(id.fingerprint.clone(), self.epoch.load(Ordering::SeqCst));
        self.certs.insert(id.fingerprint.clone(), Arc::new(id));
    }

    pub fn rules(&self) -> Arc<Vec<Rule>> {
        match self.rules.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set_rules(&self, rules: Vec<Rule>) {
        let rules = Arc::new(rules);
        match self.rules.write() {
            Ok(mut r) => *r = rules,
            Err(poisoned) => *poisoned.into_inner() = rules,
        }
    }

    /// Replaces the certificate table, then cuts connections whose
    /// certificate is no longer valid.
    /// Replaces the certificate table with a snapshot read during reload
    /// `epoch`, keeping certificates issued here since that reload began.
    fn set_certs(&self, states: Vec<CertState>, epoch: u64) {
        let fresh: std::collections::HashSet<String> =
            states.iter().map(|c| c.fingerprint_hex.clone()).collect();
        for state in states {
            let id: Identity = state.into();
            self.certs.insert(id.fingerprint.clone(), Arc::new(id));
        }
        let issued_since = |fp: &String| self.issued.get(fp).is_some_and(|e| *e >= epoch);
        self.certs
            .retain(|fp, _| fresh.contains(fp) || issued_since(fp));
        self.issued.retain(|_, e| *e >= epoch);
        let mut usable: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
        for c in self.certs.iter() {
            if !c.revoked && !c.superseded {
                *usable.entry(c.device_id).or_default() += 1;
            }
        }
        self.renewed
            .retain(|d, _| usable.get(d).is_some_and(|n| *n > 1));
        for (device, n) in usable {
            if n > 1 {
                self.renewed.insert(device, ());
            }
        }
        self.cut_invalid();
    }

    /// Tracks a live device connection; `cancel` fires if its certificate is
    /// revoked.
    pub fn register(self: &Arc<Self>, fingerprint: &str, cancel: CancellationToken) -> LiveGuard {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.live.insert(
            id,
            LiveConn {
                fingerprint: fingerprint.to_owned(),
                cancel,
            },
        );
        LiveGuard {
            cache: Arc::clone(self),
            id,
        }
    }

    fn cut_invalid(&self) {
        for conn in self.live.iter() {
            if !matches!(self.status(&conn.fingerprint), CertStatus::Active(_)) {
                tracing::info!(fingerprint = %conn.fingerprint, "certificate no longer valid: closing its connection");
                conn.cancel.cancel();
            }
        }
    }

    pub fn live_connections(&self) -> usize {
        self.live.len()
    }

    /// The ids of the devices with a live connection to this gateway.
    pub fn online_devices(&self) -> std::collections::HashSet<i64> {
        let fingerprints: Vec<String> = self
            .live
            .iter()
            .map(|c| c.value().fingerprint.clone())
            .collect();
        fingerprints
            .iter()
            .filter_map(|fp| self.certs.get(fp).map(|id| id.device_id))
            .collect()
    }

    /// Loads everything from the registry once.
    pub async fn reload(&self, registry: &Registry) -> Result<(), shimgate_registry::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let certs = registry.certificate_states(clock::now()).await?;
        let rules = registry.list_rules().await?;
        self.set_rules(rules);
        self.set_certs(certs, epoch);
        Ok(())
    }
}

/// How often SQLite's change counter is read; bounds revocation latency.
const POLL: Duration = Duration::from_millis(200);
/// With Postgres, a slow poll as well, in case a notification was missed
/// while the listener reconnected.
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Keeps `cache` in step with the registry until `stop` fires.
pub async fn refresh(cache: Arc<Cache>, registry: Registry, stop: CancellationToken) {
    let mut seen = i64::MIN;
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = match registry.subscribe().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to registry changes; polling");
                    None
                }
            };
        }
        match registry.change_seq().await {
            Ok(seq) if seq != seen => {
                match crate::console::metrics::timed(cache.reload(&registry)).await {
                    Ok(()) => seen = seq,
                    Err(e) => {
                        tracing::warn!(error = %e, "registry reload failed; keeping the cached view")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "registry unreachable; keeping the cached view"),
        }
        // Certificates also end by the clock, with no registry change.
        cache.cut_invalid();
        let wait = match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    r = l.next() => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "registry notifications lost; resubscribing");
                            listener = None;
                        }
                        Duration::ZERO
                    }
                    _ = tokio::time::sleep(SAFETY_POLL) => Duration::ZERO,
                    _ = stop.cancelled() => return,
                }
            }
            None => POLL,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(fp: &str) -> Identity {
        Identity {
            fingerprint: fp.into(),
            device_id: 1,
            device_name: "d".into(),
            user_name: "u".into(),
            groups: vec![],
            vpn_ip: Ipv4Addr::new(100, 64, 0, 1),
            not_after: i64::MAX,
            revoked: false,
            superseded: false,
        }
    }

    #[test]
    fn a_reload_keeps_certificates_issued_after_its_snapshot_and_drops_older_ones() {
        let cache = Cache::default();
        cache.insert(identity("before"));
        // a reload begins (its snapshot has neither), then "during" is issued
        let epoch = cache.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        cache.insert(identity("during"));
        cache.set_certs(Vec::new(), epoch);
        assert!(matches!(cache.status("during"), CertStatus::Active(_)));
        assert!(
            matches!(cache.status("before"), CertStatus::Unknown),
            "a certificate the registry no longer lists must go"
        );
        // the next reload's snapshot is authoritative for it
        let epoch = cache.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        cache.set_certs(Vec::new(), epoch);
        assert!(matches!(cache.status("during"), CertStatus::Unknown));
    }
}
