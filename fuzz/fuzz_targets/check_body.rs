//! The check service's `POST /check` (the router itself, through `tower::ServiceExt::oneshot`,
//! on the real memory store at a manual clock): any body is decoded into the request struct,
//! the identity and the plan, and answered 200, 429 or a 4xx naming the problem; never a panic
//! or a 5xx. Every third input also goes to `/authz` with the bytes as the `x-user-id` header.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use ratewall_core::clock::ManualClock;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use tower::ServiceExt;

const CONFIG: &str = r#"
by_user: "100/s"
by_tenant: "1000/m"
by_user_per_server: "10/s"
by_tool:
  echo: "5/s"
limits:
  - name: per_ip
    descriptors: [remote_address]
    rate: "20/s"
memory_max_keys: 10000
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: minute, requests_per_unit: 3}
"#;

struct Rig {
    rt: tokio::runtime::Runtime,
    state: Arc<AppState>,
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
        Rig { rt, state }
    })
}

fn call(rig: &Rig, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    rig.rt.block_on(async {
        let resp = ratewall_server::app(rig.state.clone())
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body.to_vec())
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let req = Request::post("/check")
        .header("content-type", "application/json")
        .body(Body::from(data.to_vec()))
        .expect("request");
    let (status, body) = call(rig, req);
    assert!(
        status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS || status.is_client_error(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("every answer is JSON");
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        assert!(v.get("error").is_some() || v.get("message").is_some(), "{v}");
    }
    if data.len() % 3 == 0 {
        if let Ok(req) = Request::get("/authz/x").header("x-user-id", data).body(Body::empty()) {
            let (status, _) = call(rig, req);
            assert!(!status.is_server_error(), "{status}");
        }
    }
});
