//! Leveled compaction.
//!
//! - Level 0 is compacted into level 1 when it holds `l0_compaction_trigger` tables: all
//!   of level 0 and the overlapping tables of level 1 are merged.
//! - Level `n >= 1` is compacted when it exceeds its target (`level1_bytes` x 10^(n-1)):
//!   one table, chosen round-robin by key, and the overlapping tables of level `n + 1`.
//! - The merge drops a version when a newer version of the same key is visible to every
//!   live snapshot, and drops a tombstone visible to every snapshot when no deeper level
//!   holds the key. Outputs are split at `table_bytes`, only between user keys, so the
//!   tables of a level never share a key.
//! - Commit order: output tables fsynced, directory fsynced, manifest edit (remove inputs,
//!   add outputs) fsynced, new version installed; only then are inputs marked obsolete,
//!   and their files go when the last reader lets go.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::key::{Entry, Kind, SeqNo};
use crate::manifest::Change;
use crate::table::{TableMeta, TableWriter};
use crate::tree::{Inner, State};
use crate::version::{Merge, TableRef, Version};
use crate::Result;

/// One compaction to run.
struct Job {
    level: usize,
    inputs: Vec<Arc<TableRef>>,
    overlapping: Vec<Arc<TableRef>>,
}

impl Inner {
    /// Whether some level is due for compaction.
    pub(crate) fn compaction_due(&self, v: &Version) -> bool {
        v.levels[0].len() >= self.opts.l0_compaction_trigger
            || (1..v.levels.len().saturating_sub(1))
                .any(|l| v.level_bytes(l) > self.level_target(l))
    }

    fn pick(&self, v: &Version) -> Option<Job> {
        if v.levels[0].len() >= self.opts.l0_compaction_trigger {
            let inputs = v.levels[0].clone();
            let (lo, hi) = key_range(&inputs)?;
            let overlapping = v.overlapping(1, &lo, &hi);
            return Some(Job { level: 0, inputs, overlapping });
        }
        let level = (1..v.levels.len().saturating_sub(1))
            .find(|l| v.level_bytes(*l) > self.level_target(*l))?;
        let mut cursor = self.compact_cursor.lock();
        let tables = &v.levels[level];
        let pick = tables
            .iter()
            .find(|t| t.table.meta().smallest > cursor[level])
            .or_else(|| tables.first())?
            .clone();
        cursor[level].clone_from(&pick.table.meta().largest);
        let m = pick.table.meta();
        let overlapping = v.overlapping(level + 1, &m.smallest, &m.largest);
        Some(Job { level, inputs: vec![pick], overlapping })
    }

    /// Runs one compaction if one is due; false when none is.
    pub(crate) fn compact_once(&self) -> Result<bool> {
        self.check_poison()?;
        let _compacting = self.compact_lock.lock();
        let version = self.state.lock().version.clone();
        let Some(job) = self.pick(&version) else { return Ok(false) };
        let result = self.run(&version, job);
        self.poison_on_error(result).map(|()| true)
    }

    fn run(&self, version: &Version, job: Job) -> Result<()> {
        let out_level = job.level + 1;
        if job.overlapping.is_empty() && disjoint(&job.inputs) {
            return self.trivial_move(&job, out_level);
        }
        let all: Vec<Arc<TableRef>> = job.inputs.iter().chain(&job.overlapping).cloned().collect();
        let Some((lo, hi)) = key_range(&all) else { return Ok(()) };
        let bottom = (out_level + 1..version.levels.len())
            .all(|l| version.overlapping(l, &lo, &hi).is_empty());
        let oldest_snapshot = self.oldest_snapshot();
        let read: u64 = all.iter().map(|t| t.table.meta().bytes).sum();
        // Level-0 inputs are newest first, so earlier sources win ties.
        let sources = all
            .iter()
            .map(|t| {
                Box::new(t.table.iter_from(None)) as Box<dyn Iterator<Item = Result<Entry>> + Send>
            })
            .collect();
        let outputs = self.write_outputs(Merge::new(sources), oldest_snapshot, bottom)?;
        if self.opts.canary.delete_inputs_before_manifest {
            // CANARY: deletes inputs before the edit that removes them is durable.
            for t in &all {
                let _ = self.vfs.remove_file(t.table.path());
            }
        }
        let mut changes: Vec<Change> = job
            .inputs
            .iter()
            .map(|t| Change::Remove { level: job.level as u8, id: t.table.meta().id })
            .chain(
                job.overlapping
                    .iter()
                    .map(|t| Change::Remove { level: out_level as u8, id: t.table.meta().id }),
            )
            .collect();
        changes.extend(
            outputs.iter().map(|m| Change::Add { level: out_level as u8, meta: m.clone() }),
        );
        changes.push(Change::NextId(self.next_id.load(Ordering::Acquire)));
        let mut opened = Vec::new();
        for m in &outputs {
            opened.push(self.open_table(m.id)?);
        }
        self.commit(&changes, |st| install(st, &job, out_level, opened))?;
        // The edit removing the inputs is durable: their files may go once unused.
        for t in job.inputs.iter().chain(&job.overlapping) {
            t.mark_obsolete();
        }
        let written: u64 = outputs.iter().map(|m| m.bytes).sum();
        self.counters.compacted_read_bytes.fetch_add(read, Ordering::Relaxed);
        self.counters.compacted_written_bytes.fetch_add(written, Ordering::Relaxed);
        tracing::debug!(
            level = job.level,
            inputs = all.len(),
            outputs = outputs.len(),
            read,
            written,
            "compaction"
        );
        Ok(())
    }

    fn write_outputs(
        &self,
        merge: Merge<'_>,
        oldest_snapshot: SeqNo,
        bottom: bool,
    ) -> Result<Vec<TableMeta>> {
        let mut outputs = Vec::new();
        let mut writer: Option<TableWriter> = None;
        let mut current: Option<Vec<u8>> = None;
        let mut newer_seq = SeqNo::MAX;
        for e in merge {
            let e = e?;
            let new_key = current.as_deref() != Some(e.key.as_slice());
            if new_key {
                current = Some(e.key.clone());
                newer_seq = SeqNo::MAX;
                // Split only between user keys.
                if writer.as_ref().is_some_and(|w| w.bytes() >= self.opts.table_bytes) {
                    if let Some(w) = writer.take() {
                        outputs.push(w.finish()?);
                    }
                }
            }
            let shadowed = newer_seq <= oldest_snapshot;
            let dead_tombstone = e.kind == Kind::Delete && e.seq <= oldest_snapshot && bottom;
            newer_seq = e.seq;
            if shadowed || dead_tombstone {
                continue;
            }
            if writer.is_none() {
                writer = Some(self.new_table_writer()?);
            }
            if let Some(w) = writer.as_mut() {
                w.add(&e.key, e.seq, e.kind, &e.value)?;
            }
        }
        if let Some(w) = writer {
            outputs.push(w.finish()?);
        }
        self.sync_dir()?;
        Ok(outputs)
    }
}

/// Whether the tables' key ranges are pairwise disjoint.
fn disjoint(tables: &[Arc<TableRef>]) -> bool {
    let mut ranges: Vec<(&[u8], &[u8])> = tables
        .iter()
        .map(|t| (t.table.meta().smallest.as_slice(), t.table.meta().largest.as_slice()))
        .collect();
    ranges.sort();
    ranges.windows(2).all(|w| w[0].1 < w[1].0)
}

impl Inner {
    /// Moves tables that overlap nothing below one level down by a manifest edit alone:
    /// no rewrite, and the files stay.
    fn trivial_move(&self, job: &Job, out_level: usize) -> Result<()> {
        let mut changes = Vec::new();
        for t in &job.inputs {
            changes.push(Change::Remove { level: job.level as u8, id: t.table.meta().id });
            changes.push(Change::Add { level: out_level as u8, meta: t.table.meta().clone() });
        }
        changes.push(Change::NextId(self.next_id.load(Ordering::Acquire)));
        self.commit(&changes, |st| install(st, job, out_level, job.inputs.clone()))?;
        tracing::debug!(level = job.level, tables = job.inputs.len(), "trivial move");
        Ok(())
    }
}

/// Replaces a compaction's inputs with its outputs in the installed version.
fn install(st: &mut State, job: &Job, out_level: usize, outputs: Vec<Arc<TableRef>>) {
    let gone: Vec<u64> =
        job.inputs.iter().chain(&job.overlapping).map(|t| t.table.meta().id).collect();
    let mut v = (*st.version).clone();
    for level in &mut v.levels {
        level.retain(|t| !gone.contains(&t.table.meta().id));
    }
    v.levels[out_level].extend(outputs);
    v.sort();
    st.version = Arc::new(v);
}

fn key_range(tables: &[Arc<TableRef>]) -> Option<(Vec<u8>, Vec<u8>)> {
    let lo = tables.iter().map(|t| &t.table.meta().smallest).min()?.clone();
    let hi = tables.iter().map(|t| &t.table.meta().largest).max()?.clone();
    Some((lo, hi))
}
