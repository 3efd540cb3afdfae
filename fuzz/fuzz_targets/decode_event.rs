//! The binary event decoder: never panics; what it accepts re-encodes to an equal event.
#![no_main]

use bourse_model::Event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        let again = event.encode().expect("a decoded event encodes");
        assert_eq!(Event::decode(&again).expect("re-decodes"), event);
    }
});
