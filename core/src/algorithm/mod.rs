//! The five rate limiting algorithms, as pure state transitions.
//!
//! Each algorithm is two functions over a small state value:
//!
//! * `peek(state, now, cost, limit) -> Outcome`: would a request of `cost` units be admitted at
//!   `now`? Never mutates; lets a store check every dimension of a request before consuming any
//!   (all-or-nothing, see [`crate::decision`]).
//! * `commit(state, now, cost, limit)`: consume `cost` units at `now` (only called after every
//!   dimension's `peek` admitted the request).
//!
//! Time is in microseconds ([`Micros`]). All arithmetic is on unsigned integers, saturating where a
//! clock could step backwards. Counts go up to `u32::MAX` and windows up to 366 days, so a few
//! products (`count × µs`) reach 2^77: they go through [`exact::mul_div`] (exact in `u64`/`u128`
//! here, by long division in the Lua script), and every value stored or returned stays below 2^53,
//! so the Redis Lua script (IEEE doubles) computes bit-identical results for every limit that
//! [`crate::config`] accepts ([`Algorithm::check_limit`] names the two exceptions).
//!
//! **Cost 0** checks a cell without consuming (RLS `hits_addend: 0`): every `peek` is defined for
//! it and describes the current state. It is admitted whenever the state is within its limit
//! (always, unless a caller's clock stepped back), with `remaining` = the units left now and
//! `reset_at` = when the current usage is fully restored, by the same formulas as for a cost
//! above 0 with `c = 0` (fixed and sliding-counter windows: the window end as usual; the sliding
//! log: its newest entry + `W`). Stores never `commit` a cost of 0 ([`crate::store::commits`]).
//!
//! `reset_at` is when the dimension's quota is fully restored (nothing consumed remains counted);
//! `retry_at` (denied requests only) is the earliest instant at which the same request would be
//! admitted if nothing else happened; `None` when it never can (`cost > limit`).

pub mod exact;
pub mod fixed_window;
pub mod gcra;
pub mod sliding_window;
pub mod sliding_window_counter;
pub mod token_bucket;
pub mod usage;

pub use usage::Usage;

use crate::clock::Micros;
use crate::config::rate::Limit;

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Epoch-aligned fixed windows.
    #[default]
    FixedWindow,
    /// Exact sliding log.
    SlidingWindow,
    /// Weighted previous + current window estimate.
    SlidingWindowCounter,
    /// Token bucket with continuous refill.
    TokenBucket,
    /// Generic cell rate algorithm.
    Gcra,
}

impl Algorithm {
    /// Every algorithm, in documentation order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingWindowCounter,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
        }
    }

    /// Short tag embedded in storage keys, so that state written by one algorithm is never read
    /// by another after a configuration change.
    pub fn key_tag(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fw",
            Algorithm::SlidingWindow => "sw",
            Algorithm::SlidingWindowCounter => "swc",
            Algorithm::TokenBucket => "tb",
            Algorithm::Gcra => "gcra",
        }
    }

    /// Parse a configuration name (trimmed, ASCII case-insensitive).
    pub fn from_name(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Whether `limit` can be enforced exactly by this algorithm, or why not (for a load-time
    /// error: the caller names the field, the value and the algorithm). Every algorithm is exact
    /// for every count up to [`crate::config::rate::MAX_COUNT`] and window up to a year and a day
    /// (see each module's "Exactness"), except:
    ///
    /// * `gcra`: the emission interval `T = ceil(W / L)` is a whole number of µs, so `L` may not
    ///   exceed `W` in µs (one unit per µs); above that the sustained rate would be 1/µs, not
    ///   `L / W`.
    /// * `sliding_window`: the log keeps one 8-byte instant per admitted unit still in the window,
    ///   so `L` is bounded by [`SLIDING_LOG_MAX_COUNT`] (8 MB per key at most in memory).
    pub fn check_limit(self, limit: &Limit) -> Result<(), &'static str> {
        match self {
            Algorithm::Gcra if limit.count() > limit.window_micros() => {
                Err("over one per µs, finer than its clock; use a longer window or token_bucket")
            }
            Algorithm::SlidingWindow if limit.count() > SLIDING_LOG_MAX_COUNT => {
                Err("over its 1000000 (one log entry per unit); use sliding_window_counter")
            }
            _ => Ok(()),
        }
    }

    /// Fresh (empty) state for this algorithm.
    pub fn fresh_state(self) -> CellState {
        match self {
            Algorithm::FixedWindow => CellState::FixedWindow(Default::default()),
            Algorithm::SlidingWindow => CellState::SlidingWindow(Default::default()),
            Algorithm::SlidingWindowCounter => CellState::SlidingWindowCounter(Default::default()),
            Algorithm::TokenBucket => CellState::TokenBucket(Default::default()),
            Algorithm::Gcra => CellState::Gcra(Default::default()),
        }
    }
}

/// Integers up to this bound (2^53) are exact in an IEEE double, the Lua script's numbers: every
/// value an algorithm stores or returns stays below it (instants included, until the year 2255).
pub const MAX_EXACT: u64 = 1 << 53;

/// Largest count of a `sliding_window` limit: its log holds one 8-byte instant per admitted unit
/// still in the window (8 MB per key at this bound in memory; about 9 MB in a Redis list).
pub const SLIDING_LOG_MAX_COUNT: u64 = 1_000_000;

/// What one dimension says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The request fits in this dimension.
    pub allowed: bool,
    /// Units left after this request (if allowed) or now (if denied).
    pub remaining: u64,
    /// When the quota is fully restored (µs since epoch), assuming this request was consumed if
    /// allowed.
    pub reset_at: Micros,
    /// Denied only: earliest instant the same request would be admitted; `None` if never
    /// (`cost > limit`) or if allowed.
    pub retry_at: Option<Micros>,
}

/// State of one (key, algorithm, window) cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellState {
    /// See [`fixed_window`].
    FixedWindow(fixed_window::State),
    /// See [`sliding_window`].
    SlidingWindow(sliding_window::State),
    /// See [`sliding_window_counter`].
    SlidingWindowCounter(sliding_window_counter::State),
    /// See [`token_bucket`].
    TokenBucket(token_bucket::State),
    /// See [`gcra`].
    Gcra(gcra::State),
}

impl CellState {
    /// Would `cost` be admitted at `now`? (No mutation.)
    #[inline]
    pub fn peek(&self, now: Micros, cost: u64, limit: &Limit) -> Outcome {
        match self {
            CellState::FixedWindow(s) => fixed_window::peek(s, now, cost, limit),
            CellState::SlidingWindow(s) => sliding_window::peek(s, now, cost, limit),
            CellState::SlidingWindowCounter(s) => sliding_window_counter::peek(s, now, cost, limit),
            CellState::TokenBucket(s) => token_bucket::peek(s, now, cost, limit),
            CellState::Gcra(s) => gcra::peek(s, now, cost, limit),
        }
    }

    /// Consume `cost` at `now`. Call only after [`CellState::peek`] admitted it.
    #[inline]
    pub fn commit(&mut self, now: Micros, cost: u64, limit: &Limit) {
        match self {
            CellState::FixedWindow(s) => fixed_window::commit(s, now, cost, limit),
            CellState::SlidingWindow(s) => sliding_window::commit(s, now, cost, limit),
            CellState::SlidingWindowCounter(s) => {
                sliding_window_counter::commit(s, now, cost, limit)
            }
            CellState::TokenBucket(s) => token_bucket::commit(s, now, cost, limit),
            CellState::Gcra(s) => gcra::commit(s, now, cost, limit),
        }
    }

    /// The instant after which this state is indistinguishable from a fresh one (it may be
    /// dropped). Used for memory reclamation and Redis TTLs.
    pub fn expires_at(&self, limit: &Limit) -> Micros {
        match self {
            CellState::FixedWindow(s) => fixed_window::expires_at(s, limit),
            CellState::SlidingWindow(s) => sliding_window::expires_at(s, limit),
            CellState::SlidingWindowCounter(s) => sliding_window_counter::expires_at(s, limit),
            CellState::TokenBucket(s) => token_bucket::expires_at(s, limit),
            CellState::Gcra(s) => gcra::expires_at(s, limit),
        }
    }

    /// The algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            CellState::FixedWindow(_) => Algorithm::FixedWindow,
            CellState::SlidingWindow(_) => Algorithm::SlidingWindow,
            CellState::SlidingWindowCounter(_) => Algorithm::SlidingWindowCounter,
            CellState::TokenBucket(_) => Algorithm::TokenBucket,
            CellState::Gcra(_) => Algorithm::Gcra,
        }
    }

    /// Serialize to a compact byte string (little-endian u64 words, first word = algorithm tag).
    /// Used by stores that keep state as bytes (proxy-wasm shared data).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut words: Vec<u64> = Vec::new();
        match self {
            CellState::FixedWindow(s) => words.extend([1, s.window, s.count]),
            CellState::SlidingWindow(s) => {
                words.push(2);
                words.extend(s.log.iter().copied());
            }
            CellState::SlidingWindowCounter(s) => words.extend([3, s.window, s.prev, s.curr]),
            CellState::TokenBucket(s) => {
                words.extend([4, u64::from(s.started), s.tokens, s.last, s.rem])
            }
            CellState::Gcra(s) => words.extend([5, s.tat]),
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Inverse of [`CellState::to_bytes`]; `None` for bytes it did not produce.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(8) || bytes.is_empty() {
            return None;
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        match (words[0], &words[1..]) {
            (1, [window, count]) => Some(CellState::FixedWindow(fixed_window::State {
                window: *window,
                count: *count,
            })),
            (2, log) => {
                if log.windows(2).any(|w| w[0] > w[1]) {
                    return None;
                }
                Some(CellState::SlidingWindow(sliding_window::State {
                    log: log.iter().copied().collect(),
                }))
            }
            (3, [window, prev, curr]) => Some(CellState::SlidingWindowCounter(
                sliding_window_counter::State {
                    window: *window,
                    prev: *prev,
                    curr: *curr,
                },
            )),
            (4, [started, tokens, last, rem]) => {
                Some(CellState::TokenBucket(token_bucket::State {
                    started: *started != 0,
                    tokens: *tokens,
                    last: *last,
                    rem: *rem,
                }))
            }
            (5, [tat]) => Some(CellState::Gcra(gcra::State { tat: *tat })),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let limit = Limit::new(5, 1).unwrap();
        for alg in Algorithm::ALL {
            let mut s = alg.fresh_state();
            s.commit(1_000_000, 2, &limit);
            let back = CellState::from_bytes(&s.to_bytes()).unwrap();
            assert_eq!(back, s, "{alg:?}");
        }
        assert!(CellState::from_bytes(&[1, 2, 3]).is_none());
        assert!(CellState::from_bytes(&[9u8; 16]).is_none());
    }

    #[test]
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name(" GCRA "), Some(Algorithm::Gcra));
        assert_eq!(Algorithm::from_name("leaky"), None);
    }
}
