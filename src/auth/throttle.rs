//! Token buckets for the unauthenticated endpoints that cost a password
//! hash: `/login` per client address and per user, `/user/register` per
//! client address. A bucket holds up to a minute's allowance and refills
//! evenly; an empty one answers how long until the next attempt is allowed.
//! Memory stays bounded by the clients seen recently: full buckets (idle for
//! a minute) are forgotten when the map grows.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::domain::UserId;

/// Buckets kept before the full ones are dropped.
const PRUNE_AT: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Attempts allowed per key: `per_minute`, in a burst or spread out.
pub struct Limiter<K> {
    capacity: f64,
    per_sec: f64,
    buckets: DashMap<K, Bucket>,
    prune_at: AtomicUsize,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        Self {
            capacity,
            per_sec: capacity / 60.0,
            buckets: DashMap::new(),
            prune_at: AtomicUsize::new(PRUNE_AT),
        }
    }

    /// Takes one attempt for `key` at `now`, or says how long to wait.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let outcome = {
            let mut bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
                tokens: self.capacity,
                updated: now,
            });
            let tokens = self.refilled(&bucket, now);
            bucket.updated = now.max(bucket.updated);
            if tokens >= 1.0 {
                bucket.tokens = tokens - 1.0;
                Ok(())
            } else {
                bucket.tokens = tokens;
                Err(Duration::from_secs_f64((1.0 - tokens) / self.per_sec))
            }
        };
        self.prune(now);
        outcome
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_sec).min(self.capacity)
    }

    /// Forgets the full buckets once the map has grown past its mark, and
    /// moves the mark to twice what is left, so pruning costs O(1) per call
    /// on average.
    fn prune(&self, now: Instant) {
        if self.buckets.len() < self.prune_at.load(Ordering::Relaxed) {
            return;
        }
        self.buckets
            .retain(|_, bucket| self.refilled(bucket, now) < self.capacity);
        self.prune_at
            .store((self.buckets.len() * 2).max(PRUNE_AT), Ordering::Relaxed);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Attempts per minute allowed to each client address and user.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    pub login_per_address: u32,
    pub login_per_user: u32,
    pub register_per_address: u32,
}

/// The limits of `/login` and `/user/register`.
pub struct Throttles {
    login_by_address: Limiter<IpAddr>,
    login_by_user: Limiter<UserId>,
    register_by_address: Limiter<IpAddr>,
}

impl Throttles {
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            login_by_address: Limiter::new(settings.login_per_address),
            login_by_user: Limiter::new(settings.login_per_user),
            register_by_address: Limiter::new(settings.register_per_address),
        }
    }

    /// One login attempt from `client` for `user`, or how long to wait. A
    /// client refused for its address spends nothing of the user's allowance.
    pub fn login(&self, client: IpAddr, user: UserId) -> Result<(), Duration> {
        let now = Instant::now();
        self.login_by_address.take(&network_of(client), now)?;
        self.login_by_user.take(&user, now)
    }

    pub fn register(&self, client: IpAddr) -> Result<(), Duration> {
        self.register_by_address
            .take(&network_of(client), Instant::now())
    }
}

/// The unit a client is limited by: its IPv4 address, or its IPv6 /64 (one
/// host is commonly given a whole /64, so single IPv6 addresses are free).
fn network_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_allows_a_burst_then_refills_evenly() {
        let clock = Instant::now();
        let limiter = Limiter::new(6); // one every 10 s
        for _ in 0..6 {
            assert_eq!(limiter.take(&"k", clock), Ok(()));
        }
        assert_eq!(limiter.take(&"k", clock), Err(10 * SECOND));
        // Refused attempts cost nothing: the wait only shrinks with time.
        assert_eq!(limiter.take(&"k", clock + 4 * SECOND), Err(6 * SECOND));
        assert_eq!(limiter.take(&"k", clock + 10 * SECOND), Ok(()));
        assert!(limiter.take(&"k", clock + 10 * SECOND).is_err());
        // Other keys have buckets of their own.
        assert_eq!(limiter.take(&"other", clock), Ok(()));
        // A long idle refills to the burst, no further.
        let later = clock + 3600 * SECOND;
        for _ in 0..6 {
            assert_eq!(limiter.take(&"k", later), Ok(()));
        }
        assert!(limiter.take(&"k", later).is_err());
    }

    #[test]
    fn idle_buckets_are_forgotten_when_the_map_grows() {
        let clock = Instant::now();
        let limiter = Limiter::new(60);
        for n in 1..PRUNE_AT {
            limiter.take(&n, clock).unwrap();
        }
        assert_eq!(limiter.len(), PRUNE_AT - 1);
        // A minute later every bucket is full again: the insert that
        // reaches the mark drops them.
        limiter.take(&usize::MAX, clock + 60 * SECOND).unwrap();
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(network_of(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
