//! The local-mode store: cells in proxy-wasm shared data, exact across Envoy worker threads.
//!
//! # Layout: a fixed table of slots
//!
//! proxy-wasm 0.2 shared data is a process-wide map per VM id with `get` (value + CAS token) and
//! `set` (optionally conditional on the CAS token), and no delete or list. Keys written once stay
//! forever, so cells are **not** stored one per key: the table has a fixed number of slots
//! (`ratewall:v2:<slots>:<i>`), created once at configure time. A cell key (the core's storage key)
//! hashes (SipHash-1-3 keyed with a per-process random seed, see [`SlotSeed`]) to one slot; a slot
//! value holds up to [`SLOT_CAPACITY`] cells plus a lock word:
//!
//! ```text
//! slot  = lock:u64le  entry*
//! entry = key_len:u16le key expires_at:u64le count:u32le window_secs:u32le state_len:u32le state
//!                                                              (state = CellState::to_bytes)
//! ```
//!
//! The key space is therefore bounded by `slots` shared-data keys of bounded size, whatever the
//! traffic. When a cell is written its slot drops every expired entry; when a slot is still full
//! the entry closest to fresh is evicted: the lowest [`Usage`] (share of its limit consumed now,
//! from its state and its stored limit), then the soonest expiry, never a cell of the request.
//! So a cell that denies is never evicted while its slot holds one with room, and a flood of
//! fresh identities evicts its own kind (as in the memory store). A tick sweeps a few slots per
//! worker to drop expired entries of idle slots. (Format v2 added the limit; v1 slots, keyed
//! apart, are never read.)
//!
//! # Atomicity: all cells of a request or none
//!
//! * All cells in one slot (the common case: one dimension, or a lucky hash): read the slot, run
//!   [`apply_batch`] at the host's "now", and write the slot back with the CAS token; on
//!   `CasMismatch` another worker won, so re-read and retry. Two host calls when uncontended.
//! * Cells in several slots: lock the slots in ascending index order (a slot is locked by a CAS
//!   write that sets its lock word, so locking also reads it), read "now", decide, and write every
//!   slot back unlocked (with the new cells if allowed). Ascending order means two requests never
//!   deadlock. Every writer honours the lock word: the single-slot path never writes a slot it saw
//!   locked (its CAS would also fail), so no other worker can change a locked slot.
//! * A lock older than [`STALE_LOCK_US`] belongs to a VM that died inside the critical section (it
//!   is never held across a callback); it is taken over, as is one more than that in the future.
//! * A worker that cannot get its slots within [`MAX_ATTEMPTS`] reads gives up with a transient
//!   [`StoreError`]; the filter then applies `fail_mode`.
//!
//! Slot creation is not conditional in Envoy (a `set` on an absent key always succeeds), so every
//! slot is created empty at configure time, which runs on the main thread before any worker serves
//! traffic; the request path only creates a slot if that somehow did not happen.

use std::borrow::Cow;

use ratewall_core::algorithm::{CellState, Usage};
use ratewall_core::clock::Micros;
use ratewall_core::config::rate::Limit;
use ratewall_core::config::Plan;
use ratewall_core::store::{apply_batch, StoreError};
use ratewall_core::Decision;

/// Cells per slot before eviction.
pub const SLOT_CAPACITY: usize = 8;
/// A lock older than this (µs) is taken over.
pub const STALE_LOCK_US: u64 = 1_000_000;
/// Reads of a contended slot before giving up.
pub const MAX_ATTEMPTS: u32 = 200_000;

/// Why a shared-data write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    /// The value changed since it was read (CAS token mismatch).
    CasMismatch,
    /// Anything else the host reported.
    Host(String),
}

/// The host's shared data (proxy-wasm `get_shared_data` / `set_shared_data`).
pub trait SharedData {
    /// The value and its CAS token; `(None, None)` when absent.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String>;
    /// Write `value`; with `cas`, only if the value's token is still `cas`.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

/// One stored cell (borrowed from the slot's bytes until it changes: no copy per cell read).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry<'a> {
    key: Cow<'a, str>,
    expires_at: Micros,
    /// The cell's limit (count, window in seconds), for its [`Usage`] on eviction.
    limit: (u32, u32),
    state: Cow<'a, [u8]>,
}

impl Entry<'_> {
    /// How close to fresh the entry is at `now` (lower is evicted first); a state or limit this
    /// version cannot read ranks as fresh (it is garbage either way).
    fn rank(&self, now: Micros) -> (Usage, Micros) {
        let usage = match (
            CellState::from_bytes(&self.state),
            Limit::new(u64::from(self.limit.0), u64::from(self.limit.1)),
        ) {
            (Some(state), Ok(limit)) => state.usage(now, &limit),
            _ => Usage::FRESH,
        };
        (usage, self.expires_at)
    }
}

/// A decoded slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot<'a> {
    lock: u64,
    entries: Vec<Entry<'a>>,
}

impl<'a> Slot<'a> {
    fn decode(bytes: &'a [u8]) -> Option<Slot<'a>> {
        let mut r = Reader(bytes);
        let lock = r.u64()?;
        let mut entries = Vec::new();
        while !r.0.is_empty() {
            let klen = usize::from(r.u16()?);
            let key = std::str::from_utf8(r.take(klen)?).ok()?;
            let expires_at = r.u64()?;
            let limit = (r.u32()?, r.u32()?);
            let slen = usize::try_from(r.u32()?).ok()?;
            let state = r.take(slen)?;
            entries.push(Entry {
                key: Cow::Borrowed(key),
                expires_at,
                limit,
                state: Cow::Borrowed(state),
            });
        }
        Some(Slot { lock, entries })
    }

    /// A copy that no longer borrows the bytes it was decoded from.
    fn into_owned(self) -> Slot<'static> {
        Slot {
            lock: self.lock,
            entries: self
                .entries
                .into_iter()
                .map(|e| Entry {
                    key: Cow::Owned(e.key.into_owned()),
                    expires_at: e.expires_at,
                    limit: e.limit,
                    state: Cow::Owned(e.state.into_owned()),
                })
                .collect(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let size: usize = 8 + self
            .entries
            .iter()
            .map(|e| 22 + e.key.len() + e.state.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.lock.to_le_bytes());
        for e in &self.entries {
            // Keys are bounded by the core (< 400 bytes) and states by the largest sliding log
            // (8 × 1e6 bytes), so the length prefixes cannot overflow; entries that would are
            // dropped rather than corrupt the slot.
            let (Ok(klen), Ok(slen)) = (u16::try_from(e.key.len()), u32::try_from(e.state.len()))
            else {
                continue;
            };
            out.extend_from_slice(&klen.to_le_bytes());
            out.extend_from_slice(e.key.as_bytes());
            out.extend_from_slice(&e.expires_at.to_le_bytes());
            out.extend_from_slice(&e.limit.0.to_le_bytes());
            out.extend_from_slice(&e.limit.1.to_le_bytes());
            out.extend_from_slice(&slen.to_le_bytes());
            out.extend_from_slice(&e.state);
        }
        out
    }

    /// A lock is live within [`STALE_LOCK_US`] of `now` on either side: one further in the future
    /// (corrupted bytes, or the host's wall clock stepped back) is stale too, or it would hold
    /// the slot until the clock caught up (found by the `slot_decode` fuzz target).
    fn locked_by_other(&self, now: Micros) -> bool {
        self.lock != 0 && now.abs_diff(self.lock) < STALE_LOCK_US
    }

    fn state(&self, key: &str) -> Option<CellState> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .and_then(|e| CellState::from_bytes(&e.state))
    }

    /// Drop expired entries; returns how many.
    fn prune(&mut self, now: Micros) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.expires_at > now);
        before - self.entries.len()
    }

    /// Store `key`'s new state (with its limit), evicting the entry closest to fresh at `now`
    /// (lowest usage, then soonest expiry; never a `protected` one) when the slot is full.
    /// Returns whether a live entry was evicted.
    fn put(
        &mut self,
        key: &'a str,
        (state, expires_at, limit): (Vec<u8>, Micros, (u32, u32)),
        now: Micros,
        protected: &dyn Fn(&str) -> bool,
    ) -> bool {
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.state = Cow::Owned(state);
            e.expires_at = expires_at;
            e.limit = limit;
            return false;
        }
        let mut evicted = false;
        if self.entries.len() >= SLOT_CAPACITY {
            let victim = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !protected(&e.key))
                .min_by_key(|(_, e)| e.rank(now))
                .map(|(i, _)| i);
            if let Some(i) = victim {
                self.entries.swap_remove(i);
                evicted = true;
            }
        }
        self.entries.push(Entry {
            key: Cow::Borrowed(key),
            expires_at,
            limit,
            state: Cow::Owned(state),
        });
        evicted
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// An absent slot (not created) or one this version cannot read (written by a future format) is
/// treated as empty; the write that follows replaces it.
fn slot_of_bytes(value: Option<&[u8]>) -> Slot<'_> {
    value.and_then(Slot::decode).unwrap_or_default()
}

/// Shared-data key of the slot hash's seed (16 random bytes, created once per Envoy process).
pub const SEED_KEY: &str = "ratewall:v1:seed";

/// The key of the keyed slot hash (SipHash-1-3). Cell keys embed untrusted identities: with a
/// public, unkeyed hash anyone could craft ids that fill one slot and evict the cells that share
/// it (a tenant's or a tool's counter, forgetting its usage). Every worker VM uses the same seed
/// (stored in shared data), so a key maps to the same slot on every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSeed(pub [u8; 16]);

impl SlotSeed {
    /// The process-wide seed: read from shared data, or created (random, from WASI
    /// `random_get`) and stored when absent. Configure time runs on the main thread before any
    /// worker serves traffic, so the first configuration creates it and every later VM reads it;
    /// the value read back after writing is the one used.
    pub fn load_or_create(host: &dyn SharedData) -> Result<Self, String> {
        let read = |host: &dyn SharedData| -> Result<Option<Self>, String> {
            Ok(match host.get(SEED_KEY)? {
                (Some(v), _) => <[u8; 16]>::try_from(v.as_slice()).ok().map(SlotSeed),
                _ => None,
            })
        };
        if let Some(seed) = read(host)? {
            return Ok(seed);
        }
        let mut fresh = [0u8; 16];
        getrandom::fill(&mut fresh)
            .map_err(|e| format!("no random seed for the slot hash: {e}"))?;
        host.set(SEED_KEY, &fresh, None)
            .map_err(|e| format!("cannot store the slot hash seed: {e:?}"))?;
        read(host)?.ok_or_else(|| "the slot hash seed did not persist".to_string())
    }
}

/// SipHash-1-3 of a cell key under `seed`: picks its slot.
fn keyed_hash(seed: &SlotSeed, bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let (k0, k1) = seed.0.split_at(8);
    let word = |b: &[u8]| b.iter().rev().fold(0u64, |w, &x| (w << 8) | u64::from(x));
    let mut h = siphasher::sip::SipHasher13::new_with_keys(word(k0), word(k1));
    h.write(bytes);
    h.finish()
}

/// What a check did besides deciding (for stats and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Reads that found the slot changed or locked (contention).
    pub retries: u32,
    /// Live cells evicted because their slot was full.
    pub evictions: u32,
}

/// What a reclaim sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Slots examined.
    pub slots: u32,
    /// Expired cells dropped.
    pub reclaimed: u32,
    /// Stale locks released.
    pub stale_locks: u32,
}

/// Plans with their slots: see [`SlotTable::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The plans, in order.
    pub plans: Vec<Plan>,
    /// `(slot index, shared-data key)` of every slot the plans touch, ascending, no repeats.
    slots: Vec<(u32, String)>,
}

/// The slot table of one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    slots: u32,
    seed: SlotSeed,
    prefix: String,
}

impl SlotTable {
    /// A table sized for at most `max_keys` cells, hashing keys to slots under `seed`.
    pub fn new(max_keys: usize, seed: SlotSeed) -> Self {
        let slots = u32::try_from(max_keys.div_ceil(SLOT_CAPACITY).max(1)).unwrap_or(u32::MAX);
        Self {
            slots,
            seed,
            prefix: format!("ratewall:v2:{slots}:"),
        }
    }

    /// The table of this Envoy process: the shared seed ([`SlotSeed::load_or_create`]) and every
    /// slot created ([`Self::create_slots`]). Returns the table and how many slots were created.
    pub fn open(host: &dyn SharedData, max_keys: usize) -> Result<(Self, u32), String> {
        let table = Self::new(max_keys, SlotSeed::load_or_create(host)?);
        let created = table.create_slots(host)?;
        Ok((table, created))
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Shared-data key of slot `i`.
    pub fn slot_key(&self, i: u32) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Slot of a cell key.
    pub fn slot_of(&self, cell_key: &str) -> u32 {
        u32::try_from(keyed_hash(&self.seed, cell_key.as_bytes()) % u64::from(self.slots))
            .unwrap_or(0)
    }

    /// Create every slot that does not exist yet (configure time). Returns how many were created.
    pub fn create_slots(&self, host: &dyn SharedData) -> Result<u32, String> {
        let empty = Slot::default().encode();
        let mut created = 0;
        for i in 0..self.slots {
            let key = self.slot_key(i);
            if let (None, _) = host.get(&key)? {
                host.set(&key, &empty, None).map_err(|e| format!("{e:?}"))?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// Decide a request made of one or more plans, applied in order at one instant with
    /// all-or-nothing semantics across all of them (a batch of MCP calls on different tools is one
    /// plan per tool, each with that tool's call count as cost). Returns the decision of the first
    /// plan that denies, or, when all admit, the one whose reported cell has the fewest units left.
    pub fn check(
        &self,
        host: &dyn SharedData,
        plans: &[Plan],
        now: &dyn Fn() -> Micros,
    ) -> Result<(Decision, CheckStats), StoreError> {
        self.check_prepared(host, &self.prepare(plans.to_vec()), now)
    }

    /// The plans of a request with their slots worked out (the slot indexes and shared-data keys),
    /// so a caller that sees the same identity again can keep it (see [`crate::PlanCache`]).
    pub fn prepare(&self, plans: Vec<Plan>) -> Prepared {
        // A handful of cells: kept sorted and unique by insertion (no sort routine linked).
        let mut ids: Vec<u32> = Vec::new();
        for c in plans.iter().flat_map(|p| &p.cells) {
            let id = self.slot_of(&c.key);
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        }
        let slots = ids.into_iter().map(|i| (i, self.slot_key(i))).collect();
        Prepared { plans, slots }
    }

    /// [`SlotTable::check`] of prepared plans.
    pub fn check_prepared(
        &self,
        host: &dyn SharedData,
        prepared: &Prepared,
        now: &dyn Fn() -> Micros,
    ) -> Result<(Decision, CheckStats), StoreError> {
        let mut stats = CheckStats::default();
        let plans = &prepared.plans;
        match prepared.slots.as_slice() {
            [] => Ok((Decision::unlimited(now()), stats)),
            [(one, key)] => self.check_one(host, *one, key, plans, now, &mut stats),
            many => self.check_locked(host, many, plans, now, &mut stats),
        }
    }

    /// A slot's bytes and CAS token; decode with [`slot_of_bytes`].
    fn read(
        &self,
        host: &dyn SharedData,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        host.get(key).map_err(StoreError::transient)
    }

    fn check_one(
        &self,
        host: &dyn SharedData,
        id: u32,
        key: &str,
        plans: &[Plan],
        now: &dyn Fn() -> Micros,
        stats: &mut CheckStats,
    ) -> Result<(Decision, CheckStats), StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = self.read(host, key)?;
            let mut slot = slot_of_bytes(bytes.as_deref());
            let t = now();
            if slot.locked_by_other(t) {
                stats.retries += 1;
                continue;
            }
            slot.lock = 0;
            let mut slots = [(id, slot)];
            let decision = decide(&mut slots, self, plans, t, stats);
            if !decision.allowed {
                return Ok((decision, *stats));
            }
            match host.set(key, &slots[0].1.encode(), cas) {
                Ok(()) => return Ok((decision, *stats)),
                Err(SetError::CasMismatch) => stats.retries += 1,
                Err(SetError::Host(e)) => return Err(StoreError::transient(e)),
            }
        }
        Err(StoreError::transient(format!(
            "shared data slot {key} stayed contended for {MAX_ATTEMPTS} attempts"
        )))
    }

    fn check_locked(
        &self,
        host: &dyn SharedData,
        ids: &[(u32, String)],
        plans: &[Plan],
        now: &dyn Fn() -> Micros,
        stats: &mut CheckStats,
    ) -> Result<(Decision, CheckStats), StoreError> {
        let mut held: Vec<(u32, Slot<'_>)> = Vec::with_capacity(ids.len());
        for (id, key) in ids {
            match self.lock(host, key, now, stats) {
                Ok(slot) => held.push((*id, slot)),
                Err(e) => {
                    self.unlock_all(host, &mut held);
                    return Err(e);
                }
            }
        }
        let t = now();
        let decision = decide(&mut held, self, plans, t, stats);
        // Unlock every slot (with the new cells when allowed; `decide` left them untouched when
        // denied). The writes are unconditional: nobody else writes a slot we hold.
        self.unlock_all(host, &mut held);
        Ok((decision, *stats))
    }

    fn lock(
        &self,
        host: &dyn SharedData,
        key: &str,
        now: &dyn Fn() -> Micros,
        stats: &mut CheckStats,
    ) -> Result<Slot<'static>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, cas) = self.read(host, key)?;
            let mut slot = slot_of_bytes(bytes.as_deref());
            let t = now();
            if slot.locked_by_other(t) {
                stats.retries += 1;
                continue;
            }
            slot.lock = t.max(1);
            match host.set(key, &slot.encode(), cas) {
                Ok(()) => return Ok(slot.into_owned()),
                Err(SetError::CasMismatch) => stats.retries += 1,
                Err(SetError::Host(e)) => return Err(StoreError::transient(e)),
            }
        }
        Err(StoreError::transient(format!(
            "shared data slot {key} stayed locked for {MAX_ATTEMPTS} attempts"
        )))
    }

    fn unlock_all(&self, host: &dyn SharedData, held: &mut [(u32, Slot<'_>)]) {
        for (id, slot) in held.iter_mut() {
            slot.lock = 0;
            // A failed unlock write leaves a lock that is taken over after STALE_LOCK_US.
            let _ = host.set(&self.slot_key(*id), &slot.encode(), None);
        }
    }

    /// Drop expired cells (and stale locks) in up to `count` slots starting at `start`; returns
    /// the stats and the index to start from next time.
    pub fn sweep(
        &self,
        host: &dyn SharedData,
        start: u32,
        count: u32,
        now: Micros,
    ) -> (SweepStats, u32) {
        let mut stats = SweepStats::default();
        let count = count.min(self.slots);
        let mut i = start % self.slots;
        for _ in 0..count {
            let key = self.slot_key(i);
            if let Ok((Some(bytes), cas)) = host.get(&key) {
                stats.slots += 1;
                if let Some(mut slot) = Slot::decode(&bytes) {
                    if !slot.locked_by_other(now) {
                        let stale = slot.lock != 0;
                        let dropped = slot.prune(now);
                        if dropped > 0 || stale {
                            slot.lock = 0;
                            if host.set(&key, &slot.encode(), cas).is_ok() {
                                stats.reclaimed += u32::try_from(dropped).unwrap_or(u32::MAX);
                                stats.stale_locks += u32::from(stale);
                            }
                        }
                    }
                }
            }
            i = (i + 1) % self.slots;
        }
        (stats, i)
    }
}

/// Run the plans in order over the loaded slots at `now`; when every plan admits, write the new
/// cells into the slots (pruning expired entries, evicting if full). Denied: slots untouched.
fn decide<'a>(
    held: &mut [(u32, Slot<'a>)],
    table: &SlotTable,
    plans: &'a [Plan],
    now: Micros,
    stats: &mut CheckStats,
) -> Decision {
    let load = |held: &[(u32, Slot<'a>)], key: &str| -> Option<CellState> {
        let id = table.slot_of(key);
        held.iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, s)| s.state(key))
    };
    // New states so far, by cell key, with the cell's limit (for its expiry). A request has a
    // handful of cells, so a vector beats a hash map (and keeps hashbrown code out of the module).
    let mut working: Vec<(&'a str, CellState, ratewall_core::config::rate::Limit)> = Vec::new();
    let mut best: Option<Decision> = None;
    for plan in plans {
        let states: Vec<Option<CellState>> = plan
            .cells
            .iter()
            .map(|c| match working.iter().find(|w| w.0 == c.key) {
                Some((_, s, _)) => Some(s.clone()),
                None => load(held, &c.key),
            })
            .collect();
        let (decision, new_states) = apply_batch(plan, now, &states);
        let Some(new_states) = new_states else {
            return decision;
        };
        for (cell, state) in plan.cells.iter().zip(new_states) {
            match working.iter_mut().find(|w| w.0 == cell.key) {
                Some(w) => {
                    w.1 = state;
                    w.2 = cell.limit;
                }
                None => working.push((cell.key.as_str(), state, cell.limit)),
            }
        }
        best = match best {
            Some(b) if fewer_left(&b, &decision) => Some(b),
            _ => Some(decision),
        };
    }
    for (_, slot) in held.iter_mut() {
        slot.prune(now);
    }
    let protected = |k: &str| working.iter().any(|w| w.0 == k);
    for (key, state, limit) in &working {
        let id = table.slot_of(key);
        if let Some((_, slot)) = held.iter_mut().find(|(i, _)| *i == id) {
            let expires_at = state.expires_at(limit);
            // Limits are at most u32::MAX per 366 days, so both fit; a wider one ranks as fresh.
            let l = (
                u32::try_from(limit.count()).unwrap_or(0),
                u32::try_from(limit.window_secs()).unwrap_or(0),
            );
            if slot.put(key, (state.to_bytes(), expires_at, l), now, &protected) {
                stats.evictions += 1;
            }
        }
    }
    best.unwrap_or_else(|| Decision::unlimited(now))
}

/// Whether `a` reports fewer remaining units than `b` (an unlimited decision reports none).
fn fewer_left(a: &Decision, b: &Decision) -> bool {
    match (a.remaining(), b.remaining()) {
        (Some(x), Some(y)) => x <= y,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ratewall_core::config::{LimiterConfig, RequestContext};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    const TEST_SEED: SlotSeed = SlotSeed([7; 16]);

    /// Envoy's `SharedData` semantics (source/extensions/common/wasm/context.cc): a map of
    /// (value, cas); every set takes a new non-zero cas from one counter; a set with a non-zero
    /// cas on an existing key fails on mismatch; a set on an absent key always succeeds.
    #[derive(Default)]
    struct EnvoySharedData {
        map: Mutex<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: AtomicU64,
    }

    impl SharedData for EnvoySharedData {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
            let m = self.map.lock().unwrap();
            Ok(match m.get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut m = self.map.lock().unwrap();
            let next =
                (self.next_cas.fetch_add(1, Ordering::Relaxed) % u64::from(u32::MAX)) as u32 + 1;
            match m.get_mut(key) {
                Some(entry) => {
                    if let Some(c) = cas {
                        if c != entry.1 {
                            return Err(SetError::CasMismatch);
                        }
                    }
                    *entry = (value.to_vec(), next);
                }
                None => {
                    m.insert(key.to_string(), (value.to_vec(), next));
                }
            }
            Ok(())
        }
    }

    fn plan(cfg: &LimiterConfig, user: &str, tool: Option<&str>, cost: u64) -> Plan {
        cfg.policy
            .plan(&RequestContext {
                user: Some(user),
                tool,
                cost,
                ..Default::default()
            })
            .unwrap()
    }

    const T0: Micros = 1_700_000_000_000_000;

    #[test]
    fn slot_codec_round_trip_and_garbage() {
        let mut s = Slot {
            lock: 42,
            ..Default::default()
        };
        s.put("a", (vec![1, 2, 3], 10, (5, 60)), 0, &|_| false);
        s.put("b", (vec![], 20, (1, 1)), 0, &|_| false);
        let bytes = s.encode();
        assert_eq!(Slot::decode(&bytes), Some(s.clone()));
        assert_eq!(Slot::decode(&[]), None);
        assert_eq!(Slot::decode(&[0; 7]), None);
        let mut bad = s.encode();
        bad.pop();
        assert_eq!(Slot::decode(&bad), None);
        // arbitrary bytes never panic
        for n in 0..300u32 {
            let junk: Vec<u8> = (0..n)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
                .collect();
            let _ = Slot::decode(&junk);
        }
    }

    #[test]
    fn eviction_prefers_least_used_then_soonest() {
        // Unreadable states rank as fresh: among them the soonest expiry goes first.
        let keys: Vec<String> = (0..SLOT_CAPACITY).map(|i| format!("k{i}")).collect();
        let mut s = Slot::default();
        for (i, k) in keys.iter().enumerate() {
            s.put(k, (vec![], 100 + i as u64, (1, 1)), 0, &|_| false);
        }
        assert!(s.put("new", (vec![], 1000, (1, 1)), 0, &|k| k == "k0"));
        assert!(s.entries.iter().any(|e| e.key == "k0"));
        assert!(!s.entries.iter().any(|e| e.key == "k1"));
        assert_eq!(s.prune(104), 4); // k0, k2, k3, k4
        assert!(!s.put("k5", (vec![9], 2000, (1, 1)), 0, &|_| false));
        assert_eq!(s.state("k5"), None); // not a CellState encoding

        // Real states: the cell at its limit outlives seven partly used ones that expire later.
        let limit = Limit::new(10, 3600).unwrap();
        let state = |uses: u64| {
            let mut st = ratewall_core::Algorithm::FixedWindow.fresh_state();
            st.commit(T0, uses, &limit);
            st.to_bytes()
        };
        let mut s = Slot::default();
        s.put("full", (state(10), T0 + 1_000, (10, 3600)), T0, &|_| false);
        for i in 0..SLOT_CAPACITY - 1 {
            let k: &'static str = Box::leak(format!("p{i}").into_boxed_str());
            s.put(
                k,
                (state(1 + i as u64 % 3), T0 + 9_000_000_000, (10, 3600)),
                T0,
                &|_| false,
            );
        }
        for i in 0..100 {
            let k: &'static str = Box::leak(format!("n{i}").into_boxed_str());
            assert!(
                s.put(k, (state(1), T0 + 9_000_000_000, (10, 3600)), T0, &|_| {
                    false
                })
            );
            assert!(s.entries.iter().any(|e| e.key == "full"), "after {i}");
        }
    }

    #[test]
    fn single_cell_counts_exactly() {
        let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "3/m"}"#, &[]).unwrap();
        let host = EnvoySharedData::default();
        let table = SlotTable::new(64, TEST_SEED);
        assert_eq!(table.create_slots(&host).unwrap(), 8);
        assert_eq!(table.create_slots(&host).unwrap(), 0);
        let p = plan(&cfg, "alice", None, 1);
        let now = || T0;
        let allowed: Vec<bool> = (0..5)
            .map(|_| {
                table
                    .check(&host, std::slice::from_ref(&p), &now)
                    .unwrap()
                    .0
                    .allowed
            })
            .collect();
        assert_eq!(allowed, vec![true, true, true, false, false]);
        let (d, _) = table
            .check(&host, std::slice::from_ref(&p), &|| T0 + 60_000_000)
            .unwrap();
        assert!(d.allowed, "next window");
        // another user is independent
        let q = plan(&cfg, "bob", None, 1);
        assert!(table.check(&host, &[q], &now).unwrap().0.allowed);
    }

    #[test]
    fn multi_slot_requests_are_all_or_nothing() {
        // user 2/m, tool 5/m: tool cells shared by users; a user over their limit must not drain
        // the tool; find a user whose cells land in different slots so the locked path runs.
        let (cfg, _) =
            LimiterConfig::from_json_str(r#"{"by_user": "2/m", "by_tool": {"echo": "5/m"}}"#, &[])
                .unwrap();
        let table = SlotTable::new(1024, TEST_SEED);
        let host = EnvoySharedData::default();
        table.create_slots(&host).unwrap();
        let now = || T0;
        let users: Vec<String> = (0..50)
            .map(|i| format!("u{i}"))
            .filter(|u| {
                let p = plan(&cfg, u, Some("echo"), 1);
                table.slot_of(&p.cells[0].key) != table.slot_of(&p.cells[1].key)
            })
            .take(3)
            .collect();
        assert_eq!(users.len(), 3);
        let mut admitted = 0;
        for _ in 0..4 {
            let (d, _) = table
                .check(&host, &[plan(&cfg, &users[0], Some("echo"), 1)], &now)
                .unwrap();
            admitted += u32::from(d.allowed);
        }
        assert_eq!(admitted, 2, "user limit");
        // the tool still has 3 units: users[1] gets 2, users[2] gets 1
        let mut admitted = 0;
        for u in &users[1..] {
            for _ in 0..3 {
                let (d, _) = table
                    .check(&host, &[plan(&cfg, u, Some("echo"), 1)], &now)
                    .unwrap();
                admitted += u32::from(d.allowed);
            }
        }
        assert_eq!(admitted, 3, "tool limit counts only admitted requests");
        // every slot is unlocked afterwards
        for i in 0..table.slots() {
            let (v, _) = host.get(&table.slot_key(i)).unwrap();
            assert_eq!(Slot::decode(&v.unwrap()).unwrap().lock, 0);
        }
    }

    #[test]
    fn sequential_plans_share_cells() {
        // a batch: 2 × echo + 1 × add for one user with 3/m: admitted; the next call is denied
        let (cfg, _) = LimiterConfig::from_json_str(
            r#"{"by_user": "3/m", "by_tool": {"echo": "2/m", "add": "5/m"}}"#,
            &[],
        )
        .unwrap();
        let table = SlotTable::new(64, TEST_SEED);
        let host = EnvoySharedData::default();
        let now = || T0;
        let batch = [
            plan(&cfg, "u", Some("echo"), 2),
            plan(&cfg, "u", Some("add"), 1),
        ];
        let (d, _) = table.check(&host, &batch, &now).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining(), Some(0));
        let (d, _) = table
            .check(&host, &[plan(&cfg, "u", None, 1)], &now)
            .unwrap();
        assert!(!d.allowed);
        // a batch over the tool limit is denied as a whole: nothing consumed
        let (cfg, _) =
            LimiterConfig::from_json_str(r#"{"by_user": "10/m", "by_tool": {"echo": "2/m"}}"#, &[])
                .unwrap();
        let host = EnvoySharedData::default();
        let batch = [plan(&cfg, "v", None, 1), plan(&cfg, "v", Some("echo"), 3)];
        let (d, _) = table.check(&host, &batch, &now).unwrap();
        assert!(!d.allowed);
        let (d, _) = table
            .check(&host, &[plan(&cfg, "v", None, 1)], &now)
            .unwrap();
        assert_eq!(d.remaining(), Some(9), "the denied batch consumed nothing");
    }

    #[test]
    fn stale_locks_are_taken_over_and_live_ones_wait() {
        let (cfg, _) =
            LimiterConfig::from_json_str(r#"{"by_user": "5/m", "by_tool": {"echo": "5/m"}}"#, &[])
                .unwrap();
        let table = SlotTable::new(8, TEST_SEED); // one slot: every cell in slot 0
        let host = EnvoySharedData::default();
        let locked = Slot {
            lock: T0,
            entries: vec![],
        };
        host.set(&table.slot_key(0), &locked.encode(), None)
            .unwrap();
        let p = plan(&cfg, "u", Some("echo"), 1);
        // live lock: the single-slot path spins and gives up
        let err = table
            .check(&host, std::slice::from_ref(&p), &|| T0 + 10)
            .unwrap_err();
        assert!(err.transient);
        // stale lock: taken over
        let (d, _) = table
            .check(&host, std::slice::from_ref(&p), &|| T0 + STALE_LOCK_US + 1)
            .unwrap();
        assert!(d.allowed);
        // the sweep releases stale locks and drops expired cells
        host.set(&table.slot_key(0), &locked.encode(), None)
            .unwrap();
        let (s, next) = table.sweep(&host, 0, 10, T0 + STALE_LOCK_US);
        assert_eq!((s.slots, s.stale_locks, next), (1, 1, 0));
    }

    #[test]
    fn locks_from_the_future_are_stale() {
        // Regression (fuzz target slot_decode): a lock word ahead of "now" by more than
        // STALE_LOCK_US (garbage, or the wall clock stepped back) made every request on the slot
        // spin MAX_ATTEMPTS reads and fail until the clock caught up with it.
        let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "5/m"}"#, &[]).unwrap();
        let table = SlotTable::new(8, TEST_SEED);
        let host = EnvoySharedData::default();
        let p = plan(&cfg, "u", None, 1);
        for lock in [T0 + STALE_LOCK_US + 1, T0 + 3_600_000_000, u64::MAX] {
            let slot = Slot {
                lock,
                entries: vec![],
            };
            host.set(&table.slot_key(0), &slot.encode(), None).unwrap();
            let (d, stats) = table
                .check(&host, std::slice::from_ref(&p), &|| T0)
                .unwrap();
            assert!(d.allowed);
            assert_eq!(stats.retries, 0, "lock {lock}");
        }
        // a lock just ahead of now (within the window) is still live
        let slot = Slot {
            lock: T0 + 10,
            entries: vec![],
        };
        host.set(&table.slot_key(0), &slot.encode(), None).unwrap();
        assert!(
            table
                .check(&host, std::slice::from_ref(&p), &|| T0)
                .unwrap_err()
                .transient
        );
    }

    #[test]
    fn sweep_reclaims_expired_cells() {
        let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "5/s"}"#, &[]).unwrap();
        let table = SlotTable::new(64, TEST_SEED);
        let host = EnvoySharedData::default();
        table.create_slots(&host).unwrap();
        for i in 0..20 {
            let p = plan(&cfg, &format!("user{i}"), None, 1);
            assert!(table.check(&host, &[p], &|| T0).unwrap().0.allowed);
        }
        let (s, next) = table.sweep(&host, 3, 5, T0 + 500_000);
        assert_eq!((s.reclaimed, next), (0, 0));
        let (s, _) = table.sweep(&host, 0, 100, T0 + 2_000_000);
        assert_eq!(s.slots, 8);
        assert_eq!(s.reclaimed, 20);
    }

    #[test]
    fn bounded_under_many_keys() {
        let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "5/h"}"#, &[]).unwrap();
        let table = SlotTable::new(64, TEST_SEED);
        let host = EnvoySharedData::default();
        let mut evictions = 0;
        for i in 0..1000 {
            let p = plan(&cfg, &format!("user{i}"), None, 1);
            evictions += table.check(&host, &[p], &|| T0 + i).unwrap().1.evictions;
        }
        assert!(evictions >= 1000 - 64);
        let m = host.map.lock().unwrap();
        assert_eq!(m.len(), 8);
        assert!(m
            .values()
            .all(|(v, _)| Slot::decode(v).unwrap().entries.len() <= SLOT_CAPACITY));
    }

    #[test]
    fn threads_admit_exactly_the_limit() {
        // 4 threads × 500 requests on one user (and a shared tool, in another slot) with limit
        // 1000: exactly 1000 admitted, and the tool counted exactly the admitted ones.
        let (cfg, _) = LimiterConfig::from_json_str(
            r#"{"by_user": "1000/h", "by_tool": {"echo": "100000/h"}, "algorithm": "sliding_window_counter"}"#,
            &[],
        )
        .unwrap();
        let table = Arc::new(SlotTable::new(4096, TEST_SEED));
        let host = Arc::new(EnvoySharedData::default());
        table.create_slots(host.as_ref()).unwrap();
        let p = plan(&cfg, "hot", Some("echo"), 1);
        assert_ne!(
            table.slot_of(&p.cells[0].key),
            table.slot_of(&p.cells[1].key)
        );
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (table, host, p) = (table.clone(), host.clone(), p.clone());
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    for _ in 0..500 {
                        let (d, _) = table
                            .check(host.as_ref(), std::slice::from_ref(&p), &|| T0)
                            .unwrap();
                        n += u32::from(d.allowed);
                    }
                    n
                })
            })
            .collect();
        let total: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
        let (d, _) = table
            .check(
                host.as_ref(),
                &[plan(&cfg, "other", Some("echo"), 1)],
                &|| T0,
            )
            .unwrap();
        assert_eq!(
            d.remaining(),
            Some(999),
            "user 'other' has 999 left; tool 98999"
        );
        let tool_left = d.dimensions[1].outcome.remaining;
        assert_eq!(tool_left, 100_000 - 1001);
    }

    #[test]
    fn the_seed_is_created_once_and_shared_by_every_vm() {
        let host = EnvoySharedData::default();
        let (a, created) = SlotTable::open(&host, 1024).unwrap();
        assert_eq!(created, 128);
        let (b, created_again) = SlotTable::open(&host, 1024).unwrap(); // another worker's VM
        assert_eq!(created_again, 0);
        assert_eq!(a, b);
        let stored = host.get(SEED_KEY).unwrap().0.unwrap();
        assert_eq!(stored.len(), 16);
        assert_ne!(stored, vec![0u8; 16]);
        // Another process (fresh shared data) draws another seed.
        let (c, _) = SlotTable::open(&EnvoySharedData::default(), 1024).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn slots_depend_on_the_seed() {
        // Under a public hash, ids that collide on one slot can be computed offline; with the
        // seed they differ per process. Two seeds place the same keys differently.
        let a = SlotTable::new(8 * 1024, SlotSeed([1; 16]));
        let b = SlotTable::new(8 * 1024, SlotSeed([2; 16]));
        let keys: Vec<String> = (0..64).map(|i| format!("rl:user:{i}")).collect();
        let same = keys.iter().filter(|k| a.slot_of(k) == b.slot_of(k)).count();
        assert!(
            same < 8,
            "{same} of 64 keys in the same slot under both seeds"
        );
        // And a table hashes deterministically: the same key, the same slot.
        assert!(keys.iter().all(|k| a.slot_of(k) == a.slot_of(k)));
        // Spread: 64 keys over 1,024 slots land in (nearly) distinct slots.
        let mut ids: Vec<u32> = keys.iter().map(|k| a.slot_of(k)).collect();
        ids.sort_unstable();
        ids.dedup();
        assert!(ids.len() >= 60, "{}", ids.len());
    }
}
