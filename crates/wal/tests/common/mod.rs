//! Shared pieces of the WAL reliability tests: a deterministic workload that records
//! what was submitted and acknowledged, and the oracle that checks P1, P2 and P4
//! (`RELIABILITY.md`) against what recovery returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bourse_fs::{CrashFate, SimFs, Vfs};
use bourse_wal::{Durability, Entry, Lsn, Preallocate, Wal, WalOptions};

/// One record as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub kind: u16,
    pub ts: i64,
    pub payload: Vec<u8>,
}

/// What a workload submitted and what the WAL acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Every batch submitted, in order (a failed submit is the last one).
    pub batches: Vec<Vec<Rec>>,
    /// Index of the last batch acknowledged `Durable` (or covered by a successful sync).
    pub durable_upto: Option<usize>,
    /// Index of the last batch acknowledged at any level.
    pub buffered_upto: Option<usize>,
}

impl Log {
    /// All submitted records, flattened in LSN order.
    pub fn records(&self) -> Vec<Rec> {
        self.batches.iter().flatten().cloned().collect()
    }
    /// Record counts at each batch boundary (0 included).
    pub fn boundaries(&self) -> Vec<usize> {
        let mut out = vec![0];
        let mut n = 0;
        for b in &self.batches {
            n += b.len();
            out.push(n);
        }
        out
    }
    /// Records that must have survived: every durable batch, and under `KeepAll` every
    /// acknowledged batch.
    pub fn required(&self, fate: CrashFate) -> usize {
        let upto = if fate == CrashFate::KeepAll { self.buffered_upto } else { self.durable_upto };
        upto.map_or(0, |i| self.batches[..=i].iter().map(Vec::len).sum())
    }
}

pub fn dir() -> PathBuf {
    PathBuf::from("/data/wal")
}

/// Small segments and a small read buffer so that rotation and buffer refills happen
/// within a few records.
pub fn small_opts(pre: Preallocate) -> WalOptions {
    WalOptions {
        segment_bytes: 640,
        preallocate: pre,
        read_chunk_bytes: 96,
        ..WalOptions::default()
    }
}

pub fn rec(i: usize, j: usize) -> Rec {
    let len = (i * 37 + j * 11) % 90;
    Rec { kind: (i % 7) as u16, ts: (i * 1000 + j) as i64, payload: vec![(i * 31 + j) as u8; len] }
}

/// Appends `n` batches of assorted sizes and durability levels, syncing now and then.
/// Stops at the first error, as a real writer would after a crash or poisoning.
pub fn workload(wal: &Wal, n: usize, log: &mut Log) {
    for i in 0..n {
        let size = [1, 3, 1, 2, 5, 1][i % 6];
        let batch: Vec<Rec> = (0..size).map(|j| rec(i, j)).collect();
        let entries: Vec<Entry<'_>> = batch
            .iter()
            .map(|r| Entry { kind: r.kind, timestamp: r.ts, payload: &r.payload })
            .collect();
        let durability = if i % 3 == 0 { Durability::Buffered } else { Durability::Durable };
        log.batches.push(batch.clone());
        let Ok(range) = wal.append_batch(&entries, durability) else { return };
        let expected_first: usize = log.batches[..i].iter().map(Vec::len).sum::<usize>() + 1;
        assert_eq!(range.first, Lsn(expected_first as u64), "LSNs are assigned contiguously");
        assert_eq!(range.len(), size as u64);
        log.buffered_upto = Some(i);
        if durability == Durability::Durable {
            log.durable_upto = Some(i);
        }
        if i % 7 == 6 {
            if wal.sync().is_err() {
                return;
            }
            log.durable_upto = Some(i);
        }
    }
}

/// Every record from the start of the log.
pub fn read_all(wal: &Wal) -> Result<Vec<(Lsn, Rec, bool)>, bourse_wal::Error> {
    let mut reader = wal.read_from(wal.first_lsn())?;
    let mut out = Vec::new();
    while let Some(r) = reader.next_record()? {
        out.push((
            r.lsn,
            Rec { kind: r.kind, ts: r.timestamp, payload: r.payload.to_vec() },
            r.batch_end,
        ));
    }
    Ok(out)
}

/// The oracle: the recovered log must be a batch-aligned prefix of what was submitted,
/// with contiguous LSNs from 1, at least as long as what was required to survive.
pub fn check_recovered(
    log: &Log,
    got: &[(Lsn, Rec, bool)],
    required: usize,
) -> Result<usize, String> {
    let model = log.records();
    let k = got.len();
    if k > model.len() {
        return Err(format!("P3: {k} records recovered but only {} submitted", model.len()));
    }
    for (i, (lsn, r, _)) in got.iter().enumerate() {
        if *lsn != Lsn(i as u64 + 1) {
            return Err(format!("P2: record {i} has LSN {lsn}"));
        }
        if *r != model[i] {
            return Err(format!("P3: record {i} differs: {r:?} vs {:?}", model[i]));
        }
    }
    if !log.boundaries().contains(&k) {
        return Err(format!("P4: recovered {k} records, not a batch boundary"));
    }
    if k < required {
        return Err(format!("P1: recovered {k} records, {required} were acknowledged"));
    }
    Ok(k)
}

/// Crash after `crash_at` file-system operations, reboot with `fate`, recover and check.
pub fn crash_run(
    opts: &WalOptions,
    batches: usize,
    crash_at: u64,
    fate: CrashFate,
) -> Result<(), String> {
    let fs = SimFs::new();
    let vfs: Arc<dyn Vfs> = fs.shared();
    fs.crash_after(crash_at);
    let mut log = Log::default();
    if let Ok(wal) = Wal::open(vfs.clone(), dir(), opts.clone()) {
        workload(&wal, batches, &mut log);
    }
    fs.crash(fate);
    let wal = Wal::open(vfs, dir(), opts.clone()).map_err(|e| format!("recovery failed: {e}"))?;
    let got = read_all(&wal).map_err(|e| format!("replay failed: {e}"))?;
    let k = check_recovered(&log, &got, log.required(fate))?;
    // The recovered log accepts appends at the next LSN.
    let range = wal
        .append(Entry { kind: 1, timestamp: 0, payload: b"after" }, Durability::Durable)
        .map_err(|e| format!("append after recovery failed: {e}"))?;
    if range.first != Lsn(k as u64 + 1) {
        return Err(format!("append after recovery got LSN {}, expected {}", range.first, k + 1));
    }
    Ok(())
}

/// How many file-system operations the workload takes with no crash.
pub fn count_ops(opts: &WalOptions, batches: usize) -> u64 {
    let fs = SimFs::new();
    let wal = Wal::open(fs.shared(), dir(), opts.clone()).expect("open");
    workload(&wal, batches, &mut Log::default());
    drop(wal);
    fs.ops()
}
