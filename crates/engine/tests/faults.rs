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

/// Small memtables and a busy checkpointer: flushes, compactions, mark-cleans and WAL
/// truncation run in the background all the time.
fn busy_opts() -> EngineOptions {
    let mut o = EngineOptions {
        memtable_bytes: 8 << 10,
        memtable_budget_bytes: 64 << 10,
        checkpoint_interval: Duration::from_millis(2),
        wal_retain_bytes: 0,
        apply_threads: 1,
        ..opts()
    };
    o.wal.segment_bytes = 32 << 10;
    o
}

/// Ticks of instrument `SIM.k{b % 4}`, account updates: batch `b` of the busy workload.
fn busy_batch(b: u64) -> Vec<Event> {
    let ins = InstrumentId::new(format!("SIM.k{}", b % 4)).unwrap();
    vec![
        Event::Tick(Tick {
            instrument_id: ins,
            datetime: b as i64,
            last_price: b as f64,
            ..Tick::default()
        }),
        Event::AccountUpdated(bourse_model::Account {
            user_id: "busy".into(),
            currency: "CNY".into(),
            deposit: b as f64,
            ..bourse_model::Account::default()
        }),
    ]
}

/// EIO at each of 40 calls while `Buffered` batches go in and the background flushes,
/// compacts and checkpoints. Wherever the failure lands (a submit's WAL append, a flush,
/// a compaction, a mark-clean, a truncation), the engine is poisoned soon after, or it
/// shrugged the failure off and everything still works: a checkpoint succeeds and
/// submits go on (a failed removal of an obsolete table leaves an orphan the next open
/// removes). A tree that failed and was left alone would hold the WAL back for good
/// while writes to other partitions went on. Every acknowledged batch is there after a
/// reopen.
#[test]
fn a_failure_in_background_work_poisons_the_engine() {
    let mut in_background = 0;
    for n in 1..=40u64 {
        let fs = SimFs::new();
        let e = Engine::open_with(fs.shared(), Path::new("/db"), busy_opts(), &mut |_| {}).unwrap();
        for b in 0..200 {
            e.submit(&busy_batch(b), Durability::Buffered).unwrap();
        }
        let armed = fs.ops() + n;
        fs.fail_op(n, FaultKind::Eio);
        let mut acked = 200;
        let mut submit_failed = false;
        let start = std::time::Instant::now();
        while fs.ops() < armed && start.elapsed() < Duration::from_secs(20) {
            match e.submit(&busy_batch(acked), Durability::Buffered) {
                Ok(_) => acked += 1,
                Err(_) => {
                    submit_failed = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(fs.ops() >= armed, "fault at call {n}: it never fired");
        let waited = std::time::Instant::now();
        while e.stats().poisoned.is_none() && waited.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        match e.stats().poisoned {
            Some(_) => {
                in_background += u64::from(!submit_failed);
                let err = e.submit(&busy_batch(acked), Durability::Buffered).unwrap_err();
                assert!(
                    matches!(err, Error::Poisoned { .. } | Error::Wal(_)),
                    "fault at call {n}: {err}"
                );
            }
            None => {
                assert!(
                    !submit_failed,
                    "fault at call {n}: a submit failed, the engine is not poisoned"
                );
                e.checkpoint().unwrap_or_else(|err| {
                    panic!("fault at call {n}: not poisoned, yet a checkpoint fails: {err}")
                });
                e.submit(&busy_batch(acked), Durability::Buffered).unwrap();
                acked += 1;
            }
        }
        drop(e);
        let e = Engine::open_with(fs.shared(), Path::new("/db"), busy_opts(), &mut |_| {}).unwrap();
        let deposit = e.accounts("busy").unwrap().first().map(|a| a.deposit);
        assert!(
            deposit >= Some((acked - 1) as f64),
            "fault at call {n}: acked {acked}, found {deposit:?}"
        );
    }
    // Faults met off the submit path, which poisoned the engine on their own.
    assert!(in_background >= 5, "only {in_background} of 40 faults poisoned from the background");
}
