//! GCRA (generic cell rate algorithm): one integer of state.
//!
//! Emission interval `T = ceil(W / L)` µs (rounded up, so the sustained rate never exceeds
//! `L / W`); burst tolerance `τ = L T` (a full burst of `L` units is admitted at once). State: the
//! theoretical arrival time `tat`. For cost `c` at `now`:
//!
//! ```text
//! tat0 = max(tat, now);   new_tat = tat0 + c T;   admit iff new_tat - now <= τ
//! ```
//!
//! `remaining = floor((now + τ - new_tat) / T)`; denied (`c <= L`): `retry_at = new_tat - τ`;
//! `reset_at = new_tat` (quota fully restored when `tat <= now`).

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::Outcome;

/// GCRA state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Theoretical arrival time (µs since epoch).
    pub tat: Micros,
}

/// `(T, τ)` for a limit.
fn params(limit: &Limit) -> (u64, u64) {
    let t = limit.interval_micros();
    (t, t * limit.count())
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let (t, tau) = params(limit);
    let tat0 = s.tat.max(now);
    // Saturating: a cost above the limit may overflow `cost T`; it never fits either way.
    let new_tat = tat0.saturating_add(cost.saturating_mul(t));
    if new_tat <= now + tau {
        Outcome {
            allowed: true,
            remaining: (now + tau - new_tat) / t,
            reset_at: new_tat,
            retry_at: None,
        }
    } else {
        Outcome {
            allowed: false,
            remaining: (now + tau).saturating_sub(tat0) / t,
            reset_at: tat0,
            retry_at: (cost <= limit.count()).then(|| new_tat - tau),
        }
    }
}

/// See the module doc.
pub fn commit(s: &mut State, now: Micros, cost: u64, limit: &Limit) {
    let (t, _) = params(limit);
    s.tat = s.tat.max(now) + cost * t;
}

/// The theoretical arrival time.
pub fn expires_at(s: &State, _limit: &Limit) -> Micros {
    s.tat
}
