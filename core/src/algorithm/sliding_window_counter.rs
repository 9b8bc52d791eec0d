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
//! `(i + 1) W` if only the previous one has.
//!
//! Exactness: `p (W - e)` and `L W` reach 2^77 (counts up to `u32::MAX`, windows up to 366
//! days), so the comparison is made on small integers instead. With `x = W - e` and the previous
//! window's weight rounded up, `wp = ceil(p x / W) <= p`, the right-hand side being a multiple of
//! `W` gives, for `k + c <= L`,
//!
//! ```text
//! p x + (k + c) W <= L W   <=>   wp <= L - k - c
//! remaining = L - k' - wp   (admitted),   (L - k - wp)^+   (denied)
//! ```
//!
//! and the retry offsets `floor(M W / p)` are only computed when `M < p`, where they are below
//! `W` (for `M >= p` the offset is the whole window). The products go through
//! [`super::exact::mul_div`]; every stored or returned value stays below 2^53, and the Lua
//! script makes the same long divisions in doubles, so both agree for every accepted limit.

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::exact::{mul_div, mul_div_ceil};
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

/// `W - min(floor(m W / d), W)`: the µs into a window at which a weight of `d` units shrinks to
/// `m` (`d >= 1`).
fn offset(m: u64, d: u64, w: u64) -> u64 {
    if m >= d {
        0
    } else {
        w - mul_div(m, w, 0, d).0
    }
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let w = limit.window_micros();
    let l = limit.count();
    let (i, p, k, e) = view(s, now, w);
    // The previous window's weight, rounded up: ceil(p (W - e) / W) <= p.
    let wp = mul_div_ceil(p, w - e, w);
    // Saturating: a cost above the limit may overflow `k + c`; it never fits either way.
    let used = k.saturating_add(cost);
    if used <= l && wp <= l - used {
        Outcome {
            allowed: true,
            remaining: l - used - wp,
            reset_at: reset_at(i, p, used, w, now),
            retry_at: None,
        }
    } else {
        let remaining = l.saturating_sub(k).saturating_sub(wp);
        let retry_at = if cost > l {
            None
        } else if used <= l {
            // p > 0 here, otherwise the request would have fitted.
            Some(i * w + offset(l - used, p, w))
        } else {
            // k > 0 here since k + cost > l >= cost.
            Some((i + 1) * w + offset(l - cost, k, w))
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
