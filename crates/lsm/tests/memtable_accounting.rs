//! The memtable's byte count is what the flush policy and the engine's memory budget go
//! by, so it must follow the heap the memtable really takes, counted here by jemalloc.
//! One test in its own binary: another test allocating at the same time would be
//! counted too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_lsm::{Kind, Memtable};
use shapes::{appended_key, scattered_key};
use tikv_jemalloc_ctl::{epoch, stats};

#[path = "../examples/shapes/mod.rs"]
mod shapes;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated() -> usize {
    epoch::advance().unwrap();
    stats::allocated::read().unwrap()
}

/// The shapes `examples/memtable_footprint` measures (the accounts partition's
/// scattered keys, an instrument's ascending ones), each with an index entry's small
/// value and an event-sized one.
#[test]
fn accounted_bytes_follow_the_heap() {
    const N: u64 = 100_000;
    for (shape, key) in
        [("scattered", scattered_key as fn(u64) -> Vec<u8>), ("appended", appended_key)]
    {
        let keys: Vec<Vec<u8>> = (0..N).map(key).collect();
        for value_len in [10usize, 150] {
            let value = vec![1u8; value_len];
            let before = allocated();
            let m = Memtable::new();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k, i as u64 + 1, Kind::Put, &value);
            }
            let heap = allocated().saturating_sub(before) as f64;
            let ratio = heap / m.bytes() as f64;
            assert!(
                (0.8..1.25).contains(&ratio),
                "{shape}, {value_len}-byte values: heap {heap} bytes, accounted {}, ratio {ratio:.2}",
                m.bytes()
            );
        }
    }
}
