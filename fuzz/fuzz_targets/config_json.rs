//! The JSON config loader (`LimiterConfig::from_json_str`, strict: duplicate keys refused):
//! any bytes are a config or a `ConfigError`, never a panic; an accepted config decides on the
//! memory store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewall_core::LimiterConfig;

fuzz_target!(|data: &[u8]| {
    let text = ratewall_fuzz::text(data);
    match LimiterConfig::from_json_str(&text, &[]) {
        Ok((cfg, _)) => ratewall_fuzz::exercise(&cfg),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
