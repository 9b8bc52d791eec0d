//! Descriptor keys: injective (property tests: two different descriptors never share a counter),
//! and independent of rule order and of other rules, so a reload keeps the counters of unchanged
//! rules.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::descriptors::{DomainSet, Entry, RequestDescriptor, StatusCode};
use ratewall_core::config::LimiterConfig;
use ratewall_core::key::{cell_key, DimKey};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

fn ident() -> impl Strategy<Value = String> {
    // Delimiters of every encoding layer, sometimes long enough to be hashed.
    prop_oneof![
        8 => "[a:_.*vp#0-9 -]{0,8}",
        1 => "[a:]{60,70}",
        1 => ".{0,12}",
    ]
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    Rls {
        domain: String,
        entries: Vec<(String, String, Option<String>)>,
    },
    User(String),
    Descriptor(String, Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tuple {
    id: Id,
    alg: usize,
    window: u64,
}

fn tuple() -> impl Strategy<Value = Tuple> {
    let entry = (ident(), ident(), prop::option::of(ident()));
    let id = prop_oneof![
        6 => (ident(), prop::collection::vec(entry, 1..4))
            .prop_map(|(domain, entries)| Id::Rls { domain, entries }),
        1 => ident().prop_map(Id::User),
        1 => (ident(), prop::collection::vec(ident(), 1..3)).prop_map(|(n, v)| Id::Descriptor(n, v)),
    ];
    (id, 0usize..5, prop_oneof![Just(1u64), Just(60)]).prop_map(|(id, alg, window)| Tuple {
        id,
        alg,
        window,
    })
}

fn key(t: &Tuple) -> String {
    let alg = Algorithm::ALL[t.alg];
    match &t.id {
        Id::Rls { domain, entries } => {
            let e: Vec<Entry<'_>> = entries
                .iter()
                .map(|(k, v, _)| Entry { key: k, value: v })
                .collect();
            let shared: Vec<Option<String>> = entries.iter().map(|(_, _, s)| s.clone()).collect();
            let dim = DimKey::Rls {
                domain,
                entries: &e,
                shared: &shared,
            };
            cell_key("rl", None, dim, alg, t.window)
        }
        Id::User(u) => cell_key("rl", None, DimKey::User(u), alg, t.window),
        Id::Descriptor(n, v) => {
            let v: Vec<&str> = v.iter().map(String::as_str).collect();
            cell_key("rl", None, DimKey::Descriptor(n, &v), alg, t.window)
        }
    }
}

/// The identity a key stands for: with a shared pattern, the value does not count.
fn identity(t: &Tuple) -> Tuple {
    let mut t = t.clone();
    if let Id::Rls { entries, .. } = &mut t.id {
        for e in entries.iter_mut() {
            if e.2.is_some() {
                e.1.clear();
            }
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn different_identities_never_share_a_key(ts in prop::collection::vec(tuple(), 2..40)) {
        let mut seen: HashMap<String, Tuple> = HashMap::new();
        for t in &ts {
            let k = key(t);
            prop_assert!(k.len() < 3_000, "{} bytes", k.len());
            if let Some(prev) = seen.insert(k.clone(), identity(t)) {
                prop_assert_eq!(&prev, &identity(t), "collision on {}", k);
            }
        }
    }

    /// Through the policy: a bare-key rule gives every request value its own counter.
    #[test]
    fn every_request_value_has_its_own_counter(values in prop::collection::vec(".{0,80}", 2..20)) {
        let (cfg, _) = LimiterConfig::from_yaml_str(
            "domains:\n  - domain: d\n    descriptors:\n      - key: k\n        descriptors:\n          - key: j\n            rate_limit: {unit: second, requests_per_unit: 1}\n",
            &[],
        ).unwrap();
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for (i, v) in values.iter().enumerate() {
            let w = &values[(i + 1) % values.len()];
            let e = [Entry { key: "k", value: v }, Entry { key: "j", value: w }];
            let d = [RequestDescriptor { entries: &e, limit: None, hits_addend: None }];
            let p = cfg.policy.plan_descriptors("d", &d, 1).unwrap();
            let k = p.plan.cells[0].key.clone();
            if let Some(prev) = seen.insert(k, (v.clone(), w.clone())) {
                prop_assert_eq!(prev, (v.clone(), w.clone()));
            }
        }
    }
}

#[test]
fn a_value_spelling_a_shared_pattern_is_not_the_shared_counter() {
    let e = [Entry {
        key: "bucket",
        value: "shared-*",
    }];
    let literal = cell_key(
        "rl",
        None,
        DimKey::Rls {
            domain: "d",
            entries: &e,
            shared: &[],
        },
        Algorithm::FixedWindow,
        60,
    );
    let pattern = cell_key(
        "rl",
        None,
        DimKey::Rls {
            domain: "d",
            entries: &e,
            shared: &[Some("shared-*".into())],
        },
        Algorithm::FixedWindow,
        60,
    );
    assert_ne!(literal, pattern);
    assert_eq!(literal, "rl:{-}:fw:60:t-:r1:d1:6:bucketv8:shared-*");
}

const BEFORE: &str = r#"
domain: api
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: route
    value: search
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5}
  - key: client
    rate_limit: {unit: minute, requests_per_unit: 9}
  - key: slow
    rate_limit: {unit: minute, requests_per_unit: 9}
"#;

/// Reordered, one rule's count changed, a rule added, another domain added, `slow` moved to
/// another algorithm, `client` to another window.
const AFTER: &str = r#"
domain: api
descriptors:
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: client
    rate_limit: {unit: hour, requests_per_unit: 9}
  - key: slow
    rate_limit: {unit: minute, requests_per_unit: 9, algorithm: gcra}
  - key: route
    value: search
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5}
      - key: region
        rate_limit: {unit: minute, requests_per_unit: 1}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 4}
---
domain: other
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

fn cfg(doc: &str) -> LimiterConfig {
    let set = DomainSet::from_documents(&[("api.yaml", doc)]).unwrap();
    LimiterConfig::from_yaml_str_partial("{}", &[])
        .unwrap()
        .0
        .with_domains(set)
        .unwrap()
}

fn remaining(
    cfg: &LimiterConfig,
    store: &MemoryStore,
    pairs: &[(&str, &str)],
) -> (StatusCode, u64) {
    let e: Vec<Entry<'_>> = pairs
        .iter()
        .map(|&(key, value)| Entry { key, value })
        .collect();
    let d = [RequestDescriptor {
        entries: &e,
        limit: None,
        hits_addend: None,
    }];
    let p = cfg.policy.plan_descriptors("api", &d, 1).unwrap();
    let s = p.statuses(&store.check(&p.plan).unwrap())[0];
    (s.code, s.limit_remaining)
}

#[test]
fn reload_keeps_the_counters_of_unchanged_rules() {
    let clock = Arc::new(ManualClock::new(1_700_000_040 * 1_000_000_000));
    let store = MemoryStore::new(10_000, clock);
    let (before, after) = (cfg(BEFORE), cfg(AFTER));
    let user = [("user", "ann")];
    let search = [("route", "search"), ("user", "ann")];
    let client = [("client", "c1")];
    let slow = [("slow", "s1")];
    assert_eq!(remaining(&before, &store, &user), (StatusCode::Ok, 2));
    assert_eq!(remaining(&before, &store, &search), (StatusCode::Ok, 4));
    assert_eq!(remaining(&before, &store, &search), (StatusCode::Ok, 3));
    assert_eq!(remaining(&before, &store, &client), (StatusCode::Ok, 8));
    assert_eq!(remaining(&before, &store, &slow), (StatusCode::Ok, 8));

    // Same entries, same algorithm and window: the counter continues, whatever moved around it.
    assert_eq!(remaining(&after, &store, &search), (StatusCode::Ok, 2));
    // A changed count applies to the same counter (1 used of now 4).
    assert_eq!(remaining(&after, &store, &user), (StatusCode::Ok, 2));
    // Another window or another algorithm is another counter.
    assert_eq!(remaining(&after, &store, &client), (StatusCode::Ok, 8));
    assert_eq!(remaining(&after, &store, &slow), (StatusCode::Ok, 8));
}
