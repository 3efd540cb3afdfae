//! Crash enumeration (RELIABILITY.md, harness 2) across flush, compaction and manifest
//! rotation: crash after each file-system call with each of three fates; the tree must
//! reopen, report a flushed sequence at least as high as any it reported before the
//! crash, and after replaying the writes above it (as the engine replays its WAL) hold
//! exactly the model's state. Canaries prove the harness catches the classic mistakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Bound;

use bourse_fs::{CrashFate, FaultKind, SimFs};
use bourse_lsm::{Canary, Tree, TreeOptions, MAX_SEQ};

const WRITES: u64 = 400;

fn opts(canary: Canary) -> TreeOptions {
    TreeOptions {
        memtable_bytes: 3800,
        immutables_max: 1,
        block_bytes: 256,
        l0_compaction_trigger: 2,
        level1_bytes: 3 << 10,
        table_bytes: 2 << 10,
        manifest_bytes_max: 1500,
        levels: 4,
        background: false,
        canary,
        ..TreeOptions::default()
    }
}

fn write(seq: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let key = format!("key{:03}", seq * 7 % 61).into_bytes();
    if seq.is_multiple_of(9) {
        (key, None)
    } else {
        (key, Some(vec![(seq % 250) as u8; (seq * 13 % 90) as usize]))
    }
}

/// Runs the workload until the first error; returns the flushed sequence last reported
/// and whether an error stopped it.
fn workload(tree: &Tree) -> (u64, bool) {
    let mut acked = 0;
    for seq in 1..=WRITES {
        let (k, v) = write(seq);
        let r = match &v {
            Some(v) => tree.put(&k, v, seq),
            None => tree.delete(&k, seq),
        };
        let r = r.and_then(|()| if seq % 25 == 0 { tree.maintain().map(drop) } else { Ok(()) });
        let r = r.and_then(|()| if seq % 120 == 0 { tree.flush() } else { Ok(()) });
        if r.is_err() {
            return (acked, true);
        }
        acked = tree.flushed_seq();
    }
    (acked, false)
}

fn model() -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for seq in 1..=WRITES {
        match write(seq) {
            (k, Some(v)) => m.insert(k, v),
            (k, None) => m.remove(&k),
        };
    }
    m
}

fn recover_and_check(fs: &SimFs, opts: &TreeOptions, acked: u64) -> Result<(), String> {
    let tree =
        Tree::open(fs.shared(), "/db", opts.clone()).map_err(|e| format!("reopen failed: {e}"))?;
    let flushed = tree.flushed_seq();
    if flushed < acked {
        return Err(format!("flushed sequence went back from {acked} to {flushed}"));
    }
    for seq in flushed + 1..=WRITES {
        let (k, v) = write(seq);
        match v {
            Some(v) => tree.put(&k, &v, seq),
            None => tree.delete(&k, seq),
        }
        .map_err(|e| format!("replay write {seq}: {e}"))?;
    }
    tree.maintain().map_err(|e| format!("maintain after recovery: {e}"))?;
    let got: Result<Vec<_>, _> = tree.range(Bound::Unbounded, Bound::Unbounded, MAX_SEQ).collect();
    let got = got.map_err(|e| format!("scan after recovery: {e}"))?;
    let want: Vec<_> = model().into_iter().collect();
    if got != want {
        return Err(format!("state differs: {} pairs, model has {}", got.len(), want.len()));
    }
    Ok(())
}

fn count_ops(opts: &TreeOptions) -> u64 {
    let fs = SimFs::new();
    let tree = Tree::open(fs.shared(), "/db", opts.clone()).unwrap();
    workload(&tree);
    let s = tree.stats();
    assert!(s.tables_per_level.iter().skip(1).sum::<usize>() > 0, "the workload compacts: {s:?}");
    drop(tree);
    fs.ops()
}

fn enumerate(canary: Canary, fates: &[fn(u64) -> CrashFate]) -> (usize, Vec<String>) {
    let opts = opts(canary);
    let total = count_ops(&opts);
    let mut failures = Vec::new();
    let mut runs = 0;
    for crash_at in 0..=total {
        for fate in fates {
            runs += 1;
            let fs = SimFs::new();
            fs.crash_after(crash_at);
            let mut acked = 0;
            if let Ok(tree) = Tree::open(fs.shared(), "/db", opts.clone()) {
                acked = workload(&tree).0;
            }
            fs.crash(fate(crash_at));
            if let Err(e) = recover_and_check(&fs, &opts, acked) {
                failures.push(format!("crash after op {crash_at} ({:?}): {e}", fate(crash_at)));
            }
        }
    }
    (runs, failures)
}

const ALL_FATES: [fn(u64) -> CrashFate; 3] =
    [|_| CrashFate::LoseUnsynced, |s| CrashFate::Torn { seed: s }, |_| CrashFate::KeepAll];

#[test]
fn every_crash_point_recovers_through_flush_compaction_and_manifest_rotation() {
    let (runs, failures) = enumerate(Canary::default(), &ALL_FATES);
    assert!(
        failures.is_empty(),
        "{} of {runs} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("LSM crash enumeration: {runs} runs");
}

#[test]
fn canary_deleting_compaction_inputs_before_the_manifest_is_durable_is_caught() {
    let canary = Canary { delete_inputs_before_manifest: true, ..Canary::default() };
    let (_, failures) = enumerate(canary, &ALL_FATES);
    assert!(!failures.is_empty(), "the harness missed a premature delete");
}

#[test]
fn canary_skipping_the_directory_fsync_after_a_table_is_caught() {
    let canary = Canary { skip_dir_sync: true, ..Canary::default() };
    let (_, failures) = enumerate(canary, &[|_| CrashFate::LoseUnsynced]);
    assert!(!failures.is_empty(), "the harness missed a skipped directory fsync");
}

#[test]
fn eio_and_enospc_at_every_call_poison_and_recover() {
    let opts = opts(Canary::default());
    let total = count_ops(&opts);
    for kind in [FaultKind::Eio, FaultKind::NoSpace] {
        for at in 1..=total {
            let fs = SimFs::new();
            fs.fail_op(at, kind);
            let mut acked = 0;
            if let Ok(tree) = Tree::open(fs.shared(), "/db", opts.clone()) {
                let failed;
                (acked, failed) = workload(&tree);
                if failed {
                    // P6: after a failed flush or compaction the tree refuses writes.
                    let later = tree.put(b"after", b"x", WRITES + 1);
                    assert!(later.is_err(), "{kind:?} at op {at}: writes accepted after a failure");
                }
            }
            fs.crash(CrashFate::KeepAll);
            recover_and_check(&fs, &opts, acked)
                .unwrap_or_else(|e| panic!("{kind:?} at op {at}: {e}"));
        }
    }
}

/// Crashes while the background flusher and compactor run side by side with the writer
/// (not deterministic, so many seeds instead of every call): every committed table stays
/// in the manifest across rotations, and recovery is exact.
#[test]
fn crashes_with_concurrent_background_flush_and_compaction_recover() {
    let total = count_ops(&opts(Canary::default()));
    let mut opts = opts(Canary::default());
    opts.background = true;
    for seed in 0..60u64 {
        let fs = SimFs::new();
        fs.crash_after(20 + seed * 7919 % total);
        let mut acked = 0;
        if let Ok(tree) = Tree::open(fs.shared(), "/db", opts.clone()) {
            acked = workload(&tree).0;
        }
        fs.crash(CrashFate::Torn { seed });
        let mut check = opts.clone();
        check.background = false;
        recover_and_check(&fs, &check, acked).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

/// A tree created at a sequence (`open_or_create_at`: a tree that starts at a position of
/// its writer's log; the engine now makes its partitions with `create_lazily_at`, below)
/// is durable with that flushed sequence once the call returns, its directory included; a crash anywhere during the call leaves either that
/// tree or none, and creating it again gives the same.
#[test]
fn a_tree_created_at_a_sequence_is_whole_after_a_crash_at_any_point() {
    let dir = std::path::Path::new("/d/parts/t");
    let o = || TreeOptions { background: false, ..TreeOptions::default() };
    let mut completed = 0;
    for at in 0..40u64 {
        for fate in [CrashFate::LoseUnsynced, CrashFate::Torn { seed: at }] {
            let fs = SimFs::new();
            fs.crash_after(at);
            let made = Tree::open_or_create_at(fs.shared(), dir, o(), 41);
            let done = made.is_ok() && !fs.has_crashed();
            drop(made);
            fs.crash(fate);
            if done {
                completed += 1;
                // Opened without a sequence to create at, it is still the tree of 41.
                let t = Tree::open(fs.shared(), dir, o()).unwrap();
                assert_eq!(t.flushed_seq(), 41, "crash after {at} ops, {fate:?}");
            } else {
                let t = Tree::open_or_create_at(fs.shared(), dir, o(), 41)
                    .unwrap_or_else(|e| panic!("crash after {at} ops, {fate:?}: {e}"));
                assert_eq!(t.flushed_seq(), 41, "crash after {at} ops, {fate:?}");
            }
        }
    }
    assert!(completed > 0 && completed < 80, "the crash points missed the creation");
}

/// A tree made in memory (`create_lazily_at`, as the engine makes a new instrument's
/// partition) writes nothing until its first flush. A crash at any point of that flush
/// leaves either no tree (its writes are still in the owner's log) or a whole one that
/// holds its starting sequence, or the flush's; the gate sees the starting sequence
/// before anything is written.
#[test]
fn a_tree_made_in_memory_is_whole_after_a_crash_at_any_point_of_its_first_flush() {
    use std::sync::{Arc, Mutex};
    let dir = std::path::Path::new("/d/parts/t");
    let o = || TreeOptions { background: false, ..TreeOptions::default() };
    let (mut flushed, mut none, mut started) = (0, 0, 0);
    for at in 0..40u64 {
        for fate in [CrashFate::LoseUnsynced, CrashFate::Torn { seed: at }] {
            let ctx = format!("crash after {at} ops, {fate:?}");
            let fs = SimFs::new();
            let t = Tree::create_lazily_at(fs.shared(), dir, o(), 41).unwrap();
            let gates = Arc::new(Mutex::new(Vec::new()));
            let seen = gates.clone();
            let fs2 = fs.clone();
            t.set_flush_gate(Arc::new(move |seq| {
                // Nothing of the tree is on disk when the gate is asked first.
                seen.lock().unwrap().push((seq, fs2.contents(&dir.join("CURRENT")).is_ok()));
                Ok(())
            }));
            for seq in 42..=50u64 {
                t.put(format!("k{seq}").as_bytes(), b"v", seq).unwrap();
            }
            assert_eq!(t.get(b"k45", MAX_SEQ).unwrap().as_deref(), Some(&b"v"[..]), "{ctx}");
            assert!(!t.is_on_disk() && fs.contents(&dir.join("CURRENT")).is_err(), "{ctx}");
            fs.crash_after(at);
            let done = t.flush().is_ok() && !fs.has_crashed();
            drop(t);
            fs.crash(fate);
            let gates = gates.lock().unwrap().clone();
            assert_eq!(gates.first(), Some(&(50, false)), "{ctx}: the gate came first");
            if fs.contents(&dir.join("CURRENT")).is_err() {
                assert!(!done, "{ctx}: a finished flush left no tree");
                none += 1;
                continue;
            }
            let t =
                Tree::open(fs.shared(), dir, o()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            match t.flushed_seq() {
                41 => {
                    assert!(!done, "{ctx}: a finished flush lost its table");
                    assert_eq!(t.get(b"k45", MAX_SEQ).unwrap(), None, "{ctx}");
                    started += 1;
                }
                50 => {
                    for seq in 42..=50u64 {
                        let k = format!("k{seq}");
                        assert!(t.get(k.as_bytes(), MAX_SEQ).unwrap().is_some(), "{ctx}: {k}");
                    }
                    flushed += 1;
                }
                other => panic!("{ctx}: flushed sequence {other}"),
            }
        }
    }
    assert!(flushed > 0 && none > 0 && started > 0, "{flushed} {none} {started}");
}
