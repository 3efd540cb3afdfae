#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Injected I/O errors during live writes: whichever thread meets the failure (a
//! submitter writing the WAL, or a maintenance thread creating a new instrument's
//! partition on disk), the engine is poisoned, no writer hangs, and a reopen finds every
//! batch that was acknowledged.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use bourse_engine::{Durability, Engine, EngineOptions, Error};
use bourse_fs::{FaultKind, SimFs};
use bourse_model::{Event, InstrumentId, Tick};

fn opts() -> EngineOptions {
    let mut o = EngineOptions {
        apply_threads: 2,
        maintenance_threads: 1,
        // No background flush or checkpoint: the failing call is the batch's own.
        checkpoint_interval: Duration::from_secs(3600),
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        ..EngineOptions::default()
    };
    o.wal.preallocate = bourse_wal::Preallocate::None;
    o
}

/// Ticks of 40 instruments never seen before (batch `b`): a batch large enough for the
/// apply lane (32 events or more), which makes each instrument's partition in memory;
/// a maintenance thread creates them on disk (files and directories).
fn batch(b: u64) -> Vec<Event> {
    (0..40)
        .map(|i| {
            Event::Tick(Tick {
                instrument_id: InstrumentId::new(format!("SIM.b{b}i{i}")).unwrap(),
                datetime: 1_000 + b as i64,
                last_price: 10.0 + i as f64,
                ..Tick::default()
            })
        })
        .collect()
}

/// Submits batch 0 and waits for its partitions to be on disk, arms a fault on the
/// `n`-th file-system call from then on, submits batches 1 and 2, and waits until
/// their partitions are on disk or the engine is poisoned; returns how many batches
/// were acknowledged and whether the fault poisoned the engine.
fn run(fs: &SimFs, n: u64) -> (u64, bool) {
    let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}).unwrap();
    e.submit(&batch(0), Durability::Buffered).unwrap();
    settle(&e);
    fs.fail_op(n, FaultKind::Eio);
    let mut acked = 1;
    let mut failed = None;
    for b in 1..3 {
        match e.submit(&batch(b), Durability::Buffered) {
            Ok(_) => acked += 1,
            Err(first) => {
                failed = Some(first.to_string());
                break;
            }
        }
    }
    let poisoned = settle(&e);
    if let Some(first) = &failed {
        assert!(poisoned.is_some(), "{first} did not poison the engine");
    }
    if let Some(cause) = poisoned.or(failed) {
        // Poisoned from now on, with the first failure as the cause.
        let again = e.submit(&batch(9), Durability::Buffered).unwrap_err();
        assert!(
            matches!(again, Error::Poisoned { .. } | Error::Wal(_)),
            "after {cause}, the next submit got {again}"
        );
        return (acked, true);
    }
    (acked, false)
}

/// Waits until every partition is on disk, or the engine is poisoned (returns why).
fn settle(e: &Engine) -> Option<String> {
    loop {
        let stats = e.stats();
        if stats.poisoned.is_some() || stats.partitions.iter().all(|p| p.on_disk) {
            return stats.poisoned;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_failed_write_on_the_submit_path_or_in_a_partitions_creation_poisons_and_hangs_no_writer() {
    let mut failed = 0;
    for n in 1..=40u64 {
        let fs = SimFs::new();
        let (tx, rx) = mpsc::channel();
        let fs2 = fs.clone();
        std::thread::spawn(move || {
            let _ = tx.send(run(&fs2, n));
        });
        let (acked, did_fail) = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("fault at call {n}: a writer hung (or the run panicked)"));
        failed += u64::from(did_fail);
        // Every acknowledged batch is there after a reopen (the fault is spent).
        let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}).unwrap();
        for b in 0..acked {
            for (i, ev) in batch(b).iter().enumerate() {
                let Event::Tick(t) = ev else { unreachable!() };
                let got = e.latest_tick(&t.instrument_id);
                assert_eq!(
                    got.map(|g| g.last_price),
                    Some(t.last_price),
                    "fault at call {n}: batch {b} tick {i} lost"
                );
            }
        }
    }
    // The fault points covered the batches' own calls and the partitions' creation.
    assert!(failed >= 10, "only {failed} of 40 fault points poisoned the engine");
}
