//! The exchange store: one write-ahead log with one global sequence, and the
//! partitioned LSM state that is a view of it.
//!
//! [`Engine::submit`] encodes a batch of events, appends it to the one WAL (group commit
//! shared by every partition), applies it in LSN order to the partitions — one LSM tree
//! per instrument, plus `accounts`, `users` and `market` — and answers once the requested
//! [`Durability`] holds. Queries read every partition at one snapshot (an LSN), so a
//! query never sees half a batch. The [`MarketCache`] keeps the latest tick and book of
//! each instrument in memory.
//!
//! Recovery is the same path as writing: each tree knows the highest LSN its tables
//! hold; opening replays the WAL after the lowest of them, skipping partitions that
//! already hold an LSN. The WAL is truncated only below that point and below every
//! [`WalPin`] (the bus pins what subscribers still need) and the configured retention.
//!
//! This crate is not networked and knows nothing of HTTP or DIFF; see `crates/server`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bourse_engine::{Durability, Engine, EngineOptions};
//! use bourse_model::{Event, InstrumentId, Tick};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), EngineOptions::default())?;
//! let id = InstrumentId::new("SHFE.cu2512")?;
//! let tick = Event::Tick(Tick {
//!     instrument_id: id.clone(),
//!     datetime: 1,
//!     last_price: 70000.0,
//!     ..Tick::default()
//! });
//! let range = engine.submit(&[tick], Durability::Durable)?;
//! assert_eq!(engine.latest_tick(&id).map(|t| t.last_price), Some(70000.0));
//! assert_eq!(range.first, range.last);
//! # Ok(()) }
//! ```

pub mod apply;
mod cache;
mod engine;
pub mod layout;
mod maintenance;
mod query;
mod stream;
mod users;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use apply::{OrderRecord, UserRecord};
pub use bourse_wal::{Lsn, LsnRange};
pub use cache::{apply_delta, MarketCache};
pub use engine::{
    data_layout, BackupReport, CommitSink, Encoded, Engine, EngineStats, OpenProgress,
    PartitionStats, WalPin, PARTITION_LIST,
};
pub use query::{OrderFilter, Rows};
pub use stream::{CommitStream, Committed, RawCommitted};
pub use users::NewUser;

/// How much of a submit must hold before it is acknowledged.
///
/// | level      | acknowledged when                                | survives                   |
/// |------------|--------------------------------------------------|----------------------------|
/// | `Accepted` | applied in memory, visible to readers            | nothing promised           |
/// | `Buffered` | also written to the OS                           | a process crash (kill -9)  |
/// | `Durable`  | also `fdatasync`ed (group commit)                | power loss of this machine |
///
/// `Accepted` is acknowledged at the same point as `Buffered` today: the WAL write to
/// the OS is part of the ordered apply, so it costs nothing extra to wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Applied and visible.
    Accepted,
    /// Written to the OS.
    Buffered,
    /// Synced to stable storage.
    Durable,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "accepted" => Ok(Durability::Accepted),
            "buffered" => Ok(Durability::Buffered),
            "durable" => Ok(Durability::Durable),
            _ => Err(format!("unknown durability {s:?}: expected accepted, buffered or durable")),
        }
    }
}

/// Configuration of an [`Engine`]. Every limit is here.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Options of the one WAL (segment size, batch limits, group commit).
    pub wal: bourse_wal::WalOptions,
    /// Memtable size at which one partition rotates by itself.
    pub memtable_bytes: usize,
    /// The `accounts` partition's memtable size, when not `memtable_bytes` (`None`, the
    /// default). Its writes land at random places (an order's record and index entries
    /// under its account), so each insert and lookup costs memory misses that grow with
    /// the memtable; a smaller one makes order events cheaper and flushes more often.
    /// Measured with `examples/submit_loop` (64 MiB memtables, accounts at 16 MiB): at
    /// batches of 1, 3–9% more events/s and order requests' p50 3.9–4.3 → 3.0–3.6 µs;
    /// at batches of 64, where the flushes' CPU is short, 2–8% fewer (see
    /// `docs/benchmarks.md`).
    pub accounts_memtable_bytes: Option<usize>,
    /// All memtables of all partitions together: past this, the largest is flushed.
    /// Memtables count the heap they take (within about 10%), so this bounds memory.
    pub memtable_budget_bytes: usize,
    /// Block cache shared by no one: each partition gets this much (0 disables).
    pub block_cache_bytes: usize,
    /// Events in one submit, at most.
    pub batch_events_max: usize,
    /// Threads that flush and compact partitions.
    pub maintenance_threads: usize,
    /// The nice value the maintenance threads give themselves (Linux: per thread;
    /// 0 to 19, higher is lower priority; 0 leaves them as they are). Flushes and
    /// compactions run long; at the default priority a woken writer or the apply lane
    /// waits for them to use up their time slice before it gets a core, and every
    /// writer behind it waits too. A lower priority lets the submit path preempt them;
    /// they still get the time writers leave, and writers stall when flushes fall
    /// behind (`immutables_max`), which gives them all of it. The WAL's background
    /// thread (spare pre-writes) gets it too, unless `wal.background_nice` is set.
    pub maintenance_nice: i32,
    /// Threads that apply. With 2 (the default on machines with more than one core), a
    /// second thread applies the instrument partitions' writes while the first applies
    /// accounts, users and market: at open for the WAL tail (the opening thread reads
    /// the WAL), and live for batches of at least 16 events, overlapping the next
    /// batch's turn. With 1, everything is applied on the submitting (or opening)
    /// thread. Larger values act as 2. The result is the same either way.
    pub apply_threads: usize,
    /// How often the checkpointer runs (idle partitions advance, the WAL is truncated).
    pub checkpoint_interval: Duration,
    /// With `Some(t)`, a background thread (`bourse-wal-sync`) syncs the WAL every `t`
    /// when something was appended since the last sync, so that what `Buffered` and
    /// `Accepted` submits wrote becomes durable within about `t` (plus the sync's own
    /// time): a power loss then loses at most that window instead of everything since
    /// the last `Durable` submit, flush or [`Engine::sync`]. The sync is the WAL's group
    /// commit (a `Durable` submit in flight shares it); submitters do not wait for it.
    /// `None` (the default): no timer, as before. Must not be zero.
    pub sync_interval: Option<Duration>,
    /// Keep at least this many bytes of WAL for subscribers that replay (0: none).
    pub wal_retain_bytes: u64,
    /// Keep WAL segments whose newest record is younger than this.
    pub wal_retain_age: Duration,
    /// When the WAL grows past this, partitions that hold it back are flushed.
    pub wal_bytes_max: u64,
    /// Argon2 memory cost in KiB for password hashes (OWASP's minimum is 19 MiB).
    pub argon2_memory_kib: u32,
    /// Argon2 iterations.
    pub argon2_iterations: u32,
    /// Holds the WAL from this LSN from the moment the engine opens, until
    /// [`Engine::set_wal_hold`]: the bus's durable cursors
    /// (`bourse_bus::cursor_floor`) must be protected before anything can truncate.
    pub wal_hold_at_open: Option<u64>,
    /// Every this many book deltas of an instrument, the apply step stores its book as
    /// a checkpoint, so that opening reads at most about this many deltas per
    /// instrument from its tables instead of every delta since its newest snapshot (a
    /// producer may never send snapshots). 0: no checkpoints, and opening reads every
    /// delta since the newest snapshot.
    pub book_checkpoint_every: u64,
    /// For tests only: the maintenance threads leave a new instrument's partition in
    /// memory, so it is created on disk only by its first flush or mark-clean, a
    /// checkpoint, or the engine's close (each lists it first). Lets a test hold a
    /// partition in that state while something else happens.
    #[doc(hidden)]
    pub defer_partition_creation: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            wal: bourse_wal::WalOptions::default(),
            memtable_bytes: 32 << 20,
            accounts_memtable_bytes: None,
            memtable_budget_bytes: 256 << 20,
            block_cache_bytes: 8 << 20,
            batch_events_max: 4096,
            maintenance_threads: 2,
            maintenance_nice: 10,
            apply_threads: if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
                2
            } else {
                1
            },
            checkpoint_interval: Duration::from_millis(500),
            sync_interval: None,
            wal_retain_bytes: 64 << 20,
            wal_retain_age: Duration::ZERO,
            wal_bytes_max: 1 << 30,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            wal_hold_at_open: None,
            book_checkpoint_every: 1024,
            defer_partition_creation: false,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] bourse_wal::Error),
    /// A partition's tree failed.
    #[error(transparent)]
    Lsm(#[from] bourse_lsm::Error),
    /// An event is malformed or invalid (nothing of its batch was written).
    #[error("event {index} of the batch: {source}")]
    Event {
        /// Position in the batch.
        index: usize,
        /// What is wrong.
        source: bourse_model::Error,
    },
    /// A request is not acceptable (nothing was written).
    #[error("{0}")]
    Invalid(String),
    /// An I/O call outside the WAL and trees failed.
    #[error("engine I/O error during {op} on {path}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Stored data does not decode.
    #[error("engine data is corrupt: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// An earlier apply failed; the engine refuses writes until reopened.
    #[error("engine is poisoned by an earlier failure ({cause}); reopen to recover")]
    Poisoned {
        /// What failed first.
        cause: String,
    },
    /// A user id is already registered.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No such user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// Wrong user id or password.
    #[error("wrong user id or password")]
    BadCredentials,
    /// The user is frozen.
    #[error("user {0:?} is frozen")]
    Frozen(String),
    /// The account is bound to another user.
    #[error("account {account:?} is bound to another user")]
    AccountTaken {
        /// The account.
        account: String,
    },
    /// The account is not bound to this user.
    #[error("account {account:?} is not bound to user {user:?}")]
    NotBound {
        /// The user.
        user: String,
        /// The account.
        account: String,
    },
    /// The data directory holds a key layout this build does not read (see
    /// [`layout::KEY_LAYOUT`]); nothing was changed.
    #[error(
        "data directory {dir} holds key layout {found}, and this build reads only layout {}: \
         open it with the build that wrote it (a newer build, or one from before the \
         accounts keys began with the account)",
        layout::KEY_LAYOUT
    )]
    Layout {
        /// The data directory.
        dir: PathBuf,
        /// The layout it holds (1 when it has data but no layout file).
        found: u32,
    },
    /// An LSN outside what the WAL retains was asked for.
    #[error("LSN {asked} is not retained (the WAL holds {first}..={last})")]
    NotRetained {
        /// The LSN asked for.
        asked: u64,
        /// Oldest retained.
        first: u64,
        /// Newest written.
        last: u64,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
