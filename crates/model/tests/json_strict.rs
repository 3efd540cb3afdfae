//! The JSON form is strict: every malformed document is refused with an error that
//! names the offending type or field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_model::{Error, Event, EventKind};

fn err(text: &str) -> String {
    match Event::from_json(text) {
        Err(e) => e.to_string(),
        Ok(ev) => panic!("accepted {text}: {ev:?}"),
    }
}

const TRADE: &str = r#"{"type":"trade_executed","seqno":1,"user_id":"a1","trade_id":"o1|1","order_id":"o1",
  "instrument_id":"SHFE.cu2512","direction":"BUY","offset":"OPEN","volume":2,"price":70010.0,
  "trade_date_time":1763800000000000000}"#;

#[test]
fn a_valid_trade_parses_with_defaults_for_optional_fields() {
    let Event::TradeExecuted(t) = Event::from_json(TRADE).unwrap() else { panic!("wrong kind") };
    assert_eq!(t.instrument_id.exchange(), "SHFE");
    assert_eq!(t.instrument_id.symbol(), "cu2512");
    assert_eq!((t.volume, t.commission, t.exchange_trade_id.as_str()), (2, 0.0, ""));
}

#[test]
fn an_unknown_type_is_named() {
    let e = err(r#"{"type":"trade_exploded","volume":1}"#);
    assert!(e.contains("trade_exploded"), "{e}");
}

#[test]
fn a_missing_type_is_reported() {
    let e = err(r#"{"volume":1}"#);
    assert!(e.contains("type"), "{e}");
}

#[test]
fn a_field_of_the_wrong_type_is_named() {
    let bad = TRADE.replace(r#""price":70010.0"#, r#""price":"cheap""#);
    let e = err(&bad);
    assert!(e.contains("price") && e.contains("invalid type"), "{e}");
    let bad = TRADE.replace(r#""direction":"BUY""#, r#""direction":"UP""#);
    let e = err(&bad);
    assert!(e.contains("direction") && e.contains("UP"), "{e}");
}

#[test]
fn a_nested_field_of_the_wrong_type_is_named_with_its_path() {
    let text = r#"{"type":"book_snapshot","instrument_id":"DCE.m2601","datetime":1,
      "bids":[{"price":1.0,"volume":1},{"price":2.0,"volume":"x"}],"asks":[]}"#;
    let e = err(text);
    assert!(e.contains("bids[1].volume"), "{e}");
}

#[test]
fn an_unknown_field_is_named() {
    let bad = TRADE.replace(r#""seqno":1,"#, r#""seqno":1,"colour":"red","#);
    let e = err(&bad);
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn a_malformed_instrument_id_is_refused() {
    for ins in ["cu2512", "shfe.cu2512", "SHFE.", ".cu2512", "SHFE.cu/2512"] {
        let bad = TRADE.replace("SHFE.cu2512", ins);
        let e = err(&bad);
        assert!(e.contains("instrument_id") && e.contains("EXCH.ins"), "{ins}: {e}");
    }
}

#[test]
fn limits_and_identities_are_checked() {
    let e = Event::from_json(&TRADE.replace(r#""user_id":"a1""#, r#""user_id":"""#)).unwrap_err();
    assert!(matches!(e, Error::Invalid { field: "user_id", .. }), "{e}");
    let order = r#"{"type":"order_requested","user_id":"a","order_id":"o","instrument_id":"SHFE.cu2512",
      "direction":"BUY","offset":"OPEN","volume":0,"price_type":"LIMIT","limit_price":1.0,
      "volume_condition":"ANY","time_condition":"GFD"}"#;
    assert!(matches!(Event::from_json(order), Err(Error::Invalid { field: "volume", .. })));
    let transfer = r#"{"type":"transfer","user_id":"a","kind":"DEPOSIT","currency":"CNY","amount":-5,"datetime":1}"#;
    assert!(matches!(Event::from_json(transfer), Err(Error::Invalid { field: "amount", .. })));
    let levels: Vec<String> =
        (0..1001).map(|i| format!(r#"{{"price":{i}.0,"volume":1}}"#)).collect();
    let book = format!(
        r#"{{"type":"book_snapshot","instrument_id":"DCE.m2601","datetime":1,"bids":[{}],"asks":[]}}"#,
        levels.join(",")
    );
    assert!(matches!(Event::from_json(&book), Err(Error::Invalid { field: "bids", .. })));
}

#[test]
fn malformed_json_is_refused() {
    for text in ["", "{", "[]", "null", r#"{"type":1}"#, &TRADE[..TRADE.len() - 1]] {
        assert!(Event::from_json(text).is_err(), "{text:?}");
    }
}

#[test]
fn every_kind_has_a_json_name_matching_its_type_tag() {
    for kind in EventKind::ALL {
        let json = bourse_model::samples::sample(kind, 1).to_json();
        assert!(json.starts_with(&format!(r#"{{"type":"{}""#, kind.name())), "{json}");
        assert_eq!(EventKind::from_u16(kind.as_u16()), Some(kind));
    }
    assert_eq!(EventKind::from_u16(0), None);
    assert_eq!(EventKind::from_u16(19), None);
}
