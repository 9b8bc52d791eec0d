//! Rate strings (`parse_rate`): any text is a rate or an error message; an accepted rate's limits
//! hold their invariants and print back (`count/Ns`) to the same limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewall_core::config::rate::{parse_rate, MAX_COUNT, MAX_WINDOW_SECS};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_rate(s) {
        Ok(rate) => {
            assert!(!rate.limits().is_empty());
            for l in rate.limits() {
                assert!((1..=MAX_COUNT).contains(&l.count()), "{l}");
                assert!((1..=MAX_WINDOW_SECS).contains(&l.window_secs()), "{l}");
                assert!(l.interval_micros() >= 1);
                let again = parse_rate(&l.to_string()).expect("a printed limit parses");
                assert_eq!(again.limits(), std::slice::from_ref(l));
            }
            let joined: Vec<String> = rate.limits().iter().map(|l| l.to_string()).collect();
            assert_eq!(parse_rate(&joined.join(";")).expect("printed rate"), rate);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
