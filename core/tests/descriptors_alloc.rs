//! `plan_descriptors` allocates only the plan: its cell vector and one string per cell key (no
//! per-request parsing, no scratch vectors up to 4 descriptors and 8 cells). Counted by dhat's
//! heap profiler in testing mode (one profiler per process: one test in this file).
#![cfg(feature = "descriptors")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ratewall_core::config::descriptors::{Entry, RequestDescriptor};
use ratewall_core::config::LimiterConfig;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CONFIG: &str = r#"
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 50}
      - key: generic_key
        value: checkout
        descriptors:
          - key: header_match
            value: "mobile-*"
            rate_limit: {rate: "5/s;100/m", algorithm: gcra}
      - key: destination_cluster
        rate_limit: {unlimited: true}
"#;

#[test]
fn plan_descriptors_allocates_only_the_plan() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (cfg, _) = LimiterConfig::from_yaml_str(CONFIG, &[]).unwrap();
    let ip = [Entry {
        key: "remote_address",
        value: "203.0.113.77",
    }];
    let checkout = [
        Entry {
            key: "generic_key",
            value: "checkout",
        },
        Entry {
            key: "header_match",
            value: "mobile-ios-17.4.1-build-20240501",
        },
    ];
    let cluster = [Entry {
        key: "destination_cluster",
        value: "payments-v2",
    }];
    let none = [Entry {
        key: "no_rule",
        value: "x",
    }];
    let rd = |entries| RequestDescriptor {
        entries,
        limit: None,
        hits_addend: None,
    };
    let requests: [(&[RequestDescriptor<'_>], u64); 4] = [
        (&[rd(&ip)], 1),
        (&[rd(&ip), rd(&checkout)], 3),
        (&[rd(&ip), rd(&checkout), rd(&cluster), rd(&none)], 3),
        (&[rd(&cluster), rd(&none)], 0),
    ];
    for (descriptors, cells) in requests {
        let before = dhat::HeapStats::get();
        let plan = cfg.policy.plan_descriptors("edge", descriptors, 1).unwrap();
        let after = dhat::HeapStats::get();
        assert_eq!(plan.plan.cells.len() as u64, cells);
        let expected = if cells == 0 { 0 } else { 1 + cells };
        assert_eq!(
            after.total_blocks - before.total_blocks,
            expected,
            "{} descriptors, {cells} cells",
            descriptors.len()
        );
        drop(plan);
    }
    // An unknown domain allocates nothing.
    let before = dhat::HeapStats::get();
    let plan = cfg.policy.plan_descriptors("nope", &[rd(&ip)], 1).unwrap();
    assert_eq!(dhat::HeapStats::get().total_blocks - before.total_blocks, 0);
    drop(plan);
}
