//! The negative cache: denials with a known earliest-retry instant, answered locally.
//!
//! When Redis denies a request and a denying cell `k` reports `retry_at_k` for cost `c`, no
//! request of cost `c' >= c` can pass cell `k` before `retry_at_k`: nothing ever refunds a cell
//! (denied requests consume nothing, admitted ones only consume more), and the retry instant of
//! every algorithm is non-decreasing in the cost. So until then a request whose plan contains cell
//! `k` (same key, same limit) with cost `>= c` is denied here without a round trip. The cache is
//! therefore *exact* in the admit/deny sense: it never denies a request Redis would admit.
//!
//! Instants are compared in the clock domain the denial was taken in:
//!
//! * **client clock**: the caller's `now` against `retry_at` directly;
//! * **server clock**: Redis's clock is estimated as `now_redis + (local elapsed since the
//!   request was sent)`. Redis read its clock after the request was sent, so this estimate runs
//!   ahead of Redis's clock, and the local denial ends no later than Redis's would.
//!
//! What a local denial reports: the cached outcomes of the denying cells (their `remaining` is as
//! of the cached denial, so at most the true value; `retry_at` is exact for every algorithm, see
//! the module docs of [`crate::algorithm`]); cells not in the cache are reported as admitting
//! (remaining = their limit, reset = now), which is never what headers describe for a denial.
//!
//! Bounded: at most `capacity` cells in `SHARDS` mutex-protected maps. A full shard first drops
//! expired entries; if it is still full, arbitrary entries are evicted down to 7/8 of the shard
//! capacity (amortised O(1) per insertion), and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::algorithm::Outcome;
use crate::clock::Micros;

const SHARDS: usize = 16;

/// Which clock a cached instant belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    /// Redis `TIME`.
    Server,
    /// The caller's clock.
    Client,
}

#[derive(Debug, Clone)]
struct Entry {
    domain: Domain,
    /// Cost of the denied request.
    cost: u64,
    /// Limit count the denial was computed with.
    count: u64,
    /// The cell's outcome in the denial.
    outcome: Outcome,
    /// `retry_at` of that outcome.
    retry_at: Micros,
    /// The decision's `now` (server domain: Redis's clock).
    now: Micros,
    /// When the request that was denied was sent (local monotonic clock).
    sent: Instant,
    /// Local instant after which the entry is certainly useless (for reclamation).
    dead_after: Instant,
}

/// A hit: the outcome to report and the estimated "now" in the entry's domain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit {
    pub outcome: Outcome,
    pub now: Micros,
}

pub(crate) struct NegativeCache {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    per_shard: usize,
    evictions: AtomicU64,
}

fn shard_of(key: &str) -> usize {
    // FNV-1a over the key; only spreads keys over shards.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 32) as usize % SHARDS
}

impl NegativeCache {
    /// A cache of at most `capacity` cells (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: if capacity == 0 {
                0
            } else {
                capacity.div_ceil(SHARDS)
            },
            evictions: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Is cell `key` (limit `count`) known to deny a request of `cost` at `client_now` (client
    /// domain) or now (server domain)?
    pub(crate) fn lookup(
        &self,
        key: &str,
        count: u64,
        cost: u64,
        domain: Domain,
        client_now: Micros,
    ) -> Option<Hit> {
        if !self.enabled() {
            return None;
        }
        let mut shard = self.lock(key);
        let e = shard.get(key)?;
        if e.domain != domain || e.count != count || cost < e.cost {
            return None;
        }
        let now = match domain {
            Domain::Client => client_now,
            Domain::Server => e
                .now
                .saturating_add(u64::try_from(e.sent.elapsed().as_micros()).unwrap_or(u64::MAX)),
        };
        if now < e.retry_at {
            Some(Hit {
                outcome: e.outcome,
                now,
            })
        } else {
            if domain == Domain::Server {
                shard.remove(key);
            }
            None
        }
    }

    /// Remember that cell `key` denied a request of `cost` with `outcome` (which must carry a
    /// `retry_at`), decided at `now` in `domain`, for a request sent at `sent`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &self,
        key: &str,
        count: u64,
        cost: u64,
        outcome: Outcome,
        domain: Domain,
        now: Micros,
        sent: Instant,
    ) {
        let Some(retry_at) = outcome.retry_at else {
            return;
        };
        if !self.enabled() || retry_at <= now {
            return;
        }
        let entry = Entry {
            domain,
            cost,
            count,
            outcome,
            retry_at,
            now,
            sent,
            // Client-domain instants are not tied to local time; reclaim them once the same span
            // has passed locally (plus a second), which is only a memory bound, never a decision.
            dead_after: sent + Duration::from_micros(retry_at - now) + Duration::from_secs(1),
        };
        let mut shard = self.lock(key);
        if !shard.contains_key(key) && shard.len() >= self.per_shard {
            let t = Instant::now();
            shard.retain(|_, e| e.dead_after > t);
            if shard.len() >= self.per_shard {
                let target = self.per_shard - self.per_shard.div_ceil(8);
                let excess = shard.len() - target.min(shard.len());
                let victims: Vec<String> = shard.keys().take(excess.max(1)).cloned().collect();
                for v in victims {
                    shard.remove(&v);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shard.insert(key.to_string(), entry);
    }

    /// Cells held.
    pub(crate) fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum()
    }

    /// Live entries evicted because the cache was full.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(retry_at: Micros) -> Outcome {
        Outcome {
            allowed: false,
            remaining: 0,
            reset_at: retry_at,
            retry_at: Some(retry_at),
        }
    }

    #[test]
    fn client_domain_hits_until_retry_at_and_respects_cost_and_limit() {
        let c = NegativeCache::new(64);
        let t = Instant::now();
        c.insert("k", 5, 2, denied(1_000), Domain::Client, 500, t);
        assert!(c.lookup("k", 5, 2, Domain::Client, 999).is_some());
        assert!(c.lookup("k", 5, 3, Domain::Client, 999).is_some());
        assert!(
            c.lookup("k", 5, 1, Domain::Client, 999).is_none(),
            "smaller cost"
        );
        assert!(
            c.lookup("k", 6, 2, Domain::Client, 999).is_none(),
            "other limit"
        );
        assert!(
            c.lookup("k", 5, 2, Domain::Server, 999).is_none(),
            "other domain"
        );
        assert!(c.lookup("k", 5, 2, Domain::Client, 1_000).is_none());
        assert!(c.lookup("other", 5, 2, Domain::Client, 999).is_none());
    }

    #[test]
    fn bounded_and_counted() {
        let c = NegativeCache::new(32);
        let t = Instant::now();
        for i in 0..1_000 {
            c.insert(
                &format!("k{i}"),
                5,
                1,
                denied(10_000_000_000),
                Domain::Client,
                0,
                t,
            );
        }
        assert!(c.len() <= 32, "{}", c.len());
        assert!(c.evictions() > 0);
    }

    #[test]
    fn disabled_when_capacity_is_zero() {
        let c = NegativeCache::new(0);
        c.insert("k", 5, 1, denied(1_000), Domain::Client, 0, Instant::now());
        assert!(c.lookup("k", 5, 1, Domain::Client, 1).is_none());
        assert_eq!(c.len(), 0);
    }
}
