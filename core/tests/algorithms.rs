//! Every algorithm against a small, independent reference model on a manual clock (proptest over
//! random request/time sequences), plus generic properties every algorithm must satisfy:
//! `retry_at` is exact (denied just before, admitted at), `remaining` is exact, and an expired
//! state behaves like a fresh one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use ratewall_core::algorithm::{Algorithm, CellState};
use ratewall_core::config::rate::Limit;

const T0: u64 = 1_700_000_000_000_000; // µs

/// Reference models: deliberately different formulations from the implementations.
enum Model {
    Fixed(Vec<(u64, u64)>),
    Log(Vec<(u64, u64)>),
    Counter(Vec<(u64, u64)>),
    /// Tokens scaled by W (so refill of `d` µs adds exactly `d * L`), capacity `L * W`.
    Bucket {
        scaled: u128,
        last: u64,
    },
    /// GCRA == bucket earning 1 unit per µs, capacity `L * T`, a request costs `c * T`.
    Gcra {
        units: u128,
        last: u64,
    },
}

impl Model {
    fn new(alg: Algorithm, l: &Limit) -> Self {
        let t = l.window_micros().div_ceil(l.count());
        match alg {
            Algorithm::FixedWindow => Model::Fixed(vec![]),
            Algorithm::SlidingWindow => Model::Log(vec![]),
            Algorithm::SlidingWindowCounter => Model::Counter(vec![]),
            Algorithm::TokenBucket => Model::Bucket {
                scaled: u128::from(l.count()) * u128::from(l.window_micros()),
                last: 0,
            },
            Algorithm::Gcra => Model::Gcra {
                units: u128::from(l.count() * t),
                last: 0,
            },
        }
    }

    fn admit(&mut self, now: u64, c: u64, l: &Limit) -> bool {
        let w = l.window_micros();
        let lim = l.count();
        match self {
            Model::Fixed(h) => {
                let used: u64 = h
                    .iter()
                    .filter(|(t, _)| t / w == now / w)
                    .map(|x| x.1)
                    .sum();
                let ok = used + c <= lim;
                if ok {
                    h.push((now, c));
                }
                ok
            }
            Model::Log(h) => {
                let used: u64 = h.iter().filter(|(t, _)| t + w > now).map(|x| x.1).sum();
                let ok = used + c <= lim;
                if ok {
                    h.push((now, c));
                }
                ok
            }
            Model::Counter(h) => {
                let i = now / w;
                let e = now - i * w;
                let k: u64 = h.iter().filter(|(t, _)| t / w == i).map(|x| x.1).sum();
                let p: u64 = h.iter().filter(|(t, _)| t / w + 1 == i).map(|x| x.1).sum();
                // p * (W - e) / W + k + c <= L, in rationals.
                let ok = u128::from(p) * u128::from(w - e) + u128::from(k + c) * u128::from(w)
                    <= u128::from(lim) * u128::from(w);
                if ok {
                    h.push((now, c));
                }
                ok
            }
            Model::Bucket { scaled, last } => {
                let cap = u128::from(lim) * u128::from(w);
                if *last != 0 {
                    let d = u128::from(now - *last);
                    *scaled = (*scaled + d * u128::from(lim)).min(cap);
                }
                *last = now;
                let need = u128::from(c) * u128::from(w);
                let ok = *scaled >= need;
                if ok {
                    *scaled -= need;
                }
                ok
            }
            Model::Gcra { units, last } => {
                let t = u128::from(w.div_ceil(lim));
                let cap = u128::from(lim) * t;
                if *last != 0 {
                    *units = (*units + u128::from(now - *last)).min(cap);
                }
                *last = now;
                let need = u128::from(c) * t;
                let ok = *units >= need;
                if ok {
                    *units -= need;
                }
                ok
            }
        }
    }
}

fn limit_strategy() -> impl Strategy<Value = Limit> {
    (1u64..=12, prop_oneof![Just(1u64), Just(2), Just(60)])
        .prop_map(|(c, w)| Limit::new(c, w).unwrap())
}

/// (gap in µs, cost) steps; gaps are biased to land around window edges.
fn steps_strategy() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![
                0u64..1_000,
                0u64..200_000,
                Just(1_000_000),
                Just(999_999),
                0u64..3_000_000
            ],
            prop_oneof![4 => Just(1u64), 1 => 1u64..=4, 1 => 10u64..=15],
        ),
        1..80,
    )
}

fn run_against_model(alg: Algorithm, limit: Limit, start: u64, steps: &[(u64, u64)]) {
    let mut state = alg.fresh_state();
    let mut model = Model::new(alg, &limit);
    let mut now = T0 + start;
    for (i, (gap, cost)) in steps.iter().enumerate() {
        now += gap;
        let o = state.peek(now, *cost, &limit);
        let expect = model.admit(now, *cost, &limit);
        assert_eq!(
            o.allowed,
            expect,
            "{alg:?} {limit} step {i} at +{} cost {cost}: impl {} model {}",
            now - T0,
            o.allowed,
            expect
        );
        if o.allowed {
            state.commit(now, *cost, &limit);
        }
        check_generic(&state, now, *cost, &limit);
    }
}

/// Properties that hold for every algorithm at every reachable state.
fn check_generic(state: &CellState, now: u64, cost: u64, limit: &Limit) {
    let o = state.peek(now, cost, limit);
    // remaining is exact: `remaining` more units fit now, one more does not.
    // `remaining` of an admitted request is what is left after it; of a denied one, what is left now.
    let o1 = state.peek(now, 1, limit);
    let probe_rem = if o1.allowed {
        o1.remaining + 1
    } else {
        o1.remaining
    };
    if probe_rem > 0 {
        assert!(
            state.peek(now, probe_rem, limit).allowed,
            "remaining {probe_rem} must fit"
        );
    }
    assert!(
        !state.peek(now, probe_rem + 1, limit).allowed,
        "remaining+1 must not fit ({probe_rem}) in {state:?} at {now}"
    );
    if !o.allowed {
        match o.retry_at {
            None => assert!(cost > limit.count()),
            Some(r) => {
                assert!(r > now, "retry_at in the future");
                assert!(
                    !state.peek(r - 1, cost, limit).allowed,
                    "retry_at - 1 µs must still deny"
                );
                assert!(state.peek(r, cost, limit).allowed, "retry_at must admit");
            }
        }
    }
    // reset_at: full quota restored.
    let reset = state.peek(now, 1, limit).reset_at.max(o.reset_at);
    let full = state.peek(reset.max(now), limit.count(), limit);
    assert!(full.allowed, "at reset_at the whole limit must fit");
    // An expired state is a fresh state.
    let exp = state.expires_at(limit).max(now);
    let fresh = state.algorithm().fresh_state();
    for c in [1, limit.count()] {
        for t in [exp, exp + 1, exp + limit.window_micros()] {
            assert_eq!(
                state.peek(t, c, limit).allowed,
                fresh.peek(t, c, limit).allowed,
                "expired state must decide like a fresh one"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn fixed_window_matches_model(limit in limit_strategy(), start in 0u64..2_000_000, steps in steps_strategy()) {
        run_against_model(Algorithm::FixedWindow, limit, start, &steps);
    }

    #[test]
    fn sliding_window_matches_model(limit in limit_strategy(), start in 0u64..2_000_000, steps in steps_strategy()) {
        run_against_model(Algorithm::SlidingWindow, limit, start, &steps);
    }

    #[test]
    fn sliding_window_counter_matches_model(limit in limit_strategy(), start in 0u64..2_000_000, steps in steps_strategy()) {
        run_against_model(Algorithm::SlidingWindowCounter, limit, start, &steps);
    }

    #[test]
    fn token_bucket_matches_model(limit in limit_strategy(), start in 0u64..2_000_000, steps in steps_strategy()) {
        run_against_model(Algorithm::TokenBucket, limit, start, &steps);
    }

    #[test]
    fn gcra_matches_model(limit in limit_strategy(), start in 0u64..2_000_000, steps in steps_strategy()) {
        run_against_model(Algorithm::Gcra, limit, start, &steps);
    }
}

#[test]
fn fixed_window_is_epoch_aligned() {
    let l = Limit::new(2, 60).unwrap();
    let mut s = Algorithm::FixedWindow.fresh_state();
    let base = 1_700_000_070_000_000; // 30 s into a minute
    for _ in 0..2 {
        assert!(s.peek(base, 1, &l).allowed);
        s.commit(base, 1, &l);
    }
    let denied = s.peek(base, 1, &l);
    assert!(!denied.allowed);
    assert_eq!(denied.retry_at, Some(1_700_000_100_000_000));
    assert!(s.peek(1_700_000_100_000_000, 1, &l).allowed);
}

#[test]
fn sub_second_precision_two_per_second_across_a_boundary() {
    // The peer admitted 4 within 0.12 s across a second boundary (B-2); we admit 2.
    for alg in [
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::Gcra,
    ] {
        let l = Limit::new(2, 1).unwrap();
        let mut s = alg.fresh_state();
        let mut admitted = 0;
        for t in [T0 + 940_000, T0 + 960_000, T0 + 1_000_010, T0 + 1_060_000] {
            if s.peek(t, 1, &l).allowed {
                s.commit(t, 1, &l);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "{alg:?}");
    }
}

#[test]
fn token_bucket_never_loses_refill_on_hot_keys() {
    // 5/s bucket hammered every 10 µs over [0, 2 s): the burst of 5 plus one token every 200 ms
    // (at 200, 400, ..., 1800 ms) = 14. The peer admitted 6 in the same loop (B-5).
    let l = Limit::new(5, 1).unwrap();
    let mut s = Algorithm::TokenBucket.fresh_state();
    let mut admitted = 0;
    let mut t = T0;
    while t < T0 + 2_000_000 {
        if s.peek(t, 1, &l).allowed {
            s.commit(t, 1, &l);
            admitted += 1;
        }
        t += 10;
    }
    assert_eq!(admitted, 14);
}

#[test]
fn cost_above_limit_is_never_retryable() {
    for alg in Algorithm::ALL {
        let l = Limit::new(3, 1).unwrap();
        let o = alg.fresh_state().peek(T0, 4, &l);
        assert!(!o.allowed, "{alg:?}");
        assert_eq!(o.retry_at, None, "{alg:?}");
    }
}

#[test]
fn a_cost_that_overflows_the_arithmetic_is_still_denied() {
    // 1/366d: GCRA's T = 3.16e13 µs; cost 583,345 would wrap `cost * T` below tau in u64.
    for alg in Algorithm::ALL {
        let l = Limit::new(1, 366 * 86_400).unwrap();
        for cost in [583_345, 1_000_000, u64::MAX / 2] {
            let o = alg.fresh_state().peek(T0, cost, &l);
            assert!(!o.allowed, "{alg:?} cost {cost}");
            assert_eq!(o.retry_at, None, "{alg:?} cost {cost}");
        }
    }
}

#[test]
fn huge_counts_and_windows_do_not_overflow() {
    for alg in Algorithm::ALL {
        // The largest limit each algorithm accepts.
        let w = 366 * 86_400;
        let c = if alg == Algorithm::SlidingWindow {
            ratewall_core::algorithm::SLIDING_LOG_MAX_COUNT
        } else {
            ratewall_core::config::rate::MAX_COUNT
        };
        let l = Limit::new(c, w).unwrap();
        alg.check_limit(&l).unwrap();
        let mut s = alg.fresh_state();
        let now = 4_000_000_000_000_000; // year 2096
        let o = s.peek(now, 1_000_000, &l);
        if o.allowed {
            s.commit(now, 1_000_000, &l);
        }
        let o = s.peek(now + 1, c, &l);
        assert!(o.reset_at >= now, "{alg:?}");
    }
}

#[test]
fn sliding_window_state_is_bounded_by_limit() {
    let l = Limit::new(50, 1).unwrap();
    let mut s = Algorithm::SlidingWindow.fresh_state();
    for i in 0..10_000u64 {
        let t = T0 + i * 7_000;
        if s.peek(t, 1, &l).allowed {
            s.commit(t, 1, &l);
        }
        if let CellState::SlidingWindow(st) = &s {
            assert!(st.log.len() <= 50);
        }
    }
}

#[test]
fn clock_stepping_backwards_never_panics_or_over_admits() {
    for alg in Algorithm::ALL {
        let l = Limit::new(3, 1).unwrap();
        let mut s = alg.fresh_state();
        let mut admitted = 0;
        for t in [
            T0 + 500_000,
            T0 + 100,
            T0 + 400_000,
            T0,
            T0 + 200_000,
            T0 + 1,
        ] {
            if s.peek(t, 1, &l).allowed {
                s.commit(t, 1, &l);
                admitted += 1;
            }
        }
        assert!(admitted <= 3, "{alg:?} admitted {admitted}");
    }
}

/// Production-size limits: counts up to `u32::MAX`, windows up to 366 days (as accepted by
/// `Algorithm::check_limit`), near the window edges and with costs up to and past the limit.
fn extreme_limit(alg: Algorithm) -> impl Strategy<Value = Limit> {
    let count = prop_oneof![
        Just(1u64),
        Just(2),
        Just(7),
        Just(999_983),
        Just(1_000_000),
        Just(1 << 31),
        Just(u64::from(u32::MAX) - 1),
        Just(u64::from(u32::MAX)),
        1u64..=u64::from(u32::MAX),
    ];
    let window = prop_oneof![
        Just(1u64),
        Just(59),
        Just(86_400),
        Just(7 * 86_400),
        Just(30 * 86_400),
        Just(365 * 86_400),
        Just(366 * 86_400),
        1u64..=366 * 86_400,
    ];
    (count, window).prop_filter_map("accepted by the algorithm", move |(c, w)| {
        let c = if alg == Algorithm::SlidingWindow {
            c.min(ratewall_core::algorithm::SLIDING_LOG_MAX_COUNT)
        } else {
            c
        };
        let l = Limit::new(c, w).ok()?;
        alg.check_limit(&l).ok().map(|()| l)
    })
}

/// (gap, cost) steps scaled to the limit: gaps around the window and its edges, costs from 1 to
/// past the limit (the sliding log's costs stay small: it stores one entry per unit).
fn extreme_steps(alg: Algorithm, l: Limit) -> impl Strategy<Value = Vec<(u64, u64)>> {
    let w = l.window_micros();
    let c = l.count();
    let max_cost = if alg == Algorithm::SlidingWindow {
        c.min(2_000)
    } else {
        c
    };
    prop::collection::vec(
        (
            prop_oneof![
                Just(0u64),
                0u64..1_000,
                0..=w / 3,
                Just(w - 1),
                Just(w),
                Just(w + 1),
                0..=2 * w,
            ],
            prop_oneof![
                Just(1u64),
                1..=max_cost,
                Just(max_cost),
                Just(c / 2 + 1),
                Just(c + 1),
            ],
        ),
        1..40,
    )
}

fn extreme_case(alg: Algorithm) -> impl Strategy<Value = (Limit, u64, Vec<(u64, u64)>)> {
    extreme_limit(alg).prop_flat_map(move |l| {
        // Instants up to 2^52 µs (the year 2112), where doubles are still exact.
        (Just(l), 0u64..(1 << 52) - T0, extreme_steps(alg, l))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn fixed_window_exact_at_the_extremes((limit, start, steps) in extreme_case(Algorithm::FixedWindow)) {
        run_against_model(Algorithm::FixedWindow, limit, start, &steps);
    }

    #[test]
    fn sliding_window_exact_at_the_extremes((limit, start, steps) in extreme_case(Algorithm::SlidingWindow)) {
        run_against_model(Algorithm::SlidingWindow, limit, start, &steps);
    }

    #[test]
    fn sliding_window_counter_exact_at_the_extremes((limit, start, steps) in extreme_case(Algorithm::SlidingWindowCounter)) {
        run_against_model(Algorithm::SlidingWindowCounter, limit, start, &steps);
    }

    #[test]
    fn token_bucket_exact_at_the_extremes((limit, start, steps) in extreme_case(Algorithm::TokenBucket)) {
        run_against_model(Algorithm::TokenBucket, limit, start, &steps);
    }

    #[test]
    fn gcra_exact_at_the_extremes((limit, start, steps) in extreme_case(Algorithm::Gcra)) {
        run_against_model(Algorithm::Gcra, limit, start, &steps);
    }
}

/// Every value an algorithm returns or stores stays below 2^53 at the extremes (the Lua script's
/// doubles represent it exactly).
#[test]
fn every_value_stays_below_2_pow_53() {
    use ratewall_core::algorithm::MAX_EXACT;
    let now = (1u64 << 52) + 12_345;
    for alg in Algorithm::ALL {
        for (c, w) in [
            (u64::from(u32::MAX), 366 * 86_400),
            (u64::from(u32::MAX), 1),
            (1, 366 * 86_400),
            (999_983, 7 * 86_400),
        ] {
            let c = if alg == Algorithm::SlidingWindow {
                c.min(1_000)
            } else {
                c
            };
            let l = Limit::new(c, w).unwrap();
            if alg.check_limit(&l).is_err() {
                continue;
            }
            let mut s = alg.fresh_state();
            let mut t = now;
            for step in 0..50u64 {
                t += [0, 1, l.window_micros() / 3, l.window_micros() - 1][(step % 4) as usize];
                for cost in [1, c / 3 + 1, c, c + 1] {
                    let o = s.peek(t, cost, &l);
                    for v in [o.remaining, o.reset_at, o.retry_at.unwrap_or(0)] {
                        assert!(v < MAX_EXACT, "{alg:?} {l} cost {cost}: {o:?}");
                    }
                }
                if s.peek(t, c / 3 + 1, &l).allowed {
                    s.commit(t, c / 3 + 1, &l);
                }
                let words = s.to_bytes();
                for w in words.chunks_exact(8) {
                    let v = u64::from_le_bytes(w.try_into().unwrap());
                    assert!(v < MAX_EXACT, "{alg:?} {l}: state {s:?}");
                }
            }
        }
    }
}
