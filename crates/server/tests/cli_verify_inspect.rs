//! `bourse verify` and `bourse inspect wal` against journals written by the WAL:
//! clean, with a torn tail, and with corruption in an older segment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use bourse_fs::RealFs;
use bourse_model::samples::sample;
use bourse_model::EventKind;
use bourse_wal::{Durability, Entry, Preallocate, Wal, WalOptions};

fn bourse(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bourse")).args(args).output().expect("run bourse");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Writes 300 events in growing (not pre-written) segments of 8 KiB under `data/wal`, so
/// every file ends where its data ends; returns the segment paths.
fn journal(data: &Path) -> Vec<std::path::PathBuf> {
    let opts = WalOptions {
        segment_bytes: 8 << 10,
        preallocate: Preallocate::None,
        ..WalOptions::default()
    };
    let wal = Wal::open(RealFs::shared(), data.join("wal"), opts).unwrap();
    for n in 0..300u64 {
        let kind = EventKind::ALL[(n % 18) as usize];
        let payload = sample(kind, n).encode().unwrap();
        wal.append(
            Entry { kind: kind.as_u16(), timestamp: n as i64, payload: &payload },
            Durability::Durable,
        )
        .unwrap();
    }
    wal.segment_files().into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_clean_journal_verifies_and_inspects() {
    let tmp = tempfile::tempdir().unwrap();
    let segments = journal(tmp.path());
    assert!(segments.len() > 2);
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("300 records") && out.contains("verify: clean"), "{out}");
    let (code, out) =
        bourse(&["inspect", "wal", tmp.path().join("wal").to_str().unwrap(), "--limit", "18"]);
    assert_eq!(code, 0, "{out}");
    for kind in EventKind::ALL {
        assert!(
            out.contains(&format!("{{\"type\":\"{}\"", kind.name())),
            "{} missing:\n{out}",
            kind.name()
        );
    }
}

#[test]
fn a_torn_tail_is_reported_as_tolerated() {
    let tmp = tempfile::tempdir().unwrap();
    let segments = journal(tmp.path());
    let newest = segments.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    bytes.extend_from_slice(&[0x5A; 11]);
    std::fs::write(newest, bytes).unwrap();
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("torn tail, tolerated"), "{out}");
}

#[test]
fn corruption_in_an_older_segment_fails_naming_segment_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let segments = journal(tmp.path());
    let victim = &segments[1];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[32 + 40] ^= 0x04; // inside the first record's payload
    std::fs::write(victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap();
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(name) && out.contains("CORRUPT") && out.contains("checksum mismatch"),
        "{out}"
    );
    assert!(out.contains("at offset 32"), "{out}");
    assert_eq!(out.matches("CORRUPT").count(), 1, "one damaged segment, no cascade: {out}");
    let (code, out) = bourse(&["inspect", "wal", victim.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("decoding stopped at offset 32"), "{out}");
}

#[test]
fn verify_without_a_journal_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(out.contains("no WAL"), "{out}");
}

#[test]
fn the_demo_writes_a_journal_that_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().to_str().unwrap();
    let (code, out) = bourse(&[
        "selftest",
        "--data",
        data,
        "--events",
        "5000",
        "--writers",
        "3",
        "--batch",
        "16",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("submitted 5000 events") && out.contains("verify: clean"), "{out}");
    assert!(out.contains("recovery replayed 5000 WAL records"), "{out}");
    assert!(out.contains("applied LSN 5000"), "{out}");
    // A listed partition without a tree, as a crash between the list and the tree leaves
    // it: with the whole WAL there, the open recreates and refills it, so it is a note.
    let tree = tmp.path().join("parts/instruments/DCE.m2601");
    let aside = tmp.path().join("aside");
    std::fs::rename(&tree, &aside).unwrap();
    let (code, out) = bourse(&["verify", "--data", data]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("DCE.m2601 is listed") && out.contains("no tree yet"), "{out}");
    assert!(out.contains("replays the WAL after LSN 0"), "{out}");
    std::fs::rename(&aside, &tree).unwrap();
    // The second run starts where the first ended; its checkpoint left nothing to replay
    // but what it wrote itself.
    let (code, out) = bourse(&["selftest", "--data", data, "--events", "1000"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the journal ends at LSN 5000") && out.contains("LSN 1..=6000"), "{out}");
    assert!(out.contains("recovery replayed 1000 WAL records"), "{out}");
    // A backup of the result opens to the same journal.
    let backup = tmp.path().join("copy");
    let (code, out) = bourse(&["backup", "--data", data, "--to", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("journal up to LSN 6000"), "{out}");
    let (code, out) = bourse(&["verify", "--data", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("engine: 5 instrument partitions listed"), "{out}");
    assert!(out.contains("engine: key layout 2"), "{out}");
    // A key layout this build does not open is a failure, named; so is a directory
    // with data and no layout file (written before the file existed).
    let layout = backup.join(bourse_engine::layout::LAYOUT_FILE);
    std::fs::write(&layout, "bourse key layout 9\n").unwrap();
    let (code, out) = bourse(&["verify", "--data", backup.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("INCOMPATIBLE: key layout 9"), "{out}");
    std::fs::remove_file(&layout).unwrap();
    let (code, out) = bourse(&["verify", "--data", backup.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("INCOMPATIBLE: key layout 1 (no layout file)"), "{out}");
    std::fs::write(&layout, "bourse key layout 2\n").unwrap();
    // A partition the engine would not open is a failure, named.
    std::fs::remove_file(backup.join("parts/instruments/PARTITIONS")).unwrap();
    let (code, out) = bourse(&["verify", "--data", backup.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SHFE.cu2512 is not listed"), "{out}");
}

/// A listed partition without a tree in a store whose WAL was truncated: what its tree
/// held may be gone, so it fails verification.
#[test]
fn a_listed_partition_without_a_tree_after_truncation_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = bourse_engine::EngineOptions {
        memtable_bytes: 64 << 10,
        wal_retain_bytes: 0,
        ..bourse_engine::EngineOptions::default()
    };
    o.wal.segment_bytes = 64 << 10;
    o.wal.preallocate = Preallocate::None;
    let e = bourse_engine::Engine::open(tmp.path(), o).unwrap();
    for n in 0..2000u64 {
        let ev = bourse_model::samples::exchange_event(n, 1_700_000_000_000_000_000);
        e.submit(&[ev], bourse_engine::Durability::Buffered).unwrap();
    }
    e.checkpoint().unwrap();
    assert!(e.first_retained_lsn() > 1, "the checkpoint truncated nothing");
    e.close().unwrap();
    let data = tmp.path().to_str().unwrap();
    let (code, out) = bourse(&["verify", "--data", data]);
    assert_eq!(code, 0, "{out}");
    let inst = tmp.path().join("parts/instruments");
    let name = std::fs::read_to_string(inst.join("PARTITIONS")).unwrap();
    let name = name.lines().next().unwrap().to_string();
    std::fs::remove_dir_all(inst.join(&name)).unwrap();
    let (code, out) = bourse(&["verify", "--data", data]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{name} is listed")) && out.contains("they are lost"), "{out}");
}

/// A data directory of another key layout stops `bourse demo` with the layout error,
/// and, since the demo's data is simulated, how to start afresh; nothing is written.
#[test]
fn the_demo_on_a_directory_of_another_key_layout_says_how_to_start_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("old");
    // A WAL directory and no layout file: written before the file existed (layout 1).
    std::fs::create_dir_all(data.join("wal")).unwrap();
    let (code, out) =
        bourse(&["demo", "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("holds key layout 1") && out.contains("reads only layout 2"), "{out}");
    assert!(out.contains("remove") && out.contains("to start afresh"), "{out}");
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["wal"], "the refused open wrote something");
}
