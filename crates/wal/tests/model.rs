//! Model test (RELIABILITY.md, harness 6): random sequences of appends, syncs, reopens,
//! crashes, truncations and reads against a plain `Vec` model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use bourse_fs::{CrashFate, SimFs};
use bourse_wal::{Durability, Entry, Lsn, Preallocate, Wal};
use common::{dir, read_all, small_opts, Rec};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { sizes: Vec<u8>, durable: bool },
    Sync,
    Reopen,
    Crash(u8, u64),
    TruncateBefore(u8),
    TruncateAfter(u8),
    ReadFrom(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(0u8..120, 1..5), any::<bool>()).prop_map(|(sizes, durable)| Op::Append { sizes, durable }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => (0u8..3, any::<u64>()).prop_map(|(f, s)| Op::Crash(f, s)),
        1 => any::<u8>().prop_map(Op::TruncateBefore),
        1 => any::<u8>().prop_map(Op::TruncateAfter),
        2 => any::<u8>().prop_map(Op::ReadFrom),
    ]
}

struct Model {
    recs: Vec<Rec>,
    /// Record counts at batch ends.
    boundaries: BTreeSet<usize>,
    durable: usize,
    first: u64,
}

fn pick(first: u64, last: u64, frac: u8) -> u64 {
    first + (last.saturating_sub(first)) * u64::from(frac) / 255
}

fn run(ops: Vec<Op>, pre: Preallocate) -> Result<(), TestCaseError> {
    let fs = SimFs::new();
    let opts = small_opts(pre);
    let mut wal = Some(Wal::open(fs.shared(), dir(), opts.clone()).unwrap());
    let mut m = Model { recs: Vec::new(), boundaries: [0].into(), durable: 0, first: 1 };
    for (step, op) in ops.into_iter().enumerate() {
        let w = wal.as_ref().unwrap();
        match op {
            Op::Append { sizes, durable } => {
                let batch: Vec<Rec> = sizes
                    .iter()
                    .enumerate()
                    .map(|(j, s)| Rec {
                        kind: j as u16,
                        ts: step as i64,
                        payload: vec![*s; *s as usize],
                    })
                    .collect();
                let entries: Vec<Entry<'_>> = batch
                    .iter()
                    .map(|r| Entry { kind: r.kind, timestamp: r.ts, payload: &r.payload })
                    .collect();
                let d = if durable { Durability::Durable } else { Durability::Buffered };
                let range = w.append_batch(&entries, d).unwrap();
                prop_assert_eq!(range.first, Lsn(m.recs.len() as u64 + 1));
                m.recs.extend(batch);
                m.boundaries.insert(m.recs.len());
                if durable {
                    m.durable = m.recs.len();
                }
            }
            Op::Sync => {
                w.sync().unwrap();
                m.durable = m.recs.len();
            }
            Op::Reopen => {
                drop(wal.take());
                wal = Some(Wal::open(fs.shared(), dir(), opts.clone()).unwrap());
                m.durable = m.recs.len();
            }
            Op::Crash(f, seed) => {
                let fate = [CrashFate::LoseUnsynced, CrashFate::Torn { seed }, CrashFate::KeepAll]
                    [f as usize];
                drop(wal.take());
                fs.crash(fate);
                let w = Wal::open(fs.shared(), dir(), opts.clone()).unwrap();
                let k = w.last_lsn().0 as usize;
                let required = if fate == CrashFate::KeepAll { m.recs.len() } else { m.durable };
                prop_assert!(k >= required, "P1: {} < {}", k, required);
                prop_assert!(m.boundaries.contains(&k), "P4: {} is not a batch boundary", k);
                m.recs.truncate(k);
                m.boundaries.retain(|b| *b <= k);
                m.durable = k;
                wal = Some(w);
            }
            Op::TruncateBefore(frac) => {
                let lsn = pick(m.first, m.recs.len() as u64 + 1, frac);
                w.truncate_before(Lsn(lsn)).unwrap();
                let first = w.first_lsn().0;
                prop_assert!(first <= lsn.max(m.first) && first >= m.first);
                m.first = first;
            }
            Op::TruncateAfter(frac) => {
                let lsn = pick(m.first.saturating_sub(1), m.recs.len() as u64, frac);
                w.truncate_after(Lsn(lsn)).unwrap();
                m.recs.truncate(lsn as usize);
                m.boundaries.retain(|b| *b <= lsn as usize);
                m.boundaries.insert(lsn as usize);
                m.durable = m.durable.min(lsn as usize);
                m.first = w.first_lsn().0;
            }
            Op::ReadFrom(frac) => {
                let from = pick(m.first, m.recs.len() as u64 + 1, frac);
                let mut r = w.read_from(Lsn(from)).unwrap();
                let mut n = from;
                while let Some(rec) = r.next_record().unwrap() {
                    prop_assert_eq!(rec.lsn, Lsn(n));
                    prop_assert_eq!(&rec.payload, &m.recs[n as usize - 1].payload.as_slice());
                    n += 1;
                }
                prop_assert_eq!(n, m.recs.len() as u64 + 1);
            }
        }
        let w = wal.as_ref().unwrap();
        prop_assert_eq!(w.last_lsn(), Lsn(m.recs.len() as u64));
    }
    let w = wal.as_ref().unwrap();
    let got = read_all(w).unwrap();
    prop_assert_eq!(got.len() as u64, m.recs.len() as u64 + 1 - m.first);
    for (lsn, r, _) in got {
        prop_assert_eq!(&r, &m.recs[lsn.0 as usize - 1]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_growing(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, Preallocate::None)?;
    }

    #[test]
    fn wal_matches_model_prewritten(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, Preallocate::PreWriteInline)?;
    }
}
