//! RLS request planning and deciding: `plan_descriptors` alone, and plan + memory-store check,
//! for 1 and 3 descriptors over 1,000 users, beside the HTTP path's `Policy::plan` + check with
//! the same number of cells (the descriptor language should cost about what the built-in
//! dimensions cost).
//!
//! `cargo bench -p ratewall-core --bench descriptors`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use ratewall_core::clock::SystemClock;
use ratewall_core::config::descriptors::{Entry, RequestDescriptor};
use ratewall_core::config::{LimiterConfig, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

const CONFIG: &str = r#"
by_user: 1000000/s
by_tenant: 1000000/s
by_tool: {echo: 1000000/s}
domains:
  - domain: edge
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 1000000}
      - key: tenant
        value: acme
        rate_limit: {unit: second, requests_per_unit: 1000000}
      - key: generic_key
        value: "tool-*"
        rate_limit: {unit: second, requests_per_unit: 1000000}
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 1000000}
"#;

fn users() -> Vec<String> {
    (0..1_000).map(|i| format!("user-{i:04}")).collect()
}

fn bench(c: &mut Criterion) {
    let (cfg, _) = LimiterConfig::from_yaml_str(CONFIG, &[]).unwrap();
    let users = users();
    let store = Arc::new(MemoryStore::new(1_000_000, Arc::new(SystemClock::new())));
    let mut g = c.benchmark_group("rls");
    for n in [1usize, 3] {
        g.bench_function(format!("plan_descriptors/{n}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % users.len();
                let e = [
                    [Entry {
                        key: "user",
                        value: &users[i],
                    }],
                    [Entry {
                        key: "tenant",
                        value: "acme",
                    }],
                    [Entry {
                        key: "generic_key",
                        value: "tool-echo",
                    }],
                ];
                let d: Vec<RequestDescriptor<'_>> = e[..n]
                    .iter()
                    .map(|e| RequestDescriptor {
                        entries: e,
                        limit: None,
                        hits_addend: None,
                    })
                    .collect();
                black_box(
                    cfg.policy
                        .plan_descriptors("edge", black_box(&d), 1)
                        .unwrap(),
                )
            })
        });
        g.bench_function(format!("plan_descriptors+check/{n}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % users.len();
                let e = [
                    [Entry {
                        key: "user",
                        value: &users[i],
                    }],
                    [Entry {
                        key: "tenant",
                        value: "acme",
                    }],
                    [Entry {
                        key: "generic_key",
                        value: "tool-echo",
                    }],
                ];
                let d: Vec<RequestDescriptor<'_>> = e[..n]
                    .iter()
                    .map(|e| RequestDescriptor {
                        entries: e,
                        limit: None,
                        hits_addend: None,
                    })
                    .collect();
                let p = cfg.policy.plan_descriptors("edge", &d, 1).unwrap();
                let decision = store.check(&p.plan).unwrap();
                black_box(p.statuses(&decision))
            })
        });
        g.bench_function(format!("http_plan+check/{n}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % users.len();
                let ctx = RequestContext {
                    user: Some(&users[i]),
                    tenant: (n > 1).then_some("acme"),
                    tool: (n > 2).then_some("echo"),
                    ..Default::default()
                };
                let p = cfg.policy.plan(&ctx).unwrap();
                black_box(store.check(&p).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
