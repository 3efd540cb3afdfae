//! Corruption sweep (RELIABILITY.md, harness 4; P5): flip random bits in the WAL's
//! files. Every flip must yield an error (at open, at replay, or from `verify_dir`) or a
//! cut of the newest segment's tail — never a wrong record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bourse_fs::SimFs;
use bourse_wal::{verify_dir, Preallocate, Wal};
use common::{dir, read_all, small_opts, workload, Log};
use rand::{Rng, SeedableRng};

#[derive(Debug, Default)]
struct Outcomes {
    open_error: usize,
    replay_error: usize,
    tail_cut: usize,
    harmless: usize,
}

fn sweep(pre: Preallocate, flips: u64) -> Outcomes {
    let opts = small_opts(pre);
    let base = SimFs::new();
    let mut log = Log::default();
    {
        let wal = Wal::open(base.shared(), dir(), opts.clone()).unwrap();
        workload(&wal, 30, &mut log);
        wal.sync().unwrap();
    }
    let model = log.records();
    let files: Vec<String> = bourse_fs::Vfs::list_dir(&base, &dir()).unwrap();
    let mut out = Outcomes::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..flips {
        // A fresh copy of the clean disk for every flip.
        let fs = SimFs::new();
        copy_disk(&base, &fs, &files);
        let name = &files[rng.gen_range(0..files.len())];
        let path = dir().join(name);
        let len = fs.contents(&path).unwrap().len() as u64;
        let (byte, bit) = (rng.gen_range(0..len), rng.gen_range(0..8u8));
        fs.flip_bit(&path, byte, bit).unwrap();
        let clean = verify_dir(&fs, &dir(), &opts).unwrap();
        let what = format!("flip {name} byte {byte} bit {bit}");
        let wal = match Wal::open(fs.shared(), dir(), opts.clone()) {
            Ok(wal) => wal,
            Err(_) => {
                assert!(!clean.is_clean(), "{what}: open refused but verify passed");
                out.open_error += 1;
                continue;
            }
        };
        match read_all(&wal) {
            Err(_) => {
                assert!(!clean.is_clean(), "{what}: replay failed but verify passed");
                out.replay_error += 1;
            }
            Ok(got) => {
                for (i, (_, r, _)) in got.iter().enumerate() {
                    assert_eq!(r, &model[i], "{what}: wrong record {i}");
                }
                if got.len() < model.len() {
                    assert!(
                        !wal.recovery().cuts.is_empty(),
                        "{what}: records lost without a reported cut"
                    );
                    let newest = files.iter().rfind(|f| f.ends_with(".wal")).unwrap();
                    assert_eq!(name, newest, "{what}: only the newest segment's tail may be cut");
                    out.tail_cut += 1;
                } else {
                    out.harmless += 1;
                }
            }
        }
    }
    out
}

fn copy_disk(from: &SimFs, to: &SimFs, files: &[String]) {
    use bourse_fs::{OpenMode, Vfs};
    to.create_dir_all(&dir()).unwrap();
    for name in files {
        let f = to.open(&dir().join(name), OpenMode::CreateNew).unwrap();
        f.write_all_at(&from.contents(&dir().join(name)).unwrap(), 0).unwrap();
        f.sync_data().unwrap();
    }
    to.sync_dir(&dir()).unwrap();
}

#[test]
fn random_bit_flips_are_detected_or_cut_never_misread() {
    for pre in [Preallocate::None, Preallocate::PreWriteInline] {
        let out = sweep(pre, 1500);
        eprintln!("{pre:?}: {out:?}");
        assert!(out.open_error + out.replay_error > 0, "the sweep never hit a record");
    }
}
