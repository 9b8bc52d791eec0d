//! Prometheus metrics, rendered in the text exposition format by hand (atomics only on the hot
//! path). Every label value is bounded: configured limit names (capped at [`MAX_LIMIT_SERIES`]),
//! dimension kinds, outcomes, endpoints. No user, tenant or tool values from requests.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use ratewall_core::decision::Decision;
use ratewall_core::DenyReason;

/// Distinct limit names tracked before further ones are folded into `limit="other"`.
pub const MAX_LIMIT_SERIES: usize = 2_048;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The endpoints that decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /check`.
    Check = 0,
    /// `/authz` (proxy mode).
    Authz = 1,
}

impl Endpoint {
    /// `check` or `authz`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Check => "check",
            Endpoint::Authz => "authz",
        }
    }
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

#[derive(Default)]
struct LimitCounters {
    dimension: &'static str,
    allowed: AtomicU64,
    limited: AtomicU64,
    cost_exceeds_limit: AtomicU64,
    near_limit: AtomicU64,
    /// Decisions this (shadow) limit would have denied.
    shadow_denied: AtomicU64,
}

type LimitMap = HashMap<&'static str, &'static LimitCounters>;

/// All counters of one process (they survive reloads).
#[derive(Default)]
pub struct Metrics {
    /// Policy names are interned by the core (`&'static str`) and bounded, so their counters are
    /// allocated once and never freed; the map is read without locking or reference counting
    /// on the hot path and copied on the (rare) insertion of a new name.
    limits: ArcSwap<LimitMap>,
    limits_insert: Mutex<()>,
    unlimited: AtomicU64,
    backend_errors: AtomicU64,
    fail_open: AtomicU64,
    fail_closed: AtomicU64,
    bad_requests: [AtomicU64; 2],
    timeouts: AtomicU64,
    reload_ok: AtomicU64,
    reload_failed: AtomicU64,
    latency: [Histogram; 2],
}

/// Store-side figures read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreFigures {
    /// Live keys (memory store).
    pub keys: Option<u64>,
    /// Live entries evicted because the memory store was full.
    pub evictions: u64,
    /// Expired entries reclaimed.
    pub reclaimed: u64,
    /// Negative-cache hits (Redis store).
    pub negative_cache_hits: u64,
    /// Store reachable.
    pub ready: bool,
}

impl Metrics {
    fn counters(&self, name: &'static str, dimension: &'static str) -> &'static LimitCounters {
        if let Some(c) = self.limits.load().get(name) {
            return c;
        }
        let _guard = self.limits_insert.lock();
        let current = self.limits.load_full();
        if let Some(c) = current.get(name) {
            return c;
        }
        let key = if current.len() >= MAX_LIMIT_SERIES {
            "other"
        } else {
            name
        };
        if let Some(c) = current.get(key) {
            return c;
        }
        let counters: &'static LimitCounters = Box::leak(Box::new(LimitCounters {
            dimension,
            ..Default::default()
        }));
        let mut next = (*current).clone();
        next.insert(key, counters);
        self.limits.store(Arc::new(next));
        counters
    }

    /// Count one store decision.
    pub fn decision(&self, d: &Decision) {
        if d.shadow_denied {
            for r in d
                .dimensions
                .iter()
                .filter(|r| r.shadow && !r.outcome.allowed)
            {
                let c = self.counters(r.name.as_str(), r.dimension.as_str());
                c.shadow_denied.fetch_add(1, Relaxed);
            }
        }
        let Some(rep) = d.reported() else {
            if d.allowed {
                self.unlimited.fetch_add(1, Relaxed);
            }
            return;
        };
        let c = self.counters(rep.name.as_str(), rep.dimension.as_str());
        match (d.allowed, d.reason) {
            (true, _) => {
                c.allowed.fetch_add(1, Relaxed);
                let limit = rep.limit.count();
                // used ≥ 80 % of the limit  <=>  remaining ≤ 20 %
                if rep.outcome.remaining.saturating_mul(5) <= limit {
                    c.near_limit.fetch_add(1, Relaxed);
                }
            }
            (false, Some(DenyReason::CostExceedsLimit)) => {
                c.cost_exceeds_limit.fetch_add(1, Relaxed);
            }
            (false, _) => {
                c.limited.fetch_add(1, Relaxed);
            }
        }
    }

    /// A store call failed.
    pub fn backend_error(&self) {
        self.backend_errors.fetch_add(1, Relaxed);
    }

    /// A decision taken by `fail_mode` after a backend error.
    pub fn fail_mode_decision(&self, open: bool) {
        if open {
            self.fail_open.fetch_add(1, Relaxed);
        } else {
            self.fail_closed.fetch_add(1, Relaxed);
        }
    }

    /// A request rejected with 400.
    pub fn bad_request(&self, e: Endpoint) {
        self.bad_requests[e as usize].fetch_add(1, Relaxed);
    }

    /// A request body that was not received in time.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A configuration reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reload_ok.fetch_add(1, Relaxed);
        } else {
            self.reload_failed.fetch_add(1, Relaxed);
        }
    }

    /// Latency of one decision.
    pub fn observe(&self, e: Endpoint, d: Duration) {
        self.latency[e as usize].observe(d);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &StoreFigures, backend: &str, generation: u64) -> String {
        let mut o = String::with_capacity(4096);
        let w = &mut o;
        let limits: Vec<(&'static str, &'static LimitCounters)> = {
            let mut v: Vec<_> = self.limits.load().iter().map(|(k, c)| (*k, *c)).collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v
        };
        head(w, "ratewall_decisions_total", "counter", "Decisions by the limit that decided them (the reported cell) and outcome; limit=\"none\" when no limit applied.");
        for (name, c) in &limits {
            let n = escape(name);
            for (outcome, v) in [
                ("allowed", &c.allowed),
                ("limited", &c.limited),
                ("cost_exceeds_limit", &c.cost_exceeds_limit),
            ] {
                let _ = writeln!(
                    w,
                    "ratewall_decisions_total{{limit=\"{n}\",dimension=\"{}\",outcome=\"{outcome}\"}} {}",
                    c.dimension,
                    v.load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            w,
            "ratewall_decisions_total{{limit=\"none\",dimension=\"none\",outcome=\"allowed\"}} {}",
            self.unlimited.load(Relaxed)
        );
        head(
            w,
            "ratewall_shadow_denials_total",
            "counter",
            "Requests a shadow limit would have denied (they were not denied for it).",
        );
        for (name, c) in &limits {
            let _ = writeln!(
                w,
                "ratewall_shadow_denials_total{{limit=\"{}\",dimension=\"{}\"}} {}",
                escape(name),
                c.dimension,
                c.shadow_denied.load(Relaxed)
            );
        }
        head(
            w,
            "ratewall_near_limit_total",
            "counter",
            "Allowed decisions whose limit was at least 80 % used.",
        );
        for (name, c) in &limits {
            let _ = writeln!(
                w,
                "ratewall_near_limit_total{{limit=\"{}\",dimension=\"{}\"}} {}",
                escape(name),
                c.dimension,
                c.near_limit.load(Relaxed)
            );
        }
        head(
            w,
            "ratewall_backend_errors_total",
            "counter",
            "Store calls that failed (connection, timeout, script).",
        );
        let _ = writeln!(
            w,
            "ratewall_backend_errors_total {}",
            self.backend_errors.load(Relaxed)
        );
        head(
            w,
            "ratewall_fail_mode_decisions_total",
            "counter",
            "Decisions taken by fail_mode after a backend error.",
        );
        let _ = writeln!(
            w,
            "ratewall_fail_mode_decisions_total{{fail_mode=\"open\"}} {}",
            self.fail_open.load(Relaxed)
        );
        let _ = writeln!(
            w,
            "ratewall_fail_mode_decisions_total{{fail_mode=\"closed\"}} {}",
            self.fail_closed.load(Relaxed)
        );
        head(
            w,
            "ratewall_evictions_total",
            "counter",
            "Live memory-store entries evicted because the store was full.",
        );
        let _ = writeln!(w, "ratewall_evictions_total {}", store.evictions);
        head(
            w,
            "ratewall_reclaimed_total",
            "counter",
            "Expired memory-store entries reclaimed.",
        );
        let _ = writeln!(w, "ratewall_reclaimed_total {}", store.reclaimed);
        if let Some(k) = store.keys {
            head(
                w,
                "ratewall_store_keys",
                "gauge",
                "Cells held by the memory store.",
            );
            let _ = writeln!(w, "ratewall_store_keys {k}");
        }
        head(
            w,
            "ratewall_negative_cache_hits_total",
            "counter",
            "Requests denied by the Redis store's negative cache without a round trip.",
        );
        let _ = writeln!(
            w,
            "ratewall_negative_cache_hits_total {}",
            store.negative_cache_hits
        );
        head(
            w,
            "ratewall_bad_requests_total",
            "counter",
            "Requests rejected with 400.",
        );
        for e in [Endpoint::Check, Endpoint::Authz] {
            let _ = writeln!(
                w,
                "ratewall_bad_requests_total{{endpoint=\"{}\"}} {}",
                e.name(),
                self.bad_requests[e as usize].load(Relaxed)
            );
        }
        head(
            w,
            "ratewall_request_timeouts_total",
            "counter",
            "Requests whose body did not arrive within request_timeout_ms.",
        );
        let _ = writeln!(
            w,
            "ratewall_request_timeouts_total {}",
            self.timeouts.load(Relaxed)
        );
        head(
            w,
            "ratewall_config_reloads_total",
            "counter",
            "Configuration reloads by result.",
        );
        let _ = writeln!(
            w,
            "ratewall_config_reloads_total{{result=\"ok\"}} {}",
            self.reload_ok.load(Relaxed)
        );
        let _ = writeln!(
            w,
            "ratewall_config_reloads_total{{result=\"rejected\"}} {}",
            self.reload_failed.load(Relaxed)
        );
        head(
            w,
            "ratewall_config_generation",
            "gauge",
            "Number of the running configuration (1 at start, +1 per applied reload).",
        );
        let _ = writeln!(w, "ratewall_config_generation {generation}");
        head(
            w,
            "ratewall_store_ready",
            "gauge",
            "1 when the store answered the last readiness probe.",
        );
        let _ = writeln!(
            w,
            "ratewall_store_ready{{backend=\"{backend}\"}} {}",
            u8::from(store.ready)
        );
        head(
            w,
            "ratewall_check_duration_seconds",
            "histogram",
            "Time to decide one request (plan + store), by endpoint.",
        );
        for e in [Endpoint::Check, Endpoint::Authz] {
            let h = &self.latency[e as usize];
            let mut cum = 0u64;
            for (i, b) in BUCKETS.iter().enumerate() {
                cum += h.buckets[i].load(Relaxed);
                let _ = writeln!(
                    w,
                    "ratewall_check_duration_seconds_bucket{{endpoint=\"{}\",le=\"{b}\"}} {cum}",
                    e.name()
                );
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(
                w,
                "ratewall_check_duration_seconds_bucket{{endpoint=\"{}\",le=\"+Inf\"}} {count}",
                e.name()
            );
            let _ = writeln!(
                w,
                "ratewall_check_duration_seconds_sum{{endpoint=\"{}\"}} {}",
                e.name(),
                h.sum_nanos.load(Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                w,
                "ratewall_check_duration_seconds_count{{endpoint=\"{}\"}} {count}",
                e.name()
            );
        }
        o
    }
}

fn head(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Escape a label value (`\`, `"`, newline).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
