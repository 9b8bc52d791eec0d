//! Redis store benchmark against a local redis-server started here (loopback, no persistence).
//!
//! `cargo bench -p ratewall-core --features redis --bench redis`
//!
//! For 1 and 3 dimensions, sequential and 64 in flight, it measures the Redis store (one
//! `EVALSHA` per request for every cell) and, as a baseline in the same run against the same
//! server, the gateway's old plugin pattern: one fixed-window script call (`INCR` + `EXPIRE`) per
//! dimension, awaited one after the other. Then a flood of denied requests with the negative
//! cache. Round trips per request are counted by Redis itself (`INFO commandstats`: calls of
//! `EVALSHA` + `EVAL`). Each row runs for `RATEWALL_BENCH_SECS` seconds (default 2); the whole run
//! takes well under a minute. Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratewall_core::config::{ClockSource, LimiterConfig, Plan, RequestContext};
use ratewall_core::store::redis::RedisStore;

const OLD_PLUGIN_SCRIPT: &str = r"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return c
";

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Ratewall,
    PerDimension,
}

struct Row {
    name: String,
    checks_per_sec: f64,
    p50: Duration,
    p99: Duration,
    round_trips: f64,
    redis_us_per_request: f64,
}

/// Total `usec` Redis spent in EVALSHA + EVAL (INFO commandstats).
fn script_usec(server: &support::RedisServer) -> u64 {
    let info: String = server.query(redis::cmd("INFO").arg("commandstats"));
    ["cmdstat_evalsha:", "cmdstat_eval:"]
        .iter()
        .filter_map(|p| info.lines().find_map(|l| l.strip_prefix(p)))
        .filter_map(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("usec="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn plans(dims: usize, users: usize, rate: &str) -> Vec<Plan> {
    let json = if dims == 1 {
        format!(r#"{{"redis_key_prefix": "bench", "by_user": "{rate}"}}"#)
    } else {
        format!(
            r#"{{"redis_key_prefix": "bench", "by_user": "{rate}", "by_tenant": "{rate}", "by_tool": {{"echo": "{rate}"}}}}"#
        )
    };
    let cfg = LimiterConfig::from_json_str(&json, &[]).unwrap().0;
    (0..users)
        .map(|u| {
            let user = format!("user{u}");
            cfg.policy
                .plan(&RequestContext {
                    user: Some(&user),
                    tenant: Some("acme"),
                    tool: Some("echo"),
                    ..Default::default()
                })
                .unwrap()
        })
        .collect()
}

async fn one(
    imp: Impl,
    store: &RedisStore,
    conn: &mut redis::aio::MultiplexedConnection,
    sha: &str,
    plan: &Plan,
) -> bool {
    match imp {
        Impl::Ratewall => store.check(plan).await.map(|d| d.allowed).unwrap_or(false),
        Impl::PerDimension => {
            let mut ok = true;
            for c in &plan.cells {
                let n: u64 = redis::cmd("EVALSHA")
                    .arg(sha)
                    .arg(1)
                    .arg(format!("old:{}", c.key))
                    .arg(c.limit.window_secs())
                    .query_async(conn)
                    .await
                    .unwrap();
                ok &= n <= c.limit.count();
            }
            ok
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    name: String,
    imp: Impl,
    server: &support::RedisServer,
    store: &RedisStore,
    conn: &redis::aio::MultiplexedConnection,
    sha: &str,
    plans: Vec<Plan>,
    in_flight: usize,
    secs: f64,
) -> Row {
    let scripts = || server.command_calls("evalsha") + server.command_calls("eval");
    let before = scripts();
    let usec_before = script_usec(server);
    let plans = Arc::new(plans);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let (store, mut conn, sha, plans) =
            (store.clone(), conn.clone(), sha.to_string(), plans.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = t;
            while Instant::now() < until {
                let p = &plans[i % plans.len()];
                i += in_flight;
                let s = Instant::now();
                one(imp, &store, &mut conn, &sha, p).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let trips = scripts() - before;
    let usec = script_usec(server) - usec_before;
    lat.sort_unstable();
    Row {
        name,
        checks_per_sec: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        round_trips: trips as f64 / lat.len().max(1) as f64,
        redis_us_per_request: usec as f64 / lat.len().max(1) as f64,
    }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn main() {
    let secs: f64 = std::env::var("RATEWALL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = support::RedisServer::start();
    rt.block_on(async {
        let mut settings = support::settings(&server.url(), 5_000);
        settings.clock = ClockSource::Server;
        settings.negative_cache_keys = 100_000;
        let store = RedisStore::connect(&settings).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(OLD_PLUGIN_SCRIPT)
            .query_async(&mut conn)
            .await
            .unwrap();
        // Warm up: load the ratewall script.
        store.check(&plans(1, 1, "1000000/s")[0]).await.unwrap();

        let mut rows = Vec::new();
        for dims in [1, 3] {
            for in_flight in [1, 64] {
                for imp in [Impl::PerDimension, Impl::Ratewall] {
                    let label = match imp {
                        Impl::Ratewall => "ratewall (1 EVALSHA / request)",
                        Impl::PerDimension => "baseline: old plugin (1 script / dimension)",
                    };
                    let mode = if in_flight == 1 {
                        "sequential"
                    } else {
                        "64 in flight"
                    };
                    let name = format!("{dims} dim, {mode}, {label}");
                    let p = plans(dims, 64, "1000000/s");
                    let row =
                        measure(name, imp, &server, &store, &conn, &sha, p, in_flight, secs).await;
                    rows.push(row);
                }
            }
        }
        // A flood of denied requests: 3 dimensions, the user over a 5/m limit.
        let flood = plans(3, 1, "5/m");
        let row = measure(
            "3 dim, 64 in flight, denied flood (negative cache)".into(),
            Impl::Ratewall,
            &server,
            &store,
            &conn,
            &sha,
            flood,
            64,
            secs,
        )
        .await;
        rows.push(row);

        println!("| scenario | checks/s | p50 µs | p99 µs | Redis round trips / request | Redis CPU µs / request |");
        println!("|---|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {:.0} | {} | {} | {:.4} | {:.1} |",
                r.name,
                r.checks_per_sec,
                us(r.p50),
                us(r.p99),
                r.round_trips,
                r.redis_us_per_request
            );
        }
        println!();
        for pair in rows[..8].chunks(2) {
            println!(
                "{}: ratewall / baseline throughput = {:.2}x",
                pair[1].name.split(", ratewall").next().unwrap_or(""),
                pair[1].checks_per_sec / pair[0].checks_per_sec
            );
        }
        println!("store stats: {:?}", store.stats());
    });
}
