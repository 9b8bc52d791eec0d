//! Key encoding is injective: different identity tuples never share a key (property test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use ratewall_core::key::{cell_key, DimKey};
use ratewall_core::Algorithm;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Dim {
    User(String),
    UserServer(String, String),
    Tenant,
    Tool(String),
    Descriptor(String, Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Tuple {
    tenant: Option<String>,
    dim: Dim,
    alg: usize,
    window: u64,
}

fn ident() -> impl Strategy<Value = String> {
    // Small alphabet full of delimiters so collisions would be found if the encoding allowed them;
    // occasionally long enough to be hashed.
    prop_oneof![
        8 => "[a:{}#0-9_ -]{0,8}",
        1 => "[a:]{60,70}",
        1 => ".{0,12}",
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    let dim = prop_oneof![
        ident().prop_map(Dim::User),
        (ident(), ident()).prop_map(|(u, s)| Dim::UserServer(u, s)),
        Just(Dim::Tenant),
        ident().prop_map(Dim::Tool),
        (ident(), prop::collection::vec(ident(), 1..3)).prop_map(|(n, v)| Dim::Descriptor(n, v)),
    ];
    (
        prop::option::of(ident()),
        dim,
        0usize..5,
        prop_oneof![Just(1u64), Just(60), Just(600)],
    )
        .prop_map(|(tenant, dim, alg, window)| Tuple {
            tenant,
            dim,
            alg,
            window,
        })
}

fn key(t: &Tuple) -> String {
    let values: Vec<&str> = match &t.dim {
        Dim::Descriptor(_, v) => v.iter().map(String::as_str).collect(),
        _ => vec![],
    };
    let dk = match &t.dim {
        Dim::User(u) => DimKey::User(u),
        Dim::UserServer(u, s) => DimKey::UserServer(u, s),
        Dim::Tenant => DimKey::Tenant,
        Dim::Tool(x) => DimKey::Tool(x),
        Dim::Descriptor(n, _) => DimKey::Descriptor(n, &values),
    };
    cell_key(
        "rl",
        t.tenant.as_deref(),
        dk,
        Algorithm::ALL[t.alg],
        t.window,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn different_tuples_give_different_keys(a in tuple(), b in tuple()) {
        prop_assert_eq!(a == b, key(&a) == key(&b), "{:?} / {:?}", a, b);
    }

    #[test]
    fn keys_are_bounded(a in tuple()) {
        prop_assert!(key(&a).len() <= 400);
    }
}

#[test]
fn delimiter_injection_does_not_alias_per_server_keys() {
    // B-14 of the peer: `alice:server:gw-9` aliased alice's per-server key for gw-9.
    let global = cell_key(
        "rl",
        None,
        DimKey::User("alice:server:gw-9"),
        Algorithm::FixedWindow,
        60,
    );
    let per_server = cell_key(
        "rl",
        None,
        DimKey::UserServer("alice", "gw-9"),
        Algorithm::FixedWindow,
        60,
    );
    assert_ne!(global, per_server);
    // Tenant-prefix ambiguity: tenant "a:user" + user "b" vs tenant "a" + user "user:b".
    let k1 = cell_key("rl", Some("a:user"), DimKey::User("b"), Algorithm::Gcra, 1);
    let k2 = cell_key("rl", Some("a"), DimKey::User("user:b"), Algorithm::Gcra, 1);
    assert_ne!(k1, k2);
}

#[test]
fn algorithm_and_window_are_part_of_the_key() {
    let a = cell_key("rl", None, DimKey::User("u"), Algorithm::FixedWindow, 60);
    let b = cell_key("rl", None, DimKey::User("u"), Algorithm::SlidingWindow, 60);
    let c = cell_key("rl", None, DimKey::User("u"), Algorithm::FixedWindow, 1);
    assert_ne!(a, b);
    assert_ne!(a, c);
}
