//! Creating segment files, and the background thread that pre-writes the next one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bourse_fs::{FileRef, OpenMode, Vfs};

use crate::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::options::Preallocate;
use crate::writer::{Active, Shared};
use crate::{io_err, Lsn, Result, WalOptions};

/// The spare segment while it is being zero-filled (`Preallocate::PreWrite`).
pub(crate) const SPARE_NAME: &str = "spare.wal.tmp";

/// The zero-filled, synced spare, ready for the next rotation: renamed from
/// [`SPARE_NAME`] only after its `fdatasync`, so a file by this name is whole. It
/// outlives the process: the next open keeps it when it has the configured size.
pub(crate) const SPARE_READY_NAME: &str = "spare.wal.ready";

impl Shared {
    /// Creates and publishes the segment that starts at `first`, from the spare when
    /// one is ready.
    pub(crate) fn create_segment(&self, first: Lsn) -> Result<Active> {
        let spare = {
            let mut s = self.spare.lock();
            self.spare_ready.store(false, Ordering::Release);
            std::mem::take(&mut s.ready)
        };
        let spare_path = spare.then(|| self.dir.join(SPARE_READY_NAME));
        let active = create_segment_file(&*self.vfs, &self.dir, &self.opts, first, spare_path)?;
        {
            let mut s = self.spare.lock();
            if spare {
                s.needed = true;
            }
            // The next spare waits for this segment to fill (a build already under way
            // goes on), unless the segment is not pre-written: the log moves to the
            // next spare as soon as it is ready (`Shared::rotate_early`).
            s.held = active.prewritten && active.offset < self.opts.spare_start_bytes();
            if !s.held {
                self.spare_cond.notify_all();
            }
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(active)
    }

    /// The background thread of `Preallocate::PreWrite`: keeps one zero-filled, synced
    /// spare segment ready for the next rotation, drops the write maps of sealed
    /// segments (see `Shared::retire_map`), starts the writeback write rounds ask for
    /// (`WalOptions::writeback_bytes`) and maps in the pages they will write next
    /// (`Shared::prepare_ahead`).
    pub(crate) fn prepare_spares(&self) {
        bourse_fs::lower_thread_priority(self.opts.background_nice, "WAL background thread");
        self.spare.lock().worker = true;
        loop {
            let (unmap, writeback, prepare, build) = {
                let mut s = self.spare.lock();
                while !s.shutdown
                    && s.unmap.is_empty()
                    && s.writeback.is_none()
                    && s.prepare.is_none()
                    && (!s.needed || s.deferred || s.held)
                {
                    self.spare_cond.wait(&mut s);
                }
                if s.shutdown {
                    s.worker = false;
                    return;
                }
                let build = s.needed && !s.deferred && !s.held;
                if build {
                    s.needed = false;
                }
                (std::mem::take(&mut s.unmap), s.writeback.take(), s.prepare.take(), build)
            };
            // First: the writes are about to reach these pages.
            if let Some((file, from, to)) = prepare {
                file.prepare_mapped(from, to - from);
            }
            for file in unmap {
                file.unmap_writes();
            }
            if let Some((file, from, to)) = writeback {
                crate::writer::hint_writeback(&file, from, to);
            }
            if build {
                match self.build_spare() {
                    Ok(()) => {
                        self.spare.lock().ready = true;
                        self.spare_ready.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not pre-write a spare WAL segment")
                    }
                }
            }
        }
    }

    fn build_spare(&self) -> Result<()> {
        let path = self.dir.join(SPARE_NAME);
        if self.vfs.exists(&path).map_err(io_err("stat spare", &path))? {
            self.vfs.remove_file(&path).map_err(io_err("remove spare", &path))?;
        }
        let file =
            self.vfs.open(&path, OpenMode::CreateNew).map_err(io_err("create spare", &path))?;
        zero_fill(&file, &path, self.opts.segment_bytes)?;
        file.sync_data().map_err(io_err("fdatasync spare", &path))?;
        // Named ready only once whole and synced. The rename need not be durable: a
        // crash that loses it leaves the `.tmp` name, which the next open removes.
        let ready = self.dir.join(SPARE_READY_NAME);
        self.vfs.rename(&path, &ready).map_err(io_err("rename spare", &ready))
    }
}

/// `fsync`s the WAL directory (unless a canary skips it).
pub(crate) fn sync_dir(vfs: &dyn Vfs, dir: &Path, opts: &WalOptions) -> Result<()> {
    if opts.canary.skip_dir_sync {
        return Ok(());
    }
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))
}

/// Creates the segment file that starts at `first` and publishes it:
/// (pre-write) → header → fdatasync → rename into place → fsync the directory.
/// `spare` is a zero-filled, synced file to use instead of a new one.
pub(crate) fn create_segment_file(
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &WalOptions,
    first: Lsn,
    spare: Option<PathBuf>,
) -> Result<Active> {
    let name = format::segment_file_name(first);
    let path = dir.join(&name);
    let prewritten = spare.is_some() || opts.preallocate == Preallocate::PreWriteInline;
    let (tmp, file) = match spare {
        Some(tmp) => {
            let file = vfs.open(&tmp, OpenMode::ReadWrite).map_err(io_err("open spare", &tmp))?;
            (tmp, file)
        }
        None => {
            let tmp = dir.join(format!("{name}.tmp"));
            let file =
                vfs.open(&tmp, OpenMode::CreateNew).map_err(io_err("create segment", &tmp))?;
            if opts.preallocate == Preallocate::PreWriteInline {
                zero_fill(&file, &tmp, opts.segment_bytes)?;
            }
            (tmp, file)
        }
    };
    let header = SegmentHeader { first_lsn: first }.encode();
    file.write_all_at(&header, 0).map_err(io_err("write segment header", &tmp))?;
    file.sync_data().map_err(io_err("fdatasync", &tmp))?;
    vfs.rename(&tmp, &path).map_err(io_err("rename segment", &path))?;
    // IMPORTANT: the new name must be durable before any record in it is acknowledged.
    sync_dir(vfs, dir, opts)?;
    if prewritten {
        map_appends(&file, &path, opts);
    }
    let offset = SEGMENT_HEADER_BYTES as u64;
    Ok(Active {
        first_lsn: first,
        path,
        file,
        offset,
        writeback_from: offset,
        prepared_to: 0,
        prewritten,
    })
}

/// Maps a pre-written segment, so that small write rounds can copy into it rather
/// than call `pwrite` ([`WalOptions::map_appends`]; which rounds do is the write
/// round's choice). Every block of the file is written, so no append through the map
/// needs space the disk may not have. A map that cannot be made costs only speed: it is
/// logged, and appends go through `pwrite`.
pub(crate) fn map_appends(file: &FileRef, path: &Path, opts: &WalOptions) {
    if !opts.map_appends {
        return;
    }
    if let Err(e) = file.map_writes() {
        tracing::warn!(segment = %path.display(), error = %e, "cannot map the WAL segment; appends use pwrite");
    }
}

/// Writes `len` zero bytes from the start of `file` (pre-writing a segment).
pub(crate) fn zero_fill(file: &FileRef, path: &Path, len: u64) -> Result<()> {
    // NOTE: small steps on purpose. The page cache sizes its folios by the write that
    // creates them; pre-writing in 1 MiB writes left large folios behind, and every
    // small append into one then walked all of its block buffers (ext4 on Linux 6.x):
    // a 128-byte pwrite cost 2.2 µs instead of 0.86 µs.
    const STEP: usize = 16 << 10;
    // Written back a mebibyte at a time, so that the final sync of a 1 GiB segment does
    // not put it all in the device's queue at once, ahead of the live segment's syncs.
    const WRITEBACK: u64 = 1 << 20;
    let zeros = vec![0u8; STEP];
    let mut off = 0u64;
    let mut started = 0u64;
    while off < len {
        let n = usize::try_from((len - off).min(STEP as u64)).unwrap_or(STEP);
        file.write_all_at(&zeros[..n], off).map_err(io_err("pre-write segment", path))?;
        off += n as u64;
        if off - started >= WRITEBACK {
            file.start_writeback(started, off - started)
                .map_err(io_err("start writeback", path))?;
            started = off;
        }
    }
    Ok(())
}
