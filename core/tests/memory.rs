//! The memory store: exactness under concurrency, all-or-nothing across dimensions, bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::{LimiterConfig, RequestContext};
use ratewall_core::store::memory::{MemoryStats, MemoryStore};
use ratewall_core::store::Store;
use ratewall_core::{Algorithm, DenyReason};

const T0: u64 = 1_700_000_000_123_456_789;

fn config(yaml: &str) -> LimiterConfig {
    LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0
}

fn store(clock: &Arc<ManualClock>) -> MemoryStore {
    MemoryStore::new(100_000, clock.clone())
}

fn ctx<'a>(user: &'a str, tenant: Option<&'a str>, tool: Option<&'a str>) -> RequestContext<'a> {
    RequestContext {
        user: Some(user),
        tenant,
        tool,
        ..Default::default()
    }
}

fn exact_under_threads(threads: usize) {
    for alg in Algorithm::ALL {
        let cfg = config(&format!("{{algorithm: {}, by_user: 1000/m}}", alg.name()));
        let clock = Arc::new(ManualClock::new(T0));
        let s = Arc::new(store(&clock));
        let plan = Arc::new(cfg.policy.plan(&ctx("alice", None, None)).unwrap());
        let admitted = Arc::new(AtomicU64::new(0));
        std::thread::scope(|sc| {
            for _ in 0..threads {
                let (s, plan, admitted) = (s.clone(), plan.clone(), admitted.clone());
                sc.spawn(move || {
                    for _ in 0..3_000 / threads {
                        if s.check(&plan).unwrap().allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000, "{alg:?} x{threads}");
    }
}

#[test]
fn two_threads_on_one_key_admit_exactly_the_limit() {
    exact_under_threads(2);
}

#[test]
fn eight_threads_on_one_key_admit_exactly_the_limit() {
    exact_under_threads(8);
}

#[test]
fn three_dimensions_under_threads_are_exact_and_atomic() {
    // user 300, tenant 500, tool 400: users u0..u3 hammer concurrently; the tenant admits exactly
    // 500 in total and every counter agrees with the admitted total (nothing leaked by denials).
    let cfg = config("{by_user: 300/m, by_tenant: 500/m, by_tool: {echo: 400/m}}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = Arc::new(store(&clock));
    let admitted = Arc::new(AtomicU64::new(0));
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (s, admitted, cfg) = (s.clone(), admitted.clone(), cfg.clone());
            sc.spawn(move || {
                let user = format!("u{t}");
                let plan = cfg
                    .policy
                    .plan(&ctx(&user, Some("acme"), Some("echo")))
                    .unwrap();
                for _ in 0..400 {
                    if s.check(&plan).unwrap().allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        400,
        "the tool limit binds"
    );
    // The tenant budget holds exactly what was admitted: 100 left.
    let other = cfg.policy.plan(&ctx("zed", Some("acme"), None)).unwrap();
    let d = s.check(&other).unwrap();
    assert!(d.allowed);
    let tenant = d
        .dimensions
        .iter()
        .find(|r| r.name.as_ref() == "by_tenant")
        .unwrap();
    assert_eq!(tenant.outcome.remaining, 99);
}

#[test]
fn a_user_over_their_limit_does_not_drain_the_tenant_or_the_tool() {
    let cfg = config("{by_user: 2/s, by_tenant: 3/m, by_tool: {echo: 5/m}}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let alice = cfg
        .policy
        .plan(&ctx("alice", Some("acme"), Some("echo")))
        .unwrap();
    let results: Vec<bool> = (0..4).map(|_| s.check(&alice).unwrap().allowed).collect();
    assert_eq!(results, [true, true, false, false]);
    // The peer consumed tenant 3/3 and tool 4/5 here (B-6); we consumed 2 of each.
    let bob = cfg
        .policy
        .plan(&ctx("bob", Some("acme"), Some("echo")))
        .unwrap();
    let d = s.check(&bob).unwrap();
    assert!(d.allowed);
    let rem = |name: &str| {
        d.dimensions
            .iter()
            .find(|r| r.name.as_ref() == name)
            .unwrap()
            .outcome
            .remaining
    };
    assert_eq!(rem("by_tenant"), 0);
    assert_eq!(rem("tool:echo"), 2);
    assert!(!s.check(&bob).unwrap().allowed, "tenant is now exhausted");
}

#[test]
fn denied_decision_reports_the_latest_retry_and_headers_agree() {
    let cfg = config("{by_user: 1/s, by_tenant: 1/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let plan = cfg.policy.plan(&ctx("alice", Some("acme"), None)).unwrap();
    assert!(s.check(&plan).unwrap().allowed);
    clock.advance_millis(100);
    let d = s.check(&plan).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(DenyReason::Limited));
    // Both deny; the tenant's window (epoch-aligned minute) ends last.
    let now_s = (T0 / 1_000_000_000) as f64 + 0.1;
    let minute_end = ((T0 / 1_000_000_000) / 60 + 1) * 60;
    assert_eq!(d.reported().unwrap().name.as_ref(), "by_tenant");
    let expected = (minute_end as f64 - now_s).ceil() as u64;
    assert_eq!(d.retry_after_secs, Some(expected));
    // Retrying at Retry-After succeeds, a microsecond earlier does not (nothing else happened).
    clock.set_nanos(d.retry_at.unwrap() * 1_000 - 1_000);
    assert!(!s.check(&plan).unwrap().allowed);
    clock.set_nanos(d.retry_at.unwrap() * 1_000);
    assert!(s.check(&plan).unwrap().allowed);
}

#[test]
fn allowed_decision_reports_fewest_remaining_with_tie_order() {
    let cfg = config("{by_user: 5/s, by_tool: {echo: 5/m}}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let plan = cfg.policy.plan(&ctx("alice", None, Some("echo"))).unwrap();
    let d = s.check(&plan).unwrap();
    // Both have 4 left: the user dimension wins the tie.
    assert_eq!(d.reported().unwrap().name.as_ref(), "by_user");
    clock.advance_millis(1_500);
    let d = s.check(&plan).unwrap();
    assert_eq!(d.reported().unwrap().name.as_ref(), "tool:echo");
    assert_eq!(d.remaining(), Some(3));
}

#[test]
fn cost_above_limit_is_denied_without_retry() {
    let cfg = config("{by_user: 5/s}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let costly = |cost| {
        let mut c = ctx("alice", None, None);
        c.cost = cost;
        cfg.policy.plan(&c).unwrap()
    };
    let plan = costly(6);
    assert_eq!((plan.cost, plan.cells[0].cost), (6, 6));
    let d = s.check(&plan).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(DenyReason::CostExceedsLimit));
    assert_eq!(d.retry_after_secs, None);
    assert!(s.check(&costly(5)).unwrap().allowed);
}

#[test]
fn multi_limits_are_all_enforced() {
    let cfg = config("{by_user: '3/s;5/m'}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let plan = cfg.policy.plan(&ctx("alice", None, None)).unwrap();
    assert_eq!(plan.cells.len(), 2);
    let mut admitted = 0;
    for _ in 0..10 {
        for _ in 0..10 {
            if s.check(&plan).unwrap().allowed {
                admitted += 1;
            }
        }
        clock.advance_millis(1_000);
    }
    assert_eq!(
        admitted, 5,
        "the minute limit binds after the first 2 seconds"
    );
}

#[test]
fn wall_clock_steps_do_not_matter_because_time_is_injected() {
    // The store only sees its clock: jumping it backwards never re-opens a window.
    let cfg = config("{algorithm: sliding_window, by_user: 2/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let plan = cfg.policy.plan(&ctx("alice", None, None)).unwrap();
    assert!(s.check(&plan).unwrap().allowed);
    assert!(s.check(&plan).unwrap().allowed);
    clock.set_nanos(T0 - 3_600_000_000_000);
    assert!(!s.check(&plan).unwrap().allowed);
}

#[test]
fn bounded_key_space_reclaims_expired_then_evicts() {
    let cfg = config("{by_user: 5/s}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(2_048, clock.clone());
    insert_users(&s, &cfg, "user", 5_000);
    let st = s.stats();
    assert!(st.keys <= 2_048, "{st:?}");
    assert_eq!(st.keys + st.evictions + st.reclaimed, 5_000, "{st:?}");
    assert!(st.evictions > 0);
    // After every entry expired, new keys take the room of expired ones before they evict live
    // ones: the search for an expired entry is bounded (the inserting shard and 8 neighbours),
    // so the last few expired entries can be out of its reach, but no more than a few.
    clock.advance_millis(3_000);
    let before = s.stats();
    insert_users(&s, &cfg, "other", 2_048);
    let after = s.stats();
    let (reclaimed, evicted) = (
        after.reclaimed - before.reclaimed,
        after.evictions - before.evictions,
    );
    assert_eq!(
        (after.keys, reclaimed + evicted),
        (2_048, 2_048),
        "{after:?}"
    );
    assert!(
        evicted <= 2_048 / 50,
        "{evicted} live entries evicted: {after:?}"
    );
}

fn insert_users(s: &MemoryStore, cfg: &LimiterConfig, prefix: &str, n: usize) {
    for i in 0..n {
        let u = format!("{prefix}-{i}");
        assert!(
            s.check(&cfg.policy.plan(&ctx(&u, None, None)).unwrap())
                .unwrap()
                .allowed
        );
    }
}

#[test]
fn the_whole_bound_is_usable_before_any_eviction() {
    // The bound holds for the store, not per shard: `max_keys` live keys fit however unevenly
    // they hash over the shards, and each further key evicts exactly one.
    let cfg = config("{by_user: 5/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(4_096, clock.clone());
    insert_users(&s, &cfg, "a", 4_096);
    let full = MemoryStats {
        keys: 4_096,
        reclaimed: 0,
        evictions: 0,
    };
    assert_eq!(s.stats(), full);
    insert_users(&s, &cfg, "b", 100);
    assert_eq!(
        s.stats(),
        MemoryStats {
            evictions: 100,
            ..full
        }
    );
}

#[test]
fn a_store_smaller_than_its_shard_count_takes_room_from_other_shards() {
    // Three keys over sixteen shards: most insertions land in an empty shard, whose room must
    // come from another one.
    let cfg = config("{by_user: 5/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(3, clock.clone());
    for i in 0..200 {
        insert_users(&s, &cfg, &format!("k{i}"), 1);
        assert!(s.stats().keys <= 3, "after {} keys: {:?}", i + 1, s.stats());
    }
    assert_eq!(
        s.stats(),
        MemoryStats {
            keys: 3,
            reclaimed: 0,
            evictions: 197
        }
    );
}

#[test]
fn concurrent_insertions_come_back_within_the_bound() {
    let cfg = config("{by_user: 5/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(1_024, clock.clone());
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (s, cfg) = (&s, &cfg);
            sc.spawn(move || insert_users(s, cfg, &format!("t{t}"), 5_000));
        }
    });
    let st = s.stats();
    assert!(st.keys <= 1_024 + 4, "{st:?}");
    assert_eq!(st.keys + st.evictions + st.reclaimed, 20_000, "{st:?}");
    // Any overshoot from insertions that read the count at the same instant is removed by the
    // next insertions (two entries each).
    insert_users(&s, &cfg, "after", 4);
    assert_eq!(s.stats().keys, 1_024, "{:?}", s.stats());
}

#[test]
fn expired_entries_are_reclaimed_incrementally_without_a_sweep() {
    let cfg = config("{by_user: 5/s}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(4_096, clock.clone());
    for i in 0..1_000 {
        let u = format!("a-{i}");
        s.check(&cfg.policy.plan(&ctx(&u, None, None)).unwrap())
            .unwrap();
    }
    clock.advance_millis(2_500); // expired (≤ 1 s) and past the reclaim grace (1 s)
    for i in 0..1_000 {
        let u = format!("b-{i}");
        s.check(&cfg.policy.plan(&ctx(&u, None, None)).unwrap())
            .unwrap();
    }
    let st = s.stats();
    assert!(
        st.reclaimed >= 800,
        "two entries examined per insertion: {st:?}"
    );
    assert!(st.keys <= 1_200, "{st:?}");
    assert_eq!(st.evictions, 0);
}

#[test]
fn recently_expired_entries_are_kept_and_reused_not_reallocated() {
    // Cells of a 1,000,000/s limit expire a microsecond after each request; keys that return
    // within the 1 s reclaim grace keep their entry (no free + re-insert on every visit).
    let cfg = config("{algorithm: gcra, by_user: 1000000/s}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(4_096, clock.clone());
    let plans: Vec<_> = (0..1_000)
        .map(|i| {
            cfg.policy
                .plan(&ctx(&format!("u-{i}"), None, None))
                .unwrap()
        })
        .collect();
    for round in 0..3 {
        for p in &plans {
            clock.advance_nanos(10_000);
            assert!(s.check(p).unwrap().allowed);
        }
        let st = s.stats();
        assert_eq!((st.keys, st.reclaimed), (1_000, 0), "round {round}: {st:?}");
    }
    // Past the grace, new keys reclaim them.
    clock.advance_millis(1_100);
    for i in 0..1_000 {
        let p = cfg
            .policy
            .plan(&ctx(&format!("v-{i}"), None, None))
            .unwrap();
        assert!(s.check(&p).unwrap().allowed);
    }
    assert!(s.stats().reclaimed >= 800, "{:?}", s.stats());
}

#[test]
fn unlimited_requests_have_no_cells_and_no_headers() {
    let cfg = config("{by_tool: {echo: 1/s}}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = store(&clock);
    let plan = cfg.policy.plan(&ctx("alice", None, Some("other"))).unwrap();
    let d = s.check(&plan).unwrap();
    assert!(d.allowed);
    assert!(ratewall_core::headers::render(&d, cfg.headers).is_empty());
}

#[test]
fn per_server_dimension_validates_server_ids_and_consumes_nothing_on_error() {
    use ratewall_core::config::ContextError;
    let cfg = config("{by_user: 5/s, by_user_per_server: 2/s}");
    let mut c = ctx("alice", None, None);
    c.per_server = true;
    assert_eq!(
        cfg.policy.plan(&c).unwrap_err(),
        ContextError::ServerIdMissing
    );
    c.server = Some("bad id");
    assert_eq!(
        cfg.policy.plan(&c).unwrap_err(),
        ContextError::ServerIdInvalid
    );
    let long = "x".repeat(129);
    c.server = Some(&long);
    assert_eq!(
        cfg.policy.plan(&c).unwrap_err(),
        ContextError::ServerIdTooLong
    );
    c.server = Some("gw-9");
    assert_eq!(cfg.policy.plan(&c).unwrap().cells.len(), 2);
    // Prompt fetches (per_server = false) never need it.
    c.per_server = false;
    c.server = None;
    assert_eq!(cfg.policy.plan(&c).unwrap().cells.len(), 1);
}
