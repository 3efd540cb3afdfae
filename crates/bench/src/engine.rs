//! The `engine` and `recovery` suites: an exchange-shaped workload (ticks, book deltas,
//! orders, trades, account and position updates over 50 instruments and 10,000
//! accounts) through `Engine::submit`, against RocksDB doing the engine's own writes
//! (one column family per partition, its WAL synced for `Durable`).
//!
//! Cases (`BENCH.md`): `submit_buffered` (1 writer; batches of 1 and 64), `submit_durable` (writers 1, 16,
//! 64; batches of 1 and 64), each also for the `raw` journal floor (validate, encode and
//! append to the WAL, nothing applied), `mixed` (4 durable writers while 2 readers query the latest
//! tick, an account's open orders and an instrument's trades of the last minute), and in
//! `recovery`: `reopen` after N unflushed events (alone, and behind N more already in
//! tables: param `history_events`) and `replay` of the whole WAL.
//!
//! Besides `BENCH.md`'s metrics, submit cases report `cpu_per_event` (the whole
//! process's CPU time per event) and, for `Durable` cases of stores whose WAL counts its
//! syncs (Bourse, the journal floor), `events_per_wal_sync` (group commit at work).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_model::{Event, InstrumentId};
use serde_json::json;

use crate::report::{emit, histogram, median, record, Latency};

use bourse_model::samples::{exchange_account as account, exchange_instrument as instrument};
use bourse_model::samples::{
    exchange_event, EXCHANGE_ACCOUNTS as ACCOUNTS, EXCHANGE_INSTRUMENTS as INSTRUMENTS,
};

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Event number `n` of the workload, stamped now.
pub fn event(n: u64) -> Event {
    exchange_event(n, now_ns())
}

/// What the suite needs from a store.
pub trait Store: Send + Sync {
    /// Who this is.
    fn system(&self) -> &'static str;
    /// Submits one batch; `durable` asks for an fdatasync before returning.
    fn submit(&self, events: &[Event], durable: bool) -> anyhow::Result<()>;
    /// The latest tick's price of an instrument.
    fn latest_tick(&self, ins: &InstrumentId) -> anyhow::Result<Option<f64>>;
    /// How many open orders an account has (at most `limit`).
    fn open_orders(&self, acct: &str, limit: usize) -> anyhow::Result<usize>;
    /// How many trades an instrument had since `from_ns` (at most `limit`).
    fn trades_since(&self, ins: &InstrumentId, from_ns: i64, limit: usize)
        -> anyhow::Result<usize>;
    /// Whether the store may be given the workload's events again once they run out
    /// (only a store that keeps no state: repeated ids and times change nothing for it).
    fn may_repeat(&self) -> bool {
        false
    }
    /// How many `fdatasync`s the store's WAL has issued, where it counts them.
    fn wal_syncs(&self) -> Option<u64> {
        None
    }
}

struct Bourse(Engine);

impl Store for Bourse {
    fn system(&self) -> &'static str {
        "bourse"
    }
    fn wal_syncs(&self) -> Option<u64> {
        Some(self.0.stats().wal.syncs)
    }
    fn submit(&self, events: &[Event], durable: bool) -> anyhow::Result<()> {
        let d = if durable { Durability::Durable } else { Durability::Buffered };
        self.0.submit(events, d)?;
        Ok(())
    }
    fn latest_tick(&self, ins: &InstrumentId) -> anyhow::Result<Option<f64>> {
        Ok(self.0.latest_tick(ins).map(|t| t.last_price))
    }
    fn open_orders(&self, acct: &str, limit: usize) -> anyhow::Result<usize> {
        let mut n = 0;
        for o in self.0.orders(acct, OrderFilter::Open).take(limit) {
            o?;
            n += 1;
        }
        Ok(n)
    }
    fn trades_since(
        &self,
        ins: &InstrumentId,
        from_ns: i64,
        limit: usize,
    ) -> anyhow::Result<usize> {
        let mut n = 0;
        for t in self.0.trades(ins, from_ns, i64::MAX).take(limit) {
            t?;
            n += 1;
        }
        Ok(n)
    }
}

/// A mixed-case reader's latencies (latest tick, open orders, trades of the last
/// minute) and the rows each kind of query found in all.
type ReaderResult = ([hdrhistogram::Histogram<u64>; 3], [u64; 3]);

pub fn engine_options(memtable_bytes: usize) -> EngineOptions {
    let mut o = EngineOptions {
        memtable_bytes,
        memtable_budget_bytes: memtable_bytes * 8,
        wal_bytes_max: u64::MAX,
        ..EngineOptions::default()
    };
    o.wal.segment_bytes = 256 << 20;
    o
}

/// The floor under any store of this workload: what `submit` does before it applies
/// anything (validate and encode each event, append the batch to a WAL with the
/// engine's options, at the same durability) and nothing after. A store that also keeps
/// state, indexes and queries can approach it but not pass it.
struct JournalFloor(bourse_wal::Wal);

impl Store for JournalFloor {
    fn system(&self) -> &'static str {
        "raw"
    }
    fn wal_syncs(&self) -> Option<u64> {
        Some(self.0.stats().syncs)
    }
    fn submit(&self, events: &[Event], durable: bool) -> anyhow::Result<()> {
        // The engine's own validation and encoding, and one timestamp per batch as it
        // takes.
        let encoded = bourse_engine::Encoded::of(events)?;
        let ts = now_ns();
        let entries: Vec<bourse_wal::Entry<'_>> = events
            .iter()
            .zip(encoded.iter())
            .map(|(e, payload)| bourse_wal::Entry {
                kind: e.kind().as_u16(),
                timestamp: ts,
                payload,
            })
            .collect();
        let d = if durable {
            bourse_wal::Durability::Durable
        } else {
            bourse_wal::Durability::Buffered
        };
        self.0.append_batch(&entries, d)?;
        Ok(())
    }
    fn latest_tick(&self, _: &InstrumentId) -> anyhow::Result<Option<f64>> {
        anyhow::bail!("the journal floor answers no queries")
    }
    fn open_orders(&self, _: &str, _: usize) -> anyhow::Result<usize> {
        anyhow::bail!("the journal floor answers no queries")
    }
    fn trades_since(&self, _: &InstrumentId, _: i64, _: usize) -> anyhow::Result<usize> {
        anyhow::bail!("the journal floor answers no queries")
    }
    fn may_repeat(&self) -> bool {
        true
    }
}

fn open_floor(dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let wal = bourse_wal::Wal::open(bourse_fs::RealFs::shared(), dir, engine_options(0).wal)?;
    Ok(Arc::new(JournalFloor(wal)))
}

fn open_bourse(dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(Bourse(Engine::open(dir, engine_options(64 << 20))?)))
}

type Opener = fn(&Path) -> anyhow::Result<Arc<dyn Store>>;

/// The systems measured, by name.
fn systems() -> Vec<(&'static str, Opener)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, Opener)> = vec![("bourse", open_bourse)];
    #[cfg(feature = "peers")]
    v.push(("rocksdb", crate::rocks::open_store));
    v
}

struct Cfg {
    run_time: Duration,
    runs: usize,
    reopen_events: u64,
}

/// The workload, built before any clock starts: writers submit slices of it, so the
/// measured time is the store's and not the building of events (several string formats
/// each, about 1 µs per event, which capped a single writer at a few hundred thousand
/// events per second whatever the store did). It is never reused: a second pass would
/// repeat ids and, worse, times (a book delta older than the instrument's latest makes
/// the engine rebuild that book from the store, which a real feed never asks for and
/// which cost Bourse 4–8× its throughput when an earlier pool wrapped around). A run
/// that uses it up ends early and says so (except the journal floor's, which keeps no
/// state and goes round again). Times in events are those of the build;
/// `built_ns` stands for "now" in queries of recent history.
#[derive(Clone)]
struct Pool {
    events: Arc<Vec<Event>>,
    built_ns: i64,
}

impl Pool {
    /// Builds a pool of `n` events, printing how long it took.
    fn build(n: usize) -> Pool {
        let t = Instant::now();
        let events: Vec<Event> = (0..n as u64).map(event).collect();
        eprintln!("  (built {n} workload events in {:.1} s)", t.elapsed().as_secs_f64());
        Pool { events: Arc::new(events), built_ns: now_ns() }
    }

    /// The `batch` events starting at event number `first`; `None` past the end.
    fn batch(&self, first: u64, batch: usize) -> Option<&[Event]> {
        let at = usize::try_from(first).ok()?;
        self.events.get(at..at.checked_add(batch)?)
    }
}

/// The pool of a suite run, built when the first case that submits asks for it: a run of
/// `--only memory_floor` builds none (the full pool takes 10 s and 4 GiB).
struct LazyPool {
    events: usize,
    pool: std::sync::OnceLock<Pool>,
}

impl LazyPool {
    fn new(events: usize) -> LazyPool {
        LazyPool { events, pool: std::sync::OnceLock::new() }
    }

    fn get(&self) -> &Pool {
        self.pool.get_or_init(|| Pool::build(self.events))
    }
}

/// Runs `writers` threads submitting batches of `batch` for `run_time`; returns events/s
/// and the latency histogram of submits.
fn drive(
    store: &Arc<dyn Store>,
    writers: usize,
    batch: usize,
    durable: bool,
    run_time: Duration,
    next: &Arc<AtomicU64>,
    pool: &Pool,
) -> anyhow::Result<Run> {
    let barrier = Arc::new(Barrier::new(writers + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let out_of_events = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (store, barrier, stop, next, out) =
                (store.clone(), barrier.clone(), stop.clone(), next.clone(), out_of_events.clone());
            let pool = pool.clone();
            std::thread::spawn(move || -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
                let mut h = histogram();
                let mut done = 0u64;
                barrier.wait();
                let repeat = store.may_repeat();
                let len = pool.events.len().saturating_sub(batch).max(1) as u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut first = next.fetch_add(batch as u64, Ordering::Relaxed);
                    if repeat {
                        first %= len;
                    }
                    let Some(events) = pool.batch(first, batch) else {
                        out.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    let t = Instant::now();
                    store.submit(events, durable)?;
                    record(&mut h, t.elapsed());
                    done += batch as u64;
                }
                Ok((done, h))
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let cpu = crate::report::process_cpu();
    while t.elapsed() < run_time && out_of_events.load(Ordering::Relaxed) < writers as u64 {
        std::thread::sleep(Duration::from_millis(5).min(run_time));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = histogram();
    for h in handles {
        let (n, hh) = h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        total += n;
        hist.add(hh).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let elapsed = t.elapsed().as_secs_f64();
    if out_of_events.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "  (the {} pre-built events ran out after {elapsed:.2} s of this run: it ended early)",
            pool.events.len()
        );
    }
    let cpu = cpu.zip(crate::report::process_cpu()).map(|(a, b)| {
        // CPU per event, all threads of the process (writers, background work).
        (b.saturating_sub(a)).as_secs_f64() * 1e6 / total.max(1) as f64
    });
    Ok(Run { events: total, secs: elapsed, hist, cpu_us: cpu })
}

/// What one `drive` measured.
struct Run {
    /// Events submitted (none when the pool had run out before the run began).
    events: u64,
    /// How long it ran (less than asked when the pool ran out).
    secs: f64,
    /// Submit latencies.
    hist: hdrhistogram::Histogram<u64>,
    /// CPU time of the whole process per event, in µs (a steadier figure than the rate
    /// on a shared machine: it does not count time the process spent waiting for a CPU).
    cpu_us: Option<f64>,
}

impl Run {
    /// Events per second.
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

fn ratio_lines(case: &str, params: &serde_json::Value, results: &[(&'static str, f64, f64)]) {
    let Some((_, b_rate, b_p99)) = results.iter().find(|r| r.0 == "bourse") else { return };
    for (sys, rate, p99) in results.iter().filter(|r| r.0 != "bourse") {
        // BENCH.md names the ratio to the physical floor `_vs_floor`.
        let sys = if *sys == "raw" { "floor" } else { sys };
        emit(
            "engine",
            case,
            "bourse",
            params,
            &format!("throughput_ratio_vs_{sys}"),
            b_rate / rate,
            "x",
        );
        emit("engine", case, "bourse", params, &format!("p99_ratio_vs_{sys}"), b_p99 / p99, "x");
        eprintln!(
            "  {case:<16} {params}: bourse / {sys} throughput {:.2}x, p99 {:.2}x",
            b_rate / rate,
            b_p99 / p99
        );
    }
}

fn submit_case(
    root: &Path,
    cfg: &Cfg,
    pool: &LazyPool,
    case: &str,
    writers: usize,
    batch: usize,
    durable: bool,
) -> anyhow::Result<()> {
    let params = json!({ "writers": writers, "batch": batch });
    let mut results = Vec::new();
    let mut measured = systems();
    measured.push(("raw", open_floor));
    for (i, (name, open)) in measured.into_iter().enumerate() {
        // `--only "submit_durable 16x64"` picks one shape, `--only "1x64 bourse"` one
        // system too (`raw`: the journal floor).
        if !crate::report::wanted(&format!("{case} {writers}x{batch} {name}")) {
            continue;
        }
        let pool = pool.get();
        let dir = root.join(format!("{case}-{writers}-{batch}-{i}"));
        let store = open(&dir)?;
        let next = Arc::new(AtomicU64::new(0));
        // Warm-up, not measured: the first event of each instrument creates its
        // partition (directories, manifest, fsyncs), a one-time cost of milliseconds.
        drive(&store, writers, batch, durable, cfg.run_time / 4, &next, pool)?;
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        let mut all = histogram();
        let (syncs_before, events_before) = (store.wal_syncs(), next.load(Ordering::Relaxed));
        for _ in 0..cfg.runs {
            let run = drive(&store, writers, batch, durable, cfg.run_time, &next, pool)?;
            if run.events == 0 || run.secs < cfg.run_time.as_secs_f64() / 4.0 {
                // The pool ran out in this run's first moments or before it: a rate of zero,
                // or over a few milliseconds, is not a measurement.
                eprintln!(
                    "  (this run had {} events over {:.2} s: it is not counted)",
                    run.events, run.secs
                );
                continue;
            }
            rates.push(run.rate());
            cpus.extend(run.cpu_us);
            all.add(run.hist).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // Group commit at work: events per WAL sync over the measured runs (`next` counts
        // events handed out, a batch per writer more than were submitted).
        let per_sync = syncs_before.zip(store.wal_syncs()).and_then(|(a, b)| {
            let events = next.load(Ordering::Relaxed) - events_before;
            (durable && b > a).then(|| events as f64 / (b - a) as f64)
        });
        if rates.is_empty() {
            anyhow::bail!(
                "{case} {writers}x{batch} {name}: the {} pre-built events ran out before a \
                 measured run had a quarter of its time",
                pool.events.len()
            );
        }
        let rate = median(rates);
        let lat = Latency::of(&all);
        let sys = store.system();
        emit("engine", case, sys, &params, "throughput", rate, "events/s");
        lat.emit("engine", case, sys, &params);
        let cpu = (!cpus.is_empty()).then(|| median(cpus));
        if let Some(cpu) = cpu {
            emit("engine", case, sys, &params, "cpu_per_event", cpu, "us");
        }
        if let Some(n) = per_sync {
            emit("engine", case, sys, &params, "events_per_wal_sync", n, "events");
        }
        let per_sync = per_sync.map(|n| format!("  events/sync {n:.0}")).unwrap_or_default();
        eprintln!(
            "  {case:<16} {sys:<8} writers {writers:>2} batch {batch:>2}: {rate:>10.0} events/s  p50 {:>8.2} us  p99 {:>8.2} us  p99.9 {:>8.2} us  cpu/event {:.2} us{per_sync}",
            lat.p50, lat.p99, lat.p999, cpu.unwrap_or(f64::NAN)
        );
        results.push((sys, rate, lat.p99));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    ratio_lines(case, &params, &results);
    Ok(())
}

fn mixed_case(root: &Path, cfg: &Cfg, pool: &LazyPool) -> anyhow::Result<()> {
    let params = json!({ "writers": 4, "batch": 16, "readers": 2 });
    let mut results = Vec::new();
    for (i, (name, open)) in systems().into_iter().enumerate() {
        // `--only "mixed bourse"` runs one system.
        if !crate::report::wanted(&format!("mixed {name}")) {
            continue;
        }
        let pool = pool.get();
        let dir = root.join(format!("mixed-{i}"));
        let store = open(&dir)?;
        let next = Arc::new(AtomicU64::new(0));
        // Warm up: some history to query.
        drive(&store, 4, 64, false, cfg.run_time / 2, &next, pool)?;
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let (store, stop, now) = (store.clone(), stop.clone(), pool.built_ns);
                std::thread::spawn(move || -> anyhow::Result<ReaderResult> {
                    let mut hs = [histogram(), histogram(), histogram()];
                    // What the queries found (ticks, open orders, trades): the stores
                    // answer the same questions only if these agree in scale.
                    let mut rows = [0u64; 3];
                    let mut k = r;
                    while !stop.load(Ordering::Relaxed) {
                        k += 1;
                        let ins = instrument(k);
                        let t = Instant::now();
                        let tick = std::hint::black_box(store.latest_tick(&ins)?);
                        record(&mut hs[0], t.elapsed());
                        let t = Instant::now();
                        let orders =
                            std::hint::black_box(store.open_orders(&account(k * 7919), 100)?);
                        record(&mut hs[1], t.elapsed());
                        let t = Instant::now();
                        let trades = std::hint::black_box(store.trades_since(
                            &ins,
                            now - 60_000_000_000,
                            1000,
                        )?);
                        record(&mut hs[2], t.elapsed());
                        rows[0] += u64::from(tick.is_some());
                        rows[1] += orders as u64;
                        rows[2] += trades as u64;
                    }
                    Ok((hs, rows))
                })
            })
            .collect();
        let run = drive(&store, 4, 16, true, cfg.run_time, &next, pool)?;
        let (rate, h) = (run.rate(), run.hist);
        stop.store(true, Ordering::Relaxed);
        let mut q = [histogram(), histogram(), histogram()];
        let mut found = [0u64; 3];
        for r in readers {
            let (hs, rows) = r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
            for (a, b) in q.iter_mut().zip(hs) {
                a.add(b).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            for (a, b) in found.iter_mut().zip(rows) {
                *a += b;
            }
        }
        let sys = store.system();
        let lat = Latency::of(&h);
        emit("engine", "mixed", sys, &params, "throughput", rate, "events/s");
        lat.emit("engine", "mixed", sys, &params);
        eprintln!("  mixed            {sys:<8} 4 durable writers: {rate:>10.0} events/s  submit p99 {:>8.2} us", lat.p99);
        let names = ["latest_tick", "open_orders", "trades_last_minute"];
        for ((name, hq), rows) in names.iter().zip(&q).zip(found) {
            let l = Latency::of(hq);
            let case = format!("mixed_{name}");
            l.emit("engine", &case, sys, &params);
            let per_query = rows as f64 / hq.len().max(1) as f64;
            emit("engine", &case, sys, &params, "rows_per_query", per_query, "rows");
            eprintln!(
                "    {name:<20} {:>8} queries  p50 {:>8.2} us  p99 {:>8.2} us  p99.9 {:>8.2} us  {per_query:>7.2} rows/query",
                hq.len(),
                l.p50,
                l.p99,
                l.p999
            );
        }
        results.push((sys, rate, lat.p99));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    ratio_lines("mixed", &params, &results);
    Ok(())
}

pub fn run(root: &Path, quick: bool) -> anyhow::Result<()> {
    let cfg = cfg(quick);
    eprintln!(
        "engine suite ({} mode): {INSTRUMENTS} instruments, {ACCOUNTS} accounts, exchange event mix",
        if quick { "quick" } else { "full" }
    );
    // The machine's own stalls, the floor under the submit and query percentiles.
    crate::stall::stall_floor("engine", Duration::from_secs(if quick { 1 } else { 3 }))?;
    // The time of a load from a random place in memory, the floor under every random
    // insert into a memtable (an order's three accounts entries).
    crate::memory::memory_floor("engine", quick)?;
    // Enough for every run of a case at over a million events per second (quick) and
    // about 860,000 (full: 8.4 M events, about 4 GiB; half as many ran out within a case
    // at Bourse's one-writer rates, and a run that finds the pool used up is not counted).
    let pool = LazyPool::new(if quick { 1 << 21 } else { 1 << 23 });
    submit_case(root, &cfg, &pool, "submit_buffered", 1, 1, false)?;
    submit_case(root, &cfg, &pool, "submit_buffered", 1, 64, false)?;
    let shapes: &[(usize, usize)] = if quick {
        &[(1, 1), (16, 1), (64, 1), (16, 64)]
    } else {
        &[(1, 1), (16, 1), (64, 1), (1, 64), (16, 64), (64, 64)]
    };
    for &(writers, batch) in shapes {
        submit_case(root, &cfg, &pool, "submit_durable", writers, batch, true)?;
    }
    mixed_case(root, &cfg, &pool)
}

fn cfg(quick: bool) -> Cfg {
    if quick {
        Cfg { run_time: Duration::from_millis(700), runs: 3, reopen_events: 300_000 }
    } else {
        Cfg { run_time: Duration::from_secs(3), runs: 3, reopen_events: 1_000_000 }
    }
}

const REOPEN_DIR: &str = "BOURSE_BENCH_REOPEN_DIR";
const REOPEN_THREADS: &str = "BOURSE_BENCH_REOPEN_THREADS";

/// The reopen child: opens the store named by the environment and prints seconds to
/// open, seconds of WAL replay, records replayed, their bytes on disk, and the book
/// deltas the open read from tables.
pub fn reopen_child() -> Option<anyhow::Result<()>> {
    let dir = std::env::var_os(REOPEN_DIR)?;
    let threads = std::env::var(REOPEN_THREADS).ok().and_then(|t| t.parse().ok()).unwrap_or(2);
    Some((|| {
        let opts = EngineOptions { apply_threads: threads, ..engine_options(1 << 30) };
        let t = Instant::now();
        let mut done = None;
        let e = Engine::open_with(bourse_fs::RealFs::shared(), Path::new(&dir), opts, &mut |p| {
            if p.done {
                done = Some(p);
            }
        })?;
        let secs = t.elapsed().as_secs_f64();
        let p = done.ok_or_else(|| anyhow::anyhow!("no replay report"))?;
        // Payloads plus the 28-byte record framing: the bytes on disk.
        let bytes = p.bytes + 28 * p.records;
        let book_deltas = e.stats().open_book_deltas;
        println!("{secs} {} {} {bytes} {book_deltas}", p.elapsed.as_secs_f64(), p.records);
        // Exit without freeing a million memtable entries.
        std::mem::forget(e);
        Ok(())
    })())
}

/// The `recovery` suite: reopen after N unflushed events, and replay of the WAL.
pub fn run_recovery(root: &Path, quick: bool) -> anyhow::Result<()> {
    if !crate::report::wanted("reopen") && !crate::report::wanted("replay") {
        return Ok(());
    }
    let cfg = cfg(quick);
    let n = cfg.reopen_events;
    let params = json!({ "events": n });
    eprintln!("recovery suite: {n} unflushed events");
    let dir = root.join("recovery");
    {
        // Memtables large enough that nothing is flushed: reopen replays everything.
        let e = Engine::open(&dir, engine_options(1 << 30))?;
        write_events(&e, 0..n)?;
        e.sync()?;
        // Dropped without a checkpoint.
    }
    // Reopen with one replay thread and with two, interleaved, each in a fresh process
    // as after a restart (in this one, the heap the writing engine freed would make
    // malloc slower). Opening flushes nothing, so every open replays the same tail.
    let mut bytes = 0;
    let mut results: Vec<(usize, f64, f64)> = Vec::new();
    for threads in [2usize, 1, 2, 1, 2, 1] {
        let (secs, replay_secs, b, _) = reopen_in_child(&dir, threads, n)?;
        bytes = b;
        results.push((threads, secs, replay_secs));
    }
    for threads in [1usize, 2] {
        let params = json!({ "events": n, "replay_threads": threads });
        let secs = median(results.iter().filter(|r| r.0 == threads).map(|r| r.1).collect());
        let replay = median(results.iter().filter(|r| r.0 == threads).map(|r| r.2).collect());
        emit("recovery", "reopen", "bourse", &params, "seconds", secs, "s");
        emit("recovery", "reopen", "bourse", &params, "wal_replay_seconds", replay, "s");
        eprintln!(
            "  reopen           bourse   {n} unflushed events, {threads} replay thread(s): {secs:.2} s (median of 3), of which re-applying the WAL {replay:.2} s ({:.0} events/s)",
            n as f64 / replay.max(1e-9)
        );
    }
    let e = Some(Engine::open(&dir, engine_options(1 << 30))?);
    let e = e.ok_or_else(|| anyhow::anyhow!("no engine"))?;
    // Replay: the commit stream over the whole WAL, as a subscriber that replays
    // reads it (records read and checked, payloads as stored), and decoded into events.
    let t = Instant::now();
    let mut s = e.commits(1)?;
    let mut count = 0u64;
    while s.next_raw()?.is_some() {
        count += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let gbs = bytes as f64 / secs / 1e9;
    emit("recovery", "replay", "bourse", &params, "throughput", gbs, "GB/s");
    eprintln!("  replay           bourse   {count} records read and checked from the WAL: {gbs:.2} GB/s ({:.0} records/s)", count as f64 / secs);
    let t = Instant::now();
    let mut s = e.commits(1)?;
    let mut count = 0u64;
    while s.next_event()?.is_some() {
        count += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let gbs = bytes as f64 / secs / 1e9;
    emit("recovery", "replay_decoded", "bourse", &params, "throughput", gbs, "GB/s");
    eprintln!("  replay_decoded   bourse   {count} events decoded from the WAL: {gbs:.2} GB/s ({:.0} events/s)", count as f64 / secs);
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
    #[cfg(feature = "peers")]
    crate::rocks::reopen_case(root, n, 0)?;
    if crate::report::wanted("reopen") {
        reopen_with_history(root, n)?;
        #[cfg(feature = "peers")]
        crate::rocks::reopen_case(root, n, n)?;
    }
    Ok(())
}

/// Hands the workload's events `range` to `submit` in batches of 256 (the recovery
/// cases' writes, for every system).
pub fn in_batches(
    range: std::ops::Range<u64>,
    mut submit: impl FnMut(&[Event]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut i = range.start;
    while i < range.end {
        let end = (i + 256).min(range.end);
        let batch: Vec<Event> = (i..end).map(event).collect();
        submit(&batch)?;
        i = end;
    }
    Ok(())
}

/// Submits the workload's events `range` to `e` at `Buffered`, in batches of 256.
fn write_events(e: &Engine, range: std::ops::Range<u64>) -> anyhow::Result<()> {
    in_batches(range, |batch| {
        e.submit(batch, Durability::Buffered)?;
        Ok(())
    })
}

/// Opens `dir` in a fresh process with `threads` replay threads, as after a restart;
/// returns seconds to open, seconds of WAL replay, the replayed records' bytes on disk
/// and the book deltas read from tables, and checks that exactly `records` records were
/// replayed.
fn reopen_in_child(
    dir: &Path,
    threads: usize,
    records: u64,
) -> anyhow::Result<(f64, f64, u64, u64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .env(REOPEN_DIR, dir)
        .env(REOPEN_THREADS, threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "the reopen child failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [secs, replay_secs, replayed, bytes, book_deltas] = v[..] else {
        anyhow::bail!("the reopen child printed {text:?}");
    };
    anyhow::ensure!(
        replayed as u64 == records,
        "reopen replayed {replayed} records, not {records}"
    );
    Ok((secs, replay_secs, bytes as u64, book_deltas as u64))
}

/// `reopen` with history: `n` events checkpointed into tables first, then `n` more left
/// unflushed, as a store looks when it restarts after running a while. The open then
/// also reads what the tables hold for the market cache: each instrument's newest
/// snapshot or book checkpoint and the deltas after it (this workload sends no
/// snapshots, so without checkpoints that would be every delta in the tables).
fn reopen_with_history(root: &Path, n: u64) -> anyhow::Result<()> {
    let dir = root.join("recovery-history");
    {
        let e = Engine::open(&dir, engine_options(1 << 30))?;
        write_events(&e, 0..n)?;
        e.checkpoint()?;
        write_events(&e, n..2 * n)?;
        e.sync()?;
        // Dropped without a checkpoint.
    }
    let mut results = Vec::new();
    let mut book_deltas = 0;
    for _ in 0..3 {
        let (secs, replay_secs, _, deltas) = reopen_in_child(&dir, 2, n)?;
        results.push((secs, replay_secs));
        book_deltas = deltas;
    }
    let params = json!({ "events": n, "history_events": n, "replay_threads": 2 });
    let secs = median(results.iter().map(|r| r.0).collect());
    let replay = median(results.iter().map(|r| r.1).collect());
    emit("recovery", "reopen", "bourse", &params, "seconds", secs, "s");
    emit("recovery", "reopen", "bourse", &params, "wal_replay_seconds", replay, "s");
    let deltas = book_deltas as f64;
    emit("recovery", "reopen", "bourse", &params, "book_deltas_read", deltas, "deltas");
    eprintln!(
        "  reopen           bourse   {n} unflushed events after {n} in tables, 2 replay threads: {secs:.2} s (median of 3), of which re-applying the WAL {replay:.2} s; {book_deltas} book deltas read from tables"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A store that counts what it is given and keeps nothing.
    struct Counter(AtomicU64);

    impl Store for Counter {
        fn system(&self) -> &'static str {
            "counter"
        }
        fn submit(&self, events: &[Event], _durable: bool) -> anyhow::Result<()> {
            self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        fn latest_tick(&self, _: &InstrumentId) -> anyhow::Result<Option<f64>> {
            Ok(None)
        }
        fn open_orders(&self, _: &str, _: usize) -> anyhow::Result<usize> {
            Ok(0)
        }
        fn trades_since(&self, _: &InstrumentId, _: i64, _: usize) -> anyhow::Result<usize> {
            Ok(0)
        }
    }

    /// A run that uses the pool up ends early with what it submitted, and the next one
    /// reports none: `submit_case` leaves such runs (and any shorter than a quarter of
    /// the run time) out of the median instead of counting a rate of zero.
    #[test]
    fn a_run_after_the_pool_ran_out_reports_no_events() {
        let pool = Pool::build(10);
        let counter = Arc::new(Counter(AtomicU64::new(0)));
        let store: Arc<dyn Store> = counter.clone();
        let next = Arc::new(AtomicU64::new(0));
        let long = Duration::from_secs(30);
        let first = drive(&store, 2, 3, false, long, &next, &pool).unwrap();
        // Batches of 3 from 10 events: three whole batches, whichever writer took them.
        assert_eq!(first.events, 9);
        assert_eq!(counter.0.load(Ordering::Relaxed), 9);
        assert!(first.rate() > 0.0);
        let second = drive(&store, 2, 3, false, long, &next, &pool).unwrap();
        assert_eq!(second.events, 0);
        assert!(second.secs < 1.0, "an empty pool held a run for {} s", second.secs);
        assert_eq!(counter.0.load(Ordering::Relaxed), 9);
    }

    /// The pool is built by the first case that asks for it, and only once.
    #[test]
    fn the_pool_is_built_on_first_use_and_once() {
        let lazy = LazyPool::new(5);
        assert!(lazy.pool.get().is_none());
        let first = lazy.get().events.clone();
        assert_eq!(first.len(), 5);
        assert!(Arc::ptr_eq(&first, &lazy.get().events));
    }
}
