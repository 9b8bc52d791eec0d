//! The configuration file as written: every key optional, types checked by serde, unknown keys
//! rejected with a suggestion. [`super::compile`] turns this into validated types.
//!
//! The keys are a superset of `cpex-rate-limiter` 0.1.12's, so the same YAML block configures the
//! gateway plugin, the check service and the Envoy filter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Every key the core understands.
pub const CORE_KEYS: &[&str] = &[
    "by_user",
    "by_user_per_server",
    "by_tenant",
    "by_tool",
    "limits",
    "algorithm",
    "backend",
    "redis_url",
    "redis_key_prefix",
    "fail_mode",
    "redis_ssl_ca_certs",
    "redis_ssl_certfile",
    "redis_ssl_keyfile",
    "redis_ssl_check_hostname",
    "redis_timeout_ms",
    "redis_negative_cache_keys",
    "redis_cluster",
    "clock",
    "headers",
    "memory_max_keys",
];

/// A generic named limit over request descriptors (header values, API keys, ...).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawDescriptorLimit {
    /// Unique name; used in metrics and `RateLimit-Policy`.
    pub name: String,
    /// Names of the descriptors whose values form the key (all must be present for the limit to
    /// apply to a request).
    pub descriptors: Vec<String>,
    /// Rate string.
    pub rate: String,
}

/// The file format (see `docs/CONFIG.md`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub by_user: Option<String>,
    pub by_user_per_server: Option<String>,
    pub by_tenant: Option<String>,
    pub by_tool: Option<BTreeMap<String, String>>,
    pub limits: Option<Vec<RawDescriptorLimit>>,
    pub algorithm: Option<String>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub redis_key_prefix: Option<String>,
    pub fail_mode: Option<String>,
    pub redis_ssl_ca_certs: Option<String>,
    pub redis_ssl_certfile: Option<String>,
    pub redis_ssl_keyfile: Option<String>,
    pub redis_ssl_check_hostname: Option<bool>,
    pub redis_timeout_ms: Option<u64>,
    pub redis_negative_cache_keys: Option<u64>,
    pub redis_cluster: Option<bool>,
    pub clock: Option<String>,
    pub headers: Option<String>,
    pub memory_max_keys: Option<u64>,
}

/// The closest known key to `unknown`, if any is close enough to be a likely typo.
pub fn suggest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Split a JSON object into the core's part (parsed) and the packaging's own keys (returned as is).
///
/// A key that is neither a core key nor in `extra_keys` is an error naming it, with the closest
/// known key as a suggestion.
pub fn split_and_parse(
    value: serde_json::Value,
    extra_keys: &[&str],
) -> Result<(RawConfig, serde_json::Map<String, serde_json::Value>), ConfigError> {
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::new(
            "<root>",
            format!("expected a mapping of settings, got {}", kind_of(&value)),
        ));
    };
    let mut core = serde_json::Map::new();
    let mut extra = serde_json::Map::new();
    for (k, v) in map {
        if CORE_KEYS.contains(&k.as_str()) {
            core.insert(k, v);
        } else if extra_keys.contains(&k.as_str()) {
            extra.insert(k, v);
        } else {
            let hint = suggest(&k, CORE_KEYS.iter().chain(extra_keys).copied())
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            return Err(ConfigError::new(&k, format!("unknown key {k:?}{hint}")));
        }
    }
    let raw: RawConfig = serde_path_to_error::deserialize(serde_json::Value::Object(core))
        .map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(&path, e.into_inner().to_string())
        })?;
    Ok((raw, extra))
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}
