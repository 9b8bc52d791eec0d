//! Thread scaling of the memory store, measured so that a busy shared machine cannot fake it:
//! T threads each cycle over their own `KEYS` single-cell GCRA keys (1,000,000/s, so every check
//! is admitted and writes its key's state), 40,000,000 checks in all.
//!
//! `perf stat -e task-clock cargo run --release -p ratewall-core --example thread_scaling -- 1024 2 [checks [separate]]`
//!
//! Prints wall time per check (total across threads). Under `perf stat`, `task-clock` is the CPU
//! time of all threads: if two threads take no more CPU for the same checks than one, checks on
//! distinct keys do no cross-core work, and the wall-time scaling is limited only by whether both
//! cores were free ("CPUs utilized").
#![allow(clippy::unwrap_used)]
use std::sync::Arc;
use std::time::Instant;

use ratewall_core::clock::SystemClock;
use ratewall_core::config::{LimiterConfig, Plan, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

fn main() {
    let keys: usize = std::env::args().nth(1).map_or(1024, |s| s.parse().unwrap());
    let threads: usize = std::env::args().nth(2).map_or(1, |s| s.parse().unwrap());
    let (cfg, _) =
        LimiterConfig::from_yaml_str("{algorithm: gcra, by_user: 1000000/s}", &[]).unwrap();
    let plans = |t: usize| -> Arc<Vec<Plan>> {
        Arc::new(
            (0..keys)
                .map(|i| {
                    let u = format!("t{t}-{i}");
                    let ctx = RequestContext {
                        user: Some(&u),
                        ..Default::default()
                    };
                    cfg.policy.plan(&ctx).unwrap()
                })
                .collect(),
        )
    };
    // `separate`: each thread gets a store of its own: nothing shared at all, the ceiling of
    // what the same work can scale to on this machine.
    let separate = std::env::args().nth(4).is_some_and(|a| a == "separate");
    let new_store = || Arc::new(MemoryStore::new(1_000_000, Arc::new(SystemClock::new())));
    let store = new_store();
    let sets: Vec<_> = (0..threads).map(plans).collect();
    let n: usize = std::env::args()
        .nth(3)
        .map_or(40_000_000, |s| s.parse().unwrap());
    let start = Instant::now();
    std::thread::scope(|sc| {
        for p in &sets {
            let s = if separate { new_store() } else { store.clone() };
            let p = p.clone();
            sc.spawn(move || {
                let mut admitted = 0u64;
                for i in 0..n / threads {
                    admitted += u64::from(s.check(&p[i % p.len()]).unwrap().allowed);
                }
                std::hint::black_box(admitted);
            });
        }
    });
    println!(
        "{threads} thread(s) x {keys} keys: {:.1} ns per check (wall / total checks)",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}
