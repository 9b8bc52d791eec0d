//! TLS against a real TLS-only redis-server with certificates generated here: CA bundle, mTLS,
//! hostname checking, and the system roots (which do not trust the test CA).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use ratewall_core::config::{LimiterConfig, Plan, RedisSettings, RequestContext};
use ratewall_core::store::redis::RedisStore;

fn plan() -> Plan {
    let cfg = LimiterConfig::from_json_str(r#"{"redis_key_prefix": "tls", "by_user": "5/s"}"#, &[])
        .unwrap()
        .0;
    cfg.policy
        .plan(&RequestContext {
            user: Some("t"),
            ..Default::default()
        })
        .unwrap()
}

fn settings(url: &str, pki: &support::TestPki, client_cert: bool) -> RedisSettings {
    let mut s = support::settings(url, 2_000);
    s.ca_certs = Some(pki.ca.display().to_string());
    if client_cert {
        s.certfile = Some(pki.client_cert.display().to_string());
        s.keyfile = Some(pki.client_key.display().to_string());
    }
    s
}

async fn works(s: &RedisSettings) -> bool {
    let store = RedisStore::connect(s).await.unwrap();
    store
        .check(&plan())
        .await
        .map(|d| d.allowed)
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca_bundle_and_hostname_check() {
    let pki = support::TestPki::generate();
    let server = pki.server(false);
    let by_name = format!("rediss://localhost:{}", server.port);
    let by_ip = format!("rediss://127.0.0.1:{}", server.port);
    assert!(works(&settings(&by_name, &pki, false)).await);
    // The certificate names only "localhost": checking the hostname rejects 127.0.0.1 ...
    assert!(!works(&settings(&by_ip, &pki, false)).await);
    // ... unless redis_ssl_check_hostname is false (the chain is still verified).
    let mut s = settings(&by_ip, &pki, false);
    s.check_hostname = false;
    assert!(works(&s).await);
    // Without redis_ssl_ca_certs the system roots are used, which do not trust the test CA.
    let mut s = settings(&by_name, &pki, false);
    s.ca_certs = None;
    assert!(!works(&s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let pki = support::TestPki::generate();
    let server = pki.server(true);
    let url = format!("rediss://localhost:{}", server.port);
    assert!(
        !works(&settings(&url, &pki, false)).await,
        "client certificate required"
    );
    assert!(works(&settings(&url, &pki, true)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_are_validated_at_load_time() {
    let pki = support::TestPki::generate();
    let url = "rediss://localhost:1";
    let mut s = settings(url, &pki, true);
    s.keyfile = Some(pki.client_cert.display().to_string()); // a certificate, not a key
    let e = RedisStore::connect(&s).await.unwrap_err();
    assert!(e.message.contains("redis_ssl_keyfile"), "{e}");
    let mut s = settings(url, &pki, true);
    s.certfile = Some("/nonexistent/client.pem".into());
    let e = RedisStore::connect(&s).await.unwrap_err();
    assert!(
        e.message.contains("redis_ssl_certfile") && e.message.contains("/nonexistent/client.pem"),
        "{e}"
    );
    let mut s = settings(url, &pki, true);
    s.keyfile = None;
    let e = RedisStore::connect(&s).await.unwrap_err();
    assert!(e.message.contains("together"), "{e}");
    // Valid files and an unreachable server: not an error at load time.
    assert!(RedisStore::connect(&settings(url, &pki, true))
        .await
        .is_ok());
}
