//! Config validation for the plugin, and the compiled policy as plain data.
//!
//! The plugin validates its `config:` block with the core ([`LimiterConfig::from_json_str`]), so
//! every key means exactly what it means in the check service and the Envoy filter. The compiled
//! policy is also exported as plain data ([`describe`]) for the pure-Python engine and for logs.

use std::collections::BTreeMap;

use ratewall_core::config::rate::Limit;
use ratewall_core::config::schema::{suggest, CORE_KEYS};
use ratewall_core::config::{
    document, Backend, ClockSource, ConfigError, DimensionKind, FailMode, HeaderFormat,
    LimiterConfig, RequestContext,
};
use serde_json::{json, Map, Value};

/// Keys the plugin reads itself (everything else belongs to the core schema).
pub const PLUGIN_KEYS: &[&str] = &["engine", "redis_fallback", "strict"];

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

/// A validated plugin config.
pub struct Loaded {
    pub cfg: LimiterConfig,
    /// The plugin's own keys ([`PLUGIN_KEYS`]).
    pub extra: Map<String, Value>,
    /// Unknown top-level keys that were ignored (not `strict`), sorted, each with the known key
    /// it most likely misspells. The plugin logs them at WARN.
    pub ignored: Vec<(String, Option<&'static str>)>,
}

fn known_keys() -> impl Iterator<Item = &'static str> {
    CORE_KEYS.iter().chain(PLUGIN_KEYS).copied()
}

/// `"a" (did you mean "b"?), "c"`: the ignored keys as the WARN and error notes name them.
pub fn describe_ignored(ignored: &[(String, Option<&'static str>)]) -> String {
    ignored
        .iter()
        .map(|(k, hint)| match hint {
            Some(h) => format!("{k:?} (did you mean {h:?}?)"),
            None => format!("{k:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validate the plugin's config (JSON text). Rejects what the gateway cannot use.
///
/// Unknown top-level keys: by default each is ignored and reported in [`Loaded::ignored`] (the
/// peer `cpex-rate-limiter` 0.1.12 only warned about them, and cpex, whose
/// `fail_on_plugin_error` defaults to false, runs the gateway *without* a plugin that fails to
/// construct: refusing a config the peer accepted would turn rate limiting off on migration).
/// With `strict: true` an unknown key is an error naming it. A known key with an invalid value is
/// always an error. If the config fails for another reason, the error also names the ignored
/// keys (a misspelt `by_usr` is why "no limit is configured").
pub fn load(text: &str) -> Result<Loaded, ConfigError> {
    let mut value = document::json(text.as_bytes())?;
    // Judged before unknown keys are removed: `{"by_usr": ..}` is not an empty file.
    let empty_document = value.is_null() || value.as_object().is_some_and(|m| m.is_empty());
    let mut ignored = Vec::new();
    if let Value::Object(map) = &mut value {
        let strict = match map.get("strict") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ConfigError {
                    path: "strict".into(),
                    message: format!("expected true or false, got {v}"),
                })
            }
        };
        if !strict {
            let unknown: Vec<String> = map
                .keys()
                .filter(|k| !known_keys().any(|known| known == k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                map.remove(&k);
                let hint = suggest(&k, known_keys());
                ignored.push((k, hint));
            }
            ignored.sort();
        }
    }
    let note = |mut e: ConfigError| {
        if !ignored.is_empty() {
            e.message = format!(
                "{}; note: unknown key(s) ignored: {}",
                e.message,
                describe_ignored(&ignored)
            );
        }
        e
    };
    let (cfg, extra) = LimiterConfig::from_json_value_partial(value, PLUGIN_KEYS).map_err(note)?;
    cfg.require_limits(empty_document).map_err(note)?;
    if cfg.raw.limits.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(ConfigError {
            path: "limits".into(),
            message: "descriptor limits are not supported by the gateway plugin (its hooks carry no descriptors); use by_user, by_user_per_server, by_tenant or by_tool".into(),
        });
    }
    Ok(Loaded {
        cfg,
        extra,
        ignored,
    })
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

pub fn header_format_name(h: HeaderFormat) -> &'static str {
    match h {
        HeaderFormat::Legacy => "legacy",
        HeaderFormat::Ietf => "ietf",
        HeaderFormat::Both => "both",
        HeaderFormat::None => "none",
    }
}

/// The compiled configuration as JSON (for the pure-Python engine and for logs).
pub fn describe(loaded: &Loaded) -> Value {
    let Loaded {
        cfg,
        extra,
        ignored,
    } = loaded;
    let dims = dimensions(cfg);
    let tools: Map<String, Value> = dims
        .by_tool
        .iter()
        .map(|(k, v)| (k.clone(), limits_json(v)))
        .collect();
    json!({
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
            "cluster": r.cluster,
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
        "ignored": ignored.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "ignored_note": describe_ignored(ignored),
        "effective": cfg.effective(),
    })
}
