//! `memory_floor` (raw): the time of one load from a random place in a working set of a
//! given size, when the next address depends on the load (a pointer chase). It is the
//! floor under every step of a search in a structure of that size that is not in the
//! cache: a memtable's B-tree descent, a filter's bit, a leaf's lock.
//!
//! The working set is an array of 64-byte lines, each holding the index of the next
//! line of one random cycle through all of them, so that no prefetcher can guess the
//! next address and every load waits for the one before. It is allocated like the
//! memtables' memory (the global allocator, the system's default page size), and every
//! line is written before the clock starts. The sizes: a core's share of the L2 cache,
//! a few MiB, a partition's memtable in the benchmarks (64 MiB) and all of them (the
//! memory budget the benchmarks give the memtables, 512 MiB).

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::emit;

/// One cache line: the index of the next line of the cycle, and padding.
type Line = [u64; 8];

/// Working-set sizes measured in quick mode (bytes).
const QUICK_BYTES: [usize; 2] = [256 << 10, 64 << 20];
/// Working-set sizes measured in full mode (bytes).
const FULL_BYTES: [usize; 4] = [256 << 10, 8 << 20, 64 << 20, 512 << 20];

/// Loads timed per size (after one untimed pass over a part of the cycle).
const LOADS: u64 = 4_000_000;

/// A random cycle through `n` lines: the lines in a shuffled order, each pointing to
/// the next, the last to the first.
fn cycle(n: usize, rng: &mut impl Rng) -> Vec<Line> {
    let mut order: Vec<u64> = (0..n as u64).collect();
    order.shuffle(rng);
    let mut lines = vec![[0u64; 8]; n];
    for w in 0..n {
        let (from, to) = (order[w], order[(w + 1) % n]);
        lines[from as usize][0] = to;
    }
    lines
}

/// Nanoseconds per dependent load over `lines`, from `loads` loads.
fn chase(lines: &[Line], loads: u64) -> f64 {
    let mut at = 0usize;
    // Untimed: brings what fits into the caches and the page tables into the TLB's reach.
    for _ in 0..lines.len().min(1 << 20) {
        at = lines[at][0] as usize;
    }
    let t = Instant::now();
    for _ in 0..loads {
        at = lines[at][0] as usize;
    }
    let ns = t.elapsed().as_nanos() as f64;
    std::hint::black_box(at);
    ns / loads as f64
}

/// Runs the case for `suite`: the result lines, and a line on stderr.
pub fn memory_floor(suite: &str, quick: bool) -> anyhow::Result<()> {
    if !crate::report::wanted("memory_floor") {
        return Ok(());
    }
    let sizes: &[usize] = if quick { &QUICK_BYTES } else { &FULL_BYTES };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut shown = Vec::new();
    for &bytes in sizes {
        let lines = cycle(bytes / std::mem::size_of::<Line>(), &mut rng);
        let ns = chase(&lines, if quick { LOADS / 4 } else { LOADS });
        emit(suite, "memory_floor", "raw", &json!({ "bytes": bytes }), "load_ns", ns, "ns");
        shown.push(format!("{} MiB {ns:.0} ns", bytes as f64 / f64::from(1u32 << 20)));
    }
    eprintln!("  memory floor (one dependent load at a random place): {}", shown.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_cycle_visits_every_line_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for n in [1, 2, 3, 64, 1000] {
            let lines = cycle(n, &mut rng);
            let mut seen = vec![false; n];
            let mut at = 0usize;
            for _ in 0..n {
                assert!(!seen[at], "line {at} of {n} visited twice");
                seen[at] = true;
                at = lines[at][0] as usize;
            }
            assert_eq!(at, 0, "the walk of {n} lines does not close");
            assert!(seen.iter().all(|&s| s));
        }
    }
}
