//! Sliding window counter (Cloudflare's weighted estimate), O(1) state.
//!
//! Windows are epoch-aligned as in [`super::fixed_window`]. With `p` units in the previous window,
//! `k` in the current one and `e = now - iW` elapsed in it, the estimated usage of the trailing
//! window is `p (W - e) / W + k`. A request of cost `c` is admitted iff
//!
//! ```text
//! p (W - e) + (k + c) W <= L W          (exact, in integers)
//! ```
//!
//! `remaining = floor((L W - p (W - e) - k' W) / W)` with `k'` the current count after the request.
//!
//! Retry time for a denied request (`c <= L`):
//! * `k + c <= L` (only the previous window's weight is in the way): the smallest `e'` with
//!   `p (W - e') <= (L - k - c) W`, i.e. `e' = W - floor((L - k - c) W / p)`; `retry_at = iW + e'`.
//! * otherwise the current window must become the previous one (`p' = k`, `k' = 0`):
//!   `e'' = W - floor((L - c) W / k)`, `retry_at = (i + 1) W + e''`.
//!
//! `reset_at` is when the estimate returns to 0: `(i + 2) W` if the current window has usage,
//! `(i + 1) W` if only the previous one has. Products are bounded by `L W <= 2^53` (checked by the
//! configuration), so they are exact in `u64` and in Lua's doubles.

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::Outcome;

/// Sliding-window-counter state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Index of the window `curr` belongs to.
    pub window: u64,
    /// Units admitted in window `window - 1`.
    pub prev: u64,
    /// Units admitted in window `window`.
    pub curr: u64,
}

/// `(i, p, k, e)` at `now`.
fn view(s: &State, now: Micros, w: u64) -> (u64, u64, u64, u64) {
    let i = now / w;
    let e = now - i * w;
    let (p, k) = if s.window == i {
        (s.prev, s.curr)
    } else if s.window + 1 == i {
        (s.curr, 0)
    } else {
        (0, 0)
    };
    (i, p, k, e)
}

fn reset_at(i: u64, p: u64, k: u64, w: u64, now: Micros) -> Micros {
    if k > 0 {
        (i + 2) * w
    } else if p > 0 {
        (i + 1) * w
    } else {
        now
    }
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let w = limit.window_micros();
    let l = limit.count();
    let (i, p, k, e) = view(s, now, w);
    let weighted_prev = p * (w - e);
    let budget = l * w;
    // Saturating: a cost above the limit may overflow `(k + c) W`; it never fits either way.
    if weighted_prev.saturating_add((k + cost).saturating_mul(w)) <= budget {
        Outcome {
            allowed: true,
            remaining: (budget - weighted_prev - (k + cost) * w) / w,
            reset_at: reset_at(i, p, k + cost, w, now),
            retry_at: None,
        }
    } else {
        let remaining = budget.saturating_sub(weighted_prev + k * w) / w;
        let retry_at = if cost > l {
            None
        } else if k + cost <= l {
            // p > 0 here, otherwise the request would have fitted.
            let e1 = w - ((l - k - cost) * w / p).min(w);
            Some(i * w + e1)
        } else {
            // k > 0 here since k + cost > l >= cost.
            let e2 = w - ((l - cost) * w / k).min(w);
            Some((i + 1) * w + e2)
        };
        Outcome {
            allowed: false,
            remaining,
            reset_at: reset_at(i, p, k, w, now),
            retry_at,
        }
    }
}

/// See the module doc.
pub fn commit(s: &mut State, now: Micros, cost: u64, limit: &Limit) {
    let (i, p, k, _) = view(s, now, limit.window_micros());
    *s = State {
        window: i,
        prev: p,
        curr: k + cost,
    };
}

/// Two windows after the one last written.
pub fn expires_at(s: &State, limit: &Limit) -> Micros {
    (s.window + 2) * limit.window_micros()
}
