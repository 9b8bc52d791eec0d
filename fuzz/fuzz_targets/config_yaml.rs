//! The YAML config loader (`LimiterConfig::from_yaml_str` and its partial variant used by the
//! gateway plugin's test configs): any text is a config or a `ConfigError`, never a panic, a
//! quadratic parse or an unbounded allocation; an accepted config decides on the memory store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewall_core::LimiterConfig;

fuzz_target!(|data: &[u8]| {
    let text = ratewall_fuzz::text(data);
    match LimiterConfig::from_yaml_str(&text, &["listen", "plugin"]) {
        Ok((cfg, _extra)) => ratewall_fuzz::exercise(&cfg),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Ok((cfg, _)) = LimiterConfig::from_yaml_str_partial(&text, &[]) {
        ratewall_fuzz::exercise(&cfg);
    }
});
