//! The background worker on the real disk: one writer and several readers race against
//! flushes and compactions (and explicit `flush`/`maintain` calls). Readers never see a
//! value that was not written for its key, snapshots stay stable while compactions run
//! under them, and after the dust settles the tree holds exactly the last writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bourse_fs::RealFs;
use bourse_lsm::{Tree, TreeOptions, MAX_SEQ};

const KEYS: u64 = 500;
const WRITES: u64 = 30_000;

fn value(key: u64, seq: u64) -> Vec<u8> {
    format!("{key}:{seq}:").repeat(1 + (seq % 5) as usize).into_bytes()
}

fn check(key: &[u8], v: &[u8]) {
    let key: u64 = std::str::from_utf8(&key[3..]).unwrap().parse().unwrap();
    let text = std::str::from_utf8(v).unwrap();
    let mut parts = text.split(':');
    assert_eq!(parts.next().unwrap().parse::<u64>().unwrap(), key, "value belongs to another key");
    let seq: u64 = parts.next().unwrap().parse().unwrap();
    assert_eq!(v, value(key, seq).as_slice(), "phantom value");
}

#[test]
fn readers_race_flushes_and_compactions() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = TreeOptions {
        memtable_bytes: 160 << 10,
        l0_compaction_trigger: 3,
        level1_bytes: 256 << 10,
        table_bytes: 64 << 10,
        ..TreeOptions::default()
    };
    let tree = Arc::new(Tree::open(RealFs::shared(), tmp.path(), opts.clone()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (tree, done, written) = (tree.clone(), done.clone(), written.clone());
            std::thread::spawn(move || {
                let mut i = r;
                while !done.load(Ordering::Acquire) {
                    i += 7;
                    let k = format!("key{:04}", i % KEYS).into_bytes();
                    if let Some(v) = tree.get(&k, MAX_SEQ).unwrap() {
                        check(&k, &v);
                    }
                    if i % 50 == 0 {
                        // A snapshot read twice gives the same answer, compactions or not.
                        let seq = written.load(Ordering::Acquire);
                        let snap = tree.snapshot(seq);
                        let a: Vec<_> = tree
                            .range(Bound::Unbounded, Bound::Unbounded, snap.seq())
                            .map(|x| x.unwrap())
                            .collect();
                        for (k, v) in &a {
                            check(k, v);
                        }
                        std::thread::yield_now();
                        let b: Vec<_> = tree
                            .range(Bound::Unbounded, Bound::Unbounded, snap.seq())
                            .map(|x| x.unwrap())
                            .collect();
                        assert_eq!(a, b, "snapshot at {seq} changed under compaction");
                    }
                }
            })
        })
        .collect();
    for seq in 1..=WRITES {
        let key = seq * 31 % KEYS;
        tree.put(format!("key{key:04}").as_bytes(), &value(key, seq), seq).unwrap();
        written.store(seq, Ordering::Release);
        if seq % 7_000 == 0 {
            tree.flush().unwrap();
            tree.maintain().unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
    tree.flush().unwrap();
    tree.maintain().unwrap();
    let stats = tree.stats();
    assert!(stats.tables_per_level.iter().skip(1).sum::<usize>() > 0, "compactions ran: {stats:?}");
    assert_eq!(stats.flushed_seq, WRITES);
    drop(tree);
    // Reopen: everything is in tables; the last write of every key wins.
    let tree = Tree::open(RealFs::shared(), tmp.path(), opts).unwrap();
    let mut last = std::collections::BTreeMap::new();
    for seq in 1..=WRITES {
        let key = seq * 31 % KEYS;
        last.insert(format!("key{key:04}").into_bytes(), value(key, seq));
    }
    let all: Vec<_> =
        tree.range(Bound::Unbounded, Bound::Unbounded, MAX_SEQ).map(|x| x.unwrap()).collect();
    assert_eq!(all, last.into_iter().collect::<Vec<_>>());
    let leftovers: Vec<_> =
        std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    let tables = leftovers.iter().filter(|n| n.to_string_lossy().ends_with(".sst")).count();
    assert_eq!(
        tables,
        tree.stats().tables_per_level.iter().sum::<usize>(),
        "obsolete tables were deleted: {leftovers:?}"
    );
}

/// One sequence's writes land in one memtable however small memtables are, so a flush
/// never records a sequence as flushed while part of it is still in memory.
#[test]
fn a_write_batch_is_never_split_by_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TreeOptions { memtable_bytes: 1, background: false, ..TreeOptions::default() };
    let t = Tree::open(RealFs::shared(), dir.path(), opts).unwrap();
    let ops: Vec<(&[u8], Option<&[u8]>)> =
        vec![(b"a", Some(b"1")), (b"b", Some(b"2")), (b"c", None), (b"d", Some(b"4"))];
    t.write_batch(&ops, 7).unwrap();
    t.put(b"e", b"5", 8).unwrap();
    t.flush().unwrap();
    // One table per memtable: the batch's and the single put's.
    assert_eq!(t.stats().tables_per_level[0], 2);
    assert_eq!(t.flushed_seq(), 8);
    assert_eq!(t.get(b"b", 7).unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(t.get(b"c", 7).unwrap(), None);
}
