//! The Redis store (feature `redis`): many gateway, service and Envoy instances share one limit.
//!
//! * **One round trip per request.** Every cell of every dimension of a [`Plan`] (all limits of a
//!   `;` list) goes to Redis in one `EVALSHA` of [`SCRIPT`], which peeks every cell, and commits
//!   every cell only if all admit: the memory store's all-or-nothing semantics, in one atomic
//!   step (each cell at its own cost; shadow cells never block the commit, see
//!   [`crate::store::commits`]). The script mirrors [`crate::algorithm`] exactly (integer µs; see
//!   the header of `script.lua` for the `KEYS`/`ARGV`/reply contract) and the decision is built by
//!   [`Decision::combine`], so decisions and headers are identical to the memory store's.
//! * **Script cache.** The script is loaded lazily: on `NOSCRIPT` (first use, restart, failover,
//!   `SCRIPT FLUSH`) the request is re-sent once as `EVAL` with the body, which also caches it.
//! * **Clock.** [`ClockSource::Server`] (default): the script reads `TIME`, so instances with
//!   skewed clocks agree; [`ClockSource::Client`]: the caller's [`SystemClock`] (µs), for managed
//!   Redis that forbids `TIME` in scripts and for deterministic tests ([`RedisStore::check_at`]).
//! * **Keys** come from [`crate::key`]: they encode algorithm and window and share the tenant's
//!   hash tag, so one script call is valid on Redis Cluster (`redis_cluster: true`). Every write
//!   sets a TTL (see `script.lua`).
//! * **Connection.** One multiplexed connection (or one cluster connection) shared by every
//!   clone of the store; concurrent requests pipeline on it. Every call is bounded by
//!   `redis_timeout_ms` *in total* (including a `NOSCRIPT` retry): a caller never waits longer.
//!   [`RedisStore::connect`] does not fail when Redis is down: it returns a store whose calls fail
//!   fast with a transient [`StoreError`] while a background task reconnects with exponential
//!   backoff (10 ms doubling to 200 ms, so service resumes within ~0.2 s of Redis returning). A
//!   dropped connection, or timeouts with no reply for over a second, trigger the same
//!   reconnection.
//! * **Failures** are logged with their cause through `tracing` (at most one line per second,
//!   with the number suppressed) and counted in [`RedisStats`]; [`RedisStore::check_or_fail`]
//!   applies `fail_mode` and counts each fail-open / fail-closed decision.
//! * **Negative cache** (`redis_negative_cache_keys`, default 100 000, 0 disables): see
//!   [`negative_cache`](self#negative-cache).
//!
//! # Negative cache
//!
//! A request denied by Redis with a known earliest-retry instant is remembered (plan and cost,
//! every cell's outcome); until then the same request is denied locally, without a round trip.
//! The verdict is exact (nothing ever refunds a cell) and so is `Retry-After`, as far as this
//! process can know: an entry is dropped as soon as this store admits a request consuming in one
//! of its cells. Bounded and counted (hits, size, evictions). Details in `negative_cache.rs`.

mod negative_cache;
mod tls;

pub use tls::check_files as check_tls_files;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use self::negative_cache::{Domain, NegativeCache};
use crate::algorithm::Outcome;
use crate::clock::{Clock, Micros, SystemClock};
use crate::config::{ClockSource, FailMode, Plan, RedisSettings};
use crate::decision::{Decision, DenyReason};
use crate::store::StoreError;
use crate::throttle::LogThrottle;

/// The Lua script run for every request. Its header documents `KEYS`, `ARGV` and the reply; the
/// gateway plugin's pure-Python engine runs this same text.
pub const SCRIPT: &str = include_str!("script.lua");

/// SHA-1 of [`SCRIPT`] (the `EVALSHA` argument).
pub fn script_sha() -> String {
    redis::Script::new(SCRIPT).get_hash().to_string()
}

/// Counters of a [`RedisStore`] (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Commands sent to Redis by checks (`EVALSHA`, plus `EVAL` after `NOSCRIPT`).
    pub round_trips: u64,
    /// Checks that went to Redis (one `EVALSHA` each, whatever the number of cells).
    pub script_calls: u64,
    /// `NOSCRIPT` replies answered by re-sending the script body.
    pub script_loads: u64,
    /// Checks that failed (not connected, timeout, connection or server error).
    pub errors: u64,
    /// Of which timeouts.
    pub timeouts: u64,
    /// Checks answered by the negative cache without a round trip.
    pub negative_cache_hits: u64,
    /// Denied plans currently in the negative cache.
    pub negative_cache_size: u64,
    /// Live negative-cache entries evicted because it was full.
    pub negative_cache_evictions: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// Whether a connection is currently established.
    pub connected: bool,
    /// [`RedisStore::check_or_fail`] decisions that allowed because Redis failed.
    pub fail_open: u64,
    /// [`RedisStore::check_or_fail`] decisions that denied because Redis failed.
    pub fail_closed: u64,
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

enum Target {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    script_calls: AtomicU64,
    script_loads: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    negative_cache_hits: AtomicU64,
    reconnects: AtomicU64,
    fail_open: AtomicU64,
    fail_closed: AtomicU64,
}

struct Inner {
    target: Target,
    url_redacted: String,
    clock_source: ClockSource,
    timeout: Duration,
    sha: String,
    /// The established connection and its generation.
    conn: Mutex<Option<(u64, Conn)>>,
    generation: AtomicU64,
    connecting: AtomicBool,
    ever_connected: AtomicBool,
    /// ms since `epoch` (+1, 0 = none) of the first timeout since the last reply.
    first_timeout_ms: AtomicU64,
    epoch: Instant,
    runtime: tokio::runtime::Handle,
    clock: SystemClock,
    negative: NegativeCache,
    counters: Counters,
    /// Error lines: at most one a second, with the count suppressed.
    log: LogThrottle,
}

/// The shared Redis store. Cheap to clone (every clone shares the connection, cache and
/// counters); `Send + Sync`.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.url_redacted)
            .field("stats", &self.stats())
            .finish()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Timeouts with no reply in between for this long (at least) drop the connection.
const STALL_MIN: Duration = Duration::from_secs(1);

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn build_target(settings: &RedisSettings) -> Result<Target, StoreError> {
    let certs = tls::certificates(settings)?;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let bad = |e: RedisError| {
        StoreError::permanent(format!(
            "redis_url: {:?}: {e}",
            crate::config::compile::redact(&settings.url)
        ))
    };
    if settings.cluster {
        let nodes: Vec<String> = settings
            .url
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let mut b = ClusterClientBuilder::new(nodes)
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .min_retry_wait(5)
            .max_retry_wait(20);
        if let Some(c) = certs {
            b = b.certs(c);
        }
        if !settings.check_hostname {
            b = b.danger_accept_invalid_hostnames(true);
        }
        return b.build().map(|c| Target::Cluster(Box::new(c))).map_err(bad);
    }
    let client = match certs {
        Some(c) => redis::Client::build_with_tls(settings.url.as_str(), c).map_err(bad)?,
        None => redis::Client::open(settings.url.as_str()).map_err(bad)?,
    };
    let client = if !settings.check_hostname && settings.url.starts_with("rediss://") {
        let info = client.get_connection_info().clone();
        let mut addr = info.addr().clone();
        addr.set_danger_accept_invalid_hostnames(true);
        redis::Client::open(info.set_addr(addr)).map_err(bad)?
    } else {
        client
    };
    Ok(Target::Single(Box::new(client)))
}

impl Inner {
    fn ms_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn open(&self) -> Result<Conn, RedisError> {
        match &self.target {
            Target::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    fn install(&self, conn: Conn) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((g, conn));
        self.replied();
        if self.ever_connected.swap(true, Ordering::SeqCst) {
            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(url = %self.url_redacted, "ratewall: reconnected to Redis");
        }
    }

    /// A reply arrived: the connection is alive.
    fn replied(&self) {
        self.first_timeout_ms.store(0, Ordering::Relaxed);
    }

    fn current(&self) -> Option<(u64, Conn)> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drop connection `generation` (if still current) and start reconnecting.
    fn invalidate(self: &Arc<Self>, generation: u64) {
        {
            let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(&*c, Some((g, _)) if *g == generation) {
                *c = None;
            }
        }
        self.spawn_reconnect();
    }

    fn spawn_reconnect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        self.runtime.spawn(reconnect_loop(weak));
    }

    fn log_error(&self, what: &str, e: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.log.permit(self.clock.now_micros()) {
            tracing::warn!(
                url = %self.url_redacted,
                suppressed,
                "ratewall: Redis {what}: {e}"
            );
        }
    }
}

async fn reconnect_loop(weak: Weak<Inner>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.current().is_some() {
            inner.connecting.store(false, Ordering::SeqCst);
            return;
        }
        let attempt = tokio::time::timeout(inner.timeout, inner.open()).await;
        match attempt {
            Ok(Ok(conn)) => {
                inner.install(conn);
                inner.connecting.store(false, Ordering::SeqCst);
                return;
            }
            Ok(Err(e)) => inner.log_error("connect failed", &e),
            Err(_) => inner.log_error(
                "connect failed",
                &format!("timed out after {} ms", inner.timeout.as_millis()),
            ),
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl RedisStore {
    /// Create the store: validate the TLS files and the URL (errors name the setting), then try
    /// to connect once (bounded by `max(redis_timeout_ms, 1 s)`).
    ///
    /// Redis being down is **not** an error: the store is returned anyway, every call fails fast
    /// with a transient [`StoreError`] (so `fail_mode` applies) and a background task reconnects
    /// with backoff. Must be called inside a tokio runtime, the one that will drive the store:
    /// the reconnect task is spawned on it.
    pub async fn connect(settings: &RedisSettings) -> Result<RedisStore, StoreError> {
        tls::install_crypto_provider();
        let target = build_target(settings)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            StoreError::permanent(format!("RedisStore::connect needs a tokio runtime: {e}"))
        })?;
        let inner = Arc::new(Inner {
            target,
            url_redacted: crate::config::compile::redact(&settings.url),
            clock_source: settings.clock,
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            sha: script_sha(),
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
            connecting: AtomicBool::new(true),
            ever_connected: AtomicBool::new(false),
            first_timeout_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            runtime,
            clock: SystemClock::new(),
            negative: NegativeCache::new(settings.negative_cache_keys),
            counters: Counters::default(),
            log: LogThrottle::per_second(),
        });
        let first = inner.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(first, inner.open()).await {
            Ok(Ok(conn)) => {
                inner.install(conn);
                inner.connecting.store(false, Ordering::SeqCst);
            }
            Ok(Err(e)) => {
                inner.log_error(
                    "not reachable at startup (reconnecting in the background)",
                    &e,
                );
                inner.connecting.store(false, Ordering::SeqCst);
                inner.spawn_reconnect();
            }
            Err(_) => {
                inner.log_error(
                    "not reachable at startup (reconnecting in the background)",
                    &"connect timed out",
                );
                inner.connecting.store(false, Ordering::SeqCst);
                inner.spawn_reconnect();
            }
        }
        Ok(RedisStore { inner })
    }

    /// Check `plan` at the configured clock: Redis `TIME` ([`ClockSource::Server`]) or this
    /// process's [`SystemClock`] ([`ClockSource::Client`]).
    pub async fn check(&self, plan: &Plan) -> Result<Decision, StoreError> {
        match self.inner.clock_source {
            ClockSource::Server => self.run(plan, None).await,
            ClockSource::Client => {
                let now = self.inner.clock.now_micros();
                self.run(plan, Some(now)).await
            }
        }
    }

    /// Check `plan` at the caller's instant `now_micros` (client clock, whatever the setting):
    /// deterministic tests and parity with the memory store.
    pub async fn check_at(&self, plan: &Plan, now_micros: Micros) -> Result<Decision, StoreError> {
        self.run(plan, Some(now_micros)).await
    }

    /// [`RedisStore::check`], with `fail_mode` applied when Redis cannot answer: `open` allows
    /// (no headers), `closed` denies with [`DenyReason::BackendUnavailable`] (`Retry-After: 1`).
    /// The cause was logged by the store; each such decision is counted
    /// ([`RedisStats::fail_open`], [`RedisStats::fail_closed`]).
    pub async fn check_or_fail(&self, plan: &Plan, fail_mode: FailMode) -> Decision {
        match self.check(plan).await {
            Ok(d) => d,
            Err(e) => {
                let now = self.inner.clock.now_micros();
                match fail_mode {
                    FailMode::Open => {
                        self.inner
                            .counters
                            .fail_open
                            .fetch_add(1, Ordering::Relaxed);
                        self.inner
                            .log_error("check failed; allowing (fail_mode=open)", &e);
                        Decision::unlimited(now)
                    }
                    FailMode::Closed => {
                        self.inner
                            .counters
                            .fail_closed
                            .fetch_add(1, Ordering::Relaxed);
                        self.inner
                            .log_error("check failed; denying (fail_mode=closed)", &e);
                        Decision::backend_unavailable(now)
                    }
                }
            }
        }
    }

    /// `PING` within the timeout (for readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let Some((generation, mut conn)) = self.inner.current() else {
            self.inner.spawn_reconnect();
            return Err(StoreError::transient("Redis: not connected"));
        };
        match tokio::time::timeout(self.inner.timeout, conn.query(&redis::cmd("PING"))).await {
            Ok(Ok(_)) => {
                self.inner.replied();
                Ok(())
            }
            Ok(Err(e)) => Err(self.classify(generation, e)),
            Err(_) => Err(self.timed_out(generation)),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        RedisStats {
            round_trips: c.round_trips.load(Ordering::Relaxed),
            script_calls: c.script_calls.load(Ordering::Relaxed),
            script_loads: c.script_loads.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            negative_cache_hits: c.negative_cache_hits.load(Ordering::Relaxed),
            negative_cache_size: self.inner.negative.len(),
            negative_cache_evictions: self.inner.negative.evictions(),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connected: self.inner.current().is_some(),
            fail_open: c.fail_open.load(Ordering::Relaxed),
            fail_closed: c.fail_closed.load(Ordering::Relaxed),
        }
    }

    /// The `EVALSHA` command for `plan` (`now = None`: Redis `TIME`): `KEYS` = the cells' keys,
    /// `ARGV` = now, then per cell its algorithm, count, window, cost and shadow flag.
    fn command(&self, plan: &Plan, now: Option<Micros>, sha_or_body: &str, eval: bool) -> Cmd {
        let mut cmd = redis::cmd(if eval { "EVAL" } else { "EVALSHA" });
        cmd.arg(sha_or_body).arg(plan.cells.len());
        for c in &plan.cells {
            cmd.arg(c.key.as_str());
        }
        match now {
            Some(n) => cmd.arg(n),
            None => cmd.arg(""),
        };
        for c in &plan.cells {
            cmd.arg(c.algorithm.name())
                .arg(c.limit.count())
                .arg(c.limit.window_secs())
                .arg(c.cost)
                .arg(if c.shadow { "1" } else { "0" });
        }
        cmd
    }

    fn fail(&self, e: StoreError) -> StoreError {
        self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
        self.inner.log_error("check failed", &e);
        e
    }

    fn classify(&self, generation: u64, e: RedisError) -> StoreError {
        if e.is_timeout() {
            return self.timed_out(generation);
        }
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.inner.invalidate(generation);
            return StoreError::transient(format!("Redis connection error: {e}"));
        }
        if e.is_cluster_error() || e.kind() == ErrorKind::ClusterConnectionNotFound {
            return StoreError::transient(format!("Redis cluster error: {e}"));
        }
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::BusyLoading)
            | ErrorKind::Server(ServerErrorKind::TryAgain)
            | ErrorKind::Server(ServerErrorKind::ClusterDown)
            | ErrorKind::Server(ServerErrorKind::MasterDown)
            | ErrorKind::Server(ServerErrorKind::ReadOnly)
            | ErrorKind::Server(ServerErrorKind::Moved)
            | ErrorKind::Server(ServerErrorKind::Ask) => {
                StoreError::transient(format!("Redis unavailable: {e}"))
            }
            _ => StoreError::permanent(format!("Redis error: {e}")),
        }
    }

    fn timed_out(&self, generation: u64) -> StoreError {
        self.inner.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        let now = self.inner.ms_since_epoch() + 1;
        let first = match self.inner.first_timeout_ms.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(first) => first,
        };
        let stall = STALL_MIN.max(self.inner.timeout * 10);
        if now.saturating_sub(first) > u64::try_from(stall.as_millis()).unwrap_or(u64::MAX) {
            // Only timeouts, no reply, for a long time: the connection may be half-open (or the
            // server paused). Start afresh.
            self.inner.first_timeout_ms.store(0, Ordering::Relaxed);
            self.inner.invalidate(generation);
        }
        StoreError::transient(format!(
            "Redis did not answer within {} ms",
            self.inner.timeout.as_millis()
        ))
    }

    fn negative_hit(&self, plan: &Plan, now: Option<Micros>) -> Option<Decision> {
        let domain = if now.is_some() {
            Domain::Client
        } else {
            Domain::Server
        };
        let hit = self.inner.negative.lookup(plan, domain, now.unwrap_or(0))?;
        let d = Decision::combine(plan, hit.now, hit.outcomes);
        debug_assert!(!d.allowed);
        Some(d)
    }

    async fn run(&self, plan: &Plan, now: Option<Micros>) -> Result<Decision, StoreError> {
        if plan.cells.is_empty() {
            return Ok(Decision::unlimited(
                now.unwrap_or_else(|| self.inner.clock.now_micros()),
            ));
        }
        if let Some(d) = self.negative_hit(plan, now) {
            self.inner
                .counters
                .negative_cache_hits
                .fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        let Some((generation, mut conn)) = self.inner.current() else {
            self.inner.spawn_reconnect();
            return Err(self.fail(StoreError::transient("Redis: not connected (reconnecting)")));
        };
        let seq = self.inner.negative.current_seq();
        let sent = Instant::now();
        let deadline = tokio::time::Instant::from_std(sent + self.inner.timeout);
        let c = &self.inner.counters;
        c.script_calls.fetch_add(1, Ordering::Relaxed);
        c.round_trips.fetch_add(1, Ordering::Relaxed);
        let cmd = self.command(plan, now, &self.inner.sha, false);
        let mut reply = tokio::time::timeout_at(deadline, conn.query(&cmd)).await;
        if matches!(&reply, Ok(Err(e)) if is_noscript(e)) {
            c.script_loads.fetch_add(1, Ordering::Relaxed);
            c.round_trips.fetch_add(1, Ordering::Relaxed);
            let cmd = self.command(plan, now, SCRIPT, true);
            reply = tokio::time::timeout_at(deadline, conn.query(&cmd)).await;
        }
        let value = match reply {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.fail(self.classify(generation, e))),
            Err(_) => return Err(self.fail(self.timed_out(generation))),
        };
        self.inner.replied();
        let (decided_now, outcomes) = parse_reply(&value, plan.cells.len())
            .map_err(|m| self.fail(StoreError::permanent(m)))?;
        let decision = Decision::combine(plan, decided_now, outcomes.iter().copied());
        if decision.allowed {
            self.inner.negative.committed(plan);
        } else if let (Some(DenyReason::Limited), Some(retry_at)) =
            (decision.reason, decision.retry_at)
        {
            let domain = if now.is_some() {
                Domain::Client
            } else {
                Domain::Server
            };
            self.inner
                .negative
                .insert(plan, &outcomes, retry_at, domain, decided_now, sent, seq);
        }
        Ok(decision)
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn micros(v: i64) -> Result<Micros, String> {
    u64::try_from(v).map_err(|_| format!("ratewall script: negative instant {v}"))
}

/// Parse the script's reply (see `script.lua`): `[all, now, (allowed, remaining, reset_at,
/// retry_at|-1) × n]`.
fn parse_reply(v: &Value, cells: usize) -> Result<(Micros, Vec<Outcome>), String> {
    let Value::Array(items) = v else {
        return Err(format!("ratewall script: unexpected reply {v:?}"));
    };
    if items.len() != 2 + 4 * cells {
        return Err(format!(
            "ratewall script: expected {} reply values for {cells} cells, got {}",
            2 + 4 * cells,
            items.len()
        ));
    }
    let nums: Vec<i64> = items
        .iter()
        .map(|x| int(x).ok_or_else(|| format!("ratewall script: non-integer reply value {x:?}")))
        .collect::<Result<_, _>>()?;
    let now = micros(nums[1])?;
    let outcomes = nums[2..]
        .chunks_exact(4)
        .map(|q| {
            Ok(Outcome {
                allowed: q[0] == 1,
                remaining: micros(q[1])?,
                reset_at: micros(q[2])?,
                retry_at: if q[3] < 0 { None } else { Some(micros(q[3])?) },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((now, outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_parsing() {
        let v = Value::Array(vec![
            Value::Int(0),
            Value::Int(5_000_000),
            Value::Int(0),
            Value::Int(0),
            Value::Int(6_000_000),
            Value::Int(6_000_000),
            Value::Int(1),
            Value::Int(3),
            Value::Int(7_000_000),
            Value::Int(-1),
        ]);
        let (now, o) = parse_reply(&v, 2).unwrap();
        assert_eq!(now, 5_000_000);
        assert!(!o[0].allowed);
        assert_eq!(o[0].retry_at, Some(6_000_000));
        assert!(o[1].allowed);
        assert_eq!(o[1].retry_at, None);
        assert!(parse_reply(&v, 3).is_err());
        assert!(parse_reply(&Value::Nil, 1).is_err());
    }

    #[test]
    fn script_documents_its_contract() {
        for needle in [
            "KEYS[i]",
            "ARGV[1]",
            "ARGV[5i-3]",
            "ARGV[5i+1]",
            "REPLY",
            "TTL",
        ] {
            assert!(SCRIPT.contains(needle), "{needle}");
        }
        assert_eq!(script_sha().len(), 40);
    }
}
