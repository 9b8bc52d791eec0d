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
    "shadow_mode",
    "domains",
    "allow_empty",
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
    /// Evaluate and count this limit but never deny for it (see `docs/CONFIG.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_mode: Option<bool>,
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
    pub shadow_mode: Option<bool>,
    /// envoyproxy/ratelimit configuration documents, inline (see `config::descriptors`).
    #[cfg(feature = "descriptors")]
    pub domains: Option<serde_json::Value>,
    pub allow_empty: Option<bool>,
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
    let core = serde_json::Value::Object(core);
    let raw = parse_raw(&core)?;
    Ok((raw, extra))
}

/// Deserialize the core's keys; a type error names the path of the value at fault
/// (`by_tool.echo`, `limits[0].rate`) through `serde_path_to_error`.
#[cfg(feature = "path-to-error")]
fn parse_raw(core: &serde_json::Value) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(core).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::new(&path, e.into_inner().to_string())
    })
}

/// Deserialize the core's keys; a type error names the path of the value at fault
/// (`by_tool.echo`, `limits[0].rate`), found by re-checking the parts of the failing key (same
/// paths and messages as `serde_path_to_error`, without its code in size-sensitive builds such as
/// the wasm filter).
#[cfg(not(feature = "path-to-error"))]
fn parse_raw(core: &serde_json::Value) -> Result<RawConfig, ConfigError> {
    RawConfig::deserialize(core).map_err(|e| ConfigError::new(&error_path(core), e.to_string()))
}

/// The path of the first value (in deserialization order) that does not fit the schema.
#[cfg(any(not(feature = "path-to-error"), test))]
fn error_path(core: &serde_json::Value) -> String {
    use serde_json::Value;
    fn fits<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
        T::deserialize(v).is_ok()
    }
    let Value::Object(map) = core else {
        return ".".to_string();
    };
    for (k, v) in map {
        let mut one = serde_json::Map::new();
        one.insert(k.clone(), v.clone());
        if fits::<RawConfig>(&Value::Object(one)) {
            continue;
        }
        match (k.as_str(), v) {
            ("by_tool", Value::Object(tools)) => {
                for (tool, rate) in tools {
                    if !fits::<String>(rate) {
                        return format!("by_tool.{tool}");
                    }
                }
            }
            ("limits", Value::Array(limits)) => {
                for (i, l) in limits.iter().enumerate() {
                    if fits::<RawDescriptorLimit>(l) {
                        continue;
                    }
                    if let Value::Object(fields) = l {
                        for (f, fv) in fields {
                            let ok = match (f.as_str(), fv) {
                                ("name" | "rate", _) => fits::<String>(fv),
                                ("shadow_mode", _) => fits::<Option<bool>>(fv),
                                ("descriptors", Value::Array(ds)) => {
                                    if let Some(j) = ds.iter().position(|d| !fits::<String>(d)) {
                                        return format!("limits[{i}].descriptors[{j}]");
                                    }
                                    true
                                }
                                ("descriptors", _) => false,
                                // an unknown field: reported at the field
                                _ => false,
                            };
                            if !ok {
                                return format!("limits[{i}].{f}");
                            }
                        }
                    }
                    return format!("limits[{i}]");
                }
            }
            _ => {}
        }
        return k.clone();
    }
    ".".to_string()
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

#[cfg(all(test, feature = "path-to-error"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The locator used without `path-to-error` gives serde_path_to_error's path and message.
    #[test]
    fn error_path_matches_serde_path_to_error() {
        let cases = [
            r#"{"by_user": 5}"#,
            r#"{"by_user": "5/s", "by_tenant": true}"#,
            r#"{"by_tool": [1]}"#,
            r#"{"by_tool": {"a": "1/s", "b": 5}}"#,
            r#"{"by_tool": {"a": null}}"#,
            r#"{"limits": {}}"#,
            r#"{"limits": [5]}"#,
            r#"{"limits": [{"name": "k", "descriptors": ["a"], "rate": "5/s", "extra": 1}]}"#,
            r#"{"limits": [{"name": "k", "descriptors": ["a"], "rate": "5/s"}, {"name": 1, "descriptors": ["a"], "rate": "5/s"}]}"#,
            r#"{"limits": [{"name": "k", "descriptors": ["a", 2], "rate": "5/s"}]}"#,
            r#"{"limits": [{"name": "k", "descriptors": "a", "rate": "5/s"}]}"#,
            r#"{"limits": [{"name": "k", "rate": "5/s"}]}"#,
            r#"{"limits": [{"name": "k", "descriptors": ["a"], "rate": 1.5}]}"#,
            r#"{"limits": [{"aaa": 1, "name": 5}]}"#,
            r#"{"redis_timeout_ms": -1}"#,
            r#"{"redis_timeout_ms": 1.5}"#,
            r#"{"redis_cluster": "yes"}"#,
            r#"{"memory_max_keys": "many", "by_user": 3}"#,
            r#"{"shadow_mode": "yes"}"#,
            r#"{"limits": [{"name": "k", "descriptors": ["a"], "rate": "5/s", "shadow_mode": 1}]}"#,
        ];
        for case in cases {
            let v: serde_json::Value = serde_json::from_str(case).unwrap();
            let want = serde_path_to_error::deserialize::<_, RawConfig>(&v).unwrap_err();
            let got = RawConfig::deserialize(&v).unwrap_err();
            assert_eq!(
                (error_path(&v), got.to_string()),
                (want.path().to_string(), want.into_inner().to_string()),
                "{case}"
            );
        }
    }
}
