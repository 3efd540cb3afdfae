//! The binary decoder never panics and never accepts what it should not: random bytes,
//! truncations, bit flips, trailing bytes, unknown versions and kinds. (The fuzz target
//! `fuzz/fuzz_targets/decode_event.rs` explores the same surface with coverage.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_model::samples::sample;
use bourse_model::{Error, Event, EventKind};
use proptest::prelude::*;

#[test]
fn header_errors_are_specific() {
    assert!(matches!(Event::decode(&[]), Err(Error::Decode { kind: None, .. })));
    assert!(matches!(Event::decode(&[2, 7, 0]), Err(Error::UnsupportedVersion { version: 2 })));
    assert!(matches!(Event::decode(&[1, 99, 0]), Err(Error::UnknownKind { kind: 99 })));
    let mut trade = sample(EventKind::TradeExecuted, 3).encode().unwrap();
    trade.push(0);
    assert!(matches!(
        Event::decode(&trade),
        Err(Error::Decode { kind: Some("trade_executed"), .. })
    ));
}

#[test]
fn every_truncation_is_an_error() {
    for kind in EventKind::ALL {
        let bytes = sample(kind, 11).encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Event::decode(&bytes[..cut]).is_err(), "{kind:?} cut at {cut} decoded");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..400), kind in 1u16..19) {
        if bytes.len() >= 3 {
            bytes[0] = 1;
            bytes[1..3].copy_from_slice(&kind.to_le_bytes());
        }
        let _ = Event::decode(&bytes);
    }

    #[test]
    fn bit_flips_never_panic_and_decoded_events_are_valid(k in 0usize..18, n in any::<u64>(), pos in any::<usize>(), bit in 0u8..8) {
        let mut bytes = sample(EventKind::ALL[k], n).encode().unwrap();
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(event) = Event::decode(&bytes) {
            prop_assert!(event.validate().is_ok());
        }
    }
}

/// Regression (found by the `decode_event` fuzz target): the decoder accepted NaN and
/// infinite floats, which JSON cannot carry and which never equal themselves.
#[test]
fn non_finite_floats_are_refused_and_named() {
    let mut tick = sample(EventKind::Tick, 5);
    if let Event::Tick(t) = &mut tick {
        t.bid_price2 = f64::NAN;
    }
    let bytes = tick.encode().unwrap();
    match Event::decode(&bytes) {
        Err(Error::Invalid { field: "bid_price2", .. }) => {}
        other => panic!("expected bid_price2 to be refused, got {other:?}"),
    }
}

/// Makes one float of `e` non-finite and names it; `None` for the kinds not covered.
fn spoil(e: &mut Event) -> Option<&'static str> {
    Some(match e {
        Event::OrderRequested(o) => {
            o.limit_price = f64::NAN;
            "limit_price"
        }
        Event::OrderAccepted(o) => {
            o.frozen_margin = f64::INFINITY;
            "frozen_margin"
        }
        Event::OrderUpdated(o) => {
            o.limit_price = f64::NEG_INFINITY;
            "limit_price"
        }
        Event::TradeExecuted(t) => {
            t.commission = f64::NAN;
            "commission"
        }
        Event::AccountUpdated(a) => {
            a.ctp_available = f64::NAN;
            "ctp_available"
        }
        Event::PositionUpdated(p) => {
            p.last_price = f64::INFINITY;
            "last_price"
        }
        Event::Tick(t) => {
            t.close = Some(f64::NAN);
            "close"
        }
        _ => return None,
    })
}

/// Every kind with floats checks its own fields: a non-finite value in any of these is
/// refused by `validate` and named.
#[test]
fn non_finite_floats_are_refused_for_every_kind_with_floats() {
    let mut checked = 0;
    for kind in EventKind::ALL {
        let mut e = sample(kind, 9);
        assert!(e.validate().is_ok(), "{kind:?} sample is valid");
        let Some(field) = spoil(&mut e) else { continue };
        match e.validate() {
            Err(Error::Invalid { field: f, .. }) if f == field => checked += 1,
            other => panic!("{kind:?}: expected {field} to be refused, got {other:?}"),
        }
    }
    assert_eq!(checked, 7, "every spoiled kind was checked");
}
