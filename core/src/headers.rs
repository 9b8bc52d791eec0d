//! The one header renderer: every packaging emits exactly what [`render`] returns.
//!
//! * `legacy` (default): `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
//!   (absolute Unix seconds, rounded up) and, when denied, `Retry-After` (delta seconds, ≥ 1).
//! * `ietf`: `RateLimit-Policy` and `RateLimit` as structured fields, in the syntax of
//!   draft-ietf-httpapi-ratelimit-headers-10 (September 2025; introduced in -08). Revision -11
//!   (May 2026) is the newest; its text could not be re-checked here, so verify it before relying
//!   on a change there:
//!   `RateLimit-Policy: "by_user";q=100;w=60, "tool:echo";q=5;w=1` lists every policy that applied
//!   and `RateLimit: "by_user";r=42;t=17` gives the remaining quota `r` and seconds to reset `t` of
//!   the reported one; plus `Retry-After` when denied.
//! * `both`: the legacy set then the IETF set (one `Retry-After`). `none`: nothing.
//!
//! Shadow cells ([`crate::decision`]): the headers describe the enforced cells only (a shadow
//! cell is not listed in `RateLimit-Policy` and is never the reported one), so a client is never
//! told about a limit that cannot stop it. When every cell is shadow they describe the would-be
//! decision: the would-be reported cell's limit, remaining and reset, and no `Retry-After` (the
//! request is allowed).
//!
//! Consistency: when denied, `t` equals `Retry-After` and `X-RateLimit-Reset` is
//! `ceil(now + Retry-After)`, so no header ever invites a retry before `Retry-After`. A backend
//! failure with `fail_mode: closed` renders only `Retry-After: 1`; a request no limit applies to
//! renders nothing.

use std::fmt::Write;

use crate::config::HeaderFormat;
use crate::decision::{ceil_secs, Decision, DenyReason};

/// Every header name [`render`] can produce (front ends that relay rendered headers from another
/// process, e.g. the Envoy filter in remote mode, accept these and nothing else).
pub const NAMES: [&str; 6] = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
    "Retry-After",
];

/// Header name and value pairs, in a stable order.
pub type Headers = Vec<(&'static str, String)>;

/// Render the headers for `decision` in `format`.
pub fn render(decision: &Decision, format: HeaderFormat) -> Headers {
    let mut out = Headers::new();
    if format == HeaderFormat::None {
        return out;
    }
    if decision.reason == Some(DenyReason::BackendUnavailable) {
        out.push(("Retry-After", "1".to_string()));
        return out;
    }
    let Some(rep) = decision.reported() else {
        return out;
    };
    let reset_at = decision.reset_at().unwrap_or(decision.now);
    let remaining = rep.outcome.remaining;
    if matches!(format, HeaderFormat::Legacy | HeaderFormat::Both) {
        out.push(("X-RateLimit-Limit", rep.limit.count().to_string()));
        out.push(("X-RateLimit-Remaining", remaining.to_string()));
        out.push(("X-RateLimit-Reset", ceil_secs(reset_at).to_string()));
    }
    if matches!(format, HeaderFormat::Ietf | HeaderFormat::Both) {
        let mut policy = String::new();
        let all_shadow = decision.dimensions.iter().all(|d| d.shadow);
        for d in decision
            .dimensions
            .iter()
            .filter(|d| all_shadow || !d.shadow)
        {
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            let _ = write!(
                policy,
                "\"{}\";q={};w={}",
                d.name,
                d.limit.count(),
                d.limit.window_secs()
            );
        }
        out.push(("RateLimit-Policy", policy));
        let t = match decision.retry_after_secs {
            Some(s) if !decision.allowed => s,
            _ => ceil_secs(reset_at.saturating_sub(decision.now)),
        };
        out.push((
            "RateLimit",
            format!("\"{}\";r={};t={}", rep.name, remaining, t),
        ));
    }
    if let (false, Some(s)) = (decision.allowed, decision.retry_after_secs) {
        out.push(("Retry-After", s.to_string()));
    }
    out
}
