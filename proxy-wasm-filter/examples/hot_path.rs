//! The local-mode allow path of one request without the proxy-wasm host, for profiling the
//! guest's share natively (`perf record target/release/examples/hot_path`): header lookup,
//! cached plans, one shared-data slot read + CAS write through an in-memory stand-in, the verdict
//! and its headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ratewall_filter::config::FilterConfig;
use ratewall_filter::mcp::Body;
use ratewall_filter::response::Verdict;
use ratewall_filter::shared::{SetError, SharedData, SlotSeed, SlotTable};
use ratewall_filter::{groups, plans, Identity, PlanCache};

/// Counts allocations (the guest's allocator is a VM-side cost too).
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Default)]
struct Mem(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedData for Mem {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
        Ok(match self.0.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        })
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut m = self.0.borrow_mut();
        let e = m.entry(key.to_string()).or_default();
        if cas.is_some_and(|c| c != e.1) {
            return Err(SetError::CasMismatch);
        }
        *e = (value.to_vec(), e.1 + 1);
        Ok(())
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let cfg = FilterConfig::from_bytes(br#"{"by_user": "1000000/s"}"#).unwrap();
    let table = SlotTable::new(8192, SlotSeed([7; 16]));
    let host = Mem::default();
    table.create_slots(&host).unwrap();
    let mut cache = PlanCache::default();
    let headers: Vec<(String, Vec<u8>)> = [
        (":authority", "127.0.0.1:10000"),
        (":path", "/direct"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-user-id", "bench"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "2d3a4ad2-2a0e-4a41-9d35-0d8c1b3c7f70"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let mut t = 1_700_000_000_000_000u64;
    let start = Instant::now();
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let mut sent = 0usize;
    for _ in 0..n {
        t += 2;
        // Two header lookups, as the filter does for this configuration: the SDK hands over an
        // owned copy of each value found.
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .map(|v| String::from_utf8_lossy(&v).trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let id = Identity {
            user: get(&cfg.user_header),
            tenant: get(&cfg.tenant_header),
            ..Default::default()
        };
        let g = groups(&Body::Opaque, &id);
        let p = cache
            .get_or_build(&id, &g, || {
                plans(&cfg.limiter.policy, &id, &g).map(|p| table.prepare(p))
            })
            .unwrap();
        let (d, _) = table.check_prepared(&host, &p, &|| t).unwrap();
        let v = Verdict::from_decision(&d, cfg.headers());
        sent += v
            .headers
            .iter()
            .map(|(a, b)| a.len() + b.len())
            .sum::<usize>();
    }
    let el = start.elapsed();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    println!(
        "{:.3} µs/request, {:.1} allocations/request (2 of them stand-ins for the SDK's copies of \
         the user header and the slot; {sent})",
        el.as_secs_f64() * 1e6 / n as f64,
        allocs as f64 / n as f64,
    );
}
