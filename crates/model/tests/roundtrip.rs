//! Round-trip properties of both encodings, over every event kind with randomized
//! field values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_model::samples::sample;
use bourse_model::{Event, EventKind};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Replaces every value of `v` with a random one of the same JSON type, keeping the
/// fields whose values are constrained (enums, instrument ids, the type tag).
fn randomize(v: &mut Value, key: &str, rng: &mut rand::rngs::StdRng) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                randomize(val, k, rng);
            }
        }
        Value::Array(items) => {
            if key == "data" {
                let n = rng.gen_range(0..64);
                *items = (0..n).map(|_| Value::from(rng.gen::<u8>())).collect();
            } else {
                let n = rng.gen_range(0..12);
                let proto = items.first().cloned();
                *items = Vec::new();
                for _ in 0..n {
                    if let Some(mut p) = proto.clone() {
                        randomize(&mut p, key, rng);
                        items.push(p);
                    }
                }
            }
        }
        Value::String(s) => {
            let constrained = key == "type"
                || key == "instrument_id"
                || s.chars().all(|c| c.is_ascii_uppercase());
            if !constrained {
                let n = rng.gen_range(1..24);
                *s = (0..n).map(|_| rng.gen_range('\u{20}'..'\u{3000}')).collect();
            }
        }
        Value::Number(_) if key == "kind" => *v = Value::from(rng.gen::<u16>()),
        Value::Number(_) if key == "error_id" => *v = Value::from(rng.gen::<i32>()),
        Value::Number(n) if n.is_f64() || key.contains("price") || key == "amount" => {
            let f = loop {
                let f = f64::from_bits(rng.gen());
                if f.is_finite() {
                    break f;
                }
            };
            *v = Value::from(if key == "amount" { f.abs().max(1e-9) } else { f });
        }
        Value::Number(_) if key == "volume" => *v = Value::from(rng.gen_range(1..i64::MAX)),
        Value::Number(_) => *v = Value::from(rng.gen::<i64>()),
        Value::Bool(b) => *b = rng.gen(),
        Value::Null => {}
    }
}

fn random_event(kind: EventKind, seed: u64) -> Event {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut value = serde_json::to_value(sample(kind, seed)).unwrap();
    randomize(&mut value, "", &mut rng);
    Event::from_json(&value.to_string()).unwrap_or_else(|e| panic!("{kind:?} {value}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn binary_round_trip(k in 0usize..EventKind::ALL.len(), seed in any::<u64>()) {
        let event = random_event(EventKind::ALL[k], seed);
        let bytes = event.encode().unwrap();
        prop_assert_eq!(Event::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn json_round_trip(k in 0usize..EventKind::ALL.len(), seed in any::<u64>()) {
        let event = random_event(EventKind::ALL[k], seed);
        prop_assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
    }
}
