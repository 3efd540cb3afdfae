//! `WalOptions::writeback_bytes`: the WAL asks for the pages it appended to start going
//! to the device every so many bytes, whole pages only, from where the last request
//! ended; inline without a background thread, by that thread when there is one; never
//! when turned off. (The hint changes nothing on `SimFs`, which counts it.) And the
//! background thread maps in the pages mapped writes will reach next.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use bourse_fs::SimFs;
use bourse_wal::format::SEGMENT_HEADER_BYTES;
use bourse_wal::{Durability, Entry, Preallocate, Wal, WalOptions};

/// Appends `n` records of 1,000 bytes at `Buffered`.
fn append(wal: &Wal, n: usize) {
    let body = vec![7u8; 1000];
    for i in 0..n {
        let e = Entry { kind: 1, timestamp: i as i64, payload: &body };
        wal.append(e, Durability::Buffered).unwrap();
    }
}

fn opts(pre: Preallocate, every: u64) -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 20,
        preallocate: pre,
        writeback_bytes: every,
        ..WalOptions::default()
    }
}

#[test]
fn appends_ask_for_writeback_every_so_many_bytes_in_whole_pages() {
    let fs = SimFs::new();
    // No background thread: the write round asks itself, so the count is exact.
    let wal = Wal::open(fs.shared(), Path::new("/w"), opts(Preallocate::None, 1 << 20)).unwrap();
    // About 3.1 MiB of records (each 1,000 bytes plus its header).
    append(&wal, 3200);
    let (hints, bytes) = fs.writeback_hints();
    assert_eq!(hints, 3, "one hint per MiB appended");
    // Contiguous from the first record (after the segment's header) to a page boundary
    // just past 3 MiB.
    let end = bytes + SEGMENT_HEADER_BYTES as u64;
    assert_eq!(end % 4096, 0, "{bytes}");
    assert!((3 << 20..(3 << 20) + (1 << 20)).contains(&end), "{bytes}");
    drop(wal);

    let fs = SimFs::new();
    let wal = Wal::open(fs.shared(), Path::new("/w"), opts(Preallocate::None, 0)).unwrap();
    append(&wal, 3200);
    assert_eq!(fs.writeback_hints(), (0, 0), "turned off");
}

#[test]
fn the_background_thread_starts_the_writeback_when_there_is_one() {
    let fs = SimFs::new();
    // The thread runs but builds no spare (deferred), so that its own pre-write, which
    // asks for writeback too, does not count here; `open` pre-wrote the first segment.
    let o = WalOptions { defer_preallocation: true, ..opts(Preallocate::PreWrite, 1 << 20) };
    let wal = Wal::open(fs.shared(), Path::new("/w"), o).unwrap();
    let (hints0, bytes0) = fs.writeback_hints();
    append(&wal, 3200);
    // Requests for the same segment merge while the thread is busy, so count bytes, not
    // hints: the first 3 MiB and a little, eventually.
    let start = Instant::now();
    while fs.writeback_hints().1 - bytes0 < 3 << 20 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (hints, bytes) = fs.writeback_hints();
    let end = bytes - bytes0 + SEGMENT_HEADER_BYTES as u64;
    assert!(hints > hints0 && (3 << 20..(3 << 20) + (1 << 20)).contains(&end), "{hints} {bytes}");
    assert_eq!(end % 4096, 0);
}

/// Appends `n` records of 100 bytes at `Buffered`: small write rounds, which go through
/// the segment's map once enough rounds passed since a sync.
fn append_small(wal: &Wal, n: usize) {
    let body = vec![9u8; 100];
    for i in 0..n {
        let e = Entry { kind: 1, timestamp: i as i64, payload: &body };
        wal.append(e, Durability::Buffered).unwrap();
    }
}

#[test]
fn the_background_thread_maps_in_the_pages_ahead_of_mapped_writes() {
    let fs = SimFs::new();
    let o = WalOptions { defer_preallocation: true, ..opts(Preallocate::PreWrite, 1 << 20) };
    let wal = Wal::open(fs.shared(), Path::new("/w"), o).unwrap();
    // About 2.3 MiB of records (100 bytes plus a header each).
    append_small(&wal, 20_000);
    let written = wal.stats().bytes + SEGMENT_HEADER_BYTES as u64;
    let start = Instant::now();
    while fs.prepare_hints().1 < written && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (hints, end) = fs.prepare_hints();
    // Asked again each time the writes came within half a mebibyte of the end asked:
    // the last request reaches past the writes, by at most a mebibyte and a page.
    assert!(hints >= 2, "{hints}");
    assert!(end > written && end <= written + (1 << 20) + 4096, "{end} {written}");
    assert_eq!(end % 4096, 0);
    drop(wal);

    // No background thread: nothing is asked (the write round would only take the
    // faults itself); writeback turned off: neither.
    for o in [opts(Preallocate::PreWriteInline, 1 << 20), opts(Preallocate::PreWrite, 0)] {
        let fs = SimFs::new();
        let wal = Wal::open(fs.shared(), Path::new("/w"), o).unwrap();
        append_small(&wal, 20_000);
        drop(wal);
        assert_eq!(fs.prepare_hints(), (0, 0));
    }
}
