//! A bounded hot loop for profilers (`valgrind --tool=callgrind`, `perf`): 200,000 single-key
//! GCRA checks and 200,000 three-dimension checks on the memory store.
//!
//! `cargo run --release -p ratewall-core --example hot_loop`
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
    let mut allowed = 0u64;
    for _ in 0..200_000 {
        allowed += u64::from(store.check(&one)?.allowed);
    }
    for _ in 0..200_000 {
        allowed += u64::from(store.check(&three)?.allowed);
    }
    println!("allowed {allowed}");
    Ok(())
}
