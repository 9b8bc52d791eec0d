//! The filter's shared-data slots (`ratewall_filter::shared`): whatever bytes a slot holds
//! (another version's format, a torn or corrupted value, a state an older build wrote) are
//! decoded, decided on and written back without a panic, and the table keeps deciding.
//!
//! Input: one control byte (algorithm, dimensions, slot count, raw bytes or bytes XORed over
//! slots the filter wrote, clock step), then the slot bytes. Runs the single-slot (CAS) and the
//! multi-slot (locked) paths through an in-memory host map with proxy-wasm's get/set/CAS
//! semantics.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ratewall_core::algorithm::CellState;
use ratewall_core::config::{Plan, RequestContext};
use ratewall_core::LimiterConfig;
use ratewall_filter::shared::{SetError, SharedData, SlotSeed, SlotTable};

/// proxy-wasm shared data: values with a CAS token that changes on every write.
#[derive(Default)]
struct Host(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedData for Host {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), String> {
        Ok(match self.0.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
        let mut map = self.0.borrow_mut();
        let current = map.get(key).map(|(_, c)| *c);
        if let (Some(want), Some(have)) = (cas, current) {
            if want != have {
                return Err(SetError::CasMismatch);
            }
        }
        let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

const ALGORITHMS: [&str; 5] = [
    "fixed_window",
    "sliding_window",
    "sliding_window_counter",
    "token_bucket",
    "gcra",
];

/// Per algorithm: a one-dimension plan and a three-dimension one.
fn plans() -> &'static Vec<(Plan, Plan)> {
    static PLANS: OnceLock<Vec<(Plan, Plan)>> = OnceLock::new();
    PLANS.get_or_init(|| {
        ALGORITHMS
            .iter()
            .map(|a| {
                let json = format!(
                    r#"{{"algorithm": "{a}", "by_user": "3/s", "by_tenant": "10/m", "by_tool": {{"echo": "5/h"}}}}"#
                );
                let (cfg, _) = LimiterConfig::from_json_str(&json, &[]).expect("policy");
                let one = cfg
                    .policy
                    .plan(&RequestContext { user: Some("u"), ..Default::default() })
                    .expect("plan");
                let three = cfg
                    .policy
                    .plan(&RequestContext {
                        user: Some("u"),
                        tenant: Some("t"),
                        tool: Some("echo"),
                        cost: 2,
                        ..Default::default()
                    })
                    .expect("plan");
                (one, three)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, slot)) = data.split_first() else {
        return;
    };
    // the state codec on its own: whatever decodes encodes to bytes that decode to it again
    if let Some(s) = CellState::from_bytes(slot) {
        assert_eq!(CellState::from_bytes(&s.to_bytes()), Some(s));
    }
    let (one, three) = &plans()[usize::from(control % 5)];
    let plan = if control & 0x08 == 0 { one } else { three };
    // 1 slot (every cell in one: the CAS path) or 4 (cells spread: the locked path)
    let max_keys = if control & 0x10 == 0 { 8 } else { 32 };
    let table = SlotTable::new(max_keys, SlotSeed([7; 16]));
    let host = Host::default();
    let mut now = 1_700_000_000_000_000u64;
    if control & 0x20 == 0 {
        // the bytes as they are
        for i in 0..table.slots() {
            host.set(&table.slot_key(i), slot, None).expect("set");
        }
    } else {
        // slots the filter wrote itself (real keys and states), the bytes XORed over them and
        // appended: mostly well-formed slots with odd lengths, counts and states
        table.create_slots(&host).expect("create");
        let _ = table.check(&host, std::slice::from_ref(plan), &|| now);
        for i in 0..table.slots() {
            let key = table.slot_key(i);
            let mut v = host.get(&key).expect("get").0.unwrap_or_default();
            for (j, b) in slot.iter().enumerate() {
                match v.get_mut(j) {
                    Some(x) => *x ^= b,
                    None => v.push(*b),
                }
            }
            host.set(&key, &v, None).expect("set");
        }
    }
    let step = [0, 1, 999_999, 3_600_000_000][usize::from(control >> 6)];
    for _ in 0..3 {
        let clock = || now;
        if let Ok((d, _stats)) = table.check(&host, std::slice::from_ref(plan), &clock) {
            assert!(d.allowed || d.retry_after_secs.is_some() || d.reason.is_some(), "{d:?}");
        }
        now += step;
    }
    let _ = table.sweep(&host, 0, table.slots(), now);
});
