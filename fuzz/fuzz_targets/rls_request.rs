//! The RLS request mapping (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! `ratewall_server::grpc::rls::Rls` itself, on the real memory store at a manual clock): the
//! input is decoded as a protobuf `RateLimitRequest` (what arrives on the wire); whatever it
//! holds (domains, descriptors, entries, overrides, `hits_addend`s, negative hits) is answered
//! with a response (one status per descriptor) or `INVALID_ARGUMENT` naming the field; never a
//! panic or another error code.
#![no_main]

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use ratewall_core::clock::ManualClock;
use ratewall_server::grpc::rls::Rls;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};

const CONFIG: &str = r#"
by_user: "1000/m"
rls_response_headers: true
memory_max_keys: 10000
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 3, name: per_ip}
      - key: generic_key
        value: slow
        rate_limit: {unit: second, requests_per_unit: 1}
      - key: header_match
        value: api
        descriptors:
          - key: user
            rate_limit: {unit: hour, requests_per_unit: 2}
          - key: path
            value: "/admin*"
            rate_limit: {unit: day, requests_per_unit: 5}
            shadow_mode: true
  - domain: e
    descriptors:
      - key: k
        rate_limit: {unit: second, requests_per_unit: 4294967295}
"#;

struct Rig {
    rt: tokio::runtime::Runtime,
    rls: Rls,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let loaded = Loaded::from_yaml(CONFIG, None).expect("config");
        let source = ConfigSource {
            path: None,
            redis_url: None,
        };
        let clock = Arc::new(ManualClock::new(ratewall_fuzz::T0_NANOS));
        let state = rt
            .block_on(AppState::with_clock(loaded, source, clock))
            .expect("state");
        Rig {
            rt,
            rls: Rls::new(state),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = RateLimitRequest::decode(data) else {
        return;
    };
    let descriptors = req.descriptors.len();
    let rig = rig();
    match rig
        .rt
        .block_on(rig.rls.should_rate_limit(tonic::Request::new(req)))
    {
        Ok(resp) => assert_eq!(resp.into_inner().statuses.len(), descriptors),
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty());
        }
    }
});
