//! The in-process memory store: sharded, exact, bounded.
//!
//! * **Concurrency.** Keys are spread over 16 to 65,536 mutex-protected maps, about one per 32
//!   keys of `max_keys` (1,000,000 keys: 32,768 shards). A request locks the shards of its cells
//!   in ascending index order (so two requests can never deadlock), reads the clock, peeks every
//!   cell, and commits every cell only if all admit: all-or-nothing and exact (T threads on one
//!   key with limit L admit exactly L). There is no global lock and no background thread. The
//!   shards are many so that threads working on different keys rarely write the same cache line:
//!   with a few hundred shards, two threads each cycling over their own 1,024 keys met in every
//!   shard and moved its lock word between cores on about every other check (1.2-1.3x the
//!   throughput of one thread); with ~32 keys per shard they share almost none (1.7-2.0x). The
//!   price is 128 bytes per shard (4 MiB at 1,000,000 keys), measured in `docs/BENCHMARKS.md`.
//! * **Bounds.** At most `max_keys` cells in the whole store, counted by one atomic that only
//!   insertions and removals touch (never a check of an existing key). Each insertion first
//!   examines two entries under its shard's CLOCK hand and drops them if expired for a second or
//!   more (incremental reclamation, never a stop-the-world sweep). When the store is full, the
//!   insertion makes room in its own shard: the hand sweeps, expired entries are dropped, recently
//!   used ones get a second chance, and the first cold live entry is evicted (CLOCK ≈ LRU among
//!   the shard's keys); an empty shard takes the room from the next shard it can lock without
//!   waiting. Reclaimed and evicted entries are counted. Concurrent insertions that read the count
//!   at the same instant can exceed the bound by one entry each (at most the number of threads
//!   inserting at that instant); the next insertions remove two entries each until it holds again.
//! * An expired entry is indistinguishable from an absent one (see
//!   [`crate::algorithm::CellState::expires_at`]), so reclamation never changes a decision;
//!   eviction of a live entry forgets its usage (the price of the bound, counted in
//!   [`MemoryStats::evictions`]).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::{Store, StoreError};
use crate::algorithm::CellState;
use crate::clock::{Clock, Micros};
use crate::config::{Cell, Plan};
use crate::decision::Decision;

/// Most shards (a power of two, like every shard count).
pub const MAX_SHARDS: usize = 65_536;
/// Fewest shards.
pub const MIN_SHARDS: usize = 16;
/// Keys of `max_keys` per shard (the shard count is `max_keys / KEYS_PER_SHARD` rounded up to a
/// power of two, clamped to `MIN_SHARDS..=MAX_SHARDS`).
const KEYS_PER_SHARD: usize = 32;
/// Shards an insertion into an empty shard of a full store tries (without waiting) to take room
/// from.
const STEAL_ATTEMPTS: usize = 64;

/// Live entries examined by the reclaiming hand on every insertion.
const RECLAIM_STEPS: usize = 2;
/// Buckets (occupied or not) the reclaiming hand visits at most on one insertion.
const RECLAIM_VISITS: usize = 8;

/// The incremental reclaim only drops entries expired for at least this long (1 s). An expired
/// entry decides like an absent one either way; the grace keeps a key that returns within a
/// second (e.g. a 1,000,000/s limit, whose cells expire a microsecond after each request) from
/// being freed and re-allocated on every visit. A full store still drops expired entries first,
/// with no grace.
const RECLAIM_GRACE_US: Micros = 1_000_000;

/// One cell: its key, its state, and the CLOCK bookkeeping, stored inline in the shard's table.
struct Slot {
    key: Box<str>,
    state: CellState,
    expires_at: Micros,
    referenced: bool,
}

/// Keyed with a per-store random seed: identities are untrusted, and an unseeded hash would let
/// crafted ones pile into one shard (and force evictions there).
type KeyHasher = foldhash::fast::RandomState;

struct Shard {
    table: HashTable<Slot>,
    /// The CLOCK hand: a bucket index of `table` (buckets keep their index until the table
    /// grows; a hand past the end wraps to 0).
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

/// Each shard on its own cache line, so shards do not false-share.
#[repr(align(64))]
struct Padded(Mutex<Shard>);

// A shard (lock word and table header) fits its line.
const _: () = assert!(std::mem::size_of::<Padded>() == 64);

/// A counter on its own cache line pair (the key count is written by insertions and removals
/// only; checks of existing keys never touch it).
#[repr(align(128))]
struct PaddedCount(AtomicUsize);

/// Sharded, bounded, exact in-process store.
pub struct MemoryStore {
    shards: Box<[Padded]>,
    max_keys: usize,
    len: PaddedCount,
    mask: usize,
    clock: Arc<dyn Clock>,
    hasher: KeyHasher,
    reclaimed: AtomicU64,
    evictions: AtomicU64,
}

impl MemoryStore {
    /// A store holding at most `max_keys` cells (at least one).
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        let shards = (max_keys / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(MIN_SHARDS, MAX_SHARDS);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        table: HashTable::new(),
                        hand: 0,
                    }))
                })
                .collect(),
            max_keys: max_keys.max(1),
            len: PaddedCount(AtomicUsize::new(0)),
            mask: shards - 1,
            clock,
            hasher: KeyHasher::default(),
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
            keys: self.len.0.load(Ordering::Relaxed) as u64,
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// The key's hash (the one the shard tables use) and its shard. The shard takes bits 32 and
    /// up; the tables use the low bits (bucket) and the top seven (control byte).
    fn locate(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, ((hash >> 32) as usize) & self.mask)
    }

    /// Advance the CLOCK hand: drop entries expired (for a second or more, unless `need_room`)
    /// and clear the reference bit of the others. Without `need_room` the hand examines at most
    /// [`RECLAIM_STEPS`] entries over [`RECLAIM_VISITS`] buckets; with it, it continues until one
    /// entry is removed (an expired one, or the first cold live one, which counts as an
    /// eviction), at most two full turns. Returns whether an entry was removed.
    fn sweep(&self, shard: &mut Shard, now: Micros, need_room: bool) -> bool {
        let buckets = shard.table.num_buckets();
        let (max_visits, max_examined) = if need_room {
            (2 * buckets + 1, usize::MAX)
        } else {
            (RECLAIM_VISITS, RECLAIM_STEPS)
        };
        let mut removed = false;
        let mut examined = 0usize;
        for _ in 0..max_visits {
            if examined >= max_examined || shard.table.is_empty() {
                break;
            }
            if shard.hand >= buckets {
                shard.hand = 0;
            }
            let at = shard.hand;
            shard.hand += 1;
            let Ok(mut entry) = shard.table.get_bucket_entry(at) else {
                continue;
            };
            examined += 1;
            let slot = entry.get_mut();
            let reclaimable = if need_room {
                slot.expires_at <= now
            } else {
                slot.expires_at.saturating_add(RECLAIM_GRACE_US) <= now
            };
            if reclaimable || (need_room && !slot.referenced) {
                entry.remove();
                self.len.0.fetch_sub(1, Ordering::Relaxed);
                let counter = if reclaimable {
                    &self.reclaimed
                } else {
                    &self.evictions
                };
                counter.fetch_add(1, Ordering::Relaxed);
                removed = true;
                if need_room {
                    break;
                }
            } else {
                slot.referenced = false;
            }
        }
        removed
    }

    /// Insert a new cell into `shard` (index `sid`, locked by the caller), keeping the store
    /// within `max_keys`: room is made in the shard itself or, if it has nothing to give, in the
    /// next shards that can be locked without waiting (never blocking on a second lock, so no
    /// deadlock with requests that lock several shards in order). Up to two entries are removed
    /// per insertion, so a count pushed over the bound by concurrent insertions comes back down.
    fn insert(&self, shard: &mut Shard, sid: usize, hash: u64, slot: Slot, now: Micros) {
        self.sweep(shard, now, false);
        for _ in 0..2 {
            if self.len.0.load(Ordering::Relaxed) < self.max_keys {
                break;
            }
            if !self.sweep(shard, now, true) && !self.steal_room(sid, now) {
                break;
            }
        }
        shard
            .table
            .insert_unique(hash, slot, |s| self.hasher.hash_one(&*s.key));
        self.len.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Remove one entry from the first of the shards after `sid` that can be locked without
    /// waiting and has one to give.
    #[cold]
    fn steal_room(&self, sid: usize, now: Micros) -> bool {
        (1..=STEAL_ATTEMPTS.min(self.mask)).any(|step| {
            self.shards[(sid + step) & self.mask]
                .0
                .try_lock()
                .is_some_and(|mut other| self.sweep(&mut other, now, true))
        })
    }

    /// A new slot for `cell` holding one admitted request of `cost` at `now`.
    fn new_slot(cell: &Cell, cost: u64, now: Micros) -> Slot {
        let mut state = cell.algorithm.fresh_state();
        state.commit(now, cost, &cell.limit);
        Slot {
            key: Box::from(&*cell.key),
            expires_at: state.expires_at(&cell.limit),
            state,
            referenced: true,
        }
    }

    /// Consume `cost` at `now` in an existing slot (reset first if it holds another
    /// algorithm's state).
    #[inline]
    fn commit_slot(slot: &mut Slot, cell: &Cell, cost: u64, now: Micros) {
        if slot.state.algorithm() != cell.algorithm {
            slot.state = cell.algorithm.fresh_state();
        }
        slot.state.commit(now, cost, &cell.limit);
        slot.expires_at = slot.state.expires_at(&cell.limit);
        slot.referenced = true;
    }

    #[inline(always)]
    fn check_single(&self, plan: &Plan) -> Decision {
        let cell = &plan.cells[0];
        let (hash, sid) = self.locate(&cell.key);
        let mut shard = self.shards[sid].0.lock();
        let now = self.clock.now_micros();
        let found = shard.table.find_mut(hash, |s| *s.key == *cell.key);
        let outcome = match &found {
            Some(slot) if slot.state.algorithm() == cell.algorithm => {
                slot.state.peek(now, plan.cost, &cell.limit)
            }
            _ => cell
                .algorithm
                .fresh_state()
                .peek(now, plan.cost, &cell.limit),
        };
        let decision = Decision::combine(plan, now, [outcome]);
        if decision.allowed {
            match found {
                Some(slot) => Self::commit_slot(slot, cell, plan.cost, now),
                None => {
                    let slot = Self::new_slot(cell, plan.cost, now);
                    self.insert(&mut shard, sid, hash, slot, now);
                }
            }
        }
        decision
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
    /// Bucket index of the key in its shard's table, if present.
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
            s.idx = shard
                .table
                .find_bucket_index(s.hash, |slot| *slot.key == *cell.key);
            let outcome = match s.idx.and_then(|i| shard.table.get_bucket(i)) {
                Some(slot) if slot.state.algorithm() == cell.algorithm => {
                    slot.state.peek(now, plan.cost, &cell.limit)
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
            // Existing entries first (their bucket indices stay valid), then insertions (which
            // may grow a table or remove entries).
            for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
                let Some(shard) = guards[s.guard].as_deref_mut() else {
                    continue;
                };
                match s.idx.map(|i| shard.table.get_bucket_mut(i)) {
                    Some(Some(slot)) => Self::commit_slot(slot, cell, plan.cost, now),
                    Some(None) => {
                        return Err(StoreError::permanent(
                            "memory store: a cell's entry moved while its shard was locked",
                        ))
                    }
                    None => {}
                }
            }
            for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
                if let (None, Some(shard)) = (s.idx, guards[s.guard].as_deref_mut()) {
                    // Looked up again: a plan naming one key twice must not store it twice.
                    match shard.table.find_mut(s.hash, |slot| *slot.key == *cell.key) {
                        Some(slot) => Self::commit_slot(slot, cell, plan.cost, now),
                        None => {
                            let slot = Self::new_slot(cell, plan.cost, now);
                            self.insert(shard, s.shard, s.hash, slot, now);
                        }
                    }
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
