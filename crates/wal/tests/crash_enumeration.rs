//! Crash enumeration (RELIABILITY.md, harness 2): run a fixed workload, crash after each
//! file-system call in turn with each of three fates, recover, and check P1, P2 and P4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bourse_fs::CrashFate;
use bourse_wal::Preallocate;
use common::{count_ops, crash_run, small_opts};

const BATCHES: usize = 30;

fn enumerate(pre: Preallocate) -> usize {
    let opts = small_opts(pre);
    let total = count_ops(&opts, BATCHES);
    assert!(total > 60, "the workload should exercise rotation: {total} ops");
    let mut runs = 0;
    let mut failures = Vec::new();
    for crash_at in 0..=total {
        for fate in
            [CrashFate::LoseUnsynced, CrashFate::Torn { seed: crash_at }, CrashFate::KeepAll]
        {
            runs += 1;
            if let Err(e) = crash_run(&opts, BATCHES, crash_at, fate) {
                failures.push(format!("crash after op {crash_at} ({fate:?}): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} crash runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    runs
}

#[test]
fn every_crash_point_recovers_a_prefix_with_every_ack_growing_segments() {
    let runs = enumerate(Preallocate::None);
    eprintln!("crash enumeration (growing segments): {runs} runs");
}

#[test]
fn every_crash_point_recovers_a_prefix_with_every_ack_prewritten_segments() {
    let runs = enumerate(Preallocate::PreWriteInline);
    eprintln!("crash enumeration (pre-written segments): {runs} runs");
}

#[test]
fn torn_crashes_with_many_seeds_recover() {
    let opts = small_opts(Preallocate::PreWriteInline);
    let total = count_ops(&opts, BATCHES);
    for seed in 0..1000u64 {
        let crash_at = seed * 7919 % (total + 1);
        crash_run(&opts, BATCHES, crash_at, CrashFate::Torn { seed })
            .unwrap_or_else(|e| panic!("seed {seed}, crash after op {crash_at}: {e}"));
    }
}
