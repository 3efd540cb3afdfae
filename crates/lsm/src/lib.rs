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
mod key;
pub mod manifest;
mod memtable;
pub mod table;

use std::io;
use std::path::PathBuf;

pub use key::{Entry, InternalKey, Kind, SeqNo, MAX_SEQ};
pub use memtable::Memtable;
pub use table::{Table, TableId, TableMeta, TableWriter};

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
