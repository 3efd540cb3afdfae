//! A fixed amount of submit work, for counting it with `perf stat` or profiling it
//! with `perf record`:
//!
//! ```text
//! cargo build --release -p bourse-engine --example submit_loop
//! perf stat -e task-clock target/release/examples/submit_loop EVENTS BATCH
//! ```
//!
//! (`-e instructions` swings less with a shared machine's load than any time does,
//! where the machine has hardware counters; the VMs these docs were measured on have
//! none, and task-clock, the CPU time, is the next best.)
//!
//! It builds `EVENTS` events of the exchange mix (50 instruments, 10,000 accounts, as
//! `bourse-bench engine` does) in memory, then submits them at `Buffered` in batches
//! of `BATCH` to an engine in a temporary directory, and prints the time the submits
//! took, and the submitting thread's context switches. Run it with `EVENTS` = 0 as
//! well: the difference is the submits' share. `MEMTABLE_MB` and `MAINT_THREADS`
//! override the memtable size and the maintenance threads, `ACCT_MEMTABLE_MB` the
//! accounts partition's memtable alone; `PREALLOCATE=none` and `MAP_APPENDS=0` turn off
//! the WAL's pre-written segments and appends through a map, `WAL_WRITEBACK_BYTES` sets
//! how often the WAL starts writeback (0: never), `SPARE_START_PERCENT` how full the
//! active segment is when the next spare's pre-write starts (0: at once).
//! `SEGMENT_MB` sets the WAL's segment size. `ONLY=Tick,BookDelta` keeps only the events
//! of the kinds named (of the `EVENTS` built); `WARMUP=N` submits the first `N` of them
//! before the clock starts (the rest are timed).
//! `BY_KIND=1` prints each event kind's submit latencies (by a batch's first event),
//! `SLOW_BY_KIND=NS` how many of each kind took over `NS`, `SLOWEST=1` the slowest,
//! `HIST=1` the submits and their share of the time by latency band, `STALLS=1` the
//! engine's state after each submit over 1 ms, `TREES=1` each partition's bytes written
//! and write amplification at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bourse_engine::layout::PartitionId;
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::exchange_event;
use bourse_model::Event;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (events, batch) =
        (args.first().copied().unwrap_or(1 << 20), args.get(1).copied().unwrap_or(64));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let mut all: Vec<Event> = (0..events).map(|n| exchange_event(n, now)).collect();
    // `ONLY=Tick,BookDelta`: only the events of those kinds (as `BY_KIND` names them).
    if let Some(only) = std::env::var_os("ONLY").and_then(|v| v.into_string().ok()) {
        let kinds: Vec<&str> = only.split(',').collect();
        all.retain(|e| kinds.contains(&format!("{:?}", e.kind()).as_str()));
        assert!(
            events == 0 || !all.is_empty(),
            "ONLY={only}: none of the {events} events is of those kinds (names as BY_KIND prints them)"
        );
    }
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| ".".into())).unwrap();
    // `MEMTABLE_MB` sets each partition's memtable size (64 MiB, as the bench, unless set).
    let mb: usize = std::env::var("MEMTABLE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let mut opts = EngineOptions {
        memtable_bytes: mb << 20,
        memtable_budget_bytes: (mb << 20) * 8,
        ..EngineOptions::default()
    };
    // `SEGMENT_MB` sets the WAL's segment size (256 MiB, as the bench, unless set).
    opts.wal.segment_bytes =
        std::env::var("SEGMENT_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256) << 20;
    // `ACCT_MEMTABLE_MB` sets the accounts partition's memtable apart.
    if let Some(n) = std::env::var("ACCT_MEMTABLE_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        opts.accounts_memtable_bytes = Some(n << 20);
    }
    // `MAINT_THREADS` sets the maintenance threads (the engine's default unless set).
    if let Some(n) = std::env::var("MAINT_THREADS").ok().and_then(|v| v.parse().ok()) {
        opts.maintenance_threads = n;
    }
    // `APPLY_THREADS` sets the apply threads (the engine's default unless set).
    if let Some(n) = std::env::var("APPLY_THREADS").ok().and_then(|v| v.parse().ok()) {
        opts.apply_threads = n;
    }
    // Segments are pre-written, as the bench's (`PREALLOCATE=none`: they grow instead),
    // and appended to through a map (`MAP_APPENDS=0`: with `pwrite`).
    if std::env::var("PREALLOCATE").is_ok_and(|v| v == "none") {
        opts.wal.preallocate = bourse_wal::Preallocate::None;
    }
    opts.wal.map_appends = std::env::var("MAP_APPENDS").map_or(true, |v| v != "0");
    // `WAL_WRITEBACK_BYTES` sets `wal.writeback_bytes` (0: off).
    if let Some(n) = std::env::var("WAL_WRITEBACK_BYTES").ok().and_then(|v| v.parse().ok()) {
        opts.wal.writeback_bytes = n;
    }
    if let Some(n) = std::env::var("SPARE_START_PERCENT").ok().and_then(|v| v.parse().ok()) {
        opts.wal.spare_start_percent = n;
    }
    let engine = Engine::open(dir.path(), opts).unwrap();
    // `WARMUP=N`: the first N events go in before the clock starts. Each instrument's
    // first event creates its partition, with `fsync`s on the submit path: about 2.5 ms
    // each, and more when a spare pre-write runs (`SPARE_START_PERCENT=0` starts one at
    // open; docs/format-wal.md).
    let warm: usize = std::env::var("WARMUP").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (warm, all) = all.split_at(warm.min(all.len()));
    for chunk in warm.chunks(batch.max(1) as usize) {
        engine.submit(chunk, Durability::Buffered).unwrap();
    }
    let events = all.len();
    let mut took = Vec::with_capacity(all.len() / batch.max(1) as usize + 1);
    let switches_before = switches();
    let t = Instant::now();
    // `STALLS=1`: the engine's state after each submit over 1 ms (printed at the end).
    let stalls = std::env::var_os("STALLS").is_some();
    let mut stalled = Vec::new();
    for chunk in all.chunks(batch.max(1) as usize) {
        let s = Instant::now();
        engine.submit(chunk, Durability::Buffered).unwrap();
        let ns = s.elapsed().as_nanos() as u64;
        if stalls && ns > 1_000_000 {
            stalled.push((took.len(), ns, stall_state(&engine)));
        }
        took.push(ns);
    }
    let secs = t.elapsed().as_secs_f64();
    let switches_after = switches();
    eprintln!(
        "{events} events in batches of {batch}: {secs:.3} s, {:.0} events/s",
        events as f64 / secs.max(1e-9)
    );
    eprintln!(
        "submitting thread: {} voluntary, {} involuntary context switches",
        switches_after.0 - switches_before.0,
        switches_after.1 - switches_before.1
    );
    // Where the slowest submits were, and what they cost together.
    let mut order: Vec<usize> = (0..took.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(took[i]));
    let mut sorted = took.clone();
    sorted.sort_unstable();
    let pct = |p: f64| {
        let at = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
        sorted.get(at).copied().unwrap_or(0)
    };
    eprintln!(
        "submit p50 {} ns, p99 {} ns, p99.9 {} ns; slowest 1% took {:.1}% of the time",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        100.0 * order.iter().take(took.len() / 100).map(|&i| took[i]).sum::<u64>() as f64
            / took.iter().sum::<u64>().max(1) as f64
    );
    if let Some(kinds) = std::env::var_os("SLOW_BY_KIND").and_then(|v| v.into_string().ok()) {
        // Submits over the given ns, by the kind of their first event, against all.
        let over: u64 = kinds.parse().unwrap();
        let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for (i, chunk) in all.chunks(batch.max(1) as usize).enumerate() {
            let e = by.entry(format!("{:?}", chunk[0].kind())).or_default();
            e.0 += 1;
            e.1 += u64::from(took[i] > over);
        }
        for (k, (n, slow)) in by {
            eprintln!(
                "  {k:<16} {n:>8} submits, {slow:>6} over {over} ns ({:.2}%)",
                100.0 * slow as f64 / n as f64
            );
        }
        let mut windows = vec![0u32; took.len() / 10_000 + 1];
        for (i, &ns) in took.iter().enumerate() {
            windows[i / 10_000] += u32::from(ns > over);
        }
        eprintln!("  slow per 10,000 submits, in order: {windows:?}");
    }
    if std::env::var_os("BY_KIND").is_some() {
        // Each kind's submits (by their first event): how many, p50, p99, mean.
        let mut by: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for (i, chunk) in all.chunks(batch.max(1) as usize).enumerate() {
            by.entry(format!("{:?}", chunk[0].kind())).or_default().push(took[i]);
        }
        for (k, mut t) in by {
            t.sort_unstable();
            let at = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
            let mean = t.iter().sum::<u64>() / t.len() as u64;
            eprintln!(
                "  {k:<16} {:>8} submits: p50 {:>6} ns, p99 {:>7} ns, mean {mean:>6} ns",
                t.len(),
                at(0.5),
                at(0.99)
            );
        }
    }
    if std::env::var_os("HIST").is_some() {
        // How many submits, and what share of the time, each latency band holds.
        let bands = [2_000u64, 5_000, 20_000, 100_000, 1_000_000, u64::MAX];
        let total = took.iter().sum::<u64>().max(1) as f64;
        let mut low = 0;
        for high in bands {
            let (n, sum) = took
                .iter()
                .filter(|&&t| t >= low && t < high)
                .fold((0u64, 0u64), |(n, s), &t| (n + 1, s + t));
            eprintln!(
                "  {low:>9} ns up to {high:>20} ns: {n:>8} submits, {:5.1}% of the time",
                100.0 * sum as f64 / total
            );
            low = high;
        }
    }
    if std::env::var_os("SLOWEST").is_some() {
        for &i in order.iter().take(40) {
            eprintln!("  submit {i}: {} ns", took[i]);
        }
    }
    for (i, ns, state) in stalled {
        eprintln!("  stall: submit {i} took {:.1} ms; then {state}", ns as f64 / 1e6);
    }
    if std::env::var_os("TREES").is_some() {
        // Where the maintenance threads' work went: bytes written by users and to
        // tables, per partition (instruments summed), and the tables per level.
        let st = engine.stats();
        let mut inst = (0u64, 0f64, 0usize);
        for p in &st.partitions {
            let t = &p.tree;
            let tables = t.tables_per_level.iter().sum::<usize>();
            if matches!(p.id, PartitionId::Instrument(_)) {
                inst = (
                    inst.0 + t.user_bytes,
                    inst.1 + t.write_amp * t.user_bytes as f64,
                    inst.2 + tables,
                );
            } else {
                eprintln!(
                    "  {}: {} MiB written, write amplification {:.2}, tables per level {:?}",
                    p.id,
                    t.user_bytes >> 20,
                    t.write_amp,
                    t.tables_per_level
                );
            }
        }
        eprintln!(
            "  instruments: {} MiB written, write amplification {:.2}, {} tables",
            inst.0 >> 20,
            inst.1 / (inst.0.max(1) as f64),
            inst.2
        );
    }
    // Exit without freeing the memtables, which is not what is measured.
    std::mem::forget(engine);
}

/// What a stall may have waited for: WAL syncs and rotations so far, all memtables'
/// bytes, the largest partition's memtable and its level-0 tables.
fn stall_state(engine: &Engine) -> String {
    let st = engine.stats();
    let total: usize = st.partitions.iter().map(|p| p.memtable_bytes).sum();
    let big = st.partitions.iter().max_by_key(|p| p.memtable_bytes);
    format!(
        "WAL syncs {} rotations {}, memtables {} MiB, largest {} ({} MiB, L0 tables {})",
        st.wal.syncs,
        st.wal.rotations,
        total >> 20,
        big.map_or(String::new(), |p| p.id.to_string()),
        big.map_or(0, |p| p.memtable_bytes >> 20),
        big.map_or(0, |p| p.tree.tables_per_level.first().copied().unwrap_or(0)),
    )
}

/// This thread's (voluntary, involuntary) context switches so far, from `/proc`.
fn switches() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("voluntary_ctxt_switches:"), get("nonvoluntary_ctxt_switches:"))
}
