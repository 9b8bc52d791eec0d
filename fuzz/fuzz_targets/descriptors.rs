//! The descriptor config loader (`DomainSet::from_documents`, envoyproxy/ratelimit YAML, several
//! documents per file) and descriptor planning. Input: YAML text, then optionally a NUL byte and
//! request descriptors, one per line, `key=value` entries separated by `,` (`key` alone: an empty
//! value). An accepted set is merged into a config and every domain is planned with the request
//! and decided on the memory store.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ratewall_core::clock::ManualClock;
use ratewall_core::config::descriptors::{DomainSet, Entry, RequestDescriptor};
use ratewall_core::store::memory::MemoryStore;
use ratewall_core::store::Store;
use ratewall_core::LimiterConfig;

fuzz_target!(|data: &[u8]| {
    let (yaml, request) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"remote_address=10.0.0.1\ngeneric_key=slow\nheader_match=api,user=u"[..]),
    };
    let yaml = ratewall_fuzz::text(yaml);
    let set = match DomainSet::from_documents(&[("fuzz.yaml", &yaml)]) {
        Ok(set) => set,
        Err(e) => {
            assert!(e.to_string().contains("fuzz.yaml"), "{e}");
            return;
        }
    };
    let names: Vec<String> = set.names().map(str::to_string).collect();
    assert_eq!(names.len(), set.len());
    let Ok((base, _)) = LimiterConfig::from_yaml_str("allow_empty: true\n", &[]) else {
        return;
    };
    let Ok(cfg) = base.with_domains(set) else {
        return;
    };
    let request = ratewall_fuzz::text(request);
    let lines: Vec<Vec<Entry<'_>>> = request
        .lines()
        .map(|line| {
            line.split(',')
                .map(|kv| match kv.split_once('=') {
                    Some((key, value)) => Entry { key, value },
                    None => Entry { key: kv, value: "" },
                })
                .collect()
        })
        .collect();
    let descriptors: Vec<RequestDescriptor<'_>> = lines
        .iter()
        .map(|entries| RequestDescriptor {
            entries,
            limit: None,
            hits_addend: None,
        })
        .collect();
    let clock = Arc::new(ManualClock::new(ratewall_fuzz::T0_NANOS));
    let store = MemoryStore::new(1_000, clock.clone());
    for name in &names {
        for hits in [1, 2] {
            match cfg.policy.plan_descriptors(name, &descriptors, hits) {
                Ok(plan) => {
                    let d = store.check(&plan.plan).expect("memory store");
                    let statuses = plan.statuses(&d);
                    assert_eq!(statuses.len(), descriptors.len());
                    let _ = plan.overall_code(&d);
                }
                Err(e) => assert!(!e.field().is_empty() || !e.to_string().is_empty()),
            }
        }
        clock.advance_millis(1_000);
    }
});
