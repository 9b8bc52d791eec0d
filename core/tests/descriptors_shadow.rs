//! Descriptor rules with shadow mode and per-descriptor cost (contracts §A): a shadow descriptor
//! over its limit answers `OK` with `shadow` and is not charged, the request stays allowed;
//! global `shadow_mode` makes every descriptor shadow; `hits_addend: 0` checks without consuming;
//! per-descriptor `hits_addend` charges each counter its own amount.
#![cfg(all(feature = "descriptors", feature = "memory"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod descriptor_rig;

use descriptor_rig::{config, Rig as Base};
use ratewall_core::config::descriptors::{DescriptorStatus, StatusCode};
use ratewall_core::decision::Decision;

const RULES: &str = r#"
domain: auth
descriptors:
  - key: service
    descriptors:
      - key: user
        value: alice
        shadow_mode: true
        rate_limit: {unit: second, requests_per_unit: 2}
      - key: user
        value: bob
        rate_limit: {unit: second, requests_per_unit: 3}
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 5}
"#;

/// The shared rig, asking domain `auth`.
struct Rig(Base);

impl Rig {
    fn new(base: &str) -> Self {
        Rig(Base::new(config(base, RULES)))
    }

    fn ask(
        &self,
        descriptors: &[descriptor_rig::Desc<'_>],
        hits: u64,
    ) -> (Decision, Vec<DescriptorStatus>) {
        self.0.ask("auth", descriptors, hits)
    }
}

const ALICE: &[(&str, &str)] = &[("service", "login"), ("user", "alice")];
const BOB: &[(&str, &str)] = &[("service", "login"), ("user", "bob")];
const KEY: &[(&str, &str)] = &[("api_key", "k1")];

#[test]
fn a_shadow_descriptor_over_its_limit_answers_ok_and_is_not_charged() {
    let rig = Rig::new("{}");
    for left in [1, 0] {
        let (d, s) = rig.ask(&[(ALICE, None)], 1);
        assert!(d.allowed);
        assert_eq!(
            (s[0].code, s[0].shadow, s[0].limit_remaining),
            (StatusCode::Ok, false, left)
        );
    }
    for _ in 0..3 {
        let (d, s) = rig.ask(&[(ALICE, None), (KEY, None)], 1);
        // The would-be denial is visible, the request is allowed.
        assert!(d.allowed && d.shadow_denied);
        assert_eq!(s[0].code, StatusCode::Ok);
        assert!(s[0].shadow);
        assert_eq!(s[0].current_limit.unwrap().requests_per_unit, 2);
        assert_eq!(s[0].duration_until_reset_secs, Some(1));
        // The enforced descriptor of the same request is charged.
        assert_eq!((s[1].code, s[1].shadow), (StatusCode::Ok, false));
    }
    assert_eq!(rig.ask(&[(KEY, None)], 1).1[0].limit_remaining, 1);
    // An enforced rule is still enforced.
    for _ in 0..3 {
        assert!(rig.ask(&[(BOB, None)], 1).0.allowed);
    }
    let (d, s) = rig.ask(&[(BOB, None)], 1);
    assert!(!d.allowed);
    assert_eq!((s[0].code, s[0].shadow), (StatusCode::OverLimit, false));
}

#[test]
fn global_shadow_mode_makes_every_descriptor_shadow() {
    let rig = Rig::new("shadow_mode: true");
    for _ in 0..3 {
        assert!(rig.ask(&[(BOB, None)], 1).0.allowed);
    }
    let (d, s) = rig.ask(&[(BOB, None)], 1);
    assert!(d.allowed && d.shadow_denied);
    assert_eq!((s[0].code, s[0].shadow), (StatusCode::Ok, true));
    // Not charged past its limit: remaining stays 0, never wraps.
    assert_eq!(s[0].limit_remaining, 0);
}

#[test]
fn hits_addend_zero_checks_without_consuming() {
    let rig = Rig::new("{}");
    for _ in 0..10 {
        let (d, s) = rig.ask(&[(KEY, Some(0))], 1);
        assert!(d.allowed);
        assert_eq!(s[0].limit_remaining, 5);
    }
    // Per-descriptor amounts: the api key pays 4, bob 1, in one request.
    let (d, s) = rig.ask(&[(KEY, Some(4)), (BOB, None)], 1);
    assert!(d.allowed);
    assert_eq!((s[0].limit_remaining, s[1].limit_remaining), (1, 2));
    // The request's hits_addend for descriptors without their own.
    let (d, s) = rig.ask(&[(KEY, Some(0)), (BOB, None)], 2);
    assert!(d.allowed);
    assert_eq!((s[0].limit_remaining, s[1].limit_remaining), (1, 0));
    // Over: a check-only descriptor over nothing still reports; the request denied charges none.
    let (d, s) = rig.ask(&[(KEY, Some(2)), (BOB, Some(0))], 1);
    assert!(!d.allowed);
    assert_eq!(
        (s[0].code, s[1].code),
        (StatusCode::OverLimit, StatusCode::Ok)
    );
    assert_eq!(rig.ask(&[(KEY, Some(1))], 1).1[0].limit_remaining, 0);
}
