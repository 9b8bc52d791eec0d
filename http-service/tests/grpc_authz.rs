#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) over a real h2c connection to the
//! real gRPC listener, on the real memory store with a manual clock. Envoy itself drives the same
//! service in `http-service/e2e/test_grpc_authz.py`.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use ratewall_core::clock::ManualClock;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use tonic::transport::Channel;

const T0: u64 = 1_700_000_000_000_000_000;

struct Rig {
    addr: std::net::SocketAddr,
    client: AuthorizationClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

async fn rig(yaml: &str) -> Rig {
    let clock = Arc::new(ManualClock::new(T0));
    let loaded = Loaded::from_yaml(yaml, None).unwrap();
    let source = ConfigSource {
        path: None,
        redis_url: None,
    };
    let state = AppState::with_clock(loaded, source, clock).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(ratewall_server::grpc::serve(
        state.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    let client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Rig {
        addr,
        client,
        stop: Some(tx),
        done,
        state,
    }
}

impl Rig {
    async fn check(&mut self, http: HttpRequest) -> CheckResponse {
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        };
        self.client.check(req).await.unwrap().into_inner()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
    }
}

/// An HTTP request as Envoy sends it by default: headers merged in a map.
fn merged(path: &str, headers: &[(&str, &str)]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// As Envoy sends it with `encode_raw_headers: true`: one entry per header line.
fn raw(path: &str, headers: &[(&str, &[u8])]) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        path: path.into(),
        header_map: Some(HeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    value: String::new(),
                    raw_value: v.to_vec(),
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().unwrap().code
}

fn header<'a>(
    list: &'a [envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    name: &str,
) -> Option<&'a str> {
    list.iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn allowed_then_denied_with_the_core_headers() {
    let mut r = rig("by_user: \"2/m\"\nheaders: legacy\n").await;
    for remaining in ["1", "0"] {
        let resp = r.check(merged("/x", &[("x-user-id", "alice")])).await;
        assert_eq!(code(&resp), 0, "{resp:?}");
        let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
            panic!("{resp:?}")
        };
        // upstream and downstream both get the core's headers
        assert_eq!(
            header(&ok.headers, "x-ratelimit-remaining"),
            Some(remaining)
        );
        assert_eq!(
            header(&ok.response_headers_to_add, "x-ratelimit-remaining"),
            Some(remaining)
        );
        assert_eq!(header(&ok.headers, "x-ratelimit-limit"), Some("2"));
    }
    let resp = r.check(merged("/x", &[("x-user-id", "alice")])).await;
    assert_eq!(code(&resp), tonic::Code::ResourceExhausted as i32);
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("{resp:?}")
    };
    assert_eq!(d.status.as_ref().unwrap().code, 429);
    // fixed windows are aligned to the epoch: the minute of T0 ends in 60 - (T0 mod 60) s
    let retry = (60 - (T0 / 1_000_000_000) % 60).to_string();
    assert_eq!(header(&d.headers, "retry-after"), Some(retry.as_str()));
    assert_eq!(header(&d.headers, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&d.headers, "content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["reason"], "limited");
    assert_eq!(body["dimensions"][0]["name"], "by_user");
    // another user has their own counter
    let resp = r.check(merged("/x", &[("x-user-id", "bob")])).await;
    assert_eq!(code(&resp), 0);
    let text = r.state.render_metrics().await;
    assert!(
        text.contains("ratewall_check_duration_seconds_count{endpoint=\"grpc_authz\"} 4"),
        "{text}"
    );
    r.stop().await;
}

#[tokio::test]
async fn repeated_identity_headers_are_400_naming_the_header() {
    let mut r = rig("by_user: \"5/m\"\nauthz: {cost_header: x-cost}\n").await;
    // raw list: two lines of the same header
    for name in [
        "x-user-id",
        "X-User-Id",
        "x-cost",
        "x-tenant-id",
        "x-mcp-tool",
    ] {
        let resp = r
            .check(raw(
                "/",
                &[("x-user-id", b"alice"), (name, b"1"), (name, b"2")],
            ))
            .await;
        assert_eq!(code(&resp), tonic::Code::InvalidArgument as i32, "{name}");
        let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
            panic!("{resp:?}")
        };
        assert_eq!(d.status.as_ref().unwrap().code, 400);
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["field"], name.to_ascii_lowercase(), "{body}");
        assert!(body["error"].as_str().unwrap().contains("more than once"));
    }
    // merged map: Envoy joined two lines with ','
    let resp = r
        .check(merged("/", &[("x-user-id", "mallory,alice")]))
        .await;
    assert_eq!(code(&resp), tonic::Code::InvalidArgument as i32);
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("{resp:?}")
    };
    assert!(d.body.contains("x-user-id"), "{}", d.body);
    // raw list: a comma inside one value is one value
    let resp = r.check(raw("/", &[("x-user-id", b"a,b")])).await;
    assert_eq!(code(&resp), 0);
    // bad cost, invalid UTF-8
    let resp = r.check(raw("/", &[("x-cost", b"0")])).await;
    assert_eq!(code(&resp), tonic::Code::InvalidArgument as i32);
    let resp = r.check(raw("/", &[("x-user-id", b"\xff")])).await;
    assert_eq!(code(&resp), tonic::Code::InvalidArgument as i32);
    // nothing above was counted: alice still has her 5
    let resp = r.check(raw("/", &[("x-user-id", b"alice")])).await;
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}")
    };
    assert_eq!(header(&ok.headers, "x-ratelimit-remaining"), Some("4"));
    r.stop().await;
}

#[tokio::test]
async fn path_descriptor_comes_from_the_check_request_not_a_client_header() {
    let mut r = rig(
        "limits:\n  - {name: api, descriptors: [path], rate: \"1/m\"}\nauthz: {descriptors: {path: ':path'}}\n",
    )
    .await;
    let resp = r.check(merged("/a?x=1", &[])).await;
    assert_eq!(code(&resp), 0);
    // same path (query ignored), a spoofed x-original-uri does not change the counter
    let resp = r
        .check(merged("/a?x=2", &[("x-original-uri", "/elsewhere")]))
        .await;
    assert_eq!(
        code(&resp),
        tonic::Code::ResourceExhausted as i32,
        "{resp:?}"
    );
    let resp = r.check(merged("/b", &[])).await;
    assert_eq!(code(&resp), 0);
    r.stop().await;
}

#[tokio::test]
async fn a_check_without_http_attributes_is_invalid_argument() {
    let mut r = rig("by_user: \"5/m\"\n").await;
    let err = r
        .client
        .check(CheckRequest { attributes: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("attributes.request.http"), "{err:?}");
    r.stop().await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_decoding() {
    let mut r = rig("by_user: \"5/m\"\n").await;
    let big = "v".repeat(2 * 1024 * 1024);
    let err = r
        .client
        .check(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(merged("/", &[("x-user-id", &big)])),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("1048576"), "{err:?}");
    // the server still answers
    let resp = r.check(merged("/", &[("x-user-id", "a")])).await;
    assert_eq!(code(&resp), 0);
    r.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let r = rig("by_user: \"5/m\"\n").await;
    let channel = Channel::from_shared(format!("http://{}", r.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let resp = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, 1, "{service}: SERVING");
    }
    r.stop().await;
}
