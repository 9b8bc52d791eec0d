#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The router in process, on the real memory store with a manual clock (no network).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ratewall_core::clock::ManualClock;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000_000_000;

async fn state(yaml: &str) -> (Arc<AppState>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let loaded = Loaded::from_yaml(yaml, None).unwrap();
    let source = ConfigSource {
        path: None,
        redis_url: None,
    };
    let st = AppState::with_clock(loaded, source, clock.clone())
        .await
        .unwrap();
    (st, clock)
}

async fn call(
    st: &Arc<AppState>,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let resp = ratewall_server::app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, v)
}

fn check(body: &str) -> Request<Body> {
    Request::post("/check")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn check_window_resets_with_the_clock() {
    let (st, clock) = state("by_user: \"2/s\"\n").await;
    for remaining in [1, 0] {
        let (s, h, v) = call(&st, check(r#"{"user":"a"}"#)).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["remaining"], remaining);
        assert_eq!(h["x-ratelimit-remaining"], remaining.to_string().as_str());
    }
    let (s, h, v) = call(&st, check(r#"{"user":"a"}"#)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["retry_after"], 1);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(v["reset"], T0 / 1_000_000_000 + 1);
    clock.advance_millis(1_000);
    let (s, _, _) = call(&st, check(r#"{"user":"a"}"#)).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn bad_bodies_are_400_with_the_field() {
    let (st, _) = state("by_user: \"2/s\"\n").await;
    for (body, field) in [
        (r#"{"user": ["a"]}"#, Some("user")),
        (r#"{"cost": 0}"#, Some("cost")),
        (r#"{"extra": 1}"#, Some("extra")),
        ("nope", None),
    ] {
        let (s, _, v) = call(&st, check(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(v["field"].as_str(), field, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains("invalid") || field == Some("cost"));
    }
}

#[tokio::test]
async fn authz_reads_configured_headers() {
    let (st, _) = state("by_tool: {echo: \"1/m\"}\nauthz: {tool_header: x-tool}\n").await;
    let req = || {
        Request::get("/authz/anything")
            .header("x-tool", "ECHO")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(call(&st, req()).await.0, StatusCode::OK);
    let (s, h, v) = call(&st, req()).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h["x-ratelimit-limit"], "1");
    assert_eq!(v["dimensions"][0]["name"], "tool:echo");
}

#[tokio::test]
async fn metrics_count_decisions() {
    let (st, _) = state("by_user: \"1/s\"\n").await;
    call(&st, check(r#"{"user":"a"}"#)).await;
    call(&st, check(r#"{"user":"a"}"#)).await;
    let text = st.render_metrics().await;
    assert!(
        text.contains(
            r#"ratewall_decisions_total{limit="by_user",dimension="user",outcome="allowed"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"ratewall_decisions_total{limit="by_user",dimension="user",outcome="limited"} 1"#
    ));
    assert!(text.contains(r#"ratewall_near_limit_total{limit="by_user",dimension="user"} 1"#));
}

#[tokio::test]
async fn reload_validates_first_and_keeps_counters() {
    let dir = std::env::temp_dir().join(format!("rw-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cfg.yaml");
    std::fs::write(&path, "by_user: \"3/m\"\n").unwrap();
    let source = ConfigSource {
        path: Some(path.clone()),
        redis_url: None,
    };
    let loaded = source.load().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let st = AppState::with_clock(loaded, source, clock).await.unwrap();
    call(&st, check(r#"{"user":"a"}"#)).await;

    std::fs::write(&path, "by_user: \"three/m\"\n").unwrap();
    let err = st.reload().await.unwrap_err();
    assert!(err.contains("by_user"), "{err}");
    assert_eq!(st.runtime().generation, 1);

    std::fs::write(&path, "by_user: \"5/m\"\nheaders: none\n").unwrap();
    assert_eq!(st.reload().await.unwrap(), 2);
    let (s, h, v) = call(&st, check(r#"{"user":"a"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["limit"], 5);
    assert_eq!(v["remaining"], 3, "the usage before the reload is kept");
    assert!(
        h.get("x-ratelimit-limit").is_none(),
        "headers: none applied"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn check_shows_a_shadow_denial_and_allows() {
    let yaml = "by_user: \"5/m\"\nlimits:\n  - {name: keys, descriptors: [key], rate: \"1/m\", shadow_mode: true}\n";
    let (st, _) = state(yaml).await;
    let body = r#"{"user":"a","descriptors":{"key":"k1"}}"#;
    let (s, _, v) = call(&st, check(body)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["shadow_denied"], false);
    let (s, h, v) = call(&st, check(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["shadow_denied"], true);
    assert_eq!(v["dimensions"][1]["name"], "keys");
    assert_eq!(v["dimensions"][1]["shadow"], true);
    assert_eq!(v["dimensions"][1]["allowed"], false);
    assert_eq!(v["dimensions"][0]["shadow"], false);
    // the headers and the summary fields describe the enforced limit
    assert_eq!(v["limit"], 5);
    assert_eq!(v["remaining"], 3);
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert!(h.get("retry-after").is_none());
    let text = st.render_metrics().await;
    assert!(
        text.contains(r#"ratewall_shadow_mode_total{limit="keys",dimension="descriptor"} 1"#),
        "{text}"
    );
}
