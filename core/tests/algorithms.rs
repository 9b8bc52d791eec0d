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
        let w = if alg.needs_product_bound() {
            86_400
        } else {
            366 * 86_400
        };
        let c = if alg.needs_product_bound() {
            100_000
        } else {
            1_000_000
        };
        let l = Limit::new(c, w).unwrap();
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
