//! The negative cache: denials with a known earliest-retry instant, answered locally.
//!
//! When Redis denies a request with reason `Limited` (so with a `retry_at`), the store remembers
//! the plan (its cell keys and limits, in order, and its cost) with every cell's outcome. Until
//! `retry_at`, the same request (same plan, same cost) is denied here without a round trip:
//!
//! * **the verdict is exact**: nothing ever refunds a cell (denied requests consume nothing,
//!   admitted ones only consume more), so Redis would deny it too;
//! * **the retry instant is exact** as far as this process can know: the entry is dropped as soon
//!   as this store admits any request that consumes in one of the plan's cells (tracked with a
//!   commit sequence number per hashed cell slot), so a local answer is always what Redis would
//!   have said unless *another instance* consumed in the meantime (then Redis, too, would report a
//!   later instant; the local one is a lower bound). Each algorithm's `retry_at` for a denied
//!   request does not move while the state is unchanged (see [`crate::algorithm`]);
//! * `remaining` and `reset_at` are those of the cached denial (`remaining` at most the true value).
//!
//! Instants are compared in the clock domain the denial was taken in: the caller's `now` for the
//! client clock; for the server clock Redis's clock is estimated as `now_redis + (local time since
//! the request was sent)`, which runs ahead of Redis's (Redis read its clock after the request was
//! sent), so a local denial ends no later than Redis's would.
//!
//! Bounded: at most `capacity` plans in `SHARDS` mutex-protected maps. A full shard first drops
//! expired entries; if it is still full, the entries whose denial ends soonest are evicted down to
//! 7/8 of the shard capacity (one O(n) selection per `n / 8` insertions: amortised O(1)), and
//! counted. An entry's worth is the denial it still answers locally; one that ends soonest is the
//! closest to fresh (once it ends, Redis is asked again either way), so a flood of short denials
//! (fresh users of an exhausted tenant) never pushes out a long one (a user at an hourly limit).
//! Evicting an entry never changes a verdict, only costs a round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::algorithm::Outcome;
use crate::clock::Micros;
use crate::config::Plan;

const SHARDS: usize = 16;
/// Commit-sequence slots (cells hash into them; a collision only causes a needless round trip).
const SLOTS: usize = 4096;

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
    cost: u64,
    /// (key, limit count, cost, shadow) of every cell, in plan order.
    cells: Vec<(Box<str>, u64, u64, bool)>,
    outcomes: Vec<Outcome>,
    /// The decision's `retry_at`.
    retry_at: Micros,
    /// The decision's `now` (server domain: Redis's clock).
    now: Micros,
    /// When the denied request was sent (local monotonic clock).
    sent: Instant,
    /// Commit sequence number when the denied request was sent.
    seq: u64,
    /// Local instant after which the entry is certainly useless (for reclamation).
    dead_after: Instant,
}

impl Entry {
    fn matches(&self, plan: &Plan, domain: Domain) -> bool {
        self.domain == domain
            && self.cost == plan.cost
            && self.cells.len() == plan.cells.len()
            && self
                .cells
                .iter()
                .zip(&plan.cells)
                .all(|((k, n, cost, shadow), c)| {
                    **k == *c.key && *n == c.limit.count() && *cost == c.cost && *shadow == c.shadow
                })
    }
}

/// A hit: every cell's outcome and the estimated "now" in the entry's domain.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub outcomes: Vec<Outcome>,
    pub now: Micros,
}

pub(crate) struct NegativeCache {
    shards: Vec<Mutex<HashMap<u64, Entry>>>,
    per_shard: usize,
    evictions: AtomicU64,
    seq: AtomicU64,
    slots: Box<[AtomicU64]>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn plan_hash(plan: &Plan) -> u64 {
    let mut h = fnv(FNV_OFFSET, &plan.cost.to_le_bytes());
    for c in &plan.cells {
        h = fnv(h, &(c.key.len() as u64).to_le_bytes());
        h = fnv(h, c.key.as_bytes());
    }
    h
}

fn slot_of(key: &str) -> usize {
    (fnv(FNV_OFFSET, key.as_bytes()) % SLOTS as u64) as usize
}

impl NegativeCache {
    /// A cache of at most `capacity` plans (0 disables it).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: if capacity == 0 {
                0
            } else {
                capacity.div_ceil(SHARDS)
            },
            evictions: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    fn shard(&self, h: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.shards[(h >> 32) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The commit sequence number to record before sending a request.
    pub(crate) fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// This store admitted `plan`: its cells changed, so cached denials involving them are stale.
    pub(crate) fn committed(&self, plan: &Plan) {
        if !self.enabled() {
            return;
        }
        let s = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        for c in &plan.cells {
            self.slots[slot_of(&c.key)].fetch_max(s, Ordering::SeqCst);
        }
    }

    /// Is this exact request known to be denied at `client_now` (client domain) or now (server
    /// domain)?
    pub(crate) fn lookup(&self, plan: &Plan, domain: Domain, client_now: Micros) -> Option<Hit> {
        if !self.enabled() {
            return None;
        }
        let h = plan_hash(plan);
        let mut shard = self.shard(h);
        let e = shard.get(&h)?;
        if !e.matches(plan, domain) {
            return None;
        }
        let fresh = plan
            .cells
            .iter()
            .all(|c| self.slots[slot_of(&c.key)].load(Ordering::SeqCst) <= e.seq);
        let now = match domain {
            Domain::Client => client_now,
            Domain::Server => e
                .now
                .saturating_add(u64::try_from(e.sent.elapsed().as_micros()).unwrap_or(u64::MAX)),
        };
        if fresh && now < e.retry_at {
            return Some(Hit {
                outcomes: e.outcomes.clone(),
                now,
            });
        }
        if !fresh || domain == Domain::Server {
            shard.remove(&h);
        }
        None
    }

    /// Remember that Redis denied `plan` with `outcomes` until `retry_at`, decided at `now` in
    /// `domain`, for a request sent at `sent` when the commit sequence was `seq`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &self,
        plan: &Plan,
        outcomes: &[Outcome],
        retry_at: Micros,
        domain: Domain,
        now: Micros,
        sent: Instant,
        seq: u64,
    ) {
        if !self.enabled() || retry_at <= now {
            return;
        }
        let entry = Entry {
            domain,
            cost: plan.cost,
            cells: plan
                .cells
                .iter()
                .map(|c| (Box::from(c.key.as_str()), c.limit.count(), c.cost, c.shadow))
                .collect(),
            outcomes: outcomes.to_vec(),
            retry_at,
            now,
            sent,
            seq,
            // Client-domain instants are not tied to local time; reclaim them once the same span
            // has passed locally (plus a second), which is only a memory bound, never a decision.
            dead_after: sent + Duration::from_micros(retry_at - now) + Duration::from_secs(1),
        };
        let h = plan_hash(plan);
        let mut shard = self.shard(h);
        if !shard.contains_key(&h) && shard.len() >= self.per_shard {
            let t = Instant::now();
            shard.retain(|_, e| e.dead_after > t);
            if shard.len() >= self.per_shard {
                let target = self.per_shard - self.per_shard.div_ceil(8);
                let excess = (shard.len() - target.min(shard.len())).clamp(1, shard.len());
                // The `excess` denials that end soonest (local estimate, either domain).
                let mut ends: Vec<(Instant, u64)> =
                    shard.iter().map(|(h, e)| (e.dead_after, *h)).collect();
                ends.select_nth_unstable(excess - 1);
                for (_, v) in &ends[..excess] {
                    shard.remove(v);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shard.insert(h, entry);
    }

    /// Plans held.
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
    use crate::config::LimiterConfig;
    use crate::config::RequestContext;

    fn plan(user: &str, cost: u64) -> Plan {
        let cfg = LimiterConfig::from_json_str(r#"{"by_user": "5/s", "by_tenant": "9/s"}"#, &[])
            .unwrap()
            .0;
        cfg.policy
            .plan(&RequestContext {
                user: Some(user),
                tenant: Some("t"),
                cost,
                ..Default::default()
            })
            .unwrap()
    }

    fn denied(retry_at: Micros) -> Vec<Outcome> {
        vec![
            Outcome {
                allowed: false,
                remaining: 0,
                reset_at: retry_at,
                retry_at: Some(retry_at),
            },
            Outcome {
                allowed: true,
                remaining: 3,
                reset_at: retry_at,
                retry_at: None,
            },
        ]
    }

    #[test]
    fn same_plan_hits_until_retry_at() {
        let c = NegativeCache::new(64);
        let t = Instant::now();
        let p = plan("a", 2);
        c.insert(
            &p,
            &denied(1_000),
            1_000,
            Domain::Client,
            500,
            t,
            c.current_seq(),
        );
        assert!(c.lookup(&p, Domain::Client, 999).is_some());
        assert!(
            c.lookup(&plan("a", 3), Domain::Client, 999).is_none(),
            "other cost"
        );
        assert!(
            c.lookup(&plan("b", 2), Domain::Client, 999).is_none(),
            "other plan"
        );
        assert!(c.lookup(&p, Domain::Server, 999).is_none(), "other domain");
        assert!(c.lookup(&p, Domain::Client, 1_000).is_none());
    }

    #[test]
    fn a_local_commit_on_a_shared_cell_invalidates() {
        let c = NegativeCache::new(64);
        let p = plan("a", 1);
        c.insert(
            &p,
            &denied(1_000),
            1_000,
            Domain::Client,
            500,
            Instant::now(),
            c.current_seq(),
        );
        assert!(c.lookup(&p, Domain::Client, 600).is_some());
        c.committed(&plan("b", 1)); // shares the tenant cell
        assert!(c.lookup(&p, Domain::Client, 600).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn bounded_and_counted() {
        let c = NegativeCache::new(32);
        let t = Instant::now();
        for i in 0..1_000 {
            let p = plan(&format!("u{i}"), 1);
            c.insert(
                &p,
                &denied(10_000_000_000),
                10_000_000_000,
                Domain::Client,
                0,
                t,
                0,
            );
        }
        assert!(c.len() <= 32, "{}", c.len());
        assert!(c.evictions() > 0);
    }

    #[test]
    fn a_long_denial_is_never_evicted_by_shorter_ones() {
        // 10 x the bound of denials ending within a second do not push out one that ends in an
        // hour (the cache evicts the soonest-ending first).
        let c = NegativeCache::new(32);
        let t = Instant::now();
        let hour = 3_600_000_000;
        let victim = plan("victim", 1);
        c.insert(&victim, &denied(hour), hour, Domain::Client, 0, t, 0);
        for i in 0..320 {
            let p = plan(&format!("u{i}"), 1);
            c.insert(&p, &denied(1_000_000), 1_000_000, Domain::Client, 0, t, 0);
        }
        assert!(c.evictions() >= 320 - 32, "{}", c.evictions());
        assert!(c.len() <= 32, "{}", c.len());
        assert!(c.lookup(&victim, Domain::Client, 10).is_some());
    }

    #[test]
    fn disabled_when_capacity_is_zero() {
        let c = NegativeCache::new(0);
        let p = plan("a", 1);
        c.insert(
            &p,
            &denied(1_000),
            1_000,
            Domain::Client,
            0,
            Instant::now(),
            0,
        );
        assert!(c.lookup(&p, Domain::Client, 1).is_none());
        assert_eq!(c.len(), 0);
    }
}
