//! Validated configuration and the per-request plan.
//!
//! [`LimiterConfig::from_json_value`] checks every key once; [`Policy::plan`] then maps a request's
//! context (user, tenant, server, tool, descriptors, cost) to the cells it must pass, in the
//! tie-break order user, user_per_server, tenant, tool, descriptors.

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use serde_json::json;

use super::rate::{parse_rate, Limit, Rate, MAX_COUNT};
use super::schema::{split_and_parse, RawConfig};
use super::{normalize_name, ConfigError};
use crate::algorithm::Algorithm;
use crate::key::{cell_key, DimKey};

/// Where counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process memory store.
    Memory,
    /// Shared Redis store.
    Redis,
}

/// What to do when the backend cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Allow the request (default).
    Open,
    /// Deny the request (`BACKEND_UNAVAILABLE`).
    Closed,
}

/// Which rate-limit headers to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// `X-RateLimit-Limit/Remaining/Reset` + `Retry-After` (default).
    Legacy,
    /// `RateLimit-Policy` + `RateLimit` (draft-ietf-httpapi-ratelimit-headers) + `Retry-After`.
    Ietf,
    /// Both sets.
    Both,
    /// No headers.
    None,
}

/// Whose clock drives Redis state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSource {
    /// Redis `TIME` inside the script (default): skewed instances agree.
    Server,
    /// The caller's clock (managed Redis without `TIME` in scripts; deterministic tests).
    Client,
}

/// Redis connection settings (validated as strings here; files are opened by the Redis store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` or `unix://` URL; with `cluster`, one or more comma-separated
    /// `redis://` or `rediss://` seed node URLs.
    pub url: String,
    /// Redis Cluster mode (`redis_cluster: true`): `url` lists seed nodes, keys are routed by
    /// their hash tag.
    pub cluster: bool,
    /// CA bundle (PEM) for `rediss://`.
    pub ca_certs: Option<String>,
    /// Client certificate (PEM) for mTLS.
    pub certfile: Option<String>,
    /// Client key (PEM) for mTLS.
    pub keyfile: Option<String>,
    /// Verify the server's hostname (default true).
    pub check_hostname: bool,
    /// Connect and per-command timeout.
    pub timeout_ms: u64,
    /// Whose clock.
    pub clock: ClockSource,
    /// Capacity of the negative cache (0 disables it).
    pub negative_cache_keys: usize,
}

/// A policy name (`by_user`, `tool:echo`, a descriptor limit's name, ...): configured, hence
/// bounded, and interned for the life of the process so that copying it on the hot path touches
/// no shared reference count (an `Arc` clone per check would bounce one cache line between all
/// threads checking any key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyName(&'static str);

impl PolicyName {
    /// Intern `name` (each distinct name is allocated once per process).
    pub fn intern(name: &str) -> Self {
        // Sorted, without repeats (load time only; a configuration has few names).
        static NAMES: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
        let mut names = NAMES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match names.binary_search(&name) {
            Ok(i) => Self(names[i]),
            Err(i) => {
                let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
                names.insert(i, leaked);
                Self(leaked)
            }
        }
    }

    /// The name.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl std::ops::Deref for PolicyName {
    type Target = str;
    fn deref(&self) -> &str {
        self.0
    }
}

impl AsRef<str> for PolicyName {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for PolicyName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Which dimension a cell belongs to (bounded: usable as a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DimensionKind {
    /// `by_user`.
    User,
    /// `by_user_per_server`.
    UserPerServer,
    /// `by_tenant`.
    Tenant,
    /// `by_tool`.
    Tool,
    /// A named descriptor limit.
    Descriptor,
}

impl DimensionKind {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            DimensionKind::User => "user",
            DimensionKind::UserPerServer => "user_per_server",
            DimensionKind::Tenant => "tenant",
            DimensionKind::Tool => "tool",
            DimensionKind::Descriptor => "descriptor",
        }
    }
}

/// One limit of one dimension, resolved for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Storage key (see [`crate::key`]).
    pub key: String,
    /// The limit.
    pub limit: Limit,
    /// Algorithm (same for every cell of a policy).
    pub algorithm: Algorithm,
    /// Dimension kind.
    pub dimension: DimensionKind,
    /// Policy name for headers and metrics (`by_user`, `by_tenant`, `tool:echo`, a descriptor limit's
    /// name; `-<window>s` appended when a dimension has several limits). Configured, so bounded.
    pub name: PolicyName,
    /// Units this cell consumes: `0` checks without consuming (RLS `hits_addend: 0`). Stores
    /// pass it to the algorithm's `peek` and `commit` (see [`crate::store::commits`]).
    /// [`Policy::plan`] gives every cell the request's cost, [`Policy::plan_descriptors`]
    /// each descriptor's `hits_addend`.
    pub cost: u64,
    /// Evaluated, counted and reported, but never denies the request (global `shadow_mode`,
    /// or the rule's own `shadow_mode`). See [`crate::decision`].
    pub shadow: bool,
}

/// Everything one request must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Cells in tie-break order. Each carries its own cost and shadow flag (authoritative).
    pub cells: Vec<Cell>,
    /// The request's nominal cost ([`crate::Decision::cost`]; default 1). Stores consume each
    /// cell's own [`Cell::cost`].
    pub cost: u64,
}

/// A request's identity, as the packaging extracted it. Untrusted.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    /// User identity (trimmed; blank or absent -> `anonymous`).
    pub user: Option<&'a str>,
    /// Tenant (trimmed; blank or absent -> no tenant dimension, unscoped keys).
    pub tenant: Option<&'a str>,
    /// Server id for `by_user_per_server`.
    pub server: Option<&'a str>,
    /// Whether this request is subject to `by_user_per_server` (tool calls in the gateway).
    pub per_server: bool,
    /// Tool or prompt name (normalised here).
    pub tool: Option<&'a str>,
    /// Descriptor values by name.
    pub descriptors: &'a [(&'a str, &'a str)],
    /// Cost (0 is treated as 1).
    pub cost: u64,
}

/// A request whose context cannot be evaluated. Nothing is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// `by_user_per_server` applies but the server id is missing or blank.
    ServerIdMissing,
    /// The server id has characters outside ASCII letters, digits, `-`, `_`, `.`.
    ServerIdInvalid,
    /// The server id is longer than 128 bytes.
    ServerIdTooLong,
    /// `cost` is above the largest count any limit may have.
    CostTooLarge(u64),
}

impl ContextError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            ContextError::CostTooLarge(_) => "cost",
            _ => "server_id",
        }
    }
}

impl std::fmt::Display for ContextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextError::ServerIdMissing => {
                f.write_str("server_id is required when by_user_per_server is configured")
            }
            ContextError::ServerIdInvalid => f.write_str(
                "server_id may contain only ASCII letters, digits, hyphen, underscore, and period",
            ),
            ContextError::ServerIdTooLong => {
                f.write_str("server_id exceeds the maximum length of 128 bytes")
            }
            ContextError::CostTooLarge(c) => {
                write!(f, "cost {c} exceeds the maximum of {MAX_COUNT}")
            }
        }
    }
}

impl std::error::Error for ContextError {}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DimRate {
    limits: Vec<(Limit, PolicyName)>,
}

impl DimRate {
    fn new(base: &str, rate: &Rate) -> Self {
        let multi = rate.limits().len() > 1;
        Self {
            limits: rate
                .limits()
                .iter()
                .map(|l| {
                    let name = if multi {
                        format!("{base}-{}s", l.window_secs())
                    } else {
                        base.to_string()
                    };
                    (*l, PolicyName::intern(&header_safe(&name)))
                })
                .collect(),
        }
    }
}

/// A policy name usable inside an RFC 8941 sf-string: printable ASCII, with `"` and `\\` replaced.
pub(crate) fn header_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DescriptorLimit {
    descriptors: Vec<String>,
    rate: DimRate,
    name: String,
    /// `limits[i].shadow_mode`.
    shadow: bool,
}

/// The compiled limits: what to check for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    algorithm: Algorithm,
    prefix: String,
    by_user: Option<DimRate>,
    by_user_per_server: Option<DimRate>,
    by_tenant: Option<DimRate>,
    /// `(normalised tool, rate)`, sorted by tool, no repeats: a binary search is as fast as a hash
    /// map for a configuration's tools, and needs no hasher (SipHash, random keys) nor table code
    /// in size-sensitive builds (the wasm filter).
    by_tool: Vec<(String, DimRate)>,
    limits: Vec<DescriptorLimit>,
    /// `shadow_mode`: every cell is shadow.
    shadow_mode: bool,
    /// RLS domains (descriptor rules): inline `domains` plus [`LimiterConfig::with_domains`].
    #[cfg(feature = "descriptors")]
    domains: std::sync::Arc<super::descriptors::DomainSet>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Limits.
    pub policy: Policy,
    /// Store.
    pub backend: Backend,
    /// Redis settings (`backend: redis` only).
    pub redis: Option<RedisSettings>,
    /// Backend failure behaviour.
    pub fail_mode: FailMode,
    /// Header flavour.
    pub headers: HeaderFormat,
    /// Memory store capacity.
    pub memory_max_keys: usize,
    /// The file as written (for printing the effective config).
    pub raw: RawConfig,
}

fn err(path: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(path, msg)
}

fn enum_value<T: Copy>(
    key: &str,
    value: Option<&String>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let norm = v.trim().to_ascii_lowercase();
    match choices.iter().find(|(name, _)| *name == norm) {
        Some((_, t)) => Ok(*t),
        None => Err(not_one_of(key, v, &mut choices.iter().map(|(n, _)| *n))),
    }
}

/// `"<v>" is not valid; expected one of "a", "b"`: not generic, so the message is built by one
/// copy of this code whatever the enum.
fn not_one_of(key: &str, v: &str, names: &mut dyn Iterator<Item = &str>) -> ConfigError {
    let mut list = String::new();
    for n in names {
        if !list.is_empty() {
            list.push_str(", ");
        }
        let _ = write!(list, "{n:?}");
    }
    err(key, format!("{v:?} is not valid; expected one of {list}"))
}

/// Parse a rate string for `algorithm`: every limit must be one the algorithm enforces exactly
/// ([`Algorithm::check_limit`]); errors name the path, the text and the algorithm.
pub fn rate_for(path: &str, text: &str, algorithm: Algorithm) -> Result<Rate, ConfigError> {
    let rate = parse_rate(text).map_err(|e| err(path, format!("{text:?}: {e}")))?;
    for l in rate.limits() {
        algorithm.check_limit(l).map_err(|e| {
            err(
                path,
                format!("{text:?}: {e} (algorithm {})", algorithm.name()),
            )
        })?;
    }
    Ok(rate)
}

/// Whether `algorithm` computes `limit` exactly (in Rust and in the Redis script alike): the
/// algorithms that multiply count and window need `count × window_µs <= 2^53`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl LimiterConfig {
    /// Validate a configuration given as JSON. `extra_keys` are the packaging's own settings,
    /// returned untouched in the second element. A configuration that enables no limit is an
    /// error unless it sets `allow_empty: true` ([`Self::check_not_empty`]).
    pub fn from_json_value(
        value: serde_json::Value,
        extra_keys: &[&str],
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), ConfigError> {
        let empty_document = value.is_null() || value.as_object().is_some_and(|m| m.is_empty());
        let (cfg, extra) = Self::from_json_value_partial(value, extra_keys)?;
        cfg.require_limits(empty_document)?;
        Ok((cfg, extra))
    }

    /// [`Self::from_json_value`] without the emptiness check, for packagings whose limits may
    /// come from elsewhere (the Envoy filter in remote mode; limits merged in afterwards): they
    /// call [`Self::check_not_empty`] once the configuration is complete.
    pub fn from_json_value_partial(
        value: serde_json::Value,
        extra_keys: &[&str],
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), ConfigError> {
        let (raw, extra) = split_and_parse(value, extra_keys)?;
        Ok((Self::compile(raw)?, extra))
    }

    /// A configuration that enables no limit at all is an error unless it says so explicitly
    /// (`allow_empty: true`): an empty or truncated file must never mean "no limits" silently.
    pub fn check_not_empty(&self) -> Result<(), ConfigError> {
        self.require_limits(self.raw == RawConfig::default())
    }

    /// [`Self::check_not_empty`], told whether the whole document was empty (`{}`, `null`, an
    /// empty file) so the error says which problem it is.
    pub fn require_limits(&self, empty_document: bool) -> Result<(), ConfigError> {
        if !self.policy.is_empty() || self.raw.allow_empty == Some(true) {
            return Ok(());
        }
        let what = if empty_document {
            "the configuration is empty (an empty or truncated file, {} or null)"
        } else {
            "no limit is configured"
        };
        Err(err(
            "<root>",
            format!("{what}: set one (e.g. by_user: \"100/m\"), or allow_empty: true to run without limits"),
        ))
    }

    /// [`LimiterConfig::from_json_value`] from JSON text (strict: bounded size and depth,
    /// duplicate keys refused, see [`super::document`]).
    pub fn from_json_str(
        text: &str,
        extra_keys: &[&str],
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), ConfigError> {
        Self::from_json_value(super::document::json(text.as_bytes())?, extra_keys)
    }

    /// [`LimiterConfig::from_json_value`] from YAML text (strict: bounded size and depth,
    /// duplicate keys refused, see [`super::document`]). An empty document is `{}` (and so an
    /// error unless it is allowed: it configures no limit).
    #[cfg(feature = "yaml")]
    pub fn from_yaml_str(
        text: &str,
        extra_keys: &[&str],
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), ConfigError> {
        let value = super::document::yaml(text)?;
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        Self::from_json_value(value, extra_keys)
    }

    /// [`LimiterConfig::from_yaml_str`] without the "no limit configured" check, for packagings
    /// that add limits afterwards (e.g. [`LimiterConfig::with_domains`]); they call
    /// [`LimiterConfig::check_not_empty`] once every limit is in.
    #[cfg(feature = "yaml")]
    pub fn from_yaml_str_partial(
        text: &str,
        extra_keys: &[&str],
    ) -> Result<(Self, serde_json::Map<String, serde_json::Value>), ConfigError> {
        let value = super::document::yaml(text)?;
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        Self::from_json_value_partial(value, extra_keys)
    }

    /// Validate a parsed file.
    pub fn compile(raw: RawConfig) -> Result<Self, ConfigError> {
        let algorithm = match raw.algorithm.as_deref() {
            None => Algorithm::FixedWindow,
            Some(a) => Algorithm::from_name(a).ok_or_else(|| {
                err(
                    "algorithm",
                    format!(
                        "{a:?} is not valid; expected one of \"fixed_window\", \"sliding_window\", \"sliding_window_counter\", \"token_bucket\", \"gcra\""
                    ),
                )
            })?,
        };
        let backend = enum_value(
            "backend",
            raw.backend.as_ref(),
            Backend::Memory,
            &[("memory", Backend::Memory), ("redis", Backend::Redis)],
        )?;
        let fail_mode = enum_value(
            "fail_mode",
            raw.fail_mode.as_ref(),
            FailMode::Open,
            &[("open", FailMode::Open), ("closed", FailMode::Closed)],
        )?;
        let headers = enum_value(
            "headers",
            raw.headers.as_ref(),
            HeaderFormat::Legacy,
            &[
                ("legacy", HeaderFormat::Legacy),
                ("ietf", HeaderFormat::Ietf),
                ("both", HeaderFormat::Both),
                ("none", HeaderFormat::None),
            ],
        )?;
        let clock = enum_value(
            "clock",
            raw.clock.as_ref(),
            ClockSource::Server,
            &[
                ("server", ClockSource::Server),
                ("client", ClockSource::Client),
            ],
        )?;

        let prefix = raw.redis_key_prefix.clone().unwrap_or_else(|| "rl".into());
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'{' || b == b'}')
        {
            return Err(err(
                "redis_key_prefix",
                format!("{prefix:?} must be 1..=64 bytes without whitespace, control characters, '{{' or '}}'"),
            ));
        }

        let dim = |key: &str, v: &Option<String>| -> Result<Option<DimRate>, ConfigError> {
            v.as_ref()
                .map(|text| rate_for(key, text, algorithm).map(|r| DimRate::new(key, &r)))
                .transpose()
        };
        let by_user = dim("by_user", &raw.by_user)?;
        let by_user_per_server = dim("by_user_per_server", &raw.by_user_per_server)?;
        let by_tenant = dim("by_tenant", &raw.by_tenant)?;

        let mut by_tool: Vec<(String, DimRate)> = Vec::new();
        for (name, text) in raw.by_tool.iter().flatten() {
            let path = format!("by_tool[{name:?}]");
            let norm = normalize_name(name);
            if norm.is_empty() {
                return Err(err(&path, "tool name is blank"));
            }
            let rate = rate_for(&path, text, algorithm)?;
            let at = match by_tool.binary_search_by(|(t, _)| t.as_str().cmp(&norm)) {
                Err(at) => at,
                Ok(_) => {
                    // The earlier key (in the file's key order) with the same normalised name.
                    let first = raw
                        .by_tool
                        .iter()
                        .flatten()
                        .map(|(k, _)| k)
                        .find(|k| normalize_name(k) == norm)
                        .unwrap_or(name);
                    return Err(err(
                        "by_tool",
                        format!("duplicate key after normalisation: {first:?} and {name:?} both become {norm:?}"),
                    ));
                }
            };
            let rate = DimRate::new(&format!("tool:{norm}"), &rate);
            by_tool.insert(at, (norm, rate));
        }

        let mut limits: Vec<DescriptorLimit> = Vec::new();
        for (i, l) in raw.limits.iter().flatten().enumerate() {
            let path = format!("limits[{i}]");
            if !valid_name(&l.name) {
                return Err(err(
                    &format!("{path}.name"),
                    format!(
                        "{:?} must be 1..=64 ASCII letters, digits, '_', '-' or '.'",
                        l.name
                    ),
                ));
            }
            if ["user", "user_per_server", "tenant"].contains(&l.name.as_str())
                || l.name.starts_with("tool")
            {
                return Err(err(
                    &format!("{path}.name"),
                    format!("{:?} is reserved for a built-in dimension", l.name),
                ));
            }
            if limits.iter().any(|o| o.name == l.name) {
                return Err(err(
                    &format!("{path}.name"),
                    format!("duplicate limit name {:?}", l.name),
                ));
            }
            if l.descriptors.is_empty() {
                return Err(err(
                    &format!("{path}.descriptors"),
                    "must name at least one descriptor",
                ));
            }
            for (j, d) in l.descriptors.iter().enumerate() {
                if d.trim().is_empty() || l.descriptors[..j].contains(d) {
                    return Err(err(
                        &format!("{path}.descriptors[{j}]"),
                        format!("{d:?} is blank or repeated"),
                    ));
                }
            }
            let rate = rate_for(&format!("{path}.rate"), &l.rate, algorithm)?;
            limits.push(DescriptorLimit {
                descriptors: l.descriptors.clone(),
                rate: DimRate::new(&l.name, &rate),
                name: l.name.clone(),
                shadow: l.shadow_mode.unwrap_or(false),
            });
        }

        let memory_max_keys = match raw.memory_max_keys {
            None => 1_000_000,
            Some(n) if (1_024..=100_000_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(
                    "memory_max_keys",
                    format!("{n} is outside 1024 ..= 100000000"),
                ))
            }
        };
        let timeout_ms = match raw.redis_timeout_ms {
            None => 50,
            Some(n) if (1..=60_000).contains(&n) => n,
            Some(n) => {
                return Err(err(
                    "redis_timeout_ms",
                    format!("{n} is outside 1 ..= 60000"),
                ))
            }
        };
        let negative_cache_keys = match raw.redis_negative_cache_keys {
            None => 100_000,
            Some(n) if n <= 10_000_000 => n as usize,
            Some(n) => {
                return Err(err(
                    "redis_negative_cache_keys",
                    format!("{n} is above 10000000"),
                ))
            }
        };

        let tls_fields = [
            ("redis_ssl_ca_certs", &raw.redis_ssl_ca_certs),
            ("redis_ssl_certfile", &raw.redis_ssl_certfile),
            ("redis_ssl_keyfile", &raw.redis_ssl_keyfile),
        ];
        let redis = match backend {
            Backend::Memory => None,
            Backend::Redis => {
                let url = raw
                    .redis_url
                    .clone()
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| err("redis_url", "is required when backend is \"redis\""))?;
                let url = url.trim().to_string();
                let cluster = raw.redis_cluster.unwrap_or(false);
                let tls = url.starts_with("rediss://");
                if cluster {
                    for part in url.split(',').map(str::trim) {
                        if !(part.starts_with("redis://") || part.starts_with("rediss://")) {
                            return Err(err(
                                "redis_url",
                                format!("{part:?} must start with redis:// or rediss:// (redis_cluster: true takes comma-separated seed node URLs)"),
                            ));
                        }
                        if part.starts_with("rediss://") != tls {
                            return Err(err(
                                "redis_url",
                                format!("{url:?} mixes redis:// and rediss:// seed nodes"),
                            ));
                        }
                    }
                } else if !tls && !url.starts_with("redis://") && !url.starts_with("unix://") {
                    return Err(err(
                        "redis_url",
                        format!("{url:?} must start with redis://, rediss:// or unix://"),
                    ));
                }
                for (key, v) in tls_fields {
                    if v.is_some() && !tls {
                        return Err(err(key, format!("{v:?} requires a rediss:// redis_url")));
                    }
                }
                if raw.redis_ssl_certfile.is_some() != raw.redis_ssl_keyfile.is_some() {
                    return Err(err(
                        "redis_ssl_certfile",
                        "redis_ssl_certfile and redis_ssl_keyfile must be given together (mTLS)",
                    ));
                }
                Some(RedisSettings {
                    url,
                    cluster,
                    ca_certs: raw.redis_ssl_ca_certs.clone(),
                    certfile: raw.redis_ssl_certfile.clone(),
                    keyfile: raw.redis_ssl_keyfile.clone(),
                    check_hostname: raw.redis_ssl_check_hostname.unwrap_or(true),
                    timeout_ms,
                    clock,
                    negative_cache_keys,
                })
            }
        };

        #[cfg(feature = "descriptors")]
        let domains = match &raw.domains {
            None => Default::default(),
            Some(v) => {
                let set = super::descriptors::DomainSet::from_inline(v)?;
                set.check_algorithms(algorithm)?;
                std::sync::Arc::new(set)
            }
        };

        Ok(Self {
            policy: Policy {
                algorithm,
                prefix,
                by_user,
                by_user_per_server,
                by_tenant,
                by_tool,
                limits,
                shadow_mode: raw.shadow_mode.unwrap_or(false),
                #[cfg(feature = "descriptors")]
                domains,
            },
            backend,
            redis,
            fail_mode,
            headers,
            memory_max_keys,
            raw,
        })
    }

    /// The effective configuration (defaults filled in), for `--check-config` and logs.
    pub fn effective(&self) -> serde_json::Value {
        let r = &self.raw;
        json!({
            "by_user": r.by_user,
            "by_user_per_server": r.by_user_per_server,
            "by_tenant": r.by_tenant,
            "by_tool": r.by_tool.clone().unwrap_or_default(),
            "limits": r.limits.clone().unwrap_or_default(),
            "algorithm": self.policy.algorithm.name(),
            "backend": match self.backend { Backend::Memory => "memory", Backend::Redis => "redis" },
            "redis_url": self.redis.as_ref().map(|s| redact(&s.url)),
            "redis_key_prefix": self.policy.prefix,
            "redis_timeout_ms": self.redis.as_ref().map(|s| s.timeout_ms),
            "redis_cluster": self.redis.as_ref().map(|s| s.cluster),
            "clock": self.redis.as_ref().map(|s| match s.clock { ClockSource::Server => "server", ClockSource::Client => "client" }),
            "fail_mode": match self.fail_mode { FailMode::Open => "open", FailMode::Closed => "closed" },
            "headers": match self.headers { HeaderFormat::Legacy => "legacy", HeaderFormat::Ietf => "ietf", HeaderFormat::Both => "both", HeaderFormat::None => "none" },
            "memory_max_keys": self.memory_max_keys,
            "shadow_mode": self.policy.shadow_mode,
            "domains": self.effective_domains(),
            "allow_empty": r.allow_empty.unwrap_or(false),
        })
    }

    #[cfg(feature = "descriptors")]
    fn effective_domains(&self) -> serde_json::Value {
        self.policy.domains.summary()
    }

    #[cfg(not(feature = "descriptors"))]
    fn effective_domains(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }

    /// Add RLS domains loaded by the packaging (e.g. the service's `descriptor_config` files,
    /// through [`super::descriptors::DomainSet::from_documents`]) to the inline `domains`.
    /// A domain defined twice is an error naming both origins; rules without their own
    /// `algorithm` are checked against this config's `algorithm`.
    #[cfg(feature = "descriptors")]
    pub fn with_domains(mut self, set: super::descriptors::DomainSet) -> Result<Self, ConfigError> {
        set.check_algorithms(self.policy.algorithm)?;
        let merged = self.policy.domains.merged(set)?;
        self.policy.domains = std::sync::Arc::new(merged);
        Ok(self)
    }
}

/// Hide a password in a Redis URL.
pub fn redact(url: &str) -> String {
    // A cluster seed list: redact every node (only when every part is a URL, so a password
    // containing ',' is never split and partly shown).
    if url.contains(',')
        && url.split(',').all(|p| {
            p.trim_start().starts_with("redis://") || p.trim_start().starts_with("rediss://")
        })
    {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// What every cell of one request shares.
#[derive(Clone, Copy)]
struct Scope<'a> {
    prefix: &'a str,
    tenant: Option<&'a str>,
    algorithm: Algorithm,
    cost: u64,
    shadow: bool,
}

fn push_cells(
    out: &mut Vec<Cell>,
    rate: &DimRate,
    kind: DimensionKind,
    scope: Scope<'_>,
    shadow: bool,
    dim: DimKey<'_>,
) {
    for (limit, name) in &rate.limits {
        out.push(Cell {
            key: cell_key(
                scope.prefix,
                scope.tenant,
                dim,
                scope.algorithm,
                limit.window_secs(),
            ),
            limit: *limit,
            algorithm: scope.algorithm,
            dimension: kind,
            name: *name,
            cost: scope.cost,
            shadow: scope.shadow || shadow,
        });
    }
}

fn clean(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

impl Policy {
    /// Whether no limit is configured, so every plan has no cells.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_none()
            && self.by_user_per_server.is_none()
            && self.by_tenant.is_none()
            && self.by_tool.is_empty()
            && self.limits.is_empty()
            && self.domains_empty()
    }

    #[cfg(feature = "descriptors")]
    fn domains_empty(&self) -> bool {
        self.domains.is_empty()
    }

    #[cfg(not(feature = "descriptors"))]
    fn domains_empty(&self) -> bool {
        true
    }

    /// The RLS domains (descriptor rules) of this policy.
    #[cfg(feature = "descriptors")]
    pub fn domains(&self) -> &super::descriptors::DomainSet {
        &self.domains
    }

    /// The algorithm of every cell.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `shadow_mode` is on (every cell is shadow: nothing is ever denied).
    pub fn shadow_mode(&self) -> bool {
        self.shadow_mode
    }

    /// Whether `by_user_per_server` is configured.
    pub fn has_per_server(&self) -> bool {
        self.by_user_per_server.is_some()
    }

    /// The `by_tool` rate of a normalised tool name.
    fn tool_rate(&self, normalized: &str) -> Option<&DimRate> {
        self.by_tool
            .binary_search_by(|(t, _)| t.as_str().cmp(normalized))
            .ok()
            .and_then(|i| self.by_tool.get(i))
            .map(|(_, r)| r)
    }

    /// Whether the normalised tool name has a `by_tool` limit.
    pub fn has_tool(&self, normalized: &str) -> bool {
        self.tool_rate(normalized).is_some()
    }

    /// The descriptor names any descriptor limit reads (for packagings that extract them).
    pub fn descriptor_names(&self) -> impl Iterator<Item = &str> {
        self.limits
            .iter()
            .flat_map(|l| l.descriptors.iter().map(String::as_str))
    }

    /// The cells a request must pass, in tie-break order. An empty plan means no limit applies.
    pub fn plan(&self, ctx: &RequestContext<'_>) -> Result<Plan, ContextError> {
        let cost = ctx.cost.max(1);
        if cost > MAX_COUNT {
            return Err(ContextError::CostTooLarge(cost));
        }
        let tenant = clean(ctx.tenant);
        let user = clean(ctx.user).unwrap_or("anonymous");
        let server = if ctx.per_server && self.by_user_per_server.is_some() {
            let s = clean(ctx.server).ok_or(ContextError::ServerIdMissing)?;
            if s.len() > 128 {
                return Err(ContextError::ServerIdTooLong);
            }
            if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(ContextError::ServerIdInvalid);
            }
            Some(s)
        } else {
            None
        };
        let scope = Scope {
            prefix: &self.prefix,
            tenant,
            algorithm: self.algorithm,
            cost,
            shadow: self.shadow_mode,
        };
        let mut cells = Vec::new();
        if let Some(r) = &self.by_user {
            let dk = DimKey::User(user);
            push_cells(&mut cells, r, DimensionKind::User, scope, false, dk);
        }
        if let (Some(r), Some(s)) = (&self.by_user_per_server, server) {
            let dk = DimKey::UserServer(user, s);
            let kind = DimensionKind::UserPerServer;
            push_cells(&mut cells, r, kind, scope, false, dk);
        }
        if let (Some(r), Some(_)) = (&self.by_tenant, tenant) {
            push_cells(
                &mut cells,
                r,
                DimensionKind::Tenant,
                scope,
                false,
                DimKey::Tenant,
            );
        }
        if let Some(tool) = ctx.tool {
            if !self.by_tool.is_empty() {
                let norm = normalize_name(tool);
                if let Some(r) = self.tool_rate(&norm) {
                    let dk = DimKey::Tool(&norm);
                    push_cells(&mut cells, r, DimensionKind::Tool, scope, false, dk);
                }
            }
        }
        for l in &self.limits {
            let values: Option<Vec<&str>> = l
                .descriptors
                .iter()
                .map(|d| {
                    ctx.descriptors
                        .iter()
                        .find(|(n, _)| n == d)
                        .map(|(_, v)| *v)
                })
                .collect();
            if let Some(values) = values {
                let dk = DimKey::Descriptor(&l.name, &values);
                let kind = DimensionKind::Descriptor;
                push_cells(&mut cells, &l.rate, kind, scope, l.shadow, dk);
            }
        }
        Ok(Plan { cells, cost })
    }
}
