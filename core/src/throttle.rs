//! Log throttling for per-request failure lines: at most one line per interval, each carrying the
//! number of events suppressed since the previous line.
//!
//! Sans-I/O: the caller passes "now" (µs on any clock that does not go backwards; a backwards step
//! of more than one interval re-opens the gate rather than silencing it). Used by the Redis store,
//! the check service's fail-mode paths and the wasm filter, so every front end keeps the same
//! promise during an outage: one line per second, with a count.
//!
//! Invariant: every call to [`LogThrottle::permit`] is either the permitted line itself or counted
//! exactly once in the `suppressed` figure of a later permitted line (or still pending, see
//! [`LogThrottle::pending`]); concurrent callers never lose or double-count an event.
//!
//! ```
//! use ratewall_core::throttle::LogThrottle;
//! let t = LogThrottle::per_second();
//! assert_eq!(t.permit(5_000_000), Some(0)); // the first event is logged
//! assert_eq!(t.permit(5_400_000), None); // within the second: suppressed
//! assert_eq!(t.permit(5_900_000), None);
//! assert_eq!(t.permit(6_000_000), Some(2)); // next line reports the 2 suppressed
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Micros;

/// At most one permitted event per `interval` µs; counts the others.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Micros,
    /// Earliest instant (µs) of the next permitted event; 0 = at once.
    next: AtomicU64,
    /// Events suppressed since the last permitted one.
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// One second: the documented bound for every per-request failure log.
    pub const SECOND: Micros = 1_000_000;

    /// A throttle permitting one event per `interval_micros` (at least 1 µs).
    pub const fn new(interval_micros: Micros) -> Self {
        Self {
            interval: if interval_micros == 0 {
                1
            } else {
                interval_micros
            },
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// A throttle permitting one event per second (`const`: usable in a `static`).
    pub const fn per_second() -> Self {
        Self::new(Self::SECOND)
    }

    /// Record one event at `now`: `Some(suppressed since the last permitted event)` if it may be
    /// logged, `None` if it is suppressed (and counted).
    pub fn permit(&self, now: Micros) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        // `now + interval < next`: the clock stepped back by more than an interval.
        let open = now >= next || now.saturating_add(self.interval) < next;
        if open
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Events suppressed since the last permitted one (not yet reported).
    pub fn pending(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::per_second()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_the_count() {
        let t = LogThrottle::per_second();
        assert_eq!(t.permit(0), Some(0));
        for i in 1..1_000 {
            assert_eq!(t.permit(i * 999), None, "{i}");
        }
        assert_eq!(t.pending(), 999);
        assert_eq!(t.permit(1_000_000), Some(999));
        assert_eq!(t.pending(), 0);
        assert_eq!(t.permit(1_999_999), None);
        assert_eq!(t.permit(2_000_000), Some(1));
    }

    #[test]
    fn a_flood_over_three_seconds_gives_at_most_four_lines_and_counts_every_event() {
        let t = LogThrottle::per_second();
        let (mut lines, mut reported) = (0u64, 0u64);
        let events = 4_316u64;
        for i in 0..events {
            // spread over [0, 3 s)
            if let Some(s) = t.permit(i * 3_000_000 / events) {
                lines += 1;
                reported += s;
            }
        }
        assert_eq!(lines, 3);
        assert_eq!(lines + reported + t.pending(), events);
    }

    #[test]
    fn a_backwards_step_reopens_instead_of_silencing() {
        let t = LogThrottle::per_second();
        assert_eq!(t.permit(100_000_000), Some(0));
        assert_eq!(t.permit(100_500_000), None);
        // 50 s back: logging resumes at once, not in 50 s
        assert_eq!(t.permit(50_000_000), Some(1));
        assert_eq!(t.permit(50_100_000), None);
    }

    #[test]
    fn zero_interval_is_one_microsecond() {
        let t = LogThrottle::new(0);
        assert_eq!(t.permit(7), Some(0));
        assert_eq!(t.permit(7), None);
        assert_eq!(t.permit(8), Some(1));
    }

    #[test]
    fn concurrent_callers_lose_no_event() {
        let t = std::sync::Arc::new(LogThrottle::per_second());
        let threads: Vec<_> = (0..4)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut got = (0u64, 0u64);
                    for i in 0..10_000u64 {
                        if let Some(s) = t.permit((i + k) * 1_000) {
                            got.0 += 1;
                            got.1 += s;
                        }
                    }
                    got
                })
            })
            .collect();
        let (mut lines, mut reported) = (0, 0);
        for h in threads {
            let (l, r) = h.join().expect("thread");
            lines += l;
            reported += r;
        }
        assert!(lines >= 10, "{lines}");
        assert_eq!(lines + reported + t.pending(), 40_000);
    }
}
