//! Async checks without blocking the event loop and without Python on foreign threads.
//!
//! A [`Completer`] belongs to one asyncio event loop. [`submit`] plans the request (with the GIL,
//! it is a few hundred ns), creates a future on that loop, and hands the plan to a tokio task on
//! the process's I/O runtime. The task talks to Redis, renders the headers, pushes the plain-Rust
//! answer onto the completer's queue and writes one byte to a socketpair, only if no wake-up is
//! pending. The loop watches the other end (`loop.add_reader(completer.fileno(),
//! completer.drain)`): `drain` runs on the loop's own thread, with the GIL, and resolves every
//! finished future in one batch.
//!
//! Consequences:
//! * the tokio threads never touch a Python object or the GIL: no GIL hand-off per completion, no
//!   `PyGILState` calls during interpreter finalization (the crash the peer has at exit);
//! * 64 concurrent hooks share one multiplexed Redis connection, and completions that arrive
//!   together cost one wake-up;
//! * a cancelled awaiter is harmless (its future is skipped when done).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use ratewall_core::config::{ContextError, FailMode, HeaderFormat, Plan};

use crate::convert::{self, Answer};

pub use crate::redis_backend::{RedisBackend, SCRIPT};

/// What a finished task delivers.
#[allow(clippy::large_enum_variant)]
pub enum Payload {
    Answer(Answer, FailMode),
    Connected(Result<(), String>),
}

/// The part of a completer that tokio tasks hold: plain Rust only.
pub struct Shared {
    queue: Mutex<Vec<(u64, Payload)>>,
    signaled: AtomicBool,
    writer: UnixStream,
}

impl Shared {
    /// Deliver a result and wake the loop (one byte per batch).
    pub fn push(&self, id: u64, payload: Payload) {
        self.queue.lock().push((id, payload));
        if !self.signaled.swap(true, Ordering::AcqRel) {
            // A full socket buffer cannot happen (one byte per pending wake-up); any other error
            // means the completer is gone, and nobody waits any more.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// The I/O runtime shared by every engine of the process.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ratewall-io")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the ratewall I/O runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Resolves futures of one event loop. See the module doc.
#[pyclass(frozen, module = "ratewall._ratewall")]
pub struct Completer {
    shared: Arc<Shared>,
    reader: UnixStream,
    create_future: Py<PyAny>,
    pending: Mutex<HashMap<u64, Py<PyAny>>>,
    next_id: AtomicU64,
}

#[pymethods]
impl Completer {
    /// A completer for `event_loop`. The caller registers
    /// `event_loop.add_reader(c.fileno(), c.drain)`.
    #[new]
    fn new(event_loop: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair().map_err(|e| PyOSError::new_err(e.to_string()))?;
        reader
            .set_nonblocking(true)
            .and_then(|_| writer.set_nonblocking(true))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Vec::new()),
                signaled: AtomicBool::new(false),
                writer,
            }),
            reader,
            create_future: event_loop.getattr("create_future")?.unbind(),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The descriptor to watch for readability.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Futures not resolved yet.
    fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Resolve every finished future (called by the event loop when `fileno()` is readable).
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let mut buf = [0u8; 64];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.shared.signaled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *self.shared.queue.lock());
        for (id, payload) in batch {
            let Some(fut) = self.pending.lock().remove(&id) else {
                continue;
            };
            let fut = fut.into_bound(py);
            if fut.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                continue; // cancelled by its awaiter
            }
            let value = match &payload {
                Payload::Answer(a, fail_mode) => convert::to_python(py, a, *fail_mode)?.into_any(),
                Payload::Connected(Ok(())) => py.None().into_bound(py),
                Payload::Connected(Err(e)) => e.as_str().into_pyobject(py)?.into_any(),
            };
            fut.call_method1(pyo3::intern!(py, "set_result"), (value,))?;
        }
        Ok(())
    }
}

impl Completer {
    fn register<'py>(&self, py: Python<'py>) -> PyResult<(u64, Bound<'py, PyAny>)> {
        let fut = self.create_future.bind(py).call0()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(id, fut.clone().unbind());
        Ok((id, fut))
    }
}

/// A future already holding `value`.
pub fn ready<'py>(
    py: Python<'py>,
    completer: &Bound<'py, Completer>,
    value: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let fut = completer.get().create_future.bind(py).call0()?;
    fut.call_method1(pyo3::intern!(py, "set_result"), (value,))?;
    Ok(fut)
}

/// Start a Redis check for `plan`; see the module doc.
pub fn submit<'py>(
    py: Python<'py>,
    completer: &Bound<'py, Completer>,
    backend: &RedisBackend,
    plan: Result<Plan, ContextError>,
    headers: HeaderFormat,
    fail_mode: FailMode,
) -> PyResult<Bound<'py, PyAny>> {
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            let t = convert::to_python(py, &Answer::Context(e), fail_mode)?;
            return ready(py, completer, t.into_any());
        }
    };
    let c = completer.get();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let a = Answer::Backend(ratewall_core::store::StoreError::permanent(e));
            return ready(
                py,
                completer,
                convert::to_python(py, &a, fail_mode)?.into_any(),
            );
        }
    };
    let (id, fut) = c.register(py)?;
    let shared = c.shared.clone();
    let inner = backend.inner();
    rt.spawn(async move {
        let answer = inner.check(plan, headers).await;
        shared.push(id, Payload::Answer(answer, fail_mode));
    });
    Ok(fut)
}

/// Connect now; the future resolves to `None` or the error message.
pub fn connect<'py>(
    py: Python<'py>,
    completer: &Bound<'py, Completer>,
    backend: &RedisBackend,
) -> PyResult<Bound<'py, PyAny>> {
    let c = completer.get();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return ready(py, completer, e.into_pyobject(py)?.into_any()),
    };
    let (id, fut) = c.register(py)?;
    let shared = c.shared.clone();
    let inner = backend.inner();
    rt.spawn(async move {
        let r = inner.connect().await.map(|_| ()).map_err(|e| e.message);
        shared.push(id, Payload::Connected(r));
    });
    Ok(fut)
}
