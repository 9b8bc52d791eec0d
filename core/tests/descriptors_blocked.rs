//! `requests_per_unit: 0`: envoyproxy/ratelimit's way to block a value (its README's "Example 3",
//! a black-listed IP). Every request reaching such a rule with a non-zero hit count is
//! `OVER_LIMIT` (status: 0 per its unit, remaining 0, reset at the end of the current unit
//! window); nothing is stored for it, and the request's other descriptors are not charged
//! (all-or-nothing). `hits_addend: 0` is `OK`; in shadow mode the request passes, marked.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod descriptor_rig;

use descriptor_rig::{cfg, config, Rig, T0};
use ratewall_core::config::descriptors::{StatusCode, Unit};
use ratewall_core::decision::DenyReason;

const EXAMPLE_3: &str = r#"
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: banned
    rate_limit: {unit: day, requests_per_unit: 0, name: banned_for_the_day}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 0}
"#;

const D: &str = "edge_proxy_per_ip";

#[test]
fn a_blocked_value_is_over_limit_and_the_others_are_not() {
    let rig = Rig::new(cfg(EXAMPLE_3));
    for _ in 0..3 {
        let (d, s) = rig.ask(D, &[(&[("remote_address", "50.0.0.5")], None)], 1);
        assert!(!d.allowed);
        assert_eq!(d.reason, Some(DenyReason::CostExceedsLimit));
        assert_eq!(d.retry_after_secs, None, "a blocked value can never pass");
        assert_eq!(s[0].code, StatusCode::OverLimit);
        let cl = s[0].current_limit.unwrap();
        assert_eq!((cl.requests_per_unit, cl.unit), (0, Some(Unit::Second)));
        assert_eq!(s[0].limit_remaining, 0);
        assert_eq!(s[0].duration_until_reset_secs, Some(1));
    }
    let s = rig.one(D, &[("remote_address", "50.0.0.1")]);
    assert_eq!((s.code, s.limit_remaining), (StatusCode::Ok, 9));
}

#[test]
fn a_blocked_descriptor_charges_none_of_the_request_s_others() {
    let rig = Rig::new(cfg(EXAMPLE_3));
    assert_eq!(rig.one(D, &[("user", "alice")]).limit_remaining, 4);
    let (d, s) = rig.ask(
        D,
        &[
            (&[("user", "alice")], None),
            (&[("remote_address", "50.0.0.5")], None),
        ],
        1,
    );
    assert!(!d.allowed);
    assert_eq!(s[0].code, StatusCode::Ok, "alice is within her own limit");
    assert_eq!(s[0].limit_remaining, 4, "read, not charged");
    assert_eq!(s[1].code, StatusCode::OverLimit);
    assert_eq!(rig.one(D, &[("user", "alice")]).limit_remaining, 3);
}

#[test]
fn hits_addend_zero_checks_a_blocked_rule_without_denying() {
    let rig = Rig::new(cfg(EXAMPLE_3));
    let (d, s) = rig.ask(D, &[(&[("remote_address", "50.0.0.5")], Some(0))], 1);
    assert!(d.allowed);
    assert_eq!(s[0].code, StatusCode::Ok);
    assert_eq!(s[0].current_limit.unwrap().requests_per_unit, 0);
}

#[test]
fn the_reset_is_the_end_of_the_current_unit_window() {
    let rig = Rig::new(cfg(EXAMPLE_3));
    let s = rig.one(D, &[("banned", "mallory")]);
    assert_eq!(s.code, StatusCode::OverLimit);
    assert_eq!(s.duration_until_reset_secs, Some(86_400 - T0 % 86_400));
    let cl = s.current_limit.unwrap();
    assert_eq!(cl.name.map(|n| n.as_str()), Some("banned_for_the_day"));
}

#[test]
fn a_shadow_blocked_rule_passes_and_is_marked() {
    let rig = Rig::new(cfg(EXAMPLE_3));
    let (d, s) = rig.ask(D, &[(&[("trial", "x")], None)], 1);
    assert!(d.allowed);
    assert!(d.shadow_denied);
    assert_eq!(s[0].code, StatusCode::Ok);
    assert!(s[0].shadow);
    // Global shadow_mode covers blocked rules too.
    let rig = Rig::new(config("shadow_mode: true", EXAMPLE_3));
    let (d, s) = rig.ask(D, &[(&[("remote_address", "50.0.0.5")], None)], 1);
    assert!(d.allowed && d.shadow_denied);
    assert!(s[0].shadow);
}
