//! Usage: the share of a limit a cell has consumed, for eviction ("forget the least usage").
//!
//! A bounded store that must drop a live cell should drop the one closest to fresh: a fresh
//! cell and an absent one decide alike, so forgetting it changes nothing, and forgetting a cell
//! at its limit turns a denial into an admission. With `r` the units a cost-0 peek reports left
//! now (every algorithm defines it, see [`super`]) and `L` the limit,
//!
//! ```text
//! used  = L - r                       (0 ..= L units; 0 = fresh)
//! usage = floor(used 2^32 / L)        (0 = fresh ..= 2^32 = at the limit: it denies cost 1)
//! ```
//!
//! `used < 2^32` (counts are at most `u32::MAX`), so the product fits a `u64`. The floor keeps
//! the order of the exact fractions (never inverts two of them) and keeps the two ends exact:
//! `usage = 0` iff nothing is counted, `usage = 2^32` iff the cell denies a cost of 1 (for
//! `used < L`, `used 2^32 / L < 2^32`). Hence a cell that denies ranks above every cell that
//! does not, whatever their limits, and evicting the lowest-ranked cell of a sample never
//! forgets a denial while a cell with room is in the sample.
//!
//! For `gcra` and `token_bucket`, `used` is the debt still to drain (`ceil((tat - now) / T)`
//! units, or `L - tokens`); for the windows, the units counted in the current window (the sliding
//! log: live entries; the sliding counter: `k + ceil(p (W - e) / W)`). It only falls as time
//! passes, until the cell expires ([`super::CellState::expires_at`]) at 0.

use crate::clock::Micros;
use crate::config::rate::Limit;

use super::CellState;

/// The share of its limit a cell has consumed, in units of `2^-32` (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usage(u64);

impl Usage {
    /// Nothing counted: the same as an absent cell.
    pub const FRESH: Usage = Usage(0);
    /// At the limit: denies a request of cost 1.
    pub const FULL: Usage = Usage(1 << 32);

    /// `used` units of a limit of `count` (`count >= 1`; `used` is capped at `count`).
    #[inline]
    pub fn of(used: u64, count: u64) -> Usage {
        let count = count.max(1);
        Usage((used.min(count) << 32) / count)
    }

    /// The raw fixed-point value (`0 ..= 2^32`).
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl CellState {
    /// The share of `limit` this state has consumed at `now` (see [`Usage`]). Not on the hot
    /// path: stores call it on eviction candidates only.
    pub fn usage(&self, now: Micros, limit: &Limit) -> Usage {
        let l = limit.count();
        Usage::of(l.saturating_sub(self.peek(now, 0, limit).remaining), l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;

    const T0: Micros = 1_800_000_000_000_000; // a minute boundary

    #[test]
    fn fresh_partial_and_full_for_every_algorithm() {
        let limit = Limit::new(10, 60).unwrap();
        for alg in Algorithm::ALL {
            let mut s = alg.fresh_state();
            assert_eq!(s.usage(T0, &limit), Usage::FRESH, "{alg:?}");
            s.commit(T0, 1, &limit);
            let one = s.usage(T0, &limit);
            assert_eq!(one, Usage::of(1, 10), "{alg:?}");
            s.commit(T0, 9, &limit);
            assert_eq!(s.usage(T0, &limit), Usage::FULL, "{alg:?}");
            assert!(!s.peek(T0, 1, &limit).allowed, "{alg:?}");
            // Expired: fresh again.
            let later = s.expires_at(&limit).max(T0) + 60_000_000;
            assert_eq!(s.usage(later, &limit), Usage::FRESH, "{alg:?}");
        }
    }

    #[test]
    fn a_full_cell_outranks_any_cell_with_room_whatever_the_limits() {
        assert!(Usage::of(u32::MAX as u64 - 1, u32::MAX as u64) < Usage::FULL);
        assert!(Usage::of(1, 2) < Usage::of(2, 2));
        assert_eq!(Usage::of(5, 5), Usage::FULL);
        assert_eq!(Usage::of(0, u32::MAX as u64), Usage::FRESH);
        assert!(Usage::of(1, u32::MAX as u64) < Usage::of(1, 1_000));
        assert_eq!(Usage::of(7, 5), Usage::FULL, "capped at the limit");
    }
}
