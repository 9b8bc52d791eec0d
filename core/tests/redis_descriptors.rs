//! Descriptor requests decided by the memory store and by a real redis-server (client clock) give
//! identical decisions and per-descriptor statuses: seeded random requests of 1 to 4 descriptors
//! over rules of every algorithm, with several limits, wildcards, `replaces`, unlimited rules,
//! request and per-descriptor `hits_addend` (including 0) and `limit` overrides.
#![cfg(all(feature = "redis", feature = "memory", feature = "descriptors"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::descriptors::{
    DomainSet, Entry, LimitOverride, RequestDescriptor, StatusCode, Unit,
};
use ratewall_core::config::LimiterConfig;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::redis::RedisStore;
use ratewall_core::store::Store;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const RULES: &str = r#"
domain: shop
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 3, name: per_user}
  - key: user
    value: "bot-*"
    rate_limit: {rate: "2/s;5/10s", algorithm: gcra}
  - key: route
    value: checkout
    descriptors:
      - key: user
        rate_limit: {rate: "4/2s", algorithm: sliding_window, replaces: [{name: per_user}]}
  - key: route
    descriptors:
      - key: user
        rate_limit: {rate: "6/3s;9/m", algorithm: token_bucket}
  - key: tenant
    rate_limit: {rate: "5/2s", algorithm: sliding_window_counter}
  - key: tenant
    value: internal
    rate_limit: {unlimited: true}
  - key: ip
    value: "10.*.*.1"
    share_threshold: true
    rate_limit: {unit: second, requests_per_unit: 4}
---
domain: other
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

fn config(prefix: &str) -> LimiterConfig {
    let set = DomainSet::from_documents(&[("shop.yaml", RULES)]).unwrap();
    LimiterConfig::from_json_value_partial(serde_json::json!({ "redis_key_prefix": prefix }), &[])
        .unwrap()
        .0
        .with_domains(set)
        .unwrap()
}

type Pairs = Vec<(&'static str, &'static str)>;

fn random_descriptor(rng: &mut Rng) -> Pairs {
    let user = *rng.pick(&["ann", "bob", "bot-1", "bot-2"]);
    match rng.below(6) {
        0 => vec![("user", user)],
        1 => vec![("route", "checkout"), ("user", user)],
        2 => vec![("route", *rng.pick(&["search", "cart"])), ("user", user)],
        3 => vec![("tenant", *rng.pick(&["acme", "internal", "globex"]))],
        4 => vec![("ip", *rng.pick(&["10.0.0.1", "10.1.2.1", "10.9.9.2"]))],
        _ => vec![("unknown", user)],
    }
}

/// Returns (denials, over-limit statuses, requests with at least one cell).
async fn scenario(store: &RedisStore, seed: u64, prefix: &str) -> (usize, usize, u64) {
    let cfg = config(prefix);
    let mut rng = Rng(seed);
    let start: u64 = 1_700_000_000_000_000 + rng.below(1_000_000);
    let clock = Arc::new(ManualClock::new(start * 1_000));
    let memory = MemoryStore::new(10_000, clock.clone());
    let mut now = start;
    let (mut denied, mut shown_over, mut with_cells) = (0, 0, 0);
    for step in 0..200 {
        // Mostly bursts, sometimes a jump over one or more windows.
        now += match rng.below(10) {
            0..=6 => rng.below(20_000),
            7..=8 => rng.below(800_000),
            _ => rng.below(5_000_000),
        };
        clock.set_nanos(now * 1_000);
        let n = 1 + rng.below(4) as usize;
        let pairs: Vec<Pairs> = (0..n).map(|_| random_descriptor(&mut rng)).collect();
        let entries: Vec<Vec<Entry<'_>>> = pairs
            .iter()
            .map(|p| p.iter().map(|&(key, value)| Entry { key, value }).collect())
            .collect();
        let descriptors: Vec<RequestDescriptor<'_>> = entries
            .iter()
            .map(|e| RequestDescriptor {
                entries: e,
                limit: (rng.below(12) == 0).then_some(LimitOverride {
                    requests_per_unit: 1 + rng.below(4),
                    unit: *rng.pick(&[Unit::Second, Unit::Minute]),
                }),
                hits_addend: match rng.below(5) {
                    0 => Some(0),
                    1 => Some(2),
                    _ => None,
                },
            })
            .collect();
        let domain = if rng.below(10) == 0 { "other" } else { "shop" };
        let hits = rng.below(3);
        let what =
            format!("seed={seed} step={step} now={now} domain={domain} hits={hits} {pairs:?}");
        let plan = match cfg.policy.plan_descriptors(domain, &descriptors, hits) {
            Ok(p) => p,
            // Two descriptors naming one counter with different limits (an override).
            Err(e) => {
                assert!(
                    e.to_string().contains("names the same counter"),
                    "{what}: {e}"
                );
                continue;
            }
        };
        with_cells += u64::from(!plan.plan.cells.is_empty());
        let m = memory.check(&plan.plan).unwrap();
        let r = store.check_at(&plan.plan, now).await.unwrap();
        assert_eq!(m, r, "{what}");
        let (sm, sr) = (plan.statuses(&m), plan.statuses(&r));
        assert_eq!(sm, sr, "{what}");
        assert_eq!(sm.len(), n);
        if !m.allowed {
            denied += 1;
            assert_eq!(plan.overall_code(&m), StatusCode::OverLimit);
        }
        shown_over += sm
            .iter()
            .filter(|s| s.code == StatusCode::OverLimit)
            .count();
    }
    (denied, shown_over, with_cells)
}

async fn parity(settings: ratewall_core::config::RedisSettings, seeds: u64) -> (usize, usize) {
    let store = RedisStore::connect(&settings).await.unwrap();
    let (mut denied, mut over, mut calls) = (0, 0, 0);
    for seed in 0..seeds {
        let (d, o, c) = scenario(&store, seed * 7_919 + 1, &format!("rwd{seed}")).await;
        denied += d;
        over += o;
        calls += c;
    }
    // One script call per request, whatever its number of descriptors and cells.
    assert_eq!(store.stats().script_calls, calls);
    println!("{denied} denials, {over} over-limit statuses");
    assert!(
        over >= denied,
        "{over} over-limit statuses for {denied} denials"
    );
    assert_eq!(store.stats().errors, 0);
    (denied, over)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_give_identical_statuses() {
    let server = support::RedisServer::start();
    let (denied, _) = parity(support::settings(&server.url(), 2_000), 12).await;
    // The scenarios exercise denials, not only admissions.
    assert!(denied > 100, "only {denied} denials");
    server.assert_every_key_has_ttl("rwd*");
}

/// Every cell of one RLS request shares a hash tag: one script call per request on a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_cluster_give_identical_statuses() {
    let cluster = support::RedisCluster::start();
    let (denied, _) = parity(cluster.settings(2_000), 3).await;
    assert!(denied > 25, "only {denied} denials");
    cluster.assert_every_key_has_ttl("rwd*");
}
