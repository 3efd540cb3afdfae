//! Crashes in the middle of group commit: several threads append batches at mixed
//! durability levels to the simulated disk, which dies after a random number of
//! operations. After recovery every acknowledged `Durable` batch is present with its
//! exact payloads (P1), LSNs are contiguous from 1 (P2), every record is one that was
//! submitted (P3) and every batch is whole (P4).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bourse_fs::{CrashFate, SimFs};
use bourse_wal::{Durability, Entry, Lsn, Preallocate, Wal};
use common::{dir, read_all, small_opts};

/// (thread, batch index, record index) encoded in the payload.
fn payload(t: usize, b: usize, r: usize) -> Vec<u8> {
    let mut p = format!("{t}/{b}/{r}").into_bytes();
    p.resize(20 + (t * 7 + b * 3 + r) % 40, b'.');
    p
}

fn run(seed: u64, pre: Preallocate) {
    const THREADS: usize = 4;
    const BATCHES: usize = 25;
    let fs = SimFs::new();
    let opts = small_opts(pre);
    let wal = Arc::new(Wal::open(fs.shared(), dir(), opts.clone()).unwrap());
    fs.crash_after(20 + seed * 13 % 400);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for b in 0..BATCHES {
                    let size = 1 + (t + b) % 4;
                    let payloads: Vec<Vec<u8>> = (0..size).map(|r| payload(t, b, r)).collect();
                    let entries: Vec<Entry<'_>> = payloads
                        .iter()
                        .map(|p| Entry { kind: t as u16, timestamp: b as i64, payload: p })
                        .collect();
                    let d =
                        if (t + b) % 3 == 0 { Durability::Buffered } else { Durability::Durable };
                    match wal.append_batch(&entries, d) {
                        Ok(range) => acked.push((range, d, payloads)),
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    drop(wal);
    fs.crash(CrashFate::Torn { seed });
    let wal = Wal::open(fs.shared(), dir(), opts)
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    let got = read_all(&wal).unwrap_or_else(|e| panic!("seed {seed}: replay failed: {e}"));
    let by_lsn: HashMap<Lsn, &[u8]> =
        got.iter().map(|(l, r, _)| (*l, r.payload.as_slice())).collect();
    for (i, (lsn, rec, _)) in got.iter().enumerate() {
        assert_eq!(*lsn, Lsn(i as u64 + 1), "seed {seed}: P2");
        let text = String::from_utf8_lossy(&rec.payload);
        let mut parts = text.trim_end_matches('.').split('/').map(|x| x.parse::<usize>().unwrap());
        let (t, b, r) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(rec.payload, payload(t, b, r), "seed {seed}: P3 at {lsn}");
    }
    // Batches are whole: a batch-ending flag closes every batch that is present.
    if let Some((_, _, end)) = got.last() {
        assert!(*end, "seed {seed}: P4: the log ends inside a batch");
    }
    for (range, d, payloads) in &acked {
        let present = by_lsn.contains_key(&range.first);
        if *d == Durability::Durable {
            assert!(present, "seed {seed}: P1: durable batch at {} lost", range.first);
        }
        if present {
            for (i, p) in payloads.iter().enumerate() {
                assert_eq!(
                    by_lsn.get(&Lsn(range.first.0 + i as u64)).copied(),
                    Some(p.as_slice()),
                    "seed {seed}: P4"
                );
            }
        }
    }
}

#[test]
fn crashes_during_concurrent_group_commit_lose_no_durable_batch() {
    for seed in 0..400 {
        run(seed, if seed % 2 == 0 { Preallocate::None } else { Preallocate::PreWriteInline });
    }
}
