#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP `/authz`: a repeated identity, cost or descriptor header is a 400 naming it (issue 11
//! item 6: an appended header must never silently lose to the client's), and nothing is counted.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ratewall_core::clock::ManualClock;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use tower::ServiceExt;

async fn state(yaml: &str) -> Arc<AppState> {
    let loaded = Loaded::from_yaml(yaml, None).unwrap();
    let source = ConfigSource {
        path: None,
        redis_url: None,
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    AppState::with_clock(loaded, source, clock).await.unwrap()
}

async fn call(st: &Arc<AppState>, headers: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get("/authz/x");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = ratewall_server::app(st.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn repeated_headers_are_400_naming_the_header() {
    let st = state(
        "by_user: \"3/m\"\nlimits: [{name: k, descriptors: [key], rate: \"9/m\"}]\nauthz: {cost_header: x-cost, descriptors: {key: x-api-key}}\n",
    )
    .await;
    for name in [
        "x-user-id",
        "x-tenant-id",
        "x-mcp-tool",
        "x-mcp-server",
        "x-cost",
        "x-api-key",
    ] {
        let (s, v) = call(&st, &[(name, "1"), (name, "2")]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert_eq!(v["field"], name);
        assert!(v["error"].as_str().unwrap().contains(name), "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("more than once"),
            "{v}"
        );
    }
    // the client's value first, the proxy's appended one second: refused, not "first wins"
    let (s, _) = call(&st, &[("x-user-id", "mallory"), ("x-user-id", "alice")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // one line (with a comma) is one value; nothing before was counted
    for remaining in [2, 1] {
        let (s, v) = call(&st, &[("x-user-id", "alice,bob")]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["remaining"], remaining);
    }
    let (s, v) = call(&st, &[("x-user-id", "alice")]).await;
    assert_eq!((s, v["remaining"].as_u64()), (StatusCode::OK, Some(2)));
    let text = st.render_metrics().await;
    assert!(
        text.contains("ratewall_bad_requests_total{endpoint=\"authz\"} 7"),
        "{text}"
    );
}
