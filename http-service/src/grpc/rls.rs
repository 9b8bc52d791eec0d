//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy's native global rate
//! limiting (`envoy.filters.http.ratelimit`) against the core's descriptor rules.
//!
//! One request is **one** plan ([`Policy::plan_descriptors`]) and **one** store call, whatever
//! the number of descriptors: the core's all-or-nothing decision (a descriptor over its limit
//! charges none of the others). This module only maps the protocol to the core and back:
//!
//! * request: `domain`; each descriptor's ordered `entries`; the request's `hits_addend`
//!   (proto3 `uint32`: 0 means unset, i.e. 1); each descriptor's `hits_addend` (a wrapper: an
//!   explicit 0 checks without consuming) and `limit` override (`requests_per_unit`, `unit`);
//!   `is_negative_hits` is refused (ratewall never gives units back);
//! * answer: `overall_code` (the decision), one `statuses` entry per descriptor in request order
//!   ([`DescriptorPlan::statuses`]: `code`, `current_limit` with its `name`, `limit_remaining`,
//!   `duration_until_reset`), and, when `rls_response_headers: true`, the core's headers
//!   ([`headers::render`]) in `response_headers_to_add`;
//! * a request the core cannot plan (empty domain, no descriptors, an empty key, too many
//!   descriptors or entries or bytes, a `hits_addend` above the largest count, a bad override):
//!   the gRPC error `INVALID_ARGUMENT` naming the field (`descriptors[2].entries[0].key: ...`);
//!   nothing is consumed. Envoy then applies its `failure_mode_deny`;
//! * the store failed: `fail_mode: open` answers `OK` (no limit applied, counted in metrics);
//!   `fail_mode: closed` answers the gRPC error `UNAVAILABLE`, so Envoy denies with its
//!   `failure_mode_deny: true` (and `status_on_error`, e.g. 503) exactly as when ratewall itself
//!   is down; a 429 would tell clients to back off from a quota they have not used.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit as ProtoUnit, Code, DescriptorStatus as ProtoStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use ratewall_core::config::descriptors::{
    DescriptorStatus, Entry, LimitOverride, RequestDescriptor, StatusCode, Unit,
};
use ratewall_core::headers;
use ratewall_core::DenyReason;
use tonic::{Request, Response, Status};

use crate::metrics::Endpoint;
use crate::state::AppState;

/// The RLS service over the shared state.
pub struct Rls {
    state: Arc<AppState>,
}

impl Rls {
    /// Serve `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// `WEEK` in the answer's unit enum (`RateLimitResponse.RateLimit.Unit`); the request's
/// `envoy.type.v3.RateLimitUnit` of the protos we build with stops at `YEAR` = 6, so a newer
/// sender's 7 is read with the same meaning.
const WEEK: i32 = ProtoUnit::Week as i32;

/// The protocol's request unit (`envoy.type.v3.RateLimitUnit`) as the core's.
fn unit_of(i: usize, unit: i32) -> Result<Unit, Status> {
    if unit == WEEK {
        return Ok(Unit::Week);
    }
    match RateLimitUnit::try_from(unit) {
        Ok(RateLimitUnit::Second) => Ok(Unit::Second),
        Ok(RateLimitUnit::Minute) => Ok(Unit::Minute),
        Ok(RateLimitUnit::Hour) => Ok(Unit::Hour),
        Ok(RateLimitUnit::Day) => Ok(Unit::Day),
        Ok(RateLimitUnit::Month) => Ok(Unit::Month),
        Ok(RateLimitUnit::Year) => Ok(Unit::Year),
        Ok(RateLimitUnit::Unknown) | Err(_) => Err(Status::invalid_argument(format!(
            "descriptors[{i}].limit.unit: {unit} is not a known unit (SECOND ..= YEAR)"
        ))),
    }
}

/// The core's unit as the protocol's answer unit (`None`: a window that is not one unit).
fn proto_unit(unit: Option<Unit>) -> ProtoUnit {
    match unit {
        Some(Unit::Second) => ProtoUnit::Second,
        Some(Unit::Minute) => ProtoUnit::Minute,
        Some(Unit::Hour) => ProtoUnit::Hour,
        Some(Unit::Day) => ProtoUnit::Day,
        Some(Unit::Week) => ProtoUnit::Week,
        Some(Unit::Month) => ProtoUnit::Month,
        Some(Unit::Year) => ProtoUnit::Year,
        None => ProtoUnit::Unknown,
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn code(c: StatusCode) -> Code {
    match c {
        StatusCode::Ok => Code::Ok,
        StatusCode::OverLimit => Code::OverLimit,
    }
}

fn status(s: &DescriptorStatus) -> ProtoStatus {
    ProtoStatus {
        code: code(s.code) as i32,
        current_limit: s.current_limit.map(|l| RateLimit {
            name: l.name.map(|n| n.as_str().to_string()).unwrap_or_default(),
            requests_per_unit: saturate(l.requests_per_unit),
            unit: proto_unit(l.unit) as i32,
        }),
        limit_remaining: saturate(s.limit_remaining),
        duration_until_reset: s.duration_until_reset_secs.map(|secs| ProtoDuration {
            seconds: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        quota: None,
    }
}

/// The request's descriptors as the core's, borrowing from `req`: one flat entry list and one
/// descriptor list (two allocations per request, whatever its shape).
fn entries_of(descriptors: &[RateLimitDescriptor]) -> Vec<Entry<'_>> {
    descriptors
        .iter()
        .flat_map(|d| {
            d.entries.iter().map(|e| Entry {
                key: &e.key,
                value: &e.value,
            })
        })
        .collect()
}

fn descriptors_of<'a>(
    descriptors: &[RateLimitDescriptor],
    entries: &'a [Entry<'a>],
) -> Result<Vec<RequestDescriptor<'a>>, Status> {
    let mut out = Vec::with_capacity(descriptors.len());
    let mut at = 0;
    for (i, d) in descriptors.iter().enumerate() {
        if d.is_negative_hits {
            return Err(Status::invalid_argument(format!(
                "descriptors[{i}].is_negative_hits: not supported (ratewall never gives units back)"
            )));
        }
        let limit = match &d.limit {
            None => None,
            Some(l) => Some(LimitOverride {
                requests_per_unit: u64::from(l.requests_per_unit),
                unit: unit_of(i, l.unit)?,
            }),
        };
        let n = d.entries.len();
        out.push(RequestDescriptor {
            entries: entries.get(at..at + n).unwrap_or(&[]),
            limit,
            hits_addend: d.hits_addend.map(|h| h.value),
        });
        at += n;
    }
    Ok(out)
}

fn header_values(h: &headers::Headers) -> Vec<HeaderValue> {
    h.iter()
        .map(|(k, v)| HeaderValue {
            key: k.to_ascii_lowercase(),
            value: v.clone(),
            raw_value: Vec::new(),
        })
        .collect()
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let start = Instant::now();
        let state = &self.state;
        let req = request.into_inner();
        let rt = state.runtime_guard();
        let entries = entries_of(&req.descriptors);
        let planned = descriptors_of(&req.descriptors, &entries).and_then(|descriptors| {
            // proto3 uint32: 0 is "not set", i.e. one hit
            let hits = u64::from(req.hits_addend).max(1);
            rt.loaded
                .limiter
                .policy
                .plan_descriptors(&req.domain, &descriptors, hits)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        });
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                state.metrics.bad_request(Endpoint::Rls);
                return Err(e);
            }
        };
        let d = plan.finish(state.decide(&rt, &plan.plan).await);
        state.metrics.observe(Endpoint::Rls, start.elapsed());
        if d.reason == Some(DenyReason::BackendUnavailable) {
            return Err(Status::unavailable(
                "rate limit store unavailable (fail_mode: closed)",
            ));
        }
        let statuses = plan.statuses(&d);
        tracing::debug!(
            endpoint = Endpoint::Rls.name(),
            domain = %req.domain,
            allowed = d.allowed,
            descriptors = statuses.len(),
            "decision"
        );
        let response_headers_to_add = if rt.loaded.service.rls_response_headers {
            header_values(&headers::render(&d, rt.loaded.limiter.headers))
        } else {
            Vec::new()
        };
        Ok(Response::new(RateLimitResponse {
            overall_code: code(plan.overall_code(&d)) as i32,
            statuses: statuses.iter().map(status).collect(),
            response_headers_to_add,
            ..Default::default()
        }))
    }
}
