//! Eviction forgets the least usage: a cell at its limit stays denied through a flood of fresh
//! identities (10 x the bound), for every algorithm, with one dimension and with several, in the
//! memory store; and a long denial stays in the Redis store's negative cache through a flood of
//! shorter ones (real redis-server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "redis")]
mod support;

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::{LimiterConfig, Plan, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

/// 2026-01-01T00:00:01Z in ns: one second into an hour, so the hour's windows are all ahead.
const T0: u64 = 1_767_225_601_000_000_000;
const MAX_KEYS: usize = 1_000;
const FLOOD: usize = 10 * MAX_KEYS;

fn config(yaml: &str) -> LimiterConfig {
    LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0
}

fn plan(cfg: &LimiterConfig, user: &str, tenant: Option<&str>) -> Plan {
    cfg.policy
        .plan(&RequestContext {
            user: Some(user),
            tenant,
            ..Default::default()
        })
        .unwrap()
}

/// Exhaust `victim` (limit 10/h), then send `FLOOD` requests of fresh identities (`fresh(i)`),
/// 1 ms apart; `victim` must be denied before, during (every 500) and after the flood, and the
/// flood must really have evicted (the store stayed at its bound).
fn flood(
    alg: Algorithm,
    store: &MemoryStore,
    clock: &ManualClock,
    victim: &Plan,
    exhaust: &[Plan],
    fresh: impl Fn(usize) -> Plan,
) {
    for p in exhaust {
        assert!(store.check(p).unwrap().allowed, "{alg:?}: before the limit");
    }
    let d = store.check(victim).unwrap();
    assert!(!d.allowed, "{alg:?}: the victim is at its limit: {d:?}");
    for i in 0..FLOOD {
        clock.advance_millis(1);
        assert!(
            store.check(&fresh(i)).unwrap().allowed,
            "{alg:?}: fresh id {i}"
        );
        if i % 500 == 499 {
            let d = store.check(victim).unwrap();
            assert!(
                !d.allowed,
                "{alg:?}: the victim was admitted again after {} fresh ids (its counter was \
                 evicted): {:?}",
                i + 1,
                store.stats()
            );
        }
    }
    let st = store.stats();
    assert!(st.keys as usize <= MAX_KEYS, "{alg:?}: {st:?}");
    assert!(
        st.evictions as usize >= FLOOD - MAX_KEYS,
        "{alg:?}: the flood evicted: {st:?}"
    );
    let d = store.check(victim).unwrap();
    assert!(!d.allowed, "{alg:?}: after the flood: {d:?}");
}

#[test]
fn a_user_at_its_limit_stays_denied_through_a_flood_of_fresh_users() {
    for alg in Algorithm::ALL {
        let cfg = config(&format!("{{algorithm: {}, by_user: 10/h}}", alg.name()));
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::new(MAX_KEYS, clock.clone());
        let victim = plan(&cfg, "victim", None);
        let exhaust = vec![victim.clone(); 10];
        flood(alg, &store, &clock, &victim, &exhaust, |i| {
            plan(&cfg, &format!("fresh-{i}"), None)
        });
    }
}

#[test]
fn a_user_at_its_limit_stays_denied_through_a_flood_of_fresh_users_and_tenants() {
    // Three dimensions' worth of cells: the victim's user cell at its limit, its tenant's and
    // the flood's cells nearly fresh; every flood request inserts two new cells.
    for alg in Algorithm::ALL {
        let cfg = config(&format!(
            "{{algorithm: {}, by_user: 10/h, by_tenant: 100000/h}}",
            alg.name()
        ));
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::new(MAX_KEYS, clock.clone());
        let victim = plan(&cfg, "victim", Some("acme"));
        let exhaust = vec![victim.clone(); 10];
        flood(alg, &store, &clock, &victim, &exhaust, |i| {
            plan(&cfg, &format!("fresh-{i}"), Some(&format!("tenant-{i}")))
        });
        let d = store.check(&victim).unwrap();
        assert_eq!(d.dimensions.len(), 2, "{alg:?}");
        assert!(!d.dimensions[0].outcome.allowed, "{alg:?}: {d:?}");
    }
}

#[test]
fn a_tenant_at_its_limit_stays_denied_through_a_flood_of_fresh_tenants() {
    // The shared dimension: ten users exhausted the tenant; a new user of that tenant is denied
    // by the tenant cell, before and after a flood of (fresh user, fresh tenant) requests.
    for alg in Algorithm::ALL {
        let cfg = config(&format!(
            "{{algorithm: {}, by_user: 100/h, by_tenant: 10/h}}",
            alg.name()
        ));
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::new(MAX_KEYS, clock.clone());
        let exhaust: Vec<Plan> = (0..10)
            .map(|i| plan(&cfg, &format!("member-{i}"), Some("acme")))
            .collect();
        let newcomer = plan(&cfg, "newcomer", Some("acme"));
        flood(alg, &store, &clock, &newcomer, &exhaust, |i| {
            plan(&cfg, &format!("fresh-{i}"), Some(&format!("tenant-{i}")))
        });
        let d = store.check(&newcomer).unwrap();
        assert!(d.dimensions[0].outcome.allowed, "{alg:?}: {d:?}");
        assert!(!d.dimensions[1].outcome.allowed, "{alg:?}: {d:?}");
    }
}

#[test]
fn among_partly_used_cells_the_least_used_go_first() {
    // A full store of cells used 1..=9 times of 10 (about 111 each), then 500 fresh ids: the
    // cells used 8 and 9 times all survive, those used once (the oldest of the least used: equal
    // usage goes by expiry) are nearly all gone. The minimum is the sample's, not the store's.
    let cfg = config("{algorithm: sliding_window, by_user: 10/h}");
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(MAX_KEYS, clock.clone());
    let users: Vec<(Plan, u64)> = (0..MAX_KEYS)
        .map(|i| (plan(&cfg, &format!("u-{i}"), None), 1 + (i as u64 % 9)))
        .collect();
    for (p, uses) in &users {
        clock.advance_millis(1);
        for _ in 0..*uses {
            assert!(store.check(p).unwrap().allowed);
        }
    }
    for i in 0..MAX_KEYS / 2 {
        clock.advance_millis(1);
        assert!(
            store
                .check(&plan(&cfg, &format!("fresh-{i}"), None))
                .unwrap()
                .allowed
        );
    }
    // A survivor reports its own count (remaining = 10 - uses - 1 after this check); an evicted
    // one reports a fresh window (remaining 9).
    let mut survived = [0usize; 10];
    for (p, uses) in &users {
        let d = store.check(p).unwrap();
        if d.dimensions[0].outcome.remaining == 9 - *uses {
            survived[*uses as usize] += 1;
        }
    }
    let per_class = MAX_KEYS / 9;
    assert!(
        survived[9] >= per_class && survived[8] >= per_class,
        "the most used cells survive: {survived:?}"
    );
    assert!(
        survived[1] < per_class / 10,
        "the least used go first: {survived:?}"
    );
}

#[cfg(feature = "redis")]
mod negative_cache {
    use super::*;
    use ratewall_core::store::redis::RedisStore;

    /// `redis_negative_cache_keys: 64`: a user denied for the rest of the hour stays answered
    /// locally (no round trip) through 640 denials that end within the minute (fresh users of
    /// an exhausted tenant), 10 x the cache's bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_denial_stays_cached_through_a_flood_of_short_ones() {
        let server = support::RedisServer::start();
        let mut s = support::settings(&server.url(), 2_000);
        s.negative_cache_keys = 64;
        let store = RedisStore::connect(&s).await.unwrap();
        let cfg = LimiterConfig::from_json_str(
            r#"{"redis_key_prefix": "evict", "by_user": "2/h", "by_tenant": "5/m"}"#,
            &[],
        )
        .unwrap()
        .0;
        let t0 = T0 / 1_000; // µs
        let victim = plan(&cfg, "victim", Some("solo"));
        for _ in 0..2 {
            assert!(store.check_at(&victim, t0).await.unwrap().allowed);
        }
        let d = store.check_at(&victim, t0).await.unwrap();
        assert!(!d.allowed);
        let hits = store.stats().negative_cache_hits;
        assert!(!store.check_at(&victim, t0 + 1).await.unwrap().allowed);
        assert_eq!(store.stats().negative_cache_hits, hits + 1, "cached");
        for i in 0..5 {
            let p = plan(&cfg, &format!("member-{i}"), Some("busy"));
            assert!(store.check_at(&p, t0 + 2).await.unwrap().allowed);
        }
        for i in 0..640 {
            let p = plan(&cfg, &format!("fresh-{i}"), Some("busy"));
            let d = store.check_at(&p, t0 + 3).await.unwrap();
            assert!(!d.allowed, "the tenant is exhausted");
        }
        let st = store.stats();
        assert!(
            st.negative_cache_evictions > 0,
            "the flood filled it: {st:?}"
        );
        assert!(st.negative_cache_size <= 64, "{st:?}");
        let calls = st.script_calls;
        let d = store.check_at(&victim, t0 + 4).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(
            store.stats().script_calls,
            calls,
            "the victim's denial (until the hour's end) was evicted by denials ending within \
             the minute: {:?}",
            store.stats()
        );
    }
}
