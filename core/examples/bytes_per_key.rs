//! Measures the memory store's heap bytes per key with a counting allocator.
//!
//! `cargo run --release -p ratewall-core --example bytes_per_key`
//!
//! Inserts 200,000 distinct single-cell keys per algorithm (user ids of 8-12 bytes, no tenant:
//! keys like `rl:{-}:gcra:60:t-:u10:user-12345`) and divides the growth of live heap bytes by the
//! number of keys. Includes the key string, the shard tables (slots and control bytes) and the
//! store's fixed shard array (the store is sized for the `N` keys: `memory_max_keys = N`).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::{LimiterConfig, RequestContext};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees carry over unchanged; the counter is a side effect that does not touch memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const N: usize = 200_000;
    println!("| algorithm | bytes per key (limit 10/m) |\n|---|---:|");
    for alg in Algorithm::ALL {
        let (cfg, _) = LimiterConfig::from_yaml_str(
            &format!("{{algorithm: {}, by_user: 10/m}}", alg.name()),
            &[],
        )?;
        let plans: Vec<_> = (0..N)
            .map(|i| {
                let u = format!("user-{i}");
                cfg.policy.plan(&RequestContext {
                    user: Some(&u),
                    ..Default::default()
                })
            })
            .collect::<Result<_, _>>()?;
        let before = LIVE.load(Ordering::Relaxed);
        // A store sized for these keys, its shard array counted.
        let store = MemoryStore::new(N, Arc::new(ManualClock::new(1_700_000_000_000_000_000)));
        for p in &plans {
            store.check(p)?;
        }
        let after = LIVE.load(Ordering::Relaxed);
        println!(
            "| {} | {:.0} |",
            alg.name(),
            (after - before) as f64 / N as f64
        );
    }
    Ok(())
}
