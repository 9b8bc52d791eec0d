//! Fixed window, aligned to the Unix epoch.
//!
//! Window index `i = floor(now / W)`; every instance computes the same boundaries, whatever its
//! start time. State: `(window, count)` = the index of the window last written and the units
//! consumed in it. A request of cost `c` is admitted iff `count_i + c <= L`, where `count_i` is
//! `count` if `window == i` and 0 otherwise.
//!
//! Invariants: `count <= L`; denied requests are not counted; at most `L` units are admitted in
//! any window `[iW, (i+1)W)`. (The well-known 2L burst across a boundary is inherent.)
//! `reset_at = retry_at = (i + 1) W`.

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::Outcome;

/// Fixed-window state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Index of the window `count` belongs to (`floor(t / W)`).
    pub window: u64,
    /// Units consumed in that window.
    pub count: u64,
}

fn current(s: &State, now: Micros, w: u64) -> (u64, u64) {
    let i = now / w;
    (i, if s.window == i { s.count } else { 0 })
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let w = limit.window_micros();
    let l = limit.count();
    let (i, used) = current(s, now, w);
    let end = (i + 1) * w;
    if used + cost <= l {
        Outcome {
            allowed: true,
            remaining: l - used - cost,
            reset_at: end,
            retry_at: None,
        }
    } else {
        Outcome {
            allowed: false,
            remaining: l.saturating_sub(used),
            reset_at: end,
            retry_at: (cost <= l).then_some(end),
        }
    }
}

/// See the module doc.
pub fn commit(s: &mut State, now: Micros, cost: u64, limit: &Limit) {
    let (i, used) = current(s, now, limit.window_micros());
    s.window = i;
    s.count = used + cost;
}

/// End of the window last written.
pub fn expires_at(s: &State, limit: &Limit) -> Micros {
    (s.window + 1) * limit.window_micros()
}
