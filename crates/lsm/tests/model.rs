//! Model test (RELIABILITY.md, harness 6): random puts, deletes, gets, scans, snapshots,
//! flushes, compactions, reopens and crashes against a `BTreeMap` of versions. The tree
//! has no WAL: after a reopen or crash the test replays every write above
//! `flushed_seq()`, as the engine does from its journal, and the tree must then agree with
//! the model exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Bound;

use bourse_fs::{CrashFate, SimFs};
use bourse_lsm::{Compression, Snapshot, Tree, TreeOptions, MAX_SEQ};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    Get(u8),
    Scan(u8, u8),
    Prefix(u8),
    TakeSnapshot,
    DropSnapshot,
    Flush,
    Maintain,
    Reopen,
    Crash(u8, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u8..60, 0u16..300).prop_map(|(k, l)| Op::Put(k, l)),
        3 => (0u8..60).prop_map(Op::Delete),
        4 => (0u8..60).prop_map(Op::Get),
        2 => (0u8..60, 0u8..60).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
        1 => (0u8..6).prop_map(Op::Prefix),
        1 => Just(Op::TakeSnapshot),
        1 => Just(Op::DropSnapshot),
        1 => Just(Op::Flush),
        2 => Just(Op::Maintain),
        1 => Just(Op::Reopen),
        1 => (0u8..3, any::<u64>()).prop_map(|(f, s)| Op::Crash(f, s)),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{}{:02}", k % 6, k).into_bytes()
}

fn opts(compression: Compression) -> TreeOptions {
    TreeOptions {
        compression,
        memtable_bytes: 5 << 10,
        immutables_max: 2,
        block_bytes: 256,
        l0_compaction_trigger: 3,
        level1_bytes: 6 << 10,
        table_bytes: 3 << 10,
        manifest_bytes_max: 4 << 10,
        levels: 4,
        background: false,
        ..TreeOptions::default()
    }
}

/// Every write ever made, in sequence order: (seq, key, value or delete).
type Log = Vec<(u64, Vec<u8>, Option<Vec<u8>>)>;

fn model_get(log: &Log, k: &[u8], snap: u64) -> Option<Vec<u8>> {
    log.iter().rev().find(|(s, key, _)| *s <= snap && key == k).and_then(|(_, _, v)| v.clone())
}

fn model_state(log: &Log, snap: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (s, k, v) in log.iter().filter(|(s, _, _)| *s <= snap) {
        let _ = s;
        match v {
            Some(v) => m.insert(k.clone(), v.clone()),
            None => m.remove(k),
        };
    }
    m
}

fn reopen(fs: &SimFs, log: &Log, c: Compression) -> Tree {
    let tree = Tree::open(fs.shared(), "/db", opts(c)).unwrap();
    let flushed = tree.flushed_seq();
    for (s, k, v) in log.iter().filter(|(s, _, _)| *s > flushed) {
        match v {
            Some(v) => tree.put(k, v, *s).unwrap(),
            None => tree.delete(k, *s).unwrap(),
        }
    }
    tree
}

fn run(ops: Vec<Op>, c: Compression) -> Result<(), TestCaseError> {
    let fs = SimFs::new();
    let mut tree = Some(Tree::open(fs.shared(), "/db", opts(c)).unwrap());
    let mut log: Log = Vec::new();
    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut seq = 0u64;
    for op in ops {
        let t = tree.as_ref().unwrap();
        match op {
            Op::Put(k, len) => {
                seq += 1;
                let v = vec![(seq % 251) as u8; len as usize];
                t.put(&key(k), &v, seq).unwrap();
                log.push((seq, key(k), Some(v)));
            }
            Op::Delete(k) => {
                seq += 1;
                t.delete(&key(k), seq).unwrap();
                log.push((seq, key(k), None));
            }
            Op::Get(k) => {
                prop_assert_eq!(
                    t.get(&key(k), MAX_SEQ).unwrap(),
                    model_get(&log, &key(k), MAX_SEQ)
                );
                for s in &snaps {
                    prop_assert_eq!(
                        t.get(&key(k), s.seq()).unwrap(),
                        model_get(&log, &key(k), s.seq()),
                        "at snapshot {}",
                        s.seq()
                    );
                }
            }
            Op::Scan(a, b) => {
                let (lo, hi) = (key(a), key(b));
                let snap = snaps.first().map_or(MAX_SEQ, Snapshot::seq);
                let got: Vec<_> = t
                    .range(Bound::Included(&lo), Bound::Excluded(&hi), snap)
                    .map(|r| r.unwrap())
                    .collect();
                let want: Vec<_> = model_state(&log, snap)
                    .into_iter()
                    .filter(|(k, _)| *k >= lo && *k < hi)
                    .collect();
                prop_assert_eq!(&got, &want);
                let back: Vec<_> = t
                    .range_rev(Bound::Included(&lo), Bound::Excluded(&hi), snap)
                    .map(|r| r.unwrap())
                    .collect();
                prop_assert_eq!(back, want.into_iter().rev().collect::<Vec<_>>(), "reverse");
            }
            Op::Prefix(p) => {
                let prefix = format!("k{p}").into_bytes();
                let got: Vec<_> = t.prefix(&prefix, MAX_SEQ).map(|r| r.unwrap()).collect();
                let want: Vec<_> = model_state(&log, MAX_SEQ)
                    .into_iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::TakeSnapshot => snaps.push(t.snapshot(seq)),
            Op::DropSnapshot => {
                if !snaps.is_empty() {
                    snaps.remove(0);
                }
            }
            Op::Flush => {
                t.flush().unwrap();
                prop_assert_eq!(t.flushed_seq(), seq);
            }
            Op::Maintain => {
                t.maintain().unwrap();
            }
            Op::Reopen => {
                snaps.clear();
                drop(tree.take());
                tree = Some(reopen(&fs, &log, c));
            }
            Op::Crash(f, s) => {
                snaps.clear();
                drop(tree.take());
                fs.crash(
                    [CrashFate::LoseUnsynced, CrashFate::Torn { seed: s }, CrashFate::KeepAll]
                        [f as usize],
                );
                tree = Some(reopen(&fs, &log, c));
            }
        }
    }
    let t = tree.as_ref().unwrap();
    let all: Vec<_> =
        t.range(Bound::Unbounded, Bound::Unbounded, MAX_SEQ).map(|r| r.unwrap()).collect();
    prop_assert_eq!(&all, &model_state(&log, MAX_SEQ).into_iter().collect::<Vec<_>>());
    let back: Vec<_> =
        t.range_rev(Bound::Unbounded, Bound::Unbounded, MAX_SEQ).map(|r| r.unwrap()).collect();
    prop_assert_eq!(back, all.into_iter().rev().collect::<Vec<_>>(), "full reverse scan");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        run(ops, Compression::None)?;
    }

    #[test]
    fn tree_matches_model_with_lz4_blocks(ops in prop::collection::vec(op(), 1..200)) {
        run(ops, Compression::Lz4)?;
    }
}
