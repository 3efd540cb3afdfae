//! Fault injection (RELIABILITY.md, harness 3; P6): fail each file-system call in turn
//! with EIO or ENOSPC. After the failure the WAL must refuse every later write, must
//! not acknowledge anything written after the failure, and a reopen must recover a
//! prefix holding every acknowledged batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bourse_fs::{CrashFate, FaultKind, SimFs};
use bourse_wal::{Durability, Entry, Error, Preallocate, Wal};
use common::{check_recovered, count_ops, dir, read_all, small_opts, workload, Log};

const BATCHES: usize = 30;

fn run(pre: Preallocate, kind: FaultKind, fate: CrashFate) -> usize {
    let opts = small_opts(pre);
    let total = count_ops(&opts, BATCHES);
    for at in 1..=total {
        let fs = SimFs::new();
        fs.fail_op(at, kind);
        let mut log = Log::default();
        if let Ok(wal) = Wal::open(fs.shared(), dir(), opts.clone()) {
            workload(&wal, BATCHES, &mut log);
            if log.batches.len() < BATCHES {
                // The workload stopped on an error: the WAL must stay poisoned.
                assert!(wal.is_poisoned(), "fault at op {at}: the WAL is not poisoned");
                let later = wal
                    .append(Entry { kind: 0, timestamp: 0, payload: b"x" }, Durability::Buffered);
                assert!(
                    matches!(later, Err(Error::Poisoned { .. })),
                    "fault at op {at}: {later:?}"
                );
                assert!(wal.sync().is_err(), "fault at op {at}: sync after poison succeeded");
            }
        }
        fs.crash(fate);
        let wal = Wal::open(fs.shared(), dir(), opts.clone())
            .unwrap_or_else(|e| panic!("fault at op {at}: reopen failed: {e}"));
        let got = read_all(&wal).unwrap_or_else(|e| panic!("fault at op {at}: replay failed: {e}"));
        check_recovered(&log, &got, log.required(fate))
            .unwrap_or_else(|e| panic!("fault at op {at} ({kind:?}): {e}"));
    }
    eprintln!("{pre:?} {kind:?} {fate:?}: a fault at each of {total} operations");
    total as usize
}

#[test]
fn eio_at_every_call_poisons_and_loses_no_ack() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        run(pre, FaultKind::Eio, CrashFate::KeepAll);
        run(pre, FaultKind::Eio, CrashFate::LoseUnsynced);
    }
}

#[test]
fn enospc_at_every_call_poisons_and_loses_no_ack() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        run(pre, FaultKind::NoSpace, CrashFate::KeepAll);
        run(pre, FaultKind::NoSpace, CrashFate::LoseUnsynced);
    }
}
