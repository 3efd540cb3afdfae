//! Readers on the real file system read segments in place through a memory map
//! (`WalOptions::mmap_reads`). These tests hold them to the buffered reader: the same
//! records from any LSN, across rotations and a segment file that grows under the map,
//! and the same damage reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bourse_fs::{FileRef, LockGuard, Mapping, OpenMode, RealFs, Vfs, VfsFile};
use bourse_wal::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use bourse_wal::{DamageKind, Durability, Entry, Error, Lsn, Preallocate, Wal, WalOptions};

/// Small segments, so that a few hundred records rotate several times.
fn opts(pre: Preallocate, mmap: bool) -> WalOptions {
    WalOptions {
        segment_bytes: 8 << 10,
        preallocate: pre,
        read_chunk_bytes: 512,
        mmap_reads: mmap,
        ..WalOptions::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Appends records `from ..= to` (1-based numbers, payload `payload(n)`) in batches of
/// up to 7.
fn append(wal: &Wal, from: u64, to: u64) {
    let mut n = from;
    while n <= to {
        let end = (n + (n % 7)).min(to);
        let bodies: Vec<Vec<u8>> = (n..=end).map(payload).collect();
        let entries: Vec<Entry<'_>> = bodies
            .iter()
            .zip(n..)
            .map(|(p, i)| Entry { kind: (i % 5) as u16, timestamp: i as i64, payload: p })
            .collect();
        wal.append_batch(&entries, Durability::Buffered).unwrap();
        n = end + 1;
    }
}

/// Every record from `from` on, as (LSN, kind, timestamp, batch end, payload), read in
/// place or not as `mapped` says.
fn read(wal: &Wal, from: u64, mapped: bool) -> Vec<(u64, u16, i64, bool, Vec<u8>)> {
    let mut r = wal.read_from(Lsn(from)).unwrap();
    assert_eq!(r.reads_in_place(), mapped);
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push((rec.lsn.0, rec.kind, rec.timestamp, rec.batch_end, rec.payload.to_vec()));
    }
    out
}

#[test]
fn mapped_and_buffered_readers_agree_from_any_lsn() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        let tmp = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(RealFs::shared(), tmp.path(), opts(pre, false)).unwrap();
            append(&wal, 1, 400);
        }
        let buffered = Wal::open(RealFs::shared(), tmp.path(), opts(pre, false)).unwrap();
        let want = read(&buffered, 1, false);
        drop(buffered);
        assert_eq!(want.len(), 400);
        for (i, r) in want.iter().enumerate() {
            assert_eq!((r.0, r.4.as_slice()), (i as u64 + 1, payload(i as u64 + 1).as_slice()));
        }
        let wal = Wal::open(RealFs::shared(), tmp.path(), opts(pre, true)).unwrap();
        assert!(wal.segment_files().len() >= 4, "{pre:?}: the log rotated");
        for from in [1u64, 2, 99, 250, 400, 401] {
            assert_eq!(read(&wal, from, true), want[from as usize - 1..], "{pre:?} from {from}");
        }
        // Asked for, a reader of the same log reads through its buffer.
        let mut r = wal.read_from_buffered(Lsn(1)).unwrap();
        assert!(!r.reads_in_place());
        assert_eq!(r.for_each(|_| {}).unwrap(), 400);
    }
}

/// A caught-up mapped reader follows appends: into bytes its map already covers
/// (pre-written segments), past the end of its map (a segment that grows with each
/// append), and into the segments the writer rotates to.
#[test]
fn a_mapped_reader_follows_the_log_past_its_map() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        let tmp = tempfile::tempdir().unwrap();
        let wal = Wal::open(RealFs::shared(), tmp.path(), opts(pre, true)).unwrap();
        append(&wal, 1, 3);
        let mut r = wal.read_from(Lsn(1)).unwrap();
        assert!(r.reads_in_place());
        let mut next = 1u64;
        for to in [3u64, 4, 10, 11, 60, 200, 201] {
            if to > 3 {
                append(&wal, next.max(4), to);
            }
            while let Some(rec) = r.next_record().unwrap() {
                assert_eq!(rec.lsn, Lsn(next), "{pre:?}");
                assert_eq!(rec.payload, payload(next).as_slice(), "{pre:?} record {next}");
                next += 1;
            }
            assert_eq!(next, to + 1, "{pre:?}: caught up with {to}");
        }
        assert!(wal.segment_files().len() >= 3, "{pre:?}: the writer rotated past the reader");
    }
}

/// A flipped byte in a record of an older segment (which recovery does not scan) is
/// reported by a mapped reader exactly as by a buffered one, at the same offset.
#[test]
fn a_mapped_reader_reports_a_bad_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(RealFs::shared(), tmp.path(), opts(Preallocate::None, true)).unwrap();
        append(&wal, 1, 300);
        wal.sync().unwrap();
    }
    let wal = Wal::open(RealFs::shared(), tmp.path(), opts(Preallocate::None, true)).unwrap();
    let (first_lsn, first) = wal.segment_files()[0].clone();
    assert_eq!(first_lsn, Lsn(1));
    drop(wal);
    // The fourth byte of record 5's payload: past the segment header and records 1-4.
    let at = SEGMENT_HEADER_BYTES
        + (1..5).map(|n| RECORD_HEADER_BYTES + payload(n).len()).sum::<usize>()
        + RECORD_HEADER_BYTES
        + 3;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&first).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at as u64).unwrap();
    assert_eq!(byte[0], payload(5)[3], "the byte is where the format says");
    file.write_all_at(&[byte[0] ^ 0x40], at as u64).unwrap();
    drop(file);
    let mut reports = Vec::new();
    for mmap in [false, true] {
        let wal = Wal::open(RealFs::shared(), tmp.path(), opts(Preallocate::None, mmap)).unwrap();
        let mut r = wal.read_from(Lsn(1)).unwrap();
        assert_eq!(r.reads_in_place(), mmap);
        let err = loop {
            match r.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("mmap {mmap}: the damage was not reported"),
                Err(e) => break e,
            }
        };
        let Error::Corrupt { offset, kind: DamageKind::BadChecksum { .. }, .. } = err else {
            panic!("mmap {mmap}: {err:?}");
        };
        reports.push((offset, r.position()));
    }
    let record5 = SEGMENT_HEADER_BYTES
        + (1..5).map(|n| RECORD_HEADER_BYTES + payload(n).len()).sum::<usize>();
    assert_eq!(reports[0], (record5 as u64, Lsn(5)), "buffered");
    assert_eq!(reports[1], reports[0], "mapped");
}

/// The real file system, except that no file can be mapped (as on a file system that
/// cannot map files).
#[derive(Debug)]
struct NoMaps;

#[derive(Debug)]
struct Unmappable(FileRef);

impl VfsFile for Unmappable {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn map(&self) -> io::Result<Option<Mapping>> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this file system cannot map files"))
    }
}

impl Vfs for NoMaps {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef> {
        Ok(Arc::new(Unmappable(RealFs.open(path, mode)?)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        RealFs.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        RealFs.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        RealFs.lock(path)
    }
}

/// A reader asked to read in place on files that cannot be mapped reads through its
/// buffer instead of failing.
#[test]
fn a_reader_falls_back_to_its_buffer_when_a_segment_cannot_be_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = opts(Preallocate::PreWriteInline, true);
    let want = {
        let wal = Wal::open(RealFs::shared(), tmp.path(), opts.clone()).unwrap();
        append(&wal, 1, 200);
        read(&wal, 1, true)
    };
    let wal = Wal::open(Arc::new(NoMaps), tmp.path(), opts).unwrap();
    assert!(wal.segment_files().len() >= 2, "the log rotated");
    assert_eq!(read(&wal, 1, false), want);
    assert_eq!(read(&wal, 150, false), want[149..]);
}

/// This thread's write system calls so far (`syscw` of `/proc/thread-self/io`).
fn write_calls() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("syscw: ")).unwrap().trim().parse().unwrap()
}

/// Every segment file's bytes, in order.
fn segment_bytes(wal: &Wal) -> Vec<Vec<u8>> {
    wal.segment_files().iter().map(|(_, p)| std::fs::read(p).unwrap()).collect()
}

/// Write rounds to pre-written segments copy into a map (`WalOptions::map_appends`)
/// once 16 rounds passed without a sync: the same bytes in the same files as with
/// `pwrite`, without a system call each, and only the newest segment mapped; after a
/// reopen, and after `truncate_after` shortened the mapped segment, appends still land
/// where they should.
#[test]
fn appends_through_a_map_write_what_pwrite_writes() {
    let mut files = Vec::new();
    let mut calls = Vec::new();
    let mut dirs = Vec::new();
    for map in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let o = WalOptions { map_appends: map, ..opts(Preallocate::PreWriteInline, true) };
        let wal = Wal::open(RealFs::shared(), tmp.path(), o).unwrap();
        let before = write_calls();
        append(&wal, 1, 1000);
        calls.push(write_calls() - before);
        assert!(wal.segment_files().len() >= 10, "the log rotated");
        files.push(segment_bytes(&wal));
        // Sealed segments drop their write maps: only the newest is mapped writable.
        assert_eq!(writable_maps(tmp.path()), usize::from(map));
        dirs.push(tmp);
    }
    assert!(files[0] == files[1], "the segment files differ");

    // About 280 rounds: one `pwrite` each, against 16 through the map (the segments'
    // pre-writes and headers are system calls either way).
    assert!(calls[1] + 200 < calls[0], "write system calls: {calls:?}");

    let tmp = &dirs[1];
    let o = opts(Preallocate::PreWriteInline, true);
    let wal = Wal::open(RealFs::shared(), tmp.path(), o.clone()).unwrap();
    append(&wal, 1001, 1100);
    wal.truncate_after(Lsn(1050)).unwrap();
    append(&wal, 1051, 1200);
    drop(wal);
    let wal = Wal::open(RealFs::shared(), tmp.path(), o).unwrap();
    let got = read(&wal, 1, true);
    assert_eq!(got.len(), 1200);
    for (i, r) in got.iter().enumerate() {
        assert_eq!((r.0, r.4.as_slice()), (i as u64 + 1, payload(i as u64 + 1).as_slice()));
    }
}

/// When rounds copy into the map: after 16 rounds without a sync, each round of up to
/// a page; never a larger one; and after a sync, again only once 16 rounds passed. So
/// a log synced after every few appends writes with `pwrite`, as before maps. A
/// reopened log maps its newest segment again.
#[test]
fn only_small_rounds_between_rare_syncs_copy_into_the_map() {
    let tmp = tempfile::tempdir().unwrap();
    let o = WalOptions { segment_bytes: 4 << 20, ..opts(Preallocate::PreWriteInline, true) };
    let wal = Wal::open(RealFs::shared(), tmp.path(), o.clone()).unwrap();
    let small = vec![7u8; 100];
    let big = vec![9u8; 5000];
    let rounds = |body: &[u8], n: usize| -> u64 {
        let before = write_calls();
        for i in 0..n {
            let e = Entry { kind: 1, timestamp: i as i64, payload: body };
            wal.append_batch(&[e], Durability::Buffered).unwrap();
        }
        write_calls() - before
    };
    assert_eq!(rounds(&small, 16), 16, "the first 16 rounds after open");
    assert_eq!(rounds(&small, 50), 0, "small rounds, no sync for 16");
    assert_eq!(rounds(&big, 5), 5, "rounds larger than a page");
    wal.sync().unwrap();
    assert_eq!(rounds(&small, 16), 16, "the 16 rounds after a sync");
    assert_eq!(rounds(&small, 20), 0);
    for _ in 0..5 {
        let e = Entry { kind: 1, timestamp: 0, payload: &small };
        wal.append_batch(&[e], Durability::Durable).unwrap();
    }
    assert_eq!(rounds(&small, 3), 3, "Durable appends");
    drop(wal);
    // Reopened, the newest segment (pre-written, not full) takes rounds through a map.
    let wal = Wal::open(RealFs::shared(), tmp.path(), o).unwrap();
    let rounds = |n: usize| -> u64 {
        let before = write_calls();
        for i in 0..n {
            let e = Entry { kind: 1, timestamp: i as i64, payload: &small };
            wal.append_batch(&[e], Durability::Buffered).unwrap();
        }
        write_calls() - before
    };
    assert_eq!(rounds(16), 16, "the first 16 rounds after a reopen");
    assert_eq!(rounds(20), 0, "the reopened segment is mapped");
    let n = wal.last_lsn().0;
    let mut r = wal.read_from(Lsn(1)).unwrap();
    let mut count = 0;
    while let Some(rec) = r.next_record().unwrap() {
        assert_eq!(rec.payload.len(), if (67..=71).contains(&rec.lsn.0) { 5000 } else { 100 });
        count += 1;
    }
    assert_eq!(count, n);
}

/// How many shared writable maps of files in `dir` this process has.
fn writable_maps(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    maps.lines().filter(|l| l.contains(dir) && l.contains(" rw-s ")).count()
}

/// With `PreWrite`, segments come from spares the background thread pre-writes, and
/// that thread also drops the write maps of the segments the writer sealed: soon at
/// most the newest one is mapped (not when it was created inline, the spare not ready).
#[test]
fn the_background_thread_drops_sealed_segments_maps() {
    let tmp = tempfile::tempdir().unwrap();
    // Each spare starts at once, so that it is ready by the next rotation.
    let o = WalOptions { spare_start_percent: 0, ..opts(Preallocate::PreWrite, true) };
    let wal = Wal::open(RealFs::shared(), tmp.path(), o).unwrap();
    for round in 0..10 {
        append(&wal, round * 100 + 1, round * 100 + 100);
        // Time for the next spare, so that rotations take pre-written segments.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(wal.segment_files().len() >= 10, "the log rotated");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while writable_maps(tmp.path()) > 1 {
        assert!(std::time::Instant::now() < deadline, "sealed segments are still mapped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(read(&wal, 1, true).len(), 1000);
}
