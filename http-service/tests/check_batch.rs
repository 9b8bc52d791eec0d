#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The batch `/check` (`calls`: an MCP batch grouped by tool) in process, on the real memory
//! store with a manual clock: one plan, all-or-nothing across the calls, the core's headers for
//! the whole decision, and 400s naming the field.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ratewall_core::clock::ManualClock;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use serde_json::{json, Value};
use tower::ServiceExt;

const T0: u64 = 1_700_000_000_000_000_000;

async fn state(yaml: &str) -> Arc<AppState> {
    let clock = Arc::new(ManualClock::new(T0));
    let loaded = Loaded::from_yaml(yaml, None).unwrap();
    let source = ConfigSource {
        path: None,
        redis_url: None,
    };
    AppState::with_clock(loaded, source, clock).await.unwrap()
}

async fn check(st: &Arc<AppState>, body: Value) -> (StatusCode, axum::http::HeaderMap, Value) {
    let req = Request::post("/check")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = ratewall_server::app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

const POLICY: &str = "by_user: \"10/m\"\nby_tool:\n  echo: \"1/m\"\n";

#[tokio::test]
async fn a_denied_batch_consumes_nothing() {
    let st = state(POLICY).await;
    let batch =
        json!({"user": "u", "calls": [{"tool": "add", "cost": 1}, {"tool": "echo", "cost": 2}]});
    let (s, h, v) = check(&st, batch).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // echo's 2 calls can never fit its limit of 1: the whole batch is denied
    assert_eq!(v["reason"], "cost_exceeds_limit");
    assert_eq!(v["dimensions"].as_array().unwrap().len(), 2);
    assert_eq!(v["dimensions"][0]["dimension"], "user");
    assert_eq!(v["dimensions"][1]["dimension"], "tool");
    assert_eq!(
        v["calls"],
        json!([
            {"tool": "add", "cost": 1, "dimensions": [0], "limited": false},
            {"tool": "echo", "cost": 2, "dimensions": [0, 1], "limited": true}
        ])
    );
    assert_eq!(h["x-ratelimit-limit"], "1");
    // nothing consumed: the user's next single call sees 9 of 10 left
    let (s, h, v) = check(&st, json!({"user": "u", "tool": "add"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["remaining"], 9);
    assert_eq!(h["x-ratelimit-remaining"], "9");
    assert!(
        v.get("calls").is_none(),
        "single checks keep their answer: {v}"
    );
}

#[tokio::test]
async fn an_admitted_batch_consumes_every_call_once() {
    let st = state(POLICY).await;
    let batch = json!({"user": "u", "calls": [{"tool": "add", "cost": 3}, {"tool": "echo"}]});
    let (s, h, v) = check(&st, batch.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // the reported cell is echo's (0 left); the user's cell took 3 + 1
    assert_eq!(v["remaining"], 0);
    assert_eq!(v["dimensions"][0]["remaining"], 6);
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(v["calls"][1]["limited"], false);
    // the same batch again: echo is spent, so nothing is taken from the user this time
    let (s, _, v) = check(&st, batch).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(v["reason"], "limited");
    assert_eq!(v["calls"][0]["limited"], false);
    assert_eq!(v["calls"][1]["limited"], true);
    assert!(v["retry_after"].as_u64().unwrap() >= 1);
    let (_, _, v) = check(&st, json!({"user": "u"})).await;
    assert_eq!(v["remaining"], 5);
}

#[tokio::test]
async fn one_call_answers_as_the_single_check() {
    let a = state(POLICY).await;
    let b = state(POLICY).await;
    let (s1, h1, mut v1) = check(&a, json!({"user": "x", "tool": "echo", "cost": 1})).await;
    let (s2, h2, mut v2) = check(&b, json!({"user": "x", "calls": [{"tool": "echo"}]})).await;
    assert_eq!(s1, s2);
    let rate = |h: &axum::http::HeaderMap| {
        h.iter()
            .filter(|(n, _)| n.as_str() != "content-length")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(rate(&h1), rate(&h2));
    let calls = v2.as_object_mut().unwrap().remove("calls").unwrap();
    assert_eq!(
        calls,
        json!([{"tool": "echo", "cost": 1, "dimensions": [0, 1], "limited": false}])
    );
    v1.as_object_mut().unwrap().remove("calls");
    assert_eq!(v1, v2);
}

#[tokio::test]
async fn per_server_applies_to_the_tool_calls() {
    let st = state("by_user: \"10/m\"\nby_user_per_server: \"2/m\"\n").await;
    let batch =
        json!({"user": "p", "server": "gw-1", "calls": [{"tool": "a"}, {"tool": null, "cost": 5}]});
    let (s, _, v) = check(&st, batch).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["calls"][0]["dimensions"], json!([0, 1]));
    assert_eq!(v["calls"][1]["dimensions"], json!([0]));
    assert_eq!(v["dimensions"][0]["remaining"], 4);
    assert_eq!(v["dimensions"][1]["remaining"], 1);
}

#[tokio::test]
async fn bad_batches_are_400_naming_the_field() {
    let st = state("by_user: \"10/m\"\nby_user_per_server: \"2/m\"\n").await;
    for (body, field, needle) in [
        (json!({"calls": []}), "calls", "1 to 32 calls, this one 0"),
        (
            json!({"calls": vec![json!({"tool": "t"}); 33]}),
            "calls",
            "this one 33",
        ),
        (
            json!({"tool": "t", "calls": [{"tool": "t"}]}),
            "tool",
            "not allowed with calls",
        ),
        (
            json!({"cost": 2, "calls": [{"tool": "t"}]}),
            "cost",
            "not allowed with calls",
        ),
        (
            json!({"calls": [{"tool": "t"}, {"tool": "u", "cost": 0}]}),
            "calls[1].cost",
            "must be an integer",
        ),
        (
            json!({"calls": [{"tool": "t", "cost": 4_294_967_295u64}, {"tool": "u", "cost": 1}]}),
            "calls[1].cost",
            "cost 4294967296 exceeds",
        ),
        (
            json!({"server": "bad id", "calls": [{"tool": "t"}]}),
            "server",
            "server_id may contain",
        ),
        (
            json!({"calls": [{"tool": "t", "name": "x"}]}),
            "calls[0].name",
            "unknown field",
        ),
        (
            json!({"calls": [{"cost": "1"}]}),
            "calls[0].cost",
            "invalid type",
        ),
    ] {
        let (s, h, v) = check(&st, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
        assert!(h.get("x-ratelimit-limit").is_none());
    }
    // nothing was consumed by any of them
    let (_, _, v) = check(&st, json!({"user": "anonymous"})).await;
    assert_eq!(v["remaining"], 9);
}
