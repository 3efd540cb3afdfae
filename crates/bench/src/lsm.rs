//! `bourse-bench lsm`: the LSM tree against RocksDB and fjall (no WAL on any side, or an
//! unsynced one: the engine owns durability), same key/value distributions, same memtable
//! size, bloom bits, block size, no compression.
//!
//! Cases (`BENCH.md`): `fillseq`, `fillrandom`, `overwrite` (with `space_amp` and
//! `write_amp`), `readrandom`, `readmissing`, `seekrandom` (seek + next 100), and
//! `readmemtable` (gets from a store small enough to stay in its memtable). Keys are 16
//! bytes, values 100 bytes. Writes run one system after another; the read cases run on
//! all stores kept open, alternating rounds between systems.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bourse_fs::RealFs;
use bourse_lsm::{Tree, TreeOptions, MAX_SEQ};
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::report::{emit, histogram, median, record, Latency};

const SUITE: &str = "lsm";
const VALUE_BYTES: usize = 100;
/// Shared by every system measured.
pub const MEMTABLE_BYTES: usize = 64 << 20;

/// The operations the suite needs from a key-value store.
pub trait Kv {
    /// Who this is (`bourse`, `rocksdb`).
    fn system(&self) -> &'static str;
    /// Writes one pair.
    fn put(&self, k: &[u8], v: &[u8]) -> anyhow::Result<()>;
    /// Reads one key.
    fn get(&self, k: &[u8]) -> anyhow::Result<Option<Vec<u8>>>;
    /// Seeks to `k` and reads up to `n` pairs; returns how many.
    fn seek_next(&self, k: &[u8], n: usize) -> anyhow::Result<usize>;
    /// Flushes and waits until no compaction is due.
    fn settle(&self) -> anyhow::Result<()>;
    /// Write amplification since open, if the store reports it.
    fn write_amp(&self) -> Option<f64>;
}

struct Bourse {
    tree: Tree,
    seq: AtomicU64,
}

impl Kv for Bourse {
    fn system(&self) -> &'static str {
        "bourse"
    }
    fn put(&self, k: &[u8], v: &[u8]) -> anyhow::Result<()> {
        Ok(self.tree.put(k, v, self.seq.fetch_add(1, Ordering::Relaxed) + 1)?)
    }
    fn get(&self, k: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.tree.get(k, MAX_SEQ)?)
    }
    fn seek_next(&self, k: &[u8], n: usize) -> anyhow::Result<usize> {
        let mut count = 0;
        for pair in self
            .tree
            .range(std::ops::Bound::Included(k), std::ops::Bound::Unbounded, MAX_SEQ)
            .take(n)
        {
            pair?;
            count += 1;
        }
        Ok(count)
    }
    fn settle(&self) -> anyhow::Result<()> {
        self.tree.flush()?;
        self.tree.maintain()?;
        Ok(())
    }
    fn write_amp(&self) -> Option<f64> {
        Some(self.tree.stats().write_amp)
    }
}

fn open_bourse(dir: &Path) -> anyhow::Result<Box<dyn Kv>> {
    let opts = TreeOptions { memtable_bytes: MEMTABLE_BYTES, ..TreeOptions::default() };
    Ok(Box::new(Bourse { tree: Tree::open(RealFs::shared(), dir, opts)?, seq: AtomicU64::new(0) }))
}

type Opener = fn(&Path) -> anyhow::Result<Box<dyn Kv>>;

fn systems() -> Vec<Opener> {
    #[allow(unused_mut)]
    let mut v: Vec<Opener> = vec![open_bourse];
    #[cfg(feature = "peers")]
    v.push(crate::rocks::open_kv);
    #[cfg(feature = "peers")]
    v.push(crate::fjall_peer::open_kv);
    v
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(b"user0000");
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Bytes of every file under `dir`, subdirectories included (fjall keeps its tables in
/// them).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Per-system results of one case, for the ratio lines.
struct Result1 {
    system: &'static str,
    rate: f64,
    p99: f64,
}

fn ratios(case: &str, params: &serde_json::Value, results: &[Result1]) {
    let Some(ours) = results.iter().find(|r| r.system == "bourse") else { return };
    for peer in results.iter().filter(|r| r.system != "bourse") {
        emit(
            SUITE,
            case,
            "bourse",
            params,
            &format!("throughput_ratio_vs_{}", peer.system),
            ours.rate / peer.rate,
            "x",
        );
        emit(
            SUITE,
            case,
            "bourse",
            params,
            &format!("p99_ratio_vs_{}", peer.system),
            ours.p99 / peer.p99,
            "x",
        );
    }
}

fn report(
    case: &str,
    params: &serde_json::Value,
    system: &'static str,
    rate: f64,
    lat: Latency,
) -> Result1 {
    emit(SUITE, case, system, params, "throughput", rate, "ops/s");
    lat.emit(SUITE, case, system, params);
    eprintln!(
        "  {case:<12} {system:<8} {rate:>10.0} ops/s  p50 {:>7.2} us  p99 {:>7.2} us",
        lat.p50, lat.p99
    );
    Result1 { system, rate, p99: lat.p99 }
}

/// Writes `order` into `kv`, timing each put.
fn fill(kv: &dyn Kv, order: &[u64], value: &[u8]) -> anyhow::Result<(f64, Latency)> {
    let mut h = histogram();
    let t0 = Instant::now();
    for i in order {
        let t = Instant::now();
        kv.put(&key(*i), value)?;
        record(&mut h, t.elapsed());
    }
    Ok((order.len() as f64 / t0.elapsed().as_secs_f64(), Latency::of(&h)))
}

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let n: u64 = if quick { 1_000_000 } else { 10_000_000 };
    let reads: usize = if quick { 200_000 } else { 2_000_000 };
    let runs = 3;
    eprintln!(
        "lsm suite ({} mode): {n} keys of 16 bytes, values of {VALUE_BYTES} bytes",
        if quick { "quick" } else { "full" }
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let value: Vec<u8> = (0..VALUE_BYTES).map(|_| rng.gen()).collect();
    let seq_order: Vec<u64> = (0..n).collect();
    let mut random_order = seq_order.clone();
    random_order.shuffle(&mut rng);
    let params = json!({"keys": n, "key_bytes": 16, "value_bytes": VALUE_BYTES});

    let mut fillseq = Vec::new();
    for open in systems() {
        let dir = root.join("lsm-fillseq");
        let kv = open(&dir)?;
        let (rate, lat) = fill(&*kv, &seq_order, &value)?;
        fillseq.push(report("fillseq", &params, kv.system(), rate, lat));
        drop(kv);
        std::fs::remove_dir_all(&dir)?;
    }
    ratios("fillseq", &params, &fillseq);

    let mut per_case: Vec<(&str, Vec<Result1>)> = vec![
        ("fillrandom", vec![]),
        ("overwrite", vec![]),
        ("readrandom", vec![]),
        ("readmissing", vec![]),
        ("seekrandom", vec![]),
    ];
    // Fill and overwrite each system in turn, keep them all open, then interleave the
    // read rounds across systems so a slow minute on a shared machine hits every system
    // alike instead of one.
    let mut stores = Vec::new();
    for (i, open) in systems().into_iter().enumerate() {
        let dir = root.join(format!("lsm-random-{i}"));
        let kv = open(&dir)?;
        let sys = kv.system();
        let (rate, lat) = fill(&*kv, &random_order, &value)?;
        per_case[0].1.push(report("fillrandom", &params, sys, rate, lat));
        let mut over = random_order.clone();
        over.shuffle(&mut rng);
        let (rate, lat) = fill(&*kv, &over, &value)?;
        per_case[1].1.push(report("overwrite", &params, sys, rate, lat));
        kv.settle()?;
        let logical = n * (16 + VALUE_BYTES as u64);
        let space_amp = dir_bytes(&dir) as f64 / logical as f64;
        emit(SUITE, "overwrite", sys, &params, "space_amp", space_amp, "x");
        if let Some(w) = kv.write_amp() {
            emit(SUITE, "overwrite", sys, &params, "write_amp", w, "x");
        }
        eprintln!(
            "  {:<12} {sys:<8} space amplification {space_amp:.2} after settling",
            "overwrite"
        );
        stores.push((kv, dir));
    }
    for (slot, case) in [(2usize, "readrandom"), (3, "readmissing"), (4, "seekrandom")] {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); stores.len()];
        let mut hists: Vec<_> = stores.iter().map(|_| histogram()).collect();
        for _ in 0..runs {
            for (i, (kv, _)) in stores.iter().enumerate() {
                let (rate, h) = match case {
                    "seekrandom" => seek_case(&**kv, n, reads / 20, 1, &mut rng)?,
                    _ => read_case(&**kv, n, reads, 1, case == "readrandom", &mut rng)?,
                };
                rates[i].push(rate);
                hists[i].add(h).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let p = if case == "seekrandom" { json!({"keys": n, "next": 100}) } else { params.clone() };
        for (i, (kv, _)) in stores.iter().enumerate() {
            let rate = median(std::mem::take(&mut rates[i]));
            per_case[slot].1.push(report(case, &p, kv.system(), rate, Latency::of(&hists[i])));
        }
    }
    for (kv, dir) in stores {
        drop(kv);
        std::fs::remove_dir_all(&dir)?;
    }
    // Memtable-resident gets: 200 k pairs (about 23 MB) stay in a 64 MiB memtable.
    let small: u64 = 200_000;
    let mut order: Vec<u64> = (0..small).collect();
    order.shuffle(&mut rng);
    let mut resident = Vec::new();
    let mem_params = json!({"keys": small, "key_bytes": 16, "value_bytes": VALUE_BYTES});
    for open in systems() {
        let dir = root.join("lsm-memtable");
        let kv = open(&dir)?;
        fill(&*kv, &order, &value)?;
        let (rate, h) = read_case(&*kv, small, reads, runs, true, &mut rng)?;
        resident.push(report("readmemtable", &mem_params, kv.system(), rate, Latency::of(&h)));
        drop(kv);
        std::fs::remove_dir_all(&dir)?;
    }
    ratios("readmemtable", &mem_params, &resident);
    for (case, results) in &per_case {
        let p =
            if *case == "seekrandom" { json!({"keys": n, "next": 100}) } else { params.clone() };
        ratios(case, &p, results);
    }
    Ok(())
}

/// Runs `runs` rounds, each over fresh `inputs()`, timing `op` on every input; returns
/// the median rate and the latency over all rounds.
fn timed_runs<T>(
    runs: usize,
    mut inputs: impl FnMut() -> Vec<T>,
    mut op: impl FnMut(&T) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let mut rates = Vec::new();
    let mut h = histogram();
    for _ in 0..runs {
        let batch = inputs();
        let t0 = Instant::now();
        for x in &batch {
            let t = Instant::now();
            op(x)?;
            record(&mut h, t.elapsed());
        }
        rates.push(batch.len() as f64 / t0.elapsed().as_secs_f64());
    }
    Ok((median(rates), h))
}

fn read_case(
    kv: &dyn Kv,
    n: u64,
    reads: usize,
    runs: usize,
    present: bool,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let keys = || -> Vec<Vec<u8>> {
        (0..reads)
            .map(|_| {
                let mut k = key(rng.gen_range(0..n)).to_vec();
                if !present {
                    // Sorts between two written keys, inside every table's key range, so
                    // only the bloom filter (or a block read) can answer.
                    k.push(0);
                }
                k
            })
            .collect()
    };
    timed_runs(runs, keys, |k| {
        let got = kv.get(k)?;
        let what = if present { "present" } else { "missing" };
        anyhow::ensure!(got.is_some() == present, "{}: wrong answer for a {what} key", kv.system());
        Ok(())
    })
}

fn seek_case(
    kv: &dyn Kv,
    n: u64,
    seeks: usize,
    runs: usize,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let starts = || -> Vec<[u8; 16]> {
        (0..seeks).map(|_| key(rng.gen_range(0..n.saturating_sub(100).max(1)))).collect()
    };
    timed_runs(runs, starts, |k| {
        let got = kv.seek_next(k, 100)?;
        anyhow::ensure!(got == 100, "{}: seek returned {got} pairs", kv.system());
        Ok(())
    })
}
