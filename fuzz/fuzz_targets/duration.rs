//! Duration strings (`10s`, `5 minutes`: triggers, watermark delays, windows, timeouts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_crds::duration::parse_duration;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(duration) = parse_duration(text) {
        // The bound that keeps event-time arithmetic (i64 microseconds) from overflowing.
        assert!(
            i64::try_from(duration.as_micros()).is_ok(),
            "`{text}` parsed to {duration:?}, past i64 microseconds"
        );
        // What humantime prints for a parsed duration parses back to the same duration.
        let printed = humantime::format_duration(duration).to_string();
        assert_eq!(
            parse_duration(&printed),
            Ok(duration),
            "`{text}` parsed to {duration:?}, printed as `{printed}`"
        );
    }
});
