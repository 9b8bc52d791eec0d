//! Shared by the descriptor rule tests: configs from documents, request helpers, and a config
//! with a memory store on a manual clock.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ratewall_core::clock::ManualClock;
use ratewall_core::config::descriptors::{
    DescriptorPlan, DescriptorStatus, DomainSet, Entry, RequestDescriptor, StatusCode,
};
use ratewall_core::config::LimiterConfig;
use ratewall_core::decision::Decision;
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;

pub const T0: u64 = 1_700_000_040;

pub fn config(base: &str, doc: &str) -> LimiterConfig {
    let set = DomainSet::from_documents(&[("rules.yaml", doc)]).unwrap_or_else(|e| panic!("{e}"));
    LimiterConfig::from_yaml_str_partial(base, &[])
        .unwrap()
        .0
        .with_domains(set)
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn cfg(doc: &str) -> LimiterConfig {
    config("{}", doc)
}

pub fn entries<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Entry<'a>> {
    pairs
        .iter()
        .map(|&(key, value)| Entry { key, value })
        .collect()
}

/// What one request descriptor resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// No limit applies.
    Free,
    Unlimited,
    /// `(count, window_secs)` of each cell.
    Limits(Vec<(u64, u64)>),
}

pub fn plan_one(cfg: &LimiterConfig, domain: &str, pairs: &[(&str, &str)]) -> DescriptorPlan {
    let e = entries(pairs);
    let d = [RequestDescriptor {
        entries: &e,
        limit: None,
        hits_addend: None,
    }];
    cfg.policy.plan_descriptors(domain, &d, 1).unwrap()
}

pub fn got(cfg: &LimiterConfig, domain: &str, pairs: &[(&str, &str)]) -> Got {
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

pub fn lim(count: u64, window: u64) -> Got {
    Got::Limits(vec![(count, window)])
}

/// A request descriptor as `(key, value)` pairs, with its `hits_addend`.
pub type Desc<'a> = (&'a [(&'a str, &'a str)], Option<u64>);

/// A config and a memory store on a manual clock at [`T0`].
pub struct Rig {
    pub cfg: LimiterConfig,
    pub store: MemoryStore,
    pub clock: Arc<ManualClock>,
}

impl Rig {
    pub fn new(cfg: LimiterConfig) -> Self {
        let clock = Arc::new(ManualClock::new(T0 * 1_000_000_000));
        Self {
            store: MemoryStore::new(10_000, clock.clone()),
            cfg,
            clock,
        }
    }

    /// One RLS request: `(entries, hits_addend)` per descriptor.
    pub fn ask(
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
        let decision = plan.finish(self.store.check(&plan.plan).unwrap());
        let statuses = plan.statuses(&decision);
        assert_eq!(statuses.len(), descriptors.len());
        (decision, statuses)
    }

    pub fn one(&self, domain: &str, pairs: &[(&str, &str)]) -> DescriptorStatus {
        self.ask(domain, &[(pairs, None)], 1).1[0]
    }
}

pub const SMS: &str = r#"
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

pub const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 203.0.113.9
    rate_limit: {unit: second, requests_per_unit: 1}
"#;
