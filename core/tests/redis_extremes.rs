//! Production-size limits on a real redis-server: counts up to `u32::MAX`, windows up to 366 days,
//! instants up to 2^52 µs, costs up to and past the limit. The Lua script (IEEE doubles, with its
//! long division for the products that pass 2^53) decides bit for bit like the memory store,
//! whose algorithms the model tests in `algorithms.rs` check against u128 arithmetic.
#![cfg(all(feature = "redis", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use ratewall_core::algorithm::SLIDING_LOG_MAX_COUNT;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::rate::{Limit, MAX_COUNT, MAX_WINDOW_SECS};
use ratewall_core::config::{LimiterConfig, RequestContext};
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
    fn pick(&mut self, xs: &[u64]) -> u64 {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// A limit the algorithm accepts, biased to the extremes.
fn extreme_limit(rng: &mut Rng, alg: Algorithm) -> Limit {
    loop {
        let c = match rng.below(3) {
            0 => rng.pick(&[1, 2, 7, 999_983, 1 << 31, MAX_COUNT - 1, MAX_COUNT]),
            _ => 1 + rng.below(MAX_COUNT),
        };
        let w = match rng.below(3) {
            0 => rng.pick(&[1, 59, 86_400, 7 * 86_400, 30 * 86_400, 365 * 86_400]),
            1 => MAX_WINDOW_SECS - rng.below(2),
            _ => 1 + rng.below(MAX_WINDOW_SECS),
        };
        let c = if alg == Algorithm::SlidingWindow {
            c.min(SLIDING_LOG_MAX_COUNT)
        } else {
            c
        };
        let l = Limit::new(c, w).unwrap();
        if alg.check_limit(&l).is_ok() {
            return l;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_matches_the_memory_store_at_production_sizes() {
    let server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), 5_000))
        .await
        .unwrap();
    let mut rng = Rng(0x0005_eed0_fe77_e3e5);
    let mut checks = 0;
    let mut denied = 0;
    let mut wide = 0;
    for alg in Algorithm::ALL {
        for case in 0..12 {
            let (user, tenant) = (extreme_limit(&mut rng, alg), extreme_limit(&mut rng, alg));
            let json = format!(
                r#"{{"algorithm": "{}", "redis_key_prefix": "rx{case}", "by_user": "{}/{}s", "by_tenant": "{}/{}s"}}"#,
                alg.name(),
                user.count(),
                user.window_secs(),
                tenant.count(),
                tenant.window_secs()
            );
            let cfg = LimiterConfig::from_json_str(&json, &[]).unwrap().0;
            // Instants up to 2^52 µs (the year 2112).
            let mut now = 1_700_000_000_000_000 + rng.below((1 << 52) - 1_800_000_000_000_000);
            let clock = Arc::new(ManualClock::new(now * 1_000));
            let memory = MemoryStore::new(1_000, clock.clone());
            let w = user.window_micros().min(tenant.window_micros());
            let c = user.count().min(tenant.count());
            let max_cost = if alg == Algorithm::SlidingWindow {
                c.min(2_000)
            } else {
                c
            };
            if u128::from(user.count()) * u128::from(user.window_micros()) > 1 << 53 {
                wide += 1;
            }
            for step in 0..40 {
                now += match rng.below(6) {
                    0 => 0,
                    1 => rng.below(1_000),
                    2 => rng.below(w / 3 + 1),
                    3 => w - 1,
                    4 => w + rng.below(2),
                    _ => rng.below(2 * w),
                };
                clock.set_nanos(now * 1_000);
                let cost = match rng.below(5) {
                    0 => 1,
                    1 => max_cost,
                    2 => c / 2 + 1,
                    3 => (c + 1).min(MAX_COUNT),
                    _ => 1 + rng.below(max_cost),
                };
                let one = rng.below(3) == 0;
                let ctx = RequestContext {
                    user: Some("u"),
                    tenant: (!one).then_some("t"),
                    cost,
                    ..Default::default()
                };
                let plan = cfg.policy.plan(&ctx).unwrap();
                let m = memory.check(&plan).unwrap();
                let r = store.check_at(&plan, now).await.unwrap();
                assert_eq!(
                    m, r,
                    "{alg:?} case {case} step {step}: user {user} tenant {tenant} now {now} cost {cost}"
                );
                checks += 1;
                denied += usize::from(!m.allowed);
            }
        }
    }
    assert_eq!(store.stats().errors, 0);
    assert!(
        denied > 100 && checks - denied > 100,
        "{denied} of {checks}"
    );
    assert!(wide > 20, "only {wide} cases had count x window past 2^53");
    server.assert_every_key_has_ttl("rx*");
}
