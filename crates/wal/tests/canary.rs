//! Canaries (RELIABILITY.md, harness 8): deliberately broken WALs that the crash
//! enumeration must catch. If one of these tests fails, the harness has a gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bourse_fs::CrashFate;
use bourse_wal::{Canary, Preallocate, WalOptions};
use common::{count_ops, crash_run, small_opts};

fn violations(opts: &WalOptions) -> Vec<String> {
    let total = count_ops(opts, 30);
    let mut found = Vec::new();
    for crash_at in 0..=total {
        if let Err(e) = crash_run(opts, 30, crash_at, CrashFate::LoseUnsynced) {
            found.push(format!("op {crash_at}: {e}"));
        }
    }
    found
}

#[test]
fn acknowledging_durable_before_fdatasync_is_caught() {
    let mut opts = small_opts(Preallocate::None);
    opts.canary = Canary { ack_durable_before_sync: true, ..Canary::default() };
    let found = violations(&opts);
    assert!(!found.is_empty(), "the harness missed an ack before fdatasync");
    assert!(found.iter().any(|f| f.contains("P1")), "expected a durability violation: {found:?}");
}

#[test]
fn skipping_the_directory_fsync_after_creating_a_segment_is_caught() {
    let mut opts = small_opts(Preallocate::None);
    opts.canary = Canary { skip_dir_sync: true, ..Canary::default() };
    let found = violations(&opts);
    assert!(!found.is_empty(), "the harness missed a skipped directory fsync");
}

#[test]
fn the_same_workload_without_canaries_is_clean() {
    assert!(violations(&small_opts(Preallocate::None)).is_empty());
}
