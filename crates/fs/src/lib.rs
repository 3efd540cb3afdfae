//! The file-system seam of Bourse.
//!
//! Every crate that touches disk (the WAL, the LSM tree, the engine) goes through the
//! [`Vfs`] trait, never through `std::fs` directly. Two implementations exist:
//!
//! - [`RealFs`]: the operating system's file system, with positional I/O and
//!   `fdatasync`.
//! - [`SimFs`]: an in-memory file system for tests that tracks, for every file and every
//!   directory entry, what is durable and what is not. It can crash on command (keeping
//!   only what was synced, optionally a torn prefix of the unsynced writes, or everything
//!   as after a process kill), inject `EIO`/`ENOSPC` at any call, and flip bits.
//!
//! This crate is **not** a general file-system abstraction: it offers exactly the calls a
//! storage engine needs (positional reads and writes, `sync_data`, directory sync,
//! rename) and nothing else.

mod real;
mod sim;

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use real::RealFs;
pub use sim::{CrashFate, FaultKind, SimFs};

/// How [`Vfs::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create a new file for reading and writing; fails if it exists. The new directory
    /// entry is durable only after [`Vfs::sync_dir`] on its parent.
    CreateNew,
}

/// An open file: positional reads and writes, so that several readers and one writer can
/// share a handle without a cursor.
pub trait VfsFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (fewer only
    /// at the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed. The bytes reach the
    /// operating system (they survive a process kill) but not the disk until
    /// [`VfsFile::sync_data`].
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes every byte written so far, and the file length, durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file length (truncating or zero-extending). Durable after `sync_data`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A shared handle to an open file.
pub type FileRef = Arc<dyn VfsFile>;

/// The file-system calls a storage engine makes.
pub trait Vfs: Send + Sync + Debug {
    /// Creates a directory and its parents (durable immediately in [`SimFs`]; the real
    /// file system callers should [`Vfs::sync_dir`] the parent when it matters).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the files directly inside `dir`, sorted.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens (or creates) a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef>;
    /// Removes a directory entry. Durable after [`Vfs::sync_dir`] on the parent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`. Durable after
    /// [`Vfs::sync_dir`] on the parent(s).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `fsync` on a directory: makes its entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Takes an exclusive lock named by `path` (creating the file if needed), held until
    /// the returned guard is dropped. Fails with `ErrorKind::WouldBlock` when another
    /// holder (another process, or another handle in this one) has it.
    fn lock(&self, path: &Path) -> io::Result<LockGuard>;
    /// Makes `to` a second name for the immutable file `from` (for backups). The default
    /// copies the bytes into a new file and syncs it; the real file system links.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let src = self.open(from, OpenMode::Read)?;
        let len = usize::try_from(src.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        let mut buf = vec![0u8; len];
        src.read_exact_at(&mut buf, 0)?;
        let dst = self.open(to, OpenMode::CreateNew)?;
        dst.write_all_at(&buf, 0)?;
        dst.sync_data()
    }
}

/// Something that holds a lock until it is dropped.
pub trait LockHolder: Send + Sync + Debug {}

impl<T: Send + Sync + Debug> LockHolder for T {}

/// An exclusive lock taken by [`Vfs::lock`]; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] Box<dyn LockHolder>);

impl LockGuard {
    /// Wraps whatever holds a lock until it is dropped.
    pub fn new(holder: impl LockHolder + 'static) -> Self {
        Self(Box::new(holder))
    }
}

/// Publishes `bytes` as `dir/name` atomically: write a temporary file, `fsync` it,
/// rename it over the target, `fsync` the directory.
pub fn write_file_atomic(vfs: &dyn Vfs, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    if vfs.exists(&tmp)? {
        vfs.remove_file(&tmp)?;
    }
    let file = vfs.open(&tmp, OpenMode::CreateNew)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    vfs.rename(&tmp, &dir.join(name))?;
    // IMPORTANT: without this the rename may be lost on power failure.
    vfs.sync_dir(dir)
}

/// Reads a whole file into memory.
pub fn read_file(vfs: &dyn Vfs, path: &Path) -> io::Result<Vec<u8>> {
    let file = vfs.open(path, OpenMode::Read)?;
    let len = usize::try_from(file.len()?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}
