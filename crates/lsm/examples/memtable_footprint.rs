//! Compares what a memtable says it holds ([`Memtable::bytes`], what the flush policy
//! and the engine's memory budget go by) with the heap it really takes, counted by the
//! allocator, in the shapes an exchange's partitions produce:
//!
//! ```text
//! cargo run --release -p bourse-lsm --example memtable_footprint [VERSIONS]
//! ```
//!
//! - `scattered`: the accounts partition's keys (10,000 users picked by a hash).
//! - `appended`: an instrument partition's keys, in ascending order.
//! - `two-tails`: two such families at once, the lower one appending below the other.
//!
//! Heap is jemalloc's `stats.allocated` (live allocations in their size classes).
//! Each with small values (an index entry's order id) and event-sized ones. A ratio
//! above 1 means the memtable holds more memory than it accounts for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_lsm::{Kind, Memtable};
use shapes::{appended_key, scattered_key};
use tikv_jemalloc_ctl::{epoch, stats};

mod shapes;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes the program has allocated and not freed, in jemalloc's size classes.
fn allocated() -> usize {
    epoch::advance().unwrap();
    stats::allocated::read().unwrap()
}

/// Two families appending at once, the lower one below the upper's versions (an
/// instrument's ticks below its trades): B-tree leaves until their streaks split them.
fn two_families_key(i: u64) -> Vec<u8> {
    let mut k = appended_key(i / 2);
    k[0] = if i.is_multiple_of(2) { b'K' } else { b'T' };
    k
}

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(600_000, |a| a.parse().unwrap());
    println!("{n} versions per memtable");
    println!("{:<10} {:>6} {:>12} {:>12} {:>7}", "shape", "value", "accounted", "heap", "ratio");
    for (shape, key) in [
        ("scattered", scattered_key as fn(u64) -> Vec<u8>),
        ("appended", appended_key as fn(u64) -> Vec<u8>),
        ("two-tails", two_families_key as fn(u64) -> Vec<u8>),
    ] {
        let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
        for value_len in [10usize, 150] {
            let value = vec![7u8; value_len];
            let before = allocated();
            let m = Memtable::new();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k, i as u64 + 1, Kind::Put, &value);
            }
            let heap = allocated().saturating_sub(before) as f64;
            let accounted = m.bytes() as f64;
            println!(
                "{shape:<10} {value_len:>6} {:>10.1}MB {:>10.1}MB {:>7.2}",
                accounted / 1e6,
                heap / 1e6,
                heap / accounted
            );
            drop(m);
        }
    }
}
