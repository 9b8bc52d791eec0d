//! Core benchmarks with `governor` as the baseline, measured in the same run.
//!
//! `cargo bench -p ratewall-core --bench core`
//!
//! * single-key check per algorithm vs governor's keyed `check_key`;
//! * a 3-dimension atomic check vs three governor keyed checks;
//! * 10k and 1M distinct keys;
//! * 2 threads on one key, on their own key each, and on 1,024 distinct keys each (throughput of
//!   2 threads vs 1), with governor on the same shapes, and the 1,024-keys shape on one store per
//!   thread (nothing shared: what the machine allows at that moment).
//!
//! Both sides use a 1,000,000/s quota and their own system clocks, so both take the same
//! allow/deny paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ratewall_core::clock::SystemClock;
use ratewall_core::config::{LimiterConfig, Plan, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

const RATE: &str = "1000000/s";

fn plan_for(cfg: &LimiterConfig, user: &str) -> Plan {
    let ctx = RequestContext {
        user: Some(user),
        tenant: Some("acme"),
        tool: Some("echo"),
        ..Default::default()
    };
    cfg.policy.plan(&ctx).unwrap()
}

fn cfg(alg: Algorithm, dims: usize) -> LimiterConfig {
    let yaml = match dims {
        1 => format!("{{algorithm: {}, by_user: '{RATE}'}}", alg.name()),
        _ => format!(
            "{{algorithm: {}, by_user: '{RATE}', by_tenant: '{RATE}', by_tool: {{echo: '{RATE}'}}}}",
            alg.name()
        ),
    };
    LimiterConfig::from_yaml_str(&yaml, &[]).unwrap().0
}

fn store(max_keys: usize) -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(max_keys, Arc::new(SystemClock::new())))
}

fn governor() -> Arc<DefaultKeyedRateLimiter<String>> {
    Arc::new(RateLimiter::keyed(Quota::per_second(
        NonZeroU32::new(1_000_000).unwrap(),
    )))
}

fn single_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_key");
    g.throughput(Throughput::Elements(1));
    let gov = governor();
    let key = "user:alice".to_string();
    g.bench_function("governor_keyed", |b| {
        b.iter(|| black_box(gov.check_key(black_box(&key)).is_ok()))
    });
    for alg in Algorithm::ALL {
        let s = store(1_000_000);
        let plan = plan_for(&cfg(alg, 1), "alice");
        g.bench_function(BenchmarkId::new("ratewall", alg.name()), |b| {
            b.iter(|| black_box(s.check(black_box(&plan)).unwrap().allowed))
        });
    }
    g.finish();
}

fn three_dims(c: &mut Criterion) {
    let mut g = c.benchmark_group("three_dimensions");
    g.throughput(Throughput::Elements(1));
    let gov = governor();
    let keys = [
        "user:alice".to_string(),
        "tenant:acme".to_string(),
        "tool:echo".to_string(),
    ];
    g.bench_function("governor_keyed_x3", |b| {
        b.iter(|| {
            for k in &keys {
                black_box(gov.check_key(black_box(k)).is_ok());
            }
        })
    });
    for alg in [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::TokenBucket,
    ] {
        let s = store(1_000_000);
        let plan = plan_for(&cfg(alg, 3), "alice");
        g.bench_function(BenchmarkId::new("ratewall", alg.name()), |b| {
            b.iter(|| black_box(s.check(black_box(&plan)).unwrap().allowed))
        });
    }
    g.finish();
}

fn many_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("distinct_keys");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for n in [10_000usize, 1_000_000] {
        let gov = governor();
        let gkeys: Vec<String> = (0..n).map(|i| format!("user:{i}")).collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("governor_keyed", n), |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(gov.check_key(&gkeys[i]).is_ok())
            })
        });
        drop(gkeys);
        let s = store(2 * n);
        let c1 = cfg(Algorithm::Gcra, 1);
        let plans: Vec<Plan> = (0..n).map(|i| plan_for(&c1, &i.to_string())).collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ratewall_gcra", n), |b| {
            b.iter(|| {
                i = (i + 1) % n;
                black_box(s.check(&plans[i]).unwrap().allowed)
            })
        });
    }
    g.finish();
}

/// Time `iters` checks split over `threads` threads (each with its own plan list), all on one
/// store, or each on its own when `stores` has one per thread.
fn threaded(stores: &[Arc<MemoryStore>], plans: &[Arc<Vec<Plan>>], iters: u64) -> Duration {
    let threads = plans.len() as u64;
    let per = iters / threads;
    let start = Instant::now();
    std::thread::scope(|sc| {
        for (t, p) in plans.iter().enumerate() {
            let (s, p) = (stores[t % stores.len()].clone(), p.clone());
            sc.spawn(move || {
                for i in 0..per {
                    black_box(s.check(&p[i as usize % p.len()]).unwrap().allowed);
                }
            });
        }
    });
    start.elapsed()
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    g.throughput(Throughput::Elements(1));
    let c1 = cfg(Algorithm::Gcra, 1);
    let distinct = |t: usize| -> Arc<Vec<Plan>> {
        Arc::new(
            (0..1024)
                .map(|i| plan_for(&c1, &format!("t{t}-{i}")))
                .collect(),
        )
    };
    let one: Arc<Vec<Plan>> = Arc::new(vec![plan_for(&c1, "alice")]);
    let own = |t: usize| -> Arc<Vec<Plan>> { Arc::new(vec![plan_for(&c1, &format!("own-{t}"))]) };
    // `separate`: the same work with one store per thread (nothing shared): the ceiling of the
    // scaling on this machine at that moment, for the shared-store rows to be read against.
    for (name, sets, separate) in [
        ("one_thread_own_key", vec![own(0)], false),
        ("two_threads_own_keys", vec![own(0), own(1)], false),
        ("one_thread_distinct_keys", vec![distinct(0)], false),
        (
            "two_threads_distinct_keys",
            vec![distinct(0), distinct(1)],
            false,
        ),
        (
            "two_threads_distinct_keys_separate_stores",
            vec![distinct(0), distinct(1)],
            true,
        ),
        ("one_thread_one_key", vec![one.clone()], false),
        ("two_threads_one_key", vec![one.clone(), one.clone()], false),
    ] {
        let stores: Vec<_> = (0..if separate { sets.len() } else { 1 })
            .map(|_| store(1_000_000))
            .collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| threaded(&stores, &sets, iters.max(2)))
        });
    }
    // The same shape through governor: the reference for what a shared keyed map scales to.
    let gkeys = |t: usize| -> Arc<Vec<String>> {
        Arc::new((0..1024).map(|i| format!("user:t{t}-{i}")).collect())
    };
    let gown = |t: usize| -> Arc<Vec<String>> { Arc::new(vec![format!("user:own-{t}")]) };
    for (name, sets) in [
        ("governor_one_thread_own_key", vec![gown(0)]),
        ("governor_two_threads_own_keys", vec![gown(0), gown(1)]),
        ("governor_one_thread_distinct_keys", vec![gkeys(0)]),
        (
            "governor_two_threads_distinct_keys",
            vec![gkeys(0), gkeys(1)],
        ),
    ] {
        let gov = governor();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per = iters.max(2) / sets.len() as u64;
                let start = Instant::now();
                std::thread::scope(|sc| {
                    for keys in &sets {
                        let (gov, keys) = (gov.clone(), keys.clone());
                        sc.spawn(move || {
                            for i in 0..per {
                                black_box(gov.check_key(&keys[i as usize % keys.len()]).is_ok());
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = single_key, three_dims, many_keys, threads
}
criterion_main!(benches);
