//! Decisions to Python values: the compact answer of one hook call.
//!
//! Every check returns a 3-tuple `(code, headers, extra)`:
//!
//! | code | meaning | headers | extra |
//! |---|---|---|---|
//! | 0 | allowed, no limit applies | `None` | `None` |
//! | 1 | allowed | `dict` (or `None` with `headers: none`) | `None`, or details `dict` when a shadow limit would have denied (`shadow_denied: true`) |
//! | 2 | denied (`RATE_LIMIT`, 429) | `dict` | details `dict` |
//! | 3 | backend failed, `fail_mode: closed` (503) | `{"Retry-After": "1"}` | error `str` |
//! | 4 | backend failed, `fail_mode: open` (allowed) | `None` | error `str` |
//! | 5 | context unusable (503 `RATE_LIMIT_CONTEXT_MISSING`) | `None` | `(field, message)` |
//!
//! The headers are exactly [`ratewall_core::headers::render`]'s; the Python side never formats one.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use ratewall_core::config::{ContextError, FailMode};
use ratewall_core::decision::Decision;
use ratewall_core::headers::Headers;
use ratewall_core::store::StoreError;

pub const ALLOWED_UNLIMITED: u8 = 0;
pub const ALLOWED: u8 = 1;
pub const DENIED: u8 = 2;
pub const BACKEND_CLOSED: u8 = 3;
pub const BACKEND_OPEN: u8 = 4;
pub const CONTEXT_ERROR: u8 = 5;

/// What Rust computed without the GIL.
// Kept unboxed: it lives on the stack for one call, and boxing would add an allocation per check.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    Decided(Decision, Headers),
    Backend(StoreError),
    Context(ContextError),
}

fn headers_dict<'py>(py: Python<'py>, h: &Headers) -> PyResult<Option<Bound<'py, PyDict>>> {
    if h.is_empty() {
        return Ok(None);
    }
    let d = PyDict::new(py);
    for (name, value) in h {
        d.set_item(pyo3::types::PyString::intern(py, name), value)?;
    }
    Ok(Some(d))
}

/// Per-dimension details of a denial, or of an allowed request some shadow limit would have
/// denied (no identities: only policy names, limits and timings).
fn details<'py>(py: Python<'py>, d: &Decision) -> PyResult<Bound<'py, PyDict>> {
    let violated = PyList::empty(py);
    let allowed = PyList::empty(py);
    for r in &d.dimensions {
        let e = PyDict::new(py);
        e.set_item("dimension", r.dimension.as_str())?;
        e.set_item("policy", &*r.name)?;
        e.set_item("limit", r.limit.count())?;
        e.set_item("window", r.limit.window_secs())?;
        e.set_item("remaining", r.outcome.remaining)?;
        e.set_item("shadow", r.shadow)?;
        e.set_item("reset_in", r.reset_in_secs(d.now))?;
        if r.outcome.allowed {
            allowed.append(e)?;
        } else {
            violated.append(e)?;
        }
    }
    let dims = PyDict::new(py);
    dims.set_item("violated", violated)?;
    dims.set_item("allowed", allowed)?;
    let out = PyDict::new(py);
    out.set_item("limited", !d.allowed)?;
    out.set_item("shadow_denied", d.shadow_denied)?;
    out.set_item("reason", d.reason.map(|r| r.as_str()))?;
    out.set_item("remaining", d.remaining())?;
    out.set_item("reset_in", d.retry_after_secs)?;
    out.set_item("dimensions", dims)?;
    Ok(out)
}

/// Turn an answer into the `(code, headers, extra)` tuple.
pub fn to_python<'py>(
    py: Python<'py>,
    answer: &Answer,
    fail_mode: FailMode,
) -> PyResult<Bound<'py, PyTuple>> {
    let none = py.None().into_bound(py);
    match answer {
        Answer::Decided(d, h) if d.allowed => {
            if d.dimensions.is_empty() {
                PyTuple::new(
                    py,
                    [
                        ALLOWED_UNLIMITED.into_pyobject(py)?.into_any(),
                        none.clone(),
                        none,
                    ],
                )
            } else {
                let hd = match headers_dict(py, h)? {
                    Some(x) => x.into_any(),
                    None => none.clone(),
                };
                let extra = if d.shadow_denied {
                    details(py, d)?.into_any()
                } else {
                    none
                };
                PyTuple::new(py, [ALLOWED.into_pyobject(py)?.into_any(), hd, extra])
            }
        }
        Answer::Decided(d, h) => {
            let hd = match headers_dict(py, h)? {
                Some(x) => x.into_any(),
                None => none,
            };
            PyTuple::new(
                py,
                [
                    DENIED.into_pyobject(py)?.into_any(),
                    hd,
                    details(py, d)?.into_any(),
                ],
            )
        }
        Answer::Backend(e) => {
            let msg = e.message.as_str().into_pyobject(py)?.into_any();
            match fail_mode {
                FailMode::Closed => {
                    // The core's rendering of a BackendUnavailable decision (`Retry-After: 1`);
                    // the 503 keeps it whatever the `headers` flavour, as the peer's does.
                    let rendered = ratewall_core::headers::render(
                        &ratewall_core::Decision::backend_unavailable(0),
                        ratewall_core::config::HeaderFormat::Legacy,
                    );
                    let hd = PyDict::new(py);
                    for (name, value) in &rendered {
                        hd.set_item(*name, value)?;
                    }
                    PyTuple::new(
                        py,
                        [
                            BACKEND_CLOSED.into_pyobject(py)?.into_any(),
                            hd.into_any(),
                            msg,
                        ],
                    )
                }
                FailMode::Open => {
                    PyTuple::new(py, [BACKEND_OPEN.into_pyobject(py)?.into_any(), none, msg])
                }
            }
        }
        Answer::Context(e) => {
            let extra = (e.field(), e.to_string()).into_pyobject(py)?.into_any();
            PyTuple::new(
                py,
                [CONTEXT_ERROR.into_pyobject(py)?.into_any(), none, extra],
            )
        }
    }
}
