//! The plugin configuration: the core's schema plus the filter's own keys.
//!
//! The configuration is one JSON object (Envoy passes it as the `StringValue` of the wasm filter's
//! `configuration`). Core keys (`by_user`, `by_tool`, `limits`, `algorithm`, `fail_mode`,
//! `headers`, ...) are validated by [`ratewall_core::LimiterConfig`]; the keys in [`EXTRA_KEYS`]
//! are the filter's and are validated here. Every error names the key at fault; a key that does
//! not apply to the chosen `mode` is an error, never silently ignored. Core keys that only concern
//! other packagings (Redis connection settings, `memory_max_keys`, `clock`) are accepted, so one
//! YAML block can configure every packaging, and reported as warnings at load time.

use ratewall_core::config::{Backend, FailMode, HeaderFormat};
use ratewall_core::{ConfigError, LimiterConfig};
use serde_json::{Map, Value};

/// The filter's own keys.
pub const EXTRA_KEYS: &[&str] = &[
    "mode",
    "user_header",
    "tenant_header",
    "server_header",
    "tool_header",
    "descriptor_headers",
    "max_body_bytes",
    "mcp_path_prefixes",
    "remote_cluster",
    "remote_authority",
    "remote_path",
    "remote_timeout_ms",
    "local_max_keys",
    "reclaim_interval_ms",
];

/// Largest `max_body_bytes` accepted (Envoy buffers the body while the filter waits for it).
pub const MAX_BODY_LIMIT: u64 = 1 << 20;

/// Where the counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// In proxy-wasm shared data, shared by every worker thread of this Envoy.
    Local(LocalSettings),
    /// In ratewall-server (`POST /check`), shared by every Envoy that uses it.
    Remote(RemoteSettings),
}

/// `mode: local` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    /// Hard bound on the number of cells kept in shared data.
    pub max_keys: usize,
    /// How often each worker sweeps part of the table for expired cells.
    pub reclaim_interval_ms: u64,
}

/// `mode: remote` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// Envoy cluster of ratewall-server.
    pub cluster: String,
    /// `:authority` of the check request.
    pub authority: String,
    /// Path of the check endpoint.
    pub path: String,
    /// Timeout of the check call.
    pub timeout_ms: u64,
}

/// The validated plugin configuration.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Limits, fail mode, header format.
    pub limiter: LimiterConfig,
    /// Local or remote counters.
    pub mode: Mode,
    /// Request header carrying the user id (lowercase).
    pub user_header: String,
    /// Request header carrying the tenant id.
    pub tenant_header: String,
    /// Request header carrying the MCP server id (`by_user_per_server`).
    pub server_header: String,
    /// Request header carrying a tool name for requests whose body names none.
    pub tool_header: Option<String>,
    /// `(descriptor name, request header)` for every descriptor a limit reads.
    pub descriptor_headers: Vec<(String, String)>,
    /// Largest request body buffered for MCP inspection.
    pub max_body_bytes: usize,
    /// POST requests whose path starts with one of these are inspected as MCP.
    pub mcp_path_prefixes: Vec<String>,
    /// Settings accepted but not used by the filter (logged at load time).
    pub warnings: Vec<String>,
}

impl FilterConfig {
    /// The fail mode (`fail_mode`, default open).
    pub fn fail_mode(&self) -> FailMode {
        self.limiter.fail_mode
    }

    /// The header format (`headers`, default legacy).
    pub fn headers(&self) -> HeaderFormat {
        self.limiter.headers
    }

    /// Local mode with no limit configured: every request passes untouched (no headers).
    pub fn limits_nothing(&self) -> bool {
        matches!(self.mode, Mode::Local(_)) && self.limiter.policy.is_empty()
    }

    /// Local mode where a request's plans depend on its user and tenant only (no server, tool or
    /// descriptor header to read).
    pub fn needs_user_and_tenant_only(&self) -> bool {
        matches!(self.mode, Mode::Local(_))
            && !self.limiter.policy.has_per_server()
            && self.tool_header.is_none()
            && self.descriptor_headers.is_empty()
    }

    /// Whether a request with this method and path has its body inspected.
    pub fn inspects_body(&self, method: &str, path: &str) -> bool {
        self.max_body_bytes > 0
            && method.eq_ignore_ascii_case("POST")
            && self
                .mcp_path_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }

    /// Parse and validate the plugin configuration. An empty configuration means `{}`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| cerr("<root>", "the configuration is not UTF-8"))?;
        let text = if text.trim().is_empty() { "{}" } else { text };
        // Parsed as bytes, like request bodies and check responses (`LimiterConfig::from_json_str`
        // would link a second copy of serde_json's parser, for `&str` input); same message.
        let value: Value = serde_json::from_slice(text.as_bytes())
            .map_err(|e| cerr("<root>", format!("not valid JSON: {e}")))?;
        let (limiter, extra) = LimiterConfig::from_json_value_partial(value, EXTRA_KEYS)?;
        let cfg = Self::build(limiter, extra)?;
        // Local mode with no limit is an error unless `allow_empty: true` (remote mode's limits
        // are the service's).
        if matches!(cfg.mode, Mode::Local(_)) {
            cfg.limiter.check_not_empty()?;
        }
        Ok(cfg)
    }

    fn build(limiter: LimiterConfig, extra: Map<String, Value>) -> Result<Self, ConfigError> {
        if limiter.backend == Backend::Redis {
            return Err(cerr(
                "backend",
                "\"redis\" is not available in the Envoy filter (it has no Redis client); use mode \"remote\" with ratewall-server, which owns the Redis store",
            ));
        }
        let mut warnings = Vec::new();
        let raw = &limiter.raw;
        let unused = [
            ("redis_url", raw.redis_url.is_some()),
            ("redis_ssl_ca_certs", raw.redis_ssl_ca_certs.is_some()),
            ("redis_ssl_certfile", raw.redis_ssl_certfile.is_some()),
            ("redis_ssl_keyfile", raw.redis_ssl_keyfile.is_some()),
            (
                "redis_ssl_check_hostname",
                raw.redis_ssl_check_hostname.is_some(),
            ),
            ("redis_timeout_ms", raw.redis_timeout_ms.is_some()),
            (
                "redis_negative_cache_keys",
                raw.redis_negative_cache_keys.is_some(),
            ),
            ("clock", raw.clock.is_some()),
            ("memory_max_keys", raw.memory_max_keys.is_some()),
            ("backend", raw.backend.is_some()),
        ];
        for (key, present) in unused {
            if present {
                warnings.push(format!(
                    "{key} is not used by the Envoy filter (see mode, local_max_keys, remote_*)"
                ));
            }
        }

        let mode_name = opt_str(&extra, "mode")?.unwrap_or("local");
        let local_keys = ["local_max_keys", "reclaim_interval_ms"];
        let remote_keys = [
            "remote_cluster",
            "remote_authority",
            "remote_path",
            "remote_timeout_ms",
        ];
        let mode = match mode_name.trim().to_ascii_lowercase().as_str() {
            "local" => {
                reject_keys(&extra, &remote_keys, "remote")?;
                Mode::Local(LocalSettings {
                    max_keys: usize::try_from(opt_u64(
                        &extra,
                        "local_max_keys",
                        8192,
                        64..=1 << 20,
                    )?)
                    .map_err(|_| cerr("local_max_keys", "too large for this platform"))?,
                    reclaim_interval_ms: opt_u64(
                        &extra,
                        "reclaim_interval_ms",
                        1000,
                        100..=3_600_000,
                    )?,
                })
            }
            "remote" => {
                reject_keys(&extra, &local_keys, "local")?;
                let cluster = opt_str(&extra, "remote_cluster")?
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        cerr(
                            "remote_cluster",
                            "is required when mode is \"remote\" (the Envoy cluster of ratewall-server)",
                        )
                    })?
                    .to_string();
                let authority = match opt_str(&extra, "remote_authority")? {
                    None => cluster.clone(),
                    Some(a) if valid_authority(a) => a.to_string(),
                    Some(a) => {
                        return Err(cerr(
                            "remote_authority",
                            format!("{a:?} is not a valid host[:port]"),
                        ))
                    }
                };
                let path = match opt_str(&extra, "remote_path")? {
                    None => "/check".to_string(),
                    Some(p) if p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) => {
                        p.to_string()
                    }
                    Some(p) => {
                        return Err(cerr(
                            "remote_path",
                            format!(
                            "{p:?} must start with '/' and contain no spaces or control characters"
                        ),
                        ))
                    }
                };
                Mode::Remote(RemoteSettings {
                    cluster,
                    authority,
                    path,
                    timeout_ms: opt_u64(&extra, "remote_timeout_ms", 200, 1..=60_000)?,
                })
            }
            _ => {
                return Err(cerr(
                    "mode",
                    format!("{mode_name:?} is not valid; expected one of \"local\", \"remote\""),
                ))
            }
        };

        let user_header = header_name(&extra, "user_header", "x-user-id")?;
        let tenant_header = header_name(&extra, "tenant_header", "x-tenant-id")?;
        let server_header = header_name(&extra, "server_header", "x-server-id")?;
        let tool_header = match extra.get("tool_header") {
            None | Some(Value::Null) => None,
            Some(_) => Some(header_name(&extra, "tool_header", "")?),
        };

        let mut descriptor_headers: Vec<(String, String)> = Vec::new();
        let mapped = match extra.get("descriptor_headers") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(cerr(
                    "descriptor_headers",
                    format!("expected a mapping of descriptor name to request header, got {other}"),
                ))
            }
        };
        let used: Vec<String> = limiter
            .policy
            .descriptor_names()
            .map(str::to_string)
            .collect();
        let remote = matches!(mode, Mode::Remote(_));
        if remote {
            let r = &limiter.raw;
            if r.by_user.is_some()
                || r.by_user_per_server.is_some()
                || r.by_tenant.is_some()
                || r.by_tool.is_some()
                || r.limits.is_some()
                || r.algorithm.is_some()
            {
                return Err(cerr(
                    "mode",
                    "with mode \"remote\" the limits (by_user, by_user_per_server, by_tenant, by_tool, limits, algorithm) belong in ratewall-server's configuration, not the filter's",
                ));
            }
        }
        for (name, header) in &mapped {
            let path = format!("descriptor_headers[{name:?}]");
            if !remote && !used.iter().any(|u| u == name) {
                return Err(cerr(
                    &path,
                    format!("no entry of limits reads the descriptor {name:?}"),
                ));
            }
            let Value::String(h) = header else {
                return Err(cerr(&path, format!("expected a header name, got {header}")));
            };
            let h = validate_header(&path, h)?;
            descriptor_headers.push((name.clone(), h));
        }
        for name in used {
            if descriptor_headers.iter().any(|(n, _)| *n == name) {
                continue;
            }
            // By default a descriptor is read from the request header of the same name.
            let h = validate_header(&format!("descriptor_headers[{name:?}]"), &name).map_err(
                |_| {
                    cerr(
                        "descriptor_headers",
                        format!(
                            "the descriptor {name:?} is not a valid header name; map it to a request header in descriptor_headers"
                        ),
                    )
                },
            )?;
            descriptor_headers.push((name, h));
        }

        let max_body_bytes = usize::try_from(opt_u64(
            &extra,
            "max_body_bytes",
            64 * 1024,
            0..=MAX_BODY_LIMIT,
        )?)
        .map_err(|_| cerr("max_body_bytes", "too large for this platform"))?;

        let mcp_path_prefixes = match extra.get("mcp_path_prefixes") {
            None | Some(Value::Null) => vec!["/".to_string()],
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if s.starts_with('/') => out.push(s.clone()),
                        other => {
                            return Err(cerr(
                                &format!("mcp_path_prefixes[{i}]"),
                                format!("expected a path prefix starting with '/', got {other}"),
                            ))
                        }
                    }
                }
                out
            }
            Some(other) => {
                return Err(cerr(
                    "mcp_path_prefixes",
                    format!("expected a list of path prefixes, got {other}"),
                ))
            }
        };

        Ok(Self {
            limiter,
            mode,
            user_header,
            tenant_header,
            server_header,
            tool_header,
            descriptor_headers,
            max_body_bytes,
            mcp_path_prefixes,
            warnings,
        })
    }
}

fn cerr(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn reject_keys(extra: &Map<String, Value>, keys: &[&str], mode: &str) -> Result<(), ConfigError> {
    match keys.iter().find(|k| extra.contains_key(**k)) {
        Some(k) => Err(cerr(
            k,
            format!("only applies to mode \"{mode}\"; remove it or set mode: {mode}"),
        )),
        None => Ok(()),
    }
}

fn opt_str<'a>(extra: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ConfigError> {
    match extra.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(cerr(key, format!("expected a string, got {other}"))),
    }
}

fn opt_u64(
    extra: &Map<String, Value>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let n = match extra.get(key) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    };
    match n {
        Some(n) if range.contains(&n) => Ok(n),
        _ => Err(cerr(
            key,
            format!(
                "{} is not an integer in {} ..= {}",
                extra.get(key).map(Value::to_string).unwrap_or_default(),
                range.start(),
                range.end()
            ),
        )),
    }
}

fn header_name(
    extra: &Map<String, Value>,
    key: &str,
    default: &str,
) -> Result<String, ConfigError> {
    match opt_str(extra, key)? {
        None => Ok(default.to_string()),
        Some(h) => validate_header(key, h),
    }
}

/// A request header name: an RFC 9110 token, not a pseudo-header; returned lowercased.
fn validate_header(path: &str, h: &str) -> Result<String, ConfigError> {
    let ok = !h.is_empty()
        && h.len() <= 128
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        });
    if ok {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(cerr(
            path,
            format!("{h:?} is not a valid request header name"),
        ))
    }
}

fn valid_authority(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 255
        && a.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_' | b'[' | b']')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn load(text: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::from_bytes(text.as_bytes())
    }

    fn load_err(text: &str) -> ConfigError {
        load(text).expect_err(text)
    }

    #[test]
    fn an_empty_local_config_is_an_error_unless_allowed() {
        for text in ["", "{}", r#"{"headers": "both"}"#] {
            let e = load_err(text);
            assert!(e.message.contains("allow_empty: true"), "{text}: {e}");
        }
        assert!(load(r#"{"allow_empty": true}"#).unwrap().limits_nothing());
        // Remote mode: the limits are the service's.
        load(r#"{"mode": "remote", "remote_cluster": "ratewall"}"#).unwrap();
    }

    #[test]
    fn defaults() {
        let c = load(r#"{"allow_empty": true}"#).unwrap();
        assert_eq!(
            c.mode,
            Mode::Local(LocalSettings {
                max_keys: 8192,
                reclaim_interval_ms: 1000
            })
        );
        assert_eq!(c.user_header, "x-user-id");
        assert_eq!(c.tenant_header, "x-tenant-id");
        assert_eq!(c.server_header, "x-server-id");
        assert_eq!(c.tool_header, None);
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.mcp_path_prefixes, vec!["/"]);
        assert_eq!(c.fail_mode(), FailMode::Open);
        assert_eq!(c.headers(), HeaderFormat::Legacy);
        assert!(c.warnings.is_empty());
        assert!(c.inspects_body("post", "/mcp"));
        assert!(!c.inspects_body("GET", "/mcp"));
    }

    #[test]
    fn full_remote() {
        let c = load(
            r#"{
                "mode": "remote", "remote_cluster": "ratewall", "remote_authority": "ratewall.local:8080",
                "remote_path": "/check", "remote_timeout_ms": 50, "fail_mode": "closed", "headers": "both",
                "user_header": "X-User", "tool_header": "x-tool", "descriptor_headers": {"api_key": "x-api-key"},
                "max_body_bytes": 1024, "mcp_path_prefixes": ["/mcp"], "redis_url": "redis://x"}"#,
        )
        .unwrap();
        assert_eq!(
            c.mode,
            Mode::Remote(RemoteSettings {
                cluster: "ratewall".into(),
                authority: "ratewall.local:8080".into(),
                path: "/check".into(),
                timeout_ms: 50
            })
        );
        assert_eq!(c.user_header, "x-user");
        assert_eq!(c.tool_header.as_deref(), Some("x-tool"));
        assert_eq!(
            c.descriptor_headers,
            vec![("api_key".to_string(), "x-api-key".to_string())]
        );
        assert_eq!(c.fail_mode(), FailMode::Closed);
        assert_eq!(c.headers(), HeaderFormat::Both);
        assert!(!c.inspects_body("POST", "/other"));
        assert!(c.inspects_body("POST", "/mcp/x"));
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("redis_url"));
    }

    #[test]
    fn descriptor_defaults_to_same_named_header() {
        let c = load(r#"{"limits": [{"name": "k", "descriptors": ["X-Api-Key"], "rate": "5/s"}]}"#)
            .unwrap();
        assert_eq!(
            c.descriptor_headers,
            vec![("X-Api-Key".to_string(), "x-api-key".to_string())]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"mode": "cloud"}"#, "mode"),
            (r#"{"mode": 3}"#, "mode"),
            (r#"{"mode": "remote"}"#, "remote_cluster"),
            (
                r#"{"mode": "remote", "remote_cluster": " "}"#,
                "remote_cluster",
            ),
            (r#"{"remote_cluster": "x"}"#, "remote_cluster"),
            (
                r#"{"mode": "remote", "remote_cluster": "x", "local_max_keys": 100}"#,
                "local_max_keys",
            ),
            (
                r#"{"mode": "remote", "remote_cluster": "x", "remote_path": "check"}"#,
                "remote_path",
            ),
            (
                r#"{"mode": "remote", "remote_cluster": "x", "remote_timeout_ms": 0}"#,
                "remote_timeout_ms",
            ),
            (
                r#"{"mode": "remote", "remote_cluster": "x", "remote_authority": "a b"}"#,
                "remote_authority",
            ),
            (r#"{"local_max_keys": 10}"#, "local_max_keys"),
            (r#"{"local_max_keys": "many"}"#, "local_max_keys"),
            (r#"{"reclaim_interval_ms": 1}"#, "reclaim_interval_ms"),
            (r#"{"max_body_bytes": 99999999}"#, "max_body_bytes"),
            (r#"{"max_body_bytes": -1}"#, "max_body_bytes"),
            (r#"{"user_header": "x user"}"#, "user_header"),
            (r#"{"user_header": ""}"#, "user_header"),
            (r#"{"tenant_header": ":authority"}"#, "tenant_header"),
            (r#"{"tool_header": 5}"#, "tool_header"),
            (r#"{"mcp_path_prefixes": "/mcp"}"#, "mcp_path_prefixes"),
            (r#"{"mcp_path_prefixes": ["mcp"]}"#, "mcp_path_prefixes[0]"),
            (
                r#"{"descriptor_headers": {"nope": "x-a"}}"#,
                "descriptor_headers[\"nope\"]",
            ),
            (r#"{"descriptor_headers": []}"#, "descriptor_headers"),
            (
                r#"{"backend": "redis", "redis_url": "redis://localhost"}"#,
                "backend",
            ),
            (
                r#"{"mode": "remote", "remote_cluster": "x", "by_user": "1/s"}"#,
                "mode",
            ),
            (r#"{"by_user": "ten per second"}"#, "by_user"),
            (r#"{"by_usr": "10/s"}"#, "by_usr"),
            (r#"{"mod": "local"}"#, "mod"),
            ("[1, 2]", "<root>"),
            ("{not json", "<root>"),
        ];
        for (text, path) in cases {
            let e = load_err(text);
            assert_eq!(e.path, path, "{text}: {e}");
            assert!(!e.message.is_empty());
        }
        let e = load_err(r#"{"mod": "local"}"#);
        assert!(e.message.contains("\"mode\""), "{e}");
        assert!(FilterConfig::from_bytes(&[0xff, 0xfe]).is_err());
    }
}
