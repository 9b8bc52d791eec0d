//! A bounded hot loop for profilers (`valgrind --tool=callgrind`, `perf`): 200,000 single-key
//! GCRA checks and/or 200,000 three-dimension checks on the memory store, or the same through
//! governor's keyed limiter (the baseline). Instruction counts are repeatable on a noisy machine.
//!
//! `cargo run --release -p ratewall-core --example hot_loop [one|three|distinct|governor|governor3]`
use std::sync::Arc;

use ratewall_core::clock::SystemClock;
use ratewall_core::config::{LimiterConfig, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cfg, _) = LimiterConfig::from_yaml_str(
        "{algorithm: gcra, by_user: 1000000/s, by_tenant: 1000000/s, by_tool: {echo: 1000000/s}}",
        &[],
    )?;
    let store = MemoryStore::new(1_000_000, Arc::new(SystemClock::new()));
    let three = cfg.policy.plan(&RequestContext {
        user: Some("alice"),
        tenant: Some("acme"),
        tool: Some("echo"),
        ..Default::default()
    })?;
    let mut one = three.clone();
    one.cells.truncate(1);
    let which = std::env::args().nth(1).unwrap_or_default();
    let mut allowed = 0u64;
    if which.starts_with("governor") {
        // The baseline: governor's keyed limiter, 1 or 3 keyed checks per request.
        let gov = governor::RateLimiter::keyed(governor::Quota::per_second(
            std::num::NonZeroU32::new(1_000_000).ok_or("quota")?,
        ));
        let keys = [
            "user:alice".to_string(),
            "tenant:acme".to_string(),
            "tool:echo".to_string(),
        ];
        let n = if which == "governor3" { 3 } else { 1 };
        for _ in 0..200_000 {
            for k in &keys[..n] {
                allowed += u64::from(gov.check_key(k).is_ok());
            }
        }
        println!("allowed {allowed}");
        return Ok(());
    }
    if which == "distinct" {
        // One thread cycling over 1,024 single-cell keys (the `threads/*distinct_keys` shape).
        let plans = (0..1024)
            .map(|i| {
                let user = format!("t0-{i}");
                let mut p = cfg.policy.plan(&RequestContext {
                    user: Some(&user),
                    ..Default::default()
                })?;
                p.cells.truncate(1);
                Ok(p)
            })
            .collect::<Result<Vec<_>, ratewall_core::config::ContextError>>()?;
        for i in 0..200_000 {
            allowed += u64::from(store.check(&plans[i % plans.len()])?.allowed);
        }
        println!("allowed {allowed}");
        return Ok(());
    }
    if which != "three" {
        for _ in 0..200_000 {
            allowed += u64::from(store.check(&one)?.allowed);
        }
    }
    if which != "one" {
        for _ in 0..200_000 {
            allowed += u64::from(store.check(&three)?.allowed);
        }
    }
    println!("allowed {allowed}");
    Ok(())
}
