//! The process-wide memory store: one per process, bounded, shared by every memory-backend engine.
//!
//! The gateway keeps one plugin instance per context (team-owned tool, virtual server, global),
//! rebuilds each one every 30 s, and builds new ones whenever its plugin configuration changes.
//! Counters owned by an instance would split a user's quota across contexts and reset it on every
//! rebuild or edit; counters owned by one store per configuration would keep every configuration
//! ever seen for the life of the process (2,000 configs: +4.1 GB) and still reset on an edit. So,
//! as in the check service, there is one store per process and a counter is keyed by what it is:
//! the core's cell key ([`ratewall_core::key::cell_key`]: key prefix, tenant, algorithm, window,
//! dimension and identity). Consequences:
//!
//! * An edit keeps every unchanged rule's usage (same key), and a rule whose count changes keeps
//!   its usage too (the key carries the window, not the count: raising `5/m` to `10/m` after 5
//!   requests leaves 5, exactly as the service and the Redis backend do on a reload).
//! * Two rules of one configuration never share a counter: their dimensions or windows differ
//!   (the core refuses two limits with one window in a dimension). Rules of a removed
//!   configuration are never read again; their cells expire and are reclaimed like any other.
//! * Two plugin entries that are live at once with the same `redis_key_prefix` count into the
//!   same cells, as they would in Redis: give entries that must count apart their own prefix.
//!
//! The store's bound is `memory_max_keys` of the **first** engine that creates it (a store cannot
//! be resized while it holds counters); an engine configured with another value reports both
//! through [`Shared::max_keys`] and the plugin logs a WARN once per differing value.

use std::sync::{Arc, OnceLock};

use ratewall_core::clock::{Clock, SystemClock};
use ratewall_core::store::memory::MemoryStore;

/// The process's memory store and the bound it was created with.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<MemoryStore>,
    /// `memory_max_keys` of the engine that created the store (the one in force).
    pub max_keys: usize,
}

static STORE: OnceLock<Shared> = OnceLock::new();

/// The process-wide store, created on first use with `max_keys` cells at most.
pub fn memory_store(max_keys: usize) -> Shared {
    STORE
        .get_or_init(|| {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
            Shared {
                store: Arc::new(MemoryStore::new(max_keys, clock)),
                max_keys,
            }
        })
        .clone()
}
