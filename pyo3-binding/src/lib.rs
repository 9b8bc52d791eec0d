//! `ratewall._ratewall`: the Rust engine behind the gateway plugin `ratewall.gateway`.
//!
//! One call per hook: [`Engine::check`] (memory backend, with the GIL held: see its doc) or [`Engine::check_async`] (Redis backend: returns an asyncio
//! future resolved on the event loop's own thread; see [`completer`]). Both answer with the compact
//! tuple documented in [`convert`].
//!
//! Memory-backend counters are process-wide ([`registry`]): one bounded store per process, keyed
//! by cell (prefix, tenant, algorithm, window, dimension, identity), so the gateway's per-context
//! plugin instances, its 30 s rebuilds and configuration edits neither split nor reset a user's
//! quota, and nothing is kept per configuration.

mod compiled;
mod completer;
mod convert;
mod redis_backend;
mod registry;

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use ratewall_core::clock::{Clock, ManualClock as CoreManualClock};
use ratewall_core::config::{
    Backend, FailMode, HeaderFormat, LimiterConfig, Policy, RequestContext,
};
use ratewall_core::headers;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

use crate::completer::{Completer, RedisBackend};
use crate::convert::Answer;

/// A test clock shared with an [`Engine`] (`Engine(config, clock=ManualClock(...))`).
#[pyclass(frozen, module = "ratewall._ratewall")]
pub struct ManualClock {
    inner: Arc<CoreManualClock>,
}

#[pymethods]
impl ManualClock {
    #[new]
    #[pyo3(signature = (micros = 1_700_000_000_000_000))]
    fn new(micros: u64) -> PyResult<Self> {
        let nanos = micros
            .checked_mul(1_000)
            .ok_or_else(|| PyValueError::new_err("micros out of range"))?;
        Ok(Self {
            inner: Arc::new(CoreManualClock::new(nanos)),
        })
    }

    /// Microseconds since the epoch.
    fn now_micros(&self) -> u64 {
        self.inner.now_micros()
    }

    fn set_micros(&self, micros: u64) -> PyResult<()> {
        let nanos = micros
            .checked_mul(1_000)
            .ok_or_else(|| PyValueError::new_err("micros out of range"))?;
        self.inner.set_nanos(nanos);
        Ok(())
    }

    fn advance_micros(&self, micros: u64) -> PyResult<()> {
        let nanos = micros
            .checked_mul(1_000)
            .ok_or_else(|| PyValueError::new_err("micros out of range"))?;
        self.inner.advance_nanos(nanos);
        Ok(())
    }
}

enum StoreKind {
    Memory(Arc<MemoryStore>),
    Redis(RedisBackend),
}

/// The compiled policy and its store. Immutable; safe to share between threads.
#[pyclass(frozen, module = "ratewall._ratewall")]
pub struct Engine {
    policy: Policy,
    headers: HeaderFormat,
    fail_mode: FailMode,
    store: StoreKind,
    /// Memory backend: the bound of the store in use (the process-wide store's is the first
    /// engine's `memory_max_keys`, see [`registry`]); Redis: the configured value (unused).
    store_max_keys: usize,
    closed: Mutex<bool>,
    /// Release the GIL around the memory check (see [`Engine::check`]; off by default, kept so
    /// the benchmark can compare both in one run).
    release_gil: bool,
}

fn config_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

impl Engine {
    fn answer_memory(&self, store: &MemoryStore, ctx: &RequestContext<'_>) -> Answer {
        match self.policy.plan(ctx) {
            Err(e) => Answer::Context(e),
            Ok(plan) => match store.check(&plan) {
                Ok(d) => {
                    let h = headers::render(&d, self.headers);
                    Answer::Decided(d, h)
                }
                Err(e) => Answer::Backend(e),
            },
        }
    }
}

#[pymethods]
impl Engine {
    /// Validate `config_json` (the plugin's `config:` block as JSON) and attach the store:
    /// the process-wide memory store for these limits, a private one on `clock` (tests), or a
    /// Redis connection (made lazily, on the first check or on [`Engine::connect`]).
    #[new]
    #[pyo3(signature = (config_json, clock = None, release_gil = false))]
    fn new(config_json: &str, clock: Option<&ManualClock>, release_gil: bool) -> PyResult<Self> {
        let cfg = compiled::load(config_json).map_err(config_error)?.cfg;
        let mut store_max_keys = cfg.memory_max_keys;
        let store = match cfg.backend {
            Backend::Memory => StoreKind::Memory(match clock {
                Some(c) => {
                    let clk: Arc<dyn Clock> = c.inner.clone();
                    Arc::new(MemoryStore::new(cfg.memory_max_keys, clk))
                }
                None => {
                    let shared = registry::memory_store(cfg.memory_max_keys);
                    store_max_keys = shared.max_keys;
                    shared.store
                }
            }),
            Backend::Redis => StoreKind::Redis(RedisBackend::new(
                &cfg,
                clock.map(|c| c.inner.clone() as Arc<dyn Clock>),
            )?),
        };
        let LimiterConfig {
            policy,
            headers,
            fail_mode,
            ..
        } = cfg;
        Ok(Self {
            policy,
            headers,
            fail_mode,
            store,
            store_max_keys,
            closed: Mutex::new(false),
            release_gil,
        })
    }

    /// `"memory"` or `"redis"`.
    #[getter]
    fn backend(&self) -> &'static str {
        match self.store {
            StoreKind::Memory(_) => "memory",
            StoreKind::Redis(_) => "redis",
        }
    }

    /// Memory backend: the bound of the store in use. For the process-wide store this is the
    /// `memory_max_keys` of the first engine that created it, which may differ from this
    /// engine's own (the plugin then logs a WARN).
    #[getter]
    fn store_max_keys(&self) -> usize {
        self.store_max_keys
    }

    /// Whether `by_user_per_server` is configured.
    #[getter]
    fn per_server(&self) -> bool {
        self.policy.has_per_server()
    }

    /// Memory backend: check one request and consume its quota in every dimension or none.
    /// Returns `(code, headers, extra)` (see the `convert` module doc).
    ///
    /// The GIL is kept (unless the engine was built with `release_gil=True`): the core's work is
    /// ~0.3 µs of a ~2.5 µs hook, so releasing it buys at most ~10 % of parallelism, while every
    /// release hands the GIL to a waiting thread and the caller then queues to get it back (a
    /// futex wake-up and context switch per call). Measured with 4 threads sharing one plugin
    /// (docs/benchmarks/plugin.md): held, p99 ≤ 4 µs in every cell; released, p99 spikes of
    /// 15-311 µs and more CPU per call for no throughput gain. Holding the GIL is safe: the
    /// shard locks are only taken inside this call and never across Python code.
    #[pyo3(signature = (user, tenant, server, tool, per_server))]
    fn check<'py>(
        &self,
        py: Python<'py>,
        user: Option<&str>,
        tenant: Option<&str>,
        server: Option<&str>,
        tool: Option<&str>,
        per_server: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let StoreKind::Memory(store) = &self.store else {
            return Err(PyRuntimeError::new_err(
                "this engine uses the Redis backend: call check_async",
            ));
        };
        let ctx = RequestContext {
            user,
            tenant,
            server,
            per_server,
            tool,
            descriptors: &[],
            cost: 1,
        };
        let answer = if self.release_gil {
            py.detach(|| self.answer_memory(store, &ctx))
        } else {
            self.answer_memory(store, &ctx)
        };
        convert::to_python(py, &answer, self.fail_mode)
    }

    /// Redis backend: start one check and return an asyncio future (of the same tuple as
    /// [`Engine::check`]) that `completer` resolves on its event loop. Never blocks the loop.
    #[pyo3(signature = (completer, user, tenant, server, tool, per_server))]
    #[allow(clippy::too_many_arguments)]
    fn check_async<'py>(
        &self,
        py: Python<'py>,
        completer: &Bound<'py, Completer>,
        user: Option<&str>,
        tenant: Option<&str>,
        server: Option<&str>,
        tool: Option<&str>,
        per_server: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ctx = RequestContext {
            user,
            tenant,
            server,
            per_server,
            tool,
            descriptors: &[],
            cost: 1,
        };
        match &self.store {
            StoreKind::Redis(r) => {
                let plan = self.policy.plan(&ctx);
                completer::submit(py, completer, r, plan, self.headers, self.fail_mode)
            }
            StoreKind::Memory(store) => {
                // Allowed for symmetry: answer at once through a finished future.
                let answer = self.answer_memory(store, &ctx);
                let t = convert::to_python(py, &answer, self.fail_mode)?;
                completer::ready(py, completer, t.into_any())
            }
        }
    }

    /// Redis backend: connect now (instead of on the first check). Returns a future resolving to
    /// `None` on success or the error message.
    fn connect<'py>(
        &self,
        py: Python<'py>,
        completer: &Bound<'py, Completer>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match &self.store {
            StoreKind::Redis(r) => completer::connect(py, completer, r),
            StoreKind::Memory(_) => completer::ready(py, completer, py.None().into_bound(py)),
        }
    }

    /// Release connections (Redis). Memory counters are process-wide and are kept.
    fn close(&self) {
        let mut closed = self.closed.lock();
        if !*closed {
            *closed = true;
            if let StoreKind::Redis(r) = &self.store {
                r.close();
            }
        }
    }

    /// Memory backend: `(keys, reclaimed, evictions)` of the store; Redis: round trips so far.
    fn stats(&self) -> (u64, u64, u64) {
        match &self.store {
            StoreKind::Memory(m) => {
                let s = m.stats();
                (s.keys, s.reclaimed, s.evictions)
            }
            StoreKind::Redis(r) => r.stats(),
        }
    }
}

/// Validate a plugin config (JSON text) and describe the compiled policy as JSON text: limits per
/// dimension (as the core compiled them), key prefix, algorithm, header format, fail mode, backend,
/// Redis settings, the plugin's own keys (`extra`) and the unknown keys ignored (`ignored`, and
/// `ignored_note` naming them with a likely correction; see [`compiled::load`]). Raises
/// `ValueError` naming the key and value.
#[pyfunction]
fn compile_config(config_json: &str) -> PyResult<String> {
    let loaded = compiled::load(config_json).map_err(config_error)?;
    Ok(compiled::describe(&loaded).to_string())
}

/// The Redis script of the core's Redis store (empty when built without Redis support).
#[pyfunction]
fn redis_script() -> &'static str {
    completer::SCRIPT
}

#[pymodule]
fn _ratewall(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<ManualClock>()?;
    m.add_class::<Completer>()?;
    m.add_function(wrap_pyfunction!(compile_config, m)?)?;
    m.add_function(wrap_pyfunction!(redis_script, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PLUGIN_KEYS", compiled::PLUGIN_KEYS.to_vec())?;
    Ok(())
}
