//! Background work: flushes and compactions of every partition on a few shared
//! threads, the memtable budget, and checkpoints that truncate the WAL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse_wal::Lsn;

use crate::engine::{Inner, Partition};
use crate::Result;

/// An idle partition this far behind the applied LSN is marked clean by the background
/// checkpointer even if no segment can be freed (it bounds the replay at open).
const IDLE_MARK_LSNS: u64 = 1 << 20;

impl Inner {
    /// The body of a maintenance thread. Thread 0 also runs the checkpointer.
    pub(crate) fn maintenance_loop(&self, checkpointer: bool) {
        bourse_fs::lower_thread_priority(self.opts.maintenance_nice, "maintenance thread");
        let mut last_checkpoint = Instant::now();
        while !self.shutdown.load(Ordering::Acquire) {
            let mut worked = false;
            // IMPORTANT: a failure here poisons the engine (ARCHITECTURE.md: a failed write
            // or `fsync` poisons the writer). A tree that cannot flush or be marked clean
            // holds the WAL's truncation back for good, and a partition that cannot be
            // created could never flush; writes to other partitions would go on until the
            // WAL filled the disk.
            let poisoned = self.poison_flag.load(Ordering::Acquire);
            if !self.opts.defer_partition_creation && !poisoned {
                // New instruments' partitions, made in memory on the submit path.
                match self.create_new_partitions() {
                    Ok(n) => worked |= n > 0,
                    Err(e) => self.poison_from_maintenance("creating a new partition on disk", &e),
                }
            }
            // (Nothing more once poisoned: the engine refuses writes until reopened.)
            let parts = if poisoned { Vec::new() } else { self.partitions() };
            for p in parts {
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                if !p.tree.needs_maintenance() {
                    continue;
                }
                // NOTE: the tree serializes flushes and compactions internally, so two
                // threads picking the same tree is safe; each does one round.
                match p.tree.maintain() {
                    Ok(n) => worked |= n > 0,
                    Err(e) => {
                        let what = format!("maintenance of partition {}", p.id);
                        self.poison_from_maintenance(&what, &e.into());
                    }
                }
            }
            if checkpointer
                && !poisoned
                && last_checkpoint.elapsed() >= self.opts.checkpoint_interval
            {
                last_checkpoint = Instant::now();
                self.enforce_budget();
                if let Err(e) = self.checkpoint_step(false) {
                    self.poison_from_maintenance("the background checkpoint", &e);
                }
            }
            if !worked {
                let (lock, cond) = &self.wake;
                let mut woken = lock.lock();
                if !*woken {
                    cond.wait_for(&mut woken, Duration::from_millis(20));
                }
                *woken = false;
            }
        }
    }

    /// Logs a failure of background work and poisons the engine with it.
    fn poison_from_maintenance(&self, what: &str, e: &crate::Error) {
        tracing::error!(error = %e, "{what} failed; the engine is poisoned");
        let e = crate::Error::Invalid(format!("{what} failed: {e}"));
        self.poison(&mut self.seq.lock(), &e);
    }

    /// The body of the WAL sync thread ([`crate::EngineOptions::sync_interval`]): every
    /// `every`, syncs the WAL when records were appended since its last sync. Stops at
    /// shutdown (woken by the kick that announces it) or once the WAL is poisoned (a
    /// failed sync poisons it; later submits report that).
    pub(crate) fn sync_loop(&self, every: Duration) {
        let mut next = Instant::now() + every;
        loop {
            {
                let (lock, cond) = &self.wake;
                let mut guard = lock.lock();
                // Checked under the lock that `kick` takes after setting `shutdown`, so the
                // wake-up that announces it cannot come between the check and the wait.
                // (The flag itself is the maintenance threads'; this thread leaves it.)
                while !self.shutdown.load(Ordering::Acquire) && Instant::now() < next {
                    cond.wait_until(&mut guard, next);
                }
            }
            if self.shutdown.load(Ordering::Acquire) || self.wal.is_poisoned() {
                return;
            }
            next = Instant::now() + every;
            if self.wal.last_lsn() > self.wal.durable_lsn() {
                if let Err(e) = self.wal.sync() {
                    tracing::error!(error = %e, "periodic WAL sync failed; the WAL is poisoned");
                    return;
                }
            }
        }
    }

    /// While all memtables together exceed the budget, rotates the largest so the
    /// maintenance threads flush it.
    pub(crate) fn enforce_budget(&self) {
        // Immutable memtables are on their way to the maintenance threads: what they
        // hold is freed without another rotation.
        let over = self.over_budget(true);
        if over.is_empty() {
            return;
        }
        for (p, bytes) in over {
            if p.tree.rotate() {
                tracing::debug!(partition = %p.id, bytes, "memtable budget: rotating");
            }
        }
        self.kick();
    }

    /// When all memtables together exceed the budget: the partitions whose active
    /// memtables (largest first, with their sizes) must go for the rest to fit.
    ///
    /// `in_flight`: immutable memtables will be flushed by someone else (the
    /// maintenance threads), so they count as already going. Without it (during
    /// replay, when nobody else flushes), a partition's whole size counts, and the
    /// caller flushes it all. (Counting immutables as something a rotation could free
    /// rotated the largest partition again at every check while its last flush was
    /// still running, into tiny memtables.)
    pub(crate) fn over_budget(&self, in_flight: bool) -> Vec<(Arc<Partition>, usize)> {
        let sizes = self.partitions().into_iter().map(|p| {
            let (active, immutable) = p.tree.memtable_bytes_split();
            (p, active, immutable)
        });
        over_budget(sizes.collect(), self.opts.memtable_budget_bytes, in_flight)
    }

    /// Marks idle partitions clean, flushes partitions that hold back an oversized WAL,
    /// and truncates the WAL below what every partition, pin and retention rule allows.
    pub(crate) fn checkpoint_step(&self, force: bool) -> Result<()> {
        let applied = self.visible.load(Ordering::Acquire);
        let segments = self.wal.segment_files();
        let wal_bytes: u64 = segments
            .iter()
            .filter_map(|(_, p)| self.vfs.open(p, bourse_fs::OpenMode::Read).ok())
            .filter_map(|f| f.len().ok())
            .sum();
        // Marking a partition clean costs a manifest fsync, so the background checkpointer
        // does it only when it can free a sealed segment or shorten the replay at open by
        // a lot; an explicit checkpoint always does.
        let active_first = segments.last().map_or(0, |s| s.0 .0);
        let mut floor = u64::MAX;
        for p in self.partitions() {
            let mut flushed = p.tree.flushed_seq();
            let worth = force
                || flushed + 1 < active_first
                || applied - flushed.min(applied) > IDLE_MARK_LSNS;
            if worth && flushed < applied && p.tree.memtable_bytes() == 0 {
                // Idle: nothing up to `applied` waits in memory.
                if p.tree.mark_clean(applied)? {
                    flushed = applied;
                }
            } else if flushed < applied && wal_bytes > self.opts.wal_bytes_max {
                // This partition holds back an oversized WAL: flush it.
                if p.tree.rotate() {
                    self.kick();
                }
            }
            floor = floor.min(p.tree.flushed_seq().max(flushed));
        }
        if let Some(pinned) = self.pins.lock().values().min() {
            floor = floor.min(pinned.saturating_sub(1));
        }
        let mut cut = floor.saturating_add(1);
        // Retention: keep the newest segments that together hold `wal_retain_bytes`,
        // and every segment whose newest record is younger than `wal_retain_age`.
        if self.opts.wal_retain_bytes > 0 {
            let mut kept = 0u64;
            let mut keep_from = segments.first().map_or(1, |s| s.0 .0);
            for (first, path) in segments.iter().rev() {
                kept += self
                    .vfs
                    .open(path, bourse_fs::OpenMode::Read)
                    .and_then(|f| f.len())
                    .unwrap_or(0);
                if kept >= self.opts.wal_retain_bytes {
                    keep_from = first.0;
                    break;
                }
            }
            cut = cut.min(keep_from);
        }
        if !self.opts.wal_retain_age.is_zero() {
            let now = crate::engine::now_ns();
            let age = self.opts.wal_retain_age.as_nanos() as i64;
            for (first, _) in segments.iter().skip(1) {
                let young = self
                    .wal
                    .read_from_buffered(*first)
                    .ok()
                    .and_then(|mut r| r.next_record().ok().flatten().map(|rec| rec.timestamp))
                    .is_some_and(|ts| now.saturating_sub(ts) < age);
                if young {
                    // The predecessor's newest record is about this young: keep it (the
                    // cut lands inside it, and only whole segments below a cut go).
                    cut = cut.min(first.0.saturating_sub(1));
                    break;
                }
            }
        }
        if cut > 1 {
            let removed = self.wal.truncate_before(Lsn(cut))?;
            if removed > 0 {
                tracing::info!(below = cut, removed, "WAL truncated at checkpoint");
            }
        }
        Ok(())
    }
}

/// [`Inner::over_budget`] over `(partition, active bytes, immutable bytes)`.
fn over_budget<P>(
    parts: Vec<(P, usize, usize)>,
    budget: usize,
    in_flight: bool,
) -> Vec<(P, usize)> {
    let total: usize = parts.iter().map(|(_, a, i)| a + i).sum();
    if total <= budget {
        return Vec::new();
    }
    let flushing: usize = parts.iter().map(|(_, _, i)| i).sum();
    let mut need = total - budget;
    if in_flight {
        need = need.saturating_sub(flushing);
    }
    let mut sizes: Vec<(P, usize)> = parts
        .into_iter()
        .map(|(p, active, immutable)| (p, if in_flight { active } else { active + immutable }))
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.1));
    sizes.retain(|(_, bytes)| {
        let keep = need > 0 && *bytes > 0;
        need = need.saturating_sub(*bytes);
        keep
    });
    sizes
}

#[cfg(test)]
mod tests {
    use super::over_budget;

    #[test]
    fn the_budget_rotates_only_what_is_not_already_flushing() {
        // (name, active, immutable); budget 100.
        let parts = || vec![("accounts", 60, 50), ("i1", 30, 0), ("i2", 20, 0), ("idle", 0, 0)];
        let names = |v: Vec<(&str, usize)>| {
            v.into_iter().map(|(p, b)| (p.to_string(), b)).collect::<Vec<_>>()
        };
        // Under the budget: nothing.
        assert!(over_budget(vec![("a", 60, 40)], 100, true).is_empty());
        // 160 over 100: the 50 flushing cover 50 of the 60 over; the largest active
        // memtable covers the rest.
        assert_eq!(names(over_budget(parts(), 100, true)), [("accounts".into(), 60)]);
        // When the flushing ones cover it all, nothing more is rotated.
        assert!(over_budget(parts(), 110, true).is_empty());
        // Nobody else flushes (replay): whole partitions count, largest first.
        assert_eq!(names(over_budget(parts(), 110, false)), [("accounts".into(), 110)]);
        assert_eq!(
            names(over_budget(parts(), 20, false)),
            [("accounts".into(), 110), ("i1".into(), 30)]
        );
        // An empty active memtable is never picked, even when more is needed.
        let v = over_budget(vec![("a", 0, 10), ("b", 5, 0)], 0, true);
        assert_eq!(names(v), [("b".into(), 5)]);
    }
}
