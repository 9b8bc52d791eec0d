//! The Redis backend: the core's [`RedisStore`] on the process's I/O runtime, connected lazily
//! (on [`Inner::connect`] or the first check) and released by [`RedisBackend::close`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use ratewall_core::clock::Clock;
use ratewall_core::config::{HeaderFormat, LimiterConfig, Plan, RedisSettings};
use ratewall_core::headers;
use ratewall_core::store::redis::RedisStore;
use ratewall_core::store::StoreError;

use crate::convert::Answer;

/// The core's Redis script (the pure-Python engine runs the same text).
pub use ratewall_core::store::redis::SCRIPT;

pub struct Inner {
    settings: RedisSettings,
    /// Test clock: checks run at its instant (`check_at`) instead of the configured clock.
    clock: Option<Arc<dyn Clock>>,
    slot: Mutex<Option<Result<RedisStore, StoreError>>>,
    connecting: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl Inner {
    fn closed_error() -> StoreError {
        StoreError::permanent("the rate limiter was shut down")
    }

    fn current(&self) -> Option<Result<RedisStore, StoreError>> {
        self.slot.lock().clone()
    }

    /// The store, connecting once. `RedisStore::connect` only fails on a permanent problem
    /// (TLS files, URL); an unreachable Redis gives a store that fails fast and reconnects.
    pub async fn connect(&self) -> Result<RedisStore, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        if let Some(r) = self.current() {
            return r;
        }
        let _guard = self.connecting.lock().await;
        if let Some(r) = self.current() {
            return r;
        }
        let r = RedisStore::connect(&self.settings).await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        *self.slot.lock() = Some(r.clone());
        r
    }

    pub async fn check(&self, plan: Plan, format: HeaderFormat) -> Answer {
        let store = match self.connect().await {
            Ok(s) => s,
            Err(e) => return Answer::Backend(e),
        };
        let result = match &self.clock {
            Some(c) => store.check_at(&plan, c.now_micros()).await,
            None => store.check(&plan).await,
        };
        match result {
            Ok(d) => {
                let h = headers::render(&d, format);
                Answer::Decided(d, h)
            }
            Err(e) => Answer::Backend(e),
        }
    }
}

pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl RedisBackend {
    pub fn new(cfg: &LimiterConfig, clock: Option<Arc<dyn Clock>>) -> PyResult<Self> {
        let settings = cfg.redis.clone().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(
                "invalid rate limiter config: redis_url: is required when backend is \"redis\"",
            )
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                clock,
                slot: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    pub fn inner(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Drop this engine's handle on the connection (in-flight checks finish first).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let old = self.inner.slot.lock().take();
        drop(old);
    }

    /// `(round_trips, script_calls, errors)`.
    pub fn stats(&self) -> (u64, u64, u64) {
        match self.inner.current() {
            Some(Ok(s)) => {
                let st = s.stats();
                (st.round_trips, st.script_calls, st.errors)
            }
            _ => (0, 0, 0),
        }
    }
}
