//! Configuration: one schema for every packaging.
//!
//! * [`document`] reads YAML and JSON text strictly (bounded size and depth, duplicate keys
//!   refused);
//! * [`schema`] mirrors the file (serde; unknown keys rejected with a suggestion);
//! * [`rate`] parses rate strings;
//! * [`descriptors`] loads envoyproxy/ratelimit configuration documents (RLS domains, core key
//!   `domains`) and plans RLS requests against them;
//! * [`batch`] merges the plans of a request's calls (an MCP batch) into one plan;
//! * [`compile`] validates everything once, at load time, into [`LimiterConfig`] and its
//!   [`Policy`], which the hot path uses without re-checking.
//!
//! Every error names the key and the offending value ([`ConfigError`]); nothing is silently
//! ignored or disabled.

pub mod batch;
pub mod compile;
#[cfg(feature = "descriptors")]
pub mod descriptors;
pub mod document;
pub mod rate;
pub mod schema;

pub use batch::{BatchCall, BatchError, BatchPlan, MAX_BATCH_CALLS};
pub use compile::{
    Backend, Cell, ClockSource, ContextError, DimensionKind, FailMode, HeaderFormat, LimiterConfig,
    Plan, Policy, PolicyName, RedisSettings, RequestContext,
};

use std::fmt;

/// A configuration error: where (`path`, e.g. `by_tool["echo"]`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key (or key path) at fault.
    pub path: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: if path.is_empty() || path == "." {
                "<root>".into()
            } else {
                path.to_string()
            },
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate limiter config: {}: {}",
            self.path, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Normalise a tool or prompt name: trim, then Unicode lowercase. Used at load time (for
/// `by_tool` keys) and at request time, so both sides always agree.
///
/// ```
/// assert_eq!(ratewall_core::normalize_name("  ÄPI_Tool "), "äpi_tool");
/// ```
pub fn normalize_name(name: &str) -> String {
    let t = name.trim();
    if t.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        t.to_string()
    } else {
        t.to_lowercase()
    }
}
