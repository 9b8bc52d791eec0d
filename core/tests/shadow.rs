//! Shadow cells and per-cell cost: a shadow cell never denies, is counted as if it were enforced
//! (and so is never charged past its limit), the headers describe the enforced cells, global
//! `shadow_mode` reports the would-be decision, and a cell of cost 0 is checked without consuming.
//! The memory store and `apply_batch` (the Envoy filter's batch) agree on random sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use ratewall_core::algorithm::CellState;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::{HeaderFormat, LimiterConfig, Plan, RequestContext};
use ratewall_core::decision::Decision;
use ratewall_core::headers;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::{apply_batch, Store};
use ratewall_core::{Algorithm, DenyReason};

const T0: u64 = 1_700_000_000_000_000;

fn config(json: &str) -> LimiterConfig {
    LimiterConfig::from_json_str(json, &[]).unwrap().0
}

fn store(clock: &Arc<ManualClock>) -> MemoryStore {
    MemoryStore::new(10_000, clock.clone())
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0 * 1_000))
}

fn plan(cfg: &LimiterConfig, user: &str, key: Option<&str>) -> Plan {
    let descriptors: Vec<(&str, &str)> = key.map(|k| ("key", k)).into_iter().collect();
    cfg.policy
        .plan(&RequestContext {
            user: Some(user),
            descriptors: &descriptors,
            ..Default::default()
        })
        .unwrap()
}

fn header<'a>(h: &'a headers::Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

fn with_shadow_limit(alg: Algorithm, user: &str, shadow: &str) -> LimiterConfig {
    config(&format!(
        r#"{{"algorithm": "{}", "by_user": "{user}", "limits": [{{"name": "api", "descriptors": ["key"], "rate": "{shadow}", "shadow_mode": true}}]}}"#,
        alg.name()
    ))
}

#[test]
fn a_shadow_limit_never_denies_and_the_enforced_ones_still_count() {
    let cfg = with_shadow_limit(Algorithm::FixedWindow, "10/m", "2/m");
    let clock = clock();
    let s = store(&clock);
    let p = plan(&cfg, "alice", Some("k1"));
    assert_eq!(
        p.cells.iter().map(|c| c.shadow).collect::<Vec<_>>(),
        [false, true]
    );
    for i in 0..5u64 {
        let d = s.check(&p).unwrap();
        assert!(d.allowed, "request {i}: {d:?}");
        assert_eq!(d.reason, None);
        assert_eq!(d.shadow_denied, i >= 2, "request {i}");
        assert_eq!(d.dimensions[1].outcome.allowed, i < 2, "request {i}");
        assert!(d.dimensions[1].shadow && !d.dimensions[0].shadow);
        // The enforced cell is charged for every admitted request, shadow denial or not.
        assert_eq!(d.dimensions[0].outcome.remaining, 9 - i);
        // The shadow cell never goes below its limit: it is not charged when it would deny.
        assert_eq!(d.dimensions[1].outcome.remaining, 1u64.saturating_sub(i));
    }
}

/// For itself, a shadow cell behaves exactly as if it were enforced: its outcomes are those of the
/// same limit enforced alone, on the same request sequence (every algorithm, random times).
#[test]
fn a_shadow_cell_counts_exactly_like_the_enforced_limit() {
    for alg in Algorithm::ALL {
        let shadowed = with_shadow_limit(alg, "1000/s", "3/2s");
        let alone = config(&format!(
            r#"{{"algorithm": "{}", "limits": [{{"name": "api", "descriptors": ["key"], "rate": "3/2s"}}]}}"#,
            alg.name()
        ));
        let clock = clock();
        let (a, b) = (store(&clock), store(&clock));
        let mut t = T0;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut shadow_denials = 0;
        for step in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += [0, 1_000, 90_000, 400_000, 1_300_000][(x % 5) as usize];
            clock.set_nanos(t * 1_000);
            let d = a.check(&plan(&shadowed, "alice", Some("k"))).unwrap();
            let e = b.check(&plan(&alone, "alice", Some("k"))).unwrap();
            assert!(d.allowed, "{alg:?} step {step}");
            assert_eq!(
                d.dimensions[1].outcome, e.dimensions[0].outcome,
                "{alg:?} step {step}"
            );
            assert_eq!(d.shadow_denied, !e.allowed, "{alg:?} step {step}");
            shadow_denials += usize::from(d.shadow_denied);
        }
        assert!(shadow_denials > 20, "{alg:?}: {shadow_denials}");
    }
}

#[test]
fn headers_describe_the_enforced_cells_only() {
    let cfg = with_shadow_limit(Algorithm::Gcra, "10/m", "1/m");
    let clock = clock();
    let s = store(&clock);
    let p = plan(&cfg, "alice", Some("k1"));
    s.check(&p).unwrap();
    let d = s.check(&p).unwrap();
    assert!(d.allowed && d.shadow_denied, "{d:?}");
    assert_eq!(d.reported, Some(0), "the enforced user cell");
    assert_eq!(d.retry_after_secs, None);
    let h = headers::render(&d, HeaderFormat::Both);
    assert_eq!(header(&h, "X-RateLimit-Limit"), Some("10"));
    assert_eq!(header(&h, "X-RateLimit-Remaining"), Some("8"));
    assert_eq!(
        header(&h, "RateLimit-Policy"),
        Some("\"by_user\";q=10;w=60")
    );
    assert_eq!(header(&h, "Retry-After"), None);
}

#[test]
fn global_shadow_mode_reports_the_would_be_denial_without_retry_after() {
    let cfg = config(r#"{"shadow_mode": true, "by_user": "2/m", "by_tenant": "100/m"}"#);
    assert!(cfg.policy.shadow_mode());
    let clock = clock();
    let s = store(&clock);
    let p = cfg
        .policy
        .plan(&RequestContext {
            user: Some("alice"),
            tenant: Some("acme"),
            ..Default::default()
        })
        .unwrap();
    assert!(p.cells.iter().all(|c| c.shadow));
    let first = s.check(&p).unwrap();
    assert!(first.allowed && !first.shadow_denied);
    assert_eq!(first.reported, Some(0), "fewest remaining among all cells");
    s.check(&p).unwrap();
    for _ in 0..3 {
        let d = s.check(&p).unwrap();
        assert!(d.allowed && d.shadow_denied && d.reason.is_none(), "{d:?}");
        assert_eq!(d.reported, Some(0), "the would-be denying cell");
        assert_eq!(d.retry_after_secs, None);
        let h = headers::render(&d, HeaderFormat::Both);
        assert_eq!(header(&h, "X-RateLimit-Limit"), Some("2"));
        assert_eq!(header(&h, "X-RateLimit-Remaining"), Some("0"));
        // The window ends at the next minute boundary after T0.
        let reset = (T0 / 60_000_000 + 1) * 60;
        assert_eq!(header(&h, "X-RateLimit-Reset"), Some(&*reset.to_string()));
        assert_eq!(
            header(&h, "RateLimit-Policy"),
            Some("\"by_user\";q=2;w=60, \"by_tenant\";q=100;w=60")
        );
        assert_eq!(header(&h, "Retry-After"), None);
        // The tenant keeps counting every admitted request; the user cell stops at its limit.
        assert_eq!(d.dimensions[0].outcome.remaining, 0);
    }
    let d = s.check(&p).unwrap();
    assert_eq!(d.dimensions[1].outcome.remaining, 100 - 6);
}

#[test]
fn an_enforced_denial_consumes_nowhere_not_even_in_shadow_cells() {
    let cfg = with_shadow_limit(Algorithm::SlidingWindow, "1/m", "5/m");
    let clock = clock();
    let s = store(&clock);
    let p = plan(&cfg, "alice", Some("k1"));
    assert!(s.check(&p).unwrap().allowed);
    for _ in 0..3 {
        let d = s.check(&p).unwrap();
        assert!(!d.allowed && !d.shadow_denied);
        assert_eq!(d.reason, Some(DenyReason::Limited));
        assert_eq!(d.reported, Some(0));
        assert_eq!(
            d.dimensions[1].outcome.remaining, 3,
            "peek after 1 of 5: {d:?}"
        );
    }
    let mut check = p.clone();
    check.cells.iter_mut().for_each(|c| c.cost = 0);
    let d = s.check(&check).unwrap();
    assert!(d.allowed, "cost 0 never denies within the limit");
    assert_eq!(
        d.dimensions[1].outcome.remaining, 4,
        "only the admitted request counted"
    );
}

/// A shadow cell that would deny while an enforced one denies too: the request is denied by the
/// enforced cell, and only the enforced denial decides Retry-After.
#[test]
fn retry_after_comes_from_the_enforced_denials() {
    let cfg = with_shadow_limit(Algorithm::FixedWindow, "1/s", "1/h");
    let clock = clock();
    let s = store(&clock);
    let p = plan(&cfg, "alice", Some("k1"));
    assert!(s.check(&p).unwrap().allowed);
    let d = s.check(&p).unwrap();
    assert!(!d.allowed && d.shadow_denied);
    assert_eq!(d.reported, Some(0));
    assert_eq!(
        d.retry_after_secs,
        Some(1),
        "the 1/s user cell, not the shadow 1/h one"
    );
}

/// Cost 0: every algorithm admits, reports the units left and the current reset, and consumes
/// nothing (the next costly request sees the state as if the checks never happened).
#[test]
fn cost_zero_checks_without_consuming() {
    for alg in Algorithm::ALL {
        let cfg = config(&format!(
            r#"{{"algorithm": "{}", "by_user": "5/10s"}}"#,
            alg.name()
        ));
        let clock = clock();
        let (a, b) = (store(&clock), store(&clock));
        let p = plan(&cfg, "alice", None);
        let mut zero = p.clone();
        zero.cells[0].cost = 0;
        let fresh = a.check(&zero).unwrap();
        assert!(fresh.allowed, "{alg:?}");
        assert_eq!(fresh.dimensions[0].outcome.remaining, 5, "{alg:?}");
        let mut t = T0;
        for step in 0..60 {
            t += [0, 300_000, 1_100_000, 2_700_000][step % 4];
            clock.set_nanos(t * 1_000);
            let z1 = a.check(&zero).unwrap();
            let z2 = a.check(&zero).unwrap();
            assert_eq!(
                z1, z2,
                "{alg:?} step {step}: a cost-0 check changed the state"
            );
            assert!(z1.allowed && !z1.shadow_denied, "{alg:?} step {step}");
            let da = a.check(&p).unwrap();
            let db = b.check(&p).unwrap();
            assert_eq!(da, db, "{alg:?} step {step}");
            if da.allowed {
                assert_eq!(
                    z1.dimensions[0].outcome.remaining,
                    da.dimensions[0].outcome.remaining + 1,
                    "{alg:?} step {step}: units left now, before the request"
                );
            }
        }
        assert_eq!(a.stats().keys, b.stats().keys, "{alg:?}");
    }
}

/// A cell of cost 0 on a fresh key is not stored.
#[test]
fn cost_zero_does_not_create_state() {
    let cfg = config(r#"{"by_user": "5/m", "by_tenant": "9/m"}"#);
    let clock = clock();
    let s = store(&clock);
    let mut p = cfg
        .policy
        .plan(&RequestContext {
            user: Some("alice"),
            tenant: Some("acme"),
            ..Default::default()
        })
        .unwrap();
    p.cells[1].cost = 0;
    for _ in 0..3 {
        assert!(s.check(&p).unwrap().allowed);
    }
    assert_eq!(s.stats().keys, 1, "only the user cell consumed");
    let other = plan(&cfg, "bob", None);
    let mut other_zero = other.clone();
    other_zero.cells[0].cost = 0;
    assert!(s.check(&other_zero).unwrap().allowed);
    assert_eq!(
        s.stats().keys,
        1,
        "a single-cell cost-0 check stores nothing"
    );
}

/// `apply_batch` over states kept by the caller decides exactly like the memory store.
fn batch_check(states: &mut HashMap<String, CellState>, plan: &Plan, now: u64) -> Decision {
    let loaded: Vec<Option<CellState>> = plan
        .cells
        .iter()
        .map(|c| states.get(&c.key).cloned())
        .collect();
    let (d, new) = apply_batch(plan, now, &loaded);
    if let Some(new) = new {
        for (c, s) in plan.cells.iter().zip(new) {
            states.insert(c.key.clone(), s);
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn apply_batch_agrees_with_the_memory_store(
        alg in 0usize..5,
        one_cell in any::<bool>(),
        steps in proptest::collection::vec(
            (0u64..3_000_000, 0usize..2, proptest::collection::vec((0u64..4, any::<bool>()), 3)),
            1..80,
        ),
    ) {
        let alg = Algorithm::ALL[alg];
        let cfg = config(&format!(
            r#"{{"algorithm": "{}", "by_user": "3/s", "by_tenant": "5/2s", "by_tool": {{"echo": "4/3s"}}}}"#,
            alg.name()
        ));
        let clock = clock();
        let s = store(&clock);
        let mut states = HashMap::new();
        let mut t = T0;
        for (dt, user, cells) in steps {
            t += dt;
            clock.set_nanos(t * 1_000);
            let mut p = cfg.policy.plan(&RequestContext {
                user: Some(["alice", "bob"][user]),
                tenant: Some("acme"),
                tool: Some("echo"),
                ..Default::default()
            }).unwrap();
            if one_cell {
                // The memory store's single-cell path (`Decision::single`).
                p.cells.truncate(1);
            }
            for (c, (cost, shadow)) in p.cells.iter_mut().zip(cells) {
                c.cost = cost;
                c.shadow = shadow;
            }
            let m = s.check(&p).unwrap();
            let b = batch_check(&mut states, &p, t);
            prop_assert_eq!(&m, &b);
            let enforced_ok = m.dimensions.iter().all(|d| d.shadow || d.outcome.allowed);
            prop_assert_eq!(m.allowed, enforced_ok);
            let shadow_no = m.dimensions.iter().any(|d| d.shadow && !d.outcome.allowed);
            prop_assert_eq!(m.shadow_denied, shadow_no);
            if let Some(r) = m.reported() {
                prop_assert!(!r.shadow || m.dimensions.iter().all(|d| d.shadow));
            }
        }
    }
}
