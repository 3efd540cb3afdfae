//! The WAL's API behaviour: LSNs, batches, limits, rotation, replay, truncation,
//! recovery reports, and group commit across threads on the real file system.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bourse_fs::{OpenMode, RealFs, SimFs, Vfs};
use bourse_wal::{
    verify_dir, DamageKind, Durability, Entry, Error, Lsn, Preallocate, RecoveryMode, Wal,
    WalOptions,
};
use common::{dir, read_all, small_opts};

fn entry(payload: &[u8]) -> Entry<'_> {
    Entry { kind: 9, timestamp: 77, payload }
}

fn open(fs: &SimFs, opts: &WalOptions) -> Wal {
    Wal::open(fs.shared(), dir(), opts.clone()).unwrap()
}

#[test]
fn lsns_continue_across_reopen_and_rotation() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    {
        let wal = open(&fs, &opts);
        for i in 0..40u8 {
            let r = wal.append(entry(&[i; 50]), Durability::Buffered).unwrap();
            assert_eq!(r.first, Lsn(u64::from(i) + 1));
        }
        assert!(wal.segment_files().len() > 3, "small segments rotate");
        assert!(wal.stats().rotations >= 3);
    }
    let wal = open(&fs, &opts);
    assert_eq!(wal.last_lsn(), Lsn(40));
    assert!(wal.recovery().cuts.is_empty());
    let files = wal.segment_files();
    for (first, path) in &files {
        assert!(path.ends_with(format!("{:020}.wal", first.0)));
    }
    let r = wal.append_batch(&[entry(b"a"), entry(b"b")], Durability::Durable).unwrap();
    assert_eq!((r.first, r.last), (Lsn(41), Lsn(42)));
    let all = read_all(&wal).unwrap();
    assert_eq!(all.len(), 42);
    assert_eq!(all[10].1.payload, vec![10u8; 50]);
    assert!(verify_dir(&fs, &dir(), &opts).unwrap().is_clean());
}

#[test]
fn bad_appends_are_refused_and_change_nothing() {
    let fs = SimFs::new();
    let mut opts = small_opts(Preallocate::None);
    opts.record_bytes_max = 100;
    opts.batch_records_max = 4;
    opts.segment_bytes = 400;
    let wal = open(&fs, &opts);
    wal.append(entry(b"ok"), Durability::Durable).unwrap();
    assert!(matches!(wal.append_batch(&[], Durability::Durable), Err(Error::EmptyBatch)));
    let big = [0u8; 101];
    assert!(matches!(
        wal.append(entry(&big), Durability::Durable),
        Err(Error::RecordTooLarge { bytes: 101, max: 100 })
    ));
    let many = vec![entry(b"x"); 5];
    assert!(matches!(
        wal.append_batch(&many, Durability::Durable),
        Err(Error::BatchTooLarge { records: 5, .. })
    ));
    let wide = vec![entry(&[1u8; 100]); 4];
    assert!(
        matches!(wal.append_batch(&wide, Durability::Durable), Err(Error::BatchTooLarge { .. })),
        "must fit a segment"
    );
    assert_eq!(wal.last_lsn(), Lsn(1));
    assert!(!wal.is_poisoned());
    assert_eq!(wal.append(entry(b"next"), Durability::Durable).unwrap().first, Lsn(2));
}

#[test]
fn invalid_options_are_rejected() {
    let fs = SimFs::new();
    let opts = WalOptions { segment_bytes: 10, ..WalOptions::default() };
    assert!(matches!(Wal::open(fs.shared(), dir(), opts), Err(Error::InvalidOptions(_))));
    let opts = WalOptions { first_lsn: Lsn(0), ..WalOptions::default() };
    assert!(matches!(Wal::open(fs.shared(), dir(), opts), Err(Error::InvalidOptions(_))));
}

#[test]
fn a_queued_batch_is_written_by_whoever_writes_next() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    {
        let wal = open(&fs, &opts);
        wal.append(entry(b"x"), Durability::Buffered).unwrap();
        // Queued: LSNs assigned, nothing written yet.
        let q = wal.queue_batch_unwritten(&[entry(b"a"), entry(b"b")]).unwrap();
        assert_eq!((q.first, q.last), (Lsn(2), Lsn(3)));
        assert_eq!(wal.last_lsn(), Lsn(1));
        assert_eq!(read_all(&wal).unwrap().len(), 1);
        // A later append writes it too, in LSN order, and its own wait finds it done.
        let r = wal.append(entry(b"c"), Durability::Buffered).unwrap();
        assert_eq!(r.first, Lsn(4));
        assert_eq!(wal.last_lsn(), Lsn(4));
        wal.wait_written(q.last).unwrap();
        // Queued and waited for by itself.
        let q = wal.queue_batch_unwritten(&[entry(b"d")]).unwrap();
        wal.wait_written(q.last).unwrap();
        assert_eq!(wal.last_lsn(), Lsn(5));
        // Bad batches are refused and take no LSN.
        assert!(matches!(wal.queue_batch_unwritten(&[]), Err(Error::EmptyBatch)));
        // Queued and never waited for: dropped with the writer.
        wal.queue_batch_unwritten(&[entry(b"lost")]).unwrap();
    }
    let wal = open(&fs, &opts);
    let payloads: Vec<Vec<u8>> = read_all(&wal).unwrap().into_iter().map(|r| r.1.payload).collect();
    assert_eq!(payloads, [&b"x"[..], b"a", b"b", b"c", b"d"]);
    assert_eq!(wal.append(entry(b"e"), Durability::Buffered).unwrap().first, Lsn(6));
}

#[test]
fn replay_from_any_lsn_and_follow_new_appends() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::PreWriteInline);
    let wal = open(&fs, &opts);
    for i in 0..30u8 {
        wal.append(entry(&[i; 20]), Durability::Buffered).unwrap();
    }
    for from in [1u64, 2, 15, 30, 31] {
        let mut r = wal.read_from(Lsn(from)).unwrap();
        let mut n = from;
        while let Some(rec) = r.next_record().unwrap() {
            assert_eq!(rec.lsn, Lsn(n));
            assert_eq!(rec.payload, &[(n - 1) as u8; 20]);
            n += 1;
        }
        assert_eq!(n, 31);
    }
    assert!(matches!(wal.read_from(Lsn(0)), Err(Error::OutOfRange { .. })));
    assert!(matches!(wal.read_from(Lsn(32)), Err(Error::OutOfRange { .. })));
    // A caught-up reader sees later appends, across rotations.
    let mut r = wal.read_from(Lsn(31)).unwrap();
    assert!(r.next_record().unwrap().is_none());
    for i in 30..60u8 {
        wal.append(entry(&[i; 20]), Durability::Buffered).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!((rec.lsn, rec.payload[0]), (Lsn(u64::from(i) + 1), i));
    }
}

#[test]
fn truncate_before_keeps_the_active_segment_and_every_later_record() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    let wal = open(&fs, &opts);
    for i in 0..50u8 {
        wal.append(entry(&[i; 40]), Durability::Buffered).unwrap();
    }
    let before = wal.segment_files().len();
    let removed = wal.truncate_before(Lsn(25)).unwrap();
    assert!(removed > 0 && removed < before);
    assert!(wal.first_lsn() <= Lsn(25));
    let mut r = wal.read_from(Lsn(25)).unwrap();
    assert_eq!(r.next_record().unwrap().unwrap().lsn, Lsn(25));
    // Even a checkpoint past the end keeps the active segment.
    wal.truncate_before(Lsn(1000)).unwrap();
    assert_eq!(wal.segment_files().len(), 1);
    assert!(wal.first_lsn() <= Lsn(50));
    drop(wal);
    let wal = open(&fs, &opts);
    assert_eq!(wal.last_lsn(), Lsn(50));
}

#[test]
fn truncate_after_cuts_mid_batch_durably() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    let wal = open(&fs, &opts);
    for i in 0..10u8 {
        let (a, b, c) = ([i; 30], [i; 31], [i; 32]);
        wal.append_batch(&[entry(&a), entry(&b), entry(&c)], Durability::Buffered).unwrap();
    }
    wal.truncate_after(Lsn(20)).unwrap(); // LSN 20 is the middle of batch 7 (19..=21)
    assert_eq!(wal.last_lsn(), Lsn(20));
    assert_eq!(wal.append(entry(b"new"), Durability::Buffered).unwrap().first, Lsn(21));
    wal.truncate_after(Lsn(20)).unwrap();
    drop(wal);
    fs.crash(bourse_fs::CrashFate::LoseUnsynced);
    let wal = open(&fs, &opts);
    let all = read_all(&wal).unwrap();
    assert_eq!(all.len(), 20);
    assert!(all[19].2, "LSN 20 now ends its batch");
    // Truncating to just before the first record leaves an empty log at that LSN.
    wal.truncate_after(Lsn(0)).unwrap();
    assert_eq!(wal.append(entry(b"a"), Durability::Durable).unwrap().first, Lsn(1));
}

fn newest_segment(fs: &SimFs) -> std::path::PathBuf {
    let names = fs.list_dir(&dir()).unwrap();
    dir().join(names.iter().rfind(|n| n.ends_with(".wal")).unwrap())
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    {
        let wal = open(&fs, &opts);
        for i in 0..5u8 {
            wal.append(entry(&[i; 30]), Durability::Durable).unwrap();
        }
    }
    let path = newest_segment(&fs);
    let f = fs.open(&path, OpenMode::ReadWrite).unwrap();
    let len = f.len().unwrap();
    f.write_all_at(&[0xAB; 17], len).unwrap(); // half a record header
    let report = verify_dir(&fs, &dir(), &opts).unwrap();
    assert!(report.is_clean(), "a torn tail is tolerated");
    assert!(report.segments.last().unwrap().tolerated);
    let wal = open(&fs, &opts);
    assert_eq!(wal.last_lsn(), Lsn(5));
    let cut = &wal.recovery().cuts[0];
    assert_eq!((cut.offset, cut.bytes), (len, 17));
    assert!(cut.reason.contains("truncated record header"), "{}", cut.reason);
}

#[test]
fn damage_followed_by_an_intact_record_is_corruption_unless_salvaging() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    {
        let wal = open(&fs, &opts);
        wal.append(entry(&[1; 30]), Durability::Durable).unwrap();
        wal.append(entry(&[2; 30]), Durability::Durable).unwrap();
    }
    let path = newest_segment(&fs);
    let first_payload_byte = 32 + 28;
    fs.flip_bit(&path, first_payload_byte, 3).unwrap();
    match Wal::open(fs.shared(), dir(), opts.clone()) {
        Err(Error::Corrupt { segment, offset, kind }) => {
            assert_eq!(segment, path);
            assert_eq!(offset, 32);
            assert!(matches!(kind, DamageKind::BadChecksum { .. }));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(!verify_dir(&fs, &dir(), &opts).unwrap().is_clean());
    let salvage = WalOptions { recovery: RecoveryMode::Salvage, ..opts };
    let wal = Wal::open(fs.shared(), dir(), salvage).unwrap();
    assert_eq!(wal.last_lsn(), Lsn(0));
    assert_eq!(wal.recovery().cuts.len(), 1);
}

#[test]
fn a_torn_segment_creation_is_removed() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    drop(open(&fs, &opts));
    let stray = dir().join(format!("{:020}.wal", 1_000));
    let f = fs.open(&stray, OpenMode::CreateNew).unwrap();
    f.write_all_at(b"BOURS", 0).unwrap();
    let wal = open(&fs, &opts);
    assert_eq!(wal.recovery().cuts.len(), 1);
    assert!(!fs.exists(&stray).unwrap());
}

#[test]
fn concurrent_durable_appenders_share_fsyncs_on_a_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = WalOptions { segment_bytes: 256 << 10, ..WalOptions::default() };
    let wal = Arc::new(Wal::open(RealFs::shared(), tmp.path(), opts.clone()).unwrap());
    const THREADS: usize = 8;
    const PER: usize = 100;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..PER)
                    .map(|i| {
                        let payload = format!("t{t}-{i}").repeat(10);
                        (
                            wal.append(entry(payload.as_bytes()), Durability::Durable)
                                .unwrap()
                                .first,
                            payload,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(Lsn, String)> =
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    acked.sort();
    let lsns: Vec<u64> = acked.iter().map(|(l, _)| l.0).collect();
    assert_eq!(lsns, (1..=(THREADS * PER) as u64).collect::<Vec<_>>(), "every LSN assigned once");
    let stats = wal.stats();
    assert!(stats.syncs < stats.batches, "group commit coalesces fsyncs: {stats:?}");
    assert_eq!(wal.durable_lsn(), Lsn((THREADS * PER) as u64));
    drop(wal);
    // The background pre-writer and rotation leave a log that replays exactly.
    let wal = Wal::open(RealFs::shared(), tmp.path(), opts).unwrap();
    let all = read_all(&wal).unwrap();
    for ((lsn, payload), (got_lsn, rec, _)) in acked.iter().zip(&all) {
        assert_eq!((lsn, payload.as_bytes()), (got_lsn, rec.payload.as_slice()));
    }
}

/// Regression: a reader that caught up in the middle of a segment had buffered the zero
/// bytes after the data. When the writer then filled that segment and rotated, the reader
/// took the stale zeros for the segment's end and reported a false gap before the next
/// segment. A reader now re-reads its segment before moving on.
#[test]
fn a_caught_up_reader_survives_rotation_past_its_buffer() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        let fs = SimFs::new();
        let mut opts = small_opts(pre);
        opts.read_chunk_bytes = 4096;
        let wal = open(&fs, &opts);
        wal.append(entry(&[0; 20]), Durability::Buffered).unwrap();
        let mut r = wal.read_from(Lsn(1)).unwrap();
        assert_eq!(r.next_record().unwrap().unwrap().lsn, Lsn(1));
        assert!(r.next_record().unwrap().is_none());
        for i in 1..40u8 {
            wal.append(entry(&[i; 20]), Durability::Buffered).unwrap();
        }
        assert!(wal.segment_files().len() >= 3, "the writer rotated past the reader");
        for i in 1..40u64 {
            let rec = r
                .next_record()
                .unwrap()
                .unwrap_or_else(|| panic!("{pre:?}: record {} missing", i + 1));
            assert_eq!(rec.lsn, Lsn(i + 1));
            assert_eq!(rec.payload, &[i as u8; 20]);
        }
    }
}

#[test]
fn a_lone_torn_segment_keeps_the_log_position() {
    let fs = SimFs::new();
    fs.create_dir_all(&dir()).unwrap();
    let lone = dir().join(format!("{:020}.wal", 500));
    fs.open(&lone, OpenMode::CreateNew).unwrap().write_all_at(b"BOURSWAL\x01", 0).unwrap();
    let wal = open(&fs, &small_opts(Preallocate::None));
    assert_eq!(wal.recovery().cuts.len(), 1);
    assert_eq!(wal.append(entry(b"x"), Durability::Durable).unwrap().first, Lsn(500));
}

#[test]
fn a_second_writer_is_locked_out() {
    let fs = SimFs::new();
    let opts = small_opts(Preallocate::None);
    let first = open(&fs, &opts);
    assert!(matches!(Wal::open(fs.shared(), dir(), opts.clone()), Err(Error::Locked { .. })));
    drop(first);
    let again = open(&fs, &opts);
    drop(again);
    let tmp = tempfile::tempdir().unwrap();
    let real = Wal::open(
        RealFs::shared(),
        tmp.path(),
        WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() },
    )
    .unwrap();
    let second = Wal::open(RealFs::shared(), tmp.path(), WalOptions::default());
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    drop(real);
}

#[test]
fn a_deferred_spare_is_prepared_only_once_started() {
    let fs = SimFs::new();
    let opts = WalOptions {
        defer_preallocation: true,
        segment_bytes: 64 << 10,
        spare_start_percent: 0,
        ..small_opts(Preallocate::PreWrite)
    };
    let wal = open(&fs, &opts);
    let spare = dir().join("spare.wal.ready");
    // Appends and rotations work meanwhile (a rotation creates its segment inline).
    let payload = [5u8; 1000];
    for _ in 0..200 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    assert!(wal.segment_files().len() > 2, "the log rotated while the spare was held back");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!wal.preallocation_ready());
    assert!(!fs.exists(&spare).unwrap(), "nothing was pre-written before the start");
    wal.start_preallocation();
    wait_spare(&wal);
    assert_eq!(fs.contents(&spare).unwrap().len() as u64, opts.segment_bytes);
    assert_eq!(read_all(&wal).unwrap().len(), 200);
}

#[test]
fn a_whole_spare_is_kept_across_reopen_and_a_wrong_one_removed() {
    let fs = SimFs::new();
    let opts = WalOptions {
        segment_bytes: 64 << 10,
        spare_start_percent: 0,
        ..small_opts(Preallocate::PreWrite)
    };
    let spare = dir().join("spare.wal.ready");
    {
        let wal = open(&fs, &opts);
        wal.append(entry(b"one"), Durability::Durable).unwrap();
        wait_spare(&wal);
    }
    // Reopened with the pre-writing held back, the spare is ready all the same: the
    // earlier one was kept. Rotation uses it.
    let held = WalOptions { defer_preallocation: true, ..opts.clone() };
    let wal = open(&fs, &held);
    assert!(wal.preallocation_ready(), "the earlier spare was kept");
    let payload = [9u8; 1000];
    for _ in 0..100 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    assert!(wal.segment_files().len() >= 2);
    assert_eq!(read_all(&wal).unwrap().len(), 101);
    wal.start_preallocation();
    wait_spare(&wal);
    drop(wal);
    // A spare of another size (the segment size changed) is removed, and a new one made.
    let bigger = WalOptions { segment_bytes: 128 << 10, ..opts.clone() };
    let wal = open(&fs, &bigger);
    wait_spare(&wal);
    assert_eq!(fs.contents(&spare).unwrap().len() as u64, bigger.segment_bytes);
    drop(wal);
    // Without background pre-writing, a spare is not kept.
    let inline = WalOptions { preallocate: Preallocate::PreWriteInline, ..bigger };
    let _wal = open(&fs, &inline);
    assert!(!fs.exists(&spare).unwrap());
}

/// Polls until the spare is ready; fails after 30 s.
fn wait_spare(wal: &Wal) {
    let t = std::time::Instant::now();
    while !wal.preallocation_ready() {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "the spare never came");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A log on a segment that is not pre-written (one recovery cut, one grown without
/// preallocation, or one made because appends outran the spare) moves to the spare at
/// the next write round once a spare is ready, however little the segment holds:
/// appends to a segment that grows cost about twice as much, and so do its syncs.
#[test]
fn a_log_leaves_a_segment_that_is_not_pre_written_once_a_spare_is_ready() {
    let fs = SimFs::new();
    let opts = WalOptions { segment_bytes: 64 << 10, ..small_opts(Preallocate::PreWrite) };
    let none = WalOptions { preallocate: Preallocate::None, ..opts.clone() };
    let payload = [3u8; 100];
    let wal = open(&fs, &none);
    let r = wal.append(entry(&payload), Durability::Durable).unwrap();
    drop(wal);
    let first = dir().join("00000000000000000001.wal");
    assert!((fs.contents(&first).unwrap().len() as u64) < opts.segment_bytes);
    let wal = open(&fs, &opts);
    // The spare does not wait for this segment to fill.
    wait_spare(&wal);
    assert_eq!(wal.segment_files().len(), 1);
    let r2 = wal.append(entry(&payload), Durability::Durable).unwrap();
    let files = wal.segment_files();
    assert_eq!(files.len(), 2, "the log did not move to the spare");
    assert_eq!(files[1].0, r2.first, "the new segment starts with the next record");
    assert_eq!(fs.contents(&files[1].1).unwrap().len() as u64, opts.segment_bytes);
    assert!((fs.contents(&first).unwrap().len() as u64) < 1024, "the old segment kept growing");
    // The records read back across the two segments, in order, after a reopen.
    drop(wal);
    let wal = open(&fs, &opts);
    let mut reader = wal.read_from(r.first).unwrap();
    let got: Vec<u64> =
        std::iter::from_fn(|| reader.next_record().unwrap().map(|rec| rec.lsn.0)).collect();
    assert_eq!(got, [r.first.0, r2.first.0]);
    // A pre-written segment is not left early: the next spare waits for it to fill.
    for _ in 0..5 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(wal.segment_files().len(), 2);
}

#[test]
fn a_spare_waits_for_the_active_segment_to_fill_to_its_start() {
    let fs = SimFs::new();
    let opts = WalOptions {
        segment_bytes: 64 << 10,
        spare_start_percent: 50,
        ..small_opts(Preallocate::PreWrite)
    };
    let spare = dir().join("spare.wal.ready");
    let wal = open(&fs, &opts);
    // Below half of the first segment: nothing is pre-written.
    let payload = [3u8; 1000];
    for _ in 0..20 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!wal.preallocation_ready(), "the spare started before the segment was half full");
    assert!(!fs.exists(&spare).unwrap());
    assert!(!fs.exists(&dir().join("spare.wal.tmp")).unwrap());
    // Past half: the spare comes.
    for _ in 0..20 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    wait_spare(&wal);
    assert_eq!(fs.contents(&spare).unwrap().len() as u64, opts.segment_bytes);
    // The rotation takes it, and the next spare waits for the new segment in turn.
    while wal.segment_files().len() < 2 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!wal.preallocation_ready(), "the next spare did not wait for its segment");
    drop(wal);
    // Filled to about two thirds while the start is at 90%: still no spare.
    let late = WalOptions { spare_start_percent: 90, ..opts.clone() };
    let wal = open(&fs, &late);
    let files = wal.segment_files().len();
    for _ in 0..40 {
        wal.append(entry(&payload), Durability::Buffered).unwrap();
    }
    assert_eq!(wal.segment_files().len(), files, "the segment filled up: adjust the test");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!wal.preallocation_ready());
    drop(wal);
    // Reopened with the start at half, which the active segment is past: the spare
    // comes with no append.
    let wal = open(&fs, &opts);
    wait_spare(&wal);
    assert_eq!(wal.segment_files().len(), files);
    // Over 90 is refused.
    let bad = WalOptions { spare_start_percent: 91, ..opts };
    assert!(matches!(
        Wal::open(fs.shared(), dir(), bad),
        Err(bourse_wal::Error::InvalidOptions(_))
    ));
}

/// A file system whose `sync_data` calls wait while a gate is closed, and count how
/// many are waiting: for showing what goes on while an `fdatasync` is slow.
#[derive(Debug)]
struct GatedFs {
    inner: Arc<dyn Vfs>,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    state: std::sync::Mutex<(bool, usize)>, // (closed, syncs waiting)
    cond: std::sync::Condvar,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().0 = closed;
        self.cond.notify_all();
    }
    fn pass(&self) {
        let mut st = self.state.lock().unwrap();
        st.1 += 1;
        self.cond.notify_all();
        while st.0 {
            st = self.cond.wait(st).unwrap();
        }
        st.1 -= 1;
    }
    fn wait_for_waiters(&self, n: usize) {
        let mut st = self.state.lock().unwrap();
        while st.1 < n {
            st = self.cond.wait(st).unwrap();
        }
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: bourse_fs::FileRef,
    gate: Arc<Gate>,
}

impl bourse_fs::VfsFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

impl Vfs for GatedFs {
    fn create_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&self, path: &std::path::Path, mode: OpenMode) -> std::io::Result<bourse_fs::FileRef> {
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(GatedFile { inner, gate: self.gate.clone() }))
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &std::path::Path) -> std::io::Result<bool> {
        self.inner.exists(path)
    }
    fn lock(&self, path: &std::path::Path) -> std::io::Result<bourse_fs::LockGuard> {
        self.inner.lock(path)
    }
}

/// While one appender's `fdatasync` is stuck, other appenders' `Buffered` appends are
/// written and acknowledged, and readers see them; a `Durable` append waits for the
/// sync after it, which covers it. (A slow sync used to hold every write behind it.)
#[test]
fn buffered_appends_do_not_wait_for_a_slow_sync() {
    let sim = SimFs::new();
    let gate = Arc::new(Gate::default());
    let fs: Arc<dyn Vfs> = Arc::new(GatedFs { inner: sim.shared(), gate: gate.clone() });
    let mut opts = WalOptions { preallocate: Preallocate::None, ..WalOptions::default() };
    opts.segment_bytes = 1 << 20;
    let wal = Arc::new(Wal::open(fs, dir(), opts).unwrap());
    wal.append(entry(b"before"), Durability::Durable).unwrap();

    gate.set_closed(true);
    let w = wal.clone();
    let stuck = std::thread::spawn(move || w.append(entry(b"durable-1"), Durability::Durable));
    gate.wait_for_waiters(1);

    let (tx, rx) = std::sync::mpsc::channel();
    let w = wal.clone();
    std::thread::spawn(move || {
        let r = w.append_batch(&[entry(b"buffered-1"), entry(b"buffered-2")], Durability::Buffered);
        tx.send(r.map(|r| r.last)).unwrap();
    });
    let last = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("a Buffered append waited for someone else's fdatasync")
        .unwrap();
    assert_eq!(last, Lsn(4));
    assert_eq!(wal.last_lsn(), Lsn(4));
    assert_eq!(read_all(&wal).unwrap().len(), 4);
    assert_eq!(wal.durable_lsn(), Lsn(1), "nothing after the stuck sync is durable yet");

    // A Durable append behind the stuck sync is written, then waits for a sync of its own.
    let w = wal.clone();
    let behind = std::thread::spawn(move || w.append(entry(b"durable-2"), Durability::Durable));
    while wal.last_lsn() < Lsn(5) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!behind.is_finished() && !stuck.is_finished());
    assert_eq!(wal.durable_lsn(), Lsn(1));

    gate.set_closed(false);
    assert_eq!(stuck.join().unwrap().unwrap().last, Lsn(2));
    assert_eq!(behind.join().unwrap().unwrap().last, Lsn(5));
    assert_eq!(wal.durable_lsn(), Lsn(5));
    let synced_before_crash = wal.durable_lsn();
    drop(wal);
    sim.crash(bourse_fs::CrashFate::LoseUnsynced);
    let wal = Wal::open(sim.shared(), dir(), WalOptions::default()).unwrap();
    assert_eq!(wal.last_lsn(), synced_before_crash, "everything acknowledged Durable survived");
}

/// A pre-written segment goes to the device a mebibyte at a time as it is written (a
/// hint the file system records), not all at once in its sync.
#[test]
fn pre_written_segments_start_writeback_as_they_are_written() {
    let fs = SimFs::new();
    let opts = WalOptions {
        segment_bytes: 4 << 20,
        preallocate: Preallocate::PreWriteInline,
        // The appends' own hints are `tests/writeback.rs`'s.
        writeback_bytes: 0,
        ..WalOptions::default()
    };
    let wal = open(&fs, &opts);
    assert_eq!(fs.writeback_hints(), (4, 4 << 20), "the first segment, pre-written at open");
    let big = vec![1u8; 3 << 20];
    wal.append(entry(&big), Durability::Durable).unwrap();
    wal.append(entry(&big), Durability::Durable).unwrap();
    assert_eq!(fs.writeback_hints(), (8, 8 << 20), "and the next, at rotation");
}
