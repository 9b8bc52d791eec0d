//! Verdicts and the bodies of local replies.
//!
//! A [`Verdict`] is what the filter does with a request: continue (adding the rate-limit headers
//! to the upstream's response) or reply locally. Headers always come from the core's renderer
//! ([`ratewall_core::headers::render`]): directly in local mode, through ratewall-server's
//! `headers` field in remote mode.
//!
//! Denials reply `429` (quota exhausted, or a cost above a limit) or `503` (`fail_mode: closed`
//! and the counters are unreachable) with a JSON body:
//!
//! * plain HTTP: `{"error": "rate_limited", "reason": "limited", "message": ..., "retry_after": 3,
//!   "limit": 10, "remaining": 0, "reset": 1767225603}`;
//! * MCP: a JSON-RPC error object per call that has an id (a batch gets an array), code `-32000`,
//!   with the same fields under `error.data`.

use std::borrow::Cow;

use ratewall_core::config::{FailMode, HeaderFormat};
use ratewall_core::{headers, Decision, DenyReason};
use serde_json::{Map, Value};

use crate::mcp::McpRequest;

/// JSON-RPC error code of a rate-limited call (implementation-defined server error range).
pub const JSONRPC_RATE_LIMITED: i64 = -32000;
/// JSON-RPC error code of a call whose identity headers are invalid.
pub const JSONRPC_INVALID_PARAMS: i64 = -32602;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Continue to the upstream.
    pub allowed: bool,
    /// Status of the local reply (denied only): 429, 503 or 400.
    pub status: u32,
    /// Machine-readable reason (denied only): `limited`, `cost_exceeds_limit`,
    /// `backend_unavailable`, `invalid_request`.
    pub reason: Option<String>,
    /// Human-readable message (denied only).
    pub message: Option<String>,
    /// Rate-limit headers: added to the upstream response, or to the local reply. Names are
    /// the renderer's static strings in local mode (no copy per request), the service's in remote
    /// mode.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// `Retry-After` in seconds, when known.
    pub retry_after: Option<u64>,
    /// Limit of the reported dimension.
    pub limit: Option<u64>,
    /// Units left in the reported dimension.
    pub remaining: Option<u64>,
    /// Reset instant (Unix seconds).
    pub reset: Option<u64>,
}

impl Verdict {
    /// Allow without headers (nothing applies, or `fail_mode: open`).
    pub fn allow() -> Self {
        Self {
            allowed: true,
            status: 200,
            reason: None,
            message: None,
            headers: Vec::new(),
            retry_after: None,
            limit: None,
            remaining: None,
            reset: None,
        }
    }

    /// The verdict of a core decision, with the core's headers in `format`.
    pub fn from_decision(d: &Decision, format: HeaderFormat) -> Self {
        let headers = headers::render(d, format)
            .into_iter()
            .map(|(n, v)| (Cow::Borrowed(n), v))
            .collect();
        let (status, message) = match d.reason {
            None => (200, None),
            Some(DenyReason::BackendUnavailable) => (503, Some("Rate limiter unavailable")),
            Some(DenyReason::CostExceedsLimit) => {
                (429, Some("Request cost exceeds the rate limit"))
            }
            Some(DenyReason::Limited) => (429, Some("Rate limit exceeded")),
        };
        Self {
            allowed: d.allowed,
            status,
            reason: d.reason.map(|r| r.as_str().to_string()),
            message: message.map(str::to_string),
            headers,
            retry_after: if d.allowed { None } else { d.retry_after_secs },
            limit: d.reported().map(|r| r.limit.count()),
            remaining: d.remaining(),
            reset: d.reset_at_secs(),
        }
    }

    /// The counters could not be reached: allow (`open`) or deny with 503 (`closed`).
    pub fn unavailable(fail_mode: FailMode, now: u64, format: HeaderFormat) -> Self {
        match fail_mode {
            FailMode::Open => Self::allow(),
            FailMode::Closed => Self::from_decision(&Decision::backend_unavailable(now), format),
        }
    }

    /// A request whose identity cannot be evaluated (e.g. a missing server id): 400.
    pub fn invalid(message: String) -> Self {
        Self {
            allowed: false,
            status: 400,
            reason: Some("invalid_request".into()),
            message: Some(message),
            ..Self::allow()
        }
    }

    /// The fields shared by both body shapes.
    fn data(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("reason".into(), Value::from(self.reason.clone()));
        for (k, v) in [
            ("retry_after", self.retry_after),
            ("limit", self.limit),
            ("remaining", self.remaining),
            ("reset", self.reset),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(v));
            }
        }
        m
    }

    /// The body of the local reply (denied verdicts); MCP requests get JSON-RPC errors.
    pub fn body(&self, mcp: Option<&McpRequest>) -> Vec<u8> {
        let message = self.message.clone().unwrap_or_else(|| "Denied".into());
        let value = match mcp {
            None => {
                let mut m = Map::new();
                let error = match self.status {
                    503 => "rate_limiter_unavailable",
                    400 => "bad_request",
                    _ => "rate_limited",
                };
                m.insert("error".into(), Value::from(error));
                m.insert("message".into(), Value::String(message));
                m.extend(self.data());
                Value::Object(m)
            }
            Some(req) => {
                let code = if self.status == 400 {
                    JSONRPC_INVALID_PARAMS
                } else {
                    JSONRPC_RATE_LIMITED
                };
                // Values built directly (no `json!`: it goes through serde's `Value` serializer).
                let error = |id: &Value| {
                    let mut error = Map::new();
                    error.insert("code".into(), Value::from(code));
                    error.insert("message".into(), Value::String(message.clone()));
                    error.insert("data".into(), Value::Object(self.data()));
                    let mut reply = Map::new();
                    reply.insert("jsonrpc".into(), Value::from("2.0"));
                    reply.insert("id".into(), id.clone());
                    reply.insert("error".into(), Value::Object(error));
                    Value::Object(reply)
                };
                if req.batch {
                    let mut errors: Vec<Value> = req.ids.iter().map(error).collect();
                    if errors.is_empty() {
                        errors.push(error(&Value::Null));
                    }
                    Value::Array(errors)
                } else {
                    error(req.ids.first().unwrap_or(&Value::Null))
                }
            }
        };
        let mut out = value.to_string().into_bytes();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::mcp::{parse_body, Body};
    use ratewall_core::algorithm::Outcome;
    use ratewall_core::config::{LimiterConfig, RequestContext};
    use serde_json::json;

    fn denied() -> Decision {
        let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "10/s"}"#, &[]).unwrap();
        let plan = cfg
            .policy
            .plan(&RequestContext {
                user: Some("u"),
                ..Default::default()
            })
            .unwrap();
        let now = 1_700_000_000_250_000;
        Decision::combine(
            &plan,
            now,
            [Outcome {
                allowed: false,
                remaining: 0,
                reset_at: now + 750_000,
                retry_at: Some(now + 750_000),
            }],
        )
    }

    #[test]
    fn decision_verdict_and_plain_body() {
        let v = Verdict::from_decision(&denied(), HeaderFormat::Legacy);
        assert!(!v.allowed);
        assert_eq!(v.status, 429);
        assert_eq!(v.retry_after, Some(1));
        assert_eq!(v.limit, Some(10));
        assert_eq!(v.remaining, Some(0));
        assert_eq!(v.reset, Some(1_700_000_002));
        assert_eq!(
            v.headers,
            vec![
                ("X-RateLimit-Limit".into(), "10".to_string()),
                ("X-RateLimit-Remaining".into(), "0".to_string()),
                ("X-RateLimit-Reset".into(), "1700000002".to_string()),
                ("Retry-After".into(), "1".to_string()),
            ]
        );
        let body: Value = serde_json::from_slice(&v.body(None)).unwrap();
        assert_eq!(
            body,
            json!({"error": "rate_limited", "message": "Rate limit exceeded", "reason": "limited",
                   "retry_after": 1, "limit": 10, "remaining": 0, "reset": 1_700_000_002u64})
        );
    }

    #[test]
    fn jsonrpc_bodies_carry_ids() {
        let v = Verdict::from_decision(&denied(), HeaderFormat::Legacy);
        let Body::Mcp(single) = parse_body(
            br#"{"jsonrpc":"2.0","id":"x-1","method":"tools/call","params":{"name":"a"}}"#,
        ) else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&v.body(Some(&single))).unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], "x-1");
        assert_eq!(body["error"]["code"], -32000);
        assert_eq!(body["error"]["data"]["retry_after"], 1);
        let Body::Mcp(batch) = parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":2,"method":"b"}]"#) else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&v.body(Some(&batch))).unwrap();
        let ids: Vec<&Value> = body.as_array().unwrap().iter().map(|e| &e["id"]).collect();
        assert_eq!(ids, vec![&json!(1), &json!(2)]);
        let Body::Mcp(notes) = parse_body(br#"[{"jsonrpc":"2.0","method":"n"}]"#) else {
            panic!()
        };
        let body: Value = serde_json::from_slice(&v.body(Some(&notes))).unwrap();
        assert_eq!(body[0]["id"], Value::Null);
    }

    #[test]
    fn unavailable_and_invalid() {
        assert!(Verdict::unavailable(FailMode::Open, 5, HeaderFormat::Legacy).allowed);
        let v = Verdict::unavailable(FailMode::Closed, 5, HeaderFormat::Legacy);
        assert!(!v.allowed);
        assert_eq!(v.status, 503);
        assert_eq!(v.headers, vec![("Retry-After".into(), "1".to_string())]);
        let body: Value = serde_json::from_slice(&v.body(None)).unwrap();
        assert_eq!(body["error"], "rate_limiter_unavailable");
        assert_eq!(body["reason"], "backend_unavailable");
        let v = Verdict::invalid("server_id is required".into());
        assert_eq!(v.status, 400);
        let body: Value = serde_json::from_slice(&v.body(None)).unwrap();
        assert_eq!(body["error"], "bad_request");
    }
}
