//! The in-process memory store: sharded, exact, bounded.
//!
//! * **Concurrency.** Keys are spread over 16 to 65,536 mutex-protected hash tables, about one
//!   per 32 keys of `max_keys` (1,000,000 keys: 32,768 shards). A request locks the shards of its
//!   cells in ascending index order (so two requests can never deadlock), reads the clock, peeks
//!   every cell at its own cost, and commits only if every enforced cell admits (then the cells
//!   that [`super::commits`]): all-or-nothing and exact (T threads on one key with limit L admit
//!   exactly L). There is no global lock and no background thread.
//!   The shards are many so that threads working on different keys rarely write the same cache
//!   line: with 256 shards, two threads each cycling over their own 1,024 keys met in every shard
//!   and moved its lock word between cores on about every other check (1.27x the throughput of
//!   one thread, median of 10 paired runs); with ~32 keys per shard, 1.75x, the same as two
//!   stores sharing nothing (1.76x). A shard is one 64-byte line (2 MiB at 1,000,000 keys, counted
//!   in the bytes per key of `docs/BENCHMARKS.md`); keys, states and limits sit inline in
//!   its table's slots, so a lookup reads the shard line, a control group, a slot and the key.
//! * **Bounds.** At most `max_keys` cells in the whole store, counted by one atomic that only
//!   insertions and removals touch (never a check of an existing key). Each insertion first lets
//!   its shard's reclaiming hand examine up to two entries among the next eight buckets and drop
//!   those expired for a second or more (incremental reclamation, never a stop-the-world sweep).
//! * **Eviction forgets the least usage** (see [`room`]). When the store is full, room is made
//!   before anything is committed, never from one of the request's own cells: in the shards the
//!   request holds, the first expired entry, else the live entry closest to fresh (lowest
//!   [`Usage`](crate::algorithm::Usage), then soonest restored); that one is evicted unless it
//!   is more used than the newcomer, in which case up to 8 further shards are sampled and the
//!   lowest entry of the whole sample goes. So a cell that denies is never evicted while a cell
//!   with room is in the sample, and a flood of fresh identities evicts its own kind. Other
//!   shards are only ever locked with `try_lock` (no waiting, so no deadlock). Reclaimed and
//!   evicted entries are counted.
//!   The bound is exceeded only by insertions that race (they read the count at the same
//!   instant, or every other shard with an entry is locked at that instant): by one entry each
//!   at most, and the next insertions remove two entries each until it holds again.
//! * An expired entry is indistinguishable from an absent one (see
//!   [`crate::algorithm::CellState::expires_at`]), so reclamation never changes a decision;
//!   eviction of a live entry forgets its usage (the price of the bound, counted in
//!   [`MemoryStats::evictions`]), which is why the least used one goes.
//! * A plan naming one key twice is an error (it would be peeked once and committed twice).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::{Store, StoreError};
use crate::algorithm::{CellState, Outcome};
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

mod room;

/// One cell: its key, its state and its limit, stored inline in the shard's table.
struct Slot {
    key: Box<str>,
    state: CellState,
    expires_at: Micros,
    /// The limit's count (at most `u32::MAX`) as last committed: with the window (in the key,
    /// so never changing) it gives the cell's [`crate::algorithm::Usage`] for eviction.
    count: u32,
    /// The limit's window in seconds (at most 366 days).
    window_secs: u32,
}

/// Keyed with a per-store random seed: identities are untrusted, and an unseeded hash would let
/// crafted ones pile into one shard (and force evictions there).
type KeyHasher = foldhash::fast::RandomState;

struct Shard {
    table: HashTable<Slot>,
    /// The reclaiming hand: a bucket index of `table` (buckets keep their index until the table
    /// grows or rehashes in place; a hand past the end wraps to 0).
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

    /// Insert a new cell into `shard` (locked by the caller; room already made, see
    /// [`Self::make_room`]).
    fn insert(&self, shard: &mut Shard, hash: u64, slot: Slot) {
        shard
            .table
            .insert_unique(hash, slot, |s| self.hasher.hash_one(&*s.key));
        self.len.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A new slot for `cell` holding one admitted request of `cost` at `now`.
    fn new_slot(cell: &Cell, cost: u64, now: Micros) -> Slot {
        let mut state = cell.algorithm.fresh_state();
        state.commit(now, cost, &cell.limit);
        Slot {
            key: Box::from(&*cell.key),
            expires_at: state.expires_at(&cell.limit),
            state,
            count: u32::try_from(cell.limit.count()).unwrap_or(u32::MAX),
            window_secs: u32::try_from(cell.limit.window_secs()).unwrap_or(u32::MAX),
        }
    }

    /// Would `cost` be admitted in `cell` at `now`, given its slot (absent, or holding another
    /// algorithm's state: fresh)?
    #[inline(always)]
    fn peek_slot(slot: Option<&Slot>, cell: &Cell, cost: u64, now: Micros) -> Outcome {
        match slot {
            Some(slot) if slot.state.algorithm() == cell.algorithm => {
                slot.state.peek(now, cost, &cell.limit)
            }
            _ => cell.algorithm.fresh_state().peek(now, cost, &cell.limit),
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
        // A reload may change a limit's count (not its window: that is in the key).
        slot.count = u32::try_from(cell.limit.count()).unwrap_or(u32::MAX);
    }

    #[inline(always)]
    fn check_single(&self, plan: &Plan) -> Decision {
        let cell = &plan.cells[0];
        let (hash, sid) = self.locate(&cell.key);
        let mut shard = self.shards[sid].0.lock();
        let now = self.clock.now_micros();
        let found = shard.table.find_mut(hash, |s| *s.key == *cell.key);
        let outcome = Self::peek_slot(found.as_deref(), cell, cell.cost, now);
        // `store::commits` for the one cell (which admitting means the request is admitted).
        let commit = outcome.allowed && cell.cost > 0;
        let decision = Decision::single(cell, now, plan.cost, outcome);
        if commit {
            match found {
                Some(slot) => Self::commit_slot(slot, cell, cell.cost, now),
                None => {
                    // Expired entries go first, then (store full) the entry closest to fresh.
                    self.reclaim(&mut shard, now);
                    if self.len.0.load(Ordering::Relaxed) >= self.max_keys {
                        let enough = room::Rank::newcomer(cell);
                        let held = &mut [Some(&mut *shard)];
                        self.make_room(sid, 1, now, enough, held, |_| false);
                    }
                    let slot = Self::new_slot(cell, cell.cost, now);
                    self.insert(&mut shard, hash, slot);
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
    /// The cell consumes (`store::commits`), once the request is admitted.
    commit: bool,
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
        if m < order.len() {
            // Two cells share a shard: each key must appear once (a plan naming a key twice
            // would be peeked once and committed twice).
            for i in 1..scratch.len() {
                for j in 0..i {
                    if scratch[i].hash == scratch[j].hash && plan.cells[i].key == plan.cells[j].key
                    {
                        return Err(StoreError::permanent(format!(
                            "memory store: the plan names key {:?} twice",
                            plan.cells[i].key
                        )));
                    }
                }
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
            let slot = s.idx.and_then(|i| shard.table.get_bucket(i));
            let outcome = Self::peek_slot(slot, cell, cell.cost, now);
            s.commit = outcome.allowed && cell.cost > 0;
            decision.push(cell, outcome);
        }
        decision.settle();
        if !decision.allowed {
            return Ok(());
        }
        // Only cells that commit are written (or inserted): `store::commits`, given the request
        // is admitted.
        let new = scratch
            .iter()
            .filter(|s| s.idx.is_none() && s.commit)
            .count();
        // Room for the new cells, never taken from this request's own cells. Between the peeks
        // above and the commits below, nothing else touches the locked tables.
        if new > 0 && self.len.0.load(Ordering::Relaxed) + new > self.max_keys {
            let in_plan = |slot: &Slot| plan.cells.iter().any(|c| *c.key == *slot.key);
            // Fresh enough to evict without a wider search: no more used than one of the new cells
            // (the most used: a lower bar drains the neighbours of shards holding only such cells).
            let enough = plan
                .cells
                .iter()
                .zip(scratch.iter())
                .filter(|(_, s)| s.idx.is_none() && s.commit)
                .map(|(c, _)| room::Rank::newcomer(c))
                .max()
                .unwrap_or(room::Rank::NEVER);
            self.make_room(scratch[0].shard, new, now, enough, guards, in_plan);
            // Removals do not move other buckets, and never take a cell of this plan: every
            // existing cell is still where the peek found it. Checked before committing any,
            // so an error can never leave a partial commit.
            for s in scratch.iter() {
                if let Some(i) = s.idx {
                    let present = guards[s.guard]
                        .as_deref()
                        .is_some_and(|shard| shard.table.get_bucket(i).is_some());
                    if !present {
                        return Err(StoreError::permanent(
                            "memory store: a cell's entry moved while its shard was locked",
                        ));
                    }
                }
            }
        }
        // Commit existing cells by index, then insert the new ones (insertions may grow a
        //    table and so move buckets).
        for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
            if let (true, Some(i), Some(shard)) = (s.commit, s.idx, guards[s.guard].as_deref_mut())
            {
                if let Some(slot) = shard.table.get_bucket_mut(i) {
                    Self::commit_slot(slot, cell, cell.cost, now);
                }
            }
        }
        for (cell, s) in plan.cells.iter().zip(scratch.iter()) {
            if let (true, None, Some(shard)) = (s.commit, s.idx, guards[s.guard].as_deref_mut()) {
                // Committed and inserted cells are live: the reclaim cannot take them.
                self.reclaim(shard, now);
                let slot = Self::new_slot(cell, cell.cost, now);
                self.insert(shard, s.hash, slot);
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

#[cfg(test)]
mod tests;
