//! `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter over gRPC, with the
//! `/authz` semantics (the identity from [`crate::identity`], the same decision, JSON body and
//! core headers as [`crate::api::decision_answer`]).
//!
//! | ratewall's answer | `CheckResponse.status` | `http_response` |
//! |---|---|---|
//! | allowed (200) | `OK` | `ok_response`: the core's headers on the request sent upstream (`headers`, overwriting any the client sent) and on the response sent downstream (`response_headers_to_add`) |
//! | limited (429) | `RESOURCE_EXHAUSTED` | `denied_response`: status 429, the core's headers (with `Retry-After`), `content-type: application/json`, the JSON body |
//! | store down, `fail_mode: closed` (503) | `UNAVAILABLE` | `denied_response`: status 503, `Retry-After: 1`, the JSON body |
//! | bad identity header (400) | `INVALID_ARGUMENT` | `denied_response`: status 400, the JSON error naming the header |
//!
//! A `CheckRequest` without HTTP attributes (the network-level ext_authz filter) is answered with
//! the gRPC error `INVALID_ARGUMENT`: ratewall limits HTTP requests.

use std::sync::Arc;

use axum::http::{HeaderName, StatusCode};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use crate::api::{decide_answer, Answer};
use crate::identity::{self, HeaderSource, Lookup, Original};
use crate::metrics::Endpoint;
use crate::state::AppState;

/// The ext_authz service over the shared state.
pub struct ExtAuthz {
    state: Arc<AppState>,
}

impl ExtAuthz {
    /// Serve `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The headers of a `CheckRequest`: the raw list (`header_map`, sent by Envoy with
/// `encode_raw_headers: true`, one entry per header line) when present, else the `headers` map
/// (repeated headers merged with `,`). Keys are compared case-insensitively.
struct CheckHeaders<'a>(&'a HttpRequest);

/// The one value among `entries` whose key is `name` (case-insensitive), or whether it repeats.
fn find<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>, name: &str) -> Lookup<'a> {
    let mut hit = Lookup::Absent;
    for (k, v) in entries {
        if k.eq_ignore_ascii_case(name) {
            if hit != Lookup::Absent {
                return Lookup::Repeated;
            }
            hit = Lookup::One(v);
        }
    }
    hit
}

impl HeaderSource for CheckHeaders<'_> {
    fn lookup(&self, name: &HeaderName) -> Lookup<'_> {
        match &self.0.header_map {
            Some(raw) => find(
                raw.headers.iter().map(|h| {
                    let v: &[u8] = if h.raw_value.is_empty() {
                        h.value.as_bytes()
                    } else {
                        &h.raw_value
                    };
                    (h.key.as_str(), v)
                }),
                name.as_str(),
            ),
            None => find(
                self.0
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_bytes())),
                name.as_str(),
            ),
        }
    }

    fn merges_repeated(&self) -> bool {
        self.0.header_map.is_none()
    }
}

fn header_options(headers: &[(&'static str, String)]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_ascii_lowercase(),
                value: v.clone(),
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

/// The `CheckResponse` for ratewall's answer (module docs).
pub fn check_response(answer: Answer) -> CheckResponse {
    let code = match answer.status {
        StatusCode::OK => Code::Ok,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::InvalidArgument,
    };
    let message = match code {
        Code::Ok => String::new(),
        Code::ResourceExhausted => "rate limited".to_string(),
        Code::Unavailable => "rate limit store unavailable (fail_mode: closed)".to_string(),
        _ => String::from_utf8_lossy(&answer.body).into_owned(),
    };
    let status = Some(rpc::Status {
        code: code as i32,
        message,
        details: Vec::new(),
    });
    let http_response = if code == Code::Ok {
        let added = header_options(&answer.headers);
        HttpResponse::OkResponse(OkHttpResponse {
            headers: added.clone(),
            response_headers_to_add: added,
            ..Default::default()
        })
    } else {
        let mut headers = header_options(&answer.headers);
        headers.extend(header_options(&[(
            "content-type",
            "application/json".to_string(),
        )]));
        HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(answer.status.as_u16()),
            }),
            headers,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        })
    };
    CheckResponse {
        status,
        http_response: Some(http_response),
        dynamic_metadata: None,
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = request.into_inner();
        let state = &self.state;
        let Some(http) = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            state.metrics.bad_request(Endpoint::GrpcAuthz);
            return Err(Status::invalid_argument(
                "attributes.request.http is missing: ratewall answers the HTTP ext_authz filter \
                 (envoy.filters.http.ext_authz), not the network one",
            ));
        };
        let rt = state.runtime_guard();
        let a = &rt.loaded.service.authz;
        let headers = CheckHeaders(http);
        let path = http.path.split_once('?').map_or(&*http.path, |(p, _)| p);
        let original = Original {
            path: if path.is_empty() { "/" } else { path },
            method: &http.method,
            from_headers: false,
        };
        let answer = match identity::extract(a, &headers, original) {
            Ok(id) => {
                decide_answer(state, &rt, &id.context(), Endpoint::GrpcAuthz, |e| {
                    identity::context_error_field(a, e)
                })
                .await
            }
            Err(e) => {
                state.metrics.bad_request(Endpoint::GrpcAuthz);
                Answer::bad_request(&e.message, Some(&e.header))
            }
        };
        Ok(Response::new(check_response(answer)))
    }
}
