//! A fixed amount of replay work, for `perf`: fills a data directory once with the bus
//! benchmark's mixed events (Buffered, batches of 256), then reads them all back
//! `ROUNDS` times through the engine's commit stream and through a bus subscriber that
//! replays from LSN 1, printing each rate (`BUS_ONLY` or `COMMIT_ONLY` set: one of
//! the two, for profiling; `MMAP_READS=0`: the WAL read through its buffer rather than
//! in place).
//!
//! `cargo run --release -p bourse-bus --example replay_loop -- DIR [EVENTS] [ROUNDS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use bourse_bus::{Bus, BusOptions, Message, OnLag, SubscribeOptions};
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::{mixed_kind, sample};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir =
        std::path::PathBuf::from(args.next().expect("usage: replay_loop DIR [EVENTS] [ROUNDS]"));
    let events: u64 = args.next().map_or(2_000_000, |a| a.parse().expect("EVENTS"));
    let rounds: u32 = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let fresh = !dir.exists();
    // `MMAP_READS=0`: read the WAL through the buffer instead of in place (an A/B).
    let mut opts = EngineOptions::default();
    opts.wal.mmap_reads = std::env::var("MMAP_READS").map_or(true, |v| v != "0");
    let engine = Arc::new(Engine::open(&dir, opts).unwrap());
    if fresh {
        let mut i = 0;
        while i < events {
            let batch: Vec<_> = (i..i + 256).map(|j| sample(mixed_kind(j), j)).collect();
            engine.submit(&batch, Durability::Buffered).unwrap();
            i += 256;
        }
    }
    let bus = Bus::attach(engine.clone(), BusOptions::default()).unwrap();
    // BUS_ONLY: only the bus subscriber (a profile of the bus's own share);
    // COMMIT_ONLY: only the commit stream.
    let bus_only = std::env::var_os("BUS_ONLY").is_some();
    let commit_only = std::env::var_os("COMMIT_ONLY").is_some();
    let (n, bytes) = commit_stream(&engine);
    for _ in 0..rounds {
        if !bus_only {
            let t = Instant::now();
            let (n, bytes) = commit_stream(&engine);
            eprint!("commit stream {}; ", rate(bytes, n, t.elapsed().as_secs_f64()));
        }
        if commit_only {
            eprintln!();
            continue;
        }
        let mut sub = bus.subscribe(SubscribeOptions::from_lsn(1).on_lag(OnLag::Replay)).unwrap();
        let t = Instant::now();
        let mut got = 0;
        while got < n {
            match sub.try_next().unwrap() {
                Some(Message::Event(_)) => got += 1,
                Some(m) => panic!("unexpected {m:?}"),
                None => panic!("replay stopped at {got} of {n}"),
            }
        }
        eprintln!("bus {}", rate(bytes, n, t.elapsed().as_secs_f64()));
    }
}

/// Reads the whole commit stream; returns the events and payload bytes it held.
fn commit_stream(engine: &Engine) -> (u64, u64) {
    let mut s = engine.commits(1).unwrap();
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(r) = s.next_raw().unwrap() {
        n += 1;
        bytes += r.payload.len() as u64;
    }
    (n, bytes)
}

fn rate(bytes: u64, events: u64, secs: f64) -> String {
    format!("{:.2} GB/s ({:.1} M events/s)", bytes as f64 / secs / 1e9, events as f64 / secs / 1e6)
}
