//! Exact sliding window (sliding log).
//!
//! State: the admission instants of the last `L` units, oldest first (one entry per unit of cost,
//! so memory per key is bounded by `L` entries of 8 bytes). An entry at `t_j` is live at `now` iff
//! `t_j + W > now`. With `n` live entries a request of cost `c` is admitted iff `n + c <= L`.
//!
//! Invariants: the log is sorted; at most `L` units are admitted in *any* interval of length `W`
//! (the trailing-window definition); denied requests leave no entry.
//!
//! * denied, `c <= L`: `k = n + c - L` entries must expire first, so
//!   `retry_at = live[k - 1] + W` (the k-th oldest live entry);
//! * `reset_at` = newest entry + `W` (the whole log has expired).
//!
//! Cost 0 (check without consuming) is always admitted (`n <= L`) with `remaining = L - n` and
//! `reset_at` = newest entry + `W` (now if the log is empty or expired): the current state.
//!
//! A commit stamps entries with `max(now, newest)` so the log stays sorted even if a caller's
//! clock steps backwards.

use std::collections::VecDeque;

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::Outcome;

/// Sliding-log state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Admission instants, one per unit of cost, non-decreasing.
    pub log: VecDeque<Micros>,
}

/// Index of the first live entry at `now`.
fn first_live(s: &State, now: Micros, w: u64) -> usize {
    s.log.partition_point(|&t| t + w <= now)
}

/// See the module doc.
pub fn peek(s: &State, now: Micros, cost: u64, limit: &Limit) -> Outcome {
    let w = limit.window_micros();
    let l = limit.count();
    let start = first_live(s, now, w);
    let n = (s.log.len() - start) as u64;
    let newest = s.log.back().copied();
    // An expired log is a fresh one: its reset is never in the past.
    let log_reset = newest.map_or(now, |b| (b + w).max(now));
    if n + cost <= l {
        let stamp = newest.map_or(now, |b| b.max(now));
        Outcome {
            allowed: true,
            remaining: l - n - cost,
            // Cost 0 adds no entry: the log's own reset.
            reset_at: if cost == 0 { log_reset } else { stamp + w },
            retry_at: None,
        }
    } else {
        let retry_at = if cost <= l {
            let k = (n + cost - l) as usize;
            s.log.get(start + k - 1).map(|t| t + w)
        } else {
            None
        };
        Outcome {
            allowed: false,
            remaining: l.saturating_sub(n),
            reset_at: log_reset,
            retry_at,
        }
    }
}

/// See the module doc.
pub fn commit(s: &mut State, now: Micros, cost: u64, limit: &Limit) {
    let w = limit.window_micros();
    let start = first_live(s, now, w);
    s.log.drain(..start);
    let stamp = s.log.back().map_or(now, |b| (*b).max(now));
    for _ in 0..cost {
        s.log.push_back(stamp);
    }
}

/// Newest entry + `W`.
pub fn expires_at(s: &State, limit: &Limit) -> Micros {
    s.log.back().map_or(0, |b| b + limit.window_micros())
}
