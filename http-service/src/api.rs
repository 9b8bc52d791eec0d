//! The HTTP endpoints: `POST /check`, proxy mode (`/authz`), health, readiness and metrics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use ratewall_core::config::{BatchCall, BatchError, ContextError, RequestContext};
use ratewall_core::decision::Decision;
use ratewall_core::headers::{self, Headers};
use ratewall_core::DenyReason;
use serde::{Deserialize, Serialize};

use crate::identity;
use crate::metrics::Endpoint;
use crate::state::{AppState, Runtime};

/// Largest accepted `/check` body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The router. Tests drive it directly; `main` serves it.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/check", post(check))
        .route("/authz", any(authz))
        .route("/authz/", any(authz))
        .route("/authz/{*rest}", any(authz))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// The `POST /check` body (see `docs/SERVICE.md`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    user: Option<String>,
    tenant: Option<String>,
    tool: Option<String>,
    server: Option<String>,
    descriptors: Option<HashMap<String, String>>,
    cost: Option<u64>,
    /// A batch (an MCP JSON-RPC batch grouped by tool): every call decided as one plan.
    calls: Option<Vec<CallIn>>,
}

/// One call of a batch `/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallIn {
    tool: Option<String>,
    cost: Option<u64>,
}

/// Per call of a batch: the indexes of its cells in `dimensions`, and whether one of its
/// enforced cells denies (the call that stops the batch).
#[derive(Serialize)]
struct CallOut<'a> {
    tool: Option<&'a str>,
    cost: u64,
    dimensions: &'a [usize],
    limited: bool,
}

#[derive(Serialize)]
struct DimensionOut<'a> {
    dimension: &'static str,
    name: &'a str,
    limit: u64,
    window: u64,
    allowed: bool,
    remaining: u64,
    /// A shadow limit: evaluated and counted, never denies (`allowed: false` = would have).
    shadow: bool,
}

#[derive(Serialize)]
struct CheckResponse<'a> {
    allowed: bool,
    /// Some shadow limit would have denied the request.
    shadow_denied: bool,
    reason: Option<&'static str>,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
    headers: &'a Headers,
    dimensions: Vec<DimensionOut<'a>>,
    /// Batch requests only.
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<Vec<CallOut<'a>>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The JSON body of an error naming the problem (and the field, when there is one).
pub fn error_body(message: &str, field: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody {
        error: message,
        field,
    })
    .unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec())
}

/// A JSON error naming the problem (and the field, when there is one).
pub fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    json_response(status, error_body(message, field))
}

fn header_name(name: &'static str) -> HeaderName {
    match name {
        "X-RateLimit-Limit" => HeaderName::from_static("x-ratelimit-limit"),
        "X-RateLimit-Remaining" => HeaderName::from_static("x-ratelimit-remaining"),
        "X-RateLimit-Reset" => HeaderName::from_static("x-ratelimit-reset"),
        "RateLimit-Policy" => HeaderName::from_static("ratelimit-policy"),
        "RateLimit" => HeaderName::from_static("ratelimit"),
        "Retry-After" => header::RETRY_AFTER,
        other => HeaderName::from_bytes(other.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-ratewall-invalid-header")),
    }
}

/// What `/check`, `/authz` and gRPC ext_authz answer for one request, whatever the transport:
/// the HTTP status, the JSON body and the core's headers (in [`headers::render`] order; none for
/// a 400).
pub struct Answer {
    /// `200`, `429`, `503` or `400`.
    pub status: StatusCode,
    /// The JSON body (`application/json`).
    pub body: Vec<u8>,
    /// The core's headers.
    pub headers: Headers,
}

impl Answer {
    /// A 400 naming the field.
    pub fn bad_request(message: &str, field: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: error_body(message, field),
            headers: Headers::new(),
        }
    }

    /// As an HTTP response.
    pub fn into_response(self) -> Response {
        let mut resp = json_response(self.status, self.body);
        let h = resp.headers_mut();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.append(header_name(name), v);
            }
        }
        resp
    }
}

/// The answer for a decision: status, JSON body, and the core's headers.
pub fn decision_answer(rt: &Runtime, d: &Decision) -> Answer {
    decision_answer_with(rt, d, None)
}

/// [`decision_answer`] with a batch's per-call detail.
fn decision_answer_with(rt: &Runtime, d: &Decision, calls: Option<Vec<CallOut<'_>>>) -> Answer {
    let rendered = headers::render(d, rt.loaded.limiter.headers);
    let rep = d.reported();
    let body = CheckResponse {
        allowed: d.allowed,
        shadow_denied: d.shadow_denied,
        reason: d.reason.map(DenyReason::as_str),
        limit: rep.map(|r| r.limit.count()),
        remaining: d.remaining(),
        reset: d.reset_at_secs(),
        retry_after: if d.allowed { None } else { d.retry_after_secs },
        headers: &rendered,
        dimensions: d
            .dimensions
            .iter()
            .map(|r| DimensionOut {
                dimension: r.dimension.as_str(),
                name: &r.name,
                limit: r.limit.count(),
                window: r.limit.window_secs(),
                allowed: r.outcome.allowed,
                remaining: r.outcome.remaining,
                shadow: r.shadow,
            })
            .collect(),
        calls,
    };
    let status = match (d.allowed, d.reason) {
        (true, _) => StatusCode::OK,
        (false, Some(DenyReason::BackendUnavailable)) => StatusCode::SERVICE_UNAVAILABLE,
        (false, _) => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut bytes = Vec::with_capacity(384);
    if serde_json::to_writer(&mut bytes, &body).is_err() {
        bytes.clear();
    }
    Answer {
        status,
        body: bytes,
        headers: rendered,
    }
}

/// Plan and decide; a context the policy cannot evaluate is a 400 naming the field.
pub async fn decide_answer(
    state: &AppState,
    rt: &Runtime,
    ctx: &RequestContext<'_>,
    endpoint: Endpoint,
    field_of: impl Fn(&ContextError) -> String,
) -> Answer {
    let start = Instant::now();
    let plan = match rt.loaded.limiter.policy.plan(ctx) {
        Ok(p) => p,
        Err(e) => {
            state.metrics.bad_request(endpoint);
            let field = field_of(&e);
            return Answer::bad_request(&format!("{field}: {e}"), Some(&field));
        }
    };
    let d = state.decide(rt, &plan).await;
    state.metrics.observe(endpoint, start.elapsed());
    tracing::debug!(
        endpoint = endpoint.name(),
        allowed = d.allowed,
        shadow_denied = d.shadow_denied,
        reason = d.reason.map(DenyReason::as_str),
        limit = d.reported().map(|r| r.name.as_str()),
        remaining = d.remaining(),
        "decision"
    );
    decision_answer(rt, &d)
}

async fn decide(
    state: &AppState,
    rt: &Runtime,
    ctx: &RequestContext<'_>,
    endpoint: Endpoint,
    field_of: impl Fn(&ContextError) -> String,
) -> Response {
    decide_answer(state, rt, ctx, endpoint, field_of)
        .await
        .into_response()
}

async fn read_body(state: &AppState, rt: &Runtime, body: Body) -> Result<Bytes, Response> {
    let mut fut = pin!(axum::body::to_bytes(body, MAX_BODY_BYTES));
    // Usually the body has already arrived: only arm a timer when it has not.
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    let res = match first {
        Poll::Ready(r) => r,
        Poll::Pending => {
            let t = rt.loaded.service.request_timeout;
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => {
                    state.metrics.timeout();
                    return Err(error(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "request body not received within request_timeout_ms ({} ms)",
                            t.as_millis()
                        ),
                        None,
                    ));
                }
            }
        }
    };
    res.map_err(|e| {
        state.metrics.bad_request(Endpoint::Check);
        let too_big = {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut found = false;
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    found = true;
                }
                src = s.source();
            }
            found
        };
        if too_big {
            error(
                StatusCode::BAD_REQUEST,
                &format!("request body exceeds {MAX_BODY_BYTES} bytes (64 KiB)"),
                None,
            )
        } else {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read request body: {e}"),
                None,
            )
        }
    })
}

async fn check(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let rt = state.runtime_guard();
    let bytes = match read_body(&state, &rt, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let bad = |msg: String, field: Option<&str>| {
        state.metrics.bad_request(Endpoint::Check);
        error(StatusCode::BAD_REQUEST, &msg, field)
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return bad(
            "empty request body: send a JSON object such as {\"user\": \"alice\"}".into(),
            None,
        );
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return bad(
            "invalid request body: expected a JSON object such as {\"user\": \"alice\"}".into(),
            None,
        );
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let req: CheckRequest = match serde_path_to_error::deserialize(&mut de) {
        Ok(r) => r,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = (path != "." && !path.contains('?')).then_some(path);
            let msg = match &field {
                Some(f) => format!("invalid request body: {f}: {inner}"),
                None => format!("invalid request body: {inner}"),
            };
            return bad(msg, field.as_deref());
        }
    };
    if let Err(e) = de.end() {
        return bad(format!("invalid request body: {e}"), None);
    }
    if req.cost == Some(0) {
        return bad("cost: must be an integer ≥ 1".into(), Some("cost"));
    }
    let descriptors: Vec<(&str, &str)> = req
        .descriptors
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(calls) = &req.calls {
        for (field, given) in [("tool", req.tool.is_some()), ("cost", req.cost.is_some())] {
            if given {
                let msg = format!("{field}: not allowed with calls (each call carries its own)");
                return bad(msg, Some(field));
            }
        }
        return match check_batch(&state, &rt, &req, calls, &descriptors).await {
            Ok(answer) => answer.into_response(),
            Err((msg, field)) => bad(msg, Some(&field)),
        };
    }
    let ctx = RequestContext {
        user: req.user.as_deref(),
        tenant: req.tenant.as_deref(),
        server: req.server.as_deref(),
        per_server: req.server.is_some(),
        tool: req.tool.as_deref(),
        descriptors: &descriptors,
        cost: req.cost.unwrap_or(1),
    };
    decide(&state, &rt, &ctx, Endpoint::Check, |e| match e.field() {
        "server_id" => "server".to_string(),
        other => other.to_string(),
    })
    .await
}

/// A batch `/check`: every call planned into one plan ([`ratewall_core::config::Policy::plan_batch`])
/// and decided with one store call. `Err`: a 400's message and field.
async fn check_batch(
    state: &AppState,
    rt: &Runtime,
    req: &CheckRequest,
    calls: &[CallIn],
    descriptors: &[(&str, &str)],
) -> Result<Answer, (String, String)> {
    let start = Instant::now();
    if let Some(i) = calls.iter().position(|c| c.cost == Some(0)) {
        let field = format!("calls[{i}].cost");
        return Err((format!("{field}: must be an integer ≥ 1"), field));
    }
    let batch_calls: Vec<BatchCall<'_>> = calls
        .iter()
        .map(|c| BatchCall {
            tool: c.tool.as_deref(),
            cost: c.cost.unwrap_or(1),
        })
        .collect();
    let policy = &rt.loaded.limiter.policy;
    let user = req.user.as_deref();
    let tenant = req.tenant.as_deref();
    let server = req.server.as_deref();
    let batch = match policy.plan_batch(user, tenant, server, descriptors, &batch_calls) {
        Ok(b) => b,
        Err(e) => {
            return Err(match &e {
                BatchError::Count(_) => (format!("calls: {e}"), "calls".to_string()),
                BatchError::Call(i, inner @ ContextError::CostTooLarge(_)) => {
                    let field = format!("calls[{i}].cost");
                    (format!("{field}: {inner}"), field)
                }
                BatchError::Call(_, inner) => (format!("server: {inner}"), "server".to_string()),
            });
        }
    };
    let d = state.decide(rt, &batch.plan).await;
    state.metrics.observe(Endpoint::Check, start.elapsed());
    tracing::debug!(
        endpoint = Endpoint::Check.name(),
        calls = calls.len(),
        allowed = d.allowed,
        reason = d.reason.map(DenyReason::as_str),
        remaining = d.remaining(),
        "batch decision"
    );
    let detail = batch_calls
        .iter()
        .zip(&batch.calls)
        .map(|(c, dims)| CallOut {
            tool: c.tool,
            cost: c.cost.max(1),
            dimensions: dims,
            limited: dims.iter().any(|&j| {
                d.dimensions
                    .get(j)
                    .is_some_and(|r| !r.shadow && !r.outcome.allowed)
            }),
        })
        .collect();
    Ok(decision_answer_with(rt, &d, Some(detail)))
}

async fn authz(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let rt = state.runtime_guard();
    let a = &rt.loaded.service.authz;
    // Envoy ext_authz with `path_prefix: /authz`: the original path is what follows /authz.
    let path = match uri.path().strip_prefix("/authz") {
        Some("") | None => "/",
        Some(rest) => rest,
    };
    let original = identity::Original {
        path,
        method: method.as_str(),
        from_headers: true,
    };
    let id = match identity::extract(a, &headers, original) {
        Ok(id) => id,
        Err(e) => {
            state.metrics.bad_request(Endpoint::Authz);
            return error(StatusCode::BAD_REQUEST, &e.message, Some(&e.header));
        }
    };
    decide(&state, &rt, &id.context(), Endpoint::Authz, |e| {
        identity::context_error_field(a, e)
    })
    .await
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready().await {
        Ok(backend) => json_response(
            StatusCode::OK,
            serde_json::to_vec(&serde_json::json!({"ready": true, "backend": backend}))
                .unwrap_or_default(),
        ),
        Err((backend, e)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::to_vec(
                &serde_json::json!({"ready": false, "backend": backend, "error": e}),
            )
            .unwrap_or_default(),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.render_metrics().await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} not allowed on {}", uri.path()),
        None,
    )
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "no endpoint {}; try POST /check, /authz, /healthz, /readyz, /metrics",
            uri.path()
        ),
        None,
    )
}
