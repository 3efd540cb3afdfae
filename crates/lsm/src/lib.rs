//! A key-value LSM tree: memtable, SSTables, manifest, leveled compaction, snapshots.
//!
//! Like `lsm-tree` under fjall, the tree has **no write-ahead log**: the engine owns
//! durability. Every write carries the engine's sequence number (its WAL LSN); the tree
//! reports which sequence is safely flushed to tables, so the engine knows where its WAL
//! replay must start after a crash.
//!
//! This crate is **not** a WAL and knows nothing of events: keys and values are bytes.
//! All file access goes through [`bourse_fs::Vfs`], so crash and corruption tests run
//! against the simulated file system.

pub mod block;
pub mod bloom;
mod compaction;
mod key;
pub mod manifest;
mod memtable;
mod scan;
pub mod table;
mod tree;
mod verify;
mod version;

use std::io;
use std::path::PathBuf;

pub use key::{Entry, InternalKey, Kind, SeqNo, MAX_SEQ};
pub use memtable::{BlockPool, Memtable};
pub use scan::{prefix_end, Scan, ScanRev};
pub use table::{BlockCache, Compression, Table, TableId, TableMeta, TableWriter};
pub use tree::{FlushGate, Snapshot, Tree, TreeOptions, TreeStats};
pub use verify::{is_tree_dir, verify_tree, TreeReport};

#[doc(hidden)]
pub use tree::Canary;

/// Errors of the LSM tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("LSM I/O error during {op} on {path}: {source}")]
    Io {
        /// What the tree was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An earlier flush or compaction failed; the tree refuses writes until reopened.
    #[error("LSM tree is poisoned by an earlier failure ({cause}); reopen to recover")]
    Poisoned {
        /// What failed first.
        cause: String,
    },
    /// A key or value is over its limit.
    #[error("key of {key} bytes or value of {value} bytes exceeds the configured limit")]
    TooLarge {
        /// Key length.
        key: usize,
        /// Value length.
        value: usize,
    },
    /// A sequence number above `MAX_SEQ`.
    #[error("sequence number {seq} exceeds the maximum")]
    BadSequence {
        /// The sequence given.
        seq: SeqNo,
    },
    /// A file is damaged.
    #[error("LSM corruption in {path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// The LSM tree's result type.
pub type Result<T> = std::result::Result<T, Error>;
