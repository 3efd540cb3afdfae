//! The append path: LSN assignment, group commit, rotation.
//!
//! # Group commit
//!
//! Appenders encode their batch into a pending buffer under one mutex (which also assigns
//! LSNs, so the buffer is always in LSN order) and then wait for their acknowledgement.
//! Writing and syncing are two rounds, each led by one waiter at a time, and they run
//! side by side:
//!
//! - **A write round** runs whenever pending bytes are wanted and no write round runs:
//!   its leader takes the pending buffers, releases the mutex, writes them with one
//!   `pwrite` each, publishes the new written LSN and wakes everyone. `Buffered`
//!   appenders are acknowledged by it.
//! - **A sync round** runs whenever a `Durable` waiter's bytes are written but not synced
//!   and no sync round runs: its leader notes the written LSN, releases the mutex, issues
//!   one `fdatasync` on the segment holding it, then publishes that LSN as synced.
//!   Appenders that arrive during a sync are written meanwhile and served together by the
//!   next one.
//!
//! So a `Buffered` append never waits for an `fdatasync` (which can take a hundred
//! milliseconds while the disk is busy with other files), and nobody is acknowledged
//! `Durable` before the `fdatasync` covering their bytes has returned: a sync covers
//! what was written before it started. A write round that moves to a new segment syncs
//! the old one first, itself, so the segment a sync round holds is always the one its
//! LSN is in, or an older one already synced.
//!
//! # Failure
//!
//! A failed write or sync poisons the WAL: the error is recorded, pending buffers are
//! dropped, every waiter whose bytes were not yet acknowledged gets [`Error::Poisoned`],
//! and so does every later append. `fsync` is never retried (after a failed `fsync` the
//! kernel may have dropped the dirty pages, so a retry that succeeds proves nothing).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bourse_fs::{FileRef, Vfs};
use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::format::{self, SEGMENT_HEADER_BYTES};
use crate::options::Preallocate;
use crate::{io_err, Durability, Error, Lsn, LsnRange, Result, WalOptions};

/// One record to append.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Opaque kind (the engine's event kind).
    pub kind: u16,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The payload.
    pub payload: &'a [u8],
}

/// A torn tail that recovery cut off the newest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    /// The segment that was cut (or removed, when its header was torn).
    pub segment: PathBuf,
    /// Offset of the cut: everything from here on was discarded.
    pub offset: u64,
    /// How many bytes were discarded.
    pub bytes: u64,
    /// Why: the damage found at the cut.
    pub reason: String,
}

/// What [`Wal::open`] found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments found.
    pub segments: usize,
    /// The first retained LSN.
    pub first_lsn: Lsn,
    /// The last LSN recovered (`first_lsn - 1` when the log is empty).
    pub last_lsn: Lsn,
    /// Torn tails cut off (at most one segment's tail, plus any torn segment creation).
    pub cuts: Vec<TailCut>,
}

/// Counters of the append path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches appended.
    pub batches: u64,
    /// Records appended.
    pub records: u64,
    /// Bytes written (headers included).
    pub bytes: u64,
    /// `pwrite` calls.
    pub writes: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Segment rotations.
    pub rotations: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    pub rotations: AtomicU64,
}

/// A segment as readers see it.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    pub file: FileRef,
}

/// The segment being appended to (owned by the leader during I/O).
#[derive(Debug)]
pub(crate) struct Active {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    pub file: FileRef,
    pub offset: u64,
    /// Where the part of the segment whose writeback was not asked for yet begins
    /// ([`WalOptions::writeback_bytes`]).
    pub writeback_from: u64,
    /// Where the part of the segment's write map not yet asked to be mapped in ahead
    /// of the writes begins (see [`Shared::prepare_ahead`]).
    pub prepared_to: u64,
    /// Whether every block of the segment was written before appends (a pre-written
    /// spare, or `PreWriteInline`). Appends to one that was not grow the file, and each
    /// `fdatasync` then also writes its new size and blocks.
    pub prewritten: bool,
}

impl Active {
    /// What a sync round needs of this segment.
    pub(crate) fn tail(&self) -> (Lsn, FileRef, PathBuf) {
        (self.first_lsn, self.file.clone(), self.path.clone())
    }
}

#[derive(Debug)]
struct Chunk {
    /// Set when this chunk starts a new segment with this first LSN.
    new_segment: Option<Lsn>,
    bytes: Vec<u8>,
    last_lsn: Lsn,
}

/// The largest write round that may copy into the segment's map
/// ([`WalOptions::map_appends`]) rather than call `pwrite`: one page. A small write
/// saves a system call; a write of pages takes a page fault per page through the map
/// and saved nothing (`bourse-bench engine`, Buffered 1×64, whose rounds are about
/// 7 KiB: the same write time, and the submit p99 of `examples/submit_loop` up from
/// 152–170 µs to 214–347 µs in three pairs).
const MAPPED_ROUND_BYTES_MAX: usize = 4096;

/// Write rounds that must pass without a sync round before one copies into the map.
/// The first copy into a page after it was written back takes a page fault, and writing
/// back a page written through a map costs more than one written with `pwrite`: a
/// 100-byte write and `fdatasync` in turn took 83–84 µs through a map against 74–76 µs
/// (the Durable runs of one writer and batches of one lost 14%). Between rare syncs
/// (`Buffered` streams) the map wins: a copy instead of a 1–2 µs system call.
const MAPPED_AFTER_ROUNDS: u32 = 16;

#[derive(Debug)]
pub(crate) struct State {
    pub next_lsn: Lsn,
    pending: Vec<Chunk>,
    pub pending_bytes: usize,
    /// Bytes the active segment will hold once pending chunks are written.
    pub seg_fill: u64,
    /// A write round runs (its leader holds `active`).
    pub write_busy: bool,
    /// A sync round runs.
    pub sync_busy: bool,
    /// The segment that holds `written` (first LSN, file, path), for sync rounds (which
    /// run while a write round holds `active`).
    pub tail_file: (Lsn, FileRef, PathBuf),
    pub poisoned: Option<String>,
    pub written: Lsn,
    pub synced: Lsn,
    pub active: Option<Active>,
    /// Whether the active segment is pre-written ([`Active::prewritten`]); kept here
    /// because a write round holds `active` while it runs.
    pub active_prewritten: bool,
    free_bufs: Vec<Vec<u8>>,
    /// The chunks of the running write round; empty, with its room kept, between rounds.
    round: Vec<Chunk>,
    /// Write rounds since a sync round last started (saturating).
    rounds_since_sync: u32,
}

impl State {
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a write or sync round runs.
    pub(crate) fn io_busy(&self) -> bool {
        self.write_busy || self.sync_busy
    }

    pub(crate) fn new(next_lsn: Lsn, active: Active) -> Self {
        let last = Lsn(next_lsn.0 - 1);
        Self {
            next_lsn,
            pending: Vec::new(),
            pending_bytes: 0,
            seg_fill: active.offset,
            write_busy: false,
            sync_busy: false,
            tail_file: active.tail(),
            poisoned: None,
            written: last,
            synced: last,
            active_prewritten: active.prewritten,
            active: Some(active),
            free_bufs: Vec::new(),
            round: Vec::new(),
            rounds_since_sync: 0,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Spare {
    pub ready: bool,
    pub needed: bool,
    pub shutdown: bool,
    /// Held back until [`Wal::start_preallocation`] (`defer_preallocation`).
    pub deferred: bool,
    /// Held back until the active segment fills to
    /// [`WalOptions::spare_start_percent`] (see [`Shared::spare_due`]).
    pub held: bool,
    /// The background thread runs and takes `unmap`, `writeback` and `prepare`.
    pub worker: bool,
    /// Sealed segments whose write maps the background thread drops (at most
    /// [`UNMAP_QUEUE_MAX`]; past that the write round drops them itself).
    pub unmap: Vec<FileRef>,
    /// A range of the active segment whose writeback the background thread starts
    /// (file, start, end); a later request for the same file extends it.
    pub writeback: Option<(FileRef, u64, u64)>,
    /// A range of the active segment's write map the background thread maps in ahead
    /// of the writes (file, start, end); a later request for the same file extends it.
    pub prepare: Option<(FileRef, u64, u64)>,
}

/// Sealed segments waiting for the background thread to drop their write maps.
pub(crate) const UNMAP_QUEUE_MAX: usize = 4;

/// The page size writeback ranges are rounded to.
const PAGE_BYTES: u64 = 4096;

/// Puts the range `[from, to)` of `file` in a request slot of the background thread:
/// a pending request for the same file is extended to `to`, one for another file (an
/// older segment) is replaced.
fn merge_request(slot: &mut Option<(FileRef, u64, u64)>, file: &FileRef, from: u64, to: u64) {
    *slot = match slot.take() {
        Some((f, start, _)) if Arc::ptr_eq(&f, file) => Some((f, start, to)),
        _ => Some((file.clone(), from, to)),
    };
}

/// Starts writeback of `[from, to)` of `file`; a failure is only logged (the hint
/// changes nothing a sync relies on, and a real I/O error reappears at the sync).
pub(crate) fn hint_writeback(file: &FileRef, from: u64, to: u64) {
    if let Err(e) = file.start_writeback(from, to - from) {
        tracing::debug!(error = %e, "WAL writeback hint failed");
    }
}

/// State shared by the WAL handle, its readers and its background thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub vfs: Arc<dyn Vfs>,
    pub dir: PathBuf,
    pub opts: WalOptions,
    pub state: Mutex<State>,
    pub cond: Condvar,
    pub segments: RwLock<Vec<SegmentInfo>>,
    /// Last LSN handed to the OS; readers never read past it.
    pub written: AtomicU64,
    durable: AtomicU64,
    pub counters: Counters,
    pub spare: Mutex<Spare>,
    pub spare_cond: Condvar,
    /// Mirrors `Spare::ready`, so that a write round can see it without that lock.
    pub spare_ready: std::sync::atomic::AtomicBool,
}

/// The write-ahead log. Shareable across threads (`&self` methods); appends from many
/// threads are group-committed.
#[derive(Debug)]
pub struct Wal {
    pub(crate) shared: Arc<Shared>,
    recovery: RecoveryReport,
    preparer: Option<JoinHandle<()>>,
    /// Held for the lifetime of the handle; dropped last.
    _lock: bourse_fs::LockGuard,
}

/// What recovery found, for [`Wal::from_parts`].
pub(crate) struct Recovered {
    pub state: State,
    pub segments: Vec<SegmentInfo>,
    pub report: RecoveryReport,
    /// Whether a ready spare segment from an earlier process was kept.
    pub spare_ready: bool,
}

impl Wal {
    pub(crate) fn from_parts(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        opts: WalOptions,
        recovered: Recovered,
        lock: bourse_fs::LockGuard,
    ) -> Self {
        let Recovered { state, segments, report: recovery, spare_ready } = recovered;
        let last = state.written.0;
        let background = opts.preallocate == Preallocate::PreWrite;
        let deferred = opts.defer_preallocation;
        // A spare waits for the active segment to fill (`spare_start_percent`), unless
        // that segment is not pre-written: then it is wanted at once, to move to.
        let held = state.active.as_ref().is_some_and(|a| a.prewritten)
            && state.active.as_ref().map_or(0, |a| a.offset) < opts.spare_start_bytes();
        let shared = Arc::new(Shared {
            vfs,
            dir,
            opts,
            state: Mutex::new(state),
            cond: Condvar::new(),
            segments: RwLock::new(segments),
            written: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            counters: Counters::default(),
            spare: Mutex::new(Spare {
                needed: !spare_ready,
                ready: spare_ready,
                deferred,
                held,
                ..Spare::default()
            }),
            spare_cond: Condvar::new(),
            spare_ready: std::sync::atomic::AtomicBool::new(spare_ready),
        });
        let preparer = background.then(|| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("bourse-wal-prealloc".into())
                .spawn(move || s.prepare_spares())
                .ok()
        });
        Self { shared, recovery, preparer: preparer.flatten(), _lock: lock }
    }

    /// Appends one record as a batch of one.
    pub fn append(&self, entry: Entry<'_>, durability: Durability) -> Result<LsnRange> {
        self.append_batch(&[entry], durability)
    }

    /// Appends a batch; returns its LSN range once `durability` holds. The batch recovers
    /// all-or-nothing.
    pub fn append_batch(&self, entries: &[Entry<'_>], durability: Durability) -> Result<LsnRange> {
        let bytes = self.check_batch(entries)?;
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        let range = self.queue_batch(&mut st, entries, bytes)?;
        shared.wait_for(&mut st, range.last, durability)?;
        Ok(range)
    }

    /// Queues a batch and returns its LSN range at once, before any of it is written
    /// (it goes out with the next write, by whichever appender leads it). For a caller
    /// with other work to do meanwhile: it must call [`Wal::wait_written`] (or
    /// [`Wal::wait_durable`]) for the range before it tells anyone the batch is in.
    /// Until then the batch is as good as unwritten; if this `Wal` is dropped first, it
    /// may never be.
    pub fn queue_batch_unwritten(&self, entries: &[Entry<'_>]) -> Result<LsnRange> {
        let bytes = self.check_batch(entries)?;
        self.queue_batch(&mut self.shared.state.lock(), entries, bytes)
    }

    /// Waits until every record up to `lsn` (already queued) is written to the OS (the
    /// `Buffered` level), leading the write when nobody else is.
    pub fn wait_written(&self, lsn: Lsn) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        shared.wait_for(&mut st, lsn, Durability::Buffered)
    }

    /// Waits for room in the pending buffers (writing them when full) and queues a
    /// checked batch of `bytes`, assigning its LSNs.
    fn queue_batch(
        &self,
        st: &mut MutexGuard<'_, State>,
        entries: &[Entry<'_>],
        bytes: usize,
    ) -> Result<LsnRange> {
        let shared = &*self.shared;
        loop {
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if st.pending_bytes == 0 || st.pending_bytes + bytes <= shared.opts.pending_bytes_max {
                break;
            }
            shared.step_write(st);
        }
        let range = shared.enqueue(st, entries, bytes);
        shared.counters.batches.fetch_add(1, Ordering::Relaxed);
        shared.counters.records.fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(range)
    }

    /// Makes every record appended so far durable; returns the last durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        let target = Lsn(st.next_lsn.0 - 1);
        shared.wait_for(&mut st, target, Durability::Durable)?;
        Ok(target)
    }

    /// Waits until every record up to `lsn` (already appended) is durable, joining or
    /// leading a group commit: an append acknowledged at `Buffered` can be made durable
    /// later, after its caller has done other work.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        shared.wait_for(&mut st, lsn, Durability::Durable)
    }

    fn check_batch(&self, entries: &[Entry<'_>]) -> Result<usize> {
        let opts = &self.shared.opts;
        if entries.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut bytes = 0usize;
        for e in entries {
            if e.payload.len() > opts.record_bytes_max {
                return Err(Error::RecordTooLarge {
                    bytes: e.payload.len(),
                    max: opts.record_bytes_max,
                });
            }
            bytes += format::record_bytes(e.payload.len());
        }
        if entries.len() > opts.batch_records_max {
            let why = "batch_records_max";
            return Err(Error::BatchTooLarge { records: entries.len(), bytes, why });
        }
        if (bytes + SEGMENT_HEADER_BYTES) as u64 > opts.segment_bytes {
            let why = "a batch must fit in one segment (segment_bytes)";
            return Err(Error::BatchTooLarge { records: entries.len(), bytes, why });
        }
        Ok(bytes)
    }

    /// The last LSN written to the OS (readable by [`Wal::read_from`]).
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.shared.written.load(Ordering::Acquire))
    }

    /// The last LSN known durable.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// The oldest LSN still retained.
    pub fn first_lsn(&self) -> Lsn {
        self.shared.segments.read().first().map(|s| s.first_lsn).unwrap_or_default()
    }

    /// Lets the background thread start pre-writing the spare segment, when the WAL was
    /// opened with `defer_preallocation` (otherwise it already runs).
    pub fn start_preallocation(&self) {
        let mut spare = self.shared.spare.lock();
        if spare.deferred {
            spare.deferred = false;
            self.shared.spare_cond.notify_all();
        }
    }

    /// Whether the next segment is ready: with `Preallocate::PreWrite`, whether the
    /// background thread has finished pre-writing the spare; always true otherwise.
    pub fn preallocation_ready(&self) -> bool {
        self.preparer.is_none() || self.shared.spare.lock().ready
    }

    /// Whether an earlier failure poisoned the WAL.
    pub fn is_poisoned(&self) -> bool {
        self.shared.state.lock().poisoned.is_some()
    }

    /// What poisoned the WAL, if something did.
    pub fn poisoned_by(&self) -> Option<String> {
        self.shared.state.lock().poisoned.clone()
    }

    /// What recovery found when this WAL was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Counters of the append path.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            rotations: c.rotations.load(Ordering::Relaxed),
        }
    }

    /// The segment files, oldest first, with their first LSNs.
    pub fn segment_files(&self) -> Vec<(Lsn, PathBuf)> {
        self.shared.segments.read().iter().map(|s| (s.first_lsn, s.path.clone())).collect()
    }

    /// Copies the log from `from` on into the new directory `dest`, for a backup: every
    /// segment holding LSNs at or after `from` (and always the newest, so LSNs continue
    /// where they were), sealed segments hard-linked, the active one copied up to the
    /// last record written. Appends continue meanwhile; the copy ends at a record
    /// boundary. Returns the last LSN copied. The caller keeps `truncate_before` from
    /// running during the copy.
    pub fn backup_to(&self, dest: &Path, from: Lsn) -> Result<Lsn> {
        let shared = &*self.shared;
        let (active_path, active_len, last) = {
            let mut st = shared.state.lock();
            // With no write in flight, the active segment's offset ends the last record.
            while st.write_busy {
                shared.cond.wait(&mut st);
            }
            match &st.active {
                Some(a) => (a.path.clone(), a.offset, st.written),
                None => return Err(Error::Poisoned { cause: "no active segment".into() }),
            }
        };
        let vfs = &*shared.vfs;
        bourse_fs::create_dir_durable(vfs, dest)
            .map_err(io_err("create backup directory", dest))?;
        let segs = self.segment_files();
        for (i, (first, path)) in segs.iter().enumerate() {
            let below = segs.get(i + 1).is_some_and(|(next, _)| next.0 <= from.0);
            if *first > last || (below && *path != active_path) {
                continue;
            }
            let to = dest.join(path.file_name().unwrap_or_default());
            if *path == active_path {
                let src =
                    vfs.open(path, bourse_fs::OpenMode::Read).map_err(io_err("open", path))?;
                let n = usize::try_from(active_len).unwrap_or(usize::MAX);
                let mut buf = vec![0u8; n];
                src.read_exact_at(&mut buf, 0).map_err(io_err("read", path))?;
                let dst =
                    vfs.open(&to, bourse_fs::OpenMode::CreateNew).map_err(io_err("create", &to))?;
                dst.write_all_at(&buf, 0).map_err(io_err("write", &to))?;
                dst.sync_data().map_err(io_err("fdatasync", &to))?;
            } else {
                vfs.hard_link(path, &to).map_err(io_err("link segment", &to))?;
            }
        }
        vfs.sync_dir(dest).map_err(io_err("sync backup directory", dest))?;
        Ok(last)
    }

    /// The directory of this WAL.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        {
            let mut spare = self.shared.spare.lock();
            spare.shutdown = true;
            self.shared.spare_cond.notify_all();
        }
        if let Some(handle) = self.preparer.take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// Encodes a batch at the end of the pending buffers, assigning its LSNs.
    fn enqueue(&self, st: &mut State, entries: &[Entry<'_>], bytes: usize) -> LsnRange {
        let first = st.next_lsn;
        let new_segment = if st.seg_fill + bytes as u64 > self.opts.segment_bytes {
            st.seg_fill = SEGMENT_HEADER_BYTES as u64;
            Some(first)
        } else {
            None
        };
        let reuse = new_segment.is_none()
            && st.pending.last().is_some_and(|c| c.bytes.len() < self.opts.group_commit_bytes_max);
        if !reuse {
            let bytes = st.free_bufs.pop().unwrap_or_default();
            st.pending.push(Chunk { new_segment, bytes, last_lsn: first });
        }
        let last_index = entries.len() - 1;
        let mut lsn = first;
        if let Some(chunk) = st.pending.last_mut() {
            for (i, e) in entries.iter().enumerate() {
                format::encode_record(
                    &mut chunk.bytes,
                    lsn,
                    e.timestamp,
                    e.kind,
                    i == last_index,
                    e.payload,
                );
                lsn = lsn.next();
            }
            chunk.last_lsn = Lsn(lsn.0 - 1);
        }
        st.next_lsn = lsn;
        st.seg_fill += bytes as u64;
        st.pending_bytes += bytes;
        LsnRange { first, last: Lsn(lsn.0 - 1) }
    }

    /// Waits until `target` holds at `durability`, leading I/O when nobody else is.
    pub(crate) fn wait_for(
        &self,
        st: &mut MutexGuard<'_, State>,
        target: Lsn,
        durability: Durability,
    ) -> Result<()> {
        // Before leading a sync, a waiter first lets one more write round run (its own or
        // the one under way) when other appenders' bytes are pending, so the sync covers
        // them too: that is the group commit. Only one, so that a stream of appends
        // cannot keep a sync from starting.
        let mut gathered = false;
        loop {
            let done = match durability {
                Durability::Buffered => st.written >= target,
                Durability::Durable => st.synced >= target,
            };
            if done {
                return Ok(());
            }
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if st.written < target {
                self.step_write(st);
            } else if st.sync_busy {
                self.cond.wait(st);
            } else if !gathered && (st.write_busy || st.has_pending()) {
                gathered = true;
                self.step_write(st);
            } else {
                self.lead_sync(st);
            }
        }
    }

    /// Leads one write round if none is running, else waits for the running one.
    pub(crate) fn step_write(&self, st: &mut MutexGuard<'_, State>) {
        if st.write_busy {
            self.cond.wait(st);
        } else {
            self.lead_write(st);
        }
    }

    /// A write round: every pending buffer (up to `group_commit_bytes_max`) to the OS.
    fn lead_write(&self, st: &mut MutexGuard<'_, State>) {
        st.write_busy = true;
        self.rotate_early(st);
        // The round's vector is kept from round to round (only one round runs at a
        // time), so a round allocates nothing for it.
        let mut chunks = std::mem::take(&mut st.round);
        let mut taken = 0usize;
        let mut n = 0;
        for chunk in &st.pending {
            if n > 0 && taken >= self.opts.group_commit_bytes_max {
                break;
            }
            taken += chunk.bytes.len();
            n += 1;
        }
        chunks.extend(st.pending.drain(..n));
        st.pending_bytes -= taken;
        let mapped = self.opts.map_appends
            && taken <= MAPPED_ROUND_BYTES_MAX
            && st.rounds_since_sync >= MAPPED_AFTER_ROUNDS;
        st.rounds_since_sync = st.rounds_since_sync.saturating_add(1);
        let written_before = st.written;
        let Some(mut active) = st.active.take() else {
            st.poisoned = Some("internal: no active segment".into());
            st.write_busy = false;
            self.cond.notify_all();
            return;
        };
        let result = MutexGuard::unlocked(st, || {
            self.write_chunks(&mut active, &chunks, written_before, mapped)
        });
        // Only a rotation changes it: no path copied on every write.
        if st.tail_file.0 != active.first_lsn {
            st.tail_file = active.tail();
        }
        st.active_prewritten = active.prewritten;
        st.active = Some(active);
        match result {
            Ok((written, sealed)) => {
                st.written = st.written.max(written);
                st.synced = st.synced.max(sealed);
                self.written.store(st.written.0, Ordering::Release);
                self.durable.store(st.synced.0, Ordering::Release);
            }
            Err(e) => self.poison(st, &e),
        }
        for mut chunk in chunks.drain(..) {
            if st.free_bufs.len() < 4
                && chunk.bytes.capacity() <= self.opts.group_commit_bytes_max * 2
            {
                chunk.bytes.clear();
                st.free_bufs.push(chunk.bytes);
            }
        }
        st.round = chunks;
        st.write_busy = false;
        self.cond.notify_all();
    }

    /// Moves to the spare early: when the active segment is not pre-written (one recovery
    /// cut, one grown without preallocation, or one made because appends outran the
    /// spare) and a spare is ready, the round's first pending chunk starts a segment in the spare, however
    /// full the active one is. Appends to a segment that is not pre-written grow the file
    /// (about twice the latency, and each `fdatasync` also writes the size), so the log
    /// leaves it as soon as it can instead of filling it.
    fn rotate_early(&self, st: &mut MutexGuard<'_, State>) {
        if st.active_prewritten
            || st.pending.is_empty()
            || !self.spare_ready.load(Ordering::Acquire)
            || st.pending.iter().any(|c| c.new_segment.is_some())
        {
            return;
        }
        // No round runs (this one is starting), so the pending chunks start right after
        // the last LSN written; with no rotation among them, they all fit the active
        // segment, so they fit a new one.
        let first = st.written.next();
        if let Some(chunk) = st.pending.first_mut() {
            chunk.new_segment = Some(first);
        }
        st.seg_fill = (SEGMENT_HEADER_BYTES + st.pending_bytes) as u64;
        // (Set again from the new segment when the round ends.)
        st.active_prewritten = true;
        tracing::debug!(first = %first, "WAL: leaving a segment that is not pre-written for the ready spare");
    }

    /// A sync round: one `fdatasync` covering everything written when it starts.
    fn lead_sync(&self, st: &mut MutexGuard<'_, State>) {
        st.sync_busy = true;
        st.rounds_since_sync = 0;
        if self.opts.group_commit_delay_us > 0 {
            let delay = Duration::from_micros(self.opts.group_commit_delay_us);
            MutexGuard::unlocked(st, || std::thread::sleep(delay));
        }
        let target = st.written;
        let (_, file, path) = st.tail_file.clone();
        let result = MutexGuard::unlocked(st, || {
            if self.opts.canary.ack_durable_before_sync {
                // CANARY: acknowledges before the sync; the harness must catch this.
                let mut st = self.state.lock();
                st.synced = st.synced.max(target);
                self.cond.notify_all();
            }
            self.sync_file(&file, &path)
        });
        match result {
            Ok(()) => {
                st.synced = st.synced.max(target);
                self.durable.store(st.synced.0, Ordering::Release);
            }
            Err(e) => self.poison(st, &e),
        }
        st.sync_busy = false;
        self.cond.notify_all();
    }

    /// Records a failed write or sync: every later append and every waiter not yet
    /// acknowledged gets [`Error::Poisoned`]; pending buffers are dropped.
    fn poison(&self, st: &mut State, e: &Error) {
        tracing::error!(error = %e, dir = %self.dir.display(), "WAL poisoned");
        if st.poisoned.is_none() {
            st.poisoned = Some(e.to_string());
        }
        st.pending.clear();
        st.pending_bytes = 0;
    }

    /// A write round's I/O, run without the state lock: through the segment's map when
    /// `mapped` and the segment has one, else with `pwrite`. Returns the LSN written,
    /// and the LSN synced by sealing a segment on the way to a new one (0 if none was).
    fn write_chunks(
        &self,
        active: &mut Active,
        chunks: &[Chunk],
        written_before: Lsn,
        mapped: bool,
    ) -> Result<(Lsn, Lsn)> {
        let mut written = written_before;
        let mut synced = Lsn(0);
        for chunk in chunks {
            if let Some(first) = chunk.new_segment {
                // IMPORTANT: seal the old segment before anything lands in the next one, so
                // recovery never sees a durable record after a lost one.
                self.sync_file(&active.file, &active.path)?;
                self.retire_map(&active.file);
                synced = written;
                *active = self.create_segment(first)?;
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
                let info = SegmentInfo {
                    first_lsn: first,
                    path: active.path.clone(),
                    file: active.file.clone(),
                };
                self.segments.write().push(info);
            }
            let before = active.offset;
            if !(mapped && active.file.write_mapped(&chunk.bytes, active.offset)) {
                active
                    .file
                    .write_all_at(&chunk.bytes, active.offset)
                    .map_err(io_err("write", &active.path))?;
            }
            active.offset += chunk.bytes.len() as u64;
            self.spare_due(before, active.offset);
            written = chunk.last_lsn;
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        }
        // Whole pages only: the last, partly written one would be written again.
        let end = active.offset & !(PAGE_BYTES - 1);
        let every = self.opts.writeback_bytes;
        if every > 0 && end >= active.writeback_from + every {
            self.start_writeback(&active.file, active.writeback_from, end);
            active.writeback_from = end;
        }
        if mapped && every > 0 && active.offset.saturating_add(every / 2) >= active.prepared_to {
            self.prepare_ahead(active, every);
        }
        Ok((written, synced))
    }

    /// Lets the background thread start the spare when a write took the active segment
    /// from `before` to `after` bytes across [`WalOptions::spare_start_bytes`].
    fn spare_due(&self, before: u64, after: u64) {
        let start = self.opts.spare_start_bytes();
        if before < start && after >= start {
            let mut spare = self.spare.lock();
            if spare.held {
                spare.held = false;
                self.spare_cond.notify_all();
            }
        }
    }

    /// Asks the background thread, when there is one, to map in the next `window`
    /// bytes of the segment's write map past the page being written
    /// ([`bourse_fs::VfsFile::prepare_mapped`]), so that the mapped writes there take
    /// no page faults: a one-event append's copy otherwise faults once per 4 KiB page,
    /// which showed as 9% of the WAL append in a profile of one-event submits. Asked
    /// again when the writes come within half a window of the end of what was asked.
    /// Without a background thread nothing is asked (the faults would only move from
    /// the writes to this call).
    fn prepare_ahead(&self, active: &mut Active, window: u64) {
        let page = active.offset & !(PAGE_BYTES - 1);
        let from = active.prepared_to.max(page);
        let to = page.saturating_add(window);
        active.prepared_to = to;
        let mut spare = self.spare.lock();
        if spare.worker {
            merge_request(&mut spare.prepare, &active.file, from, to);
            self.spare_cond.notify_all();
        }
    }

    /// Asks for `[from, to)` of `file` to start going to the device (a hint: a sync
    /// later finds less to write), by the background thread when there is one, since
    /// starting the I/O of a megabyte takes the caller's time.
    fn start_writeback(&self, file: &FileRef, from: u64, to: u64) {
        {
            let mut spare = self.spare.lock();
            if spare.worker {
                merge_request(&mut spare.writeback, file, from, to);
                self.spare_cond.notify_all();
                return;
            }
        }
        hint_writeback(file, from, to);
    }

    /// A sealed segment takes no more appends, so its write map goes: its pages leave
    /// this process's address space (they stay in the page cache for readers). Dropping
    /// the map of a 1 GiB segment took 12.5 ms here, so the background thread does it
    /// when there is one, not this write round.
    fn retire_map(&self, file: &FileRef) {
        {
            let mut spare = self.spare.lock();
            if spare.worker && spare.unmap.len() < UNMAP_QUEUE_MAX {
                spare.unmap.push(file.clone());
                self.spare_cond.notify_all();
                return;
            }
        }
        file.unmap_writes();
    }

    pub(crate) fn publish_durable(&self, lsn: Lsn) {
        self.durable.store(lsn.0, Ordering::Release);
    }

    fn sync_file(&self, file: &FileRef, path: &Path) -> Result<()> {
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data().map_err(io_err("fdatasync", path))
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        crate::segment::sync_dir(&*self.vfs, &self.dir, &self.opts)
    }
}
