//! The service's configuration: the core's keys (validated by [`LimiterConfig`]) plus the
//! service's own keys ([`SERVICE_KEYS`]) in the same YAML file. See `docs/SERVICE.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use ratewall_core::config::ConfigError;
use ratewall_core::LimiterConfig;
use serde::Deserialize;

/// The service's own top-level keys (passed to the core as `extra_keys`).
pub const SERVICE_KEYS: &[&str] = &[
    "listen",
    "request_timeout_ms",
    "shutdown_timeout_ms",
    "watch_config",
    "authz",
    "grpc_listen",
    "descriptor_config",
    "rls_response_headers",
    "near_limit_ratio",
];

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default gRPC listen address (Envoy RLS v3 and ext_authz v3, h2c).
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:8081";

/// Where the gRPC listener listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcListen {
    /// No gRPC listener (`off`).
    Off,
    /// This address.
    At(SocketAddr),
}

impl GrpcListen {
    /// Parse `host:port` or `off`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(GrpcListen::Off);
        }
        parse_listen(s)
            .map(GrpcListen::At)
            .map_err(|e| format!("{e}, or \"off\""))
    }
}

impl std::fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcListen::Off => f.write_str("off"),
            GrpcListen::At(a) => a.fmt(f),
        }
    }
}

/// The policy used when no `--config` is given (printed at start-up).
pub const DEFAULT_POLICY: &str = r#"# ratewall-server built-in default policy (no --config given)
by_user: "100/m"
by_tenant: "1000/m"
algorithm: fixed_window
backend: memory
fail_mode: open
headers: legacy
"#;

/// Where a descriptor value comes from in proxy mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A request header.
    Header(HeaderName),
    /// The original request path (see [`AuthzSettings::path_headers`]).
    Path,
    /// The original request method (see [`AuthzSettings::method_headers`]).
    Method,
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Header(h) => h.as_str().to_string(),
            Source::Path => ":path".into(),
            Source::Method => ":method".into(),
        }
    }
}

/// Proxy mode (`/authz`): which request headers carry the identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzSettings {
    /// User id header.
    pub user_header: Option<HeaderName>,
    /// Tenant header.
    pub tenant_header: Option<HeaderName>,
    /// Tool name header.
    pub tool_header: Option<HeaderName>,
    /// Server id header (feeds `by_user_per_server`).
    pub server_header: Option<HeaderName>,
    /// Cost header (integer ≥ 1; absent = 1).
    pub cost_header: Option<HeaderName>,
    /// Headers holding the original path, in order of preference; when none is present the part
    /// of the request path after `/authz` is used (Envoy `path_prefix`).
    pub path_headers: Vec<HeaderName>,
    /// Headers holding the original method, in order of preference; else the request's method.
    pub method_headers: Vec<HeaderName>,
    /// Descriptor name -> source.
    pub descriptors: Vec<(String, Source)>,
}

impl Default for AuthzSettings {
    fn default() -> Self {
        let h = HeaderName::from_static;
        Self {
            user_header: Some(h("x-user-id")),
            tenant_header: Some(h("x-tenant-id")),
            tool_header: Some(h("x-mcp-tool")),
            server_header: Some(h("x-mcp-server")),
            cost_header: None,
            path_headers: vec![
                h("x-original-uri"),
                h("x-forwarded-uri"),
                h("x-envoy-original-path"),
            ],
            method_headers: vec![h("x-original-method"), h("x-forwarded-method")],
            descriptors: Vec::new(),
        }
    }
}

/// The service's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// `listen` from the file (the CLI and `RATEWALL_LISTEN` take precedence).
    pub listen: Option<SocketAddr>,
    /// Budget for reading a request body and for one store call.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// Reload when the config file changes (SIGHUP always reloads).
    pub watch_config: bool,
    /// Proxy mode (`/authz` and gRPC ext_authz).
    pub authz: AuthzSettings,
    /// `grpc_listen` from the file (the CLI and `RATEWALL_GRPC_LISTEN` take precedence).
    pub grpc_listen: Option<GrpcListen>,
    /// `descriptor_config`: an envoyproxy/ratelimit config file or directory, as written
    /// (relative paths are relative to the config file's directory).
    pub descriptor_config: Option<PathBuf>,
    /// Whether `ShouldRateLimit` answers carry the core's headers in `response_headers_to_add`
    /// (off by default: Envoy renders its own from the statuses with `enable_x_ratelimit_headers`).
    pub rls_response_headers: bool,
    /// `near_limit_ratio`: a hit is "near limit" once the cell's usage passes this share of its
    /// limit (metrics only; see [`NearLimitRatio`]).
    pub near_limit_ratio: NearLimitRatio,
}

/// The share of a limit above which admitted hits count as `near_limit` (default 0.8, like
/// envoyproxy/ratelimit's `NEAR_LIMIT_RATIO`), held in parts per million so that the hot path
/// computes the threshold in integers: `threshold = floor(limit * ppm / 1_000_000)`.
///
/// Invariant: `1 <= ppm <= 1_000_000` (a ratio in `(0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearLimitRatio(u32);

impl NearLimitRatio {
    /// 0.8.
    pub const DEFAULT: Self = Self(800_000);

    /// A ratio in `(0, 1]`, rounded to millionths.
    pub fn new(ratio: f64) -> Result<Self, String> {
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(format!("{ratio} is outside (0, 1] (default 0.8)"));
        }
        // in range: 0 < ratio * 1e6 <= 1e6, so the cast cannot truncate
        let ppm = (ratio * 1_000_000.0).round().max(1.0) as u32;
        Ok(Self(ppm))
    }

    /// `floor(limit * ratio)`: usage above it is near the limit (envoyproxy/ratelimit's
    /// `nearLimitThreshold`).
    pub fn threshold(self, limit: u64) -> u64 {
        let t = u128::from(limit) * u128::from(self.0) / 1_000_000;
        // t <= limit because ppm <= 1e6
        u64::try_from(t).unwrap_or(limit)
    }

    /// The ratio.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1_000_000.0
    }
}

impl Default for NearLimitRatio {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            listen: None,
            request_timeout: Duration::from_millis(5_000),
            shutdown_timeout: Duration::from_millis(30_000),
            watch_config: true,
            authz: AuthzSettings::default(),
            grpc_listen: None,
            descriptor_config: None,
            rls_response_headers: false,
            near_limit_ratio: NearLimitRatio::DEFAULT,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    listen: Option<String>,
    request_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    watch_config: Option<bool>,
    authz: Option<RawAuthz>,
    grpc_listen: Option<RawGrpcListen>,
    descriptor_config: Option<String>,
    rls_response_headers: Option<bool>,
    near_limit_ratio: Option<f64>,
}

/// `grpc_listen`: an address, `off`, or `false`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawGrpcListen {
    Text(String),
    Flag(bool),
}

/// `null` in a header key disables that header; absent keeps the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    #[serde(default, deserialize_with = "some_nullable")]
    user_header: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_nullable")]
    tenant_header: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_nullable")]
    tool_header: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_nullable")]
    server_header: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_nullable")]
    cost_header: Option<Option<String>>,
    path_headers: Option<Vec<String>>,
    method_headers: Option<Vec<String>>,
    descriptors: Option<std::collections::BTreeMap<String, String>>,
}

fn some_nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn cfg_err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn header(path: &str, v: &str) -> Result<HeaderName, ConfigError> {
    let lower = v.trim().to_ascii_lowercase();
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| cfg_err(path, format!("{v:?} is not a valid HTTP header name")))
}

fn millis(path: &str, v: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(Duration::from_millis(default)),
        Some(n) if (1..=600_000).contains(&n) => Ok(Duration::from_millis(n)),
        Some(n) => Err(cfg_err(path, format!("{n} is outside 1 ..= 600000"))),
    }
}

impl ServiceSettings {
    /// Validate the service's keys (as returned by the core in its `extra` map).
    pub fn from_extra(
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, ConfigError> {
        let raw: RawService = serde_path_to_error::deserialize(serde_json::Value::Object(extra))
            .map_err(|e| {
                let path = e.path().to_string();
                cfg_err(&path, e.into_inner().to_string())
            })?;
        let mut s = ServiceSettings::default();
        if let Some(l) = raw.listen {
            s.listen = Some(parse_listen(&l).map_err(|m| cfg_err("listen", m))?);
        }
        s.request_timeout = millis("request_timeout_ms", raw.request_timeout_ms, 5_000)?;
        s.shutdown_timeout = millis("shutdown_timeout_ms", raw.shutdown_timeout_ms, 30_000)?;
        s.watch_config = raw.watch_config.unwrap_or(true);
        s.grpc_listen =
            match raw.grpc_listen {
                None => None,
                Some(RawGrpcListen::Flag(false)) => Some(GrpcListen::Off),
                Some(RawGrpcListen::Flag(true)) => return Err(cfg_err(
                    "grpc_listen",
                    "true is not an address: give host:port (default 127.0.0.1:8081) or \"off\"",
                )),
                Some(RawGrpcListen::Text(t)) => {
                    Some(GrpcListen::parse(&t).map_err(|m| cfg_err("grpc_listen", m))?)
                }
            };
        if let Some(d) = raw.descriptor_config {
            if d.trim().is_empty() {
                return Err(cfg_err(
                    "descriptor_config",
                    "is empty: give a file or a directory of envoyproxy/ratelimit configs",
                ));
            }
            s.descriptor_config = Some(PathBuf::from(d));
        }
        s.rls_response_headers = raw.rls_response_headers.unwrap_or(false);
        if let Some(r) = raw.near_limit_ratio {
            s.near_limit_ratio =
                NearLimitRatio::new(r).map_err(|m| cfg_err("near_limit_ratio", m))?;
        }
        if let Some(a) = raw.authz {
            let set = |slot: &mut Option<HeaderName>, key: &str, v: Option<Option<String>>| match v
            {
                None => Ok(()),
                Some(None) => {
                    *slot = None;
                    Ok(())
                }
                Some(Some(name)) => {
                    *slot = Some(header(&format!("authz.{key}"), &name)?);
                    Ok::<(), ConfigError>(())
                }
            };
            let z = &mut s.authz;
            set(&mut z.user_header, "user_header", a.user_header)?;
            set(&mut z.tenant_header, "tenant_header", a.tenant_header)?;
            set(&mut z.tool_header, "tool_header", a.tool_header)?;
            set(&mut z.server_header, "server_header", a.server_header)?;
            set(&mut z.cost_header, "cost_header", a.cost_header)?;
            if let Some(list) = a.path_headers {
                z.path_headers = list
                    .iter()
                    .enumerate()
                    .map(|(i, h)| header(&format!("authz.path_headers[{i}]"), h))
                    .collect::<Result<_, _>>()?;
            }
            if let Some(list) = a.method_headers {
                z.method_headers = list
                    .iter()
                    .enumerate()
                    .map(|(i, h)| header(&format!("authz.method_headers[{i}]"), h))
                    .collect::<Result<_, _>>()?;
            }
            for (name, src) in a.descriptors.unwrap_or_default() {
                let path = format!("authz.descriptors[{name:?}]");
                if name.trim().is_empty() {
                    return Err(cfg_err(&path, "descriptor name is blank"));
                }
                let source = match src.trim() {
                    ":path" => Source::Path,
                    ":method" => Source::Method,
                    other => Source::Header(header(&path, other)?),
                };
                z.descriptors.push((name, source));
            }
        }
        Ok(s)
    }

    /// The effective settings, for printing.
    pub fn effective(&self) -> serde_json::Value {
        let opt = |h: &Option<HeaderName>| h.as_ref().map(|h| h.as_str().to_string());
        let list = |v: &[HeaderName]| v.iter().map(|h| h.as_str().to_string()).collect::<Vec<_>>();
        let a = &self.authz;
        let descriptors: serde_json::Map<String, serde_json::Value> = a
            .descriptors
            .iter()
            .map(|(n, s)| (n.clone(), serde_json::Value::String(s.describe())))
            .collect();
        serde_json::json!({
            "listen": self.listen.map(|l| l.to_string()),
            "request_timeout_ms": self.request_timeout.as_millis() as u64,
            "shutdown_timeout_ms": self.shutdown_timeout.as_millis() as u64,
            "watch_config": self.watch_config,
            "grpc_listen": self.grpc_listen.map(|g| g.to_string()),
            "descriptor_config": self.descriptor_config.as_ref().map(|p| p.display().to_string()),
            "rls_response_headers": self.rls_response_headers,
            "near_limit_ratio": self.near_limit_ratio.get(),
            "authz": {
                "user_header": opt(&a.user_header),
                "tenant_header": opt(&a.tenant_header),
                "tool_header": opt(&a.tool_header),
                "server_header": opt(&a.server_header),
                "cost_header": opt(&a.cost_header),
                "path_headers": list(&a.path_headers),
                "method_headers": list(&a.method_headers),
                "descriptors": descriptors,
            }
        })
    }
}

/// Parse a listen address (`host:port`; `localhost` is accepted as 127.0.0.1).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let t2 = t
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"));
    t2.as_deref()
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("{s:?} is not a socket address like 127.0.0.1:8080"))
}

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The core's part.
    pub limiter: LimiterConfig,
    /// The service's part.
    pub service: ServiceSettings,
}

impl Loaded {
    /// Validate YAML text. `redis_url` (from `RATEWALL_REDIS_URL`) replaces the file's `redis_url`.
    pub fn from_yaml(text: &str, redis_url: Option<&str>) -> Result<Self, ConfigError> {
        // Strict: bounded size and depth, duplicate keys (at any depth) refused.
        let mut value = ratewall_core::config::document::yaml(text)?;
        if value.is_null() {
            value = serde_json::Value::Object(Default::default());
        }
        if let (Some(url), serde_json::Value::Object(map)) = (redis_url, &mut value) {
            map.insert(
                "redis_url".into(),
                serde_json::Value::String(url.to_string()),
            );
        }
        let empty = value.as_object().is_some_and(|m| m.is_empty());
        let (limiter, extra) = LimiterConfig::from_json_value_partial(value, SERVICE_KEYS)?;
        let service = ServiceSettings::from_extra(extra)?;
        // Last, once every key is known valid: a file that enables no limit is an error. With
        // `descriptor_config` the rules come from other files: `ConfigSource::load` checks once
        // they are added.
        if service.descriptor_config.is_none() {
            limiter.require_limits(empty)?;
        }
        Ok(Self { limiter, service })
    }

    /// The effective configuration (core and service keys, defaults filled in) as YAML.
    pub fn effective_yaml(&self) -> String {
        let mut v = self.limiter.effective();
        if let (serde_json::Value::Object(core), serde_json::Value::Object(svc)) =
            (&mut v, self.service.effective())
        {
            core.extend(svc);
        }
        ratewall_core::config::document::to_yaml(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        let l = Loaded::from_yaml(DEFAULT_POLICY, None).expect("default policy");
        assert!(l.effective_yaml().contains("by_user: 100/m"));
        assert_eq!(l.service, ServiceSettings::default());
    }

    #[test]
    fn service_keys_are_validated_and_named() {
        let e = Loaded::from_yaml("authz: {user_hedaer: x}", None).expect_err("typo");
        let e2 = Loaded::from_yaml("listen: 127.0.0.1:1", None).expect_err("no limit");
        assert!(e2.message.contains("no limit is configured"), "{e2}");
        let e3 = Loaded::from_yaml(
            "by_user: 1/s\nauthz: {user_header: a, user_header: b}",
            None,
        )
        .expect_err("duplicate");
        assert!(
            e3.message
                .contains("duplicate key \"user_header\" at line 2"),
            "{e3}"
        );
        assert!(e.message.contains("user_hedaer"), "{e}");
        let e = Loaded::from_yaml("authz: {user_header: 'bad header'}", None).expect_err("bad");
        assert_eq!(e.path, "authz.user_header");
        let e = Loaded::from_yaml("listen: nowhere", None).expect_err("listen");
        assert_eq!(e.path, "listen");
        let e = Loaded::from_yaml("request_timeout_ms: 0", None).expect_err("timeout");
        assert_eq!(e.path, "request_timeout_ms");
        let e = Loaded::from_yaml("by_user: 1/s\nrequest_timeout_ms: 0", None).expect_err("t");
        assert_eq!(e.path, "request_timeout_ms");
        let e = Loaded::from_yaml("lisen: 1", None).expect_err("unknown");
        assert!(e.message.contains("did you mean \"listen\""), "{e}");
    }

    #[test]
    fn authz_mapping() {
        let l = Loaded::from_yaml(
            "by_user: 1/s\nauthz: {user_header: X-Api-User, tenant_header: null, descriptors: {path: ':path', key: X-Api-Key}}",
            None,
        )
        .expect("valid");
        let a = &l.service.authz;
        assert_eq!(a.user_header, Some(HeaderName::from_static("x-api-user")));
        assert_eq!(a.tenant_header, None);
        assert_eq!(a.descriptors.len(), 2);
        assert!(a.descriptors.contains(&("path".into(), Source::Path)));
    }

    #[test]
    fn near_limit_ratio_is_validated() {
        let l = Loaded::from_yaml("by_user: 1/s", None).expect("valid");
        assert_eq!(l.service.near_limit_ratio.threshold(25), 20);
        assert_eq!(l.service.near_limit_ratio.threshold(5), 4);
        let l = Loaded::from_yaml("by_user: 1/s\nnear_limit_ratio: 0.5", None).expect("valid");
        assert_eq!(l.service.near_limit_ratio.threshold(5), 2);
        assert_eq!(l.service.near_limit_ratio.threshold(u64::MAX), u64::MAX / 2);
        let l = Loaded::from_yaml("by_user: 1/s\nnear_limit_ratio: 1", None).expect("valid");
        assert_eq!(l.service.near_limit_ratio.threshold(7), 7);
        for bad in ["0", "1.5", "-0.1"] {
            let e = Loaded::from_yaml(&format!("by_user: 1/s\nnear_limit_ratio: {bad}"), None)
                .expect_err(bad);
            assert_eq!(e.path, "near_limit_ratio", "{bad}: {e}");
        }
        let e = Loaded::from_yaml("by_user: 1/s\nnear_limit_ratio: high", None).expect_err("text");
        assert_eq!(e.path, "near_limit_ratio", "{e}");
    }

    #[test]
    fn redis_url_override() {
        let l = Loaded::from_yaml(
            "by_user: 1/s\nbackend: redis\nredis_url: redis://a:1",
            Some("redis://b:2"),
        )
        .expect("valid");
        assert_eq!(l.limiter.redis.map(|r| r.url), Some("redis://b:2".into()));
    }
}
