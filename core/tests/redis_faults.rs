//! Faults under load: Redis killed, paused (SIGSTOP) and restarted. `fail_mode` decides within 2x
//! the timeout, no call hangs, and service recovers within 1 s of Redis returning.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratewall_core::config::{FailMode, LimiterConfig, Plan, RequestContext};
use ratewall_core::decision::DenyReason;
use ratewall_core::store::redis::RedisStore;

const TIMEOUT_MS: u64 = 100;

/// The fault tests measure call durations: run them one at a time, not in parallel.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// 2x the timeout plus scheduling slack on a loaded 2-core machine.
const BOUND: Duration = Duration::from_millis(250);

fn plan(user: &str) -> Plan {
    let cfg = LimiterConfig::from_json_str(
        r#"{"redis_key_prefix": "fault", "by_user": "1000000/s", "by_tenant": "1000000/s"}"#,
        &[],
    )
    .unwrap()
    .0;
    cfg.policy
        .plan(&RequestContext {
            user: Some(user),
            tenant: Some("acme"),
            ..Default::default()
        })
        .unwrap()
}

struct Load {
    stop: Arc<AtomicBool>,
    slowest_us: Arc<AtomicU64>,
    fail_decisions: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// 8 tasks checking in a loop with fail_mode closed, recording the slowest call.
fn load(store: &RedisStore) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let fail_decisions = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let tasks = (0..8)
        .map(|i| {
            let (store, stop, slowest, fails, ok) = (
                store.clone(),
                stop.clone(),
                slowest_us.clone(),
                fail_decisions.clone(),
                ok.clone(),
            );
            tokio::spawn(async move {
                let p = plan(&format!("u{i}"));
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let d = store.check_or_fail(&p, FailMode::Closed).await;
                    slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if d.reason == Some(DenyReason::BackendUnavailable) {
                        fails.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        assert!(d.allowed);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        slowest_us,
        fail_decisions,
        ok,
        tasks,
    }
}

impl Load {
    async fn finish(self) -> (Duration, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
            self.fail_decisions.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
        )
    }
}

async fn recovered_within(store: &RedisStore, limit: Duration) -> Duration {
    let back = Instant::now();
    let p = plan("probe");
    loop {
        let t = Instant::now();
        let r = store.check(&p).await;
        assert!(t.elapsed() < BOUND, "call took {:?}", t.elapsed());
        if r.is_ok() {
            return back.elapsed();
        }
        assert!(back.elapsed() < limit, "not recovered within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    let mut server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), TIMEOUT_MS))
        .await
        .unwrap();
    let l = load(&store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fails_during_outage = l.fail_decisions.load(Ordering::Relaxed);
    server.restart();
    let took = recovered_within(&store, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (slowest, fails, ok) = l.finish().await;
    assert!(slowest < BOUND, "slowest call {slowest:?}");
    assert!(
        fails_during_outage > 0,
        "fail_mode closed decided during the outage"
    );
    assert!(ok > 0 && fails > 0);
    let st = store.stats();
    assert_eq!(st.fail_closed, fails);
    assert!(st.reconnects >= 1, "{st:?}");
    println!("kill: recovered in {took:?}, slowest call {slowest:?}, {st:?}");
    server.assert_every_key_has_ttl("*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_with_sigstop_under_load() {
    let _serial = SERIAL.lock().await;
    let server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), TIMEOUT_MS))
        .await
        .unwrap();
    let l = load(&store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("STOP");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let fails_during_pause = l.fail_decisions.load(Ordering::Relaxed);
    server.signal("CONT");
    let took = recovered_within(&store, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (slowest, _, ok) = l.finish().await;
    assert!(slowest < BOUND, "slowest call {slowest:?}");
    assert!(fails_during_pause > 0);
    assert!(ok > 0);
    let st = store.stats();
    assert!(st.timeouts > 0, "{st:?}");
    println!("pause: recovered in {took:?}, slowest call {slowest:?}, {st:?}");
    server.assert_every_key_has_ttl("*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_allows_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    let mut server = support::RedisServer::start();
    let store = RedisStore::connect(&support::settings(&server.url(), TIMEOUT_MS))
        .await
        .unwrap();
    let p = plan("open");
    assert!(store.check(&p).await.is_ok());
    server.kill();
    for _ in 0..20 {
        let t = Instant::now();
        let d = store.check_or_fail(&p, FailMode::Open).await;
        assert!(t.elapsed() < BOUND);
        if store.stats().fail_open > 0 {
            assert!(d.allowed && d.dimensions.is_empty());
        }
    }
    assert!(store.stats().fail_open > 0);
    server.restart();
    recovered_within(&store, Duration::from_secs(1)).await;
}
