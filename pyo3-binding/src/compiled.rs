//! Config validation for the plugin, and the compiled policy as plain data.
//!
//! The plugin validates its `config:` block with the core ([`LimiterConfig::from_json_str`]), so
//! every key means exactly what it means in the check service and the Envoy filter. The compiled
//! policy is also exported as plain data ([`describe`]) for the pure-Python engine and to
//! fingerprint the limits (the key of the process-wide memory store registry).

use std::collections::BTreeMap;

use ratewall_core::config::rate::Limit;
use ratewall_core::config::{
    Backend, ClockSource, ConfigError, DimensionKind, FailMode, HeaderFormat, LimiterConfig,
    RequestContext,
};
use serde_json::{json, Map, Value};

/// Keys the plugin reads itself (everything else belongs to the core schema).
pub const PLUGIN_KEYS: &[&str] = &["engine", "redis_fallback"];

/// One limit of one dimension: `(count, window_secs, policy name)`.
pub type LimitSpec = (u64, u64, String);

/// The compiled limits of a policy, per dimension.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dimensions {
    pub by_user: Vec<LimitSpec>,
    pub by_user_per_server: Vec<LimitSpec>,
    pub by_tenant: Vec<LimitSpec>,
    pub by_tool: BTreeMap<String, Vec<LimitSpec>>,
}

fn spec(limit: &Limit, name: &str) -> LimitSpec {
    (limit.count(), limit.window_secs(), name.to_string())
}

/// Validate the plugin's config (JSON text). Rejects what the gateway cannot use.
pub fn load(text: &str) -> Result<(LimiterConfig, Map<String, Value>), ConfigError> {
    let (cfg, extra) = LimiterConfig::from_json_str(text, PLUGIN_KEYS)?;
    if cfg.raw.limits.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(ConfigError {
            path: "limits".into(),
            message: "descriptor limits are not supported by the gateway plugin (its hooks carry no descriptors); use by_user, by_user_per_server, by_tenant or by_tool".into(),
        });
    }
    Ok((cfg, extra))
}

/// The compiled limits, read back through [`ratewall_core::config::Policy::plan`] so that names,
/// windows and normalised tool names are exactly the core's.
pub fn dimensions(cfg: &LimiterConfig) -> Dimensions {
    let mut out = Dimensions::default();
    fn probe(tool: Option<&str>) -> RequestContext<'_> {
        RequestContext {
            user: Some("u"),
            tenant: Some("t"),
            server: Some("s"),
            per_server: true,
            tool,
            descriptors: &[],
            cost: 1,
        }
    }
    if let Ok(plan) = cfg.policy.plan(&probe(None)) {
        for c in &plan.cells {
            let s = spec(&c.limit, &c.name);
            match c.dimension {
                DimensionKind::User => out.by_user.push(s),
                DimensionKind::UserPerServer => out.by_user_per_server.push(s),
                DimensionKind::Tenant => out.by_tenant.push(s),
                DimensionKind::Tool | DimensionKind::Descriptor => {}
            }
        }
    }
    for name in cfg.raw.by_tool.iter().flat_map(|m| m.keys()) {
        let norm = ratewall_core::normalize_name(name);
        if let Ok(plan) = cfg.policy.plan(&probe(Some(name))) {
            let tool: Vec<LimitSpec> = plan
                .cells
                .iter()
                .filter(|c| c.dimension == DimensionKind::Tool)
                .map(|c| spec(&c.limit, &c.name))
                .collect();
            out.by_tool.insert(norm, tool);
        }
    }
    out
}

fn limits_json(v: &[LimitSpec]) -> Value {
    Value::Array(
        v.iter()
            .map(|(c, w, n)| json!([c, w, n]))
            .collect::<Vec<_>>(),
    )
}

/// A stable fingerprint of everything that decides what a memory store holds: algorithm, key
/// prefix, capacity and every limit. Instances with equal fingerprints share one store.
pub fn fingerprint(cfg: &LimiterConfig, dims: &Dimensions) -> String {
    let strip =
        |v: &[LimitSpec]| -> Vec<(u64, u64)> { v.iter().map(|(c, w, _)| (*c, *w)).collect() };
    let tools: BTreeMap<&str, Vec<(u64, u64)>> = dims
        .by_tool
        .iter()
        .map(|(k, v)| (k.as_str(), strip(v)))
        .collect();
    json!({
        "algorithm": cfg.policy.algorithm().name(),
        "prefix": cfg.policy.prefix(),
        "memory_max_keys": cfg.memory_max_keys,
        "by_user": strip(&dims.by_user),
        "by_user_per_server": strip(&dims.by_user_per_server),
        "by_tenant": strip(&dims.by_tenant),
        "by_tool": tools,
    })
    .to_string()
}

pub fn header_format_name(h: HeaderFormat) -> &'static str {
    match h {
        HeaderFormat::Legacy => "legacy",
        HeaderFormat::Ietf => "ietf",
        HeaderFormat::Both => "both",
        HeaderFormat::None => "none",
    }
}

/// The compiled configuration as JSON (for the pure-Python engine and for logs).
pub fn describe(cfg: &LimiterConfig, extra: &Map<String, Value>) -> Value {
    let dims = dimensions(cfg);
    let tools: Map<String, Value> = dims
        .by_tool
        .iter()
        .map(|(k, v)| (k.clone(), limits_json(v)))
        .collect();
    json!({
        "fingerprint": fingerprint(cfg, &dims),
        "algorithm": cfg.policy.algorithm().name(),
        "key_tag": cfg.policy.algorithm().key_tag(),
        "prefix": cfg.policy.prefix(),
        "backend": match cfg.backend { Backend::Memory => "memory", Backend::Redis => "redis" },
        "fail_mode": match cfg.fail_mode { FailMode::Open => "open", FailMode::Closed => "closed" },
        "headers": header_format_name(cfg.headers),
        "memory_max_keys": cfg.memory_max_keys,
        "shadow_mode": cfg.policy.shadow_mode(),
        "redis": cfg.redis.as_ref().map(|r| json!({
            "url": r.url,
            "ca_certs": r.ca_certs,
            "certfile": r.certfile,
            "keyfile": r.keyfile,
            "check_hostname": r.check_hostname,
            "timeout_ms": r.timeout_ms,
            "clock": match r.clock { ClockSource::Server => "server", ClockSource::Client => "client" },
        })),
        "by_user": limits_json(&dims.by_user),
        "by_user_per_server": limits_json(&dims.by_user_per_server),
        "by_tenant": limits_json(&dims.by_tenant),
        "by_tool": tools,
        "extra": extra,
        "effective": cfg.effective(),
    })
}
