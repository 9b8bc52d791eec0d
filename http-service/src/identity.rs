//! Proxy mode's identity extraction, shared by HTTP `/authz` and gRPC ext_authz
//! (`Authorization/Check`) so the two can never drift.
//!
//! The configured `authz.*` headers give the user, tenant, tool, server id, cost and descriptor
//! values of a request ([`extract`]). The headers come from a [`HeaderSource`]: the HTTP request's
//! own header lines, or the headers of an ext_authz `CheckRequest`, where Envoy sends either a map
//! in which repeated headers are **merged** into one value joined with `,` (the default), or the
//! raw list (`encode_raw_headers: true`) in which each header line is its own entry.
//!
//! A request is ambiguous, hence a 400 naming the header, when an identity, cost or descriptor
//! header
//! * appears more than once (two header lines; two raw entries), or
//! * in a merged map, holds a `,`: Envoy joins repeated headers that way, so `alice,mallory`
//!   cannot be told from two lines, and taking it as one id would let a client that can prepend a
//!   value pick its own counter. (With `encode_raw_headers: true` a comma inside one value is
//!   allowed, as on HTTP.)
//!
//! so a header appended by a proxy can never silently lose to (or win over) the client's.
//! The original path and method headers are read the same way, but a comma is allowed in them
//! (they are not identities and paths may hold commas).

use axum::http::{HeaderMap, HeaderName};
use ratewall_core::config::{ContextError, RequestContext};

use crate::settings::{AuthzSettings, Source};

/// What a request holds for one header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Not present.
    Absent,
    /// Exactly one value (raw bytes).
    One(&'a [u8]),
    /// Present more than once.
    Repeated,
}

/// Request headers, however the packaging received them.
pub trait HeaderSource {
    /// The value(s) of `name` (lowercase).
    fn lookup(&self, name: &HeaderName) -> Lookup<'_>;
    /// Whether repeated headers arrive merged into one comma-joined value (Envoy's `headers` map),
    /// so that a `,` may mean "several header lines".
    fn merges_repeated(&self) -> bool;
}

impl HeaderSource for HeaderMap {
    fn lookup(&self, name: &HeaderName) -> Lookup<'_> {
        let mut all = self.get_all(name).iter();
        match (all.next(), all.next()) {
            (None, _) => Lookup::Absent,
            (Some(v), None) => Lookup::One(v.as_bytes()),
            (Some(_), Some(_)) => Lookup::Repeated,
        }
    }

    fn merges_repeated(&self) -> bool {
        false
    }
}

/// A header the request cannot be evaluated with: a 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHeader {
    /// The header (lowercase name).
    pub header: String,
    /// What is wrong, naming the header.
    pub message: String,
}

impl BadHeader {
    fn new(header: &HeaderName, message: String) -> Self {
        Self {
            header: header.as_str().to_string(),
            message,
        }
    }
}

/// The identity of one request, borrowed from its headers (see [`extract`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity<'a> {
    /// User id.
    pub user: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// Tool name.
    pub tool: Option<&'a str>,
    /// Server id.
    pub server: Option<&'a str>,
    /// Cost (1 when the cost header is absent or not configured).
    pub cost: u64,
    /// Descriptor name and value, in configured order (absent sources are left out).
    pub descriptors: Vec<(&'a str, &'a str)>,
}

impl<'a> Identity<'a> {
    /// The core's request context for this identity.
    pub fn context(&'a self) -> RequestContext<'a> {
        RequestContext {
            user: self.user,
            tenant: self.tenant,
            server: self.server,
            per_server: self.server.is_some(),
            tool: self.tool,
            descriptors: &self.descriptors,
            cost: self.cost,
        }
    }
}

/// The one value of an identity header: absent, or a single UTF-8 value (see the module docs).
fn single<'a>(
    headers: &'a impl HeaderSource,
    name: &HeaderName,
    comma_is_repeat: bool,
) -> Result<Option<&'a str>, BadHeader> {
    let bytes = match headers.lookup(name) {
        Lookup::Absent => return Ok(None),
        Lookup::One(b) => b,
        Lookup::Repeated => {
            return Err(BadHeader::new(
                name,
                format!("header {name} appears more than once: send exactly one value"),
            ))
        }
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| BadHeader::new(name, format!("header {name} is not valid UTF-8")))?;
    if comma_is_repeat && headers.merges_repeated() && text.contains(',') {
        return Err(BadHeader::new(
            name,
            format!(
                "header {name}: {text:?} holds several values (Envoy joins repeated headers with \
                 ','): send exactly one value (to allow ',' inside one value set \
                 encode_raw_headers: true on the ext_authz filter)"
            ),
        ));
    }
    Ok(Some(text))
}

/// The first of `names` present, else `fallback`.
fn first_of<'a>(
    headers: &'a impl HeaderSource,
    names: &[HeaderName],
    fallback: &'a str,
) -> Result<&'a str, BadHeader> {
    for h in names {
        if let Some(v) = single(headers, h, false)? {
            return Ok(v);
        }
    }
    Ok(fallback)
}

/// Where the original request's path and method come from.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// The path (without the query string).
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
    /// Whether `authz.path_headers` / `authz.method_headers` take precedence: true for HTTP
    /// `/authz` (nginx, Traefik and Envoy's HTTP ext_authz pass the original request in headers);
    /// false for gRPC ext_authz, where Envoy gives the original path and method in the
    /// `CheckRequest` itself and every header of the request is the client's.
    pub from_headers: bool,
}

/// Read the identity of a request from its headers as configured in `a`.
pub fn extract<'a>(
    a: &'a AuthzSettings,
    headers: &'a impl HeaderSource,
    original: Original<'a>,
) -> Result<Identity<'a>, BadHeader> {
    let no_headers: &[HeaderName] = &[];
    let (path_headers, method_headers) = if original.from_headers {
        (&a.path_headers[..], &a.method_headers[..])
    } else {
        (no_headers, no_headers)
    };
    let get = |h: &Option<HeaderName>| match h {
        None => Ok(None),
        Some(name) => single(headers, name, true),
    };
    let user = get(&a.user_header)?;
    let tenant = get(&a.tenant_header)?;
    let tool = get(&a.tool_header)?;
    let server = get(&a.server_header)?;
    let cost = match (&a.cost_header, get(&a.cost_header)?) {
        (Some(name), Some(c)) => match c.trim().parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(BadHeader::new(
                    name,
                    format!("header {name}: {c:?} is not an integer ≥ 1"),
                ))
            }
        },
        _ => 1,
    };
    let mut orig_path: Option<&str> = None;
    let mut orig_method: Option<&str> = None;
    let mut descriptors = Vec::with_capacity(a.descriptors.len());
    for (name, source) in &a.descriptors {
        let value = match source {
            Source::Header(h) => single(headers, h, true)?,
            Source::Path => {
                if orig_path.is_none() {
                    orig_path = Some(first_of(headers, path_headers, original.path)?);
                }
                orig_path
            }
            Source::Method => {
                if orig_method.is_none() {
                    orig_method = Some(first_of(headers, method_headers, original.method)?);
                }
                orig_method
            }
        };
        if let Some(v) = value {
            descriptors.push((name.as_str(), v));
        }
    }
    Ok(Identity {
        user,
        tenant,
        tool,
        server,
        cost,
        descriptors,
    })
}

/// The field a [`ContextError`] of a proxy-mode request is reported under: the header that
/// carried the offending value (`header x-mcp-server`, `header x-cost`).
pub fn context_error_field(a: &AuthzSettings, e: &ContextError) -> String {
    let name = |h: &Option<HeaderName>, default: &str| {
        h.as_ref()
            .map_or_else(|| default.to_string(), |h| h.as_str().to_string())
    };
    match e.field() {
        "server_id" => format!("header {}", name(&a.server_header, "")),
        _ => format!("header {}", name(&a.cost_header, "cost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// A merged map as Envoy's `headers` field (repeated headers joined with ',').
    struct Merged(Vec<(&'static str, &'static str)>);

    impl HeaderSource for Merged {
        fn lookup(&self, name: &HeaderName) -> Lookup<'_> {
            match self.0.iter().find(|(k, _)| *k == name.as_str()) {
                None => Lookup::Absent,
                Some((_, v)) => Lookup::One(v.as_bytes()),
            }
        }
        fn merges_repeated(&self) -> bool {
            true
        }
    }

    fn http(path: &'static str) -> Original<'static> {
        Original {
            path,
            method: "GET",
            from_headers: true,
        }
    }

    fn settings() -> AuthzSettings {
        let mut a = AuthzSettings {
            cost_header: Some(HeaderName::from_static("x-cost")),
            ..Default::default()
        };
        a.descriptors.push(("path".into(), Source::Path));
        a.descriptors.push((
            "key".into(),
            Source::Header(HeaderName::from_static("x-key")),
        ));
        a
    }

    #[test]
    fn reads_every_configured_header() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("alice"));
        h.insert("x-cost", HeaderValue::from_static(" 3 "));
        h.insert("x-key", HeaderValue::from_static("a,b"));
        let a = settings();
        let id = extract(&a, &h, http("/p")).expect("valid");
        assert_eq!(id.user, Some("alice"));
        assert_eq!(id.cost, 3);
        // one header line with a comma is one value over HTTP
        assert_eq!(id.descriptors, vec![("path", "/p"), ("key", "a,b")]);
    }

    #[test]
    fn a_repeated_identity_or_cost_header_is_named() {
        let a = settings();
        for name in [
            "x-user-id",
            "x-tenant-id",
            "x-mcp-tool",
            "x-mcp-server",
            "x-cost",
            "x-key",
        ] {
            let mut h = HeaderMap::new();
            h.append(name, HeaderValue::from_static("1"));
            h.append(name, HeaderValue::from_static("2"));
            let e = extract(&a, &h, http("/")).expect_err(name);
            assert_eq!(e.header, name);
            assert!(e.message.contains("more than once"), "{e:?}");
        }
    }

    #[test]
    fn a_comma_in_a_merged_map_is_a_repeat() {
        let a = settings();
        let m = Merged(vec![("x-user-id", "mallory,alice")]);
        let e = extract(&a, &m, http("/")).expect_err("merged");
        assert_eq!(e.header, "x-user-id");
        assert!(e.message.contains("several values"), "{e:?}");
        // paths may hold commas
        let m = Merged(vec![("x-original-uri", "/a,b")]);
        let id = extract(&a, &m, http("/")).expect("path with comma");
        assert_eq!(id.descriptors, vec![("path", "/a,b")]);
        // gRPC: the CheckRequest's own path, never a client's header
        let grpc = Original {
            path: "/real",
            method: "POST",
            from_headers: false,
        };
        let id = extract(&a, &m, grpc).expect("grpc");
        assert_eq!(id.descriptors, vec![("path", "/real")]);
    }

    #[test]
    fn bad_cost_and_bad_utf8_are_named() {
        let a = settings();
        for v in ["0", "-1", "x", ""] {
            let mut h = HeaderMap::new();
            h.insert("x-cost", HeaderValue::from_str(v).expect("value"));
            let e = extract(&a, &h, http("/")).expect_err(v);
            assert_eq!(e.header, "x-cost");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-user-id",
            HeaderValue::from_bytes(b"\xff\xfe").expect("opaque bytes"),
        );
        let e = extract(&a, &h, http("/")).expect_err("utf8");
        assert!(e.message.contains("UTF-8"), "{e:?}");
    }
}
