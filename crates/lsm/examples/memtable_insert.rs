//! Times memtable inserts in the two shapes an exchange's partitions produce, for A/B
//! runs of memtable changes (a benchmark harness, not a test):
//!
//! ```text
//! cargo run --release -p bourse-lsm --example memtable_insert [VERSIONS] [ROUNDS]
//! ```
//!
//! - `scattered`: the accounts partition's shape. Keys `tag, len, user, len, id` of
//!   10,000 users picked by a hash, so each insert lands at a random position (an
//!   order's record, its by-time and open entries).
//! - `appended`: an instrument partition's shape. Keys `tag, time, lsn` in ascending
//!   order (ticks, trades, book deltas).
//! - `lookups`: a point lookup of a key not there (a new order id), then of one there,
//!   in the `scattered` table (with `FILTER=1`, one with a key filter, as the engine's
//!   accounts partition has).
//!
//! Each round fills a fresh memtable with `VERSIONS` versions (default 600,000) and
//! prints nanoseconds per operation; the median round is printed last.

use std::time::Instant;

use bourse_lsm::{Kind, Memtable};
use shapes::{appended_key, scattered_key};

mod shapes;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A fresh memtable holding `keys` (each at its own sequence), and the nanoseconds an
/// insert took on average.
fn fill(keys: &[Vec<u8>], value: &[u8], filtered: bool) -> (Memtable, f64) {
    let m = if filtered { Memtable::with_filter(keys.len()) } else { Memtable::new() };
    let t = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        m.insert(k, i as u64 + 1, Kind::Put, value);
    }
    let ns = t.elapsed().as_nanos() as f64 / keys.len().max(1) as f64;
    (m, ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let versions = args.first().copied().unwrap_or(600_000);
    let rounds = args.get(1).copied().unwrap_or(5);
    let value = vec![7u8; 150];
    // `FILTER=1`: the scattered table gets a key filter (as the engine's accounts).
    let filtered = std::env::var_os("FILTER").is_some();
    let (mut sc, mut ap, mut miss, mut hit) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let keys: Vec<Vec<u8>> = (0..versions).map(scattered_key).collect();
        let (m, s) = fill(&keys, &value, filtered);
        let probes = versions.min(200_000);
        let t = Instant::now();
        let mut found = 0usize;
        for i in 0..probes {
            found += usize::from(m.get(&scattered_key(versions + i), u64::MAX).is_some());
        }
        let g_miss = t.elapsed().as_nanos() as f64 / probes as f64;
        let t = Instant::now();
        for i in 0..probes {
            let k = &keys[(i.wrapping_mul(7919) % versions) as usize];
            found += usize::from(m.get(k, u64::MAX).is_some());
        }
        let g_hit = t.elapsed().as_nanos() as f64 / probes as f64;
        assert_eq!(found as u64, probes, "every stored key found, no new one");
        drop(m);
        let keys: Vec<Vec<u8>> = (0..versions).map(appended_key).collect();
        let (m, a) = fill(&keys, &value, false);
        assert_eq!(m.len() as u64, versions);
        println!(
            "round {round}: scattered {s:.0} ns/insert, appended {a:.0} ns/insert, \
             lookup miss {g_miss:.0} ns (building its key included), hit {g_hit:.0} ns"
        );
        sc.push(s);
        ap.push(a);
        miss.push(g_miss);
        hit.push(g_hit);
    }
    println!(
        "median: scattered {:.0} ns/insert, appended {:.0} ns/insert, lookup miss {:.0} ns, \
         hit {:.0} ns ({versions} versions)",
        median(sc),
        median(ap),
        median(miss),
        median(hit)
    );
}
