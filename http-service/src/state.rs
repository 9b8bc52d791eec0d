//! Shared state: the running configuration with its store (swapped atomically on reload), the
//! process's one memory store, and the metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ratewall_core::clock::{Clock, SystemClock};
use ratewall_core::config::descriptors::DomainSet;
use ratewall_core::config::{Backend, FailMode, Plan};
use ratewall_core::decision::Decision;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::{Store, StoreError};
use ratewall_core::throttle::LogThrottle;

use crate::metrics::{Metrics, StoreFigures};
use crate::settings::Loaded;

/// The store behind the running configuration.
#[derive(Clone)]
pub enum StoreHandle {
    /// The process's memory store.
    Memory(Arc<MemoryStore>),
    /// A Redis store.
    #[cfg(feature = "redis")]
    Redis(Arc<ratewall_core::store::redis::RedisStore>),
}

impl StoreHandle {
    /// Decide one plan.
    pub async fn check(&self, plan: &Plan) -> Result<Decision, StoreError> {
        match self {
            StoreHandle::Memory(m) => m.check(plan),
            #[cfg(feature = "redis")]
            StoreHandle::Redis(r) => r.check(plan).await,
        }
    }

    /// Whether the store answers (memory: always).
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        match self {
            StoreHandle::Memory(_) => {
                let _ = timeout;
                Ok(())
            }
            #[cfg(feature = "redis")]
            StoreHandle::Redis(r) => match tokio::time::timeout(timeout, r.ping()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            },
        }
    }

    /// `memory` or `redis`.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreHandle::Memory(_) => "memory",
            #[cfg(feature = "redis")]
            StoreHandle::Redis(_) => "redis",
        }
    }

    fn figures(&self) -> StoreFigures {
        match self {
            StoreHandle::Memory(m) => {
                let s = m.stats();
                StoreFigures {
                    keys: Some(s.keys),
                    evictions: s.evictions,
                    reclaimed: s.reclaimed,
                    negative_cache_hits: 0,
                    ready: true,
                }
            }
            #[cfg(feature = "redis")]
            StoreHandle::Redis(r) => {
                let s = r.stats();
                StoreFigures {
                    keys: None,
                    evictions: 0,
                    reclaimed: 0,
                    negative_cache_hits: s.negative_cache_hits,
                    ready: true,
                }
            }
        }
    }
}

/// One running configuration.
pub struct Runtime {
    /// Validated configuration.
    pub loaded: Loaded,
    /// Its store.
    pub store: StoreHandle,
    /// 1 at start, +1 per applied reload.
    pub generation: u64,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file (`None`: the built-in default policy).
    pub path: Option<PathBuf>,
    /// `RATEWALL_REDIS_URL`.
    pub redis_url: Option<String>,
}

impl ConfigSource {
    /// Read and validate the configuration.
    pub fn load(&self) -> Result<Loaded, String> {
        let text = match &self.path {
            None => crate::settings::DEFAULT_POLICY.to_string(),
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        };
        let mut loaded =
            Loaded::from_yaml(&text, self.redis_url.as_deref()).map_err(|e| e.to_string())?;
        if let Some(dir) = self.descriptor_path(&loaded) {
            let docs = crate::descriptor_files::read(&dir)?;
            let refs: Vec<(&str, &str)> =
                docs.iter().map(|(o, t)| (o.as_str(), t.as_str())).collect();
            let set = DomainSet::from_documents(&refs).map_err(|e| e.to_string())?;
            loaded.limiter = loaded
                .limiter
                .with_domains(set)
                .map_err(|e| e.to_string())?;
            // the file's own limits and the descriptor files' rules together must limit something
            loaded
                .limiter
                .require_limits(false)
                .map_err(|e| e.to_string())?;
        }
        Ok(loaded)
    }

    /// `descriptor_config` of `loaded`, resolved against the config file's directory.
    pub fn descriptor_path(&self, loaded: &Loaded) -> Option<PathBuf> {
        let p = loaded.service.descriptor_config.as_ref()?;
        Some(crate::descriptor_files::resolve(p, self.path.as_deref()))
    }
}

/// Everything the handlers share.
pub struct AppState {
    runtime: ArcSwap<Runtime>,
    memory: parking_lot::Mutex<Option<Arc<MemoryStore>>>,
    clock: Arc<dyn Clock>,
    reload_lock: tokio::sync::Mutex<()>,
    /// Store-error lines (one per failed request otherwise): at most one a second.
    fail_log: LogThrottle,
    /// Metrics (process lifetime).
    pub metrics: Metrics,
    /// Where reloads read from.
    pub source: ConfigSource,
}

impl AppState {
    /// Build the state for a validated configuration, connecting to its store.
    pub async fn new(loaded: Loaded, source: ConfigSource) -> Result<Arc<Self>, String> {
        Self::with_clock(loaded, source, Arc::new(SystemClock::new())).await
    }

    /// [`AppState::new`] with an injected clock for the memory store.
    pub async fn with_clock(
        loaded: Loaded,
        source: ConfigSource,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let memory = parking_lot::Mutex::new(None);
        let store = open_store(&loaded, None, &memory, &clock).await?;
        Ok(Arc::new(Self {
            runtime: ArcSwap::from_pointee(Runtime {
                loaded,
                store,
                generation: 1,
            }),
            memory,
            clock,
            reload_lock: tokio::sync::Mutex::new(()),
            fail_log: LogThrottle::per_second(),
            metrics: Metrics::default(),
            source,
        }))
    }

    /// The running configuration.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The running configuration for the span of one request: no shared reference count is
    /// touched (arc-swap's per-thread debt slots), so concurrent requests do not contend on it.
    pub fn runtime_guard(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Now, in µs since the epoch.
    pub fn now_micros(&self) -> u64 {
        self.clock.now_micros()
    }

    /// Decide a plan with the running store, applying `fail_mode` on a store error.
    pub async fn decide(&self, rt: &Runtime, plan: &Plan) -> Decision {
        // Both stores bound their own time (memory: synchronous; Redis: `redis_timeout_ms` in
        // total, failing fast while disconnected), so no timer is armed here.
        let start = std::time::Instant::now();
        let res = rt.store.check(plan).await;
        self.metrics
            .backend_call(rt.store.backend(), start.elapsed());
        match res {
            Ok(d) => {
                self.metrics
                    .decision(plan, &d, rt.loaded.service.near_limit_ratio);
                d
            }
            Err(e) => {
                self.metrics.backend_error();
                let open = rt.loaded.limiter.fail_mode == FailMode::Open;
                self.metrics.fail_mode_decision(open);
                let now = self.now_micros();
                if let Some(suppressed) = self.fail_log.permit(now) {
                    tracing::warn!(
                        error = %e,
                        transient = e.transient,
                        fail_mode = if open { "open" } else { "closed" },
                        suppressed,
                        "store error (at most one line a second; `suppressed` counts the others)"
                    );
                }
                if open {
                    Decision::unlimited(now)
                } else {
                    Decision::backend_unavailable(now)
                }
            }
        }
    }

    /// Validate the configuration source again and, if valid, switch to it. A bad file keeps the
    /// running configuration (the error is returned and logged by the caller).
    pub async fn reload(&self) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        let result = self.reload_locked().await;
        self.metrics.reload(result.is_ok());
        result
    }

    async fn reload_locked(&self) -> Result<u64, String> {
        let loaded = self.source.load()?;
        let current = self.runtime();
        if loaded.service.listen != current.loaded.service.listen {
            tracing::warn!("`listen` changed: takes effect at the next restart");
        }
        if loaded.service.grpc_listen != current.loaded.service.grpc_listen {
            tracing::warn!("`grpc_listen` changed: takes effect at the next restart");
        }
        if loaded.limiter.memory_max_keys != current.loaded.limiter.memory_max_keys
            && loaded.limiter.backend == Backend::Memory
        {
            tracing::warn!(
                "`memory_max_keys` changed: the memory store keeps its size (and its counters) until the next restart"
            );
        }
        let store = open_store(&loaded, Some(&current), &self.memory, &self.clock).await?;
        let generation = current.generation + 1;
        self.runtime.store(Arc::new(Runtime {
            loaded,
            store,
            generation,
        }));
        Ok(generation)
    }

    /// Probe the running store.
    pub async fn ready(&self) -> Result<&'static str, (&'static str, String)> {
        let rt = self.runtime();
        let timeout = rt
            .loaded
            .service
            .request_timeout
            .min(Duration::from_secs(2));
        match rt.store.ping(timeout).await {
            Ok(()) => Ok(rt.store.backend()),
            Err(e) => Err((rt.store.backend(), e)),
        }
    }

    /// The `/metrics` page.
    pub async fn render_metrics(&self) -> String {
        let rt = self.runtime();
        let mut figures = rt.store.figures();
        figures.ready = self.ready().await.is_ok();
        self.metrics
            .render(figures, rt.store.backend(), rt.generation)
    }
}

/// The store for `loaded`: the process's memory store (created once), or a Redis store (reused
/// when the running one has the same settings).
async fn open_store(
    loaded: &Loaded,
    current: Option<&Runtime>,
    memory: &parking_lot::Mutex<Option<Arc<MemoryStore>>>,
    clock: &Arc<dyn Clock>,
) -> Result<StoreHandle, String> {
    match loaded.limiter.backend {
        Backend::Memory => {
            let mut slot = memory.lock();
            let store = slot
                .get_or_insert_with(|| {
                    Arc::new(MemoryStore::new(
                        loaded.limiter.memory_max_keys,
                        clock.clone(),
                    ))
                })
                .clone();
            Ok(StoreHandle::Memory(store))
        }
        Backend::Redis => open_redis(loaded, current).await,
    }
}

#[cfg(feature = "redis")]
async fn open_redis(loaded: &Loaded, current: Option<&Runtime>) -> Result<StoreHandle, String> {
    use ratewall_core::store::redis::RedisStore;
    let settings = loaded
        .limiter
        .redis
        .as_ref()
        .ok_or_else(|| "backend redis without redis settings".to_string())?;
    if let Some(rt) = current {
        if let (StoreHandle::Redis(r), Some(old)) = (&rt.store, &rt.loaded.limiter.redis) {
            if old == settings
                && rt.loaded.limiter.policy.prefix() == loaded.limiter.policy.prefix()
            {
                return Ok(StoreHandle::Redis(r.clone()));
            }
        }
    }
    let store = RedisStore::connect(settings).await.map_err(|e| {
        format!(
            "cannot connect to Redis at {}: {e}",
            ratewall_core::config::compile::redact(&settings.url)
        )
    })?;
    Ok(StoreHandle::Redis(Arc::new(store)))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_loaded: &Loaded, _current: Option<&Runtime>) -> Result<StoreHandle, String> {
    Err("backend \"redis\" is not available in this build (feature `redis` is off)".to_string())
}
