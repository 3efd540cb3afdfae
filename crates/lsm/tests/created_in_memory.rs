//! Trees made in memory only (`Tree::create_lazily_at`): nothing is written until they
//! are created on disk, which passes the flush gate first and happens once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use bourse_fs::{SimFs, Vfs};
use bourse_lsm::{Error, Tree, TreeOptions, MAX_SEQ};

fn o() -> TreeOptions {
    TreeOptions { background: false, ..TreeOptions::default() }
}

/// Records the sequences the gate is asked for; fails them while `fail` is set.
fn gate(t: &Tree, fail: Arc<Mutex<bool>>) -> Arc<Mutex<Vec<u64>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    t.set_flush_gate(Arc::new(move |seq| {
        s.lock().unwrap().push(seq);
        if *fail.lock().unwrap() {
            return Err(std::io::Error::other("log not durable"));
        }
        Ok(())
    }));
    seen
}

#[test]
fn a_tree_made_in_memory_is_created_on_disk_once_after_its_gate() {
    let fs = SimFs::new();
    let dir = Path::new("/d/t");
    let t = Tree::create_lazily_at(fs.shared(), dir, o(), 41).unwrap();
    let seen = gate(&t, Arc::default());
    t.put(b"a", b"1", 42).unwrap();
    assert_eq!(t.get(b"a", MAX_SEQ).unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(t.flushed_seq(), 41);
    assert!(!t.is_on_disk());
    assert!(fs.contents(&dir.join("CURRENT")).is_err(), "written before its creation");
    assert!(t.create_on_disk().unwrap());
    assert_eq!(*seen.lock().unwrap(), [41]);
    assert!(t.is_on_disk());
    assert!(!t.create_on_disk().unwrap(), "created twice");
    assert_eq!(*seen.lock().unwrap(), [41], "the gate asked again for nothing");
    // A power loss now keeps the directory and the starting sequence.
    drop(t);
    fs.crash(bourse_fs::CrashFate::LoseUnsynced);
    let t = Tree::open(fs.shared(), dir, o()).unwrap();
    assert_eq!(t.flushed_seq(), 41);
}

#[test]
fn marking_a_tree_made_in_memory_clean_creates_it_with_the_new_sequence() {
    let fs = SimFs::new();
    let dir = Path::new("/d/t");
    let t = Tree::create_lazily_at(fs.shared(), dir, o(), 41).unwrap();
    let seen = gate(&t, Arc::default());
    assert!(t.mark_clean(60).unwrap());
    assert_eq!(*seen.lock().unwrap(), [60]);
    drop(t);
    fs.crash(bourse_fs::CrashFate::LoseUnsynced);
    assert_eq!(Tree::open(fs.shared(), dir, o()).unwrap().flushed_seq(), 60);
}

#[test]
fn a_failed_gate_creates_nothing_and_poisons_the_tree() {
    let fs = SimFs::new();
    let dir = Path::new("/d/t");
    let t = Tree::create_lazily_at(fs.shared(), dir, o(), 41).unwrap();
    gate(&t, Arc::new(Mutex::new(true)));
    assert!(t.create_on_disk().is_err());
    assert!(!t.is_on_disk());
    assert!(!fs.exists(dir).unwrap(), "the directory was made although the gate failed");
    assert!(matches!(t.create_on_disk(), Err(Error::Poisoned { .. })));
    assert!(matches!(t.put(b"a", b"1", 42), Err(Error::Poisoned { .. })));
}

#[test]
fn a_tree_is_never_made_over_another() {
    let fs = SimFs::new();
    let dir = Path::new("/d/t");
    {
        let old = Tree::open_or_create_at(fs.shared(), dir, o(), 7).unwrap();
        old.put(b"old", b"x", 8).unwrap();
        old.flush().unwrap();
    }
    let t = Tree::create_lazily_at(fs.shared(), dir, o(), 41).unwrap();
    let err = t.create_on_disk().unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("already"), "{err}");
    drop(t);
    // The old tree is as it was.
    let old = Tree::open(fs.shared(), dir, o()).unwrap();
    assert_eq!(old.flushed_seq(), 8);
    assert_eq!(old.get(b"old", MAX_SEQ).unwrap().as_deref(), Some(&b"x"[..]));
}
