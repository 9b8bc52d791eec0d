//! Helpers shared by the fuzz targets: run a compiled configuration's policy on the real memory
//! store at a manual clock, so a fuzzed config is not only parsed but also decided with
//! (algorithm arithmetic on whatever limits the parser accepted).

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::RequestContext;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::LimiterConfig;

/// 2023-11-14T22:13:20Z in ns: a realistic "now".
pub const T0_NANOS: u64 = 1_700_000_000_000_000_000;

/// Contexts every accepted configuration is planned and decided with.
pub fn contexts() -> [RequestContext<'static>; 4] {
    const DESCRIPTORS: &[(&str, &str)] = &[("remote_address", "10.0.0.1"), ("path", "/x")];
    [
        RequestContext {
            user: Some("alice"),
            tool: Some("echo"),
            ..Default::default()
        },
        RequestContext {
            user: Some("bob"),
            tenant: Some("acme"),
            server: Some("srv-1"),
            per_server: true,
            tool: Some("Search Tool"),
            descriptors: DESCRIPTORS,
            cost: 3,
        },
        RequestContext {
            cost: u64::from(u32::MAX),
            descriptors: DESCRIPTORS,
            ..Default::default()
        },
        RequestContext::default(),
    ]
}

/// Plan and decide every [`contexts`] entry a few times across a few clock steps (µs: 0, 1 ms,
/// one window of a minute, a year). Decisions must never panic; a planning error is a normal
/// answer (the context does not fit the policy). Asserts the decision invariants that hold for
/// every configuration.
pub fn exercise(cfg: &LimiterConfig) {
    let clock = Arc::new(ManualClock::new(T0_NANOS));
    let store = MemoryStore::new(cfg.memory_max_keys.min(1_000), clock.clone());
    for step_ms in [0u64, 1, 60_000, 365 * 86_400_000] {
        clock.advance_millis(step_ms);
        for ctx in contexts() {
            let Ok(plan) = cfg.policy.plan(&ctx) else {
                continue;
            };
            for _ in 0..2 {
                let d = store.check(&plan).expect("the memory store never fails");
                if !d.allowed {
                    assert!(d.retry_after_secs.is_some() || d.reason.is_some(), "{d:?}");
                }
                let _ = ratewall_core::headers::render(&d, cfg.headers);
            }
        }
    }
}

/// Text of a fuzz input (lossy: the loaders take `&str`; invalid UTF-8 is the transport's
/// business and becomes U+FFFD here, so the fuzzer still explores the structure around it).
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
