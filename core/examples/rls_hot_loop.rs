//! A bounded hot loop for profilers (`valgrind --tool=callgrind`): 200,000 RLS requests of 1 or 3
//! descriptors over 1,000 users, planned (`plan`) or planned, checked on the memory store and
//! answered (`check`); `http` does the HTTP path's plan + check with as many cells.
//!
//! `cargo run --release -p ratewall-core --example rls_hot_loop [plan|check|http] [1|3]`
use std::sync::Arc;

use ratewall_core::clock::SystemClock;
use ratewall_core::config::descriptors::{Entry, RequestDescriptor};
use ratewall_core::config::{LimiterConfig, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

const CONFIG: &str = r#"
algorithm: gcra
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
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cfg, _) = LimiterConfig::from_yaml_str(CONFIG, &[])?;
    let store = MemoryStore::new(1_000_000, Arc::new(SystemClock::new()));
    let users: Vec<String> = (0..1_000).map(|i| format!("user-{i:04}")).collect();
    let which = std::env::args().nth(1).unwrap_or_else(|| "plan".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .clamp(1, 3);
    let mut work = 0u64;
    for i in 0..200_000 {
        let user = &users[i % users.len()];
        if which == "http" {
            let ctx = RequestContext {
                user: Some(user),
                tenant: (n > 1).then_some("acme"),
                tool: (n > 2).then_some("echo"),
                ..Default::default()
            };
            let p = cfg.policy.plan(&ctx)?;
            work += u64::from(store.check(&p)?.allowed);
            continue;
        }
        let e = [
            [Entry {
                key: "user",
                value: user,
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
        let d = [
            RequestDescriptor {
                entries: &e[0],
                limit: None,
                hits_addend: None,
            },
            RequestDescriptor {
                entries: &e[1],
                limit: None,
                hits_addend: None,
            },
            RequestDescriptor {
                entries: &e[2],
                limit: None,
                hits_addend: None,
            },
        ];
        let p = cfg.policy.plan_descriptors("edge", &d[..n], 1)?;
        if which == "check" {
            let decision = store.check(&p.plan)?;
            work += p.statuses(&decision).len() as u64;
        } else {
            work += p.plan.cells.len() as u64;
        }
    }
    println!("{which} {n}: {work}");
    Ok(())
}
