//! The operating system's file system.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{FileRef, LockGuard, OpenMode, Vfs, VfsFile};

/// The real file system (`std::fs` with positional I/O and `fdatasync`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl RealFs {
    /// A handle to the real file system, shareable as `Arc<dyn Vfs>`.
    pub fn shared() -> Arc<dyn Vfs> {
        Arc::new(RealFs)
    }
}

#[derive(Debug)]
struct RealFile {
    file: File,
    /// The shared writable map of [`VfsFile::map_writes`], once made. Mapped writes
    /// hold the read lock while they copy; [`VfsFile::set_len`] takes the write lock
    /// and drops the map before it shortens the file, so no copy lands past the end.
    writes: RwLock<Option<memmap2::MmapRaw>>,
}

/// Bytes past a mapped write asked into the cache for the next one.
const WRITE_AHEAD_BYTES: usize = 256;

/// Asks the cache for the [`WRITE_AHEAD_BYTES`] of `map` from `from` on, to be written
/// ([`crate::prefetch_write`]). Appends to a WAL segment are small and far apart in
/// time, and each lands on lines no cache holds (the segment was pre-written long
/// before): the copy's stores then wait on memory, and the wait showed in profiles at
/// the next atomic instruction (the map's lock release) as a quarter of a one-event
/// append. Asked for after each write, the lines are in cache when the next one comes.
fn prefetch_for_write(map: &memmap2::MmapRaw, from: usize) {
    let end = map.len().min(from.saturating_add(WRITE_AHEAD_BYTES));
    let mut at = from & !63;
    while at < end {
        crate::prefetch_write(map.as_ptr().wrapping_add(at));
        at += 64;
    }
}

impl RealFile {
    fn new(file: File) -> RealFile {
        RealFile { file, writes: RwLock::new(None) }
    }

    /// The whole pages of `offset .. offset + len` that lie inside `map`, as a range of
    /// byte offsets (empty when none do). (Pages of 4 KiB, as on x86-64.)
    #[cfg(target_os = "linux")]
    fn pages_within(map: &memmap2::MmapRaw, offset: u64, len: u64) -> std::ops::Range<usize> {
        const PAGE: u64 = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = offset.saturating_add(len).min(map.len() as u64) / PAGE * PAGE;
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(start), Ok(end)) if start < end => start..end,
            _ => 0..0,
        }
    }

    /// Takes the whole pages of `offset .. offset + len` out of the write map, if there
    /// is one, before their writeback starts. Writeback write-protects every page it
    /// finds mapped writable, one page at a time, and each of those is a TLB flush on
    /// every CPU this process runs on (an interrupt to each; on a VM, an exit). Dropped
    /// from the map first, the whole range costs one flush per page table, and the
    /// writeback finds nothing mapped. The pages and their bytes stay in the page cache
    /// (a dirty page stays dirty); a later mapped write to one faults it back in.
    /// (Pages of 4 KiB, as on x86-64; where pages are larger the advice can fail, which
    /// is only logged: it costs the flushes again, nothing else.)
    #[cfg(target_os = "linux")]
    fn release_mapped(&self, offset: u64, len: u64) {
        let map = self.writes.read();
        let Some(map) = map.as_ref() else { return };
        let pages = Self::pages_within(map, offset, len);
        if pages.is_empty() {
            return;
        }
        // SAFETY: the map is a shared map of this file (`map_writes`), held mapped by
        // the read guard. `MADV_DONTNEED` on a shared file map removes this process's
        // page table entries for the range and nothing else: the file's pages and
        // their contents stay in the page cache (a dirty entry marks its page dirty),
        // so every later access through the map or the file sees the same bytes. No
        // Rust reference into the map exists (writes copy through a raw pointer).
        #[allow(unsafe_code)]
        let r = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, pages.start, pages.len())
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "could not drop written pages from the write map");
        }
    }
}

impl VfsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn write_mapped(&self, buf: &[u8], offset: u64) -> bool {
        let map = self.writes.read();
        let Some(map) = map.as_ref() else { return false };
        let Ok(start) = usize::try_from(offset) else { return false };
        if start.checked_add(buf.len()).is_none_or(|end| end > map.len()) {
            return false;
        }
        // SAFETY: `start .. start + buf.len()` lies inside the map (checked above),
        // which stays mapped while the read guard is held; the file is at least as long
        // as the map, since only `set_len` shortens it here and it drops the map first
        // (shortening it elsewhere is what `map_writes` rules out). The map's pages are
        // the file's page cache, shared with every process that maps the file; no Rust
        // reference into them is made here, and `copy` allows `buf` to alias them.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy(buf.as_ptr(), map.as_mut_ptr().add(start), buf.len());
        }
        prefetch_for_write(map, start + buf.len());
        true
    }
    fn sync_data(&self) -> io::Result<()> {
        // On Linux `fdatasync` also writes the pages dirtied through a shared map of the
        // file (they are the same page cache pages), so no `msync` is needed.
        self.file.sync_data()
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.release_mapped(offset, len);
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: `sync_file_range` takes a descriptor and three integers and touches no
        // memory of ours; the descriptor stays open while `self` lives.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut map = self.writes.write();
        if map.as_ref().is_some_and(|m| len < m.len() as u64) {
            *map = None;
        }
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    #[cfg(target_os = "linux")]
    fn map_writes(&self) -> io::Result<bool> {
        let Ok(len) = usize::try_from(self.len()?) else { return Ok(false) };
        if len == 0 {
            return Ok(false);
        }
        let map = memmap2::MmapOptions::new().len(len).map_raw(&self.file)?;
        *self.writes.write() = Some(map);
        Ok(true)
    }
    fn unmap_writes(&self) {
        *self.writes.write() = None;
    }
    #[cfg(target_os = "linux")]
    fn prepare_mapped(&self, offset: u64, len: u64) {
        let map = self.writes.read();
        let Some(map) = map.as_ref() else { return };
        let pages = Self::pages_within(map, offset, len);
        if pages.is_empty() {
            return;
        }
        // `MADV_POPULATE_WRITE` (Linux 5.14): the write faults a mapped write would take,
        // taken here. A shared file page so faulted is marked dirty with its bytes
        // unchanged (the segment is pre-written), so at worst it is written back once
        // more; `MAP_POPULATE` would not do, as it maps a shared map's pages read-only.
        if let Err(e) = map.advise_range(memmap2::Advice::PopulateWrite, pages.start, pages.len()) {
            tracing::debug!(error = %e, "could not map WAL pages in ahead of writes");
        }
    }
    fn map(&self) -> io::Result<Option<crate::Mapping>> {
        crate::Mapping::of(&self.file, self.len()?)
    }
}

impl Vfs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef> {
        let mut opts = OpenOptions::new();
        match mode {
            OpenMode::Read => opts.read(true),
            OpenMode::ReadWrite => opts.read(true).write(true),
            OpenMode::CreateNew => opts.read(true).write(true).create_new(true),
        };
        Ok(Arc::new(RealFile::new(opts.open(path)?)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        match fs::hard_link(from, to) {
            Ok(()) => Ok(()),
            // Another file system (EXDEV) or no link support: copy and sync instead.
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                fs::copy(from, to)?;
                File::open(to)?.sync_all()
            }
            Err(e) => Err(e),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(LockGuard::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            )),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;

    /// A directory of this process's under the system's temporary one, removed with
    /// everything in it when dropped (after the files opened in it, declared later).
    struct Scratch {
        dir: PathBuf,
    }

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("bourse-fs-{test}-{}", std::process::id()));
            RealFs.create_dir_all(&dir).unwrap();
            Scratch { dir }
        }

        /// A new empty file `name` in it (one left by an earlier run is removed first).
        fn create(&self, name: &str) -> (PathBuf, FileRef) {
            let path = self.dir.join(name);
            let _ = RealFs.remove_file(&path);
            let f = RealFs.open(&path, OpenMode::CreateNew).unwrap();
            (path, f)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The writeback hint on a real file: accepted for written ranges, for ranges past
    /// the end and for offsets the system call cannot take, and it changes no byte.
    #[test]
    fn start_writeback_is_a_harmless_hint() {
        let scratch = Scratch::new("writeback");
        let (_, f) = scratch.create("big");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        f.start_writeback(0, 1 << 20).unwrap();
        f.start_writeback(1 << 20, 2 << 20).unwrap();
        f.start_writeback(10 << 20, 1 << 20).unwrap();
        f.start_writeback(u64::MAX, 1).unwrap();
        f.sync_data().unwrap();
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data);
    }

    /// This thread's write system calls so far (`syscw` of `/proc/thread-self/io`).
    fn write_calls() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines().find_map(|l| l.strip_prefix("syscw: ")).unwrap().trim().parse().unwrap()
    }

    /// The kibibytes of `path`'s maps resident in this process (`/proc/self/smaps`).
    fn mapped_kib(path: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let name = path.to_str().unwrap();
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            // A map's first line starts with its address range, `start-end`.
            if line.split_whitespace().next().is_some_and(|w| w.contains('-') && !w.ends_with(':'))
            {
                inside = line.ends_with(name);
            } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| inside) {
                kib += v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap();
            }
        }
        kib
    }

    /// Writeback asked for a range of a mapped file first takes the range's whole
    /// pages out of the write map (writeback would otherwise write-protect them one
    /// TLB flush at a time): they leave the process's resident set, their bytes stay the
    /// file's, and a later mapped write to one of them lands as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn writeback_takes_the_range_out_of_the_write_map() {
        let scratch = Scratch::new("release");
        let (path, f) = scratch.create("seg");
        let len = 1u64 << 20;
        f.write_all_at(&vec![0u8; len as usize], 0).unwrap();
        assert!(f.map_writes().unwrap());
        let page = |i: u64| vec![(i % 251) as u8 + 1; 4096];
        for i in 0..len / 4096 {
            assert!(f.write_mapped(&page(i), i * 4096));
        }
        assert_eq!(mapped_kib(&path), 1024, "every page written is mapped");
        // Half a page into the range: that page and the last, partial one stay.
        f.start_writeback(2048, 64 * 4096).unwrap();
        assert_eq!(mapped_kib(&path), 1024 - 63 * 4, "the range's whole pages left the map");
        f.start_writeback(0, len).unwrap();
        assert_eq!(mapped_kib(&path), 0);
        // The bytes are the file's; a mapped write into a released page lands.
        assert!(f.write_mapped(b"again", 10 * 4096));
        f.sync_data().unwrap();
        let other = RealFs.open(&path, OpenMode::Read).unwrap();
        let mut all = vec![0u8; len as usize];
        other.read_exact_at(&mut all, 0).unwrap();
        for i in 0..len / 4096 {
            let mut want = page(i);
            if i == 10 {
                want[..5].copy_from_slice(b"again");
            }
            assert!(all[(i * 4096) as usize..][..4096] == want[..], "page {i} differs");
        }
    }

    /// Pages asked to be mapped in ahead of mapped writes join the write map (the
    /// process's resident set), whole pages of the range only, with the file's bytes
    /// unchanged; a file with no write map ignores the request.
    #[cfg(target_os = "linux")]
    #[test]
    fn prepared_pages_join_the_write_map_unchanged() {
        let scratch = Scratch::new("prepare");
        let (path, f) = scratch.create("seg");
        let len = 1u64 << 20;
        let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        // A page per write, as the WAL pre-writes in small steps: a page cache folio is
        // as large as the write that makes it, and a fault maps a whole folio in.
        for (i, page) in bytes.chunks(4096).enumerate() {
            f.write_all_at(page, i as u64 * 4096).unwrap();
        }
        f.prepare_mapped(0, len);
        assert_eq!(mapped_kib(&path), 0, "no write map: nothing to map in");
        assert!(f.map_writes().unwrap());
        assert_eq!(mapped_kib(&path), 0, "a new map holds no page");
        // From ten bytes into page 1 to ten bytes into page 9: pages 2 to 8.
        f.prepare_mapped(4096 + 10, 8 * 4096);
        assert_eq!(mapped_kib(&path), 7 * 4, "the range's whole pages joined the map");
        f.prepare_mapped(0, 2 * len);
        assert_eq!(mapped_kib(&path), 1024, "up to the map's end, not past it");
        let mut all = vec![0u8; len as usize];
        RealFs.open(&path, OpenMode::Read).unwrap().read_exact_at(&mut all, 0).unwrap();
        assert!(all == bytes, "mapping pages in changed the file");
    }

    /// Writes through the map: no system call, the bytes visible at once to a second
    /// handle (the page cache, as after a process kill), durable with `sync_data`, and
    /// the same bytes a `pwrite` writes. A write the map does not hold (past its end,
    /// or after `set_len` shortened the file) is refused and changes nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn mapped_writes_are_page_cache_writes() {
        let scratch = Scratch::new("mapped");
        let (path, f) = scratch.create("seg");
        let (_, twin) = scratch.create("twin");
        let len = 1u64 << 20;
        f.write_all_at(&vec![0u8; len as usize], 0).unwrap();
        twin.write_all_at(&vec![0u8; len as usize], 0).unwrap();
        assert!(!f.write_mapped(b"x", 0), "no map yet");
        assert!(f.map_writes().unwrap());
        let record = |i: u64| -> Vec<u8> { (0..100).map(|j| (i * 7 + j) as u8).collect() };
        let before = write_calls();
        for i in 0..1000u64 {
            assert!(f.write_mapped(&record(i), i * 100));
        }
        assert_eq!(write_calls() - before, 0, "mapped writes made system calls");
        for i in 0..1000u64 {
            twin.write_all_at(&record(i), i * 100).unwrap();
        }
        f.sync_data().unwrap();
        // A second handle reads what the map wrote: what `pwrite` wrote to the twin.
        let other = RealFs.open(&path, OpenMode::Read).unwrap();
        let (mut a, mut b) = (vec![0u8; len as usize], vec![0u8; len as usize]);
        other.read_exact_at(&mut a, 0).unwrap();
        twin.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b, "the mapped file differs from the written one");
        assert_eq!(&a[..100], record(0).as_slice());
        // Straddling the end of the map: refused, nothing written, the file as long.
        assert!(!f.write_mapped(&record(5000), len - 50));
        assert_eq!(f.len().unwrap(), len);
        other.read_exact_at(&mut a[..50], len - 50).unwrap();
        assert_eq!(&a[..50], &[0u8; 50][..]);
        // Shortened, the file drops its map: a write at an old mapped offset past the
        // new end is refused (through the map it would be `SIGBUS`).
        f.set_len(4096).unwrap();
        assert!(!f.write_mapped(&record(6000), 8192));
        assert!(!f.write_mapped(&record(6000), 0));
        assert_eq!(f.len().unwrap(), 4096);
        // Unmapped, the file refuses mapped writes, and `pwrite` still works.
        assert!(f.map_writes().unwrap());
        assert!(f.write_mapped(&record(7), 0));
        f.unmap_writes();
        assert!(!f.write_mapped(&record(8), 0));
        f.write_all_at(&record(9), 0).unwrap();
        other.read_exact_at(&mut a[..100], 0).unwrap();
        assert_eq!(&a[..100], record(9).as_slice());
        // An empty file has nothing to map.
        let (_, empty) = scratch.create("empty");
        assert!(!empty.map_writes().unwrap());
    }
}
