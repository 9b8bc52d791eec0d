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
//!   for a second or more (incremental reclamation, never a stop-the-world sweep). When a shard is full the hand
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

/// The incremental reclaim only drops entries expired for at least this long (1 s). An expired
/// entry decides like an absent one either way; the grace keeps a key that returns within a
/// second (e.g. a 1,000,000/s limit, whose cells expire a microsecond after each request) from
/// being freed and re-allocated on every visit. A full shard still drops expired entries first,
/// with no grace.
const RECLAIM_GRACE_US: Micros = 1_000_000;

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
            let reclaimable = if need_room {
                e.expires_at <= now
            } else {
                e.expires_at.saturating_add(RECLAIM_GRACE_US) <= now
            };
            if reclaimable {
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

/// Per-cell scratch of a multi-cell check.
#[derive(Clone, Copy, Default)]
struct Scratch {
    /// The key's hash.
    hash: u64,
    /// Its shard.
    shard: usize,
    /// Index of its shard's guard (position of `shard` in the ascending lock order).
    guard: usize,
    /// Index of the key in its shard's map, if present.
    idx: Option<usize>,
}

/// Plans with at most this many cells use stack scratch (no allocation); larger ones a vector.
const INLINE_CELLS: usize = 4;

impl MemoryStore {
    /// Check a plan of two or more cells: lock the involved shards in ascending index order
    /// (so two requests can never deadlock), each once; peek every cell; commit all or none.
    /// `decision` is filled in place (returning it by value cost a 432-byte copy per check).
    fn check_multi(&self, plan: &Plan, decision: &mut Decision) -> Result<(), StoreError> {
        let n = plan.cells.len();
        if n <= INLINE_CELLS {
            let mut scratch = [Scratch::default(); INLINE_CELLS];
            let mut order = [0usize; INLINE_CELLS];
            let mut guards: [Option<MutexGuard<'_, Shard>>; INLINE_CELLS] =
                [const { None }; INLINE_CELLS];
            self.check_cells(
                plan,
                &mut scratch[..n],
                &mut order[..n],
                &mut guards[..n],
                decision,
            )
        } else {
            let mut scratch = vec![Scratch::default(); n];
            let mut order = vec![0usize; n];
            let mut guards: Vec<Option<MutexGuard<'_, Shard>>> = (0..n).map(|_| None).collect();
            self.check_cells(plan, &mut scratch, &mut order, &mut guards, decision)
        }
    }

    /// [`Self::check_multi`] over caller-provided scratch slices (each `plan.cells.len()` long).
    #[inline(always)]
    fn check_cells<'s>(
        &'s self,
        plan: &Plan,
        scratch: &mut [Scratch],
        order: &mut [usize],
        guards: &mut [Option<MutexGuard<'s, Shard>>],
        decision: &mut Decision,
    ) -> Result<(), StoreError> {
        for ((s, o), c) in scratch.iter_mut().zip(order.iter_mut()).zip(&plan.cells) {
            (s.hash, s.shard) = self.locate(&c.key);
            *o = s.shard;
        }
        order.sort_unstable();
        // Deduplicate in place: `order[..m]` holds each involved shard once, ascending.
        let mut m = 0;
        for i in 0..order.len() {
            if m == 0 || order[i] != order[m - 1] {
                order[m] = order[i];
                m += 1;
            }
        }
        for (g, &sid) in guards.iter_mut().zip(&order[..m]) {
            *g = Some(self.shards[sid].0.lock());
        }
        for s in scratch.iter_mut() {
            s.guard = order[..m].iter().position(|&o| o == s.shard).unwrap_or(0);
        }
        let now = self.clock.now_micros();
        decision.now = now;
        for (cell, s) in plan.cells.iter().zip(scratch.iter_mut()) {
            let Some(shard) = guards[s.guard].as_deref() else {
                // Every involved shard is locked above; should that ever not hold, the request
                // is an error (fail_mode), never a check that skipped a cell.
                return Err(StoreError::permanent(
                    "memory store: a cell's shard is not locked",
                ));
            };
            s.idx = index_of(shard, s.hash, &cell.key);
            let outcome = match s.idx.and_then(|i| shard.map.get_index(i)) {
                Some((_, e)) if e.state.algorithm() == cell.algorithm => {
                    e.state.peek(now, plan.cost, &cell.limit)
                }
                _ => cell
                    .algorithm
                    .fresh_state()
                    .peek(now, plan.cost, &cell.limit),
            };
            decision.push(cell.dimension, cell.name, cell.limit, outcome);
        }
        decision.settle();
        if decision.allowed {
            // Existing entries first (their indices stay valid), then insertions (which may
            // reclaim or evict and so move indices).
            for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
                if let (Some(_), Some(shard)) = (s.idx, guards[s.guard].as_deref_mut()) {
                    self.commit(shard, s.idx, cell, plan.cost, now);
                }
            }
            for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
                if let (None, Some(shard)) = (s.idx, guards[s.guard].as_deref_mut()) {
                    self.commit(shard, None, cell, plan.cost, now);
                }
            }
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    #[inline(always)]
    fn check(&self, plan: &Plan) -> Result<Decision, StoreError> {
        Ok(match plan.cells.len() {
            0 => Decision::unlimited(self.clock.now_micros()),
            1 => self.check_single(plan),
            _ => {
                let mut decision = Decision::pending(0, plan.cost);
                self.check_multi(plan, &mut decision)?;
                decision
            }
        })
    }
}
