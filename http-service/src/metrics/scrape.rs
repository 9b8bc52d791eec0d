//! Figures read at scrape time, encoded by `prometheus-client` collectors: the store's own
//! counters and readiness, the configuration generation, and the process (CPU, memory, file
//! descriptors, threads, start time) through the `metrics-process` crate's collector.

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

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

/// What the scrape in progress reports (set just before encoding).
#[derive(Debug, Default, Clone, Copy)]
pub struct Scrape {
    /// The running store's figures.
    pub store: StoreFigures,
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// The configuration generation.
    pub generation: u64,
}

fn gauge(n: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn plain_gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = gauge(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The running store and configuration.
#[derive(Debug)]
pub struct StoreCollector(pub Arc<Mutex<Scrape>>);

impl Collector for StoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = *self.0.lock();
        let f = s.store;
        counter(
            &mut e,
            "ratewall_evictions",
            "Live memory-store entries evicted because the store was full.",
            f.evictions,
        )?;
        counter(
            &mut e,
            "ratewall_reclaimed",
            "Expired memory-store entries reclaimed.",
            f.reclaimed,
        )?;
        if let Some(k) = f.keys {
            plain_gauge(
                &mut e,
                "ratewall_store_keys",
                "Cells held by the memory store.",
                k,
            )?;
        }
        counter(
            &mut e,
            "ratewall_negative_cache_hits",
            "Requests denied by the Redis store's negative cache without a round trip.",
            f.negative_cache_hits,
        )?;
        plain_gauge(
            &mut e,
            "ratewall_config_generation",
            "Number of the running configuration (1 at start, +1 per applied reload).",
            s.generation,
        )?;
        let ready = gauge(u64::from(f.ready));
        let mut fam = e.encode_descriptor(
            "ratewall_store_ready",
            "1 when the store answered the last readiness probe.",
            None,
            ready.metric_type(),
        )?;
        ready.encode(fam.encode_family(&[("backend", s.backend)])?)
    }
}

/// The process's standard figures (`process_*`, as the official Go client names them).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = metrics_process::collector::collect();
        if let Some(cpu) = m.cpu_seconds_total {
            let c = ConstCounter::new(cpu);
            c.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                m.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                m.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                m.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (0: unlimited).",
                m.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                m.threads,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                m.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                plain_gauge(&mut e, name, help, v)?;
            }
        }
        Ok(())
    }
}
