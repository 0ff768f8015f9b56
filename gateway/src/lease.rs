//! The registry lease: how long a gateway that cannot reach its registry
//! goes on admitting new flows.
//!
//! A gateway cut off from the registry does not hear revocations or policy
//! changes. It keeps the tunnels that are open, and admits new tunnels, UDP
//! associations and peer sessions only until its lease, renewed by every
//! heartbeat the registry takes, runs out (`serve --registry-lease`, 60 s by
//! default): that is the longest a revocation can go unheard during a
//! partition. Past it, new flows get [`TunnelError::RegistryLost`] until a
//! heartbeat gets through again.
//!
//! [`TunnelError::RegistryLost`]: shimgate_wire::tunnel::TunnelError::RegistryLost

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The lease when `serve` is not told otherwise.
pub const DEFAULT: Duration = Duration::from_secs(60);

pub struct Lease {
    length: Duration,
    /// Where `renewed_ms` counts from.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last renewal.
    renewed_ms: AtomicU64,
}

impl Lease {
    /// A lease of `length`, held from now.
    pub fn new(length: Duration) -> Lease {
        Lease {
            length,
            epoch: Instant::now(),
            renewed_ms: AtomicU64::new(0),
        }
    }

    /// The registry took a heartbeat just now.
    pub fn renew(&self) {
        self.renew_at(self.elapsed_ms());
    }

    /// Whether the last renewal is at most the lease's length ago.
    pub fn held(&self) -> bool {
        self.held_at(self.elapsed_ms())
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    fn renew_at(&self, ms: u64) {
        self.renewed_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn held_at(&self, ms: u64) -> bool {
        let since = ms.saturating_sub(self.renewed_ms.load(Ordering::Relaxed));
        Duration::from_millis(since) <= self.length
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_for_its_length_after_each_renewal() {
        let lease = Lease::new(Duration::from_secs(60));
        assert!(lease.held_at(0));
        assert!(lease.held_at(60_000));
        assert!(!lease.held_at(60_001));
        lease.renew_at(100_000);
        assert!(lease.held_at(160_000));
        assert!(!lease.held_at(160_001));
        // A late, older renewal does not move it back.
        lease.renew_at(90_000);
        assert!(lease.held_at(160_000));
    }
}
