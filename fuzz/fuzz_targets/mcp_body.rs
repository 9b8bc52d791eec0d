//! The filter's MCP/JSON-RPC body parser (`ratewall_filter::mcp::parse_body`) and what the filter
//! does with its answer: tool groups, one plan per group, a decision on the memory store, the
//! local reply's body (JSON-RPC errors carrying the calls' ids). The same bytes are also read as
//! the check service's answer in remote mode (`parse_check_response`).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::HeaderFormat;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::LimiterConfig;
use ratewall_filter::mcp::{parse_body, Body};
use ratewall_filter::remote::parse_check_response;
use ratewall_filter::response::Verdict;
use ratewall_filter::{groups, plans, Identity, MAX_BATCH_TOOLS};

const POLICY: &str = r#"{"by_user": "5/s", "by_tenant": "50/m", "by_user_per_server": "3/s",
 "by_tool": {"echo": "2/s", "search tool": "1/m"}}"#;

fn config() -> &'static LimiterConfig {
    static CFG: OnceLock<LimiterConfig> = OnceLock::new();
    CFG.get_or_init(|| LimiterConfig::from_json_str(POLICY, &[]).expect("policy").0)
}

fuzz_target!(|data: &[u8]| {
    let body = parse_body(data);
    let identity = Identity {
        user: Some("alice".into()),
        tenant: Some("acme".into()),
        server: Some("srv".into()),
        tool: None,
        descriptors: Vec::new(),
    };
    let g = groups(&body, &identity);
    assert!(!g.is_empty());
    if let Body::Mcp(req) = &body {
        assert!(!req.tools.is_empty());
        assert_eq!(g.iter().map(|(_, n)| n).sum::<u64>(), req.cost());
    }
    let cfg = config();
    let verdict = if g.len() > MAX_BATCH_TOOLS {
        Verdict::invalid(format!("more than {MAX_BATCH_TOOLS} tools"))
    } else {
        match plans(&cfg.policy, &identity, &g) {
            Ok(plans) => {
                let clock = Arc::new(ManualClock::new(ratewall_fuzz::T0_NANOS));
                let store = MemoryStore::new(64, clock);
                let mut last = Verdict::allow();
                for p in &plans {
                    let d = store.check(p).expect("memory store");
                    last = Verdict::from_decision(&d, HeaderFormat::Both);
                    if !last.allowed {
                        break;
                    }
                }
                last
            }
            Err(e) => Verdict::invalid(e.to_string()),
        }
    };
    let mcp = match &body {
        Body::Mcp(req) => Some(req),
        Body::Opaque => None,
    };
    let reply = verdict.body(mcp);
    let value: serde_json::Value = serde_json::from_slice(&reply).expect("the reply is JSON");
    if let (Some(req), false) = (mcp, verdict.allowed) {
        // a batch answers one error per call with an id; a single call answers one object
        match (&value, req.batch) {
            (serde_json::Value::Array(a), true) => assert_eq!(a.len(), req.ids.len().max(1)),
            (serde_json::Value::Object(_), false) => {}
            (v, batch) => panic!("batch={batch} answered {v}"),
        }
    }
    for status in [200, 429] {
        if let Ok(v) = parse_check_response(Some(status), data) {
            assert_eq!(v.allowed, status == 200);
            let _ = v.body(mcp);
        }
    }
});
