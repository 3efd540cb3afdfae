//! Encoded sizes: an event costs about its fields. The size table in
//! `docs/format-event.md` is checked against the encoder so it cannot go stale.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_model::samples::sample;
use bourse_model::{Event, EventKind, Extension};

fn doc_table() -> Vec<(String, usize, usize)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/format-event.md");
    let text = std::fs::read_to_string(path).expect("docs/format-event.md");
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | `kind` | number | binary bytes | JSON bytes |
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(3)?.parse().ok()?, cells.get(4)?.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_documented_sizes_are_the_encoded_sizes() {
    let table = doc_table();
    assert_eq!(table.len(), EventKind::ALL.len(), "one row per kind in docs/format-event.md");
    for kind in EventKind::ALL {
        let event = sample(kind, 7);
        let (binary, json) = (event.encode().unwrap().len(), event.to_json().len());
        let row = table
            .iter()
            .find(|(n, _, _)| n == kind.name())
            .unwrap_or_else(|| panic!("no row for {kind:?}"));
        assert_eq!(
            (row.1, row.2),
            (binary, json),
            "{}: update docs/format-event.md to {binary} / {json}",
            kind.name()
        );
    }
}

#[test]
fn size_follows_content_not_the_largest_kind() {
    let small = Event::Extension(Extension { kind: 1, data: vec![1; 10] }).encode().unwrap().len();
    let large =
        Event::Extension(Extension { kind: 1, data: vec![1; 1000] }).encode().unwrap().len();
    assert_eq!(large - small, 990 + 1, "one more length byte, then the payload");
    let cancel = sample(EventKind::CancelRequested, 7).encode().unwrap().len();
    let tick = sample(EventKind::Tick, 7).encode().unwrap().len();
    assert!(cancel * 5 < tick, "a cancel ({cancel} B) is a fraction of a tick ({tick} B)");
}
