//! Descriptor rules: a conformance test per matching rule of envoyproxy/ratelimit (written from
//! its README's documented semantics, with our own fixtures), decided by the memory store.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod descriptor_rig;

use descriptor_rig::*;
use ratewall_core::config::descriptors::{
    DescriptorStatus, DomainSet, LimitOverride, RequestDescriptor, StatusCode, Unit,
};
use ratewall_core::config::LimiterConfig;

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
    let c = LimiterConfig::from_yaml_str_partial("{}", &[])
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
