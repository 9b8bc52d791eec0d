//! Stores: one batched, atomic operation per request.
//!
//! A store takes the [`Plan`] of one request (every cell of every dimension) and answers with one
//! [`Decision`], consuming in every cell or in none. It reads "now" itself, from its injected
//! [`crate::clock::Clock`] (memory) or from the Redis server, *after* it holds whatever makes the
//! batch atomic, so a later instant is never applied before an earlier one.
//!
//! * [`memory::MemoryStore`] (feature `memory`): sharded, bounded, in-process.
//! * [`redis::RedisStore`] (feature `redis`): one Lua script call (`EVALSHA`) per request, on a
//!   multiplexed async connection, single node or cluster; see `docs/REDIS.md`.
//! * The Envoy filter keeps cells in proxy-wasm shared data and reuses [`apply_batch`].

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use crate::algorithm::CellState;
use crate::clock::Micros;
use crate::config::Plan;
use crate::decision::Decision;

/// A store failed to answer (the front end applies `fail_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// What failed, for logs.
    pub message: String,
    /// Whether retrying later may succeed (connection loss, timeout) as opposed to a
    /// misconfiguration (authentication, bad script).
    pub transient: bool,
}

impl StoreError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// The batched interface every synchronous store implements.
pub trait Store: Send + Sync {
    /// Check every cell of `plan` at the store's "now"; consume in all of them or in none.
    fn check(&self, plan: &Plan) -> Result<Decision, StoreError>;
}

/// The all-or-nothing batch over already-loaded states: peek every cell, combine, and commit
/// every cell only if allowed. `states[i]` is the state of `plan.cells[i]` (`None` = fresh);
/// returns the decision and, if allowed, the new states to write back.
///
/// Stores that load and store state themselves (proxy-wasm shared data with CAS) use this so the
/// semantics are exactly the memory store's.
pub fn apply_batch(
    plan: &Plan,
    now: Micros,
    states: &[Option<CellState>],
) -> (Decision, Option<Vec<CellState>>) {
    // The stored state of cell `i`, if it belongs to the cell's algorithm (else: fresh).
    let stored = |i: usize| -> Option<&CellState> {
        states
            .get(i)
            .and_then(Option::as_ref)
            .filter(|s| s.algorithm() == plan.cells[i].algorithm)
    };
    let outcomes = plan.cells.iter().enumerate().map(|(i, c)| match stored(i) {
        Some(s) => s.peek(now, plan.cost, &c.limit),
        None => c.algorithm.fresh_state().peek(now, plan.cost, &c.limit),
    });
    let decision = Decision::combine(plan, now, outcomes);
    if !decision.allowed {
        return (decision, None);
    }
    let new_states = plan
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut s = stored(i)
                .cloned()
                .unwrap_or_else(|| c.algorithm.fresh_state());
            s.commit(now, plan.cost, &c.limit);
            s
        })
        .collect();
    (decision, Some(new_states))
}
