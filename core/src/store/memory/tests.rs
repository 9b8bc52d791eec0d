//! Unit tests of the memory store's internals (bound, eviction, lookups after growth).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::clock::ManualClock;
use crate::config::{DimensionKind, LimiterConfig, RequestContext};

const T0: u64 = 1_700_000_000_123_456_789;

fn config(yaml: &str) -> LimiterConfig {
    LimiterConfig::from_yaml_str(yaml, &[]).unwrap().0
}

fn plan(cfg: &LimiterConfig, user: &str, tenant: Option<&str>) -> Plan {
    cfg.policy
        .plan(&RequestContext {
            user: Some(user),
            tenant,
            ..Default::default()
        })
        .unwrap()
}

fn single(p: &Plan, kind: DimensionKind) -> Plan {
    Plan {
        cells: p
            .cells
            .iter()
            .filter(|c| c.dimension == kind)
            .cloned()
            .collect(),
        cost: p.cost,
    }
}

fn shard_of(s: &MemoryStore, p: &Plan) -> usize {
    assert_eq!(p.cells.len(), 1);
    s.locate(&p.cells[0].key).1
}

fn slots(s: &MemoryStore) -> usize {
    s.shards.iter().map(|p| p.0.lock().table.len()).sum()
}

/// A two-cell request [user U (existing), tenant T (new)] with U and T in the same shard, in
/// a full store whose other key W lives in another shard: inserting T must not evict U,
/// which this very request has just committed.
#[test]
fn a_request_never_evicts_a_cell_it_just_committed() {
    let cfg = config("{by_user: 2/m, by_tenant: 100/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(2, clock.clone());
    let (both, u) = (0..10_000)
        .find_map(|i| {
            let both = plan(&cfg, "alice", Some(&format!("t{i}")));
            let u = single(&both, DimensionKind::User);
            let t = single(&both, DimensionKind::Tenant);
            (shard_of(&s, &u) == shard_of(&s, &t)).then_some((both, u))
        })
        .unwrap();
    let w = (0..10_000)
        .map(|i| plan(&cfg, &format!("w{i}"), None))
        .find(|w| shard_of(&s, w) != shard_of(&s, &u))
        .unwrap();
    assert!(s.check(&u).unwrap().allowed); // U: 1 of 2
    assert!(s.check(&w).unwrap().allowed); // store full (2 keys)
    assert!(s.check(&both).unwrap().allowed); // U: 2 of 2, T inserted
    let st = s.stats();
    assert!(
        !s.check(&u).unwrap().allowed,
        "U admitted a third time within its minute (limit 2/m): the request that used its \
         second unit evicted it while inserting T; stats after that request: {st:?}"
    );
}

/// One thread, a full store of 2 keys: a two-cell request whose second (new) cell lands in an
/// empty shard, while the only other entry sits in the shard of its first cell (locked by
/// this same request, so `steal_room`'s try_lock fails there).
#[test]
fn one_thread_never_exceeds_the_bound() {
    let cfg = config("{by_user: 5/m, by_tenant: 100/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(2, clock.clone());
    let both = (0..10_000)
        .map(|i| plan(&cfg, "alice", Some(&format!("t{i}"))))
        .find(|b| {
            shard_of(&s, &single(b, DimensionKind::User))
                != shard_of(&s, &single(b, DimensionKind::Tenant))
        })
        .unwrap();
    let u = single(&both, DimensionKind::User);
    let z = (0..10_000)
        .map(|i| plan(&cfg, &format!("z{i}"), None))
        .find(|z| shard_of(&s, z) == shard_of(&s, &u))
        .unwrap();
    assert!(s.check(&z).unwrap().allowed); // 1 key
    assert!(s.check(&both).unwrap().allowed); // +2 keys, bound 2
    assert_eq!(s.stats().keys as usize, slots(&s));
    assert!(
        s.stats().keys <= 2,
        "single-threaded overshoot: {:?}",
        s.stats()
    );
}

/// `len` equals the slots in the tables after concurrent multi-cell churn (inserts, reclaims,
/// evictions, steals).
#[test]
fn len_matches_slots_under_concurrent_churn() {
    let cfg = config("{by_user: 5/s, by_tenant: 1000/s}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(40, clock.clone());
    std::thread::scope(|sc| {
        for t in 0..2 {
            let (s, cfg, clock) = (&s, &cfg, &clock);
            sc.spawn(move || {
                for i in 0..20_000u32 {
                    let ten = format!("ten{}", i % 7);
                    let p = plan(cfg, &format!("u{t}-{i}"), Some(&ten));
                    s.check(&p).unwrap();
                    if i % 1000 == 0 {
                        clock.advance_millis(700);
                    }
                }
            });
        }
    });
    assert_eq!(s.stats().keys as usize, slots(&s), "{:?}", s.stats());
    assert!(s.stats().keys <= 40 + 2, "{:?}", s.stats());
}

/// Every key stays findable by `locate`'s hash after its table grew (rehash closure agrees).
#[test]
fn keys_stay_findable_after_table_growth() {
    let cfg = config("{by_user: 5/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(1 << 14, clock.clone());
    let plans: Vec<Plan> = (0..(1 << 14))
        .map(|i| plan(&cfg, &format!("k{i}"), None))
        .collect();
    for p in &plans {
        assert!(s.check(p).unwrap().allowed);
    }
    assert_eq!(s.stats().evictions, 0);
    for p in &plans {
        let (hash, sid) = s.locate(&p.cells[0].key);
        let shard = s.shards[sid].0.lock();
        assert!(shard
            .table
            .find(hash, |x| *x.key == *p.cells[0].key)
            .is_some());
    }
    let max = s
        .shards
        .iter()
        .map(|p| p.0.lock().table.len())
        .max()
        .unwrap();
    assert!(max > 32, "some table grew past its initial size: {max}");
}

/// A plan naming one key twice would be peeked once and committed twice: an error, and
/// nothing consumed.
#[test]
fn a_plan_naming_one_key_twice_is_an_error() {
    let cfg = config("{algorithm: fixed_window, by_user: 3/m, by_tenant: 5/m}");
    let clock = Arc::new(ManualClock::new(T0));
    let s = MemoryStore::new(100, clock.clone());
    let one = plan(&cfg, "alice", None);
    let mut dup = one.clone();
    dup.cells.push(dup.cells[0].clone());
    let err = s.check(&dup).unwrap_err();
    assert!(err.message.contains("twice"), "{err}");
    assert_eq!(s.stats().keys, 0);
    let d = s.check(&one).unwrap();
    assert_eq!(d.dimensions[0].outcome.remaining, 2, "{d:?}");
}
