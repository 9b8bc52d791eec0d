//! The proxy-wasm glue: root context (configuration, slot creation, reclaim tick) and HTTP
//! context (identity, MCP body, decision, replies, response headers).
//!
//! Host calls go through `proxy_wasm::hostcalls` where the SDK's convenience methods would
//! `unwrap()` (header values that are not UTF-8, for instance, would trap in
//! `get_http_request_header`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use ratewall_core::clock::Micros;
use ratewall_core::throttle::LogThrottle;

use crate::config::{FilterConfig, Mode};
use crate::mcp::{parse_body, Body};
use crate::remote::{parse_check_response, CheckRequest};
use crate::response::Verdict;
use crate::shared::{SetError, SharedData, SlotTable};
use crate::{groups, header_text, plans, Identity, PlanCache};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Slots swept per tick per worker.
const SWEEP_PER_TICK: u32 = 1024;

/// proxy-wasm shared data.
struct Host;

impl SharedData for Host {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
        hostcalls::get_shared_data(key).map_err(|s| format!("get_shared_data: {s:?}"))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(s) => Err(SetError::Host(format!("set_shared_data: {s:?}"))),
        }
    }
}

/// Per-request failure lines (shared data, check service, local reply): at most one a second per
/// VM, each with the number suppressed since the previous one.
static FAIL_LOG: LogThrottle = LogThrottle::per_second();

fn warn_throttled(line: std::fmt::Arguments) {
    if let Some(n) = FAIL_LOG.permit(now_micros()) {
        warn!("{line} ({n} suppressed)");
    }
}

/// The host's wall clock in µs (Envoy's time source).
fn now_micros() -> Micros {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        // Seconds and sub-second µs: no u128 arithmetic (`as_micros`) on the request path.
        .map(|d| {
            d.as_secs()
                .saturating_mul(1_000_000)
                .saturating_add(u64::from(d.subsec_micros()))
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Root {
    cfg: Option<Rc<FilterConfig>>,
    table: Option<Rc<SlotTable>>,
    cache: Rc<RefCell<PlanCache>>,
    cursor: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let cfg = match FilterConfig::from_bytes(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("ratewall: rejecting the plugin configuration: {e}");
                return false;
            }
        };
        for w in &cfg.warnings {
            warn!("ratewall: {w}");
        }
        if let Mode::Local(local) = &cfg.mode {
            let table = match SlotTable::open(&Host, local.max_keys) {
                Ok((table, n)) => {
                    if n > 0 {
                        info!(
                            "ratewall: created {n} of {} shared-data slots",
                            table.slots()
                        );
                    }
                    table
                }
                Err(e) => {
                    error!("ratewall: cannot set up the shared-data slots: {e}");
                    return false;
                }
            };
            self.cursor = 0;
            self.table = Some(Rc::new(table));
            let period = Duration::from_millis(local.reclaim_interval_ms);
            if let Err(e) = hostcalls::set_tick_period(period) {
                warn!("ratewall: cannot set the reclaim tick: {e:?}");
            }
        } else {
            self.table = None;
        }
        // A new configuration: plans of the old one no longer apply.
        self.cache = Rc::default();
        self.cfg = Some(Rc::new(cfg));
        true
    }

    fn on_tick(&mut self) {
        if let Some(table) = &self.table {
            let (stats, next) = table.sweep(&Host, self.cursor, SWEEP_PER_TICK, now_micros());
            self.cursor = next;
            if stats.reclaimed > 0 || stats.stale_locks > 0 {
                info!(
                    "ratewall: reclaimed {} expired cells, released {} stale locks",
                    stats.reclaimed, stats.stale_locks
                );
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            cfg: self.cfg.clone(),
            table: self.table.clone(),
            cache: self.cache.clone(),
            phase: Phase::Start,
            identity: Identity::default(),
            mcp: None,
            verdict: None,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the request headers.
    Start,
    /// Buffering the body of a request that may be MCP.
    Buffering,
    /// Waiting for ratewall-server.
    Waiting,
    /// Admitted: headers go on the response.
    Passed,
    /// Denied: a local reply was sent.
    Replied,
}

struct Http {
    cfg: Option<Rc<FilterConfig>>,
    table: Option<Rc<SlotTable>>,
    cache: Rc<RefCell<PlanCache>>,
    phase: Phase,
    identity: Identity,
    mcp: Option<crate::mcp::McpRequest>,
    /// The admitted verdict (its headers go on the response).
    verdict: Option<Verdict>,
}

impl Http {
    /// Read the identity, method and path from one fetch of the request headers (one host call
    /// instead of one per header: every value the host returns costs a call back into the
    /// guest's allocator).
    /// An identity header that is not UTF-8 is an error naming it (the request gets a 400).
    fn read_identity(
        &mut self,
        cfg: &FilterConfig,
        end_of_stream: bool,
    ) -> Result<(String, String), String> {
        if end_of_stream && cfg.needs_user_and_tenant_only() {
            // Two lookups (an absent header costs no copy into the VM) instead of the whole
            // map, which the SDK turns into two allocations per header.
            let get = |name: &str| -> Result<Option<String>, String> {
                match hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name) {
                    Ok(Some(v)) => header_text(name, &v),
                    _ => Ok(None),
                }
            };
            self.identity = Identity {
                user: get(&cfg.user_header)?,
                tenant: get(&cfg.tenant_header)?,
                ..Identity::default()
            };
            return Ok((String::new(), String::new()));
        }
        let all = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let find = |name: &str| -> Result<Option<String>, String> {
            match all.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                Some((_, v)) => header_text(name, v),
                None => Ok(None),
            }
        };
        let mut descriptors = Vec::new();
        for (name, h) in &cfg.descriptor_headers {
            if let Some(v) = find(h)? {
                descriptors.push((name.clone(), v));
            }
        }
        self.identity = Identity {
            user: find(&cfg.user_header)?,
            tenant: find(&cfg.tenant_header)?,
            server: find(&cfg.server_header)?,
            tool: match cfg.tool_header.as_deref() {
                Some(h) => find(h)?,
                None => None,
            },
            descriptors,
        };
        if end_of_stream {
            // No body: method and path only matter for body inspection.
            return Ok((String::new(), String::new()));
        }
        // Method and path are not identities: a non-UTF-8 path only means "not MCP".
        let lossy = |name: &str| find(name).ok().flatten().unwrap_or_default();
        Ok((lossy(":method"), lossy(":path")))
    }

    /// Decide the request described by `body`; returns the action for the current callback.
    fn decide(&mut self, cfg: &FilterConfig, body: Body) -> Action {
        let groups = groups(&body, &self.identity);
        if let Body::Mcp(req) = body {
            self.mcp = Some(req);
        }
        if groups.len() > crate::MAX_BATCH_TOOLS {
            // Each distinct tool is one plan (its cells locked in shared data, or one call of the
            // remote check): bound the work one request can cause.
            let msg = format!(
                "the batch names {} distinct tools; at most {} are accepted",
                groups.len(),
                crate::MAX_BATCH_TOOLS
            );
            return self.apply(Verdict::invalid(msg), false);
        }
        match (&cfg.mode, &self.table) {
            (Mode::Local(_), Some(table)) => {
                let build = || {
                    plans(&cfg.limiter.policy, &self.identity, &groups).map(|p| table.prepare(p))
                };
                // The cache is only borrowed here, never across a host call that could re-enter.
                let prepared = match self.cache.try_borrow_mut() {
                    Ok(mut cache) => cache.get_or_build(&self.identity, &groups, build),
                    Err(_) => build().map(Rc::new),
                };
                let prepared = match prepared {
                    Ok(p) => p,
                    Err(e) => return self.apply(Verdict::invalid(e.to_string()), false),
                };
                let verdict = match table.check_prepared(&Host, &prepared, &now_micros) {
                    Ok((d, _)) => Verdict::from_decision(&d, cfg.headers()),
                    Err(e) => {
                        warn_throttled(format_args!(
                            "ratewall: shared data unavailable ({e}); fail_mode applies"
                        ));
                        Verdict::unavailable(cfg.fail_mode(), now_micros(), cfg.headers())
                    }
                };
                self.apply(verdict, false)
            }
            (Mode::Remote(_), _) => self.check_remote(cfg, &groups),
            (Mode::Local(_), None) => self.apply(Verdict::allow(), false),
        }
    }

    /// Dispatch the one remote check of the request: every tool group in one `/check`, which
    /// the service decides as one plan (all-or-nothing across the groups).
    fn check_remote(&mut self, cfg: &FilterConfig, groups: &[(Option<String>, u64)]) -> Action {
        let Mode::Remote(remote) = &cfg.mode else {
            return self.apply(Verdict::allow(), false);
        };
        let body = CheckRequest {
            user: self.identity.user.as_deref(),
            tenant: self.identity.tenant.as_deref(),
            calls: groups,
            server: self.identity.server.as_deref(),
            descriptors: &self.identity.descriptors,
        }
        .to_json();
        let call = hostcalls::dispatch_http_call(
            &remote.cluster,
            vec![
                (":method", "POST"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
                ("content-type", "application/json"),
            ],
            Some(&body),
            vec![],
            Duration::from_millis(remote.timeout_ms),
        );
        match call {
            Ok(_) => {
                self.phase = Phase::Waiting;
                Action::Pause
            }
            Err(e) => {
                warn_throttled(format_args!(
                    "ratewall: cannot call cluster {:?}: {e:?}; fail_mode applies",
                    remote.cluster
                ));
                let v = Verdict::unavailable(cfg.fail_mode(), now_micros(), cfg.headers());
                self.apply(v, false)
            }
        }
    }

    /// Act on a verdict. `resumed`: the request is paused waiting for us (after a callout).
    fn apply(&mut self, verdict: Verdict, resumed: bool) -> Action {
        if verdict.allowed {
            self.phase = Phase::Passed;
            self.verdict = Some(verdict);
            if resumed {
                let _ = hostcalls::resume_http_request();
            }
            return Action::Continue;
        }
        self.phase = Phase::Replied;
        let body = verdict.body(self.mcp.as_ref());
        let mut headers: Vec<(&str, &str)> = verdict
            .headers
            .iter()
            .map(|(n, v)| (n.as_ref(), v.as_str()))
            .collect();
        headers.push(("content-type", "application/json"));
        if let Err(e) = hostcalls::send_http_response(verdict.status, headers, Some(&body)) {
            warn_throttled(format_args!("ratewall: cannot send the local reply: {e:?}"));
        }
        Action::Pause
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _t: usize) {
        let Some(cfg) = self.cfg.clone() else { return };
        if self.phase != Phase::Waiting {
            return;
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u32>().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let verdict = parse_check_response(status, &body).unwrap_or_else(|e| {
            warn_throttled(format_args!(
                "ratewall: check service failed ({e}); fail_mode applies"
            ));
            Verdict::unavailable(cfg.fail_mode(), now_micros(), cfg.headers())
        });
        self.apply(verdict, true);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        if cfg.limits_nothing() {
            // Local mode without any limit: every plan is empty, nothing to read or store.
            return Action::Continue;
        }
        let (method, path) = match self.read_identity(&cfg, end_of_stream) {
            Ok(x) => x,
            Err(msg) => return self.apply(Verdict::invalid(msg), false),
        };
        if !end_of_stream && cfg.inspects_body(&method, &path) {
            self.phase = Phase::Buffering;
            return Action::Pause;
        }
        self.decide(&cfg, Body::Opaque)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::Buffering => {}
            Phase::Waiting => return Action::Pause,
            _ => return Action::Continue,
        }
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        if body_size > cfg.max_body_bytes {
            // Oversized: decided now without a tool; the body streams on.
            return self.decide(&cfg, Body::Opaque);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.decide(&cfg, parse_body(&body))
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        // A body that ended with trailers: decide with what was buffered.
        if self.phase != Phase::Buffering {
            return if self.phase == Phase::Waiting {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        let Some(cfg) = self.cfg.clone() else {
            return Action::Continue;
        };
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, cfg.max_body_bytes)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.decide(&cfg, parse_body(&body))
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.phase == Phase::Passed {
            if let Some(v) = &self.verdict {
                for (name, value) in &v.headers {
                    let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value);
                }
            }
        }
        Action::Continue
    }
}
