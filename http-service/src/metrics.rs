//! Prometheus metrics through the `prometheus-client` crate (OpenMetrics text on `/metrics`).
//!
//! The hot path holds handles into the crate's families (one atomic add per counter, no label
//! lookup): per-rule counters for every checked cell ([`rules`]), the decision latency per
//! endpoint and the store-call latency per backend. Figures owned by the store (memory-store
//! keys, evictions, reclaims; Redis negative-cache hits; readiness) and process figures (CPU,
//! RSS, fds) are read at scrape time by collectors ([`scrape`]).
//!
//! Every label value is bounded: configured rule names (capped at [`MAX_LIMIT_SERIES`]),
//! dimension kinds, outcomes, endpoints, backends. No user, tenant or tool values from requests.
//! Names and labels: `docs/METRICS.md`.

pub mod rules;
pub mod scrape;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use ratewall_core::config::Plan;
use ratewall_core::decision::Decision;

pub use rules::MAX_LIMIT_SERIES;
pub use scrape::StoreFigures;

use crate::settings::NearLimitRatio;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket upper bounds, in seconds (50 µs .. 1 s).
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
    /// gRPC `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
    Rls = 2,
    /// gRPC `envoy.service.auth.v3.Authorization/Check` (ext_authz).
    GrpcAuthz = 3,
}

impl Endpoint {
    /// Every endpoint, in label order.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Check,
        Endpoint::Authz,
        Endpoint::Rls,
        Endpoint::GrpcAuthz,
    ];

    /// `check`, `authz`, `rls` or `grpc_authz`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Check => "check",
            Endpoint::Authz => "authz",
            Endpoint::Rls => "rls",
            Endpoint::GrpcAuthz => "grpc_authz",
        }
    }
}

/// The store backends, in label order.
const BACKENDS: [&str; 2] = ["memory", "redis"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailModeLabel {
    fail_mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `version`, and `git_sha` when the build set `RATEWALL_GIT_SHA` (else `unknown`).
pub fn build_labels() -> [(&'static str, &'static str); 2] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        (
            "git_sha",
            option_env!("RATEWALL_GIT_SHA").unwrap_or("unknown"),
        ),
    ]
}

/// All metrics of one process (they survive reloads).
pub struct Metrics {
    registry: Registry,
    rules: rules::Rules,
    backend_errors: Counter,
    fail_open: Counter,
    fail_closed: Counter,
    bad_requests: [Counter; Endpoint::ALL.len()],
    timeouts: Counter,
    reload_ok: Counter,
    reload_rejected: Counter,
    last_reload_ok: Gauge,
    last_reload_ok_at: Gauge,
    latency: [Histogram; Endpoint::ALL.len()],
    backend_latency: [Histogram; BACKENDS.len()],
    scrape: Arc<Mutex<scrape::Scrape>>,
    render_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, every fixed series created (so each shows from the first scrape).
    pub fn new() -> Self {
        let mut reg = Registry::default();
        let rules = rules::Rules::new(&mut reg);

        let backend_errors = Counter::default();
        reg.register(
            "ratewall_backend_errors",
            "Store calls that failed (connection, timeout, script).",
            backend_errors.clone(),
        );
        let fail_mode = Family::<FailModeLabel, Counter>::default();
        reg.register(
            "ratewall_fail_mode_decisions",
            "Decisions taken by fail_mode after a backend error.",
            fail_mode.clone(),
        );
        let fm = |m| {
            fail_mode
                .get_or_create(&FailModeLabel { fail_mode: m })
                .clone()
        };
        let (fail_open, fail_closed) = (fm("open"), fm("closed"));

        let bad = Family::<EndpointLabel, Counter>::default();
        reg.register(
            "ratewall_bad_requests",
            "Requests rejected with 400 (gRPC: refused requests).",
            bad.clone(),
        );
        let bad_requests = Endpoint::ALL.map(|e| {
            bad.get_or_create(&EndpointLabel { endpoint: e.name() })
                .clone()
        });
        let timeouts = Counter::default();
        reg.register(
            "ratewall_request_timeouts",
            "Requests whose body did not arrive within request_timeout_ms.",
            timeouts.clone(),
        );

        let reloads = Family::<ResultLabel, Counter>::default();
        reg.register(
            "ratewall_config_reloads",
            "Configuration reloads by result (ok, rejected: the running configuration stays).",
            reloads.clone(),
        );
        let rl = |r| reloads.get_or_create(&ResultLabel { result: r }).clone();
        let (reload_ok, reload_rejected) = (rl("ok"), rl("rejected"));
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        reg.register(
            "ratewall_config_last_reload_successful",
            "1 if the last configuration load (start-up or reload) was applied, 0 if rejected.",
            last_reload_ok.clone(),
        );
        let last_reload_ok_at = Gauge::default();
        last_reload_ok_at.set(unix_now());
        reg.register(
            "ratewall_config_last_reload_success_timestamp_seconds",
            "When the running configuration was applied (Unix seconds).",
            last_reload_ok_at.clone(),
        );

        let lat: HistogramFamily<EndpointLabel> = Family::new_with_constructor(histogram);
        reg.register(
            "ratewall_check_duration_seconds",
            "Time to decide one request (plan + store), by endpoint.",
            lat.clone(),
        );
        let latency = Endpoint::ALL.map(|e| {
            lat.get_or_create(&EndpointLabel { endpoint: e.name() })
                .clone()
        });
        let blat: HistogramFamily<BackendLabel> = Family::new_with_constructor(histogram);
        reg.register(
            "ratewall_backend_duration_seconds",
            "Time of one store call (one atomic decision over every cell of a request), by \
             backend; failed calls included.",
            blat.clone(),
        );
        let backend_latency =
            BACKENDS.map(|b| blat.get_or_create(&BackendLabel { backend: b }).clone());

        reg.register(
            "ratewall_build",
            "The running build (value 1).",
            Info::new(build_labels()),
        );
        let scrape = Arc::new(Mutex::new(scrape::Scrape::default()));
        reg.register_collector(Box::new(scrape::StoreCollector(scrape.clone())));
        reg.register_collector(Box::new(scrape::ProcessCollector));

        Self {
            registry: reg,
            rules,
            backend_errors,
            fail_open,
            fail_closed,
            bad_requests,
            timeouts,
            reload_ok,
            reload_rejected,
            last_reload_ok,
            last_reload_ok_at,
            latency,
            backend_latency,
            scrape,
            render_lock: Mutex::new(()),
        }
    }

    /// Count one store decision on `plan`: every checked cell ([`rules`]) and the deciding one.
    pub fn decision(&self, plan: &Plan, d: &Decision, near: NearLimitRatio) {
        self.rules.decision(plan, d, near);
    }

    /// A store call failed.
    pub fn backend_error(&self) {
        self.backend_errors.inc();
    }

    /// The time of one store call on `backend` (`memory` or `redis`).
    pub fn backend_call(&self, backend: &str, d: Duration) {
        let i = usize::from(backend == "redis");
        self.backend_latency[i].observe(d.as_secs_f64());
    }

    /// A decision taken by `fail_mode` after a backend error.
    pub fn fail_mode_decision(&self, open: bool) {
        if open {
            self.fail_open.inc();
        } else {
            self.fail_closed.inc();
        }
    }

    /// A request rejected with 400.
    pub fn bad_request(&self, e: Endpoint) {
        self.bad_requests[e as usize].inc();
    }

    /// A request body that was not received in time.
    pub fn timeout(&self) {
        self.timeouts.inc();
    }

    /// A configuration reload, applied (`ok`) or rejected.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reload_ok.inc();
            self.last_reload_ok.set(1);
            self.last_reload_ok_at.set(unix_now());
        } else {
            self.reload_rejected.inc();
            self.last_reload_ok.set(0);
        }
    }

    /// Latency of one decision.
    pub fn observe(&self, e: Endpoint, d: Duration) {
        self.latency[e as usize].observe(d.as_secs_f64());
    }

    /// The exposition ([`CONTENT_TYPE`]), with the store's figures as of now.
    pub fn render(&self, store: StoreFigures, backend: &'static str, generation: u64) -> String {
        // one scrape at a time: the collectors read what this one set
        let _guard = self.render_lock.lock();
        *self.scrape.lock() = scrape::Scrape {
            store,
            backend,
            generation,
        };
        let mut out = String::with_capacity(8192);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // writing to a String cannot fail; a collector's error ends the page early
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
