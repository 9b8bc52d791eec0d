//! Token bucket with continuous refill and no lost refill.
//!
//! Capacity `L` tokens; refill `L` tokens per window `W`, i.e. one token every `W / L` µs. A
//! request of cost `c` takes `c` tokens and is admitted iff the bucket holds at least `c`.
//!
//! Refill is exact in integers: over `d` µs the bucket earns `d L / W` tokens. The integer part is
//! added to `tokens` and the fractional part is *carried* in `rem` (units of `1/W` token), so hot
//! keys that are checked more often than once per token never lose refill:
//!
//! ```text
//! acc = d L + rem;  tokens += acc / W;  rem = acc mod W      (tokens capped at L; full => rem = 0)
//! ```
//!
//! Denied with `c <= L`: `need = c - tokens` tokens arrive after `ceil((need W - rem) / L)` µs.
//! `reset_at` = when the bucket is full again. A fresh bucket is full. `d` is capped at `W` (a
//! bucket empty `W` ago is full).
//!
//! Exactness: `d L + rem` and `need W` reach `L W < 2^77` (counts up to `u32::MAX`, windows up
//! to 366 days), so both go through [`super::exact::mul_div`], whose quotients are small again
//! (`acc / W <= L + 1`, `need W / L <= W`). With `need W = Q L + R`:
//!
//! ```text
//! ceil((need W - rem)^+ / L) = Q + [R > rem]            if R >= rem
//!                            = (Q - floor((rem - R) / L))^+   otherwise
//! ```
//!
//! Every value the algorithm stores or returns stays below 2^53 (`tokens <= L`, `rem < W`,
//! instants below 2^53 µs), so the Lua script, which does the same long division in doubles,
//! computes identical results for every limit the configuration accepts.

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::exact::mul_div;
use super::Outcome;

/// Token-bucket state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// False for a never-used bucket (which is full).
    pub started: bool,
    /// Whole tokens at `last`.
    pub tokens: u64,
    /// Instant of the last refill computation.
    pub last: Micros,
    /// Fractional token carried, in units of `1 / W` token (`rem < W`).
    pub rem: u64,
}

/// `(tokens, rem)` refilled to `now`.
fn refill(s: &State, now: Micros, limit: &Limit) -> (u64, u64) {
    let l = limit.count();
    let w = limit.window_micros();
    if !s.started {
        return (l, 0);
    }
    let d = now.saturating_sub(s.last).min(w);
    // (d L + rem) / W and its remainder.
    let (earned, rem) = mul_div(d, l, s.rem, w);
    let tokens = s.tokens.saturating_add(earned);
    if tokens >= l {
        (l, 0)
    } else {
        (tokens, rem)
    }
}

/// µs until `need` more tokens have accrued, given the carried `rem`:
/// `ceil((need W - rem)^+ / L)` (module doc).
fn time_for(need: u64, rem: u64, limit: &Limit) -> u64 {
    let l = limit.count();
    let (q, r) = mul_div(need, limit.window_micros(), 0, l);
    if r >= rem {
        q + u64::from(r > rem)
    } else {
        q.saturating_sub((rem - r) / l)
    }
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let l = limit.count();
    let (tokens, rem) = refill(s, now, limit);
    if tokens >= cost {
        let left = tokens - cost;
        let rem_after = if left >= l { 0 } else { rem };
        Outcome {
            allowed: true,
            remaining: left,
            reset_at: now + time_for(l - left, rem_after, limit),
            retry_at: None,
        }
    } else {
        Outcome {
            allowed: false,
            remaining: tokens,
            reset_at: now + time_for(l - tokens, rem, limit),
            retry_at: (cost <= l).then(|| now + time_for(cost - tokens, rem, limit)),
        }
    }
}

/// See the module doc. (Not inlined into `CellState::commit`: its wide arithmetic would cost the
/// other algorithms' arms there a heavier prologue.)
#[inline(never)]
pub fn commit(s: &mut State, now: Micros, cost: u64, limit: &Limit) {
    let (tokens, rem) = refill(s, now, limit);
    *s = State {
        started: true,
        tokens: tokens - cost.min(tokens),
        last: now.max(s.last),
        rem,
    };
}

/// When the bucket is full again. (Not inlined: see [`commit`].)
#[inline(never)]
pub fn expires_at(s: &State, limit: &Limit) -> Micros {
    if !s.started {
        return 0;
    }
    s.last + time_for(limit.count() - s.tokens.min(limit.count()), s.rem, limit)
}
