//! Corruption sweep over the manifest (RELIABILITY.md, harness 4; P5): a bit flipped
//! anywhere in it makes open fail, or, in the last record (which cannot be told from a torn
//! write), drops that one edit. The workload ends with a flush, so dropping it sends the
//! flushed sequence back, and replaying the writes above it (as the engine replays its
//! WAL) must restore exactly the right state. Never a wrong value.
//!
//! (Had the last edit been a compaction, dropping it would leave references to inputs
//! already deleted, and open would refuse with a missing-table error: also detected.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_lsm::{Tree, TreeOptions, MAX_SEQ};

fn opts() -> TreeOptions {
    TreeOptions {
        memtable_bytes: 5 << 10,
        l0_compaction_trigger: 2,
        level1_bytes: 8 << 10,
        table_bytes: 4 << 10,
        manifest_bytes_max: 1 << 20,
        levels: 4,
        background: false,
        ..TreeOptions::default()
    }
}

fn write(seq: u64) -> (Vec<u8>, Vec<u8>) {
    (format!("k{:03}", seq * 13 % 97).into_bytes(), vec![(seq % 251) as u8; 30])
}

#[test]
fn every_flipped_manifest_byte_is_refused_or_replayed_exactly() {
    const WRITES: u64 = 600;
    let base = SimFs::new();
    {
        let tree = Tree::open(base.shared(), "/db", opts()).unwrap();
        for seq in 1..=WRITES {
            let (k, v) = write(seq);
            tree.put(&k, &v, seq).unwrap();
            if seq % 50 == 0 {
                tree.maintain().unwrap();
            }
        }
        // End with a flush edit: one more write, then flush.
        let (k, v) = write(WRITES + 1);
        tree.put(&k, &v, WRITES + 1).unwrap();
        tree.flush().unwrap();
    }
    let model: BTreeMap<Vec<u8>, Vec<u8>> = (1..=WRITES + 1).map(write).collect();
    let dir = Path::new("/db");
    let names = base.list_dir(dir).unwrap();
    let manifest = names.iter().find(|n| n.starts_with("MANIFEST-")).unwrap().clone();
    let bytes = base.contents(&dir.join(&manifest)).unwrap();
    let (mut refused, mut replayed) = (0, 0);
    for byte in 0..bytes.len() as u64 {
        let fs = SimFs::new();
        fs.create_dir_all(dir).unwrap();
        for name in &names {
            let f = fs.open(&dir.join(name), OpenMode::CreateNew).unwrap();
            f.write_all_at(&base.contents(&dir.join(name)).unwrap(), 0).unwrap();
        }
        fs.sync_dir(dir).unwrap();
        fs.flip_bit(&dir.join(&manifest), byte, (byte % 8) as u8).unwrap();
        let Ok(tree) = Tree::open(fs.shared(), "/db", opts()) else {
            refused += 1;
            continue;
        };
        let flushed = tree.flushed_seq();
        for seq in flushed + 1..=WRITES + 1 {
            let (k, v) = write(seq);
            tree.put(&k, &v, seq).unwrap();
        }
        let got: BTreeMap<Vec<u8>, Vec<u8>> = tree
            .range(Bound::Unbounded, Bound::Unbounded, MAX_SEQ)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got, model,
            "flip at manifest byte {byte}: wrong state after replay from {flushed}"
        );
        replayed += 1;
    }
    eprintln!(
        "manifest sweep: {} bytes, {refused} refused at open, {replayed} recovered by replay",
        bytes.len()
    );
    assert!(refused > 0, "flips inside earlier records must be refused");
    assert!(replayed > 0, "flips in the last (flush) record must be recovered by replay");
}
