//! # ratewall-filter
//!
//! A proxy-wasm (ABI 0.2.1) HTTP filter for Envoy that rate limits with
//! [`ratewall_core`]: every decision comes from the core's policy and all-or-nothing batch
//! ([`ratewall_core::store::apply_batch`]), every header from its renderer.
//!
//! * `mode: local`: counters in proxy-wasm shared data ([`shared`]), exact across Envoy's worker
//!   threads, bounded, reclaimed on a tick.
//! * `mode: remote`: one `POST /check` to ratewall-server per request ([`remote`]), carrying
//!   every tool group of an MCP batch (decided as one plan), so every Envoy shares the server's
//!   (Redis) counters.
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

use std::hash::Hasher;
use std::rc::Rc;

use ratewall_core::config::{ContextError, Plan, Policy, RequestContext};

use crate::mcp::Body;
use crate::shared::Prepared;

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

/// Most distinct tools one MCP batch may name (the core's bound on a batch's calls, which the
/// service applies to a remote batch); a larger batch is answered `400` (JSON-RPC `-32602`)
/// without consuming anything.
pub const MAX_BATCH_TOOLS: usize = ratewall_core::config::MAX_BATCH_CALLS;

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

/// Entries of a [`PlanCache`].
pub const PLAN_CACHE_ENTRIES: usize = 1024;

/// The prepared plans ([`shared::Prepared`]) of recently seen requests, by identity and tool
/// groups: a repeat caller skips building its cell keys and slot keys. Direct-mapped and bounded:
/// [`PLAN_CACHE_ENTRIES`] entries, a key's FNV-1a hash picks its entry, and a new key replaces
/// whatever held that entry (no probing, no rehash, nothing an adversary's keys can make slow).
/// Plans depend only on the configuration and the request's identity, so a cache belongs to one
/// configuration (and one worker: proxy-wasm contexts are single-threaded).
#[derive(Debug, Default)]
pub struct PlanCache {
    /// `PLAN_CACHE_ENTRIES` entries once used (allocated on first use).
    entries: Vec<Option<(Vec<u8>, Rc<Prepared>)>>,
    /// Key buffer reused between lookups.
    key: Vec<u8>,
}

impl PlanCache {
    /// The prepared plans of `identity` and `groups`, built with `build` on a miss (errors are
    /// not cached).
    pub fn get_or_build<E>(
        &mut self,
        identity: &Identity,
        groups: &[(Option<String>, u64)],
        build: impl FnOnce() -> Result<Prepared, E>,
    ) -> Result<Rc<Prepared>, E> {
        self.key.clear();
        cache_key(&mut self.key, identity, groups);
        let mut h = Fnv::default();
        h.write(&self.key);
        let i = usize::try_from(h.finish() % PLAN_CACHE_ENTRIES as u64).unwrap_or(0);
        if self.entries.len() != PLAN_CACHE_ENTRIES {
            self.entries.resize(PLAN_CACHE_ENTRIES, None);
        }
        let Some(entry) = self.entries.get_mut(i) else {
            return build().map(Rc::new);
        };
        if let Some((k, p)) = entry {
            if *k == self.key {
                return Ok(p.clone());
            }
        }
        let p = Rc::new(build()?);
        *entry = Some((self.key.clone(), p.clone()));
        Ok(p)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An injective encoding of everything a plan depends on besides the configuration.
fn cache_key(out: &mut Vec<u8>, id: &Identity, groups: &[(Option<String>, u64)]) {
    fn opt(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                bytes(out, s);
            }
        }
    }
    fn bytes(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    opt(out, id.user.as_deref());
    opt(out, id.tenant.as_deref());
    opt(out, id.server.as_deref());
    // `tool` only matters through `groups`.
    out.extend_from_slice(
        &u32::try_from(id.descriptors.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (k, v) in &id.descriptors {
        bytes(out, k);
        bytes(out, v);
    }
    for (tool, cost) in groups {
        opt(out, tool.as_deref());
        out.extend_from_slice(&cost.to_le_bytes());
    }
}

/// FNV-1a 64: a small, fast hash for the plan cache's short keys.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A request header's value as identity text: trimmed, `None` when blank. A value that is not
/// UTF-8 (obs-text bytes) is an error naming the header, as in ratewall-server: decoding it
/// lossily would map different byte strings to one identity (and one counter).
pub fn header_text(name: &str, value: &[u8]) -> Result<Option<String>, String> {
    let s = std::str::from_utf8(value).map_err(|_| format!("header {name} is not valid UTF-8"))?;
    let s = s.trim();
    Ok((!s.is_empty()).then(|| s.to_string()))
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
    fn plan_cache_hits_misses_and_bounds() {
        let cfg = FilterConfig::from_bytes(br#"{"by_user": "10/s"}"#).unwrap();
        let table = crate::shared::SlotTable::new(1024, crate::shared::SlotSeed([7; 16]));
        let mut cache = PlanCache::default();
        let id = |u: &str| Identity {
            user: Some(u.into()),
            ..Default::default()
        };
        let g = vec![(None, 1)];
        let mut builds = 0;
        let mut get = |cache: &mut PlanCache, who: &Identity, g: &[(Option<String>, u64)]| {
            cache
                .get_or_build(who, g, || {
                    builds += 1;
                    plans(&cfg.limiter.policy, who, g).map(|p| table.prepare(p))
                })
                .unwrap()
        };
        let a = get(&mut cache, &id("alice"), &g);
        let a2 = get(&mut cache, &id("alice"), &g);
        assert!(Rc::ptr_eq(&a, &a2));
        let b = get(&mut cache, &id("bob"), &g);
        assert_ne!(a.plans, b.plans);
        // the cost is part of the key
        let a3 = get(&mut cache, &id("alice"), &[(None, 3)]);
        assert_eq!(a3.plans[0].cost, 3);
        for i in 0..5000 {
            get(&mut cache, &id(&format!("u{i}")), &g);
        }
        assert!(builds >= 5003);
        assert!(cache.len() <= PLAN_CACHE_ENTRIES);
        // errors are returned, not cached
        let r: Result<_, ()> = cache.get_or_build(&id("x"), &g, || Err(()));
        assert!(r.is_err());
    }

    #[test]
    fn text_never_fails() {
        assert_eq!(
            header_text("x-user-id", b" abc ").unwrap(),
            Some("abc".into())
        );
        assert_eq!(header_text("x-user-id", b"  ").unwrap(), None);
        assert_eq!(
            header_text("x-user-id", "jos\u{e9}".as_bytes()).unwrap(),
            Some("jos\u{e9}".into())
        );
        // Two different invalid byte strings must not become one identity.
        let e = header_text("x-user-id", &[b'a', 0xff]).unwrap_err();
        assert_eq!(e, "header x-user-id is not valid UTF-8");
        assert!(header_text("x-user-id", &[b'a', 0xfe]).is_err());
    }
}
