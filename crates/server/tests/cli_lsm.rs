//! `bourse verify` and `bourse inspect sst|manifest` on LSM trees inside a data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use bourse_fs::RealFs;
use bourse_lsm::{Tree, TreeOptions};

fn bourse(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bourse")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A tree at `data/partitions/accounts` with several levels.
fn tree(data: &Path) -> std::path::PathBuf {
    let dir = data.join("partitions").join("accounts");
    let opts = TreeOptions {
        memtable_bytes: 4096,
        l0_compaction_trigger: 2,
        level1_bytes: 16 << 10,
        table_bytes: 8 << 10,
        background: false,
        ..TreeOptions::default()
    };
    let t = Tree::open(RealFs::shared(), &dir, opts).unwrap();
    for s in 1..2000u64 {
        t.put(format!("acct{:04}", s % 300).as_bytes(), format!("balance={s}").as_bytes(), s)
            .unwrap();
    }
    t.flush().unwrap();
    t.maintain().unwrap();
    dir
}

/// Some table file of the tree in `dir`.
fn first_table(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .unwrap()
}

#[test]
fn trees_verify_and_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tree(tmp.path());
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("LSM tree")
            && out.contains("flushed to sequence 1999")
            && out.contains("verify: clean"),
        "{out}"
    );
    let (code, out) = bourse(&["inspect", "manifest", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("flushed sequence 1999") && out.contains("L1:"), "{out}");
    let sst = first_table(&dir);
    let (code, out) = bourse(&["inspect", "sst", sst.to_str().unwrap(), "--limit", "5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("entries") && out.contains("Put") && out.contains("acct"), "{out}");
}

#[test]
fn a_damaged_table_fails_verify_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tree(tmp.path());
    let sst = first_table(&dir);
    let mut bytes = std::fs::read(&sst).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&sst, bytes).unwrap();
    let (code, out) = bourse(&["verify", "--data", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let name = sst.file_name().unwrap().to_str().unwrap();
    assert!(out.contains("CORRUPT") && out.contains(name) && out.contains("checksum"), "{out}");
}
