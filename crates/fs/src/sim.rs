//! A simulated file system that knows what is durable.
//!
//! Model (the media assumptions every crash test relies on):
//!
//! - Each file (inode) has its *current* bytes (what reads see) and its *durable* bytes
//!   (what survives power loss). `write_all_at` and `set_len` change the current bytes
//!   and append to a log of unsynced operations; `sync_data` applies that log to the
//!   durable bytes.
//! - The namespace (path → inode) likewise has a current and a durable version;
//!   `sync_dir(d)` makes the current entries of `d` durable, the directories created in
//!   it included. A directory is durable once its entry in its parent is (a root, with no
//!   parent, always is); a power loss takes a directory that is not, and everything in
//!   it, however synced (as on a real disk, where a file's name is reached through every
//!   directory above it). `create_dir_all` counts one operation per directory it makes.
//! - [`SimFs::crash`] reboots the machine with one of three [`CrashFate`]s: keep only what
//!   is durable, keep a random prefix of each file's unsynced operations (the last one
//!   possibly cut short: a torn write), or keep everything (a process kill, where the
//!   operating system still holds every written byte).
//! - Every mutating call counts as one *operation*. [`SimFs::crash_after`] makes every
//!   call after the n-th fail as if the process had died there; [`SimFs::fail_op`] makes
//!   the n-th call fail with `EIO` or `ENOSPC` while the rest succeed.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{FileRef, LockGuard, OpenMode, Vfs, VfsFile};

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashFate {
    /// Power loss: only synced bytes and synced directory entries survive.
    LoseUnsynced,
    /// Power loss mid-write: synced state plus, per file, a random prefix of the unsynced
    /// operations, the last of them possibly torn (a prefix of its bytes).
    Torn {
        /// Seed of the random choices, so a failure can be replayed.
        seed: u64,
    },
    /// Process kill (`kill -9`): everything handed to the operating system survives.
    KeepAll,
}

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// An I/O error (`EIO`).
    Eio,
    /// The disk is full (`ENOSPC`).
    NoSpace,
}

#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Unsynced>,
}

fn apply(data: &mut Vec<u8>, op: &Unsynced) {
    match op {
        Unsynced::Write { offset, bytes } => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(bytes.len());
            if data.len() < end {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(bytes);
        }
        Unsynced::SetLen(len) => data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash; handles from an older epoch fail.
    epoch: u64,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    /// The directories whose entries in their parents are durable.
    durable_dirs: Vec<PathBuf>,
    ops: u64,
    crash_after: Option<u64>,
    crashed: bool,
    fault: Option<(u64, FaultKind)>,
    /// Paths locked by the live process (a crash releases them all).
    locks: std::collections::HashSet<PathBuf>,
    /// `start_writeback` calls and the bytes they named (hints: they change nothing).
    writeback_hints: (u64, u64),
    /// `prepare_mapped` calls and the furthest end they named (hints too).
    prepare_hints: (u64, u64),
}

impl State {
    /// Counts one mutating operation and decides whether it may run.
    fn begin_op(&mut self, epoch: u64) -> io::Result<()> {
        self.check_alive(epoch)?;
        self.ops += 1;
        if let Some((at, kind)) = self.fault {
            if self.ops == at {
                self.fault = None;
                return Err(match kind {
                    FaultKind::Eio => io::Error::other("injected EIO"),
                    FaultKind::NoSpace => {
                        io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC")
                    }
                });
            }
        }
        if let Some(limit) = self.crash_after {
            if self.ops > limit {
                self.crashed = true;
                return Err(crashed());
            }
        }
        Ok(())
    }

    fn check_alive(&self, epoch: u64) -> io::Result<()> {
        if self.crashed || epoch != self.epoch {
            return Err(crashed());
        }
        Ok(())
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(|| io::Error::other("stale inode"))
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process is dead")
}

/// A directory with no parent (`/`), which is always there.
fn is_root(dir: &Path) -> bool {
    dir.parent().is_none_or(|p| p.as_os_str().is_empty())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

/// The simulated file system. Cloning gives another handle to the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// This disk as a shareable `Arc<dyn Vfs>`.
    pub fn shared(&self) -> Arc<dyn Vfs> {
        Arc::new(self.clone())
    }

    /// How many [`crate::VfsFile::start_writeback`] hints files got, and the bytes they
    /// named in all. A hint changes nothing on this disk (and is not an operation for
    /// [`SimFs::crash_after`] or [`SimFs::fail_op`]).
    pub fn writeback_hints(&self) -> (u64, u64) {
        self.state.lock().writeback_hints
    }

    /// How many [`crate::VfsFile::prepare_mapped`] hints files got, and the furthest
    /// offset one of them reached (its offset plus its length). Like writeback hints,
    /// they change nothing here (this disk has no maps).
    pub fn prepare_hints(&self) -> (u64, u64) {
        self.state.lock().prepare_hints
    }

    /// How many mutating operations have run since the disk was created.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Lets `n` more mutating operations run, then fails every call as a dead process.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.state.lock();
        s.crash_after = Some(s.ops + n);
    }

    /// Whether the crash point set by [`SimFs::crash_after`] has been reached.
    pub fn has_crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Makes the `n`-th mutating operation from now (1-based) fail with `kind`.
    pub fn fail_op(&self, n: u64, kind: FaultKind) {
        let mut s = self.state.lock();
        s.fault = Some((s.ops + n, kind));
    }

    /// Reboots: keeps what `fate` says survives, invalidates every open handle, and clears
    /// crash points and faults.
    pub fn crash(&self, fate: CrashFate) {
        let mut s = self.state.lock();
        let mut rng = StdRng::seed_from_u64(match fate {
            CrashFate::Torn { seed } => seed,
            _ => 0,
        });
        for inode in s.inodes.values_mut() {
            let keep = match fate {
                CrashFate::LoseUnsynced => 0,
                CrashFate::KeepAll => inode.unsynced.len(),
                CrashFate::Torn { .. } => rng.gen_range(0..=inode.unsynced.len()),
            };
            let ops = std::mem::take(&mut inode.unsynced);
            for op in &ops[..keep] {
                apply(&mut inode.durable, op);
            }
            if let (CrashFate::Torn { .. }, Some(Unsynced::Write { offset, bytes })) =
                (fate, ops.get(keep))
            {
                let cut = rng.gen_range(0..=bytes.len());
                let torn = Unsynced::Write { offset: *offset, bytes: bytes[..cut].to_vec() };
                apply(&mut inode.durable, &torn);
            }
            inode.current = inode.durable.clone();
        }
        if fate != CrashFate::KeepAll {
            // A directory survives when it and every directory above it are durable.
            let durable = s.durable_dirs.clone();
            let reached =
                |d: &Path| d.ancestors().all(|a| is_root(a) || durable.iter().any(|x| x == a));
            s.dirs.retain(|d| reached(d));
            s.durable_dirs.retain(|d| reached(d));
            let dirs = s.dirs.clone();
            s.durable_names.retain(|p, _| p.parent().is_some_and(|d| dirs.iter().any(|x| x == d)));
            s.names = s.durable_names.clone();
        } else {
            s.durable_names = s.names.clone();
            s.durable_dirs = s.dirs.clone();
        }
        let live: std::collections::HashSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| live.contains(ino));
        s.epoch += 1;
        s.locks.clear();
        s.crashed = false;
        s.crash_after = None;
        s.fault = None;
    }

    /// Flips one bit of a file, in both its current and its durable bytes.
    pub fn flip_bit(&self, path: &Path, byte: u64, bit: u8) -> io::Result<()> {
        let mut s = self.state.lock();
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inode(ino)?;
        let i = usize::try_from(byte).unwrap_or(usize::MAX);
        for data in [&mut inode.current, &mut inode.durable] {
            if let Some(b) = data.get_mut(i) {
                *b ^= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// The current bytes of a file (for tests and inspection).
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.state.lock();
        let ino = s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(s.inodes.get(ino).map(|i| i.current.clone()).unwrap_or_default())
    }

    fn handle(&self, ino: u64, epoch: u64, writable: bool) -> FileRef {
        Arc::new(SimFile { fs: self.clone(), ino, epoch, writable })
    }
}

/// Releases a simulated lock when dropped (unless a crash already did).
#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    path: PathBuf,
    epoch: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.fs.state.lock();
        if s.epoch == self.epoch {
            s.locks.remove(&self.path);
        }
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: u64,
    epoch: u64,
    writable: bool,
}

impl SimFile {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "file opened read-only"))
        }
    }

    fn log(&self, op: Unsynced) -> io::Result<()> {
        self.check_writable()?;
        let mut s = self.fs.state.lock();
        s.begin_op(self.epoch)?;
        let inode = s.inode(self.ino)?;
        apply(&mut inode.current, &op);
        inode.unsynced.push(op);
        Ok(())
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut s = self.fs.state.lock();
        s.check_alive(self.epoch)?;
        let data = &s.inode(self.ino)?.current;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.log(Unsynced::Write { offset, bytes: buf.to_vec() })
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        s.begin_op(self.epoch)?;
        let inode = s.inode(self.ino)?;
        for op in std::mem::take(&mut inode.unsynced) {
            apply(&mut inode.durable, &op);
        }
        Ok(())
    }
    fn start_writeback(&self, _offset: u64, len: u64) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        s.check_alive(self.epoch)?;
        s.writeback_hints.0 += 1;
        s.writeback_hints.1 += len;
        Ok(())
    }
    fn prepare_mapped(&self, offset: u64, len: u64) {
        let mut s = self.fs.state.lock();
        if s.check_alive(self.epoch).is_ok() {
            s.prepare_hints.0 += 1;
            s.prepare_hints.1 = s.prepare_hints.1.max(offset.saturating_add(len));
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.log(Unsynced::SetLen(len))
    }
    fn len(&self) -> io::Result<u64> {
        let mut s = self.fs.state.lock();
        s.check_alive(self.epoch)?;
        Ok(s.inode(self.ino)?.current.len() as u64)
    }
}

impl Vfs for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        s.check_alive(epoch)?;
        // Outermost first, as `mkdir -p` makes them.
        let missing: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty() && !s.dirs.iter().any(|d| d == a))
            .map(Path::to_path_buf)
            .collect();
        for d in missing.into_iter().rev() {
            if is_root(&d) {
                s.durable_dirs.push(d.clone());
            } else {
                s.begin_op(epoch)?;
            }
            s.dirs.push(d);
        }
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.state.lock();
        s.check_alive(s.epoch)?;
        if !s.dirs.iter().any(|d| d == dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<FileRef> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        match mode {
            OpenMode::Read | OpenMode::ReadWrite => {
                s.check_alive(epoch)?;
                let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
                Ok(self.handle(ino, epoch, mode == OpenMode::ReadWrite))
            }
            OpenMode::CreateNew => {
                s.begin_op(epoch)?;
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                if !s.dirs.contains(&parent) {
                    return Err(not_found(&parent));
                }
                if s.names.contains_key(path) {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
                }
                let ino = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(ino, Inode::default());
                s.names.insert(path.to_path_buf(), ino);
                Ok(self.handle(ino, epoch, true))
            }
        }
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        s.begin_op(epoch)?;
        s.names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        s.begin_op(epoch)?;
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        s.begin_op(epoch)?;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        s.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, u64)> =
            s.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        s.durable_names.extend(current);
        let made: Vec<PathBuf> =
            s.dirs.iter().filter(|d| in_dir(d) && !s.durable_dirs.contains(d)).cloned().collect();
        s.durable_dirs.extend(made);
        Ok(())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.state.lock();
        s.check_alive(s.epoch)?;
        Ok(s.names.contains_key(path) || s.dirs.iter().any(|d| d == path))
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        s.check_alive(epoch)?;
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked", path.display()),
            ));
        }
        Ok(LockGuard::new(SimLock { fs: self.clone(), path: path.to_path_buf(), epoch }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/d")
    }

    #[test]
    fn unsynced_data_and_entries_are_lost_on_power_loss() {
        let fs = SimFs::new();
        crate::create_dir_durable(&fs, &dir()).unwrap();
        let a = fs.open(&dir().join("a"), OpenMode::CreateNew).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        // The file's data is synced but its directory entry is not.
        fs.crash(CrashFate::LoseUnsynced);
        assert!(!fs.exists(&dir().join("a")).unwrap());

        let b = fs.open(&dir().join("b"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(&dir()).unwrap();
        b.write_all_at(b"one", 0).unwrap();
        b.sync_data().unwrap();
        b.write_all_at(b"two", 3).unwrap();
        fs.crash(CrashFate::LoseUnsynced);
        assert_eq!(fs.contents(&dir().join("b")).unwrap(), b"one");
        // Old handles are dead after a crash.
        assert!(b.read_at(&mut [0u8; 3], 0).is_err());
    }

    #[test]
    fn keep_all_models_a_process_kill() {
        let fs = SimFs::new();
        crate::create_dir_durable(&fs, &dir()).unwrap();
        let f = fs.open(&dir().join("f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        fs.crash(CrashFate::KeepAll);
        assert_eq!(fs.contents(&dir().join("f")).unwrap(), b"abc");
    }

    #[test]
    fn torn_keeps_a_prefix_of_unsynced_writes() {
        for seed in 0..50 {
            let fs = SimFs::new();
            crate::create_dir_durable(&fs, &dir()).unwrap();
            let f = fs.open(&dir().join("f"), OpenMode::CreateNew).unwrap();
            fs.sync_dir(&dir()).unwrap();
            f.write_all_at(b"aaaa", 0).unwrap();
            f.write_all_at(b"bbbb", 4).unwrap();
            fs.crash(CrashFate::Torn { seed });
            let got = fs.contents(&dir().join("f")).unwrap();
            assert!(b"aaaabbbb".starts_with(&got), "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn crash_point_and_faults_fail_exactly_where_asked() {
        let fs = SimFs::new();
        crate::create_dir_durable(&fs, &dir()).unwrap();
        let f = fs.open(&dir().join("f"), OpenMode::CreateNew).unwrap();
        fs.fail_op(2, FaultKind::Eio);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        fs.crash_after(1);
        f.write_all_at(b"y", 1).unwrap();
        assert!(f.write_all_at(b"z", 2).is_err());
        assert!(fs.has_crashed());
        assert!(f.len().is_err(), "a dead process reads nothing");
    }

    #[test]
    fn locks_are_exclusive_and_released_by_drop_or_crash() {
        let fs = SimFs::new();
        let guard = fs.lock(Path::new("/LOCK")).unwrap();
        assert_eq!(fs.lock(Path::new("/LOCK")).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        let _held = fs.lock(Path::new("/LOCK")).unwrap();
        fs.crash(CrashFate::KeepAll);
        assert!(fs.lock(Path::new("/LOCK")).is_ok(), "a crash releases the dead process's locks");
    }

    #[test]
    fn rename_is_durable_only_after_dir_sync() {
        let fs = SimFs::new();
        crate::create_dir_durable(&fs, &dir()).unwrap();
        let f = fs.open(&dir().join("tmp"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"v1", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        fs.rename(&dir().join("tmp"), &dir().join("final")).unwrap();
        fs.crash(CrashFate::LoseUnsynced);
        assert!(fs.exists(&dir().join("tmp")).unwrap());
        assert!(!fs.exists(&dir().join("final")).unwrap());
    }

    #[test]
    fn a_new_directory_survives_power_loss_only_once_its_parent_is_synced() {
        let fs = SimFs::new();
        crate::create_dir_durable(&fs, &dir()).unwrap();
        let sub = dir().join("a/b");
        fs.create_dir_all(&sub).unwrap();
        let f = fs.open(&sub.join("f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&sub).unwrap();
        // `b`'s entry is durable in `a`, but `a`'s is not in `/d`: both go, with `f`.
        fs.sync_dir(&dir().join("a")).unwrap();
        fs.crash(CrashFate::LoseUnsynced);
        assert!(!fs.exists(&dir().join("a")).unwrap());
        assert!(!fs.exists(&sub.join("f")).unwrap());
        assert!(fs.open(&sub.join("g"), OpenMode::CreateNew).is_err());

        // Made durable, the same survive.
        crate::create_dir_durable(&fs, &sub).unwrap();
        let f = fs.open(&sub.join("f"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&sub).unwrap();
        fs.crash(CrashFate::LoseUnsynced);
        assert_eq!(fs.contents(&sub.join("f")).unwrap(), b"x");
    }

    #[test]
    fn create_dir_durable_syncs_only_what_it_makes() {
        let fs = SimFs::new();
        let before = fs.ops();
        crate::create_dir_durable(&fs, &dir().join("a/b")).unwrap();
        // `/` is there; `/d`, `/d/a`, `/d/a/b` are made, and their three parents synced.
        assert_eq!(fs.ops() - before, 6);
        let before = fs.ops();
        crate::create_dir_durable(&fs, &dir().join("a/b")).unwrap();
        assert_eq!(fs.ops(), before);
        fs.crash(CrashFate::LoseUnsynced);
        assert!(fs.exists(&dir().join("a/b")).unwrap());
    }
}
