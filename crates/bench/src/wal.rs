//! `bourse-bench wal`: the WAL against the raw fdatasync floor and RocksDB's WAL.
//!
//! Cases (`BENCH.md`): `fdatasync_floor` (raw, 4 KiB writes, growing and pre-written
//! file), `append_buffered` (1 writer), `append_durable` (1, 4, 16, 64 writers x batches
//! of 1 and 64, 100-byte records; Bourse and `rocksdb`, interleaved), `replay`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use bourse_fs::RealFs;
use bourse_wal::{Durability, Entry, Lsn, Preallocate, Wal, WalOptions};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::{emit, histogram, median, record, Latency};

const SUITE: &str = "wal";
const RECORD_BYTES: usize = 100;

struct Cfg {
    quick: bool,
    runs: usize,
    run_time: Duration,
    floor_syncs: usize,
    replay_bytes: u64,
    segment_bytes: u64,
}

impl Cfg {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                runs: 3,
                run_time: Duration::from_millis(350),
                floor_syncs: 400,
                replay_bytes: 128 << 20,
                segment_bytes: 32 << 20,
            }
        } else {
            Self {
                quick,
                runs: 3,
                run_time: Duration::from_secs(3),
                floor_syncs: 5000,
                replay_bytes: 2 << 30,
                segment_bytes: 256 << 20,
            }
        }
    }
}

/// A sink of batches of equal-sized records, shared by the writer threads.
pub type Appender = Arc<dyn Fn(&[Vec<u8>]) -> anyhow::Result<()> + Send + Sync>;

/// Runs `writers` threads appending `batch`-record batches until `time` passes; returns
/// records per second and the per-call latency.
pub fn drive(
    writers: usize,
    batch: usize,
    time: Duration,
    append: &Appender,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(writers + 1));
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let (append, done, start) = (append.clone(), done.clone(), start.clone());
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let records: Vec<Vec<u8>> =
                    (0..batch).map(|i| vec![(t * 31 + i) as u8; RECORD_BYTES]).collect();
                let mut h = histogram();
                start.wait();
                let deadline = Instant::now() + time;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    append(&records)?;
                    record(&mut h, t0.elapsed());
                    n += batch as u64;
                }
                done.fetch_add(n, Ordering::Relaxed);
                Ok(h)
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut all = histogram();
    for h in handles {
        let h = h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        all.add(&h)?;
    }
    Ok((done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(), all))
}

fn open_wal(dir: &Path, cfg: &Cfg, pre: Preallocate) -> anyhow::Result<Arc<Wal>> {
    let opts =
        WalOptions { segment_bytes: cfg.segment_bytes, preallocate: pre, ..WalOptions::default() };
    let wal = Wal::open(RealFs::shared(), dir, opts)?;
    let t = Instant::now();
    while !wal.preallocation_ready() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Arc::new(wal))
}

fn bourse_appender(wal: Arc<Wal>, durability: Durability) -> Appender {
    Arc::new(move |records: &[Vec<u8>]| {
        let entries: Vec<Entry<'_>> =
            records.iter().map(|r| Entry { kind: 1, timestamp: 0, payload: r }).collect();
        wal.append_batch(&entries, durability)?;
        Ok(())
    })
}

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let cfg = Cfg::new(quick);
    eprintln!("wal suite ({} mode)", if cfg.quick { "quick" } else { "full" });
    let wanted = crate::report::wanted;
    // The durable cases compare against the floor's p99, so they need it measured.
    let floor_prewritten = if wanted("fdatasync_floor") || wanted("append_durable") {
        fdatasync_floor(root, &cfg)?
    } else {
        0.0
    };
    if wanted("append_buffered") {
        append_buffered(root, &cfg)?;
    }
    for writers in [1usize, 4, 16, 64] {
        for batch in [1usize, 64] {
            if !wanted("append_durable") {
                continue;
            }
            let segments: &[Preallocate] = if writers == 1 && batch == 1 {
                &[Preallocate::None, Preallocate::PreWrite]
            } else {
                &[Preallocate::PreWrite]
            };
            for pre in segments {
                append_durable(root, &cfg, writers, batch, *pre, floor_prewritten)?;
            }
        }
    }
    if wanted("replay") {
        replay(root, &cfg)?;
    }
    Ok(())
}

/// The raw floor: 4 KiB `pwrite` + `fdatasync`, on a growing and on a pre-written file.
/// Returns the pre-written p99 in microseconds.
fn fdatasync_floor(root: &Path, cfg: &Cfg) -> anyhow::Result<f64> {
    let mut prewritten_p99 = 0.0;
    for file in ["growing", "prewritten"] {
        let path = root.join(format!("floor-{file}"));
        let f =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
        let block = vec![0x5Au8; 4096];
        if file == "prewritten" {
            let zeros = vec![0u8; 1 << 20];
            let total = (cfg.floor_syncs as u64 * 4096).div_ceil(1 << 20);
            for i in 0..total {
                f.write_all_at(&zeros, i << 20)?;
            }
            f.sync_all()?;
        }
        let mut h = histogram();
        for i in 0..cfg.floor_syncs as u64 {
            let t0 = Instant::now();
            f.write_all_at(&block, i * 4096)?;
            f.sync_data()?;
            record(&mut h, t0.elapsed());
        }
        let lat = Latency::of(&h);
        lat.emit(SUITE, "fdatasync_floor", "raw", &json!({"bytes": 4096, "file": file}));
        eprintln!("  fdatasync floor ({file}): p50 {:.0} us, p99 {:.0} us", lat.p50, lat.p99);
        if file == "prewritten" {
            prewritten_p99 = lat.p99;
        }
        std::fs::remove_file(&path)?;
    }
    Ok(prewritten_p99)
}

fn append_buffered(root: &Path, cfg: &Cfg) -> anyhow::Result<()> {
    let params = json!({"writers": 1, "batch": 1, "record_bytes": RECORD_BYTES});
    let mut rates = Vec::new();
    let mut all = histogram();
    for run in 0..cfg.runs {
        let dir = root.join(format!("buffered-{run}"));
        let wal = open_wal(&dir, cfg, Preallocate::PreWrite)?;
        let (rate, h) =
            drive(1, 1, cfg.run_time, &bourse_appender(wal.clone(), Durability::Buffered))?;
        rates.push(rate);
        all.add(&h)?;
        drop(wal);
        std::fs::remove_dir_all(&dir)?;
    }
    let rate = median(rates);
    emit(SUITE, "append_buffered", "bourse", &params, "throughput", rate, "ops/s");
    let lat = Latency::of(&all);
    lat.emit(SUITE, "append_buffered", "bourse", &params);
    eprintln!("  append_buffered: {rate:.0} ops/s, p50 {:.2} us, p99 {:.2} us", lat.p50, lat.p99);
    Ok(())
}

/// Runs `make` `cfg.runs` times in fresh directories; returns median rate and merged
/// latency.
fn measure(
    root: &Path,
    name: &str,
    cfg: &Cfg,
    writers: usize,
    batch: usize,
    make: &dyn Fn(&Path) -> anyhow::Result<Appender>,
) -> anyhow::Result<(f64, Latency)> {
    let mut rates = Vec::new();
    let mut all = histogram();
    for run in 0..cfg.runs {
        let dir: PathBuf = root.join(format!("{name}-{run}"));
        let appender = make(&dir).with_context(|| format!("setting up {name}"))?;
        let (rate, h) = drive(writers, batch, cfg.run_time, &appender)?;
        drop(appender);
        rates.push(rate);
        all.add(&h)?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok((median(rates), Latency::of(&all)))
}

fn append_durable(
    root: &Path,
    cfg: &Cfg,
    writers: usize,
    batch: usize,
    pre: Preallocate,
    floor_p99: f64,
) -> anyhow::Result<()> {
    let segments = if pre == Preallocate::None { "growing" } else { "prewritten" };
    let params = json!({"writers": writers, "batch": batch, "record_bytes": RECORD_BYTES, "segments": segments});
    let (rate, lat) = measure(root, "durable", cfg, writers, batch, &|dir| {
        Ok(bourse_appender(open_wal(dir, cfg, pre)?, Durability::Durable))
    })?;
    emit(SUITE, "append_durable", "bourse", &params, "throughput", rate, "ops/s");
    lat.emit(SUITE, "append_durable", "bourse", &params);
    if floor_p99 > 0.0 {
        emit(
            SUITE,
            "append_durable",
            "bourse",
            &params,
            "p99_ratio_vs_floor",
            lat.p99 / floor_p99,
            "x",
        );
    }
    eprintln!(
        "  append_durable w={writers:<2} b={batch:<2} {segments:<10}: bourse {rate:>9.0} rec/s p99 {:>7.0} us",
        lat.p99
    );
    #[cfg(feature = "peers")]
    {
        let params = json!({"writers": writers, "batch": batch, "record_bytes": RECORD_BYTES});
        let (r_rate, r_lat) =
            measure(root, "rocksdb", cfg, writers, batch, &crate::rocks::appender)?;
        emit(SUITE, "append_durable", "rocksdb", &params, "throughput", r_rate, "ops/s");
        r_lat.emit(SUITE, "append_durable", "rocksdb", &params);
        emit(
            SUITE,
            "append_durable",
            "bourse",
            &params,
            "throughput_ratio_vs_rocksdb",
            rate / r_rate,
            "x",
        );
        emit(
            SUITE,
            "append_durable",
            "bourse",
            &params,
            "p99_ratio_vs_rocksdb",
            lat.p99 / r_lat.p99,
            "x",
        );
        eprintln!("  {:>45} rocksdb {r_rate:>9.0} rec/s p99 {:>7.0} us", "", r_lat.p99);
    }
    Ok(())
}

fn replay(root: &Path, cfg: &Cfg) -> anyhow::Result<()> {
    let dir = root.join("replay");
    let wal = open_wal(&dir, cfg, Preallocate::PreWrite)?;
    let records: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; RECORD_BYTES]).collect();
    let entries: Vec<Entry<'_>> =
        records.iter().map(|r| Entry { kind: 1, timestamp: 0, payload: r }).collect();
    let per_batch = (entries.len() * (RECORD_BYTES + 28)) as u64;
    for _ in 0..cfg.replay_bytes.div_ceil(per_batch) {
        wal.append_batch(&entries, Durability::Buffered)?;
    }
    wal.sync()?;
    let mut rates = Vec::new();
    for _ in 0..cfg.runs {
        let t0 = Instant::now();
        let mut reader = wal.read_from(Lsn(1))?;
        let mut bytes = 0u64;
        reader.for_each(|r| bytes += (r.payload.len() + 28) as u64)?;
        rates.push(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    let rate = median(rates);
    let params = json!({"bytes": cfg.replay_bytes, "record_bytes": RECORD_BYTES});
    emit(SUITE, "replay", "bourse", &params, "throughput", rate, "GB/s");
    eprintln!("  replay: {rate:.2} GB/s over {} MB (page cache warm)", cfg.replay_bytes >> 20);
    drop(wal);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
