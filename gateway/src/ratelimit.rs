//! Limits per source address, so that anonymous callers cannot take the
//! gateway from everybody else: per-key token buckets ([`RateLimit`]; each
//! enrollment attempt costs a CSR check, a registry query and an audit row;
//! the console also limits sign-in attempts per user name), and a cap on
//! concurrent connections per address ([`Cap`]).

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

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

/// At most `max` things at once per key; each is held by a [`Place`].
pub struct Cap<K: Hash + Eq + Clone = IpAddr> {
    max: usize,
    held: Arc<DashMap<K, usize>>,
}

/// One of a key's places under a [`Cap`], given back on drop.
pub struct Place<K: Hash + Eq + Clone = IpAddr> {
    key: K,
    held: Arc<DashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Cap<K> {
    pub fn new(max: usize) -> Cap<K> {
        Cap {
            max,
            held: Arc::new(DashMap::new()),
        }
    }

    /// How many keys hold a place now.
    pub fn keys(&self) -> usize {
        self.held.len()
    }

    /// A place for `key`, or `None` when it holds `max` already.
    pub fn take(&self, key: K) -> Option<Place<K>> {
        let mut count = self.held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Place {
            key,
            held: Arc::clone(&self.held),
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for Place<K> {
    fn drop(&mut self) {
        if let Entry::Occupied(mut e) = self.held.entry(self.key.clone()) {
            *e.get_mut() -= 1;
            // keys with nothing held are forgotten: the map stays as small as what is open
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_per_address_gives_places_back() {
        let cap = Cap::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = cap.take(a).expect("a first place");
        let _second = cap.take(a).expect("a second place");
        assert!(cap.take(a).is_none(), "a third at once is refused");
        assert!(cap.take(b).is_some(), "another address has its own places");
        drop(first);
        assert!(
            cap.take(a).is_some(),
            "a place given back can be taken again"
        );
    }

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
