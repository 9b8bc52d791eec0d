//! MCP awareness: what a request body asks for.
//!
//! MCP over HTTP is JSON-RPC 2.0 in the POST body. The rules (also in `deploy/envoy/README.md`):
//!
//! * a JSON object with a string `method` is one call; for `tools/call` the tool is
//!   `params.name`, for `prompts/get` the prompt is `params.name` (prompts share the `by_tool`
//!   table, as in the gateway plugin); any other method (`initialize`, `tools/list`,
//!   notifications, ...) is a call without a tool;
//! * a JSON object without `method` but with `jsonrpc` (a client's response to a server request)
//!   is one call without a tool;
//! * a non-empty JSON array is a batch: every element counts as one call (cost = number of
//!   elements); elements that are not calls count without a tool;
//! * anything else (not JSON, another JSON value, an empty array, a body larger than
//!   `max_body_bytes`) is [`Body::Opaque`]: cost 1 and the tool dimension is skipped.
//!
//! The ids of the calls are kept so a denial can answer with JSON-RPC error objects.

use ratewall_core::normalize_name;
use serde_json::Value;

/// What a request body is, for rate limiting.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Not an MCP message (or too large to inspect): cost 1, no tool from the body.
    Opaque,
    /// One JSON-RPC message or a batch.
    Mcp(McpRequest),
}

/// The calls of an MCP request.
#[derive(Debug, Clone, PartialEq)]
pub struct McpRequest {
    /// A JSON array (batch) rather than a single object.
    pub batch: bool,
    /// One entry per call: the tool or prompt name, if any (as sent, not normalised).
    pub tools: Vec<Option<String>>,
    /// The `id` of every call that has one (not null), in order; for a single call the id or
    /// `null`.
    pub ids: Vec<Value>,
}

impl McpRequest {
    /// Cost of the request: the number of calls.
    pub fn cost(&self) -> u64 {
        u64::try_from(self.tools.len()).unwrap_or(u64::MAX).max(1)
    }

    /// Calls grouped by normalised tool name, in order of first appearance: `(tool, count)`.
    /// The group without a tool (if any) has `None`.
    pub fn groups(&self) -> Vec<(Option<String>, u64)> {
        let mut out: Vec<(Option<String>, u64)> = Vec::new();
        for t in &self.tools {
            let norm = t.as_deref().map(normalize_name).filter(|n| !n.is_empty());
            match out.iter_mut().find(|(k, _)| *k == norm) {
                Some((_, n)) => *n += 1,
                None => out.push((norm, 1)),
            }
        }
        out
    }
}

/// Classify a complete request body.
pub fn parse_body(body: &[u8]) -> Body {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Body::Opaque;
    };
    match value {
        Value::Object(ref obj) => {
            if !obj.contains_key("method") && !obj.contains_key("jsonrpc") {
                return Body::Opaque;
            }
            if obj.contains_key("method") && !matches!(obj.get("method"), Some(Value::String(_))) {
                return Body::Opaque;
            }
            Body::Mcp(McpRequest {
                batch: false,
                tools: vec![tool_of(&value)],
                ids: vec![obj.get("id").cloned().unwrap_or(Value::Null)],
            })
        }
        Value::Array(items) if !items.is_empty() => Body::Mcp(McpRequest {
            batch: true,
            tools: items.iter().map(tool_of).collect(),
            ids: items
                .iter()
                .filter_map(|i| i.get("id"))
                .filter(|id| !id.is_null())
                .cloned()
                .collect(),
        }),
        _ => Body::Opaque,
    }
}

fn tool_of(call: &Value) -> Option<String> {
    let method = call.get("method")?.as_str()?;
    if method != "tools/call" && method != "prompts/get" {
        return None;
    }
    let name = call.get("params")?.get("name")?.as_str()?;
    if name.trim().is_empty() {
        None
    } else {
        Some(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn mcp(body: &str) -> McpRequest {
        match parse_body(body.as_bytes()) {
            Body::Mcp(m) => m,
            Body::Opaque => panic!("not MCP: {body}"),
        }
    }

    #[test]
    fn tools_call_and_prompts_get() {
        let m = mcp(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"Echo","arguments":{}}}"#,
        );
        assert_eq!(m.tools, vec![Some("Echo".to_string())]);
        assert_eq!(m.ids, vec![json!(7)]);
        assert_eq!(m.cost(), 1);
        assert!(!m.batch);
        assert_eq!(m.groups(), vec![(Some("echo".to_string()), 1)]);
        let m =
            mcp(r#"{"jsonrpc":"2.0","id":"a","method":"prompts/get","params":{"name":"summary"}}"#);
        assert_eq!(m.tools, vec![Some("summary".to_string())]);
        assert_eq!(m.ids, vec![json!("a")]);
    }

    #[test]
    fn other_methods_have_no_tool() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"  "}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        ] {
            let m = mcp(body);
            assert_eq!(m.tools, vec![None], "{body}");
            assert_eq!(m.groups(), vec![(None, 1)]);
        }
        let m = mcp(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(m.ids, vec![Value::Null]);
    }

    #[test]
    fn batches_count_every_call() {
        let m = mcp(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}},
                {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"ECHO"}},
                {"jsonrpc":"2.0","method":"notifications/x"},
                {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"add"}},
                42]"#,
        );
        assert!(m.batch);
        assert_eq!(m.cost(), 5);
        assert_eq!(m.ids, vec![json!(1), json!(2), json!(3)]);
        assert_eq!(
            m.groups(),
            vec![
                (Some("echo".to_string()), 2),
                (None, 2),
                (Some("add".to_string()), 1)
            ]
        );
    }

    #[test]
    fn opaque_bodies() {
        for body in [
            &b""[..],
            b"not json",
            b"{\"jsonrpc\":",
            b"[]",
            b"\"tools/call\"",
            b"17",
            b"null",
            b"{\"name\":\"echo\"}",
            b"{\"method\":5,\"jsonrpc\":\"2.0\"}",
            &[0xff, 0xfe, 0x00],
        ] {
            assert_eq!(parse_body(body), Body::Opaque, "{body:?}");
        }
        // deep nesting is rejected by serde_json's recursion limit, not a stack overflow
        let deep = "[".repeat(100_000);
        assert_eq!(parse_body(deep.as_bytes()), Body::Opaque);
    }
}
