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
use crate::config::{Cell, Plan};
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

/// The one commit rule every store follows: cell `i` of a decided plan consumes iff the decision
/// is allowed, the cell's own outcome admitted the request, and its cost is above 0.
///
/// So a denied request consumes nowhere (all-or-nothing), a shadow cell that would deny is not
/// charged (for itself it behaves as if it were enforced), and a cell of cost 0 is only checked.
/// The Redis script (`script.lua`) and the Python engine apply the same rule.
#[inline(always)]
pub fn commits(decision: &Decision, i: usize, cell: &Cell) -> bool {
    decision.allowed
        && cell.cost > 0
        && decision
            .dimensions
            .get(i)
            .is_some_and(|d| d.outcome.allowed)
}

/// The all-or-nothing batch over already-loaded states: peek every cell (at its own cost),
/// combine, and, if allowed, commit every cell that [`commits`]. `states[i]` is the state of
/// `plan.cells[i]` (`None` = fresh); returns the decision and, if allowed, the states to write
/// back, one per cell: committed cells' new states, and for the others the stored state unchanged
/// (or a fresh one, which is expired and so equivalent to an absent entry).
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
        Some(s) => s.peek(now, c.cost, &c.limit),
        None => c.algorithm.fresh_state().peek(now, c.cost, &c.limit),
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
            if commits(&decision, i, c) {
                s.commit(now, c.cost, &c.limit);
            }
            s
        })
        .collect();
    (decision, Some(new_states))
}
