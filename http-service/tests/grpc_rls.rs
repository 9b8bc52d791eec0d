#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `RateLimitService/ShouldRateLimit` over a real h2c connection to the real gRPC listener, on
//! the real memory store with a manual clock: the protocol mapping, all-or-nothing across
//! descriptors, `hits_addend`, overrides, headers, and bad input (a gRPC error naming the field,
//! never a panic; no two descriptor values share a counter). Envoy drives the same service in
//! `http-service/e2e/test_grpc_rls.py`.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::rate::MAX_COUNT;
use ratewall_server::settings::Loaded;
use ratewall_server::state::{AppState, ConfigSource};
use tonic::transport::Channel;

/// A whole minute, so fixed windows end 60 s after T0.
const T0: u64 = 1_700_000_040_000_000_000;

const CONFIG: &str = r#"
by_user: "1000/m"
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
"#;

struct Rig {
    addr: std::net::SocketAddr,
    state: Arc<AppState>,
    client: RateLimitServiceClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    clock: Arc<ManualClock>,
}

async fn rig(yaml: &str) -> Rig {
    let clock = Arc::new(ManualClock::new(T0));
    let loaded = Loaded::from_yaml(yaml, None).unwrap();
    let source = ConfigSource {
        path: None,
        redis_url: None,
    };
    let state = AppState::with_clock(loaded, source, clock.clone())
        .await
        .unwrap();
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
    let client = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    Rig {
        addr,
        state,
        client,
        stop: Some(tx),
        done,
        clock,
    }
}

impl Rig {
    async fn ask(&mut self, req: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        self.client
            .should_rate_limit(req)
            .await
            .map(|r| r.into_inner())
    }

    async fn ok(&mut self, req: RateLimitRequest) -> RateLimitResponse {
        self.ask(req).await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
    }
}

fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

fn ip(v: &str) -> RateLimitDescriptor {
    desc(&[("remote_address", v)])
}

#[tokio::test]
async fn over_limit_at_exactly_the_limit_with_per_descriptor_statuses() {
    let mut r = rig(CONFIG).await;
    for remaining in [2, 1, 0] {
        let resp = r.ok(req("edge", vec![ip("10.0.0.1")])).await;
        assert_eq!(resp.overall_code, Code::Ok as i32);
        let s = &resp.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, remaining);
        let l = s.current_limit.as_ref().unwrap();
        assert_eq!(
            (l.requests_per_unit, l.unit, l.name.as_str()),
            (3, Unit::Minute as i32, "per_ip")
        );
        assert_eq!(s.duration_until_reset.as_ref().unwrap().seconds, 60);
        assert!(resp.response_headers_to_add.is_empty(), "off by default");
    }
    let resp = r.ok(req("edge", vec![ip("10.0.0.1")])).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert_eq!(resp.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    // another address has its own counter
    let resp = r.ok(req("edge", vec![ip("10.0.0.2")])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    // the window ends
    r.clock.advance_millis(60_000);
    let resp = r.ok(req("edge", vec![ip("10.0.0.1")])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    r.stop().await;
}

#[tokio::test]
async fn descriptors_of_one_request_are_decided_together() {
    let mut r = rig(CONFIG).await;
    let both = || {
        req(
            "edge",
            vec![
                ip("10.0.0.9"),
                desc(&[("generic_key", "slow")]),
                desc(&[("generic_key", "unlisted")]),
            ],
        )
    };
    let resp = r.ok(both()).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(
        resp.statuses.len(),
        3,
        "one status per descriptor, in order"
    );
    assert_eq!(resp.statuses[0].limit_remaining, 2);
    assert_eq!(resp.statuses[1].limit_remaining, 0);
    assert!(
        resp.statuses[2].current_limit.is_none(),
        "no rule: OK, no limit"
    );
    // the 1/s descriptor denies: the whole request is over limit, and the per-ip counter is not
    // charged (all-or-nothing)
    let resp = r.ok(both()).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert_eq!(resp.statuses[0].code, Code::Ok as i32);
    assert_eq!(resp.statuses[1].code, Code::OverLimit as i32);
    assert_eq!(
        resp.statuses[1]
            .duration_until_reset
            .as_ref()
            .unwrap()
            .seconds,
        1
    );
    let resp = r.ok(req("edge", vec![ip("10.0.0.9")])).await;
    assert_eq!(
        resp.statuses[0].limit_remaining, 1,
        "denied request charged nothing"
    );
    // nested rule: header_match=api then user
    for (code, remaining) in [(Code::Ok, 1), (Code::Ok, 0), (Code::OverLimit, 0)] {
        let resp = r
            .ok(req(
                "edge",
                vec![desc(&[("header_match", "api"), ("user", "alice")])],
            ))
            .await;
        assert_eq!(resp.overall_code, code as i32);
        assert_eq!(resp.statuses[0].limit_remaining, remaining);
    }
    r.stop().await;
}

#[tokio::test]
async fn hits_addend_and_overrides() {
    let mut r = rig(CONFIG).await;
    // request hits_addend 0 means 1; 2 consumes 2
    let mut q = req("edge", vec![ip("10.1.0.1")]);
    q.hits_addend = 2;
    assert_eq!(r.ok(q).await.statuses[0].limit_remaining, 1);
    // a descriptor's explicit 0 checks without consuming
    let mut d = ip("10.1.0.1");
    d.hits_addend = Some(UInt64Value { value: 0 });
    let resp = r.ok(req("edge", vec![d])).await;
    assert_eq!(resp.statuses[0].limit_remaining, 1);
    let resp = r.ok(req("edge", vec![ip("10.1.0.1")])).await;
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    // a cost above the limit can never pass
    let mut q = req("edge", vec![ip("10.1.0.2")]);
    q.hits_addend = 4;
    let resp = r.ok(q).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    // the request's own limit for a descriptor
    let mut d = desc(&[("generic_key", "custom")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 2, // MINUTE
    });
    let resp = r.ok(req("edge", vec![d.clone()])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    let l = resp.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((l.requests_per_unit, l.unit), (1, Unit::Minute as i32));
    let resp = r.ok(req("edge", vec![d])).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    r.stop().await;
}

#[tokio::test]
async fn unknown_domain_is_ok_without_limits() {
    let mut r = rig(CONFIG).await;
    let resp = r
        .ok(req("nowhere", vec![ip("1.1.1.1"), ip("1.1.1.2")]))
        .await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses.len(), 2);
    assert!(resp
        .statuses
        .iter()
        .all(|s| s.code == Code::Ok as i32 && s.current_limit.is_none()));
    r.stop().await;
}

#[tokio::test]
async fn core_headers_when_configured() {
    let mut r = rig(&format!(
        "{CONFIG}\nrls_response_headers: true\nheaders: legacy\n"
    ))
    .await;
    let resp = r.ok(req("edge", vec![ip("10.2.0.1")])).await;
    let h: Vec<(&str, &str)> = resp
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(h[0], ("x-ratelimit-limit", "3"));
    assert_eq!(h[1], ("x-ratelimit-remaining", "2"));
    assert_eq!(h[2].0, "x-ratelimit-reset");
    assert_eq!(h[2].1, (T0 / 1_000_000_000 + 60).to_string());
    r.stop().await;
}

/// The gRPC error for a request, with its code and message.
async fn refused(r: &mut Rig, q: RateLimitRequest) -> (tonic::Code, String) {
    let e = r.ask(q).await.expect_err("refused");
    (e.code(), e.message().to_string())
}

#[tokio::test]
async fn bad_input_is_a_grpc_error_naming_the_field() {
    let mut r = rig(CONFIG).await;
    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (req("", vec![ip("1")]), "domain"),
        (req("edge", vec![]), "descriptors"),
        (req("edge", vec![desc(&[])]), "descriptors[0].entries"),
        (
            req("edge", vec![ip("1"), desc(&[("", "v")])]),
            "descriptors[1].entries[0].key",
        ),
        (
            req("edge", (0..10_000).map(|i| ip(&i.to_string())).collect()),
            "descriptors",
        ),
        (
            {
                let mut d = ip("1");
                d.hits_addend = Some(UInt64Value { value: u64::MAX });
                req("edge", vec![d])
            },
            "descriptors[0].hits_addend",
        ),
        (
            {
                let mut d = ip("1");
                d.limit = Some(RateLimitOverride {
                    requests_per_unit: 5,
                    unit: 0,
                });
                req("edge", vec![d])
            },
            "descriptors[0].limit.unit",
        ),
        (
            {
                let mut d = ip("1");
                d.is_negative_hits = true;
                req("edge", vec![d])
            },
            "descriptors[0].is_negative_hits",
        ),
    ];
    for (q, field) in cases {
        let (code, msg) = refused(&mut r, q).await;
        assert_eq!(code, tonic::Code::InvalidArgument, "{field}: {msg}");
        assert!(msg.starts_with(&format!("{field}:")), "{field}: {msg}");
    }
    // the same counter twice: the hits add up, and their sum may not pass the largest count
    let (code, msg) = refused(&mut r, {
        let mut d = ip("1");
        d.hits_addend = Some(UInt64Value { value: MAX_COUNT });
        req("edge", vec![d.clone(), d])
    })
    .await;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.starts_with("descriptors[1].hits_addend:"), "{msg}");
    // the request's largest hits_addend: above the largest count, refused; within it, a valid
    // request that can never pass
    let mut q = req("edge", vec![ip("1")]);
    q.hits_addend = u32::MAX;
    if u64::from(u32::MAX) > MAX_COUNT {
        let (code, msg) = refused(&mut r, q).await;
        assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
        assert!(msg.starts_with("hits_addend:"), "{msg}");
    } else {
        let resp = r.ok(q).await;
        assert_eq!(resp.overall_code, Code::OverLimit as i32);
        assert!(
            resp.statuses[0].duration_until_reset.is_none(),
            "never passes: no reset"
        );
    }
    // a message above the bound is refused before it is decoded
    let big = "v".repeat(2 << 20);
    let (code, msg) = refused(&mut r, req("edge", vec![ip(&big)])).await;
    assert_eq!(code, tonic::Code::OutOfRange, "{msg}");
    // nothing above was counted, and the server still answers
    let resp = r.ok(req("edge", vec![ip("1")])).await;
    assert_eq!(resp.statuses[0].limit_remaining, 2);
    r.stop().await;
}

#[tokio::test]
async fn huge_values_never_share_a_counter() {
    let mut r = rig(CONFIG).await;
    // 100 KB values differing only in their last byte (the key encoder hashes long values)
    let a = format!("{}a", "x".repeat(100_000));
    let b = format!("{}b", "x".repeat(100_000));
    for _ in 0..3 {
        assert_eq!(
            r.ok(req("edge", vec![ip(&a)])).await.overall_code,
            Code::Ok as i32
        );
    }
    assert_eq!(
        r.ok(req("edge", vec![ip(&a)])).await.overall_code,
        Code::OverLimit as i32
    );
    let resp = r.ok(req("edge", vec![ip(&b)])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32, "b has its own counter");
    assert_eq!(resp.statuses[0].limit_remaining, 2);
    // values that a naive join would confuse: ("a:b", "c") vs ("a", "b:c") and entry splits
    let resp = r
        .ok(req(
            "edge",
            vec![desc(&[("header_match", "api"), ("user", "x|y")])],
        ))
        .await;
    assert_eq!(resp.statuses[0].limit_remaining, 1);
    let resp = r
        .ok(req(
            "edge",
            vec![desc(&[("header_match", "api"), ("user", "x")])],
        ))
        .await;
    assert_eq!(
        resp.statuses[0].limit_remaining, 1,
        "x and x|y are two counters"
    );
    r.stop().await;
}

/// A `RateLimitRequest` whose strings are bytes on the wire (same tags), to send what prost's
/// `string` fields cannot hold: invalid UTF-8.
mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(bytes = "vec", tag = "1")]
        pub domain: Vec<u8>,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<Descriptor>,
    }
}

#[tokio::test]
async fn invalid_utf8_is_refused_by_the_decoder() {
    let r = rig(CONFIG).await;
    let channel = Channel::from_shared(format!("http://{}", r.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    let q = raw::Request {
        domain: b"edge".to_vec(),
        descriptors: vec![raw::Descriptor {
            entries: vec![raw::Entry {
                key: b"remote_address".to_vec(),
                value: b"\xff\xfe".to_vec(),
            }],
        }],
    };
    let codec = tonic_prost::ProstCodec::<raw::Request, RateLimitResponse>::default();
    let e = grpc
        .unary(tonic::Request::new(q), path, codec)
        .await
        .expect_err("invalid UTF-8");
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    assert!(
        e.message().contains("UTF-8") || e.message().contains("utf-8"),
        "{e:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn descriptor_config_directory_loads_and_reloads_keeping_counters() {
    let dir = std::env::temp_dir().join(format!("rw-rls-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rls")).unwrap();
    let cfg = dir.join("ratewall.yaml");
    std::fs::write(&cfg, "by_user: \"10/m\"\ndescriptor_config: rls\n").unwrap();
    let edge = "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 3}\n";
    std::fs::write(dir.join("rls/edge.yaml"), edge).unwrap();
    std::fs::write(
        dir.join("rls/other.yaml"),
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
    )
    .unwrap();
    let source = ConfigSource {
        path: Some(cfg.clone()),
        redis_url: None,
    };
    let loaded = source.load().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
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
    let mut c = RateLimitServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut ask = async |domain: &str, d: RateLimitDescriptor| {
        c.should_rate_limit(req(domain, vec![d]))
            .await
            .unwrap()
            .into_inner()
    };
    assert_eq!(ask("edge", ip("1")).await.statuses[0].limit_remaining, 2);
    assert_eq!(
        ask("other", desc(&[("k", "v")])).await.statuses[0].limit_remaining,
        0
    );

    // a broken file keeps the running configuration; the error names the file
    std::fs::write(
        dir.join("rls/other.yaml"),
        "domain: other\ndescriptors:\n  - value: v\n",
    )
    .unwrap();
    let e = state.reload().await.unwrap_err();
    assert!(e.contains("other.yaml") && e.contains("key"), "{e}");
    // a domain defined twice names both files
    std::fs::write(dir.join("rls/other.yaml"), edge).unwrap();
    let e = state.reload().await.unwrap_err();
    assert!(e.contains("edge.yaml") && e.contains("other.yaml"), "{e}");
    assert_eq!(ask("edge", ip("1")).await.statuses[0].limit_remaining, 1);

    // a change to one domain keeps the counters of the unchanged one
    std::fs::write(
        dir.join("rls/other.yaml"),
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
    )
    .unwrap();
    assert_eq!(state.reload().await.unwrap(), 2);
    assert_eq!(ask("edge", ip("1")).await.statuses[0].limit_remaining, 0);
    let resp = ask("other", desc(&[("k", "v")])).await;
    assert_eq!(
        resp.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        5
    );
    let _ = tx.send(());
    done.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn shadow_rules_answer_ok_and_are_counted() {
    let yaml = r#"
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        shadow_mode: true
        rate_limit: {unit: minute, requests_per_unit: 1, name: ip_shadow}
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5}
"#;
    let mut r = rig(yaml).await;
    let both = || req("edge", vec![ip("10.3.0.1"), desc(&[("user", "u")])]);
    assert_eq!(r.ok(both()).await.overall_code, Code::Ok as i32);
    // the shadow rule is over its limit: OK (would-be denial counted), the enforced rule charged
    let resp = r.ok(both()).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].code, Code::Ok as i32);
    assert_eq!(resp.statuses[1].limit_remaining, 3);
    let text = r.state.render_metrics().await;
    assert!(
        text.contains("ratewall_shadow_mode_total{limit=\"ip_shadow\",dimension=\"descriptor\"} 1"),
        "{text}"
    );
    r.stop().await;

    // global shadow_mode: nothing is ever over limit
    let mut r = rig(&format!("{CONFIG}\nshadow_mode: true\n")).await;
    for _ in 0..5 {
        let resp = r
            .ok(req("edge", vec![desc(&[("generic_key", "slow")])]))
            .await;
        assert_eq!(resp.overall_code, Code::Ok as i32);
    }
    r.stop().await;
}

#[tokio::test]
async fn requests_per_unit_zero_blocks_a_value_and_charges_nothing_else() {
    // envoyproxy/ratelimit's README, example 3: a generic per-IP limit and a black-listed IP.
    let mut r = rig(r#"
by_user: "1000/m"
domains:
  - domain: edge_proxy_per_ip
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: remote_address
        value: 50.0.0.5
        rate_limit: {unit: second, requests_per_unit: 0}
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5}
"#)
    .await;
    let d = "edge_proxy_per_ip";
    let resp = r.ok(req(d, vec![ip("50.0.0.5")])).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    let s = &resp.statuses[0];
    assert_eq!(s.code, Code::OverLimit as i32);
    let l = s.current_limit.as_ref().unwrap();
    assert_eq!((l.requests_per_unit, l.unit), (0, Unit::Second as i32));
    assert_eq!(s.duration_until_reset.as_ref().unwrap().seconds, 1);
    let resp = r.ok(req(d, vec![ip("50.0.0.1")])).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].limit_remaining, 9);
    // A request naming the blocked IP and a user: denied, the user not charged.
    let user = desc(&[("user", "alice")]);
    let resp = r.ok(req(d, vec![user.clone(), ip("50.0.0.5")])).await;
    assert_eq!(resp.overall_code, Code::OverLimit as i32);
    assert_eq!(resp.statuses[0].code, Code::Ok as i32);
    assert_eq!(resp.statuses[0].limit_remaining, 5);
    let resp = r.ok(req(d, vec![user])).await;
    assert_eq!(resp.statuses[0].limit_remaining, 4);
    r.stop().await;
}
