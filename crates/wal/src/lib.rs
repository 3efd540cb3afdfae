//! The write-ahead log of Bourse: one journal, one global sequence.
//!
//! A [`Wal`] is a directory of segment files holding opaque records, each with a log
//! sequence number ([`Lsn`]), a timestamp, a 16-bit kind and a payload. Appends are
//! batches that recover all-or-nothing; each append says which [`Durability`] it needs
//! and returns only once that level holds. Concurrent appenders share writes and
//! `fdatasync`s (group commit). The log rotates at a configured size, pre-writes its next
//! segment so that `fdatasync` does not also have to journal a growing file, replays from
//! any LSN, and truncates at either end (checkpoints; an unreplicated tail).
//!
//! The format is in [`format`] (and `docs/format-wal.md`); the crash and corruption rules
//! are in [`Wal::open`].
//!
//! ```
//! use bourse_fs::RealFs;
//! use bourse_wal::{Durability, Entry, Lsn, Wal, WalOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let opts = WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() };
//! let wal = Wal::open(RealFs::shared(), dir.path(), opts)?;
//! let batch = [
//!     Entry { kind: 7, timestamp: 1_700_000_000_000_000_000, payload: b"trade 1" },
//!     Entry { kind: 7, timestamp: 1_700_000_000_000_000_001, payload: b"trade 2" },
//! ];
//! // Returns once an fdatasync covering both records has returned.
//! let range = wal.append_batch(&batch, Durability::Durable)?;
//! assert_eq!((range.first, range.last), (Lsn(1), Lsn(2)));
//!
//! let mut reader = wal.read_from(Lsn(1))?;
//! while let Some(record) = reader.next_record()? {
//!     println!("{} kind {} {:?}", record.lsn, record.kind, record.payload);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! This crate is **not** aware of events, keys or partitions: the engine encodes events
//! (see `bourse-model`) into payloads and decides what a kind means. All file access goes
//! through [`bourse_fs::Vfs`], so the crash and fault tests run against the simulated file
//! system.

pub mod crc;
pub mod format;
mod options;
mod reader;
mod recover;
mod scan;
mod segment;
mod truncate;
mod verify;
mod writer;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use options::{Preallocate, RecoveryMode, WalOptions};
pub use reader::{Record, WalReader};
pub use verify::{inspect_segment, verify_dir, InspectedRecord, SegmentReport, VerifyReport};
pub use writer::{Entry, RecoveryReport, TailCut, Wal, WalStats};

#[doc(hidden)]
pub use options::Canary;

/// A log sequence number: the position of a record in the one global order. LSNs start
/// at 1; `Lsn(0)` means "before the first record".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The LSN after this one.
    pub const fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An inclusive range of LSNs assigned to one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsnRange {
    /// The first LSN of the batch.
    pub first: Lsn,
    /// The last LSN of the batch.
    pub last: Lsn,
}

impl LsnRange {
    /// How many records the range covers.
    pub fn len(&self) -> u64 {
        self.last.0 - self.first.0 + 1
    }
    /// Always false: a range holds at least one LSN.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// How much of an append must hold before it is acknowledged.
///
/// | level      | acknowledged when                   | survives                  |
/// |------------|-------------------------------------|---------------------------|
/// | `Buffered` | the bytes were written to the OS    | a process crash (kill -9) |
/// | `Durable`  | an `fdatasync` covering them returned (and, for a new segment, the directory was synced) | power loss |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Written to the operating system.
    Buffered,
    /// Synced to stable storage.
    Durable,
}

/// The kinds of damage a record can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The file ends inside a record header.
    TruncatedHeader,
    /// The file ends inside a record payload.
    TruncatedPayload,
    /// The header announces a payload larger than `record_bytes_max`.
    BadLength {
        /// The announced length.
        len: u32,
    },
    /// The record checksum does not match.
    BadChecksum {
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        actual: u32,
    },
    /// The record's LSN breaks the contiguous sequence.
    UnexpectedLsn {
        /// The LSN that should come next.
        expected: Lsn,
        /// The LSN found.
        found: Lsn,
    },
    /// The data ends inside a batch (no record with `BATCH_END`).
    IncompleteBatch,
}

impl fmt::Display for DamageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader => write!(f, "truncated record header"),
            Self::TruncatedPayload => write!(f, "truncated record payload"),
            Self::BadLength { len } => write!(f, "implausible record length {len}"),
            Self::BadChecksum { expected, actual } => {
                write!(f, "checksum mismatch (stored {expected:#010x}, computed {actual:#010x})")
            }
            Self::UnexpectedLsn { expected, found } => {
                write!(f, "LSN {found} where {expected} was expected")
            }
            Self::IncompleteBatch => write!(f, "batch without its final record"),
        }
    }
}

/// Errors of the WAL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("WAL I/O error during {op} on {path}: {source}")]
    Io {
        /// What the WAL was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An earlier write or sync failed; the WAL refuses writes until it is reopened.
    #[error("WAL is poisoned by an earlier failure ({cause}); reopen to recover")]
    Poisoned {
        /// What failed first.
        cause: String,
    },
    /// A record that recovery may not skip is damaged.
    #[error("WAL corruption in {segment} at offset {offset}: {kind}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        kind: DamageKind,
    },
    /// A segment header is unreadable.
    #[error("WAL segment {segment} has a bad header: {problem}")]
    BadSegmentHeader {
        /// The segment file.
        segment: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Segments do not continue one another.
    #[error("WAL gap: {segment} starts at LSN {found}, but LSN {expected} was expected")]
    Gap {
        /// The segment after the gap.
        segment: PathBuf,
        /// The LSN that should have come next.
        expected: Lsn,
        /// The segment's first LSN.
        found: Lsn,
    },
    /// A record is larger than `record_bytes_max`.
    #[error("record of {bytes} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// The payload size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A batch exceeds `batch_records_max` or does not fit in one segment.
    #[error("batch of {records} records / {bytes} bytes exceeds the limit ({why})")]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Encoded bytes of the batch.
        bytes: usize,
        /// Which limit.
        why: &'static str,
    },
    /// An append with no records.
    #[error("empty batch")]
    EmptyBatch,
    /// The LSN is not retained (already truncated) or not yet written.
    #[error("LSN {lsn} is outside the retained range {first}..={last}")]
    OutOfRange {
        /// The LSN asked for.
        lsn: Lsn,
        /// The oldest retained LSN.
        first: Lsn,
        /// The newest written LSN.
        last: Lsn,
    },
    /// The options are inconsistent.
    #[error("invalid WAL options: {0}")]
    InvalidOptions(&'static str),
    /// Another process (or another `Wal` in this one) has the directory open.
    #[error("WAL directory {dir} is locked by another writer")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
}

/// The WAL's result type.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
