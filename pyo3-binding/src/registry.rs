//! Process-wide memory stores, one per limits fingerprint, for the life of the process.
//!
//! The gateway keeps one plugin instance per context (team-owned tool, virtual server, global) and
//! rebuilds each one every 30 s. Counters owned by an instance would split a user's quota across
//! contexts and reset it on every rebuild; counters owned by the process are shared by every
//! instance configured with the same limits and survive rebuilds. A store is bounded by its
//! `memory_max_keys`, and the number of stores by the number of distinct configurations.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use ratewall_core::clock::{Clock, SystemClock};
use ratewall_core::store::memory::MemoryStore;

type Registry = Mutex<HashMap<String, Arc<MemoryStore>>>;

static STORES: OnceLock<Registry> = OnceLock::new();
static CLOCK: OnceLock<Arc<SystemClock>> = OnceLock::new();

/// The store for `fingerprint`, created on first use.
pub fn memory_store(fingerprint: &str, max_keys: usize) -> Arc<MemoryStore> {
    let mut stores = STORES.get_or_init(Default::default).lock();
    if let Some(s) = stores.get(fingerprint) {
        return s.clone();
    }
    let clock: Arc<dyn Clock> = CLOCK.get_or_init(|| Arc::new(SystemClock::new())).clone();
    let store = Arc::new(MemoryStore::new(max_keys, clock));
    stores.insert(fingerprint.to_string(), store.clone());
    store
}
