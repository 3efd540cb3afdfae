//! The operating system's file system.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

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
struct RealFile(File);

impl VfsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: `sync_file_range` takes a descriptor and three integers and touches no
        // memory of ours; the descriptor stays open while `self` lives.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn map(&self) -> io::Result<Option<crate::Mapping>> {
        crate::Mapping::of(&self.0, self.len()?)
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
        Ok(Arc::new(RealFile(opts.open(path)?)))
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

    use super::*;

    /// The writeback hint on a real file: accepted for written ranges, for ranges past
    /// the end and for offsets the system call cannot take, and it changes no byte.
    #[test]
    fn start_writeback_is_a_harmless_hint() {
        let dir = std::env::temp_dir().join(format!("bourse-fs-writeback-{}", std::process::id()));
        let fs = RealFs;
        fs.create_dir_all(&dir).unwrap();
        let path = dir.join("big");
        let _ = fs.remove_file(&path);
        let f = fs.open(&path, OpenMode::CreateNew).unwrap();
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
        drop(f);
        fs.remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }
}
