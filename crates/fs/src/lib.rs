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
//! rename, read-only maps for the WAL's readers, a writable map for its small appends)
//! and nothing else; besides them, one call that is not about files,
//! [`lower_thread_priority`], for the background threads of the crates above.

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
    /// Starts writing the dirty pages of `offset .. offset + len` to the device without
    /// waiting for them: a hint for files written in bulk (tables, pre-written WAL
    /// segments), so their dirty pages go out as they are made instead of all at the
    /// final sync, where they would queue ahead of the WAL's small syncs. It makes
    /// nothing durable; only [`VfsFile::sync_data`] does. Where the file has a write map
    /// ([`VfsFile::map_writes`]), the range's whole pages leave it first (see
    /// `RealFile`'s note; a later mapped write faults its page back in). The default
    /// does nothing.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Sets the file length (truncating or zero-extending). Durable after `sync_data`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Maps the file, as long as it is now, shared and writable, for
    /// [`VfsFile::write_mapped`]. Returns whether it did: `false` where this file
    /// system has no maps (the in-memory [`SimFs`], systems other than Linux) or the
    /// file is empty.
    ///
    /// Only for files whose every block up to their length is written, such as the
    /// WAL's pre-written segments: a write into a hole of a sparse file on a full disk
    /// kills the process with `SIGBUS` instead of failing, and so does a write after
    /// something other than this handle shortened the file.
    fn map_writes(&self) -> io::Result<bool> {
        Ok(false)
    }

    /// Drops the map of [`VfsFile::map_writes`], if any: later [`VfsFile::write_mapped`]
    /// calls refuse. For a file that takes no more small writes (a sealed WAL segment):
    /// the pages it touched stay in the page cache, but no longer in this process's
    /// address space, where the kernel would count them as resident and keep them as
    /// mapped pages, which it reclaims last.
    fn unmap_writes(&self) {}

    /// Asks that the pages of `offset .. offset + len` be mapped writable in the map
    /// of [`VfsFile::map_writes`] now, ahead of the mapped writes that will land there:
    /// the first write into a page of the map otherwise takes a page fault, on the
    /// writer's thread. A hint, for a thread other than the writer's: it changes no
    /// byte of the file, and a failure (no map, a kernel without the advice) is only
    /// logged. The default does nothing.
    fn prepare_mapped(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Copies `buf` to `offset` through the map of [`VfsFile::map_writes`] instead of
    /// a system call, when there is one and it holds the whole range (it does not grow
    /// with the file, and [`VfsFile::set_len`] drops it when it shortens the file).
    /// Returns whether it did; when not, nothing was written and the caller uses
    /// [`VfsFile::write_all_at`].
    ///
    /// What a write promises does not change: a map's pages are the page cache itself,
    /// so the bytes reach the operating system when the copy ends (they survive a
    /// process kill), and [`VfsFile::sync_data`] writes them to the disk with the rest.
    /// What it costs does: a 100-byte `pwrite` takes 1–2 µs on the 2-core VMs of
    /// `docs/benchmarks.md`, the copy tens of nanoseconds, but the first copy into a
    /// page since it was last written back takes a page fault (more than the system
    /// call), and writing back a page written through a map costs more than one
    /// written with `pwrite`. So it pays for small writes between rare syncs.
    fn write_mapped(&self, buf: &[u8], offset: u64) -> bool {
        let _ = (buf, offset);
        false
    }

    /// A read-only memory map of the file as long as it is now, for a reader that
    /// wants its bytes without a copy per read; `None` when this file system has no
    /// maps (the in-memory [`SimFs`]) or the file is empty. Callers keep a read path
    /// for `None`. See [`Mapping`] for what a map may and may not be used for.
    fn map(&self) -> io::Result<Option<Mapping>> {
        Ok(None)
    }

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

/// Asks the CPU to bring the cache line holding `p` into this core's cache, to be
/// written soon (`prefetchw` on x86-64; a no-op elsewhere). A hint: it reads and writes
/// nothing and cannot fault, so `p` may point anywhere. For memory written in small
/// appends far apart in time (a WAL segment's map), whose next lines no cache holds:
/// the stores would otherwise wait on memory at the next atomic instruction.
#[inline]
pub(crate) fn prefetch_write<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint with no architectural effect: it does not access
    // memory as far as the program can tell and never faults, whatever the address.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Gives the calling thread the nice value `nice` (clamped to 0..=19, higher is lower
/// priority; 0 does nothing), for a background thread (flushes, compactions, WAL
/// pre-writes) that should give way to the submit path. Linux keeps a nice value per
/// thread; elsewhere this is a no-op. A failure is logged with `what` (the thread's
/// role) and otherwise ignored: it costs latency, not correctness.
pub fn lower_thread_priority(nice: i32, what: &str) {
    let nice = nice.clamp(0, 19);
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!(nice, error = %e, "{what}: could not lower its priority");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}

/// A shared handle to an open file.
pub type FileRef = Arc<dyn VfsFile>;

/// A read-only memory map of a file's first [`Mapping::len`] bytes (from
/// [`VfsFile::map`]). It sees what is written to the file afterwards, as the page
/// cache does; it does not grow with the file (map it again for that).
///
/// Reading a mapped byte past the file's *current* end kills the process with
/// `SIGBUS` instead of returning an error, so a map suits files that only this process
/// shortens, and only at times it controls: the WAL's segments (see `bourse-wal`).
pub struct Mapping {
    raw: memmap2::MmapRaw,
}

impl Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.raw.len()).finish()
    }
}

impl Mapping {
    /// Maps the first `len` bytes of `file` read-only; `None` when `len` is 0.
    fn of(file: &std::fs::File, len: u64) -> io::Result<Option<Mapping>> {
        let Ok(len) = usize::try_from(len) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"));
        };
        if len == 0 {
            return Ok(None);
        }
        let raw = memmap2::MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Some(Mapping { raw }))
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether nothing is mapped (never true of a map [`VfsFile::map`] returned).
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// Bytes `offset .. offset + len` of the map, or `None` if they are not all mapped.
    ///
    /// # Safety
    ///
    /// While the slice lives, nothing may change those bytes of the file (no write, and
    /// no truncation below their end): the slice is the page cache itself, so a change
    /// would show through a shared reference, and a truncation would turn the read into
    /// `SIGBUS`. Ranges a file only appends after, read once they are written, keep this.
    #[allow(unsafe_code)]
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.raw.len() {
            return None;
        }
        // SAFETY: `offset..end` lies inside the mapping (checked above), which stays
        // mapped as long as `self`, and the slice borrows `self`. The mapping is
        // read-only and initialized (file pages, zero past a partial last page). The
        // caller promises the bytes do not change while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(offset), len) })
    }
}

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

/// Creates `dir` and any missing directory above it, and makes each new one durable by
/// `fsync`ing the directory that holds its entry. Without that, a power loss can take a
/// new directory away with everything in it, however well its files were synced. A
/// directory that already exists is left as it is (no `fsync`).
pub fn create_dir_durable(vfs: &dyn Vfs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    // (A root, `/`, has no parent to sync.)
    for a in dir.ancestors().filter(|a| a.parent().is_some() && !a.as_os_str().is_empty()) {
        if vfs.exists(a)? {
            break;
        }
        missing.push(a);
    }
    if missing.is_empty() {
        return Ok(());
    }
    vfs.create_dir_all(dir)?;
    // Innermost first: each parent holds the entry of the directory made in it.
    for made in missing {
        vfs.sync_dir(parent_dir(made))?;
    }
    Ok(())
}

/// The directory holding `path`'s entry (`.` for a bare relative name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
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
