//! The in-process memory store: sharded, exact, bounded.
//!
//! * **Concurrency.** Keys are spread over 16 to 256 mutex-protected maps (sized from
//!   `max_keys`). A request locks the shards of its cells in ascending index order (so two
//!   requests can never deadlock), reads the clock, peeks every cell, and commits every cell only
//!   if all admit: all-or-nothing and exact (T threads on one key with limit L admit exactly L).
//!   There is no global lock and no background thread; requests on different shards run in
//!   parallel.
//! * **Bounds.** At most `max_keys` cells (rounded up to a multiple of the shard count). Each
//!   insertion first examines two entries under the shard's CLOCK hand and drops them if expired
//!   (incremental reclamation, never a stop-the-world sweep). When a shard is full the hand
//!   sweeps: expired entries are dropped, recently used ones get a second chance, and the first
//!   cold live entry is evicted (CLOCK ≈ LRU). Reclaimed and evicted entries are counted.
//! * An expired entry is indistinguishable from an absent one (see
//!   [`crate::algorithm::CellState::expires_at`]), so reclamation never changes a decision;
//!   eviction of a live entry forgets its usage (the price of the bound, counted in
//!   [`MemoryStats::evictions`]).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::map::RawEntryApiV1;
use indexmap::IndexMap;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::{Store, StoreError};
use crate::algorithm::CellState;
use crate::clock::{Clock, Micros};
use crate::config::Plan;
use crate::decision::Decision;

/// Most shards (a power of two, like every shard count).
pub const MAX_SHARDS: usize = 256;
/// Fewest shards.
pub const MIN_SHARDS: usize = 16;
/// Target capacity of one shard.
const KEYS_PER_SHARD: usize = 256;

/// Entries examined by the reclaiming hand on every insertion.
const RECLAIM_STEPS: usize = 2;

struct Entry {
    state: CellState,
    expires_at: Micros,
    referenced: bool,
}

/// Keyed with a per-store random seed: identities are untrusted, and an unseeded hash would let
/// crafted ones pile into one shard (and force evictions there).
type KeyHasher = foldhash::fast::RandomState;

struct Shard {
    map: IndexMap<Box<str>, Entry, KeyHasher>,
    hand: usize,
}

/// Counters of the memory store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Live cells stored.
    pub keys: u64,
    /// Expired cells dropped.
    pub reclaimed: u64,
    /// Live cells evicted because the store was full.
    pub evictions: u64,
}

/// Inline storage for per-cell scratch data (no allocation for up to 4 cells).
type Small<T> = SmallVec<[T; 4]>;

/// Index of `key` in the shard, using the already computed hash.
fn index_of(shard: &Shard, hash: u64, key: &str) -> Option<usize> {
    shard
        .map
        .raw_entry_v1()
        .index_from_hash(hash, |k| k.as_ref() == key)
}

/// Pad each shard to its own cache line pair so shards do not false-share.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// Sharded, bounded, exact in-process store.
pub struct MemoryStore {
    shards: Box<[Padded]>,
    per_shard: usize,
    mask: usize,
    clock: Arc<dyn Clock>,
    hasher: KeyHasher,
    reclaimed: AtomicU64,
    evictions: AtomicU64,
}

impl MemoryStore {
    /// A store holding at most `max_keys` cells (at least one per shard).
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        let shards = (max_keys / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(MIN_SHARDS, MAX_SHARDS);
        // One seed for the store: the shard maps must hash exactly as `locate` does.
        let hasher = KeyHasher::default();
        Self {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        map: IndexMap::with_hasher(hasher.clone()),
                        hand: 0,
                    }))
                })
                .collect(),
            per_shard: max_keys.div_ceil(shards).max(1),
            mask: shards - 1,
            clock,
            hasher,
            reclaimed: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Current counters.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            keys: self
                .shards
                .iter()
                .map(|s| s.0.lock().map.len() as u64)
                .sum(),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The key's hash (the one the shard maps use) and its shard.
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, ((hash >> 32) as usize) & self.mask)
    }

    /// Drop expired entries under the hand; when `need_room`, continue until one entry is
    /// removed (an expired one, or the first cold live one, which counts as an eviction).
    fn sweep(&self, shard: &mut Shard, now: Micros, need_room: bool) {
        let mut steps = 0usize;
        let max_steps = if need_room {
            2 * shard.map.len() + 1
        } else {
            RECLAIM_STEPS
        };
        while steps < max_steps && !shard.map.is_empty() {
            steps += 1;
            if shard.hand >= shard.map.len() {
                shard.hand = 0;
            }
            let Some((_, e)) = shard.map.get_index_mut(shard.hand) else {
                break;
            };
            if e.expires_at <= now {
                shard.map.swap_remove_index(shard.hand);
                self.reclaimed.fetch_add(1, Ordering::Relaxed);
                if need_room {
                    return;
                }
            } else if need_room && !e.referenced {
                shard.map.swap_remove_index(shard.hand);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                return;
            } else {
                e.referenced = false;
                shard.hand += 1;
            }
        }
    }

    fn insert(&self, shard: &mut Shard, key: &str, entry: Entry, now: Micros) {
        self.sweep(shard, now, false);
        if shard.map.len() >= self.per_shard {
            self.sweep(shard, now, true);
        }
        shard.map.insert(key.into(), entry);
    }

    #[inline(always)]
    fn check_single(&self, plan: &Plan) -> Decision {
        let cell = &plan.cells[0];
        let (hash, sid) = self.locate(&cell.key);
        let mut shard = self.shards[sid].0.lock();
        let now = self.clock.now_micros();
        let idx = index_of(&shard, hash, &cell.key);
        let fresh;
        let state = match idx.and_then(|i| shard.map.get_index(i)) {
            Some((_, e)) if e.state.algorithm() == cell.algorithm => &e.state,
            _ => {
                fresh = cell.algorithm.fresh_state();
                &fresh
            }
        };
        let outcome = state.peek(now, plan.cost, &cell.limit);
        let decision = Decision::combine(plan, now, [outcome]);
        if decision.allowed {
            self.commit(&mut shard, idx, cell, plan.cost, now);
        }
        decision
    }

    #[inline]
    fn commit(
        &self,
        shard: &mut Shard,
        idx: Option<usize>,
        cell: &crate::config::Cell,
        cost: u64,
        now: Micros,
    ) {
        if let Some((_, e)) = idx.and_then(|i| shard.map.get_index_mut(i)) {
            if e.state.algorithm() != cell.algorithm {
                e.state = cell.algorithm.fresh_state();
            }
            e.state.commit(now, cost, &cell.limit);
            e.expires_at = e.state.expires_at(&cell.limit);
            e.referenced = true;
        } else {
            let mut state = cell.algorithm.fresh_state();
            state.commit(now, cost, &cell.limit);
            let entry = Entry {
                expires_at: state.expires_at(&cell.limit),
                state,
                referenced: true,
            };
            self.insert(shard, &cell.key, entry, now);
        }
    }
}

impl Store for MemoryStore {
    #[inline(always)]
    fn check(&self, plan: &Plan) -> Result<Decision, StoreError> {
        match plan.cells.len() {
            0 => return Ok(Decision::unlimited(self.clock.now_micros())),
            1 => return Ok(self.check_single(plan)),
            _ => {}
        }
        // Lock the involved shards in ascending index order (so two requests can never
        // deadlock), each once.
        let mut located: Small<(u64, usize)> = Small::new();
        let mut order: Small<usize> = Small::new();
        for c in &plan.cells {
            let (hash, sid) = self.locate(&c.key);
            located.push((hash, sid));
            if !order.contains(&sid) {
                order.push(sid);
            }
        }
        order.sort_unstable();
        let mut guards: Small<MutexGuard<'_, Shard>> = Small::new();
        for &sid in &order {
            guards.push(self.shards[sid].0.lock());
        }
        let slot = |sid: usize| order.iter().position(|&o| o == sid).unwrap_or(0);
        let now = self.clock.now_micros();

        let mut idxs: Small<Option<usize>> = Small::new();
        let mut results = crate::decision::Dimensions::new();
        for (cell, &(hash, sid)) in plan.cells.iter().zip(&located) {
            let shard = &guards[slot(sid)];
            let idx = index_of(shard, hash, &cell.key);
            let outcome = match idx.and_then(|i| shard.map.get_index(i)) {
                Some((_, e)) if e.state.algorithm() == cell.algorithm => {
                    e.state.peek(now, plan.cost, &cell.limit)
                }
                _ => cell
                    .algorithm
                    .fresh_state()
                    .peek(now, plan.cost, &cell.limit),
            };
            idxs.push(idx);
            results.push(crate::decision::DimensionResult {
                dimension: cell.dimension,
                name: cell.name,
                limit: cell.limit,
                outcome,
            });
        }
        let decision = Decision::from_results(results, now, plan.cost);
        if decision.allowed {
            // Existing entries first (their indices stay valid), then insertions (which may
            // reclaim or evict and so move indices).
            for ((cell, &(_, sid)), idx) in plan.cells.iter().zip(&located).zip(&idxs) {
                if idx.is_some() {
                    self.commit(&mut guards[slot(sid)], *idx, cell, plan.cost, now);
                }
            }
            for ((cell, &(_, sid)), idx) in plan.cells.iter().zip(&located).zip(&idxs) {
                if idx.is_none() {
                    self.commit(&mut guards[slot(sid)], None, cell, plan.cost, now);
                }
            }
        }
        Ok(decision)
    }
}
