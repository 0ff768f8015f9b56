//! Per-key token buckets (by default per address), so that anonymous callers
//! (enrollment needs no certificate) cannot flood the gateway and its
//! registry: each attempt costs a CSR check, a registry query and an audit
//! row. The console also limits sign-in attempts per user name.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub struct RateLimit<K = IpAddr> {
    burst: f64,
    per_second: f64,
    buckets: DashMap<K, (f64, Instant)>,
}

/// Addresses remembered before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

impl<K: Hash + Eq> RateLimit<K> {
    /// `burst` attempts at once, then one every `every`.
    pub fn new(burst: u32, every: Duration) -> RateLimit<K> {
        RateLimit {
            burst: f64::from(burst),
            per_second: 1.0 / every.as_secs_f64().max(f64::MIN_POSITIVE),
            buckets: DashMap::new(),
        }
    }

    pub fn allow(&self, from: K) -> bool {
        self.allow_at(from, Instant::now())
    }

    fn allow_at(&self, from: K, now: Instant) -> bool {
        if self.buckets.len() > MAX_TRACKED {
            // Full buckets carry no information: drop them.
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let mut entry = self.buckets.entry(from).or_insert((self.burst, now));
        let (tokens, at) = entry.value_mut();
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_address() {
        let limit = RateLimit::new(3, Duration::from_secs(10));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.allow_at(a, t0)));
        assert!(!limit.allow_at(a, t0), "the fourth at once is refused");
        assert!(limit.allow_at(b, t0), "another address has its own bucket");
        assert!(!limit.allow_at(a, t0 + Duration::from_secs(5)));
        assert!(
            limit.allow_at(a, t0 + Duration::from_secs(11)),
            "one more after the refill period"
        );
        assert!(!limit.allow_at(a, t0 + Duration::from_secs(11)));
    }
}
