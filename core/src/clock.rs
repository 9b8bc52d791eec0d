//! Time source for every decision.
//!
//! Algorithms never read a clock: the store asks a [`Clock`] for "now" once per request (after it has
//! taken its locks, so concurrent callers never apply an older instant after a newer one) and passes
//! it down. Time is nanoseconds since the Unix epoch; the algorithms work on the microsecond
//! [`Micros`] quantum derived from it (see [`crate::algorithm`]).
//!
//! [`SystemClock`] is *monotonic* and anchored to the wall clock once, at construction: a wall-clock
//! step (NTP, an operator) never stretches or shrinks a window, and header timestamps stay close to
//! wall time. [`ManualClock`] is the test clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Microseconds since the Unix epoch: the time quantum of every algorithm.
pub type Micros = u64;

/// Nanoseconds since the Unix epoch.
pub type Nanos = u64;

/// A source of "now".
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch. Must never go backwards for a store's correctness
    /// guarantees to hold (algorithms clamp, but windows are only exact on a monotonic clock).
    fn now_nanos(&self) -> Nanos;

    /// Microseconds since the Unix epoch (floor of [`Clock::now_nanos`]).
    fn now_micros(&self) -> Micros {
        self.now_nanos() / 1_000
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_nanos(&self) -> Nanos {
        (**self).now_nanos()
    }
}

/// Monotonic clock anchored to wall time once, when created.
///
/// `now = wall_at_creation + monotonic_elapsed`, so it advances at the rate of the monotonic clock
/// and ignores later wall-clock steps.
///
/// With the `memory` feature (native builds) the monotonic source is `quanta` (calibrated TSC,
/// a few ns per read, the clock `governor` uses); otherwise `std::time::Instant`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor_wall: Nanos,
    #[cfg(feature = "memory")]
    mono: quanta::Clock,
    #[cfg(feature = "memory")]
    anchor_mono: quanta::Instant,
    #[cfg(not(feature = "memory"))]
    anchor_mono: std::time::Instant,
}

impl SystemClock {
    /// Anchor a new clock to the current wall time.
    pub fn new() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as Nanos)
            .unwrap_or(0);
        #[cfg(feature = "memory")]
        {
            let mono = quanta::Clock::new();
            let anchor_mono = mono.now();
            Self {
                anchor_wall: wall,
                mono,
                anchor_mono,
            }
        }
        #[cfg(not(feature = "memory"))]
        Self {
            anchor_wall: wall,
            anchor_mono: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> Nanos {
        #[cfg(feature = "memory")]
        let elapsed = self.mono.now().saturating_duration_since(self.anchor_mono);
        #[cfg(not(feature = "memory"))]
        let elapsed = self.anchor_mono.elapsed();
        self.anchor_wall + elapsed.as_nanos() as Nanos
    }
}

/// A clock that only moves when told to: for deterministic tests.
///
/// ```
/// use ratewall_core::clock::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000_000_000);
/// clock.advance_millis(1_500);
/// assert_eq!(clock.now_micros(), 2_500_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `nanos` since the epoch.
    pub fn new(nanos: Nanos) -> Self {
        Self {
            nanos: AtomicU64::new(nanos),
        }
    }

    /// Set the time.
    pub fn set_nanos(&self, nanos: Nanos) {
        self.nanos.store(nanos, Ordering::SeqCst);
    }

    /// Move forward by `nanos`.
    pub fn advance_nanos(&self, nanos: Nanos) {
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// Move forward by `millis`.
    pub fn advance_millis(&self, millis: u64) {
        self.advance_nanos(millis * 1_000_000);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> Nanos {
        self.nanos.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_close_to_wall_time_and_monotonic() {
        let c = SystemClock::new();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let a = c.now_nanos();
        let b = c.now_nanos();
        assert!(b >= a);
        assert!(a.abs_diff(wall) < 1_000_000_000);
    }
}
