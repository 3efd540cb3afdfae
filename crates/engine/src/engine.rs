//! The engine: open and recover, submit and apply in LSN order, partitions, pins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::{HashMap, HashSet};
use bourse_fs::{RealFs, Vfs};
use bourse_lsm::{Tree, TreeOptions};
use bourse_model::{Event, InstrumentId};
use bourse_wal::{Entry, Lsn, LsnRange, Wal, WalOptions};
use parking_lot::{Condvar, Mutex, RwLock};
use smallvec::SmallVec;

use crate::apply::{self, StateRead, Write, Writes};
use crate::cache::{BookCheckpoint, BookStart, MarketCache, Update};
use crate::layout::{self, PartitionId};
use crate::{io_err, Durability, EngineOptions, Error, Result};

/// One partition: its tree and the LSN its tables held when the engine opened (replay
/// skips LSNs at or below it).
pub(crate) struct Partition {
    pub id: PartitionId,
    pub tree: Tree,
    pub floor: u64,
}

/// The LSN-ordered apply: who applied last, whether an apply failed, and the writers
/// waiting for their turn (by the first LSN of their batch).
#[derive(Default)]
pub(crate) struct Sequencer {
    /// Every LSN up to this one is applied, handed to the sink and visible.
    pub applied: u64,
    /// Every batch up to this LSN has had its apply turn: its writes to accounts, users
    /// and market are in (and, when it did not use the apply lane, all its writes).
    pub turn: u64,
    /// Every LSN up to this one has its instrument partitions' writes in.
    pub lanes_done: u64,
    pub poisoned: Option<String>,
    /// Each writer waiting for its apply turn is woken alone when it comes: waking every
    /// waiter for every batch would cost 64 context switches per batch with 64 writers.
    pub waiters: BTreeMap<u64, std::thread::Thread>,
    /// Writers whose batch (by first LSN, with its last) waits to be published: only the
    /// one at `applied + 1` can be next, so it alone is woken when `applied` or
    /// `lanes_done` moves. (A condition variable woke every waiting writer each time:
    /// with 64 writers, futex waits and wakes were 45% of the writers' profile samples.)
    pub publish_waiters: BTreeMap<u64, (u64, std::thread::Thread)>,
    /// Receives every applied batch before it becomes visible (the bus).
    pub sink: Option<Arc<dyn CommitSink>>,
}

impl Sequencer {
    /// Wakes the writer whose batch is next to publish, if it waits and its instrument
    /// writes are in.
    fn wake_next_publisher(&self) {
        if let Some((last, t)) = self.publish_waiters.get(&(self.applied + 1)) {
            if self.lanes_done >= *last {
                t.unpark();
            }
        }
    }
}

/// Receives every applied event in LSN order, before readers can see it, from the
/// thread whose batch it is (one call at a time: calls are serialised by the apply
/// order). The bus implements it; it must not block for long, since every writer waits
/// behind it.
pub trait CommitSink: Send + Sync {
    /// Event `lsn`, submitted at `timestamp` (ns since the Unix epoch), with its
    /// encoded form as the WAL holds it.
    fn committed(&self, lsn: u64, timestamp: i64, event: &Event, encoded: &[u8]);

    /// A batch: `events[i]` is LSN `first + i`, encoded as `encoded.get(i)`, all submitted
    /// at `timestamp`. The engine calls this once per batch; the default calls
    /// [`CommitSink::committed`] for each event.
    fn committed_batch(&self, first: u64, timestamp: i64, events: &[Event], encoded: &Encoded) {
        for (i, (e, p)) in events.iter().zip(encoded.iter()).enumerate() {
            self.committed(first + i as u64, timestamp, e, p);
        }
    }
}

/// One write of a tree batch: a key and its value (`None`: a delete).
type TreeOp<'a> = (&'a [u8], Option<&'a [u8]>);

/// The encoded forms of a batch's events, as the WAL holds them, back to back in one
/// buffer (one allocation per batch rather than one per event).
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// Where each event's form ends in `bytes`.
    ends: Vec<usize>,
}

impl Encoded {
    /// Validates and encodes `events`, as [`Engine::submit`] does before it appends
    /// them; the error names the first bad event.
    pub fn of(events: &[Event]) -> Result<Encoded> {
        // Typical events are 60–250 bytes: one guess, then amortised growth. The extra
        // 64 bytes let one event of up to 256 (a tick, a position, a snapshot of five
        // levels) fit without a reallocation.
        let mut out = Encoded {
            bytes: Vec::with_capacity(events.len() * 192 + 64),
            ends: Vec::with_capacity(events.len()),
        };
        for (index, e) in events.iter().enumerate() {
            e.validate().map_err(|source| Error::Event { index, source })?;
            e.encode_into(&mut out.bytes).map_err(|source| Error::Event { index, source })?;
            out.ends.push(out.bytes.len());
        }
        Ok(out)
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Event `i`'s encoded form.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.bytes.get(start..end)
    }

    /// Every event's encoded form, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.bytes[start..self.ends[i]]
        })
    }
}

pub(crate) struct Inner {
    pub vfs: Arc<dyn Vfs>,
    pub dir: PathBuf,
    pub opts: EngineOptions,
    pub wal: Arc<Wal>,
    pub parts: RwLock<HashMap<PartitionId, Arc<Partition>>>,
    pub seq: Mutex<Sequencer>,
    /// Set with `Sequencer::poisoned`, so submitters check it without the lock.
    pub poison_flag: AtomicBool,
    pub seq_cond: Condvar,
    /// Mirror of `Sequencer::applied` for lock-free snapshot reads.
    pub visible: AtomicU64,
    pub cache: MarketCache,
    pub catalogue: RwLock<HashSet<InstrumentId>>,
    pub pins: Mutex<BTreeMap<u64, u64>>,
    pub next_pin: AtomicU64,
    pub users_lock: Mutex<()>,
    pub shutdown: AtomicBool,
    pub wake: (Mutex<bool>, Condvar),
    pub applies_since_check: AtomicU64,
    /// The highest LSN any partition's tables held at open: every later LSN is new to
    /// every partition.
    pub floor_max: AtomicU64,
    /// Book deltas `load_markets` read at open.
    pub open_book_deltas: AtomicU64,
    /// The apply lane: one thread that applies the instrument partitions' writes of
    /// large batches, borrowing the batch from its submitter (who waits for it); unset
    /// with one apply thread.
    pub lane: std::sync::OnceLock<rayon::ThreadPool>,
    /// Value blocks for every partition's memtables, made ahead of need by the
    /// `bourse-blocks` thread ([`ARENA_POOL_BLOCKS`] at most).
    pub blocks: Arc<bourse_lsm::BlockPool>,
    /// The durable list of instrument partitions, and the new ones not on it yet.
    pub list: Arc<PartitionList>,
    /// The instruments whose partitions are in `parts` (a lookup by instrument that
    /// needs no `PartitionId` built; see `Inner::make_new_partitions`).
    pub instruments_made: RwLock<HashSet<InstrumentId>>,
}

/// The first line of a data directory's [`layout::LAYOUT_FILE`], before the number.
const LAYOUT_TEXT: &str = "bourse key layout ";

/// The key layout that the data directory `dir` names in its [`layout::LAYOUT_FILE`],
/// or `None` when it has no such file (a new directory, or one written before the file
/// existed: see [`layout::KEY_LAYOUT`]). A file that names no layout is corrupt.
pub fn data_layout(vfs: &dyn Vfs, dir: &Path) -> Result<Option<u32>> {
    let path = dir.join(layout::LAYOUT_FILE);
    if !vfs.exists(&path).map_err(io_err("stat", &path))? {
        return Ok(None);
    }
    let bytes = bourse_fs::read_file(vfs, &path).map_err(io_err("read", &path))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.strip_prefix(LAYOUT_TEXT).and_then(|t| t.strip_suffix('\n'));
    match found.map(str::parse::<u32>) {
        Some(Ok(n)) => Ok(Some(n)),
        _ => Err(Error::Corrupt { what: format!("{} is not \"{LAYOUT_TEXT}N\"", path.display()) }),
    }
}

/// Checks that the data directory `dir` holds this build's key layout
/// ([`layout::KEY_LAYOUT`]), or makes it say so when it is new. A directory with a WAL
/// or partitions but no layout file was written before the file existed: layout 1.
/// The file is written before anything else, so a crash cannot leave data without it.
fn check_layout(vfs: &dyn Vfs, dir: &Path, existed: bool) -> Result<()> {
    let stored = if existed { data_layout(vfs, dir)? } else { None };
    match stored {
        Some(n) if n == layout::KEY_LAYOUT => return Ok(()),
        Some(n) => return Err(Error::Layout { dir: dir.to_path_buf(), found: n }),
        None => {}
    }
    if existed {
        for sub in ["wal", "parts"] {
            if vfs.exists(&dir.join(sub)).map_err(io_err("stat", dir.join(sub)))? {
                return Err(Error::Layout { dir: dir.to_path_buf(), found: 1 });
            }
        }
    }
    bourse_fs::create_dir_durable(vfs, dir).map_err(io_err("create directory", dir))?;
    let text = format!("{LAYOUT_TEXT}{}\n", layout::KEY_LAYOUT);
    let path = dir.join(layout::LAYOUT_FILE);
    bourse_fs::write_file_atomic(vfs, dir, layout::LAYOUT_FILE, text.as_bytes())
        .map_err(io_err("write", path))
}

/// The durable list of instrument partitions ([`PARTITION_LIST`]) and the partitions
/// made since that are not on it yet. A new instrument's partition is made in memory on
/// its first event ([`Tree::create_lazily_at`]), with no `fsync` on the submit path; it
/// goes on the list before its tree is created on disk, and before any partition's flush
/// or mark-clean records a flushed LSN (both pass the flush gate, which calls
/// [`PartitionList::record_new`]).
///
/// IMPORTANT: the open replays the WAL from the lowest flushed LSN of the *listed*
/// partitions. A partition made at LSN `c` and not yet listed is safe only while every
/// recorded flushed LSN is below `c`: any recording at or past `c` comes after `c` was
/// applied, hence after the partition was added to `new` here, and lists it first.
#[derive(Debug)]
pub(crate) struct PartitionList {
    vfs: Arc<dyn Vfs>,
    /// `parts/instruments`.
    dir: PathBuf,
    /// Made, not listed yet (a short lock: the submit path adds to it).
    new: Mutex<Vec<InstrumentId>>,
    /// Held while the list is rewritten, so two rewrites never race.
    writing: Mutex<()>,
}

impl PartitionList {
    fn read(&self) -> Result<Vec<String>> {
        let path = self.dir.join(PARTITION_LIST);
        if !self.vfs.exists(&path).map_err(io_err("stat", &path))? {
            return Ok(Vec::new());
        }
        let bytes = bourse_fs::read_file(&*self.vfs, &path).map_err(io_err("read", &path))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Corrupt { what: format!("{} is not UTF-8", path.display()) })?;
        Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
    }

    /// Notes a partition made in memory, to be listed by the next [`Self::record_new`].
    fn add_new(&self, id: InstrumentId) {
        self.new.lock().push(id);
    }

    /// Rewrites the list with every partition made since it was last written (one
    /// atomic replace: two `fsync`s), if there are any.
    pub(crate) fn record_new(&self) -> Result<()> {
        let _writing = self.writing.lock();
        let new = self.new.lock().clone();
        if new.is_empty() {
            return Ok(());
        }
        let mut names = self.read()?;
        for id in &new {
            if !names.iter().any(|n| n == id.as_str()) {
                names.push(id.as_str().to_string());
            }
        }
        let mut text = names.join("\n");
        text.push('\n');
        bourse_fs::write_file_atomic(&*self.vfs, &self.dir, PARTITION_LIST, text.as_bytes())
            .map_err(io_err("write", self.dir.join(PARTITION_LIST)))?;
        // Only what was written: others may have been added meanwhile.
        self.new.lock().retain(|id| !new.contains(id));
        Ok(())
    }
}

/// The most memtable value blocks (32 KiB each: 2 MiB) made ahead of need. At a few
/// hundred thousand events a second the writer takes a block every few dozen
/// microseconds, and the thread refills the pool when it is down to half, a few
/// hundred microseconds' work. Served to batches smaller than [`LANE_BATCH_MIN`]
/// only: those leave the other core idle (one-event batches: +5 to +10% in four
/// `submit_loop` pairs), where larger ones keep both cores busy with the apply lane
/// and flushes and lost throughput to the filler (−17 to +2%, five of six pairs).
pub(crate) const ARENA_POOL_BLOCKS: usize = 64;

/// The exchange store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

/// Progress of WAL replay during [`Engine::open_with`].
#[derive(Debug, Clone, Copy)]
pub struct OpenProgress {
    /// Records replayed so far.
    pub records: u64,
    /// Payload bytes replayed so far.
    pub bytes: u64,
    /// The LSN replay started after.
    pub from: u64,
    /// The last LSN in the WAL.
    pub to: u64,
    /// Time since replay started.
    pub elapsed: Duration,
    /// Whether replay has finished.
    pub done: bool,
}

/// What [`Engine::backup`] wrote.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The copy holds the journal up to this LSN.
    pub last_lsn: u64,
    /// Opening the copy replays the WAL from here.
    pub replay_from: u64,
    /// Partitions copied.
    pub partitions: usize,
    /// How long the copy took.
    pub elapsed: Duration,
}

/// Per-partition figures.
#[derive(Debug, Clone)]
pub struct PartitionStats {
    /// Which partition.
    pub id: PartitionId,
    /// Highest LSN its tables hold.
    pub flushed_lsn: u64,
    /// Bytes in its memtables.
    pub memtable_bytes: usize,
    /// The tree's own statistics.
    pub tree: bourse_lsm::TreeStats,
    /// Whether its tree exists on disk: a new instrument's partition is made in memory
    /// on its first event and created on disk by a maintenance thread soon after.
    pub on_disk: bool,
}

/// Engine-wide figures.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Highest applied (visible) LSN.
    pub applied_lsn: u64,
    /// Highest durable LSN.
    pub durable_lsn: u64,
    /// Oldest LSN the WAL retains.
    pub wal_first_lsn: u64,
    /// The WAL's own statistics.
    pub wal: bourse_wal::WalStats,
    /// One entry per partition.
    pub partitions: Vec<PartitionStats>,
    /// Book deltas read from the instrument partitions' tables when the engine opened,
    /// to rebuild the latest books: about `book_checkpoint_every` per instrument at
    /// most, with book checkpoints on.
    pub open_book_deltas: u64,
    /// Why the engine refuses writes, once a failure has poisoned it or its WAL (until
    /// reopened).
    pub poisoned: Option<String>,
}

/// Keeps the WAL from being truncated at or after an LSN (the bus holds one per durable
/// cursor). Dropping it releases the hold.
pub struct WalPin {
    inner: Arc<Inner>,
    id: u64,
}

impl std::fmt::Debug for WalPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalPin").field("id", &self.id).field("lsn", &self.lsn()).finish()
    }
}

impl WalPin {
    /// Moves the hold: records before `lsn` may now be truncated.
    pub fn advance(&self, lsn: u64) {
        if let Some(v) = self.inner.pins.lock().get_mut(&self.id) {
            *v = (*v).max(lsn);
        }
    }

    /// The LSN held.
    pub fn lsn(&self) -> u64 {
        self.inner.pins.lock().get(&self.id).copied().unwrap_or(0)
    }
}

impl Drop for WalPin {
    fn drop(&mut self) {
        self.inner.pins.lock().remove(&self.id);
    }
}

/// The file (in `parts/instruments/`) naming every instrument partition, one per line,
/// replaced atomically before a new partition's tree is created, so opening never
/// depends on listing directories. (A listed partition may lack its tree after a crash
/// during its creation; see `Inner::open_partition`.)
pub const PARTITION_LIST: &str = "PARTITIONS";

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Engine {
    /// Opens (or creates) the store in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        Engine::open_with(RealFs::shared(), dir.as_ref(), opts, &mut |_| {})
    }

    /// Opens the store through `vfs`, reporting WAL replay progress to `progress` (about
    /// once a second, and once at the end).
    pub fn open_with(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        opts: EngineOptions,
        progress: &mut dyn FnMut(OpenProgress),
    ) -> Result<Engine> {
        if opts.batch_events_max == 0
            || opts.memtable_bytes == 0
            || opts.accounts_memtable_bytes == Some(0)
        {
            return Err(Error::Invalid(
                "batch_events_max, memtable_bytes and accounts_memtable_bytes must be > 0".into(),
            ));
        }
        if opts.sync_interval.is_some_and(|t| t.is_zero()) {
            return Err(Error::Invalid("sync_interval must be more than zero (or None)".into()));
        }
        // Each directory made here is synced into its parent: a power loss must not take
        // the data directory away with an acknowledged write in it.
        let existed = vfs.exists(dir).map_err(io_err("stat", dir))?;
        check_layout(&*vfs, dir, existed)?;
        bourse_fs::create_dir_durable(&*vfs, &dir.join("parts/instruments"))
            .map_err(io_err("create directory", dir.join("parts/instruments")))?;
        // A data directory made by someone else (by hand, by a script) may never have had
        // its entry synced: its parent is synced at every open (one `fsync`; a new one's
        // was just above). A parent this process may not read gets a warning.
        let parent = bourse_fs::parent_dir(dir);
        let synced = if existed { vfs.sync_dir(parent) } else { Ok(()) };
        if let Err(e) = synced {
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return Err(io_err("sync directory", parent)(e));
            }
            tracing::warn!(dir = %parent.display(), error = %e, "cannot sync the data directory's parent");
        }
        // The spare segment is pre-written once the replay below is done: it would take
        // a core and the disk from the replay (with a 256 MiB spare, replaying 1 M
        // events took 1.74-1.80 s against 1.88-2.07 s).
        // The WAL's background thread (spare pre-writes) gives way to the submit path
        // like the maintenance threads, unless the WAL options say otherwise.
        let background_nice = match opts.wal.background_nice {
            0 => opts.maintenance_nice,
            n => n,
        };
        let wal_opts =
            WalOptions { defer_preallocation: true, background_nice, ..opts.wal.clone() };
        let wal = Arc::new(Wal::open(vfs.clone(), dir.join("wal"), wal_opts)?);
        let hold = opts.wal_hold_at_open;
        let inner = Arc::new(Inner {
            vfs: vfs.clone(),
            dir: dir.to_path_buf(),
            opts,
            wal,
            parts: RwLock::new(HashMap::default()),
            seq: Mutex::new(Sequencer::default()),
            poison_flag: AtomicBool::new(false),
            seq_cond: Condvar::new(),
            visible: AtomicU64::new(0),
            cache: MarketCache::default(),
            catalogue: RwLock::new(HashSet::default()),
            // Pin id 0 is the hold at open (see `EngineOptions::wal_hold_at_open`).
            pins: Mutex::new(hold.map(|l| (0, l)).into_iter().collect()),
            next_pin: AtomicU64::new(1),
            users_lock: Mutex::new(()),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
            applies_since_check: AtomicU64::new(0),
            floor_max: AtomicU64::new(0),
            open_book_deltas: AtomicU64::new(0),
            lane: std::sync::OnceLock::new(),
            blocks: Arc::new(bourse_lsm::BlockPool::new(ARENA_POOL_BLOCKS)),
            list: Arc::new(PartitionList {
                vfs: vfs.clone(),
                dir: dir.join("parts/instruments"),
                new: Mutex::default(),
                writing: Mutex::default(),
            }),
            instruments_made: RwLock::new(HashSet::default()),
        });
        let mut ids = vec![PartitionId::Accounts, PartitionId::Users, PartitionId::Market];
        for name in inner.list.read()? {
            match InstrumentId::new(name.clone()) {
                Ok(id) => ids.push(PartitionId::Instrument(id)),
                Err(e) => {
                    return Err(Error::Corrupt { what: format!("{PARTITION_LIST}: {e}") });
                }
            }
        }
        for id in ids {
            let p = inner.open_partition(id, None)?;
            inner.floor_max.fetch_max(p.floor, Ordering::Relaxed);
        }
        inner.load_catalogue()?;
        // The cache first, from the tables: replay then keeps it up to date as the live
        // apply did, and writes the book checkpoints the live apply wrote.
        inner.load_markets()?;
        inner.replay(progress)?;
        inner.wal.start_preallocation();
        let mut workers = Vec::new();
        if inner.opts.apply_threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(|_| "bourse-apply".into())
                .build()
                .map_err(|e| io_err("spawn apply thread", dir)(std::io::Error::other(e)))?;
            let _ = inner.lane.set(pool);
        }
        for i in 0..inner.opts.maintenance_threads.max(1) {
            let inner2 = inner.clone();
            let h = std::thread::Builder::new()
                .name(format!("bourse-maint-{i}"))
                .spawn(move || inner2.maintenance_loop(i == 0))
                .map_err(io_err("spawn maintenance thread", dir))?;
            workers.push(h);
        }
        {
            let inner2 = inner.clone();
            let h = std::thread::Builder::new()
                .name("bourse-blocks".into())
                .spawn(move || {
                    let nice = inner2.opts.maintenance_nice;
                    bourse_fs::lower_thread_priority(nice, "memtable block thread");
                    inner2.blocks.run()
                })
                .map_err(io_err("spawn memtable block thread", dir))?;
            workers.push(h);
        }
        if let Some(every) = inner.opts.sync_interval {
            let inner2 = inner.clone();
            let h = std::thread::Builder::new()
                .name("bourse-wal-sync".into())
                .spawn(move || inner2.sync_loop(every))
                .map_err(io_err("spawn WAL sync thread", dir))?;
            workers.push(h);
        }
        Ok(Engine { inner, workers })
    }

    /// Appends `events` to the journal as one batch, applies them in LSN order, and
    /// returns their LSN range once `durability` holds. The batch is all or nothing:
    /// an invalid event fails the whole call before anything is written.
    pub fn submit(&self, events: &[Event], durability: Durability) -> Result<LsnRange> {
        self.inner.submit(events, durability)
    }

    /// The highest LSN applied and visible to queries.
    pub fn applied_lsn(&self) -> u64 {
        self.inner.visible.load(Ordering::Acquire)
    }

    /// The highest durable LSN.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.wal.durable_lsn().0
    }

    /// Makes everything applied so far durable.
    pub fn sync(&self) -> Result<u64> {
        Ok(self.inner.wal.sync()?.0)
    }

    /// Waits until every event up to `lsn` (already applied) is durable, joining or
    /// leading a group commit.
    pub fn wait_durable(&self, lsn: u64) -> Result<()> {
        Ok(self.inner.wal.wait_durable(Lsn(lsn))?)
    }

    /// Installs the one commit sink (replacing any earlier one) and returns the first
    /// LSN it will receive: every event at or after it reaches the sink before it is
    /// visible, every event before it is already applied (and readable through
    /// [`Engine::commits`]). The two sets meet with no gap and no overlap.
    pub fn attach_sink(&self, sink: Arc<dyn CommitSink>) -> u64 {
        let mut seq = self.inner.seq.lock();
        seq.sink = Some(sink);
        seq.applied + 1
    }

    /// Removes the commit sink.
    pub fn detach_sink(&self) {
        self.inner.seq.lock().sink = None;
    }

    /// Sets (or with `None` releases) the engine-wide WAL hold that starts as
    /// [`EngineOptions::wal_hold_at_open`]. The bus releases it while its cursors hold
    /// their own pins and sets it again when it is dropped, so durable cursors stay
    /// protected while no bus is attached.
    pub fn set_wal_hold(&self, lsn: Option<u64>) {
        let mut pins = self.inner.pins.lock();
        match lsn {
            Some(l) => pins.insert(0, l),
            None => pins.remove(&0),
        };
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.opts
    }

    /// The file system the engine runs on.
    pub fn vfs(&self) -> Arc<dyn Vfs> {
        self.inner.vfs.clone()
    }

    /// The oldest LSN the WAL still holds.
    pub fn first_retained_lsn(&self) -> u64 {
        self.inner.wal.first_lsn().0
    }

    /// The market cache (latest tick and book per instrument).
    pub fn market(&self) -> &MarketCache {
        &self.inner.cache
    }

    /// The latest tick of an instrument, from memory.
    pub fn latest_tick(&self, id: &InstrumentId) -> Option<Arc<bourse_model::Tick>> {
        self.inner.cache.tick(id)
    }

    /// The latest book of an instrument (newest snapshot plus later deltas), from memory.
    pub fn latest_book(&self, id: &InstrumentId) -> Option<Arc<bourse_model::BookSnapshot>> {
        self.inner.cache.book(id)
    }

    /// Instruments the store has seen, sorted.
    pub fn instruments(&self) -> Vec<InstrumentId> {
        let mut v: Vec<InstrumentId> = self.inner.catalogue.read().iter().cloned().collect();
        v.sort();
        v
    }

    /// Holds the WAL from truncation at or after `lsn` until the pin is dropped or
    /// advanced.
    pub fn pin_wal(&self, lsn: u64) -> WalPin {
        let id = self.inner.pin(lsn).keep();
        WalPin { inner: self.inner.clone(), id }
    }

    /// Flushes every partition, marks idle ones clean and truncates the WAL as far as
    /// the partitions, the pins and the retention allow. Returns the oldest LSN the WAL
    /// still holds. The background checkpointer does the same without the flush. A
    /// failure poisons the engine (later writes get [`Error::Poisoned`] until reopened).
    pub fn checkpoint(&self) -> Result<u64> {
        let run = || -> Result<u64> {
            self.inner.create_new_partitions()?;
            for p in self.inner.partitions() {
                p.tree.flush()?;
            }
            self.inner.checkpoint_step(true)?;
            Ok(self.inner.wal.first_lsn().0)
        };
        // A failed flush, creation or truncation poisons the engine, as it does in the
        // background (see `Inner::maintenance_loop`).
        run().inspect_err(|e| self.inner.poison(&mut self.inner.seq.lock(), e))
    }

    /// Writes a consistent, openable copy of the store into `dest` (which must not exist
    /// or be empty) while writes continue: each partition's tables hard-linked with a
    /// fresh manifest, then the WAL from the oldest LSN a copied partition lacks up to
    /// the last record written. Opening the copy replays that WAL tail, so the copy holds
    /// exactly the journal prefix up to the returned LSN.
    pub fn backup(&self, dest: &Path) -> Result<BackupReport> {
        let vfs = &*self.inner.vfs;
        if vfs.exists(dest).map_err(io_err("stat", dest))?
            && !vfs.list_dir(dest).map_err(io_err("list", dest))?.is_empty()
        {
            return Err(Error::Invalid(format!("backup target {} is not empty", dest.display())));
        }
        let started = Instant::now();
        // Nothing is truncated while the copy runs.
        let _pin = self.pin_wal(self.inner.wal.first_lsn().0);
        // The copy says its key layout first, as a new data directory does.
        check_layout(vfs, dest, false)?;
        let inst = dest.join("parts/instruments");
        bourse_fs::create_dir_durable(vfs, &inst).map_err(io_err("create directory", &inst))?;
        let mut floor = u64::MAX;
        let mut names = Vec::new();
        let parts = self.inner.partitions();
        for p in &parts {
            let f = p.tree.checkpoint_to(&dest.join("parts").join(p.id.dir_name()))?;
            floor = floor.min(f);
            if let PartitionId::Instrument(id) = &p.id {
                names.push(id.as_str().to_string());
            }
        }
        names.sort();
        let mut text = names.join("\n");
        text.push('\n');
        bourse_fs::write_file_atomic(vfs, &inst, PARTITION_LIST, text.as_bytes())
            .map_err(io_err("write", inst.join(PARTITION_LIST)))?;
        let last = self.inner.wal.backup_to(&dest.join("wal"), Lsn(floor.saturating_add(1)))?;
        for d in [dest.join("parts"), dest.to_path_buf()] {
            vfs.sync_dir(&d).map_err(io_err("sync directory", &d))?;
        }
        let report = BackupReport {
            last_lsn: last.0,
            replay_from: floor.saturating_add(1),
            partitions: parts.len(),
            elapsed: started.elapsed(),
        };
        tracing::info!(dest = %dest.display(), last = report.last_lsn, "backup written");
        Ok(report)
    }

    /// Figures for monitoring.
    pub fn stats(&self) -> EngineStats {
        let mut partitions: Vec<PartitionStats> = self
            .inner
            .partitions()
            .iter()
            .map(|p| PartitionStats {
                id: p.id.clone(),
                flushed_lsn: p.tree.flushed_seq(),
                memtable_bytes: p.tree.memtable_bytes(),
                tree: p.tree.stats(),
                on_disk: p.tree.is_on_disk(),
            })
            .collect();
        partitions.sort_by(|a, b| a.id.cmp(&b.id));
        EngineStats {
            applied_lsn: self.applied_lsn(),
            durable_lsn: self.durable_lsn(),
            wal_first_lsn: self.inner.wal.first_lsn().0,
            wal: self.inner.wal.stats(),
            partitions,
            open_book_deltas: self.inner.open_book_deltas.load(Ordering::Relaxed),
            poisoned: self
                .inner
                .seq
                .lock()
                .poisoned
                .clone()
                .or_else(|| self.inner.wal.poisoned_by().map(|c| format!("the WAL: {c}"))),
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Stops the background threads, makes the WAL durable and closes. Dropping the
    /// engine does the same; this reports errors.
    pub fn close(mut self) -> Result<()> {
        self.stop_workers();
        if !self.inner.wal.is_poisoned() && self.inner.wal.last_lsn().0 > 0 {
            self.inner.wal.sync()?;
        }
        // Partitions still in memory only get their trees (not needed for recovery: the
        // WAL holds their events; it leaves the directory as an operator expects).
        if !self.inner.wal.is_poisoned() && !self.inner.poison_flag.load(Ordering::Acquire) {
            self.inner.create_new_partitions()?;
        }
        Ok(())
    }

    fn stop_workers(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.kick();
        self.inner.blocks.stop();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_workers();
        if !self.inner.wal.is_poisoned() && self.inner.wal.last_lsn().0 > 0 {
            let _ = self.inner.wal.sync();
        }
        if !self.inner.wal.is_poisoned() && !self.inner.poison_flag.load(Ordering::Acquire) {
            if let Err(e) = self.inner.create_new_partitions() {
                tracing::warn!(error = %e, "creating new partitions at close failed; the next open replays their events");
            }
        }
    }
}

impl StateRead for Inner {
    fn get(&self, part: &PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.parts.read().get(part) {
            Some(p) => Ok(p.tree.get(key, bourse_lsm::MAX_SEQ)?),
            None => Ok(None),
        }
    }

    fn catalogued(&self, id: &InstrumentId) -> bool {
        self.catalogue.read().contains(id)
    }
}

/// A WAL hold of [`Inner`]'s own, released when dropped (unless kept).
struct InnerPin<'a> {
    inner: &'a Inner,
    id: Option<u64>,
}

impl InnerPin<'_> {
    /// Leaves the hold in place and returns its id (a [`WalPin`] then owns it).
    fn keep(mut self) -> u64 {
        self.id.take().unwrap_or_default()
    }
}

impl Drop for InnerPin<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.pins.lock().remove(&id);
        }
    }
}

impl Inner {
    /// Holds the WAL from truncation at or after `lsn` while the returned guard lives.
    fn pin(&self, lsn: u64) -> InnerPin<'_> {
        let id = self.next_pin.fetch_add(1, Ordering::Relaxed);
        self.pins.lock().insert(id, lsn);
        InnerPin { inner: self, id: Some(id) }
    }

    pub(crate) fn partitions(&self) -> Vec<Arc<Partition>> {
        self.parts.read().values().cloned().collect()
    }

    pub(crate) fn partition(&self, id: &PartitionId) -> Option<Arc<Partition>> {
        self.parts.read().get(id).cloned()
    }

    fn tree_options(&self, id: &PartitionId) -> TreeOptions {
        let memtable_bytes = match (id, self.opts.accounts_memtable_bytes) {
            (PartitionId::Accounts, Some(bytes)) => bytes,
            _ => self.opts.memtable_bytes,
        };
        TreeOptions {
            memtable_bytes,
            block_cache_bytes: self.opts.block_cache_bytes,
            // Apply looks up keys that are mostly absent there: every new order id (is it
            // a repeat?), every new user. Instruments are only scanned.
            memtable_filter: matches!(id, PartitionId::Accounts | PartitionId::Users),
            // The engine's maintenance threads flush and compact every partition, so
            // hundreds of instruments do not mean hundreds of threads.
            background: false,
            block_pool: Some(self.blocks.clone()),
            ..TreeOptions::default()
        }
    }

    /// Opens a partition's tree; `created_at` is the LSN of the event that creates a new
    /// one (its tables then hold everything before it: nothing).
    ///
    /// A new partition is made in memory only, so its first event waits for no `fsync`
    /// ([`Tree::create_lazily_at`], floor `created_at - 1`). A maintenance thread then
    /// creates it on disk ([`Inner::create_new_partitions`]): the flush gate lists it
    /// ([`PARTITION_LIST`]) and makes the WAL durable up to the floor, then the tree's
    /// directory and manifest are made. A crash before the listing leaves nothing of it
    /// but its events in the WAL, which the open replays (see [`PartitionList`]); one
    /// between the listing and the tree leaves a listed partition without a tree, which
    /// the next open creates with nothing flushed, so the replay refills it. Truncation
    /// meanwhile stops at its floor, as for any partition.
    fn open_partition(&self, id: PartitionId, created_at: Option<u64>) -> Result<Arc<Partition>> {
        let path = self.dir.join("parts").join(id.dir_name());
        // Held until the partition is in `parts`, where truncation sees its floor.
        let _pin = created_at.map(|lsn| self.pin(lsn));
        let tree = match created_at {
            Some(lsn) => {
                let tree = Tree::create_lazily_at(
                    self.vfs.clone(),
                    &path,
                    self.tree_options(&id),
                    lsn.saturating_sub(1),
                )?;
                if let PartitionId::Instrument(ins) = &id {
                    // Before the partition takes its first write (see `PartitionList`).
                    self.list.add_new(ins.clone());
                }
                tree
            }
            None => {
                if matches!(id, PartitionId::Instrument(_))
                    && !self.vfs.exists(&path.join("CURRENT")).map_err(io_err("stat", &path))?
                {
                    tracing::warn!(
                        partition = %id,
                        "listed partition has no tree (its creation was cut short): creating it; the WAL replay fills it"
                    );
                }
                Tree::open(self.vfs.clone(), &path, self.tree_options(&id))?
            }
        };
        // IMPORTANT: tables must never hold an LSN the WAL could still lose (a `Buffered`
        // append not yet synced): after a power loss that LSN would be handed out again.
        // So a flush first makes the WAL durable up to what it writes. It also lists the
        // partitions made since the list was written, before any flushed LSN is recorded.
        let wal = self.wal.clone();
        let list = self.list.clone();
        tree.set_flush_gate(Arc::new(move |seq| {
            list.record_new().map_err(std::io::Error::other)?;
            wal.wait_durable(Lsn(seq)).map_err(|e| std::io::Error::other(e.to_string()))
        }));
        let floor = tree.flushed_seq();
        let new = created_at.is_some();
        let p = Arc::new(Partition { id: id.clone(), tree, floor });
        let made = match &id {
            PartitionId::Instrument(ins) => Some(ins.clone()),
            _ => None,
        };
        self.parts.write().insert(id, p.clone());
        if let Some(ins) = made {
            self.instruments_made.write().insert(ins);
        }
        if new {
            // A maintenance thread creates it on disk.
            self.kick();
        }
        Ok(p)
    }

    /// Makes the partitions of instruments that `events` (LSN, event) write and that do
    /// not exist yet, each at the LSN of its first event here. Needed where two threads
    /// apply one stretch of the log (the apply lane): otherwise the thread that writes
    /// accounts could get ahead of the one that makes an instrument's partition, and a
    /// flush of accounts could record a flushed LSN past that partition's first event
    /// before it is listed (see `PartitionList`).
    fn make_new_partitions<'a>(
        &self,
        events: impl Iterator<Item = (u64, &'a Event)>,
    ) -> Result<()> {
        let mut missing: Vec<(u64, &InstrumentId)> = Vec::new();
        {
            // One read of the set for the whole batch: the other apply thread reads it too.
            let known = self.instruments_made.read();
            for (lsn, event) in events {
                if let Some(ins) = apply::instrument_written(event) {
                    if !known.contains(ins) && !missing.iter().any(|(_, m)| *m == ins) {
                        missing.push((lsn, ins));
                    }
                }
            }
        }
        for (lsn, ins) in missing {
            let id = PartitionId::Instrument(ins.clone());
            if self.partition(&id).is_none() {
                self.open_partition(id, Some(lsn))?;
            }
        }
        Ok(())
    }

    /// Creates on disk every partition that is still in memory only (see
    /// [`Inner::open_partition`]); returns how many it created.
    pub(crate) fn create_new_partitions(&self) -> Result<usize> {
        let mut created = 0;
        for p in self.partitions() {
            if !p.tree.is_on_disk() && p.tree.create_on_disk()? {
                created += 1;
            }
        }
        Ok(created)
    }

    fn load_catalogue(&self) -> Result<()> {
        let Some(market) = self.partition(&PartitionId::Market) else { return Ok(()) };
        let mut cat = self.catalogue.write();
        for pair in market.tree.prefix(&[layout::market::INSTRUMENT], bourse_lsm::MAX_SEQ) {
            let (key, _) = pair?;
            let name = key.get(1..).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("");
            let id = InstrumentId::new(name)
                .map_err(|e| Error::Corrupt { what: format!("instrument catalogue: {e}") })?;
            cat.insert(id);
        }
        Ok(())
    }

    /// Replays the WAL after the lowest LSN any partition's tables hold. It reads
    /// through the WAL reader's buffer, not a memory map: a damaged disk then fails the
    /// open with an error naming the segment rather than killing it with `SIGBUS`.
    fn replay(&self, progress: &mut dyn FnMut(OpenProgress)) -> Result<()> {
        let floor = self.partitions().iter().map(|p| p.floor).min().unwrap_or(0);
        let first = self.wal.first_lsn().0;
        let last = self.wal.last_lsn().0;
        // Truncation never passes a partition's floor, so the WAL starts at or before
        // floor + 1 unless nothing was ever written after it.
        let start = (floor + 1).max(first);
        let started = Instant::now();
        let mut report = OpenProgress {
            records: 0,
            bytes: 0,
            from: start.saturating_sub(1),
            to: last,
            elapsed: Duration::ZERO,
            done: false,
        };
        if start <= last {
            tracing::info!(from = start, to = last, "replaying the WAL");
            if self.opts.apply_threads > 1 {
                self.replay_in_lanes(start, &mut report, started, progress)?;
            } else {
                let mut reader = self.wal.read_from_buffered(Lsn(start))?;
                let mut last_report = Instant::now();
                while let Some(rec) = reader.next_record()? {
                    let lsn = rec.lsn.0;
                    let event = decode_record(lsn, rec.payload)?;
                    // (The writes borrow the record, so their vector is the record's too.)
                    let mut writes = Writes::new();
                    self.apply_one(lsn, &event, rec.payload, &mut writes, Some(Lane::All))?;
                    report.records += 1;
                    if report.records.is_multiple_of(REPLAY_BUDGET_EVERY) {
                        self.replay_budget()?;
                    }
                    report.bytes += rec.payload.len() as u64;
                    if last_report.elapsed() >= Duration::from_secs(1) {
                        last_report = Instant::now();
                        report.elapsed = started.elapsed();
                        tracing::info!(records = report.records, lsn, "replaying");
                        progress(report);
                    }
                }
            }
        }
        let last = self.wal.last_lsn().0;
        {
            let mut seq = self.seq.lock();
            seq.applied = last;
            seq.turn = last;
            seq.lanes_done = last;
        }
        self.visible.store(last, Ordering::Release);
        report.done = true;
        report.elapsed = started.elapsed();
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        tracing::info!(
            records = report.records,
            bytes = report.bytes,
            rate = report.records as f64 / secs,
            "WAL replay finished"
        );
        progress(report);
        Ok(())
    }

    /// Replays the WAL from `start` on three threads: a reader reads and decodes
    /// records in batches and hands each batch to both appliers; this thread applies the
    /// writes to accounts, users and market, and a helper applies the same batches'
    /// writes to the instrument partitions. Each partition is still written in LSN order
    /// by one thread, and apply's writes to a partition depend only on that partition
    /// (see `apply`), so the result equals a serial replay. (Decoding is about 40% of
    /// the work: on the applying thread it made that thread the bottleneck.)
    fn replay_in_lanes(
        &self,
        start: u64,
        report: &mut OpenProgress,
        started: Instant,
        progress: &mut dyn FnMut(OpenProgress),
    ) -> Result<()> {
        /// Records per batch; at most `DEPTH` batches wait for each applier.
        const BATCH: usize = 512;
        const DEPTH: usize = 8;
        std::thread::scope(|scope| -> Result<()> {
            let (to_helper, for_helper) = std::sync::mpsc::sync_channel::<Arc<ReplayBatch>>(DEPTH);
            let (to_main, for_main) = std::sync::mpsc::sync_channel::<Arc<ReplayBatch>>(DEPTH);
            let helper = std::thread::Builder::new()
                .name("bourse-replay".into())
                .spawn_scoped(scope, move || -> Result<()> {
                    for batch in for_helper {
                        batch.apply(self, Lane::Instruments)?;
                    }
                    Ok(())
                })
                .map_err(io_err("spawn replay thread", &self.dir))?;
            let reader = std::thread::Builder::new()
                .name("bourse-replay-read".into())
                .spawn_scoped(scope, move || -> Result<()> {
                    let mut reader = self.wal.read_from_buffered(Lsn(start))?;
                    loop {
                        // Sized up front: an event is a few hundred bytes, and growing
                        // these by doubling copied each batch about twice over.
                        let mut batch = ReplayBatch {
                            events: Vec::with_capacity(BATCH),
                            bytes: Vec::with_capacity(BATCH * 256),
                        };
                        while batch.events.len() < BATCH {
                            let Some(rec) = reader.next_record()? else { break };
                            let lsn = rec.lsn.0;
                            let event = decode_record(lsn, rec.payload)?;
                            let from = batch.bytes.len();
                            batch.bytes.extend_from_slice(rec.payload);
                            batch.events.push((lsn, event, from..batch.bytes.len()));
                        }
                        if batch.events.is_empty() {
                            return Ok(());
                        }
                        // Before either applier writes any of the batch (see
                        // `PartitionList`): the other may flush meanwhile.
                        self.make_new_partitions(batch.events.iter().map(|(l, e, _)| (*l, e)))?;
                        let batch = Arc::new(batch);
                        // An applier that stopped on an error reports it at its join.
                        if to_helper.send(batch.clone()).is_err() || to_main.send(batch).is_err() {
                            return Ok(());
                        }
                    }
                })
                .map_err(io_err("spawn replay thread", &self.dir))?;
            let mut last_report = Instant::now();
            let mut result = Ok(());
            for batch in for_main {
                if let Err(e) = batch.apply(self, Lane::Others) {
                    result = Err(e);
                    break;
                }
                let before = report.records;
                report.records += batch.events.len() as u64;
                report.bytes += batch.bytes.len() as u64;
                if before / REPLAY_BUDGET_EVERY != report.records / REPLAY_BUDGET_EVERY {
                    if let Err(e) = self.replay_budget() {
                        result = Err(e);
                        break;
                    }
                }
                if last_report.elapsed() >= Duration::from_secs(1) {
                    last_report = Instant::now();
                    report.elapsed = started.elapsed();
                    let lsn = batch.events.last().map_or(0, |e| e.0);
                    tracing::info!(records = report.records, lsn, "replaying");
                    progress(*report);
                }
            }
            let panicked =
                |what: &str| Error::Invalid(format!("the replay {what} thread panicked"));
            // This thread's error first: it stopped reading, which stopped the reader.
            let read = reader.join().unwrap_or_else(|_| Err(panicked("reader")));
            let helped = helper.join().unwrap_or_else(|_| Err(panicked("apply")));
            result.and(helped).and(read)
        })
    }

    /// Keeps the memtables within their budget during replay, when no maintenance
    /// thread runs yet: flushes the largest partitions until the total fits. (Each tree
    /// alone is bounded anyway: a writer that finds its immutable queue full flushes.)
    /// Any thread may flush any tree; the tree serializes flushes with its writer.
    fn replay_budget(&self) -> Result<()> {
        for (p, bytes) in self.over_budget(false) {
            tracing::debug!(partition = %p.id, bytes, "replay: memtable budget, flushing");
            p.tree.flush()?;
        }
        Ok(())
    }

    /// Loads the market cache from the instrument partitions' tables, before the WAL
    /// tail is replayed: per instrument, the newest tick, and the book from the newer
    /// of its newest snapshot and its book checkpoint, with every delta after it.
    fn load_markets(&self) -> Result<()> {
        let started = Instant::now();
        let (mut instruments, mut deltas) = (0, 0);
        for p in self.partitions() {
            let PartitionId::Instrument(id) = &p.id else { continue };
            if p.tree.stats().tables_per_level.iter().all(|n| *n == 0) {
                // Nothing of this instrument reached a table: replay builds its entries.
                continue;
            }
            deltas += self.load_market(id, &p)?;
            instruments += 1;
        }
        self.open_book_deltas.store(deltas, Ordering::Relaxed);
        if instruments > 0 {
            tracing::info!(
                instruments,
                book_deltas = deltas,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "market cache loaded from tables"
            );
        }
        Ok(())
    }

    /// The instrument of `event` and its partition.
    fn instrument_partition<'e>(
        &self,
        event: &'e Event,
    ) -> Option<(&'e InstrumentId, Arc<Partition>)> {
        let id = event.instrument()?;
        Some((id, self.partition(&PartitionId::Instrument(id.clone()))?))
    }

    /// Puts a late delta (at `datetime`, `lsn`) in its place in the cached book:
    /// re-applies, in store order, every stored delta from its position on.
    fn reapply_deltas_from(
        &self,
        id: &InstrumentId,
        p: &Partition,
        datetime: i64,
        lsn: u64,
    ) -> Result<()> {
        let from = layout::Key::new(layout::inst::DELTA).time(datetime).u64(lsn).into_vec();
        let hi = [layout::inst::DELTA + 1];
        for pair in p.tree.range(
            std::ops::Bound::Included(&from[..]),
            std::ops::Bound::Excluded(&hi[..]),
            bourse_lsm::MAX_SEQ,
        ) {
            let (k, v) = pair?;
            if let Event::BookDelta(d) = decode_event(&v)? {
                debug_assert_eq!(&d.instrument_id, id);
                self.cache.reapply_delta(&d, layout::trailing_u64(&k).unwrap_or(0));
            }
        }
        Ok(())
    }

    /// Loads an instrument's cache entries from its partition: the newest tick, and the
    /// book from the newer of the newest snapshot and the book checkpoint, with every
    /// delta after it, in store order. Returns how many deltas it read.
    fn load_market(&self, id: &InstrumentId, p: &Partition) -> Result<u64> {
        use layout::inst;
        use std::ops::Bound;
        let snap = bourse_lsm::MAX_SEQ;
        let newest = |tag: u8| -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            let lo = [tag];
            let hi = [tag + 1];
            let mut it = p.tree.range_rev(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]), snap);
            Ok(it.next().transpose()?)
        };
        let lsn_of = |k: &[u8]| layout::trailing_u64(k).unwrap_or(0);
        let pos_of = |k: &[u8]| -> Result<(i64, u64)> {
            layout::time_and_lsn(k).ok_or_else(|| Error::Corrupt {
                what: format!("instrument {id}: book key of {} bytes", k.len()),
            })
        };
        let tick = match newest(inst::TICK)? {
            Some((k, v)) => match decode_event(&v)? {
                Event::Tick(t) => Some((lsn_of(&k), t)),
                _ => None,
            },
            None => None,
        };
        let mut snapshot = None;
        if let Some((k, v)) = newest(inst::BOOK)? {
            if let Event::BookSnapshot(b) = decode_event(&v)? {
                snapshot = Some((k, b));
            }
        }
        let checkpoint = match newest(inst::BOOK_CHECKPOINT)? {
            Some((k, v)) => {
                let cp: BookCheckpoint = crate::apply::decode(&v, "book checkpoint")?;
                Some((k, cp))
            }
            None => None,
        };
        // Deltas at or after the snapshot's (time, LSN) position, or after the
        // checkpoint's (which includes the delta at its own position).
        let mut from = vec![inst::DELTA];
        let (start, from_bound) = match (snapshot, checkpoint) {
            (s, Some((ck, cp))) if s.as_ref().is_none_or(|(sk, _)| sk[1..] < ck[1..]) => {
                from.extend_from_slice(&ck[1..]);
                let snapshot = s.map(|(sk, _)| pos_of(&sk)).transpose()?;
                let at = pos_of(&ck)?;
                (BookStart::Checkpoint { snapshot, at, checkpoint: cp }, Bound::Excluded(from))
            }
            (Some((sk, b)), _) => {
                from.extend_from_slice(&sk[1..]);
                (BookStart::Snapshot(lsn_of(&sk), b), Bound::Included(from))
            }
            (None, _) => (BookStart::Empty, Bound::Included(from)),
        };
        self.cache.reset(id, tick, start);
        let hi = [inst::DELTA + 1];
        let lo = from_bound.as_ref().map(Vec::as_slice);
        let mut read = 0;
        for pair in p.tree.range(lo, Bound::Excluded(&hi[..]), snap) {
            let (k, v) = pair?;
            if let Event::BookDelta(d) = decode_event(&v)? {
                // In store order: never out of order.
                let _ = self.cache.apply_delta(&d, lsn_of(&k));
                read += 1;
            }
        }
        Ok(read)
    }

    fn submit(&self, events: &[Event], durability: Durability) -> Result<LsnRange> {
        // Pooled memtable blocks only for batches that leave the other core idle (see
        // `ARENA_POOL_BLOCKS`); with concurrent writers the last submit decides.
        self.blocks.serve(events.len() < LANE_BATCH_MIN);
        if events.is_empty() {
            return Err(Error::Invalid("a batch holds at least one event".into()));
        }
        if events.len() > self.opts.batch_events_max {
            return Err(Error::Invalid(format!(
                "a batch holds at most {} events, this one {}",
                self.opts.batch_events_max,
                events.len()
            )));
        }
        let payloads = Encoded::of(events)?;
        self.check_poison()?;
        let ts = now_ns();
        // (Inline for the batches of one or two that a one-event-at-a-time producer sends.)
        let entries: SmallVec<[Entry<'_>; 2]> = events
            .iter()
            .zip(payloads.iter())
            .map(|(e, p)| Entry { kind: e.kind().as_u16(), timestamp: ts, payload: p })
            .collect();
        // A batch for the apply lane is only queued in the WAL here: the lane thread
        // writes it before its instrument writes, while this thread does the rest of
        // apply. Nothing is visible or acknowledged before the write is done.
        let unwritten = events.len() >= LANE_BATCH_MIN && self.lane.get().is_some();
        let range = if unwritten {
            self.wal.queue_batch_unwritten(&entries)?
        } else {
            self.wal.append_batch(&entries, bourse_wal::Durability::Buffered)?
        };
        self.apply_in_order(range, ts, events, &payloads, unwritten)?;
        if durability == Durability::Durable {
            self.wal.wait_durable(range.last)?;
        }
        Ok(range)
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if !self.poison_flag.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.seq.lock().poisoned {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Applies a batch in LSN order and returns once it is visible.
    ///
    /// Two turns keep the order. The apply turn (`turn`) passes from batch to batch once
    /// a batch's writes to accounts, users and market are in: those writes read earlier
    /// state, so they go one batch at a time. A batch of at least [`LANE_BATCH_MIN`]
    /// events hands its writes to the instrument partitions (which read nothing) to the
    /// apply lane thread, which takes jobs in LSN order, so they overlap the next
    /// batch's turn. The lane's job borrows the batch: this call does not return before
    /// the job is done (the scope waits for it), so nothing is copied for it. The
    /// publish turn (`applied`) then makes batches visible in LSN order, each once both
    /// parts are in: the sink sees it, then readers do.
    ///
    /// `unwritten`: the batch is queued in the WAL but not yet written. Its writer is
    /// then the lane's job, first thing, so the write overlaps this thread's writes; a
    /// batch is published only after its job is done, so never before it is written.
    fn apply_in_order(
        &self,
        range: LsnRange,
        timestamp: i64,
        events: &[Event],
        payloads: &Encoded,
        unwritten: bool,
    ) -> Result<()> {
        let first = range.first.0;
        let mut seq = self.seq.lock();
        if seq.turn + 1 != first && seq.poisoned.is_none() {
            seq.waiters.insert(first, std::thread::current());
            while seq.turn + 1 != first && seq.poisoned.is_none() {
                drop(seq);
                // Spurious wake-ups are fine: the condition is checked again.
                std::thread::park();
                seq = self.seq.lock();
            }
            seq.waiters.remove(&first);
        }
        if let Some(cause) = &seq.poisoned {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        // The lane is idle when it has done every LSN before ours (no job can arrive
        // while we hold the turn); a small batch then does all its writes itself, since
        // a hand-off costs a thread wake-up.
        let lane_idle = seq.lanes_done + 1 == first;
        drop(seq);
        let lane = if unwritten || events.len() >= LANE_BATCH_MIN || !lane_idle {
            self.lane.get()
        } else {
            None
        };
        let write_first = unwritten.then_some(range.last);
        if lane.is_some() {
            // IMPORTANT: the batch's new partitions are made (and noted for the list)
            // before either thread writes any of it (see `PartitionList`).
            let at = events.iter().enumerate().map(|(i, e)| (first + i as u64, e));
            if let Err(e) = self.make_new_partitions(at) {
                self.poison(&mut self.seq.lock(), &e);
                return Err(e);
            }
        }
        match lane {
            // The turn is ours until `turn` moves, so the lane's job is queued behind
            // every earlier batch's (one thread, jobs in the order they come).
            Some(pool) => pool.in_place_scope(|scope| {
                scope.spawn(|_| self.lane_job(first, events, payloads, write_first));
                self.apply_own(range, timestamp, events, payloads, true)
            }),
            None => {
                // Not reached (a batch is left unwritten only when there is a lane), but
                // a failed write here must poison, as the lane's would.
                if let Some(Err(e)) = write_first.map(|l| self.wal.wait_written(l)) {
                    let e = Error::from(e);
                    self.poison(&mut self.seq.lock(), &e);
                    return Err(e);
                }
                self.apply_own(range, timestamp, events, payloads, false)
            }
        }
    }

    /// The submitter's part of [`Inner::apply_in_order`], once the apply turn is its:
    /// its writes (all of them, or all but the instrument partitions' when `lane`),
    /// then the turn passed on, then the batch published in LSN order.
    fn apply_own(
        &self,
        range: LsnRange,
        timestamp: i64,
        events: &[Event],
        payloads: &Encoded,
        lane: bool,
    ) -> Result<()> {
        let (first, last) = (range.first.0, range.last.0);
        // The turn is ours until `turn` moves, so apply runs without the lock: other
        // writers keep appending to the WAL (and checking for poison) meanwhile.
        let own = lane.then_some(Lane::Others);
        let mut writes = Writes::new();
        let mut result = Ok(());
        for (i, (e, p)) in events.iter().zip(payloads.iter()).enumerate() {
            result = self.apply_one(first + i as u64, e, p, &mut writes, own);
            if result.is_err() {
                break;
            }
        }
        let mut seq = self.seq.lock();
        if let Err(e) = &result {
            self.poison(&mut seq, e);
            return result;
        }
        if !lane {
            seq.lanes_done = last;
        }
        seq.turn = last;
        if let Some(next) = seq.waiters.get(&(last + 1)) {
            next.unpark();
        }
        if !(seq.applied + 1 == first && seq.lanes_done >= last) && seq.poisoned.is_none() {
            seq.publish_waiters.insert(first, (last, std::thread::current()));
            while !(seq.applied + 1 == first && seq.lanes_done >= last) && seq.poisoned.is_none() {
                drop(seq);
                // Spurious wake-ups are fine: the condition is checked again.
                std::thread::park();
                seq = self.seq.lock();
            }
            seq.publish_waiters.remove(&first);
        }
        if let Some(cause) = &seq.poisoned {
            return Err(Error::Poisoned { cause: cause.clone() });
        }
        if let Some(sink) = &seq.sink {
            sink.committed_batch(first, timestamp, events, payloads);
        }
        seq.applied = last;
        self.visible.store(last, Ordering::Release);
        seq.wake_next_publisher();
        // Commit-stream readers wait on the condition.
        self.seq_cond.notify_all();
        drop(seq);
        let n = self.applies_since_check.fetch_add(events.len() as u64, Ordering::Relaxed);
        if n >= 1024 {
            self.applies_since_check.store(0, Ordering::Relaxed);
            self.enforce_budget();
        }
        Ok(())
    }

    /// Marks the engine poisoned by `e` and wakes everyone who waits on it.
    pub(crate) fn poison(&self, seq: &mut Sequencer, e: &Error) {
        if seq.poisoned.is_none() {
            tracing::error!(error = %e, "the engine is poisoned");
            seq.poisoned = Some(e.to_string());
        }
        self.poison_flag.store(true, Ordering::Release);
        for t in seq.waiters.values() {
            t.unpark();
        }
        for (_, t) in seq.publish_waiters.values() {
            t.unpark();
        }
        self.seq_cond.notify_all();
    }

    /// The apply lane's job for the batch at `first`: the WAL write up to `write_first`
    /// when the batch is still unwritten, its instrument partitions' writes, then how
    /// far the lane got. Jobs run one at a time in LSN order. A failed write or a panic
    /// poisons the engine (its submitter waits for `lanes_done`).
    fn lane_job(&self, first: u64, events: &[Event], payloads: &Encoded, write_first: Option<Lsn>) {
        if self.poison_flag.load(Ordering::Acquire) {
            return;
        }
        let run = || -> Result<()> {
            if let Some(last) = write_first {
                self.wal.wait_written(last)?;
            }
            let mut writes = Writes::new();
            for (i, (e, p)) in events.iter().zip(payloads.iter()).enumerate() {
                self.apply_one(first + i as u64, e, p, &mut writes, Some(Lane::Instruments))?;
            }
            Ok(())
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| Err(Error::Invalid("the apply lane panicked".into())));
        let mut seq = self.seq.lock();
        match &result {
            Ok(()) if seq.lanes_done + 1 == first => {
                seq.lanes_done = first + events.len() as u64 - 1;
                seq.wake_next_publisher();
            }
            // Not reached: jobs come in LSN order and run one at a time.
            Ok(()) => {
                let e = Error::Invalid(format!(
                    "the apply lane got LSN {first} after {}",
                    seq.lanes_done
                ));
                self.poison(&mut seq, &e);
            }
            Err(e) => self.poison(&mut seq, e),
        }
    }

    /// Applies one event: computes its writes, writes them with the event's LSN as
    /// sequence, updates the cache and catalogue. `replay` is a lane (of a WAL replay,
    /// or of a live batch split with the apply lane thread; `None`: every partition):
    /// only that lane's partitions are written, and partitions whose tables already hold
    /// `lsn` are skipped (which only happens during replay).
    fn apply_one<'a>(
        &self,
        lsn: u64,
        event: &Event,
        encoded: &'a [u8],
        writes: &mut Writes<'a>,
        replay: Option<Lane>,
    ) -> Result<()> {
        writes.clear();
        let lane = replay.unwrap_or(Lane::All);
        let idle = match lane {
            Lane::All => false,
            Lane::Instruments => !apply::writes_instrument(event),
            Lane::Others => {
                !apply::writes_others(event)
                    && event.instrument().is_none_or(|i| self.catalogued(i))
            }
        };
        if idle {
            // Nothing of this event is this lane's (ticks and books on the accounts lane
            // are two thirds of a typical journal).
            return Ok(());
        }
        match lane {
            Lane::All => apply::apply(lsn, event, encoded, self, writes)?,
            Lane::Instruments => apply::instrument_writes(lsn, event, encoded, writes),
            Lane::Others => {
                apply::apply(lsn, event, encoded, &LaneRead { inner: self, lane }, writes)?;
                writes.retain(|w| lane.owns(&w.part));
            }
        }
        // A book event's checkpoint writes go in its own batch, planned from the cache
        // as it stands before the event. During a replay, an instrument whose tables
        // already hold `lsn` has it in its cache too (loaded before the replay).
        let book = match (lane, event) {
            (Lane::Others, _) => None,
            (_, Event::BookDelta(d)) if self.book_event_is_new(&d.instrument_id, lsn) => {
                Some(self.cache.plan_delta(d, lsn, self.opts.book_checkpoint_every))
            }
            (_, Event::BookSnapshot(b)) if self.book_event_is_new(&b.instrument_id, lsn) => {
                Some(self.cache.plan_snapshot(b))
            }
            _ => None,
        };
        if let (Some(plan), Some(id)) = (&book, event.instrument()) {
            let part = PartitionId::Instrument(id.clone());
            let key = |(t, l): (i64, u64)| {
                layout::Key::new(layout::inst::BOOK_CHECKPOINT).time(t).u64(l).into_vec()
            };
            if let Some(at) = plan.delete {
                writes.push(Write { part: part.clone(), key: key(at), value: None });
            }
            if let Some((at, cp)) = &plan.write {
                let value = crate::apply::encode(cp)?;
                writes.push(Write { part, key: key(*at), value: Some(value.into()) });
            }
        }
        // `apply` writes an instrument's catalogue entry exactly when the catalogue does
        // not hold it yet: the write says so, with no second look (a lock and a hash).
        let new_instrument = lane.owns(&PartitionId::Market)
            && writes.iter().any(|w| {
                w.part == PartitionId::Market && w.key.first() == Some(&layout::market::INSTRUMENT)
            });
        // IMPORTANT: one LSN's writes to one partition go in as one tree batch. Split
        // across a memtable rotation, a flush could record the LSN as flushed while part
        // of it still sat in memory; replay would then skip it and lose that part.
        writes.sort_by(|a, b| a.part.cmp(&b.part));
        for group in writes.chunk_by(|a, b| a.part == b.part) {
            let part = match self.partition(&group[0].part) {
                Some(p) => p,
                None => self.open_partition(group[0].part.clone(), Some(lsn))?,
            };
            if replay.is_some() && lsn <= part.floor {
                continue;
            }
            let ops: SmallVec<[TreeOp<'_>; 4]> =
                group.iter().map(|w| (w.key.as_slice(), w.value.as_deref())).collect();
            if part.tree.write_batch(&ops, lsn)? {
                // A memtable filled: start its flush now rather than at the next poll.
                self.kick();
            }
        }
        // The catalogue goes with the market partition, the cache with the instruments.
        if new_instrument {
            if let Some(ins) = event.instrument() {
                self.catalogue.write().insert(ins.clone());
            }
        }
        if lane != Lane::Others {
            let update = match (event, &book) {
                (Event::Tick(t), _) => {
                    // (Idempotent: a tick the tables already hold changes nothing.)
                    self.cache.set_tick(t, lsn);
                    Update::Done
                }
                (Event::BookSnapshot(b), Some(_)) => self.cache.set_book(b, lsn),
                (Event::BookDelta(d), Some(_)) => self.cache.apply_delta(d, lsn),
                _ => Update::Done,
            };
            // Out of store order (the partition already holds this LSN): the book is
            // redone from the late event on, reading only what came after it.
            match (update, event) {
                (Update::Reload, _) => {
                    if let Some((id, p)) = self.instrument_partition(event) {
                        let _ = self.load_market(id, &p)?;
                    }
                }
                (Update::Late, Event::BookDelta(d)) => {
                    if let Some((id, p)) = self.instrument_partition(event) {
                        self.reapply_deltas_from(id, &p, d.datetime, lsn)?;
                    }
                }
                _ => {}
            }
            if let (Some(plan), Some(id)) = (&book, event.instrument()) {
                self.cache.settle(id, plan);
            }
        }
        Ok(())
    }

    /// Whether a book event at `lsn` is new to its instrument's partition and cache:
    /// always in a live apply; in a replay, unless the partition's tables hold it.
    fn book_event_is_new(&self, id: &InstrumentId, lsn: u64) -> bool {
        if lsn > self.floor_max.load(Ordering::Relaxed) {
            return true;
        }
        // A partition not open yet is created by this very event.
        self.partition(&PartitionId::Instrument(id.clone())).is_none_or(|p| lsn > p.floor)
    }

    /// Wakes the maintenance threads.
    pub(crate) fn kick(&self) {
        let (lock, cond) = &self.wake;
        *lock.lock() = true;
        cond.notify_all();
    }
}

/// How many replayed records between checks of the memtable budget.
const REPLAY_BUDGET_EVERY: u64 = 4096;

/// Batches of at least this many events hand their instrument partitions' writes to
/// the apply lane thread; smaller ones do all their writes themselves when it is idle.
/// (At 16, `mixed` — 4 durable writers of 16-event batches beside 2 readers that keep
/// both cores busy — ran at a median 20 k events/s against 29 k without the lane, in
/// seven interleaved pairs: each hand-off waits for the lane thread to get a core.)
const LANE_BATCH_MIN: usize = 32;

/// Which partitions a replay thread writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Every partition (live apply, or a serial replay).
    All,
    /// The instrument partitions.
    Instruments,
    /// Accounts, users and market.
    Others,
}

impl Lane {
    fn owns(self, part: &PartitionId) -> bool {
        match self {
            Lane::All => true,
            Lane::Instruments => matches!(part, PartitionId::Instrument(_)),
            Lane::Others => !matches!(part, PartitionId::Instrument(_)),
        }
    }
}

/// The accounts/users/market lane's view of the state (in a replay, or beside the
/// apply lane thread): instrument partitions read as empty. Their writes are dropped
/// anyway, and apply's writes to a partition read only that partition, so the lane
/// computes exactly its own partitions' writes without reading state that the other
/// thread is still writing.
struct LaneRead<'a> {
    inner: &'a Inner,
    lane: Lane,
}

impl StateRead for LaneRead<'_> {
    fn get(&self, part: &PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.lane.owns(part) {
            self.inner.get(part, key)
        } else {
            Ok(None)
        }
    }

    fn catalogued(&self, id: &InstrumentId) -> bool {
        self.inner.catalogued(id)
    }
}

/// Decoded WAL records handed to both replay lanes.
#[derive(Default)]
struct ReplayBatch {
    /// LSN, event and the range of its encoded form in `bytes`.
    events: Vec<(u64, Event, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

impl ReplayBatch {
    fn apply(&self, inner: &Inner, lane: Lane) -> Result<()> {
        let mut writes = Writes::new();
        for (lsn, event, range) in &self.events {
            inner.apply_one(*lsn, event, &self.bytes[range.clone()], &mut writes, Some(lane))?;
        }
        Ok(())
    }
}

fn decode_record(lsn: u64, payload: &[u8]) -> Result<Event> {
    Event::decode(payload)
        .map_err(|e| Error::Corrupt { what: format!("WAL record {lsn} does not decode: {e}") })
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event> {
    Event::decode(bytes).map_err(|e| Error::Corrupt { what: format!("stored event: {e}") })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::ops::Bound;

    use bourse_model::samples::{book_in_store_order, sample};
    use bourse_model::EventKind;

    use super::*;

    /// A batch's encoded forms come back one by one, equal to each event's own
    /// encoding, by index and in order; a bad event is named by its index.
    #[test]
    fn encoded_batch_holds_each_event_exactly() {
        let events: Vec<Event> =
            (0..40u64).map(|n| sample(EventKind::ALL[n as usize % 18], n)).collect();
        let enc = Encoded::of(&events).unwrap();
        assert_eq!((enc.len(), enc.iter().len()), (events.len(), events.len()));
        for (i, (e, got)) in events.iter().zip(enc.iter()).enumerate() {
            let want = e.encode().unwrap();
            assert_eq!(got, want.as_slice(), "event {i}");
            assert_eq!(enc.get(i), Some(want.as_slice()), "event {i}");
            assert_eq!(Event::decode(got).unwrap(), *e);
        }
        assert_eq!(enc.get(events.len()), None);
        assert!(Encoded::of(&[]).unwrap().is_empty());
        let mut bad = events.clone();
        bad[7] = Event::Tick(bourse_model::Tick { last_price: f64::NAN, ..Default::default() });
        match Encoded::of(&bad) {
            Err(Error::Event { index: 7, .. }) => {}
            other => panic!("a bad 8th event gave {other:?}"),
        }
    }

    /// Every key and value of every partition, and the market cache.
    fn dump(e: &Engine) -> Vec<String> {
        let mut out = Vec::new();
        let mut parts = e.inner.partitions();
        parts.sort_by(|a, b| a.id.cmp(&b.id));
        for p in parts {
            let all = p.tree.range(Bound::Unbounded, Bound::Unbounded, bourse_lsm::MAX_SEQ);
            for kv in all {
                let (k, v) = kv.unwrap();
                out.push(format!("{:?} {k:?} {v:?}", p.id));
            }
        }
        for ins in e.instruments() {
            out.push(format!("tick {ins:?} {:?}", e.latest_tick(&ins)));
            out.push(format!("book {ins:?} {:?}", e.latest_book(&ins)));
        }
        out
    }

    /// Book events for two instruments, in the order a few writers stamping their own
    /// times would send them: mostly deltas in time order, some late (an earlier time
    /// than deltas already sent), now and then a snapshot, sometimes late too.
    fn book_feed(n: usize, seed: u64) -> Vec<Event> {
        use bourse_model::{BookDelta, BookSnapshot, Level, LevelChange, Side};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ids =
            [InstrumentId::new("SHFE.cu2512").unwrap(), InstrumentId::new("DCE.m2601").unwrap()];
        let mut now = [1_000i64; 2];
        (0..n)
            .map(|_| {
                let i = rng.gen_range(0..2);
                now[i] += rng.gen_range(1..5);
                let t = if rng.gen_bool(0.1) { now[i] - rng.gen_range(1..40) } else { now[i] };
                let side = |r: &mut rand::rngs::StdRng| {
                    if r.gen_bool(0.5) {
                        Side::Bid
                    } else {
                        Side::Ask
                    }
                };
                if rng.gen_bool(0.02) {
                    let levels = |r: &mut rand::rngs::StdRng| -> Vec<Level> {
                        (0..3)
                            .map(|k| Level {
                                price: 100.0 + f64::from(k),
                                volume: r.gen_range(1..9),
                            })
                            .collect()
                    };
                    let mut bids = levels(&mut rng);
                    bids.reverse();
                    let asks = levels(&mut rng)
                        .into_iter()
                        .map(|l| Level { price: l.price + 10.0, ..l })
                        .collect();
                    Event::BookSnapshot(BookSnapshot {
                        instrument_id: ids[i].clone(),
                        datetime: t,
                        bids,
                        asks,
                    })
                } else {
                    let changes = (0..rng.gen_range(1..4))
                        .map(|_| {
                            let s = side(&mut rng);
                            let base = if s == Side::Bid { 100.0 } else { 110.0 };
                            LevelChange {
                                side: s,
                                price: base + f64::from(rng.gen_range(0..6u8)),
                                volume: rng.gen_range(0..4),
                            }
                        })
                        .collect();
                    Event::BookDelta(BookDelta {
                        instrument_id: ids[i].clone(),
                        datetime: t,
                        changes,
                    })
                }
            })
            .collect()
    }

    /// Book checkpoints are part of the deterministic apply: the same feed leaves the
    /// same store (checkpoint records included) and the same books whether the engine
    /// ran straight through, was reopened after checkpoints, or was reopened with the
    /// tail only in the WAL, and whether replay ran in one lane or two; late deltas and
    /// snapshots around checkpoints never leave a wrong book behind.
    #[test]
    fn book_checkpoints_are_deterministic_and_keep_books_right() {
        let feed = book_feed(1500, 7);
        let ids =
            [InstrumentId::new("SHFE.cu2512").unwrap(), InstrumentId::new("DCE.m2601").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let mut o = EngineOptions::default();
        o.wal.segment_bytes = 4 << 20;
        o.checkpoint_interval = Duration::from_secs(3600);
        o.book_checkpoint_every = 8;
        let mut dumps = Vec::new();
        // 0: straight through; 1: checkpoint and reopen every 97 events; 2: reopen every
        // 89 events with the tail in the WAL only (a checkpoint every 3rd time, one
        // instrument flushed alone every 3rd); 3: as 2, with one apply thread.
        for variant in 0..4 {
            let path = dir.path().join(format!("v{variant}"));
            let opts =
                EngineOptions { apply_threads: if variant == 3 { 1 } else { 2 }, ..o.clone() };
            let mut e = Engine::open(&path, opts.clone()).unwrap();
            let mut stored = Vec::new();
            let mut trail = Vec::new();
            let mut reopens = 0;
            for (i, ev) in feed.iter().enumerate() {
                let r = e.submit(std::slice::from_ref(ev), Durability::Buffered).unwrap();
                stored.push((r.first.0, ev.clone()));
                let every = match variant {
                    0 => usize::MAX,
                    1 => 97,
                    _ => 89,
                };
                if i % every == every - 1 {
                    reopens += 1;
                    if variant == 1 || reopens % 3 == 0 {
                        e.checkpoint().unwrap();
                    } else {
                        e.sync().unwrap();
                    }
                    if variant >= 2 && reopens % 3 == 1 {
                        // One instrument's tables move ahead of everything else's: the
                        // replay passes over book events its tables already hold.
                        let id = &ids[reopens / 3 % 2];
                        let p = e.inner.partition(&PartitionId::Instrument(id.clone()));
                        p.unwrap().tree.flush().unwrap();
                    }
                    drop(e);
                    e = Engine::open(&path, opts.clone()).unwrap();
                }
                if i % 50 == 0 || i + 1 == feed.len() {
                    // The checkpoint records as they stand (the dump at the end shows
                    // only the last ones).
                    let mut parts = e.inner.partitions();
                    parts.sort_by(|a, b| a.id.cmp(&b.id));
                    for p in parts {
                        let lo = [layout::inst::BOOK_CHECKPOINT];
                        let hi = [layout::inst::BOOK_CHECKPOINT + 1];
                        let range = p.tree.range(
                            Bound::Included(&lo[..]),
                            Bound::Excluded(&hi[..]),
                            bourse_lsm::MAX_SEQ,
                        );
                        for kv in range {
                            let (k, v) = kv.unwrap();
                            trail.push(format!("event {i}: {} {k:?} {v:?}", p.id));
                        }
                    }
                    for id in &ids {
                        let got = e.latest_book(id).map(|b| (*b).clone());
                        assert_eq!(
                            got,
                            book_in_store_order(&stored, id),
                            "variant {variant}, event {i}, {id}"
                        );
                    }
                }
            }
            e.sync().unwrap();
            let mut d = dump(&e);
            d.extend(trail);
            dumps.push(d);
        }
        let checkpoints = dumps[0].iter().filter(|l| l.contains(") [67, ")).count();
        assert!(checkpoints >= 1, "no book checkpoint in the store");
        for (v, d) in dumps.iter().enumerate().skip(1) {
            let diff: Vec<_> = d.iter().zip(&dumps[0]).filter(|(a, b)| a != b).take(2).collect();
            assert!(
                d.len() == dumps[0].len() && diff.is_empty(),
                "variant {v}: {} against {} entries, first differences {diff:.400?}",
                d.len(),
                dumps[0].len()
            );
        }
    }

    /// With a producer that never sends snapshots, opening reads about
    /// `book_checkpoint_every` deltas per instrument from the tables, not all of them;
    /// with checkpoints off, all of them.
    #[test]
    fn book_checkpoints_bound_the_deltas_read_at_open() {
        use bourse_model::{BookDelta, LevelChange, Side};
        let id = InstrumentId::new("SHFE.cu2512").unwrap();
        for every in [64, 1, 0] {
            let dir = tempfile::tempdir().unwrap();
            let mut o = EngineOptions::default();
            o.wal.segment_bytes = 4 << 20;
            o.checkpoint_interval = Duration::from_secs(3600);
            o.book_checkpoint_every = every;
            let e = Engine::open(dir.path(), o.clone()).unwrap();
            let batch: Vec<Event> = (0..3000)
                .map(|n| {
                    let change =
                        LevelChange { side: Side::Bid, price: (n % 50) as f64, volume: n % 3 };
                    Event::BookDelta(BookDelta {
                        instrument_id: id.clone(),
                        datetime: 1,
                        changes: vec![change],
                    })
                })
                .collect();
            for chunk in batch.chunks(100) {
                e.submit(chunk, Durability::Buffered).unwrap();
            }
            e.checkpoint().unwrap();
            let book = e.latest_book(&id).unwrap();
            drop(e);
            let e = Engine::open(dir.path(), o.clone()).unwrap();
            assert_eq!(e.latest_book(&id).unwrap(), book);
            let read = e.stats().open_book_deltas;
            if every == 0 {
                assert_eq!(read, 3000);
                // A store written without checkpoints gets one at its next delta once
                // they are turned on, and the open after that reads only what follows.
                drop(e);
                let on = EngineOptions { book_checkpoint_every: 64, ..o.clone() };
                let e = Engine::open(dir.path(), on.clone()).unwrap();
                e.submit(&batch[..1], Durability::Buffered).unwrap();
                e.submit(&batch[1..2], Durability::Buffered).unwrap();
                e.checkpoint().unwrap();
                let book = e.latest_book(&id).unwrap();
                drop(e);
                let e = Engine::open(dir.path(), on).unwrap();
                assert_eq!(e.latest_book(&id).unwrap(), book);
                assert_eq!(e.stats().open_book_deltas, 1, "the delta after the checkpoint");
            } else {
                assert!(read < every, "read {read} deltas with a checkpoint every {every}");
            }
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }

    /// A WAL record whose checksum holds but whose payload is not an event, in the
    /// middle of the tail: opening stops with `Corrupt` naming it, whether the replay is
    /// serial or in lanes (where the reader thread finds it while both appliers wait on
    /// it, and must not leave them waiting), and nothing after it is applied.
    #[test]
    fn an_undecodable_wal_record_stops_the_open_on_every_replay_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = EngineOptions::default();
        o.wal.segment_bytes = 4 << 20;
        o.checkpoint_interval = Duration::from_secs(3600);
        {
            let e = Engine::open(dir.path(), o.clone()).unwrap();
            let batch: Vec<Event> = (0..3000).map(|n| sample(EventKind::Tick, n)).collect();
            e.submit(&batch, Durability::Durable).unwrap();
        }
        {
            let wal = Wal::open(RealFs::shared(), dir.path().join("wal"), o.wal.clone()).unwrap();
            let bad = Entry { kind: EventKind::Tick.as_u16(), timestamp: 0, payload: &[0xff; 40] };
            let at = wal.append_batch(&[bad], bourse_wal::Durability::Durable).unwrap();
            assert_eq!(at.first.0, 3001);
        }
        for threads in [1, 2] {
            let opts = EngineOptions { apply_threads: threads, ..o.clone() };
            match Engine::open(dir.path(), opts) {
                Err(Error::Corrupt { what }) => assert!(what.contains("3001"), "{what}"),
                Err(e) => panic!("{threads} thread(s): {e}"),
                Ok(_) => panic!("{threads} thread(s): opened over an undecodable record"),
            }
        }
    }

    /// Replay in two lanes builds exactly the state a serial replay builds, with part
    /// of the history in tables (a checkpoint midway) and the rest in the WAL tail; and
    /// with a memtable budget small enough that replay must flush, it still does, and
    /// flushes (no maintenance thread runs during replay).
    #[test]
    fn lane_replay_equals_serial_replay() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut o = EngineOptions::default();
        o.wal.segment_bytes = 4 << 20;
        o.checkpoint_interval = Duration::from_secs(3600);
        let mut checkpointed = 0;
        let live = {
            let e = Engine::open(&src, o.clone()).unwrap();
            let mut n = 0u64;
            for round in 0..4 {
                let batch: Vec<Event> = (0..1500)
                    .map(|_| {
                        n += 1;
                        let kind = EventKind::ALL[(n * 7 % 18) as usize];
                        sample(kind, n % 97)
                    })
                    .collect();
                for chunk in batch.chunks(50) {
                    e.submit(chunk, Durability::Buffered).unwrap();
                }
                if round == 0 {
                    e.checkpoint().unwrap();
                    checkpointed = e.applied_lsn();
                }
            }
            // Four writers at once: large batches go through the apply lane thread and
            // overlap each other's turns; the WAL order is what replay follows.
            std::thread::scope(|sc| {
                for w in 0..4u64 {
                    let e = &e;
                    sc.spawn(move || {
                        for b in 0..10u64 {
                            let len = if b % 3 == 0 { 4 } else { 40 };
                            let batch: Vec<Event> = (0..len)
                                .map(|i| {
                                    let n = 100_000 + w * 10_000 + b * 100 + i;
                                    sample(EventKind::ALL[(n * 7 % 18) as usize], n % 89)
                                })
                                .collect();
                            e.submit(&batch, Durability::Buffered).unwrap();
                        }
                    });
                }
            });
            e.sync().unwrap();
            let live = dump(&e);
            // Dropped without a checkpoint: the last rounds are only in the WAL.
            std::mem::forget(e);
            live
        };
        assert!(live.len() > 3000, "the workload wrote {} entries", live.len());
        let live_set: std::collections::HashSet<&String> = live.iter().collect();
        let budget = 64 << 10;
        for (threads, budget) in [(1, None), (2, None), (1, Some(budget)), (2, Some(budget))] {
            let name = format!("{threads} replay thread(s), budget {budget:?}");
            let copy = dir.path().join(format!("copy{threads}-{}", budget.is_some()));
            copy_dir(&src, &copy);
            let mut opts = EngineOptions { apply_threads: threads, ..o.clone() };
            if let Some(b) = budget {
                opts.memtable_budget_bytes = b;
            }
            let mut replayed = 0;
            let e = Engine::open_with(RealFs::shared(), &copy, opts, &mut |p| {
                if p.done {
                    replayed = p.records;
                }
            })
            .unwrap();
            assert!(replayed > 4096, "{name}: replayed {replayed} records");
            let flushed_in_replay =
                e.stats().partitions.iter().filter(|p| p.flushed_lsn > checkpointed).count();
            assert_eq!(flushed_in_replay > 0, budget.is_some(), "{name}: {flushed_in_replay}");
            let got = dump(&e);
            let got_set: std::collections::HashSet<&String> = got.iter().collect();
            let missing: Vec<&&String> = live_set.difference(&got_set).collect();
            let extra: Vec<&&String> = got_set.difference(&live_set).collect();
            assert!(
                missing.is_empty() && extra.is_empty() && got.len() == live.len(),
                "{name}: {} entries missing, {} extra; first missing {:.300?}, first extra {:.300?}",
                missing.len(),
                extra.len(),
                missing.first(),
                extra.first()
            );
        }
    }
}
