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
//!   in the bytes per key of `docs/BENCHMARKS.md`); keys, states and CLOCK bits sit inline in
//!   its table's slots, so a lookup reads the shard line, a control group, a slot and the key.
//! * **Bounds.** At most `max_keys` cells in the whole store, counted by one atomic that only
//!   insertions and removals touch (never a check of an existing key). Each insertion first lets
//!   its shard's CLOCK hand examine up to two entries among the next eight buckets and drop those
//!   expired for a second or more (incremental reclamation, never a stop-the-world sweep). When
//!   the store is full, room is made before anything is committed, never from one of the
//!   request's own cells: first an expired entry, looked for in the shards the request holds and
//!   then in the next 8 shards (a bounded search: the last few expired entries of a full store
//!   can be out of its reach); else a cold live entry is evicted by the CLOCK hand of a held
//!   shard (recently used entries get a second chance: CLOCK ≈ LRU among the shard's keys), or,
//!   if those shards have nothing to give, of another shard. Other shards are only ever locked
//!   with `try_lock` (no waiting, so no deadlock). Reclaimed and evicted entries are counted.
//!   The bound is exceeded only by insertions that race (they read the count at the same
//!   instant, or every other shard with an entry is locked at that instant): by one entry each
//!   at most, and the next insertions remove two entries each until it holds again.
//! * An expired entry is indistinguishable from an absent one (see
//!   [`crate::algorithm::CellState::expires_at`]), so reclamation never changes a decision;
//!   eviction of a live entry forgets its usage (the price of the bound, counted in
//!   [`MemoryStats::evictions`]).
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

/// How an advance of the CLOCK hand removes entries (see `MemoryStore::sweep`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// On every insertion: a few entries, expired for over [`RECLAIM_GRACE_US`].
    Incremental,
    /// Store full: the first expired entry.
    Expired,
    /// Store full, nothing expired nearby: the first expired or cold entry.
    Evict,
}

/// Shards after its own in which an insertion into a full store looks for an expired entry
/// before it evicts a live one (bounded work per insertion: about 8 x 32 entries).
const EXPIRED_NEIGHBOURS: usize = 8;

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

    /// Advance the CLOCK hand. [`Sweep::Incremental`]: examine at most [`RECLAIM_STEPS`] entries
    /// over [`RECLAIM_VISITS`] buckets, drop those expired for a second or more and clear the
    /// reference bit of the others. [`Sweep::Expired`]: one turn, stop at the first expired
    /// entry and drop it (reference bits untouched). [`Sweep::Evict`]: up to two turns, drop the
    /// first expired or cold entry (a cold live one counts as an eviction), giving referenced
    /// ones a second chance. Slots for which `keep` holds are passed over (a request never
    /// removes its own cells). Returns whether an entry was removed.
    fn sweep(
        &self,
        shard: &mut Shard,
        now: Micros,
        mode: Sweep,
        keep: impl Fn(&Slot) -> bool,
    ) -> bool {
        let buckets = shard.table.num_buckets();
        let (max_visits, max_examined) = match mode {
            Sweep::Incremental => (RECLAIM_VISITS, RECLAIM_STEPS),
            Sweep::Expired => (buckets, usize::MAX),
            Sweep::Evict => (2 * buckets + 1, usize::MAX),
        };
        let grace = if mode == Sweep::Incremental {
            RECLAIM_GRACE_US
        } else {
            0
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
            if keep(entry.get()) {
                continue;
            }
            examined += 1;
            let slot = entry.get_mut();
            let reclaimable = slot.expires_at.saturating_add(grace) <= now;
            let evict = mode == Sweep::Evict && !slot.referenced;
            if reclaimable || evict {
                entry.remove();
                self.len.0.fetch_sub(1, Ordering::Relaxed);
                let counter = if reclaimable {
                    &self.reclaimed
                } else {
                    &self.evictions
                };
                counter.fetch_add(1, Ordering::Relaxed);
                removed = true;
                if mode != Sweep::Incremental {
                    break;
                }
            } else if mode != Sweep::Expired {
                slot.referenced = false;
            }
        }
        removed
    }

    /// Insert a new cell into `shard` (locked by the caller; room already made, see
    /// [`Self::make_room`]). `reclaim`: first let the hand drop up to two entries expired for a
    /// second or more (only where no cell of the request can be among them).
    fn insert(&self, shard: &mut Shard, hash: u64, slot: Slot, now: Micros, reclaim: bool) {
        if reclaim {
            self.sweep(shard, now, Sweep::Incremental, |_| false);
        }
        shard
            .table
            .insert_unique(hash, slot, |s| self.hasher.hash_one(&*s.key));
        self.len.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Before `new` insertions: while the store would exceed `max_keys`, remove one entry (up
    /// to two per insertion, so a count pushed over the bound by concurrent insertions comes
    /// back down). Expired entries go first: in the shards the request holds (`from_held`, which
    /// must pass over the request's own cells), then in the next [`EXPIRED_NEIGHBOURS`] shards
    /// that can be locked without waiting; only then a cold live entry is evicted, from the
    /// held shards or else from any shard that can be locked without waiting (never blocking on
    /// a second lock: no deadlock with requests that lock several shards in order).
    fn make_room(
        &self,
        from: usize,
        new: usize,
        now: Micros,
        mut from_held: impl FnMut(Sweep) -> bool,
    ) {
        let over = (self.len.0.load(Ordering::Relaxed) + new).saturating_sub(self.max_keys);
        for _ in 0..over.min(2 * new) {
            let removed = from_held(Sweep::Expired)
                || self.steal_room(from, now, Sweep::Expired, EXPIRED_NEIGHBOURS)
                || from_held(Sweep::Evict)
                || self.steal_room(from, now, Sweep::Evict, self.mask);
            if !removed {
                break;
            }
        }
    }

    /// Remove one entry (`mode`) from the first of the next `shards` shards after `sid` that
    /// can be locked without waiting and has one to give. A store at its bound always has one
    /// to evict unless every other non-empty shard is locked at that instant.
    #[cold]
    fn steal_room(&self, sid: usize, now: Micros, mode: Sweep, shards: usize) -> bool {
        (1..=shards.min(self.mask)).any(|step| {
            self.shards[(sid + step) & self.mask]
                .0
                .try_lock()
                .is_some_and(|mut other| self.sweep(&mut other, now, mode, |_| false))
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
        slot.referenced = true;
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
                    // Expired entries go first, then (store full) the CLOCK victim.
                    self.sweep(&mut shard, now, Sweep::Incremental, |_| false);
                    if self.len.0.load(Ordering::Relaxed) >= self.max_keys {
                        self.make_room(sid, 1, now, |mode| {
                            self.sweep(&mut shard, now, mode, |_| false)
                        });
                    }
                    let slot = Self::new_slot(cell, cell.cost, now);
                    self.insert(&mut shard, hash, slot, now, false);
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
            self.make_room(scratch[0].shard, new, now, |mode| {
                guards
                    .iter_mut()
                    .filter_map(|g| g.as_deref_mut())
                    .any(|shard| self.sweep(shard, now, mode, in_plan))
            });
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
                let slot = Self::new_slot(cell, cell.cost, now);
                self.insert(shard, s.hash, slot, now, true);
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{DimensionKind, LimiterConfig, RequestContext};

    const T0: u64 = 1_700_000_000_123_456_789;

    fn config(yaml: &str) -> LimiterConfig {
        LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0
    }

    fn plan(cfg: &LimiterConfig, user: &str, tenant: Option<&str>) -> Plan {
        cfg.policy
            .plan(&RequestContext {
                user: Some(user),
                tenant,
                ..Default::default()
            })
            .unwrap()
    }

    fn single(p: &Plan, kind: DimensionKind) -> Plan {
        Plan {
            cells: p
                .cells
                .iter()
                .filter(|c| c.dimension == kind)
                .cloned()
                .collect(),
            cost: p.cost,
        }
    }

    fn shard_of(s: &MemoryStore, p: &Plan) -> usize {
        assert_eq!(p.cells.len(), 1);
        s.locate(&p.cells[0].key).1
    }

    fn slots(s: &MemoryStore) -> usize {
        s.shards.iter().map(|p| p.0.lock().table.len()).sum()
    }

    /// A two-cell request [user U (existing), tenant T (new)] with U and T in the same shard, in
    /// a full store whose other key W lives in another shard: inserting T must not evict U,
    /// which this very request has just committed.
    #[test]
    fn a_request_never_evicts_a_cell_it_just_committed() {
        let cfg = config("{by_user: 2/m, by_tenant: 100/m}");
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemoryStore::new(2, clock.clone());
        let (both, u) = (0..10_000)
            .find_map(|i| {
                let both = plan(&cfg, "alice", Some(&format!("t{i}")));
                let u = single(&both, DimensionKind::User);
                let t = single(&both, DimensionKind::Tenant);
                (shard_of(&s, &u) == shard_of(&s, &t)).then_some((both, u))
            })
            .unwrap();
        let w = (0..10_000)
            .map(|i| plan(&cfg, &format!("w{i}"), None))
            .find(|w| shard_of(&s, w) != shard_of(&s, &u))
            .unwrap();
        assert!(s.check(&u).unwrap().allowed); // U: 1 of 2
        assert!(s.check(&w).unwrap().allowed); // store full (2 keys)
        assert!(s.check(&both).unwrap().allowed); // U: 2 of 2, T inserted
        let st = s.stats();
        assert!(
            !s.check(&u).unwrap().allowed,
            "U admitted a third time within its minute (limit 2/m): the request that used its \
             second unit evicted it while inserting T; stats after that request: {st:?}"
        );
    }

    /// One thread, a full store of 2 keys: a two-cell request whose second (new) cell lands in an
    /// empty shard, while the only other entry sits in the shard of its first cell (locked by
    /// this same request, so `steal_room`'s try_lock fails there).
    #[test]
    fn one_thread_never_exceeds_the_bound() {
        let cfg = config("{by_user: 5/m, by_tenant: 100/m}");
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemoryStore::new(2, clock.clone());
        let both = (0..10_000)
            .map(|i| plan(&cfg, "alice", Some(&format!("t{i}"))))
            .find(|b| {
                shard_of(&s, &single(b, DimensionKind::User))
                    != shard_of(&s, &single(b, DimensionKind::Tenant))
            })
            .unwrap();
        let u = single(&both, DimensionKind::User);
        let z = (0..10_000)
            .map(|i| plan(&cfg, &format!("z{i}"), None))
            .find(|z| shard_of(&s, z) == shard_of(&s, &u))
            .unwrap();
        assert!(s.check(&z).unwrap().allowed); // 1 key
        assert!(s.check(&both).unwrap().allowed); // +2 keys, bound 2
        assert_eq!(s.stats().keys as usize, slots(&s));
        assert!(
            s.stats().keys <= 2,
            "single-threaded overshoot: {:?}",
            s.stats()
        );
    }

    /// `len` equals the slots in the tables after concurrent multi-cell churn (inserts, reclaims,
    /// evictions, steals).
    #[test]
    fn len_matches_slots_under_concurrent_churn() {
        let cfg = config("{by_user: 5/s, by_tenant: 1000/s}");
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemoryStore::new(40, clock.clone());
        std::thread::scope(|sc| {
            for t in 0..2 {
                let (s, cfg, clock) = (&s, &cfg, &clock);
                sc.spawn(move || {
                    for i in 0..20_000u32 {
                        let ten = format!("ten{}", i % 7);
                        let p = plan(cfg, &format!("u{t}-{i}"), Some(&ten));
                        s.check(&p).unwrap();
                        if i % 1000 == 0 {
                            clock.advance_millis(700);
                        }
                    }
                });
            }
        });
        assert_eq!(s.stats().keys as usize, slots(&s), "{:?}", s.stats());
        assert!(s.stats().keys <= 40 + 2, "{:?}", s.stats());
    }

    /// Every key stays findable by `locate`'s hash after its table grew (rehash closure agrees).
    #[test]
    fn keys_stay_findable_after_table_growth() {
        let cfg = config("{by_user: 5/m}");
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemoryStore::new(1 << 14, clock.clone());
        let plans: Vec<Plan> = (0..(1 << 14))
            .map(|i| plan(&cfg, &format!("k{i}"), None))
            .collect();
        for p in &plans {
            assert!(s.check(p).unwrap().allowed);
        }
        assert_eq!(s.stats().evictions, 0);
        for p in &plans {
            let (hash, sid) = s.locate(&p.cells[0].key);
            let shard = s.shards[sid].0.lock();
            assert!(shard
                .table
                .find(hash, |x| *x.key == *p.cells[0].key)
                .is_some());
        }
        let max = s
            .shards
            .iter()
            .map(|p| p.0.lock().table.len())
            .max()
            .unwrap();
        assert!(max > 32, "some table grew past its initial size: {max}");
    }

    /// A plan naming one key twice would be peeked once and committed twice: an error, and
    /// nothing consumed.
    #[test]
    fn a_plan_naming_one_key_twice_is_an_error() {
        let cfg = config("{algorithm: fixed_window, by_user: 3/m, by_tenant: 5/m}");
        let clock = Arc::new(ManualClock::new(T0));
        let s = MemoryStore::new(100, clock.clone());
        let one = plan(&cfg, "alice", None);
        let mut dup = one.clone();
        dup.cells.push(dup.cells[0].clone());
        let err = s.check(&dup).unwrap_err();
        assert!(err.message.contains("twice"), "{err}");
        assert_eq!(s.stats().keys, 0);
        let d = s.check(&one).unwrap();
        assert_eq!(d.dimensions[0].outcome.remaining, 2, "{d:?}");
    }
}
