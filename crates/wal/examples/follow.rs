//! The cost of following the log: appends one 100-byte record at a time (`Buffered`) and
//! reads each back through a reader that has caught up, as the engine's commit stream
//! and the bus's replay do near the head. Prints the time per append plus read.
//! `MMAP_READS=0` reads through the reader's buffer rather than in place.
//!
//! `cargo run --release -p bourse-wal --example follow -- [RECORDS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bourse_fs::RealFs;
use bourse_wal::{Durability, Entry, Lsn, Wal, WalOptions};

fn main() {
    let n: u64 = std::env::args().nth(1).map_or(20_000, |a| a.parse().expect("RECORDS"));
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or_else(|_| ".".into()))
        .expect("temporary directory");
    // `MMAP_READS=0`: the reader reads through its buffer instead of in place.
    let opts = WalOptions {
        mmap_reads: std::env::var("MMAP_READS").map_or(true, |v| v != "0"),
        ..WalOptions::default()
    };
    let wal = Wal::open(RealFs::shared(), dir.path(), opts).unwrap();
    let payload = [7u8; 100];
    let entry = Entry { kind: 1, timestamp: 0, payload: &payload };
    wal.append(entry, Durability::Buffered).unwrap();
    let mut reader = wal.read_from(Lsn(1)).unwrap();
    while reader.next_record().unwrap().is_some() {}
    let t = Instant::now();
    for _ in 0..n {
        wal.append(entry, Durability::Buffered).unwrap();
        assert!(reader.next_record().unwrap().is_some(), "the record just appended");
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("append + follow: {us:.1} us per record ({n} records)");
}
