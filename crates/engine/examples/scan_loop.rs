//! A fixed amount of range-query work, for A/B runs and `perf record` of the scan path:
//!
//! ```text
//! cargo build --release -p bourse-engine --example scan_loop
//! target/release/examples/scan_loop [EVENTS] [SECONDS]
//! ```
//!
//! It submits `EVENTS` events of the exchange mix (200,000 unless given; 50 instruments,
//! 10,000 accounts, as `bourse-bench engine` does, all stamped now) at `Buffered` in
//! batches of 64 to an engine in a temporary directory (`TMPDIR`), so they stay in the
//! memtables as in the `mixed` case. Then, for `SECONDS` (5 unless given), it asks
//! instruments in turn for their trades of the last minute (at most 1,000), as the
//! `mixed` case's readers do, and prints the queries' p50 and p99 and the rows read
//! per second. `QUERY=orders` asks accounts for their open orders instead (at most 100,
//! newest first: a reverse scan), as `mixed` also does. `FLUSH=1` checkpoints first,
//! so the scans read tables instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_model::samples::{
    exchange_account, exchange_event, exchange_instrument, EXCHANGE_INSTRUMENTS,
};
use bourse_model::Event;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let events = args.first().copied().unwrap_or(200_000);
    let seconds = args.get(1).copied().unwrap_or(5);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let all: Vec<Event> = (0..events).map(|n| exchange_event(n, now)).collect();
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| ".".into())).unwrap();
    let opts = EngineOptions {
        memtable_bytes: 64 << 20,
        memtable_budget_bytes: 512 << 20,
        ..EngineOptions::default()
    };
    let engine = Engine::open(dir.path(), opts).unwrap();
    for chunk in all.chunks(64) {
        engine.submit(chunk, Durability::Buffered).unwrap();
    }
    if std::env::var("FLUSH").is_ok_and(|v| v == "1") {
        engine.checkpoint().unwrap();
    }
    let orders = std::env::var("QUERY").is_ok_and(|v| v == "orders");
    let mut took = Vec::new();
    let (mut rows, mut k) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(seconds) {
        k += 1;
        let s = Instant::now();
        if orders {
            let account = exchange_account(k * 7919);
            for order in engine.orders(&account, OrderFilter::Open).take(100) {
                std::hint::black_box(order.unwrap());
                rows += 1;
            }
        } else {
            let ins = exchange_instrument(k % EXCHANGE_INSTRUMENTS);
            for trade in engine.trades(&ins, now - 60_000_000_000, i64::MAX).take(1000) {
                std::hint::black_box(trade.unwrap());
                rows += 1;
            }
        }
        took.push(s.elapsed().as_nanos() as u64);
    }
    let secs = t.elapsed().as_secs_f64();
    took.sort_unstable();
    let q = |f: f64| took[((took.len() - 1) as f64 * f) as usize] as f64 / 1000.0;
    println!(
        "{} queries, {:.1} rows each: p50 {:.1} us, p99 {:.1} us; {:.2} M rows/s",
        took.len(),
        rows as f64 / took.len() as f64,
        q(0.5),
        q(0.99),
        rows as f64 / secs / 1e6
    );
}
