//! Exactness across processes: 4 OS processes × 32 concurrent tasks on one key with limit L admit
//! exactly L in the window, for every algorithm, on a single node and on a 3-master cluster.
//!
//! The parent re-runs this test binary as worker processes (`exactness_worker`, which does
//! nothing unless `RATEWALL_EXACT_WORKER` is set).
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use ratewall_core::config::{ClockSource, LimiterConfig, RedisSettings, RequestContext};
use ratewall_core::store::redis::RedisStore;
use ratewall_core::Algorithm;

const PROCESSES: usize = 4;
const TASKS: usize = 32;
const PER_TASK: usize = 3;
const LIMIT: u64 = 50;

#[test]
fn exactness_worker() {
    let Ok(spec) = std::env::var("RATEWALL_EXACT_WORKER") else {
        return;
    };
    // spec = "<cluster 0|1>|<url>|<prefix>"
    let mut parts = spec.splitn(3, '|');
    let cluster = parts.next().unwrap() == "1";
    let url = parts.next().unwrap().to_string();
    let prefix = parts.next().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    rt.block_on(async {
        let mut s = support::settings(&url, 5_000);
        s.cluster = cluster;
        s.clock = ClockSource::Server;
        let store = RedisStore::connect(&s).await.unwrap();
        for alg in Algorithm::ALL {
            let cfg = LimiterConfig::from_json_str(
                &format!(
                    r#"{{"redis_key_prefix": "{prefix}", "algorithm": "{}", "by_user": "{LIMIT}/366d"}}"#,
                    alg.name()
                ),
                &[],
            )
            .unwrap()
            .0;
            let plan = cfg
                .policy
                .plan(&RequestContext {
                    user: Some("hot"),
                    ..Default::default()
                })
                .unwrap();
            let mut tasks = Vec::new();
            for _ in 0..TASKS {
                let (store, plan) = (store.clone(), plan.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    for _ in 0..PER_TASK {
                        if store.check(&plan).await.unwrap().allowed {
                            n += 1;
                        }
                    }
                    n
                }));
            }
            let mut admitted = 0;
            for t in tasks {
                admitted += t.await.unwrap();
            }
            out.push(format!("{}={admitted}", alg.name()));
        }
    });
    println!("\nADMITTED {}", out.join(" "));
}

fn run(settings: &RedisSettings, prefix: &str) {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "exactness_worker",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    "RATEWALL_EXACT_WORKER",
                    format!(
                        "{}|{}|{prefix}",
                        if settings.cluster { 1 } else { 0 },
                        settings.url
                    ),
                )
                .output_async()
        })
        .collect();
    let mut totals = std::collections::BTreeMap::<String, u64>::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "worker failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find_map(|l| l.split_once("ADMITTED ").map(|(_, r)| r))
            .unwrap_or_else(|| panic!("no result in {text}"));
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            *totals.entry(k.to_string()).or_default() += v.parse::<u64>().unwrap();
        }
    }
    assert_eq!(totals.len(), Algorithm::ALL.len());
    for (alg, n) in totals {
        assert_eq!(
            n,
            LIMIT,
            "{alg}: {n} admitted of {} requests",
            PROCESSES * TASKS * PER_TASK
        );
    }
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn four_processes_admit_exactly_the_limit_single_node() {
    let server = support::RedisServer::start();
    run(&support::settings(&server.url(), 5_000), "exs");
    server.assert_every_key_has_ttl("*");
}

#[test]
fn four_processes_admit_exactly_the_limit_on_cluster() {
    let cluster = support::RedisCluster::start();
    run(&cluster.settings(5_000), "exc");
    cluster.assert_every_key_has_ttl("*");
}
