//! Sequential writes produce tables that overlap nothing below them; compaction moves them
//! down by a manifest edit instead of rewriting them, so write amplification stays near 1,
//! and the moved tables read back exactly after a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::Bound;

use bourse_fs::SimFs;
use bourse_lsm::{Tree, TreeOptions, MAX_SEQ};

#[test]
fn sequential_tables_move_down_without_rewrites() {
    let fs = SimFs::new();
    let opts = TreeOptions {
        memtable_bytes: 20 << 10,
        l0_compaction_trigger: 2,
        level1_bytes: 32 << 10,
        table_bytes: 16 << 10,
        levels: 4,
        background: false,
        ..TreeOptions::default()
    };
    let tree = Tree::open(fs.shared(), "/db", opts.clone()).unwrap();
    for i in 1..=5_000u64 {
        tree.put(format!("key{i:08}").as_bytes(), &[7u8; 40], i).unwrap();
        if i % 500 == 0 {
            tree.maintain().unwrap();
        }
    }
    tree.flush().unwrap();
    tree.maintain().unwrap();
    let stats = tree.stats();
    assert!(
        stats.tables_per_level.iter().skip(2).sum::<usize>() > 0,
        "tables reached level 2: {stats:?}"
    );
    assert!(stats.write_amp < 1.3, "moves, not rewrites: write amplification {}", stats.write_amp);
    drop(tree);
    let tree = Tree::open(fs.shared(), "/db", opts).unwrap();
    let all: Vec<_> =
        tree.range(Bound::Unbounded, Bound::Unbounded, MAX_SEQ).collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 5_000);
    assert_eq!(tree.get(b"key00002500", MAX_SEQ).unwrap(), Some(vec![7u8; 40]));
}
