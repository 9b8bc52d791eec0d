//! Parity: the same seeded random scenarios (client clock) give identical decisions and headers on
//! the memory store and on a real Redis, for every algorithm, 1 and 3 dimensions, `;` multi-limits,
//! cost > 1, and per-cell costs (0 included) with shadow cells; on a single node and on a
//! 3-master cluster.
#![cfg(all(feature = "redis", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::{HeaderFormat, LimiterConfig, RedisSettings, RequestContext};
use ratewall_core::headers;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::redis::RedisStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

/// splitmix64: small, seeded, reproducible.
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
}

struct Scenario {
    algorithm: Algorithm,
    dims: usize,
    multi: bool,
    costly: bool,
    /// Each cell gets its own cost (0 ..= 3) and is shadow one time in three.
    mixed: bool,
    seed: u64,
}

fn config(s: &Scenario, prefix: &str) -> LimiterConfig {
    let (user, tenant, tool) = if s.multi {
        ("3/s;7/5s", "5/s;12/m", "4/2s;9/h")
    } else {
        ("3/s", "6/2s", "4/s")
    };
    let json = if s.dims == 1 {
        format!(
            r#"{{"algorithm": "{}", "redis_key_prefix": "{prefix}", "by_user": "{user}"}}"#,
            s.algorithm.name()
        )
    } else {
        format!(
            r#"{{"algorithm": "{}", "redis_key_prefix": "{prefix}", "by_user": "{user}", "by_tenant": "{tenant}", "by_tool": {{"echo": "{tool}"}}}}"#,
            s.algorithm.name()
        )
    };
    LimiterConfig::from_json_str(&json, &[]).unwrap().0
}

/// Returns (denials, local denials with an earlier retry instant, shadow denials).
async fn run_scenario(store: &RedisStore, s: &Scenario, prefix: &str) -> (usize, usize, usize) {
    let cfg = config(s, prefix);
    let mut rng = Rng(s.seed);
    let start: u64 = 1_700_000_000_000_000 + rng.below(1_000_000);
    let clock = Arc::new(ManualClock::new(start * 1_000));
    let memory = MemoryStore::new(10_000, clock.clone());
    let mut now = start;
    let mut denied = 0;
    let mut inexact = 0;
    let mut shadowed = 0;
    for step in 0..80 {
        // Mostly small steps (bursts), sometimes a jump over one or more windows.
        now += match rng.below(10) {
            0..=5 => rng.below(50_000),
            6..=8 => rng.below(700_000),
            _ => rng.below(4_000_000),
        };
        clock.set_nanos(now * 1_000);
        let user = ["alice", "bob"][rng.below(2) as usize];
        let cost = if s.costly {
            [1, 2, 3, 5][rng.below(4) as usize]
        } else {
            1
        };
        let ctx = RequestContext {
            user: Some(user),
            tenant: Some("acme"),
            tool: Some("echo"),
            cost,
            ..Default::default()
        };
        let mut plan = cfg.policy.plan(&ctx).unwrap();
        if s.mixed {
            for c in &mut plan.cells {
                c.cost = rng.below(4);
                c.shadow = rng.below(3) == 0;
            }
        }
        let m = memory.check(&plan).unwrap();
        let r = store.check_at(&plan, now).await.unwrap();
        let what = format!(
            "{:?} dims={} multi={} costly={} mixed={} seed={} step={step} now={now} user={user} cost={cost}",
            s.algorithm, s.dims, s.multi, s.costly, s.mixed, s.seed
        );
        if store.stats().negative_cache_hits == 0 {
            assert_eq!(m, r, "{what}");
            for f in [HeaderFormat::Legacy, HeaderFormat::Ietf] {
                assert_eq!(headers::render(&m, f), headers::render(&r, f), "{what}");
            }
        } else {
            // With the negative cache: the same verdict, reason and retry instant (only
            // `remaining` may be older); never a later retry instant than the truth.
            assert_eq!(
                (m.allowed, m.reason, m.now),
                (r.allowed, r.reason, r.now),
                "{what}"
            );
            assert!(r.retry_at <= m.retry_at, "{what}: {r:?} vs {m:?}");
            if r.retry_at == m.retry_at {
                assert_eq!(r.retry_after_secs, m.retry_after_secs, "{what}");
            } else {
                inexact += 1;
            }
        }
        if !m.allowed {
            denied += 1;
        }
        shadowed += usize::from(m.shadow_denied);
    }
    (denied, inexact, shadowed)
}

/// Returns (denials, local denials whose retry instant was a lower bound, negative-cache hits).
async fn parity(settings: RedisSettings, seeds: u64) -> (usize, usize, u64) {
    let settings_negative = settings.negative_cache_keys;
    let store = RedisStore::connect(&settings).await.unwrap();
    let mut denied = 0;
    let mut inexact = 0;
    let mut shadowed = 0;
    let mut n = 0;
    for algorithm in Algorithm::ALL {
        for dims in [1, 3] {
            for multi in [false, true] {
                for (costly, mixed) in [(false, false), (true, false), (false, true)] {
                    for seed in 0..seeds {
                        n += 1;
                        let s = Scenario {
                            algorithm,
                            dims,
                            multi,
                            costly,
                            mixed,
                            seed: seed * 7919 + n,
                        };
                        let (d, i, sh) = run_scenario(&store, &s, &format!("rwp{n}")).await;
                        denied += d;
                        inexact += i;
                        shadowed += sh;
                    }
                }
            }
        }
    }
    // The mixed scenarios do exercise shadow denials.
    assert!(shadowed > 20, "only {shadowed} shadow denials");
    let st = store.stats();
    assert_eq!(st.errors, 0);
    assert_eq!(st.script_calls + st.negative_cache_hits, n * 80);
    if settings_negative > 0 {
        assert!(st.negative_cache_hits > 0);
    } else {
        assert_eq!(st.negative_cache_hits, 0);
    }
    (denied, inexact, st.negative_cache_hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_with_memory_store_single_node() {
    let server = support::RedisServer::start();
    let (denied, _, _) = parity(support::settings(&server.url(), 2_000), 2).await;
    // The scenarios exercise denials, not only admissions.
    assert!(denied > 500, "only {denied} denials");
    server.assert_every_key_has_ttl("rwp*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_with_memory_store_on_cluster() {
    let cluster = support::RedisCluster::start();
    let (denied, _, _) = parity(cluster.settings(2_000), 1).await;
    assert!(denied > 200, "only {denied} denials");
    cluster.assert_every_key_has_ttl("rwp*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_cache_gives_the_same_verdicts_and_retry_instants() {
    let server = support::RedisServer::start();
    let mut s = support::settings(&server.url(), 2_000);
    s.negative_cache_keys = 10_000;
    let (denied, inexact, hits) = parity(s, 1).await;
    assert!(denied > 200, "only {denied} denials");
    println!("{denied} denials, {hits} answered locally, {inexact} with an earlier Retry-After");
    assert!(hits > 100, "{hits}");
    // One process: a local denial's Retry-After is exactly Redis's (entries are dropped when a
    // request consuming in one of their cells is admitted).
    assert_eq!(inexact, 0);
    server.assert_every_key_has_ttl("rwp*");
}
