//! Descriptor requests: `limit` overrides, `hits_addend` and shared cells, bounds against hostile
//! requests, our extensions (algorithm per rule, several limits) and the statuses they give.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod descriptor_rig;

use descriptor_rig::*;
use ratewall_core::config::descriptors::{
    DescriptorError, Entry, LimitOverride, RequestDescriptor, StatusCode, Unit,
};
use ratewall_core::decision::Decision;
use ratewall_core::store::Store;
use ratewall_core::Algorithm;

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
    // Too fine for the config's gcra (at most one per µs).
    let g = config("algorithm: gcra", EDGE);
    let d = [RequestDescriptor {
        entries: &e,
        limit: Some(LimitOverride {
            requests_per_unit: 2_000_000,
            unit: Unit::Second,
        }),
        hits_addend: None,
    }];
    let err = g.policy.plan_descriptors("edge", &d, 1).unwrap_err();
    assert!(
        err.to_string().contains("over one per µs") && err.to_string().contains("algorithm gcra"),
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
