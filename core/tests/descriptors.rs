//! Descriptor rules: a conformance test per matching rule of envoyproxy/ratelimit (written from
//! its README's documented semantics, with our own fixtures), our extensions, request bounds,
//! and per-descriptor statuses decided by the memory store.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::descriptors::{
    DescriptorError, DescriptorPlan, DescriptorStatus, DomainSet, Entry, LimitOverride,
    RequestDescriptor, StatusCode, Unit,
};
use ratewall_core::config::LimiterConfig;
use ratewall_core::decision::Decision;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

/// 2023-11-14T22:14:00Z: a whole minute.
const T0: u64 = 1_700_000_040;

fn config(base: &str, doc: &str) -> LimiterConfig {
    let set = DomainSet::from_documents(&[("rules.yaml", doc)]).unwrap_or_else(|e| panic!("{e}"));
    LimiterConfig::from_yaml_str(base, &[])
        .unwrap()
        .0
        .with_domains(set)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn cfg(doc: &str) -> LimiterConfig {
    config("{}", doc)
}

fn entries<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Entry<'a>> {
    pairs
        .iter()
        .map(|&(key, value)| Entry { key, value })
        .collect()
}

/// What one request descriptor resolves to.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// No limit applies.
    Free,
    Unlimited,
    /// `(count, window_secs)` of each cell.
    Limits(Vec<(u64, u64)>),
}

fn plan_one(cfg: &LimiterConfig, domain: &str, pairs: &[(&str, &str)]) -> DescriptorPlan {
    let e = entries(pairs);
    let d = [RequestDescriptor {
        entries: &e,
        limit: None,
        hits_addend: None,
    }];
    cfg.policy.plan_descriptors(domain, &d, 1).unwrap()
}

fn got(cfg: &LimiterConfig, domain: &str, pairs: &[(&str, &str)]) -> Got {
    let p = plan_one(cfg, domain, pairs);
    if !p.plan.cells.is_empty() {
        return Got::Limits(
            p.plan
                .cells
                .iter()
                .map(|c| (c.limit.count(), c.limit.window_secs()))
                .collect(),
        );
    }
    let s = p.statuses(&Decision::unlimited(0));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].code, StatusCode::Ok);
    assert_eq!(s[0].current_limit, None);
    match s[0].limit_remaining {
        0 => Got::Free,
        r if r == u64::from(u32::MAX) => Got::Unlimited,
        r => panic!("remaining {r} without cells"),
    }
}

fn lim(count: u64, window: u64) -> Got {
    Got::Limits(vec![(count, window)])
}

/// A request descriptor as `(key, value)` pairs, with its `hits_addend`.
type Desc<'a> = (&'a [(&'a str, &'a str)], Option<u64>);

/// A config and a memory store on a manual clock at [`T0`].
struct Rig {
    cfg: LimiterConfig,
    store: MemoryStore,
    clock: Arc<ManualClock>,
}

impl Rig {
    fn new(cfg: LimiterConfig) -> Self {
        let clock = Arc::new(ManualClock::new(T0 * 1_000_000_000));
        Self {
            store: MemoryStore::new(10_000, clock.clone()),
            cfg,
            clock,
        }
    }

    /// One RLS request: `(entries, hits_addend)` per descriptor.
    fn ask(
        &self,
        domain: &str,
        descriptors: &[Desc<'_>],
        hits: u64,
    ) -> (Decision, Vec<DescriptorStatus>) {
        let owned: Vec<Vec<Entry<'_>>> = descriptors.iter().map(|(p, _)| entries(p)).collect();
        let reqs: Vec<RequestDescriptor<'_>> = owned
            .iter()
            .zip(descriptors)
            .map(|(e, (_, h))| RequestDescriptor {
                entries: e,
                limit: None,
                hits_addend: *h,
            })
            .collect();
        let plan = self
            .cfg
            .policy
            .plan_descriptors(domain, &reqs, hits)
            .unwrap();
        let decision = self.store.check(&plan.plan).unwrap();
        let statuses = plan.statuses(&decision);
        assert_eq!(statuses.len(), descriptors.len());
        (decision, statuses)
    }

    fn one(&self, domain: &str, pairs: &[(&str, &str)]) -> DescriptorStatus {
        self.ask(domain, &[(pairs, None)], 1).1[0]
    }
}

// ------------------------------------------------------------------------ matching (README)

const DATABASES: &str = r#"
domain: db_writes
descriptors:
  - key: database
    value: orders
    rate_limit: {unit: second, requests_per_unit: 300}
  - key: database
    value: audit
    rate_limit: {unit: second, requests_per_unit: 40}
"#;

#[test]
fn exact_key_and_value_select_their_rule() {
    let c = cfg(DATABASES);
    assert_eq!(got(&c, "db_writes", &[("database", "orders")]), lim(300, 1));
    assert_eq!(got(&c, "db_writes", &[("database", "audit")]), lim(40, 1));
    // Another value of the same key, another key: no rule.
    assert_eq!(got(&c, "db_writes", &[("database", "other")]), Got::Free);
    assert_eq!(got(&c, "db_writes", &[("table", "orders")]), Got::Free);
    // Matching is case-sensitive.
    assert_eq!(got(&c, "db_writes", &[("Database", "orders")]), Got::Free);
    assert_eq!(got(&c, "db_writes", &[("database", "Orders")]), Got::Free);
}

const SMS: &str = r#"
domain: sms
descriptors:
  - key: campaign
    value: promo
    descriptors:
      - key: phone
        rate_limit: {unit: day, requests_per_unit: 3}
  - key: phone
    rate_limit: {unit: day, requests_per_unit: 50}
"#;

#[test]
fn a_key_without_value_matches_any_value_with_a_counter_per_value() {
    let c = cfg(SMS);
    assert_eq!(got(&c, "sms", &[("phone", "+15550001")]), lim(50, 86_400));
    assert_eq!(
        got(&c, "sms", &[("campaign", "promo"), ("phone", "+15550001")]),
        lim(3, 86_400)
    );
    let rig = Rig::new(c);
    let promo_a = [("campaign", "promo"), ("phone", "+15550001")];
    let promo_b = [("campaign", "promo"), ("phone", "+15550002")];
    for i in 0..3 {
        let s = rig.one("sms", &promo_a);
        assert_eq!((s.code, s.limit_remaining), (StatusCode::Ok, 2 - i));
    }
    assert_eq!(rig.one("sms", &promo_a).code, StatusCode::OverLimit);
    // Another phone number has its own counter.
    assert_eq!(rig.one("sms", &promo_b).code, StatusCode::Ok);
}

#[test]
fn one_request_checks_every_descriptor_and_any_over_limit_denies() {
    let rig = Rig::new(cfg(SMS));
    let promo: &[(&str, &str)] = &[("campaign", "promo"), ("phone", "+15550003")];
    let any: &[(&str, &str)] = &[("phone", "+15550003")];
    for _ in 0..3 {
        let (d, s) = rig.ask("sms", &[(promo, None), (any, None)], 1);
        assert!(d.allowed);
        assert_eq!(s[0].code, StatusCode::Ok);
        assert_eq!(s[1].code, StatusCode::Ok);
    }
    let (d, s) = rig.ask("sms", &[(promo, None), (any, None)], 1);
    assert!(!d.allowed);
    assert_eq!(
        (s[0].code, s[1].code),
        (StatusCode::OverLimit, StatusCode::Ok)
    );
    // All-or-nothing: the denied request charged neither counter (50 - 3 = 47 left).
    assert_eq!(rig.one("sms", any).limit_remaining, 46);
}

const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 203.0.113.9
    rate_limit: {unit: second, requests_per_unit: 1}
"#;

#[test]
fn key_and_value_are_tried_before_the_key_alone() {
    // File order does not matter: the specific value wins over the bare key written before it.
    let c = cfg(EDGE);
    assert_eq!(
        got(&c, "edge", &[("remote_address", "203.0.113.9")]),
        lim(1, 1)
    );
    assert_eq!(
        got(&c, "edge", &[("remote_address", "203.0.113.8")]),
        lim(10, 1)
    );
}

const DEPTH: &str = r#"
domain: depth
descriptors:
  - key: route
    value: checkout
    rate_limit: {unit: second, requests_per_unit: 30}
  - key: route
    value: search
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 5}
"#;

#[test]
fn the_limit_must_sit_where_the_last_entry_lands() {
    let c = cfg(DEPTH);
    assert_eq!(got(&c, "depth", &[("route", "checkout")]), lim(30, 1));
    // More entries than the rule's depth: no match, although the first entry has a limit.
    assert_eq!(
        got(&c, "depth", &[("route", "checkout"), ("user", "u1")]),
        Got::Free
    );
    // Fewer entries than the rule's depth: the node reached has no limit.
    assert_eq!(got(&c, "depth", &[("route", "search")]), Got::Free);
    assert_eq!(
        got(&c, "depth", &[("route", "search"), ("user", "u1")]),
        lim(5, 1)
    );
    // Entry order matters.
    assert_eq!(
        got(&c, "depth", &[("user", "u1"), ("route", "search")]),
        Got::Free
    );
}

#[test]
fn no_backtracking_once_a_value_matched() {
    let c = cfg(r#"
domain: nb
descriptors:
  - key: tier
    value: gold
    descriptors:
      - key: user
        value: vip
        rate_limit: {unit: second, requests_per_unit: 100}
  - key: tier
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: "/api/*"
    descriptors:
      - key: method
        value: GET
        rate_limit: {unit: second, requests_per_unit: 7}
  - key: path
    descriptors:
      - key: method
        rate_limit: {unit: second, requests_per_unit: 8}
"#);
    assert_eq!(
        got(&c, "nb", &[("tier", "gold"), ("user", "vip")]),
        lim(100, 1)
    );
    assert_eq!(
        got(&c, "nb", &[("tier", "silver"), ("user", "bob")]),
        lim(2, 1)
    );
    // `tier: gold` was matched by value; its children have no `user: bob`: the bare `tier`
    // sibling is not retried.
    assert_eq!(
        got(&c, "nb", &[("tier", "gold"), ("user", "bob")]),
        Got::Free
    );
    // Same for a wildcard match.
    assert_eq!(
        got(&c, "nb", &[("path", "/api/x"), ("method", "GET")]),
        lim(7, 1)
    );
    assert_eq!(
        got(&c, "nb", &[("path", "/api/x"), ("method", "PUT")]),
        Got::Free
    );
    assert_eq!(
        got(&c, "nb", &[("path", "/web"), ("method", "PUT")]),
        lim(8, 1)
    );
}

#[test]
fn a_node_without_limit_or_children_whitelists() {
    let c = cfg(r#"
domain: wl
descriptors:
  - key: client
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: client
    value: monitoring
"#);
    assert_eq!(got(&c, "wl", &[("client", "web")]), lim(10, 60));
    assert_eq!(got(&c, "wl", &[("client", "monitoring")]), Got::Free);
    let rig = Rig::new(c);
    for _ in 0..20 {
        let s = rig.one("wl", &[("client", "monitoring")]);
        assert_eq!(
            s,
            DescriptorStatus {
                code: StatusCode::Ok,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset_secs: None,
                shadow: false
            }
        );
    }
}

#[test]
fn unlimited_rules_answer_ok_with_max_remaining_and_touch_no_counter() {
    let c = cfg(r#"
domain: internal
descriptors:
  - key: ldap
    rate_limit: {unlimited: true}
  - key: azure
    rate_limit: {unit: minute, requests_per_unit: 100}
"#);
    assert_eq!(got(&c, "internal", &[("ldap", "x")]), Got::Unlimited);
    assert_eq!(got(&c, "internal", &[("azure", "x")]), lim(100, 60));
    let rig = Rig::new(c);
    let (d, s) = rig.ask("internal", &[(&[("ldap", "x")], None)], 1);
    assert!(d.allowed && d.dimensions.is_empty());
    assert_eq!(s[0].limit_remaining, u64::from(u32::MAX));
    assert_eq!(rig.store.stats().keys, 0);
}

#[test]
fn shadow_mode_is_carried_by_the_rule_s_cells() {
    let c = cfg(r#"
domain: auth
descriptors:
  - key: service
    descriptors:
      - key: user
        value: alice
        shadow_mode: true
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: user
        value: bob
        rate_limit: {unit: second, requests_per_unit: 20}
"#);
    let a = plan_one(&c, "auth", &[("service", "login"), ("user", "alice")]);
    let b = plan_one(&c, "auth", &[("service", "login"), ("user", "bob")]);
    assert!(a.plan.cells[0].shadow);
    assert!(!b.plan.cells[0].shadow);
}

const REPLACES: &str = r#"
domain: tiers
descriptors:
  - key: plan
    value: trial
    descriptors:
      - key: user
        value: carol
        rate_limit:
          name: trial_user
          unit: second
          requests_per_unit: 5
  - key: plan
    value: partner
    descriptors:
      - key: user
        value: carol
        rate_limit:
          replaces:
            - name: trial_user
          unit: second
          requests_per_unit: 10
"#;

#[test]
fn replaces_drops_the_named_rule_across_the_request() {
    let c = cfg(REPLACES);
    let trial: &[(&str, &str)] = &[("plan", "trial"), ("user", "carol")];
    let partner: &[(&str, &str)] = &[("plan", "partner"), ("user", "carol")];
    assert_eq!(got(&c, "tiers", trial), lim(5, 1));
    assert_eq!(got(&c, "tiers", partner), lim(10, 1));
    let rig = Rig::new(c);
    // Both in one request: only the replacing rule counts; the replaced one is neither checked
    // nor charged.
    for i in 0..10 {
        let (d, s) = rig.ask("tiers", &[(trial, None), (partner, None)], 1);
        assert!(d.allowed, "{i}");
        assert_eq!(d.dimensions.len(), 1);
        assert_eq!(
            s[0],
            DescriptorStatus {
                code: StatusCode::Ok,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset_secs: None,
                shadow: false
            }
        );
        assert_eq!(s[1].limit_remaining, 9 - i);
    }
    assert!(
        !rig.ask("tiers", &[(trial, None), (partner, None)], 1)
            .0
            .allowed
    );
    // The trial rule's own counter was untouched.
    assert_eq!(rig.one("tiers", trial).limit_remaining, 4);
    // Descriptor order does not matter.
    let (d, _) = rig.ask("tiers", &[(partner, None), (trial, None)], 1);
    assert!(!d.allowed);
}

const WILD: &str = r#"
domain: wild
descriptors:
  - key: object
    value: "reports/*"
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: object
    value: "reports/2024/*"
    rate_limit: {unit: minute, requests_per_unit: 99}
  - key: object
    value: "reports/special"
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: object
    rate_limit: {unit: minute, requests_per_unit: 1000}
  - key: api
    value: "/v1/*/orders"
    rate_limit: {unit: minute, requests_per_unit: 30}
  - key: api
    value: "/v*/*/items/*"
    rate_limit: {unit: minute, requests_per_unit: 40}
  - key: bucket
    value: "shared-*"
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 3}
"#;

#[test]
fn wildcards_match_anywhere_after_exact_values_and_before_the_bare_key() {
    let c = cfg(WILD);
    // Trailing `*`, including the empty remainder.
    assert_eq!(
        got(&c, "wild", &[("object", "reports/jan.pdf")]),
        lim(20, 60)
    );
    assert_eq!(got(&c, "wild", &[("object", "reports/")]), lim(20, 60));
    // The first wildcard in file order wins, even when a later one is more specific.
    assert_eq!(
        got(&c, "wild", &[("object", "reports/2024/q1")]),
        lim(20, 60)
    );
    // An exact value beats every wildcard.
    assert_eq!(
        got(&c, "wild", &[("object", "reports/special")]),
        lim(1, 60)
    );
    // No wildcard matches: the bare key.
    assert_eq!(got(&c, "wild", &[("object", "invoices/1")]), lim(1000, 60));
    assert_eq!(got(&c, "wild", &[("object", "report")]), lim(1000, 60));
    // Middle and several `*`.
    assert_eq!(got(&c, "wild", &[("api", "/v1/acme/orders")]), lim(30, 60));
    assert_eq!(got(&c, "wild", &[("api", "/v1//orders")]), lim(30, 60));
    assert_eq!(got(&c, "wild", &[("api", "/v1/acme/orders/1")]), Got::Free);
    assert_eq!(got(&c, "wild", &[("api", "/v2/acme/items/7")]), lim(40, 60));
    assert_eq!(got(&c, "wild", &[("api", "/v2/acme/item/7")]), Got::Free);
    // A `*` in a request value is an ordinary character.
    assert_eq!(got(&c, "wild", &[("object", "*")]), lim(1000, 60));
}

#[test]
fn wildcard_matches_count_per_value_unless_share_threshold() {
    let rig = Rig::new(cfg(WILD));
    for _ in 0..20 {
        assert_eq!(
            rig.one("wild", &[("object", "reports/a")]).code,
            StatusCode::Ok
        );
    }
    assert_eq!(
        rig.one("wild", &[("object", "reports/a")]).code,
        StatusCode::OverLimit
    );
    assert_eq!(
        rig.one("wild", &[("object", "reports/b")]).code,
        StatusCode::Ok
    );
    // share_threshold: every matching value draws on one counter...
    for v in ["shared-1", "shared-2", "shared-3"] {
        assert_eq!(rig.one("wild", &[("bucket", v)]).code, StatusCode::Ok);
    }
    assert_eq!(
        rig.one("wild", &[("bucket", "shared-4")]).code,
        StatusCode::OverLimit
    );
    // ...which a value spelling the pattern itself also matches, by the pattern.
    assert_eq!(
        rig.one("wild", &[("bucket", "shared-*")]).code,
        StatusCode::OverLimit
    );
}

#[test]
fn several_domains_are_independent() {
    let set = DomainSet::from_documents(&[
        ("a.yaml", "domain: a\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"),
        ("b.yaml", "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2}\n"),
    ])
    .unwrap();
    let c = LimiterConfig::from_yaml_str("{}", &[])
        .unwrap()
        .0
        .with_domains(set)
        .unwrap();
    assert_eq!(got(&c, "a", &[("k", "v")]), lim(1, 1));
    assert_eq!(got(&c, "b", &[("k", "v")]), lim(2, 1));
    let rig = Rig::new(c);
    assert_eq!(rig.one("a", &[("k", "v")]).code, StatusCode::Ok);
    assert_eq!(rig.one("a", &[("k", "v")]).code, StatusCode::OverLimit);
    // Same entries in another domain: another counter.
    assert_eq!(rig.one("b", &[("k", "v")]).code, StatusCode::Ok);
}

#[test]
fn an_unknown_domain_has_no_limits() {
    let c = cfg(EDGE);
    assert_eq!(got(&c, "nope", &[("remote_address", "1.2.3.4")]), Got::Free);
    // Even a request's own limit needs a known domain.
    let e = entries(&[("remote_address", "1.2.3.4")]);
    let d = [RequestDescriptor {
        entries: &e,
        limit: Some(LimitOverride {
            requests_per_unit: 1,
            unit: Unit::Second,
        }),
        hits_addend: None,
    }];
    let p = c.policy.plan_descriptors("nope", &d, 1).unwrap();
    assert!(p.plan.cells.is_empty());
}

#[test]
fn units_in_any_case_and_envoyproxy_lengths() {
    let c = cfg(r#"
domain: units
descriptors:
  - {key: s, rate_limit: {unit: SECOND, requests_per_unit: 1}}
  - {key: m, rate_limit: {unit: Minute, requests_per_unit: 1}}
  - {key: h, rate_limit: {unit: hour, requests_per_unit: 1}}
  - {key: d, rate_limit: {unit: dAy, requests_per_unit: 1}}
  - {key: w, rate_limit: {unit: week, requests_per_unit: 1}}
  - {key: mo, rate_limit: {unit: month, requests_per_unit: 1}}
  - {key: y, rate_limit: {unit: year, requests_per_unit: 1}}
"#);
    for (k, w) in [
        ("s", 1),
        ("m", 60),
        ("h", 3_600),
        ("d", 86_400),
        ("w", 604_800),
        ("mo", 2_592_000),
        ("y", 31_536_000),
    ] {
        assert_eq!(got(&c, "units", &[(k, "x")]), lim(1, w), "{k}");
    }
}

#[test]
fn yaml_scalars_keep_their_written_text() {
    let c = cfg(r#"
domain: text
descriptors:
  - key: version
    value: 1.10
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: 443
    value: 0x1F
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: flag
    value: yes
    rate_limit: {unit: second, requests_per_unit: 3}
"#);
    assert_eq!(got(&c, "text", &[("version", "1.10")]), lim(1, 1));
    assert_eq!(got(&c, "text", &[("version", "1.1")]), Got::Free);
    assert_eq!(got(&c, "text", &[("443", "0x1F")]), lim(2, 1));
    assert_eq!(got(&c, "text", &[("flag", "yes")]), lim(3, 1));
}

// ------------------------------------------------------------------------ request overrides

#[test]
fn a_limit_override_replaces_matching_and_continues_the_rule_s_counter() {
    let rig = Rig::new(cfg(EDGE));
    let e = entries(&[("remote_address", "198.51.100.1")]);
    let with = |n: u64| {
        let d = [RequestDescriptor {
            entries: &e,
            limit: Some(LimitOverride {
                requests_per_unit: n,
                unit: Unit::Second,
            }),
            hits_addend: None,
        }];
        rig.cfg.policy.plan_descriptors("edge", &d, 1).unwrap()
    };
    // The configured rule (10/s) and an override of the same window name one counter.
    let rule = plan_one(&rig.cfg, "edge", &[("remote_address", "198.51.100.1")]);
    assert_eq!(with(3).plan.cells[0].key, rule.plan.cells[0].key);
    for _ in 0..3 {
        let p = with(3);
        let s = p.statuses(&rig.store.check(&p.plan).unwrap());
        assert_eq!(s[0].code, StatusCode::Ok);
        assert_eq!(s[0].current_limit.unwrap().name, None);
        assert_eq!(s[0].current_limit.unwrap().requests_per_unit, 3);
    }
    let p = with(3);
    assert_eq!(
        p.statuses(&rig.store.check(&p.plan).unwrap())[0].code,
        StatusCode::OverLimit
    );
    // The rule itself sees the 3 units used.
    assert_eq!(
        rig.one("edge", &[("remote_address", "198.51.100.1")])
            .limit_remaining,
        6
    );
    // Even a descriptor no rule matches is limited by its override.
    let e2 = entries(&[("anything", "x")]);
    let d = [RequestDescriptor {
        entries: &e2,
        limit: Some(LimitOverride {
            requests_per_unit: 7,
            unit: Unit::Hour,
        }),
        hits_addend: None,
    }];
    let p = rig.cfg.policy.plan_descriptors("edge", &d, 1).unwrap();
    assert_eq!(
        (
            p.plan.cells[0].limit.count(),
            p.plan.cells[0].limit.window_secs()
        ),
        (7, 3_600)
    );
}

#[test]
fn invalid_overrides_are_request_errors() {
    let c = cfg(EDGE);
    let e = entries(&[("remote_address", "x")]);
    for n in [0, 99_999_999_999] {
        let d = [RequestDescriptor {
            entries: &e,
            limit: Some(LimitOverride {
                requests_per_unit: n,
                unit: Unit::Minute,
            }),
            hits_addend: None,
        }];
        let err = c.policy.plan_descriptors("edge", &d, 1).unwrap_err();
        assert!(
            matches!(err, DescriptorError::InvalidOverride(0, _)),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("descriptors[0].limit: "),
            "{err}"
        );
    }
    // Too fine for the config's token_bucket.
    let tb = config("algorithm: token_bucket", EDGE);
    let d = [RequestDescriptor {
        entries: &e,
        limit: Some(LimitOverride {
            requests_per_unit: 1_000_000,
            unit: Unit::Year,
        }),
        hits_addend: None,
    }];
    let err = tb.policy.plan_descriptors("edge", &d, 1).unwrap_err();
    assert!(
        err.to_string().contains("too fine for token_bucket"),
        "{err}"
    );
}

// ------------------------------------------------------------------------ hits_addend and cells

#[test]
fn hits_addend_sets_each_cell_s_cost() {
    let c = cfg(SMS);
    let a = entries(&[("phone", "1")]);
    let b = entries(&[("phone", "2")]);
    let p = |req: u64, ha: Option<u64>, hb: Option<u64>| {
        let d = [
            RequestDescriptor {
                entries: &a,
                limit: None,
                hits_addend: ha,
            },
            RequestDescriptor {
                entries: &b,
                limit: None,
                hits_addend: hb,
            },
        ];
        let plan = c.policy.plan_descriptors("sms", &d, req).unwrap().plan;
        (
            plan.cost,
            plan.cells.iter().map(|c| c.cost).collect::<Vec<_>>(),
        )
    };
    assert_eq!(p(0, None, None), (1, vec![1, 1]));
    assert_eq!(p(4, None, None), (4, vec![4, 4]));
    assert_eq!(p(4, Some(0), Some(2)), (4, vec![0, 2]));
}

#[test]
fn descriptors_naming_one_counter_share_one_cell() {
    let c = cfg(SMS);
    let a = entries(&[("phone", "1")]);
    let d = [
        RequestDescriptor {
            entries: &a,
            limit: None,
            hits_addend: Some(2),
        },
        RequestDescriptor {
            entries: &a,
            limit: None,
            hits_addend: Some(3),
        },
    ];
    let p = c.policy.plan_descriptors("sms", &d, 1).unwrap();
    assert_eq!(p.plan.cells.len(), 1);
    assert_eq!(p.plan.cells[0].cost, 5);
    let s = p.statuses(&Decision::unlimited(0));
    assert_eq!(s.len(), 2);
    // Same counter, different limits: refused.
    let d = [
        RequestDescriptor {
            entries: &a,
            limit: None,
            hits_addend: None,
        },
        RequestDescriptor {
            entries: &a,
            limit: Some(LimitOverride {
                requests_per_unit: 7,
                unit: Unit::Day,
            }),
            hits_addend: None,
        },
    ];
    let err = c.policy.plan_descriptors("sms", &d, 1).unwrap_err();
    assert_eq!(err, DescriptorError::ConflictingLimits(1, 0));
    assert_eq!(
        err.to_string(),
        "descriptors[1]: names the same counter as descriptors[0] with a different limit"
    );
}

// ------------------------------------------------------------------------ request bounds

#[test]
fn hostile_requests_get_errors_naming_the_bound() {
    let c = cfg(EDGE);
    let one = entries(&[("remote_address", "x")]);
    let rd = |e| RequestDescriptor {
        entries: e,
        limit: None,
        hits_addend: None,
    };
    let plan = |domain: &str, d: &[RequestDescriptor<'_>], h: u64| {
        c.policy.plan_descriptors(domain, d, h).unwrap_err()
    };

    assert_eq!(plan("", &[rd(&one)], 1), DescriptorError::EmptyDomain);
    assert_eq!(plan("edge", &[], 1), DescriptorError::NoDescriptors);
    let many = vec![rd(&one); 65];
    assert_eq!(
        plan("edge", &many, 1),
        DescriptorError::TooManyDescriptors(65)
    );
    assert!(c.policy.plan_descriptors("edge", &many[..64], 1).is_ok());
    assert_eq!(
        plan("edge", &[rd(&one), rd(&[])], 1),
        DescriptorError::NoEntries(1)
    );
    let long: Vec<Entry<'_>> = (0..33)
        .map(|_| Entry {
            key: "k",
            value: "v",
        })
        .collect();
    assert_eq!(
        plan("edge", &[rd(&long)], 1),
        DescriptorError::TooManyEntries(0, 33)
    );
    let blank = entries(&[("a", "1"), ("", "2")]);
    let e = plan("edge", &[rd(&blank)], 1);
    assert_eq!(e, DescriptorError::EmptyKey(0, 1));
    assert_eq!(
        e.to_string(),
        "descriptors[0].entries[1].key: entry key must not be empty"
    );
    let huge = "v".repeat(600_000);
    let big = [Entry {
        key: "remote_address",
        value: &huge,
    }];
    assert!(matches!(
        plan("edge", &[rd(&big), rd(&big)], 1),
        DescriptorError::TooManyBytes(_)
    ));
    // One huge value is fine (hashed in the key).
    let p = c.policy.plan_descriptors("edge", &[rd(&big)], 1).unwrap();
    assert!(p.plan.cells[0].key.len() < 200);
    assert_eq!(
        plan("edge", &[rd(&one)], u64::MAX),
        DescriptorError::HitsAddendTooLarge(None, u64::MAX)
    );
    let heavy = RequestDescriptor {
        entries: &one,
        limit: None,
        hits_addend: Some(u64::from(u32::MAX) * 4),
    };
    assert!(matches!(
        plan("edge", &[heavy], 1),
        DescriptorError::HitsAddendTooLarge(Some(0), _)
    ));
    // Unknown domains are checked the same way.
    assert_eq!(
        plan("nope", &[rd(&blank)], 1),
        DescriptorError::EmptyKey(0, 1)
    );
}

// ------------------------------------------------------------------------ extensions

#[test]
fn rules_may_pick_an_algorithm_and_several_limits() {
    let c = config(
        "algorithm: sliding_window",
        r#"
domain: ext
descriptors:
  - key: user
    rate_limit: {rate: "5/s;100/15m", algorithm: gcra, name: per_user}
  - key: team
    rate_limit: {unit: minute, requests_per_unit: 50}
"#,
    );
    let p = plan_one(&c, "ext", &[("user", "u1")]);
    let cells: Vec<_> = p
        .plan
        .cells
        .iter()
        .map(|c| {
            (
                c.limit.count(),
                c.limit.window_secs(),
                c.algorithm,
                c.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        cells,
        [
            (5, 1, Algorithm::Gcra, "per_user-1s"),
            (100, 900, Algorithm::Gcra, "per_user-900s")
        ]
    );
    let p = plan_one(&c, "ext", &[("team", "t1")]);
    assert_eq!(p.plan.cells[0].algorithm, Algorithm::SlidingWindow);
    assert_eq!(p.plan.cells[0].name.as_str(), "ext.team");
}

#[test]
fn statuses_report_the_deciding_limit_of_a_rule() {
    let rig = Rig::new(cfg(r#"
domain: multi
descriptors:
  - key: user
    rate_limit: {rate: "2/s;3/15m", name: per_user}
"#));
    let u: &[(&str, &str)] = &[("user", "u")];
    // Allowed: the limit with the fewest remaining units.
    let s = rig.one("multi", u);
    assert_eq!(s.code, StatusCode::Ok);
    assert_eq!(
        (
            s.current_limit.unwrap().requests_per_unit,
            s.limit_remaining
        ),
        (2, 1)
    );
    let s = rig.one("multi", u);
    assert_eq!(s.current_limit.unwrap().requests_per_unit, 2);
    assert_eq!(s.limit_remaining, 0);
    assert_eq!(s.duration_until_reset_secs, Some(1));
    // Denied by the second-window limit.
    let s = rig.one("multi", u);
    assert_eq!(s.code, StatusCode::OverLimit);
    assert_eq!(s.current_limit.unwrap().requests_per_unit, 2);
    rig.clock.advance_millis(1_000);
    let s = rig.one("multi", u);
    assert_eq!(s.code, StatusCode::Ok);
    let cl = s.current_limit.unwrap();
    // The 15-minute limit decides now: no unit is 900 s long.
    assert_eq!(
        (
            cl.requests_per_unit,
            cl.window_secs,
            cl.unit,
            cl.name.map(|n| n.as_str())
        ),
        (3, 900, None, Some("per_user"))
    );
    assert_eq!(s.limit_remaining, 0);
    // Fixed windows are epoch-aligned: T0 + 1 s is 1 s into a 900 s window.
    assert_eq!(s.duration_until_reset_secs, Some(900 - (T0 + 1) % 900));
    let s = rig.one("multi", u);
    assert_eq!(
        (s.code, s.duration_until_reset_secs),
        (StatusCode::OverLimit, Some(900 - (T0 + 1) % 900))
    );
}

#[test]
fn fixed_window_statuses_match_envoyproxy_values() {
    let rig = Rig::new(cfg(r#"
domain: fw
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 3, name: k_limit}
  - key: d
    rate_limit: {unit: day, requests_per_unit: 1}
"#));
    rig.clock.advance_millis(15_500);
    let s = rig.one("fw", &[("k", "v")]);
    let cl = s.current_limit.unwrap();
    assert_eq!(
        (cl.requests_per_unit, cl.unit, cl.window_secs),
        (3, Some(Unit::Minute), 60)
    );
    assert_eq!(cl.name.map(|n| n.as_str()), Some("k_limit"));
    assert_eq!(s.limit_remaining, 2);
    // envoyproxy/ratelimit: unit - now % unit, in whole seconds (now = T0 + 15).
    assert_eq!(s.duration_until_reset_secs, Some(60 - 15));
    let s = rig.one("fw", &[("d", "v")]);
    assert_eq!(
        s.duration_until_reset_secs,
        Some(86_400 - (T0 + 15) % 86_400)
    );
    assert_eq!(s.current_limit.unwrap().name, None);
}
