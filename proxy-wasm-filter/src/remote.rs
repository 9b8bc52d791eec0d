//! Remote mode: the `POST /check` exchange with ratewall-server.
//!
//! Request: `{"user", "tenant", "tool", "server", "descriptors": {name: value}, "cost"}`; for an
//! MCP batch naming several tools, one request for the whole batch with
//! `"calls": [{"tool", "cost"}, ...]` in place of `tool` and `cost`, which the service decides as
//! one plan with one store call (all-or-nothing across the calls).
//! Response: `200` (allowed) or `429` (denied) with `{"allowed", "reason", "limit", "remaining",
//! "reset", "retry_after", "headers": [[name, value], ...], "dimensions": [...]}`; `headers` is the
//! core renderer's output, passed through unchanged. Any other status, a body that is not such an
//! object, a timeout or a dispatch error is a backend failure: the filter applies `fail_mode`.

use serde_json::{Map, Value};

use crate::response::Verdict;

/// Identity and calls of one check.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckRequest<'a> {
    /// User id (absent: anonymous).
    pub user: Option<&'a str>,
    /// Tenant id.
    pub tenant: Option<&'a str>,
    /// The request's calls grouped by tool: `(tool or prompt name, units)` (see
    /// [`crate::groups`]).
    pub calls: &'a [(Option<String>, u64)],
    /// MCP server id: sent when a call names a tool (`by_user_per_server` applies to tool calls
    /// only, as in local mode; the service applies it to the calls with a tool).
    pub server: Option<&'a str>,
    /// Descriptor values by name.
    pub descriptors: &'a [(String, String)],
}

impl CheckRequest<'_> {
    /// The JSON body of `POST /check`.
    pub fn to_json(&self) -> Vec<u8> {
        // Values built directly (no `json!`: it goes through serde's `Value` serializer).
        // Inserted one by one: `collect()` into the map would link a sort for its bulk build.
        let mut descriptors = Map::new();
        for (k, v) in self.descriptors {
            descriptors.insert(k.clone(), Value::String(v.clone()));
        }
        let any_tool = self.calls.iter().any(|(t, _)| t.is_some());
        let mut body = Map::new();
        for (key, value) in [
            ("user", self.user),
            ("tenant", self.tenant),
            ("server", self.server.filter(|_| any_tool)),
        ] {
            body.insert(key.into(), Value::from(value));
        }
        body.insert("descriptors".into(), Value::Object(descriptors));
        let call = |tool: &Option<String>, cost: &u64, to: &mut Map<String, Value>| {
            to.insert("tool".into(), Value::from(tool.as_deref()));
            to.insert("cost".into(), Value::from((*cost).max(1)));
        };
        match self.calls {
            [(tool, cost)] => call(tool, cost, &mut body),
            many => {
                let list = many
                    .iter()
                    .map(|(tool, cost)| {
                        let mut c = Map::new();
                        call(tool, cost, &mut c);
                        Value::Object(c)
                    })
                    .collect();
                body.insert("calls".into(), Value::Array(list));
            }
        }
        Value::Object(body).to_string().into_bytes()
    }
}

/// A header we are willing to forward: one of the names the core renderer produces (so the
/// service can never set `set-cookie`, `location`, ...), with visible ASCII and spaces only in
/// the value (no CR/LF injection).
fn safe_header(name: &str, value: &str) -> bool {
    ratewall_core::headers::NAMES
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        && value.len() <= 4096
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// Interpret the check service's answer. `Err` means "backend failure" (apply `fail_mode`).
pub fn parse_check_response(status: Option<u32>, body: &[u8]) -> Result<Verdict, String> {
    let status = status.ok_or("no response (timeout or connection failure)")?;
    if status != 200 && status != 429 {
        return Err(format!("status {status}"));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("status {status}: body is not JSON: {e}"))?;
    let allowed = v
        .get("allowed")
        .and_then(Value::as_bool)
        .ok_or_else(|| format!("status {status}: no boolean \"allowed\" in the body"))?;
    if allowed != (status == 200) {
        return Err(format!("status {status} disagrees with allowed={allowed}"));
    }
    let mut headers = Vec::new();
    if let Some(list) = v.get("headers").and_then(Value::as_array) {
        for pair in list {
            if let Some([Value::String(n), Value::String(val)]) = pair.as_array().map(Vec::as_slice)
            {
                if safe_header(n, val) {
                    headers.push((n.clone().into(), val.clone()));
                }
            }
        }
    }
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    let reason = v.get("reason").and_then(Value::as_str).map(str::to_string);
    let message = match reason.as_deref() {
        None => None,
        Some("cost_exceeds_limit") => Some("Request cost exceeds the rate limit".to_string()),
        Some(_) => Some("Rate limit exceeded".to_string()),
    };
    Ok(Verdict {
        allowed,
        status,
        reason: if allowed { None } else { reason },
        message: if allowed { None } else { message },
        headers,
        retry_after: if allowed { None } else { num("retry_after") },
        limit: num("limit"),
        remaining: num("remaining"),
        reset: num("reset"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn request_body() {
        let d = vec![("api_key".to_string(), "k1".to_string())];
        let one = [(Some("echo".to_string()), 3)];
        let body = CheckRequest {
            user: Some("alice"),
            tenant: None,
            calls: &one,
            server: Some("gw"),
            descriptors: &d,
        }
        .to_json();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"user": "alice", "tenant": null, "tool": "echo", "server": "gw", "descriptors": {"api_key": "k1"}, "cost": 3})
        );
        // not a tool call: no server (by_user_per_server applies to tool calls only)
        let plain = [(None, 1)];
        let body = CheckRequest {
            user: None,
            tenant: Some("acme"),
            calls: &plain,
            server: Some("gw"),
            descriptors: &[],
        }
        .to_json();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"user": null, "tenant": "acme", "tool": null, "server": null, "descriptors": {}, "cost": 1})
        );
        // a batch of several tools: one body carrying every group
        let batch = [
            (Some("add".to_string()), 1),
            (Some("echo".to_string()), 2),
            (None, 1),
        ];
        let body = CheckRequest {
            user: Some("alice"),
            tenant: None,
            calls: &batch,
            server: Some("gw"),
            descriptors: &[],
        }
        .to_json();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"user": "alice", "tenant": null, "server": "gw", "descriptors": {},
                   "calls": [{"tool": "add", "cost": 1}, {"tool": "echo", "cost": 2}, {"tool": null, "cost": 1}]})
        );
    }

    #[test]
    fn responses() {
        let ok = parse_check_response(
            Some(200),
            br#"{"allowed":true,"reason":null,"limit":5,"remaining":4,"reset":1700000060,"retry_after":null,
                 "headers":[["X-RateLimit-Limit","5"],["X-RateLimit-Remaining","4"],["Bad\r\nName","x"],["X-Evil","a\r\nb"],["Set-Cookie","s=1"],["RateLimit","\"u\";r=4;t=1\r\nX: y"]],"dimensions":[]}"#,
        )
        .unwrap();
        assert!(ok.allowed);
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(ok.remaining, Some(4));
        let denied = parse_check_response(
            Some(429),
            br#"{"allowed":false,"reason":"limited","limit":5,"remaining":0,"reset":1700000060,"retry_after":7,"headers":[["Retry-After","7"]]}"#,
        )
        .unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.status, 429);
        assert_eq!(denied.retry_after, Some(7));
        assert_eq!(denied.reason.as_deref(), Some("limited"));
        for (status, body) in [
            (None, &b""[..]),
            (Some(503), br#"{"allowed":false}"#),
            (Some(500), b""),
            (Some(200), b"<html>"),
            (Some(200), br#"{"allowed":"yes"}"#),
            (Some(200), br#"{"allowed":false}"#),
            (Some(429), br#"{"allowed":true}"#),
            (Some(200), b"[]"),
        ] {
            assert!(parse_check_response(status, body).is_err(), "{status:?}");
        }
    }
}
