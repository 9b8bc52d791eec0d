//! Room in a full memory store: reclaim what is expired, else evict what is closest to fresh.
//!
//! * **Incremental reclaim** ([`MemoryStore::reclaim`], on every insertion): the shard's hand
//!   examines at most [`RECLAIM_STEPS`] entries over [`RECLAIM_VISITS`] buckets and drops those
//!   expired for [`RECLAIM_GRACE_US`] or more.
//! * **Eviction** ([`MemoryStore::make_room`], store full): an entry is ranked by [`Rank`], its
//!   [`Usage`] (the share of its limit consumed now; 0 = fresh, `2^32` = it denies) and then its
//!   expiry; an expired entry ranks below every live one (it decides like an absent one). For
//!   each entry to remove:
//!
//!   1. the shards the request holds are scanned (every entry but the request's own cells): the
//!      first expired entry is dropped, else the lowest live one is the candidate;
//!   2. if that candidate is no more used than the newcomer (`Usage::of(cost, L)` of the cell
//!      being inserted, the least usage a live cell of that limit can have after a commit), it is
//!      evicted: a flood of fresh identities evicts its own kind, in one shard scan;
//!   3. otherwise up to [`NEIGHBOURS`] further shards are sampled with `try_lock` (never
//!      waiting: no deadlock with requests that lock several shards in order), the first expired
//!      entry is dropped, or the lowest entry of the whole sample (held shards and neighbours) is
//!      evicted. If the sample has no candidate at all (a store smaller than its shard count),
//!      or only cells that deny, the search goes on through the other shards until one has a
//!      candidate (with room, for the latter): a denying cell is evicted only when no shard
//!      that can be locked holds a cell with room.
//!
//!   Invariant: the evicted entry ranks lowest in its sample, so a cell that denies (`FULL`) is
//!   never evicted while the sample holds one with room. The work is bounded: one scan of the
//!   held shards (about [`super::KEYS_PER_SHARD`] entries each) and at most `NEIGHBOURS` more
//!   shard scans, each entry costing one cost-0 peek.

use std::ops::DerefMut;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::{MemoryStore, Shard, Slot};
use crate::algorithm::Usage;
use crate::clock::Micros;
use crate::config::rate::Limit;
use crate::config::Cell;

/// Shards after its own that an insertion into a full store samples when its own shards hold
/// nothing fresh enough (bounded work per insertion: about 8 x 32 entries).
pub(super) const NEIGHBOURS: usize = 8;

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

/// How close to fresh an entry is: lower is evicted first. Usage, then the instant the state is
/// fully restored (of two equally used cells, the one whose count ends first forgets less).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank {
    usage: Usage,
    expires_at: Micros,
}

impl Rank {
    /// Above every entry's rank (no newcomer: search the whole sample).
    pub(super) const NEVER: Rank = Rank {
        usage: Usage::FULL,
        expires_at: Micros::MAX,
    };

    /// The rank below which an entry is fresh enough to evict without a wider search: the usage
    /// of `cell` right after its first commit (`cost` units of its limit), whatever its expiry.
    pub(super) fn newcomer(cell: &Cell) -> Rank {
        Rank {
            usage: Usage::of(cell.cost, cell.limit.count()),
            expires_at: Micros::MAX,
        }
    }
}

impl Slot {
    /// This live entry's rank at `now`.
    fn rank(&self, now: Micros) -> Rank {
        // Count and window were a valid limit when stored; should that ever not hold, the entry
        // ranks as full (kept while anything else can go).
        let usage = Limit::new(u64::from(self.count), u64::from(self.window_secs))
            .map_or(Usage::FULL, |limit| self.state.usage(now, &limit));
        Rank {
            usage,
            expires_at: self.expires_at,
        }
    }
}

/// What a scan of one shard found.
enum Scan {
    /// An expired entry, already dropped.
    Reclaimed,
    /// The bucket and rank of the lowest live entry.
    Live(usize, Rank),
    /// No entry it may remove.
    Nothing,
}

impl MemoryStore {
    /// Incremental reclaim: advance `shard`'s hand over at most [`RECLAIM_VISITS`] buckets,
    /// examine at most [`RECLAIM_STEPS`] entries and drop those expired for a second or more.
    pub(super) fn reclaim(&self, shard: &mut Shard, now: Micros) {
        let buckets = shard.table.num_buckets();
        let mut examined = 0usize;
        for _ in 0..RECLAIM_VISITS {
            if examined >= RECLAIM_STEPS || shard.table.is_empty() {
                break;
            }
            if shard.hand >= buckets {
                shard.hand = 0;
            }
            let at = shard.hand;
            shard.hand += 1;
            let Ok(entry) = shard.table.get_bucket_entry(at) else {
                continue;
            };
            examined += 1;
            if entry.get().expires_at.saturating_add(RECLAIM_GRACE_US) <= now {
                entry.remove();
                self.len.0.fetch_sub(1, Ordering::Relaxed);
                self.reclaimed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One pass over `shard` (entries for which `keep` holds are passed over): drop the first
    /// expired entry, or report the lowest-ranked live one.
    fn scan(&self, shard: &mut Shard, now: Micros, keep: &impl Fn(&Slot) -> bool) -> Scan {
        let mut best: Option<(usize, Rank)> = None;
        let mut expired = None;
        // Bucket indices as `get_bucket` numbers them (hashbrown 0.16's `iter_buckets` yields
        // another numbering: removing by its indices took the wrong entries).
        for i in 0..shard.table.num_buckets() {
            let Some(slot) = shard.table.get_bucket(i) else {
                continue;
            };
            if keep(slot) {
                continue;
            }
            if slot.expires_at <= now {
                expired = Some(i);
                break;
            }
            let rank = slot.rank(now);
            if best.is_none_or(|(_, b)| rank < b) {
                best = Some((i, rank));
            }
        }
        if let Some(i) = expired {
            self.remove(shard, i, false);
            return Scan::Reclaimed;
        }
        best.map_or(Scan::Nothing, |(i, r)| Scan::Live(i, r))
    }

    /// Remove the entry in bucket `i` of `shard`, counted as evicted (live) or reclaimed.
    fn remove(&self, shard: &mut Shard, i: usize, live: bool) {
        if let Ok(entry) = shard.table.get_bucket_entry(i) {
            entry.remove();
            self.len.0.fetch_sub(1, Ordering::Relaxed);
            let counter = if live {
                &self.evictions
            } else {
                &self.reclaimed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Before `new` insertions: while the store would exceed `max_keys`, remove one entry (up to
    /// two per insertion, so a count pushed over the bound by concurrent insertions comes back
    /// down), as the module doc describes. `held`: the shards the request has locked (`None`
    /// slots are skipped); `keep`: the request's own cells, never removed; `enough`: the rank at
    /// or below which a held entry is evicted without sampling other shards.
    pub(super) fn make_room<H: DerefMut<Target = Shard>>(
        &self,
        from: usize,
        new: usize,
        now: Micros,
        enough: Rank,
        held: &mut [Option<H>],
        keep: impl Fn(&Slot) -> bool,
    ) {
        let over = (self.len.0.load(Ordering::Relaxed) + new).saturating_sub(self.max_keys);
        for _ in 0..over.min(2 * new) {
            if !self.remove_one(from, now, enough, held, &keep) {
                break;
            }
        }
    }

    /// Remove one entry (see the module doc); false if none could be removed.
    fn remove_one<H: DerefMut<Target = Shard>>(
        &self,
        from: usize,
        now: Micros,
        enough: Rank,
        held: &mut [Option<H>],
        keep: &impl Fn(&Slot) -> bool,
    ) -> bool {
        let mut best: Option<(usize, usize, Rank)> = None;
        for (h, shard) in held.iter_mut().enumerate() {
            let Some(shard) = shard.as_deref_mut() else {
                continue;
            };
            match self.scan(shard, now, keep) {
                Scan::Reclaimed => return true,
                Scan::Live(i, r) if best.is_none_or(|(_, _, b)| r < b) => best = Some((h, i, r)),
                _ => {}
            }
        }
        let bar = best.map(|(_, _, r)| r);
        if bar.is_some_and(|r| r <= enough) || !self.steal_room(from, now, bar, enough) {
            let Some((h, i, _)) = best else {
                return false;
            };
            let Some(shard) = held[h].as_deref_mut() else {
                return false;
            };
            self.remove(shard, i, true);
        }
        true
    }

    /// Sample the shards after `sid` (locked without waiting): drop the first expired entry, or
    /// evict the lowest live entry found if it ranks below `bar` (the held shards' candidate).
    /// Stops after [`NEIGHBOURS`] shards once a cell with room is ranked, or early at a rank at
    /// or below `enough`. Returns whether it removed an entry.
    #[cold]
    fn steal_room(&self, sid: usize, now: Micros, bar: Option<Rank>, enough: Rank) -> bool {
        let mut best: Option<(MutexGuard<'_, Shard>, usize, Rank)> = None;
        for step in 1..=self.mask {
            // Past the neighbours, only while nothing ranked yet, or the only candidate denies
            // (a denying cell goes only when no shard has a cell with room).
            let found = best.as_ref().map(|b| b.2).or(bar);
            if step > NEIGHBOURS && found.is_some_and(|r| r.usage < Usage::FULL) {
                break;
            }
            let Some(mut other) = self.shards[(sid + step) & self.mask].0.try_lock() else {
                continue;
            };
            match self.scan(&mut other, now, &|_| false) {
                Scan::Reclaimed => return true,
                Scan::Live(i, r) => {
                    let beat = best.as_ref().map(|b| b.2).or(bar);
                    if beat.is_none_or(|b| r < b) {
                        best = Some((other, i, r));
                        if r <= enough {
                            break;
                        }
                    }
                }
                Scan::Nothing => {}
            }
        }
        match best {
            Some((mut shard, i, _)) => {
                self.remove(&mut shard, i, true);
                true
            }
            None => false,
        }
    }
}
