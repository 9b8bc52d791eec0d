//! Redis store semantics against a real redis-server: one round trip per request, TTLs, key types,
//! NOSCRIPT, server clock precision, the negative cache, startup without Redis, fail modes.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use ratewall_core::config::{ClockSource, FailMode, LimiterConfig, Plan, RequestContext};
use ratewall_core::decision::DenyReason;
use ratewall_core::store::redis::{RedisStore, SCRIPT};
use ratewall_core::Algorithm;

fn cfg(json: &str) -> LimiterConfig {
    LimiterConfig::from_json_str(json, &[]).unwrap().0
}

fn plan(cfg: &LimiterConfig, user: &str) -> Plan {
    let ctx = RequestContext {
        user: Some(user),
        tenant: Some("acme"),
        tool: Some("echo"),
        ..Default::default()
    };
    cfg.policy.plan(&ctx).unwrap()
}

fn scripts(server: &support::RedisServer) -> u64 {
    server.command_calls("evalsha") + server.command_calls("eval")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_request_whatever_the_number_of_dimensions() {
    let server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), 2_000))
        .await
        .unwrap();
    let c = cfg(
        r#"{"redis_key_prefix": "rt", "by_user": "1000/s;5000/m", "by_tenant": "1000/s;5000/m", "by_tool": {"echo": "1000/s;5000/m"}}"#,
    );
    let p = plan(&c, "alice");
    assert_eq!(p.cells.len(), 6);
    store.check(&p).await.unwrap(); // first call loads the script
    let before = scripts(&server);
    for _ in 0..100 {
        assert!(store.check(&p).await.unwrap().allowed);
    }
    assert_eq!(scripts(&server) - before, 100);
    // Nothing else was sent either.
    let info: String = server.query(redis::cmd("INFO").arg("commandstats"));
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        assert!(
            ["cmdstat_evalsha", "cmdstat_eval", "cmdstat_info", "cmdstat_ping", "cmdstat_client", "cmdstat_hello"]
                .iter()
                .any(|k| line.starts_with(k))
                // commands run by the script itself
                || ["hmget", "hset", "pexpire", "time"].iter().any(|k| line.starts_with(&format!("cmdstat_{k}:"))),
            "unexpected command {line}"
        );
    }
    server.assert_every_key_has_ttl("rt*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_touched_once_expire_and_encode_algorithm_and_window() {
    let server = support::RedisServer::start();
    for clock in [ClockSource::Server, ClockSource::Client] {
        let mut s = support::settings(&server.url(), 2_000);
        s.clock = clock;
        let store = RedisStore::connect(&s).await.unwrap();
        for alg in Algorithm::ALL {
            let c = cfg(&format!(
                r#"{{"redis_key_prefix": "ttl", "algorithm": "{}", "by_user": "3/s;10/h"}}"#,
                alg.name()
            ));
            let p = plan(&c, &format!("once-{clock:?}"));
            assert!(store.check(&p).await.unwrap().allowed);
            for cell in &p.cells {
                let ttl: i64 = server.query(redis::cmd("PTTL").arg(&cell.key));
                let max = cell.limit.window_secs() as i64 * 2_000 + 1_000;
                assert!(
                    ttl > 0 && ttl <= max,
                    "{alg:?} {clock:?} {}: PTTL {ttl}",
                    cell.key
                );
                let t: String = server.query(redis::cmd("TYPE").arg(&cell.key));
                let want = match alg {
                    Algorithm::SlidingWindow => "list",
                    Algorithm::Gcra => "string",
                    _ => "hash",
                };
                assert_eq!(t, want, "{alg:?}");
                assert!(cell.key.contains(&format!(":{}:", alg.key_tag())));
            }
        }
        // Changing the algorithm never meets another algorithm's key (no WRONGTYPE).
        assert_eq!(store.stats().errors, 0);
    }
    // A 1 s window key disappears by itself.
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    for (k, _) in server.keys_with_ttl("ttl*") {
        assert!(k.contains(":3600:"), "{k} should have expired");
    }
    server.assert_every_key_has_ttl("*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noscript_reloads_transparently() {
    let server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), 2_000))
        .await
        .unwrap();
    let c = cfg(r#"{"redis_key_prefix": "ns", "by_user": "10/s"}"#);
    let p = plan(&c, "u");
    assert!(store.check(&p).await.unwrap().allowed);
    assert_eq!(store.stats().script_loads, 1);
    let _: String = server.query(redis::cmd("SCRIPT").arg("FLUSH"));
    assert!(store.check(&p).await.unwrap().allowed);
    assert!(store.check(&p).await.unwrap().allowed);
    let st = store.stats();
    assert_eq!(st.script_loads, 2);
    assert_eq!(st.script_calls, 3);
    assert_eq!(st.round_trips, 5);
    assert_eq!(st.errors, 0);
    // The script text is the documented contract.
    assert!(SCRIPT.contains("ARGV[1]"));
}

/// Wait until Redis's clock is in [from, to) µs within its second.
fn wait_for_redis_subsecond(server: &support::RedisServer, from: u64, to: u64) {
    let mut c = server.sync_conn().unwrap();
    loop {
        let (_, us): (u64, u64) = redis::cmd("TIME").query(&mut c).unwrap();
        if (from..to).contains(&us) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_clock_has_sub_second_precision_across_a_second_boundary() {
    let server = support::RedisServer::start();
    let mut s = support::settings(&server.url(), 2_000);
    s.clock = ClockSource::Server;
    let store = RedisStore::connect(&s).await.unwrap();
    for alg in Algorithm::ALL {
        if alg == Algorithm::FixedWindow {
            continue; // epoch-aligned windows: 2L across a boundary is inherent and documented
        }
        let c = cfg(&format!(
            r#"{{"redis_key_prefix": "sub", "algorithm": "{}", "by_user": "2/s"}}"#,
            alg.name()
        ));
        let p = plan(&c, "burst");
        wait_for_redis_subsecond(&server, 880_000, 920_000);
        let start = Instant::now();
        let mut admitted = 0;
        // ~200 ms straddling the second boundary: whole-second timestamps would admit 4.
        while start.elapsed() < Duration::from_millis(200) {
            if store.check(&p).await.unwrap().allowed {
                admitted += 1;
            }
        }
        // Never 3 or 4 (whole-second timestamps); 2 unless the machine stalled for 200 ms.
        assert!((1..=2).contains(&admitted), "{alg:?}: {admitted}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_flood_costs_at_most_0_05_round_trips_per_request() {
    let server = support::RedisServer::start();
    let mut s = support::settings(&server.url(), 2_000);
    s.clock = ClockSource::Server;
    s.negative_cache_keys = 1_000;
    let store = RedisStore::connect(&s).await.unwrap();
    let c = cfg(
        r#"{"redis_key_prefix": "flood", "algorithm": "sliding_window", "by_user": "5/m", "by_tenant": "100000/m", "by_tool": {"echo": "100000/m"}}"#,
    );
    let p = plan(&c, "flooder");
    store.check(&p).await.unwrap();
    let before = scripts(&server);
    let (sequential, per_task) = (2_000u64, 32u64);
    let n = sequential + 64 * per_task;
    let mut allowed = 0;
    // Sequential, then 64 in flight.
    for _ in 0..sequential {
        let d = store.check(&p).await.unwrap();
        if d.allowed {
            allowed += 1;
        } else {
            assert_eq!(d.reason, Some(DenyReason::Limited));
            assert!(d.retry_after_secs.unwrap() >= 1);
        }
    }
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, p) = (store.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for _ in 0..per_task {
                if store.check(&p).await.unwrap().allowed {
                    allowed += 1;
                }
            }
            allowed
        }));
    }
    for t in tasks {
        allowed += t.await.unwrap();
    }
    let trips = scripts(&server) - before;
    let per_request = trips as f64 / n as f64;
    assert_eq!(
        allowed, 4,
        "5/m: one admitted before the flood, four during it"
    );
    assert!(per_request <= 0.05, "{trips} round trips for {n} requests");
    let st = store.stats();
    assert!(st.negative_cache_hits >= n - trips);
    assert!(st.negative_cache_size >= 1);
    // The tenant and tool budgets were not drained by the denied flood (all-or-nothing).
    let other = plan(&c, "someone-else");
    let d = store.check(&other).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.dimensions[1].outcome.remaining, 100_000 - 6);
    server.assert_every_key_has_ttl("flood*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_cache_is_exact_with_client_clock() {
    let server = support::RedisServer::start();
    let mut s = support::settings(&server.url(), 2_000);
    s.negative_cache_keys = 100;
    let store = RedisStore::connect(&s).await.unwrap();
    let c = cfg(r#"{"redis_key_prefix": "negx", "by_user": "2/s"}"#);
    let p = plan(&c, "x");
    let t0 = 1_800_000_000_000_000u64; // a second boundary
    assert!(store.check_at(&p, t0).await.unwrap().allowed);
    assert!(store.check_at(&p, t0 + 1).await.unwrap().allowed);
    let d = store.check_at(&p, t0 + 2).await.unwrap();
    assert_eq!(d.retry_at, Some(t0 + 1_000_000));
    let calls = store.stats().script_calls;
    let d = store.check_at(&p, t0 + 999_999).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_at, Some(t0 + 1_000_000));
    assert_eq!(d.retry_after_secs, Some(1));
    assert_eq!(store.stats().script_calls, calls, "answered locally");
    // At retry_at it goes to Redis again and is admitted.
    assert!(store.check_at(&p, t0 + 1_000_000).await.unwrap().allowed);
    assert_eq!(store.stats().script_calls, calls + 1);
    assert_eq!(store.stats().negative_cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_redis_fails_fast_then_recovers() {
    let port = support::free_port(false);
    let s = support::settings(&format!("redis://127.0.0.1:{port}"), 100);
    let t = Instant::now();
    let store = RedisStore::connect(&s)
        .await
        .expect("no error when Redis is down");
    assert!(t.elapsed() < Duration::from_secs(2));
    let c = cfg(r#"{"redis_key_prefix": "down", "by_user": "10/s"}"#);
    let p = plan(&c, "u");
    let t = Instant::now();
    let e = store.check(&p).await.unwrap_err();
    assert!(e.transient, "{e}");
    assert!(t.elapsed() < Duration::from_millis(250));
    assert!(store.ping().await.is_err());
    // fail_mode decides and is counted.
    let open = store.check_or_fail(&p, FailMode::Open).await;
    assert!(open.allowed && open.dimensions.is_empty());
    let closed = store.check_or_fail(&p, FailMode::Closed).await;
    assert!(!closed.allowed);
    assert_eq!(closed.reason, Some(DenyReason::BackendUnavailable));
    assert_eq!(closed.retry_after_secs, Some(1));
    let st = store.stats();
    assert_eq!((st.fail_open, st.fail_closed), (1, 1));
    assert!(st.errors >= 3);
    assert!(!st.connected);

    let server = support::RedisServer::start_with(port, &[], false);
    let back = Instant::now();
    loop {
        if store.check(&p).await.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "not recovered within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.ping().await.is_ok());
    assert!(store.stats().connected);
    server.assert_every_key_has_ttl("*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_reported_at_connect() {
    let mut s = support::settings("rediss://localhost:1", 50);
    s.ca_certs = Some("/nonexistent/ca.pem".into());
    let e = RedisStore::connect(&s).await.unwrap_err();
    assert!(
        e.message.contains("redis_ssl_ca_certs") && e.message.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    assert!(!e.transient);
    let dir = support::temp_dir("badpem");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    s.ca_certs = Some(junk.display().to_string());
    let e = RedisStore::connect(&s).await.unwrap_err();
    assert!(
        e.message.contains("redis_ssl_ca_certs") && e.message.contains("no PEM certificate"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cluster_settings_are_validated_with_the_key_and_value() {
    let ok = cfg(
        r#"{"by_user": "1/s", "backend": "redis", "redis_cluster": true, "redis_url": "redis://127.0.0.1:7000, redis://127.0.0.1:7001"}"#,
    );
    let r = ok.redis.unwrap();
    assert!(r.cluster);
    for (json, needle) in [
        (
            r#"{"backend": "redis", "redis_cluster": true, "redis_url": "redis://a:1,unix:///tmp/s"}"#,
            "unix:///tmp/s",
        ),
        (
            r#"{"backend": "redis", "redis_cluster": true, "redis_url": "redis://a:1,rediss://b:2"}"#,
            "mixes",
        ),
    ] {
        let e = LimiterConfig::from_json_str(json, &[]).unwrap_err();
        assert_eq!(e.path, "redis_url");
        assert!(e.message.contains(needle), "{e}");
    }
    let e = LimiterConfig::from_json_str(r#"{"redis_cluster": "yes"}"#, &[]).unwrap_err();
    assert_eq!(e.path, "redis_cluster");
    // Passwords of every seed node are redacted.
    let shown = ratewall_core::config::compile::redact("redis://:pw1@a:1,redis://:pw2@b:2");
    assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
}
