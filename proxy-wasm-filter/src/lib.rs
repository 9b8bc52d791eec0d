//! # ratewall-filter
//!
//! A proxy-wasm (ABI 0.2.1) HTTP filter for Envoy that rate limits with
//! [`ratewall_core`]: every decision comes from the core's policy and all-or-nothing batch
//! ([`ratewall_core::store::apply_batch`]), every header from its renderer.
//!
//! * `mode: local`: counters in proxy-wasm shared data ([`shared`]), exact across Envoy's worker
//!   threads, bounded, reclaimed on a tick.
//! * `mode: remote`: one `POST /check` to ratewall-server per request ([`remote`]), so every
//!   Envoy shares the server's (Redis) counters.
//!
//! MCP-aware ([`mcp`]): JSON-RPC `tools/call` and `prompts/get` are limited per tool, batches count
//! every call. Configuration: [`config`]; replies: [`response`].
//!
//! Everything but the proxy-wasm glue (`filter`, compiled for `wasm32` only) is plain Rust and
//! unit-tested natively with `cargo test -p ratewall-filter`.

pub mod config;
pub mod mcp;
pub mod remote;
pub mod response;
pub mod shared;

#[cfg(target_arch = "wasm32")]
mod filter;

use ratewall_core::config::{ContextError, Plan, Policy, RequestContext};

use crate::mcp::Body;

/// The identity of a request, read from its headers (untrusted; the core bounds and encodes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub user: Option<String>,
    /// Tenant id.
    pub tenant: Option<String>,
    /// MCP server id.
    pub server: Option<String>,
    /// Tool from `tool_header`, if configured and present.
    pub tool: Option<String>,
    /// Descriptor values by name (only the present ones).
    pub descriptors: Vec<(String, String)>,
}

/// The calls of a request grouped by tool: `(tool, number of calls)`.
///
/// An MCP body gives its calls' tools (each group is one plan, see [`plans`]); any other request
/// is one call whose tool is the `tool_header` value, if any.
pub fn groups(body: &Body, identity: &Identity) -> Vec<(Option<String>, u64)> {
    match body {
        Body::Mcp(req) => req.groups(),
        Body::Opaque => vec![(identity.tool.clone(), 1)],
    }
}

/// One plan per group, in order. A group with a tool is a tool call, so `by_user_per_server`
/// applies to it (and needs the server id).
pub fn plans(
    policy: &Policy,
    identity: &Identity,
    groups: &[(Option<String>, u64)],
) -> Result<Vec<Plan>, ContextError> {
    let descriptors: Vec<(&str, &str)> = identity
        .descriptors
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    groups
        .iter()
        .map(|(tool, cost)| {
            policy.plan(&RequestContext {
                user: identity.user.as_deref(),
                tenant: identity.tenant.as_deref(),
                server: identity.server.as_deref(),
                per_server: tool.is_some(),
                tool: tool.as_deref(),
                descriptors: &descriptors,
                cost: *cost,
            })
        })
        .collect()
}

/// Bytes to text without trapping: header values may carry obs-text (non-UTF-8) bytes, which
/// are replaced by U+FFFD.
pub fn text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::FilterConfig;
    use crate::mcp::parse_body;

    #[test]
    fn plans_per_tool_group() {
        let cfg = FilterConfig::from_bytes(
            br#"{"by_user": "10/s", "by_tool": {"echo": "2/s"}, "by_user_per_server": "5/s"}"#,
        )
        .unwrap();
        let id = Identity {
            user: Some("alice".into()),
            server: Some("gw-1".into()),
            ..Default::default()
        };
        let body = parse_body(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},
                 {"jsonrpc":"2.0","id":2,"method":"tools/list"},
                 {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"Echo"}}]"#,
        );
        let g = groups(&body, &id);
        assert_eq!(g, vec![(Some("echo".into()), 2), (None, 1)]);
        let p = plans(&cfg.limiter.policy, &id, &g).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].cost, 2);
        assert_eq!(p[0].cells.len(), 3); // user, user_per_server, tool
        assert_eq!(p[1].cells.len(), 1); // user only: not a tool call

        // a tool call without the server id cannot be evaluated
        let anon = Identity::default();
        assert!(plans(&cfg.limiter.policy, &anon, &g).is_err());
        // a plain request: tool from the header
        let hdr = Identity {
            tool: Some("echo".into()),
            server: Some("s".into()),
            ..Default::default()
        };
        let g = groups(&Body::Opaque, &hdr);
        assert_eq!(g, vec![(Some("echo".into()), 1)]);
    }

    #[test]
    fn text_never_fails() {
        assert_eq!(text(b"abc".to_vec()), "abc");
        assert_eq!(text(vec![b'a', 0xff]), "a\u{fffd}");
    }
}
