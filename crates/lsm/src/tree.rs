//! The tree: writes into the memtable, flushes to level 0, compacts down the levels,
//! and reads at snapshots across all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bourse_fs::{LockGuard, Vfs};
use parking_lot::{Condvar, Mutex};

use crate::key::{Kind, SeqNo};
use crate::manifest::{Change, Manifest, Shape};
use crate::memtable::Memtable;
use crate::table::{Table, TableWriter};
use crate::version::{TableRef, Version};
use crate::{Error, Result};

/// Deliberately broken behaviours the harness must catch. Never set outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Canary {
    /// Delete compaction inputs before the manifest edit that removes them is durable.
    pub delete_inputs_before_manifest: bool,
    /// Skip the directory fsync after writing a table.
    pub skip_dir_sync: bool,
}

/// Called with a sequence before writes up to it are made durable in tables (see
/// [`Tree::set_flush_gate`]).
pub type FlushGate = Arc<dyn Fn(SeqNo) -> std::io::Result<()> + Send + Sync>;

/// A set flush gate (a newtype so the tree's state can derive `Debug`).
#[derive(Clone)]
pub(crate) struct GateFn(FlushGate);

impl std::fmt::Debug for GateFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushGate")
    }
}

/// Tree configuration; every limit carries its unit in its name.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Rotate the memtable at this size (default 64 MiB; the origin documents used 128).
    pub memtable_bytes: usize,
    /// Immutable memtables waiting for flush before writers stall (default 2).
    pub immutables_max: usize,
    /// Target data-block size (default 4 KiB).
    pub block_bytes: usize,
    /// Bloom filter bits per key (default 10, about 1% false positives).
    pub bloom_bits_per_key: usize,
    /// Level-0 tables that trigger a compaction into level 1 (default 4).
    pub l0_compaction_trigger: usize,
    /// Target size of level 1 (default 256 MiB); each level below is 10x larger.
    pub level1_bytes: u64,
    /// Number of levels (default 7).
    pub levels: usize,
    /// Target size of one compaction output table (default 64 MiB).
    pub table_bytes: u64,
    /// Rewrite the manifest when its log passes this size (default 4 MiB).
    pub manifest_bytes_max: u64,
    /// How data blocks are stored (default none; `Lz4` trades CPU for space).
    pub compression: crate::table::Compression,
    /// A table being written starts going to the device every this many bytes
    /// (default 1 MiB; 0: only at its final sync). Without it, a flush's or a
    /// compaction's whole output reached the device at once in its final sync, and the
    /// WAL's syncs queued behind it (up to 200 ms on the machines in
    /// `docs/benchmarks.md`).
    pub writeback_bytes: u64,
    /// Bytes of decoded data blocks cached across the tree's tables (default 64 MiB; 0
    /// turns the cache off).
    pub block_cache_bytes: usize,
    /// Longest key accepted (default 64 KiB).
    pub key_bytes_max: usize,
    /// Longest value accepted (default 16 MiB).
    pub value_bytes_max: usize,
    /// Give each memtable a filter of its keys (default false; see
    /// [`Memtable::with_filter`]), planned for `memtable_bytes` / 128 keys: point
    /// lookups of absent keys skip the memtables. For trees read by such lookups (the
    /// engine's accounts, where every new order id is checked for a repeat).
    pub memtable_filter: bool,
    /// Where the memtables' value blocks come from first (default none: each is made
    /// when needed). See [`crate::BlockPool`].
    pub block_pool: Option<Arc<crate::BlockPool>>,
    /// Run flushes and compactions on a background thread (default true). When false,
    /// they run only in [`Tree::maintain`] and [`Tree::flush`] (deterministic tests).
    pub background: bool,
    #[doc(hidden)]
    pub canary: Canary,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self {
            memtable_bytes: 64 << 20,
            immutables_max: 2,
            block_bytes: 4096,
            bloom_bits_per_key: 10,
            l0_compaction_trigger: 4,
            level1_bytes: 256 << 20,
            levels: 7,
            table_bytes: 64 << 20,
            manifest_bytes_max: 4 << 20,
            block_cache_bytes: 64 << 20,
            compression: crate::table::Compression::None,
            writeback_bytes: 1 << 20,
            key_bytes_max: 64 << 10,
            value_bytes_max: 16 << 20,
            memtable_filter: false,
            block_pool: None,
            background: true,
            canary: Canary::default(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub active: Arc<Memtable>,
    /// Oldest first.
    pub immutables: Vec<Arc<Memtable>>,
    pub version: Arc<Version>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub flushed_bytes: AtomicU64,
    pub compacted_read_bytes: AtomicU64,
    pub compacted_written_bytes: AtomicU64,
    pub user_bytes: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub vfs: Arc<dyn Vfs>,
    pub dir: PathBuf,
    pub opts: TreeOptions,
    pub state: Mutex<State>,
    pub changed: Condvar,
    /// `None` while a tree made by [`Tree::create_lazily_at`] has nothing on disk.
    pub manifest: Mutex<Option<Manifest>>,
    pub next_id: AtomicU64,
    pub flushed_seq: AtomicU64,
    pub snapshots: Mutex<BTreeMap<SeqNo, usize>>,
    pub poisoned: Mutex<Option<String>>,
    /// Set once `poisoned` holds a cause, so a write checks for poison with a load
    /// rather than a lock (two locked instructions per write batch).
    pub poison_flag: AtomicBool,
    pub shutdown: Mutex<bool>,
    pub counters: Counters,
    pub compact_cursor: Mutex<Vec<Vec<u8>>>,
    /// Serializes flushes (background flusher, `flush`, `maintain`, stalled writers), so
    /// no immutable memtable is flushed twice.
    pub flush_lock: Mutex<()>,
    /// Serializes compactions, so no table is compacted twice. Flushes and compactions
    /// run side by side: a long compaction never delays the flush a stalled writer needs.
    pub compact_lock: Mutex<()>,
    pub cache: Option<Arc<crate::table::BlockCache>>,
    /// Called with a sequence before anything up to it is made durable in tables.
    pub flush_gate: Mutex<Option<GateFn>>,
    /// The directory's `LOCK`, held while the tree is open; `None` until a tree made by
    /// [`Tree::create_lazily_at`] is on disk.
    pub dir_lock: Mutex<Option<LockGuard>>,
}

/// What a tree holds on disk while open: its manifest and its directory's lock (both
/// `None` for a tree made in memory only, until it is created on disk).
struct OnDisk {
    manifest: Option<Manifest>,
    lock: Option<LockGuard>,
}

/// A key-value LSM tree. See the crate documentation.
#[derive(Debug)]
pub struct Tree {
    pub(crate) inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

/// A registered read point: compaction keeps every version it can see until it is
/// dropped.
#[derive(Debug)]
pub struct Snapshot {
    inner: Arc<Inner>,
    seq: SeqNo,
}

impl Snapshot {
    /// The sequence this snapshot reads at.
    pub fn seq(&self) -> SeqNo {
        self.seq
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snaps = self.inner.snapshots.lock();
        if let Some(n) = snaps.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                snaps.remove(&self.seq);
            }
        }
    }
}

/// Size and shape metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreeStats {
    /// Tables per level.
    pub tables_per_level: Vec<usize>,
    /// Bytes per level.
    pub bytes_per_level: Vec<u64>,
    /// Bytes written to tables (flushes and compactions) per byte written by users.
    pub write_amp: f64,
    /// Bytes written by users since open.
    pub user_bytes: u64,
    /// Bytes over their level's target, waiting for compaction.
    pub pending_compaction_bytes: u64,
    /// Space amplification estimate: all table bytes over the bytes of the deepest
    /// non-empty level (which holds most live data once compaction settles); 1.0 when
    /// there are no tables.
    pub space_amp: f64,
    /// The highest sequence known to be in tables.
    pub flushed_seq: SeqNo,
}

impl Tree {
    /// Opens (or creates) the tree in `dir`: loads the manifest, opens and checks every
    /// table's footer, index, filter and properties, deletes files no manifest entry
    /// refers to (outputs of a flush or compaction that did not commit). The engine then
    /// replays its WAL after [`Tree::flushed_seq`].
    pub fn open(vfs: Arc<dyn Vfs>, dir: impl Into<PathBuf>, opts: TreeOptions) -> Result<Tree> {
        Self::open_or_create_at(vfs, dir, opts, 0)
    }

    /// Opens the tree in `dir` like [`Tree::open`], or, when there is none, creates it
    /// with [`Tree::flushed_seq`] already at `flushed_seq`: for a tree that starts at a
    /// position of its writer's log, whose tables hold everything before it (nothing).
    /// The new manifest says so from its first record, with no second `fsync`. Nothing
    /// guards that the log holds `flushed_seq` durably: the caller makes sure first
    /// (a flush gate is not called).
    pub fn open_or_create_at(
        vfs: Arc<dyn Vfs>,
        dir: impl Into<PathBuf>,
        opts: TreeOptions,
        flushed_seq: SeqNo,
    ) -> Result<Tree> {
        let dir = dir.into();
        bourse_fs::create_dir_durable(&*vfs, &dir).map_err(Error::io("create directory", &dir))?;
        let lock =
            vfs.lock(&dir.join("LOCK")).map_err(Error::io("lock directory", dir.join("LOCK")))?;
        let (shape, mut manifest) = match Manifest::load(&*vfs, &dir)? {
            Some(loaded) => loaded,
            None => {
                let shape = Shape { next_id: 1, flushed_seq, ..Shape::default() };
                let m = Manifest::create(&*vfs, &dir, 1, &shape)?;
                (shape, m)
            }
        };
        let next_id = remove_orphans(&*vfs, &dir, &shape)?.max(shape.next_id);
        if next_id > shape.next_id {
            manifest.append(&[Change::NextId(next_id)])?;
        }
        let cache = (opts.block_cache_bytes > 0)
            .then(|| crate::table::BlockCache::new(opts.block_cache_bytes));
        let mut version = Version::with_levels(opts.levels.max(shape.levels.len()));
        for (level, tables) in shape.levels.iter().enumerate() {
            for id in tables.keys() {
                let table = Table::open_cached(&*vfs, &dir, *id, cache.clone())?;
                version.levels[level].push(TableRef::new(table, vfs.clone()));
            }
        }
        version.levels[0].sort_by_key(|t| std::cmp::Reverse(t.table.meta().id));
        version.sort();
        tracing::info!(dir = %dir.display(), flushed_seq = shape.flushed_seq, tables = version.levels.iter().map(Vec::len).sum::<usize>(), "LSM tree opened");
        let on_disk = OnDisk { manifest: Some(manifest), lock: Some(lock) };
        Self::start(vfs, dir, opts, cache, version, next_id, shape.flushed_seq, on_disk)
    }

    /// A new tree that starts at `flushed_seq` like [`Tree::open_or_create_at`], made in
    /// memory only: it takes writes and reads at once, and writes nothing to `dir` until
    /// [`Tree::create_on_disk`], or its first flush or [`Tree::mark_clean`], creates the
    /// directory and its manifest (each of those first passes the flush gate for
    /// `flushed_seq`). For an owner that must not wait for `fsync`s when a tree is born
    /// (the engine, on a new instrument's first event): its log holds the tree's writes
    /// meanwhile. `dir` must not hold a tree; the creation fails if it does.
    pub fn create_lazily_at(
        vfs: Arc<dyn Vfs>,
        dir: impl Into<PathBuf>,
        opts: TreeOptions,
        flushed_seq: SeqNo,
    ) -> Result<Tree> {
        let cache = (opts.block_cache_bytes > 0)
            .then(|| crate::table::BlockCache::new(opts.block_cache_bytes));
        let version = Version::with_levels(opts.levels);
        let on_disk = OnDisk { manifest: None, lock: None };
        Self::start(vfs, dir.into(), opts, cache, version, 1, flushed_seq, on_disk)
    }

    /// The tree's state around what is on disk, and its background threads.
    #[allow(clippy::too_many_arguments)]
    fn start(
        vfs: Arc<dyn Vfs>,
        dir: PathBuf,
        opts: TreeOptions,
        cache: Option<Arc<crate::table::BlockCache>>,
        version: Version,
        next_id: u64,
        flushed_seq: SeqNo,
        on_disk: OnDisk,
    ) -> Result<Tree> {
        let inner = Arc::new(Inner {
            vfs,
            dir,
            state: Mutex::new(State {
                active: Arc::new(new_memtable(&opts)),
                immutables: Vec::new(),
                version: Arc::new(version),
            }),
            changed: Condvar::new(),
            manifest: Mutex::new(on_disk.manifest),
            next_id: AtomicU64::new(next_id),
            flushed_seq: AtomicU64::new(flushed_seq),
            snapshots: Mutex::new(BTreeMap::new()),
            poisoned: Mutex::new(None),
            poison_flag: AtomicBool::new(false),
            shutdown: Mutex::new(false),
            counters: Counters::default(),
            compact_cursor: Mutex::new(vec![Vec::new(); opts.levels]),
            flush_lock: Mutex::new(()),
            compact_lock: Mutex::new(()),
            cache,
            flush_gate: Mutex::new(None),
            dir_lock: Mutex::new(on_disk.lock),
            opts,
        });
        let mut workers = Vec::new();
        if inner.opts.background {
            for (name, flusher) in [("bourse-lsm-flush", true), ("bourse-lsm-compact", false)] {
                let w = inner.clone();
                let handle = std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || w.work_loop(flusher))
                    .map_err(Error::io("spawn worker", name))?;
                workers.push(handle);
            }
        }
        Ok(Tree { inner, workers })
    }

    /// Whether the tree's directory and manifest exist (always, except for a tree made
    /// by [`Tree::create_lazily_at`] that nothing has created yet).
    pub fn is_on_disk(&self) -> bool {
        self.inner.manifest.lock().is_some()
    }

    /// Creates a tree made by [`Tree::create_lazily_at`] on disk, if it is not yet:
    /// passes the flush gate for its flushed sequence, then creates the directory (synced
    /// into its parent) and a manifest that holds that sequence. Returns whether it
    /// created them. A failure poisons the tree, as a failed flush does.
    pub fn create_on_disk(&self) -> Result<bool> {
        self.inner.check_poison()?;
        if self.is_on_disk() {
            return Ok(false);
        }
        let mut created = false;
        let result = self.inner.pass_gate(self.flushed_seq()).and_then(|()| {
            let mut m = self.inner.manifest.lock();
            created = m.is_none();
            self.inner.ensure_on_disk(&mut m).map(|_| ())
        });
        self.inner.poison_on_error(result).map(|()| created)
    }

    /// Writes `value` for `key` at sequence `seq`. Sequences must increase from write to
    /// write for [`Tree::flushed_seq`] to mean "everything up to here is in tables".
    pub fn put(&self, key: &[u8], value: &[u8], seq: SeqNo) -> Result<()> {
        self.inner.write(key, seq, Kind::Put, value)
    }

    /// Applies several puts (`Some(value)`) and deletes (`None`) at one sequence,
    /// atomically with respect to memtable rotation: after a crash, the tables hold all
    /// of them or none. Use it when one sequence writes several keys of this tree.
    /// Returns whether the memtable filled up and was rotated: a flush is due (the
    /// background thread starts it; without one, call [`Tree::maintain`]).
    pub fn write_batch(&self, ops: &[(&[u8], Option<&[u8]>)], seq: SeqNo) -> Result<bool> {
        self.inner.write_batch(ops, seq)
    }

    /// Deletes `key` at sequence `seq` (a tombstone).
    pub fn delete(&self, key: &[u8], seq: SeqNo) -> Result<()> {
        self.inner.write(key, seq, Kind::Delete, &[])
    }

    /// The value of `key` as of `snapshot` (use [`crate::MAX_SEQ`] for the latest).
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Result<Option<Vec<u8>>> {
        self.inner.get(key, snapshot)
    }

    /// Registers a snapshot at `seq`: compaction keeps what it can see until it drops.
    pub fn snapshot(&self, seq: SeqNo) -> Snapshot {
        *self.inner.snapshots.lock().entry(seq).or_insert(0) += 1;
        Snapshot { inner: self.inner.clone(), seq }
    }

    /// The highest sequence known to be durable in tables.
    pub fn flushed_seq(&self) -> SeqNo {
        self.inner.flushed_seq.load(Ordering::Acquire)
    }

    /// Flushes the memtable and every immutable memtable to tables, synchronously.
    pub fn flush(&self) -> Result<()> {
        self.inner.check_poison()?;
        {
            let mut st = self.inner.state.lock();
            if !st.active.is_empty() {
                let full =
                    std::mem::replace(&mut st.active, Arc::new(new_memtable(&self.inner.opts)));
                st.immutables.push(full);
            }
        }
        while self.inner.flush_one()? {}
        Ok(())
    }

    /// Sets the gate called with a sequence before a flush (or [`Tree::mark_clean`]) makes
    /// writes up to it durable in tables. An owner whose log can still lose those writes
    /// (the engine's WAL after a `Buffered` append) makes them durable there first, so
    /// the tables never get ahead of the log. An error fails the flush (and poisons the
    /// tree, as any flush failure does).
    pub fn set_flush_gate(&self, gate: FlushGate) {
        *self.inner.flush_gate.lock() = Some(GateFn(gate));
    }

    /// Records that every write with a sequence at most `seq` is in tables, when no
    /// memtable holds such a write; returns whether it did. The caller promises that
    /// writes still to come carry sequences above `seq` (the engine applies in LSN
    /// order), so an idle tree can advance [`Tree::flushed_seq`] without a flush and
    /// stop holding back WAL truncation. Costs one manifest append when it advances.
    pub fn mark_clean(&self, seq: SeqNo) -> Result<bool> {
        self.inner.check_poison()?;
        if seq <= self.flushed_seq() {
            return Ok(false);
        }
        let clean = {
            let st = self.inner.state.lock();
            std::iter::once(&st.active).chain(st.immutables.iter()).all(|m| m.min_seq() > seq)
        };
        if !clean {
            return Ok(false);
        }
        self.inner.pass_gate(seq)?;
        let result = self.inner.commit(&[Change::FlushedSeq(seq)], |_| {
            self.inner.flushed_seq.fetch_max(seq, Ordering::AcqRel);
        });
        self.inner.poison_on_error(result).map(|()| true)
    }

    /// Writes an openable copy of the tree's tables into the new directory `dest`: each
    /// table of the current version hard-linked (tables are immutable), and a fresh
    /// manifest describing that version. Returns the copy's flushed sequence: the copy
    /// holds every write up to it and nothing in memtables, so a backup pairs it with
    /// the WAL after it. Writes continue meanwhile; the version is held so no table is
    /// deleted during the copy.
    pub fn checkpoint_to(&self, dest: &Path) -> Result<SeqNo> {
        let (version, flushed) = {
            // The manifest lock orders this with installs, which change the version and
            // the flushed sequence together.
            let _m = self.inner.manifest.lock();
            let st = self.inner.state.lock();
            (st.version.clone(), self.inner.flushed_seq.load(Ordering::Acquire))
        };
        let vfs = &*self.inner.vfs;
        bourse_fs::create_dir_durable(vfs, dest)
            .map_err(Error::io("create checkpoint directory", dest))?;
        let mut shape = Shape {
            flushed_seq: flushed,
            next_id: self.inner.next_id.load(Ordering::Acquire),
            ..Shape::default()
        };
        for (level, tables) in version.levels.iter().enumerate() {
            for t in tables {
                let from = t.table.path();
                let name = from.file_name().unwrap_or_default();
                let to = dest.join(name);
                vfs.hard_link(from, &to).map_err(Error::io("link table", &to))?;
                shape.apply(&Change::Add { level: level as u8, meta: t.table.meta().clone() });
            }
        }
        drop(Manifest::create(vfs, dest, 1, &shape)?);
        vfs.sync_dir(dest).map_err(Error::io("sync checkpoint directory", dest))?;
        Ok(flushed)
    }

    /// Bytes held by the active and immutable memtables.
    pub fn memtable_bytes(&self) -> usize {
        let (active, immutable) = self.memtable_bytes_split();
        active + immutable
    }

    /// Bytes held by the active memtable (what a rotation would hand to the flusher),
    /// and by the immutable ones (already waiting for it).
    pub fn memtable_bytes_split(&self) -> (usize, usize) {
        let st = self.inner.state.lock();
        (st.active.bytes(), st.immutables.iter().map(|m| m.bytes()).sum::<usize>())
    }

    /// Turns a non-empty active memtable into an immutable one for the flusher (the
    /// background thread, or the next [`Tree::maintain`]) without waiting; does nothing
    /// when the immutable queue is full. Returns whether it rotated.
    pub fn rotate(&self) -> bool {
        let mut st = self.inner.state.lock();
        if st.active.is_empty() || st.immutables.len() >= self.inner.opts.immutables_max {
            return false;
        }
        let full = std::mem::replace(&mut st.active, Arc::new(new_memtable(&self.inner.opts)));
        st.immutables.push(full);
        self.inner.changed.notify_all();
        true
    }

    /// Whether a flush or compaction is due (what [`Tree::maintain`] would do).
    pub fn needs_maintenance(&self) -> bool {
        let version = {
            let st = self.inner.state.lock();
            if !st.immutables.is_empty() {
                return true;
            }
            st.version.clone()
        };
        self.inner.compaction_due(&version)
    }

    /// Runs pending flushes and compactions until none is due (what the background
    /// thread does); returns how many steps ran.
    pub fn maintain(&self) -> Result<usize> {
        let mut steps = 0;
        while self.inner.flush_one()? || self.inner.compact_once()? {
            steps += 1;
        }
        Ok(steps)
    }

    /// Size and shape metrics.
    pub fn stats(&self) -> TreeStats {
        let version = self.inner.state.lock().version.clone();
        let c = &self.inner.counters;
        let user = c.user_bytes.load(Ordering::Relaxed);
        let written = c.flushed_bytes.load(Ordering::Relaxed)
            + c.compacted_written_bytes.load(Ordering::Relaxed);
        let pending = (1..version.levels.len())
            .map(|l| version.level_bytes(l).saturating_sub(self.inner.level_target(l)))
            .sum::<u64>();
        let bytes_per_level: Vec<u64> =
            (0..version.levels.len()).map(|l| version.level_bytes(l)).collect();
        let total: u64 = bytes_per_level.iter().sum();
        let deepest = bytes_per_level.iter().rev().find(|b| **b > 0).copied().unwrap_or(0);
        TreeStats {
            tables_per_level: version.levels.iter().map(Vec::len).collect(),
            space_amp: if deepest == 0 { 1.0 } else { total as f64 / deepest as f64 },
            bytes_per_level,
            write_amp: if user == 0 { 0.0 } else { written as f64 / user as f64 },
            user_bytes: user,
            pending_compaction_bytes: pending,
            flushed_seq: self.flushed_seq(),
        }
    }

    /// The directory of this tree.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        *self.inner.shutdown.lock() = true;
        self.inner.changed.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A fresh memtable, with a key filter when the options ask for one.
fn new_memtable(opts: &TreeOptions) -> Memtable {
    let mem = if opts.memtable_filter {
        // A version takes 128 bytes or more of the memtable (key, handle, value).
        Memtable::with_filter(opts.memtable_bytes / 128)
    } else {
        Memtable::new()
    };
    match &opts.block_pool {
        Some(pool) => mem.with_block_pool(pool.clone()),
        None => mem,
    }
}

/// Removes table and temporary files the manifest does not know; returns one past the
/// highest table id seen on disk.
fn remove_orphans(vfs: &dyn Vfs, dir: &Path, shape: &Shape) -> Result<u64> {
    let mut next = 0;
    let mut removed = false;
    for name in vfs.list_dir(dir).map_err(Error::io("list directory", dir))? {
        let Some(id) = name.strip_suffix(".sst").and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        next = next.max(id + 1);
        if !shape.levels.iter().any(|l| l.contains_key(&id)) {
            let path = dir.join(&name);
            tracing::info!(table = %path.display(), "removing a table no manifest entry refers to");
            vfs.remove_file(&path).map_err(Error::io("remove orphan table", &path))?;
            removed = true;
        }
    }
    if removed {
        vfs.sync_dir(dir).map_err(Error::io("fsync directory", dir))?;
    }
    Ok(next)
}

impl Inner {
    pub(crate) fn check_poison(&self) -> Result<()> {
        if !self.poison_flag.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.poisoned.lock() {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    fn write(&self, key: &[u8], seq: SeqNo, kind: Kind, value: &[u8]) -> Result<()> {
        let value = (kind == Kind::Put).then_some(value);
        self.write_batch(&[(key, value)], seq).map(|_| ())
    }

    /// Inserts every write into the active memtable under one lock, so a rotation falls
    /// before or after all of them: a memtable holds all of a sequence's writes or none,
    /// which is what makes "flushed up to `seq`" exact. Returns whether the active
    /// memtable was rotated (a flush is now due).
    pub(crate) fn write_batch(&self, ops: &[(&[u8], Option<&[u8]>)], seq: SeqNo) -> Result<bool> {
        self.check_poison()?;
        for (key, value) in ops {
            let vlen = value.map_or(0, <[u8]>::len);
            if key.len() > self.opts.key_bytes_max || vlen > self.opts.value_bytes_max {
                return Err(Error::TooLarge { key: key.len(), value: vlen });
            }
        }
        if seq > crate::MAX_SEQ {
            return Err(Error::BadSequence { seq });
        }
        let mut st = self.state.lock();
        // NOTE: the insert happens under the state lock so that a rotation (and the flush
        // that follows) can never miss a write that is still going into the old memtable.
        let mut bytes = 0;
        for (key, value) in ops {
            match value {
                Some(v) => st.active.insert(key, seq, Kind::Put, v),
                None => st.active.insert(key, seq, Kind::Delete, &[]),
            }
            bytes += key.len() + value.map_or(0, <[u8]>::len);
        }
        // Writers hold the state lock: a plain load and store, no read-modify-write.
        let user = self.counters.user_bytes.load(Ordering::Relaxed);
        self.counters.user_bytes.store(user + bytes as u64, Ordering::Relaxed);
        if st.active.bytes() >= self.opts.memtable_bytes {
            while st.immutables.len() >= self.opts.immutables_max {
                if self.opts.background {
                    // Write stall: wait for the worker to flush.
                    self.changed.notify_all();
                    self.changed.wait(&mut st);
                    self.check_poison()?;
                } else {
                    drop(st);
                    self.flush_one()?;
                    st = self.state.lock();
                }
            }
            let full = std::mem::replace(&mut st.active, Arc::new(new_memtable(&self.opts)));
            st.immutables.push(full);
            self.changed.notify_all();
            return Ok(true);
        }
        Ok(false)
    }

    fn get(&self, key: &[u8], snapshot: SeqNo) -> Result<Option<Vec<u8>>> {
        // Inline room for the usual few immutables: a point lookup allocates nothing.
        let (active, imms, version) = {
            let st = self.state.lock();
            let imms: smallvec::SmallVec<[Arc<Memtable>; 4]> =
                st.immutables.iter().cloned().collect();
            (st.active.clone(), imms, st.version.clone())
        };
        let found = |(_, kind, value): (SeqNo, Kind, Vec<u8>)| (kind == Kind::Put).then_some(value);
        for m in std::iter::once(&active).chain(imms.iter().rev()) {
            if let Some(v) = m.get(key, snapshot) {
                return Ok(found(v));
            }
        }
        for t in &version.levels[0] {
            if let Some(v) = t.table.get(key, snapshot)? {
                return Ok(found(v));
            }
        }
        for level in version.levels.iter().skip(1) {
            let i = level.partition_point(|t| t.table.meta().largest.as_slice() < key);
            if let Some(t) = level.get(i) {
                if let Some(v) = t.table.get(key, snapshot)? {
                    return Ok(found(v));
                }
            }
        }
        Ok(None)
    }

    /// Flushes the oldest immutable memtable to a level-0 table; false if none waits.
    pub(crate) fn flush_one(&self) -> Result<bool> {
        self.check_poison()?;
        let _flushing = self.flush_lock.lock();
        let Some(imm) = self.state.lock().immutables.first().cloned() else { return Ok(false) };
        let result = self.flush_memtable(&imm);
        self.poison_on_error(result).map(|()| true)
    }

    /// Runs the flush gate for `seq`, if one is set.
    pub(crate) fn pass_gate(&self, seq: SeqNo) -> Result<()> {
        let gate = self.flush_gate.lock().clone();
        match gate {
            Some(g) => (g.0)(seq).map_err(|source| Error::Io {
                op: "flush gate",
                path: self.dir.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn flush_memtable(&self, imm: &Arc<Memtable>) -> Result<()> {
        let mut changes = Vec::new();
        let mut table = None;
        self.pass_gate(imm.max_seq())?;
        // A tree made in memory only gets its directory before its first table.
        self.ensure_on_disk(&mut self.manifest.lock())?;
        if !imm.is_empty() {
            let mut w = self.new_table_writer()?;
            // An immutable memtable takes no inserts: it can lend its versions.
            imm.for_each_frozen(|key, seq, kind, value| w.add(key, seq, kind, value))?;
            let meta = w.finish()?;
            self.sync_dir()?;
            self.counters.flushed_bytes.fetch_add(meta.bytes, Ordering::Relaxed);
            table = Some(self.open_table(meta.id)?);
            changes.push(Change::Add { level: 0, meta });
        }
        changes.push(Change::FlushedSeq(imm.max_seq()));
        changes.push(Change::NextId(self.next_id.load(Ordering::Acquire)));
        self.commit(&changes, |st| {
            let mut version = (*st.version).clone();
            if let Some(t) = table {
                version.levels[0].insert(0, t);
            }
            st.version = Arc::new(version);
            st.immutables.retain(|m| !Arc::ptr_eq(m, imm));
            self.flushed_seq.fetch_max(imm.max_seq(), Ordering::AcqRel);
        })
    }

    /// Creates the next table file (a fresh id, never reused) with the tree's options.
    pub(crate) fn new_table_writer(&self) -> Result<TableWriter> {
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let w = TableWriter::create(
            &*self.vfs,
            &self.dir,
            id,
            self.opts.block_bytes,
            self.opts.bloom_bits_per_key,
        )?;
        Ok(w.with_compression(self.opts.compression).with_writeback(self.opts.writeback_bytes))
    }

    /// Opens one of this tree's tables through its block cache.
    pub(crate) fn open_table(&self, id: u64) -> Result<Arc<TableRef>> {
        let table = Table::open_cached(&*self.vfs, &self.dir, id, self.cache.clone())?;
        Ok(TableRef::new(table, self.vfs.clone()))
    }

    /// Appends an edit to the manifest (durably), then applies `install` to the state
    /// while still holding the manifest lock, then rotates the manifest if it has grown.
    ///
    /// IMPORTANT: committing and installing under one lock means a rotation (which writes
    /// the installed shape) can never miss an edit that another thread committed but had
    /// not installed yet; otherwise its table would be an orphan after a crash.
    pub(crate) fn commit(
        &self,
        changes: &[Change],
        install: impl FnOnce(&mut State),
    ) -> Result<()> {
        let mut guard = self.manifest.lock();
        let m = self.ensure_on_disk(&mut guard)?;
        m.append(changes)?;
        install(&mut self.state.lock());
        self.changed.notify_all();
        if m.bytes() > self.opts.manifest_bytes_max {
            let shape = self.installed_shape();
            *m = Manifest::create(&*self.vfs, &self.dir, m.number() + 1, &shape)?;
        }
        Ok(())
    }

    /// The manifest, after creating the directory and the manifest (with the tree's
    /// flushed sequence) when the tree is still in memory only. The caller has passed
    /// the flush gate for that sequence.
    ///
    /// IMPORTANT: the directory is synced into its parent before the manifest is
    /// created in it, so a power loss cannot keep the manifest's promise (the flushed
    /// sequence) and lose the directory.
    pub(crate) fn ensure_on_disk<'a>(
        &self,
        m: &'a mut Option<Manifest>,
    ) -> Result<&'a mut Manifest> {
        match m {
            Some(m) => Ok(m),
            None => Ok(m.insert(self.create_dir_and_manifest()?)),
        }
    }

    /// What [`Inner::ensure_on_disk`] does for a tree still in memory only.
    fn create_dir_and_manifest(&self) -> Result<Manifest> {
        let dir = &self.dir;
        bourse_fs::create_dir_durable(&*self.vfs, dir)
            .map_err(Error::io("create directory", dir))?;
        let lock = self
            .vfs
            .lock(&dir.join("LOCK"))
            .map_err(Error::io("lock directory", dir.join("LOCK")))?;
        let current = dir.join("CURRENT");
        if self.vfs.exists(&current).map_err(Error::io("stat", &current))? {
            return Err(Error::Corrupt {
                path: current,
                what: "a tree is already here; a new one cannot be made in its place".into(),
            });
        }
        let shape = Shape {
            next_id: self.next_id.load(Ordering::Acquire),
            flushed_seq: self.flushed_seq.load(Ordering::Acquire),
            ..Shape::default()
        };
        let m = Manifest::create(&*self.vfs, dir, 1, &shape)?;
        *self.dir_lock.lock() = Some(lock);
        tracing::debug!(dir = %dir.display(), flushed_seq = shape.flushed_seq, "LSM tree created on disk");
        Ok(m)
    }

    /// The manifest shape of the installed version.
    fn installed_shape(&self) -> Shape {
        let version = self.state.lock().version.clone();
        let mut shape = Shape {
            flushed_seq: self.flushed_seq.load(Ordering::Acquire),
            next_id: self.next_id.load(Ordering::Acquire),
            ..Shape::default()
        };
        for (level, tables) in version.levels.iter().enumerate() {
            for t in tables {
                shape.apply(&Change::Add { level: level as u8, meta: t.table.meta().clone() });
            }
        }
        shape
    }

    pub(crate) fn sync_dir(&self) -> Result<()> {
        if self.opts.canary.skip_dir_sync {
            return Ok(());
        }
        self.vfs.sync_dir(&self.dir).map_err(Error::io("fsync directory", &self.dir))
    }

    pub(crate) fn poison_on_error(&self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            tracing::error!(error = %e, dir = %self.dir.display(), "LSM tree poisoned");
            self.poisoned.lock().get_or_insert_with(|| e.to_string());
            self.poison_flag.store(true, Ordering::Release);
            self.changed.notify_all();
        }
        r
    }

    /// The target size of a level (level 1 = `level1_bytes`, x10 per level).
    pub(crate) fn level_target(&self, level: usize) -> u64 {
        let exp = u32::try_from(level.saturating_sub(1)).unwrap_or(u32::MAX);
        self.opts.level1_bytes.saturating_mul(10u64.saturating_pow(exp))
    }

    /// The oldest sequence any live snapshot reads at (`MAX_SEQ` when none).
    pub(crate) fn oldest_snapshot(&self) -> SeqNo {
        self.snapshots.lock().keys().next().copied().unwrap_or(crate::MAX_SEQ)
    }

    /// A background thread: the flusher flushes immutable memtables, the compactor runs
    /// compactions; each sleeps until there is work.
    fn work_loop(&self, flusher: bool) {
        loop {
            {
                let mut st = self.state.lock();
                loop {
                    if *self.shutdown.lock() {
                        return;
                    }
                    let due = if flusher {
                        !st.immutables.is_empty()
                    } else {
                        self.compaction_due(&st.version)
                    };
                    if due && self.poisoned.lock().is_none() {
                        break;
                    }
                    self.changed.wait_for(&mut st, std::time::Duration::from_millis(200));
                }
            }
            let step = if flusher { self.flush_one() } else { self.compact_once() };
            if let Err(e) = step {
                tracing::error!(error = %e, "background flush/compaction failed");
            }
        }
    }
}
