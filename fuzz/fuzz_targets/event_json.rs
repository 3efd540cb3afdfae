//! The JSON event parser: never panics; what it accepts round-trips through JSON.
#![no_main]

use bourse_model::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(event) = Event::from_json(text) {
            assert_eq!(Event::from_json(&event.to_json()).expect("re-parses"), event);
        }
    }
});
