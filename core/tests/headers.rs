//! The header renderer: exact strings for every format and consistency between the fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::{HeaderFormat, LimiterConfig, RequestContext};
use ratewall_core::headers::render;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Decision;

// 2023-11-14T22:13:20.250Z
const T0: u64 = 1_700_000_000_250_000_000;

fn run(yaml: &str, n: usize) -> (Vec<Decision>, LimiterConfig) {
    let cfg = LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0;
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(10_000, clock);
    let ctx = RequestContext {
        user: Some("alice"),
        tool: Some("echo"),
        ..Default::default()
    };
    let plan = cfg.policy.plan(&ctx).unwrap();
    ((0..n).map(|_| s.check(&plan).unwrap()).collect(), cfg)
}

fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn legacy_allowed_and_denied() {
    let (d, _) = run("{by_user: 2/m}", 3);
    let allowed = render(&d[0], HeaderFormat::Legacy);
    assert_eq!(
        allowed,
        vec![
            ("X-RateLimit-Limit", "2".to_string()),
            ("X-RateLimit-Remaining", "1".to_string()),
            ("X-RateLimit-Reset", "1700000040".to_string()), // end of the epoch-aligned minute
        ]
    );
    let denied = render(&d[2], HeaderFormat::Legacy);
    assert_eq!(get(&denied, "X-RateLimit-Remaining"), Some("0"));
    assert_eq!(get(&denied, "Retry-After"), Some("40")); // 39.75 s rounded up
    assert_eq!(get(&denied, "X-RateLimit-Reset"), Some("1700000041"));
}

#[test]
fn ietf_allowed_and_denied() {
    let (d, _) = run("{by_user: 2/m, by_tool: {echo: '5/s;100/h'}}", 3);
    let allowed = render(&d[0], HeaderFormat::Ietf);
    assert_eq!(
        get(&allowed, "RateLimit-Policy"),
        Some("\"by_user\";q=2;w=60, \"tool:echo-1s\";q=5;w=1, \"tool:echo-3600s\";q=100;w=3600")
    );
    assert_eq!(get(&allowed, "RateLimit"), Some("\"by_user\";r=1;t=40"));
    assert_eq!(get(&allowed, "Retry-After"), None);
    let denied = render(&d[2], HeaderFormat::Ietf);
    assert_eq!(get(&denied, "RateLimit"), Some("\"by_user\";r=0;t=40"));
    assert_eq!(get(&denied, "Retry-After"), Some("40"));
}

#[test]
fn retry_after_is_never_earlier_than_t_or_reset() {
    for alg in [
        "fixed_window",
        "sliding_window",
        "sliding_window_counter",
        "token_bucket",
        "gcra",
    ] {
        let (d, _) = run(
            &format!("{{algorithm: {alg}, by_user: 3/s, by_tool: {{echo: 4/m}}}}"),
            6,
        );
        for dec in d.iter().filter(|d| !d.allowed) {
            let h = render(dec, HeaderFormat::Both);
            let ra: u64 = get(&h, "Retry-After").unwrap().parse().unwrap();
            let rl = get(&h, "RateLimit").unwrap();
            let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
            let reset: u64 = get(&h, "X-RateLimit-Reset").unwrap().parse().unwrap();
            assert!(ra >= 1 && ra >= t, "{alg}: {h:?}");
            assert!(
                reset * 1_000_000 >= dec.retry_at.unwrap(),
                "{alg}: reset before retry"
            );
            assert_eq!(h.iter().filter(|(n, _)| *n == "Retry-After").count(), 1);
        }
    }
}

#[test]
fn none_and_backend_unavailable() {
    let (d, _) = run("{by_user: 1/m}", 2);
    assert!(render(&d[1], HeaderFormat::None).is_empty());
    let down = Decision::backend_unavailable(T0 / 1_000);
    assert_eq!(
        render(&down, HeaderFormat::Both),
        vec![("Retry-After", "1".to_string())]
    );
}

#[test]
fn policy_names_are_safe_inside_structured_field_strings() {
    let (d, _) = run("{by_tool: {'e\"c\\\\ho': 5/s}}", 1);
    let _ = d;
    let cfg = LimiterConfig::from_yaml_str("{by_tool: {'ü\"x': 5/s}}", &[])
        .unwrap()
        .0;
    let s = MemoryStore::new(10_000, Arc::new(ManualClock::new(T0)));
    let plan = cfg
        .policy
        .plan(&RequestContext {
            tool: Some("Ü\"X"),
            ..Default::default()
        })
        .unwrap();
    let h = render(&s.check(&plan).unwrap(), HeaderFormat::Ietf);
    assert_eq!(get(&h, "RateLimit-Policy"), Some("\"tool:__x\";q=5;w=1"));
}

#[test]
fn reset_fields_agree_with_the_headers() {
    // by_user 2/m denies the third request at T0 = ...20.25 s; the tool's 5/s admits it.
    let (d, _) = run("{by_user: 2/m, by_tool: {echo: 5/s}}", 3);
    for x in &d {
        let h = render(x, HeaderFormat::Legacy);
        let reset = get(&h, "X-RateLimit-Reset").map(|v| v.parse::<u64>().unwrap());
        assert_eq!(x.reset_at_secs(), reset);
    }
    // Per dimension: the user's cell denies for 39.75 s (reported as 40), the tool's 5/s cell
    // restores within a second (rounded up to 1).
    let denied = &d[2];
    assert!(!denied.allowed);
    let per: Vec<_> = denied
        .dimensions
        .iter()
        .map(|r| (r.outcome.allowed, r.reset_in_secs(denied.now)))
        .collect();
    assert_eq!(per, vec![(false, Some(40)), (true, Some(1))]);
    // A backend failure reports no cell: no reset, only Retry-After.
    let down = Decision::backend_unavailable(denied.now);
    assert_eq!(down.reset_at_secs(), None);
    // cost > limit can never pass: no per-dimension reset either.
    let (c, _) = run("{by_user: 2/m}", 1);
    let mut plan_cost = c[0].clone();
    plan_cost.dimensions[0].outcome.allowed = false;
    plan_cost.dimensions[0].outcome.retry_at = None;
    assert_eq!(plan_cost.dimensions[0].reset_in_secs(plan_cost.now), None);
}
