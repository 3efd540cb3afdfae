//! Reopen after unflushed events, for profiling the replay at open with `perf record`:
//!
//! ```text
//! cargo build --release -p bourse-engine --example reopen_loop
//! target/release/examples/reopen_loop DIR [EVENTS] [THREADS]
//! ```
//!
//! When `DIR` does not exist it first writes `EVENTS` events (1,000,000 unless given)
//! of the exchange mix (as `bourse-bench recovery` does: batches of 256 at `Buffered`,
//! memtables large enough that nothing is flushed, then the WAL synced) and drops the
//! engine without a checkpoint (with `PREFLUSH=N`, N more events come first and are
//! checkpointed into tables). Then it opens `DIR` with `THREADS` apply threads (2
//! unless given) and prints the open's time and the replay's. Nothing is flushed by the
//! open, so every run replays the same tail. `MMAP_READS=0` reads the WAL through its
//! buffer rather than in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::exchange_event;
use bourse_model::Event;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn options(threads: usize) -> EngineOptions {
    let mut o = EngineOptions {
        memtable_bytes: 1 << 30,
        memtable_budget_bytes: 8 << 30,
        wal_bytes_max: u64::MAX,
        apply_threads: threads,
        ..EngineOptions::default()
    };
    o.wal.segment_bytes = 256 << 20;
    // `MMAP_READS=0`: read the WAL through the buffer instead of in place (an A/B).
    o.wal.mmap_reads = std::env::var("MMAP_READS").map_or(true, |v| v != "0");
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = Path::new(args.first().map_or("reopen-data", String::as_str)).to_path_buf();
    let events: u64 = args.get(1).map_or(1_000_000, |a| a.parse().unwrap());
    let threads: usize = args.get(2).map_or(2, |a| a.parse().unwrap());
    if !dir.exists() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let e = Engine::open(&dir, options(threads)).unwrap();
        // `PREFLUSH=N`: N events first, checkpointed into tables, so the replay's reads
        // (an order's earlier record, say) go past the memtables to the tables.
        let pre: u64 = std::env::var("PREFLUSH").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut i = 0;
        while i < pre + events {
            let end = if i < pre { (i + 256).min(pre) } else { (i + 256).min(pre + events) };
            let batch: Vec<Event> = (i..end).map(|n| exchange_event(n, now)).collect();
            e.submit(&batch, Durability::Buffered).unwrap();
            i = end;
            if i == pre && pre > 0 {
                e.checkpoint().unwrap();
                eprintln!("checkpointed after {pre} events");
            }
        }
        e.sync().unwrap();
        eprintln!("wrote {events} events after the checkpoint into {}", dir.display());
        // Dropped without a checkpoint.
    }
    let t = Instant::now();
    let mut done = None;
    let e = Engine::open_with(bourse_fs::RealFs::shared(), &dir, options(threads), &mut |p| {
        if p.done {
            done = Some(p);
        }
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let p = done.unwrap();
    eprintln!(
        "open {secs:.3} s with {threads} apply thread(s), of which replay {:.3} s: {} records",
        p.elapsed.as_secs_f64(),
        p.records
    );
    // Exit without freeing the memtables, which is not what is measured.
    std::mem::forget(e);
}
