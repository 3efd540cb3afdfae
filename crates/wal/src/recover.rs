//! Opening a WAL: find the segments, repair a torn tail, resume appending.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bourse_fs::{FileRef, OpenMode, Vfs};

use crate::format::{self, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::options::{Preallocate, RecoveryMode};
use crate::scan::{find_intact_record, scan_segment};
use crate::segment::{create_segment_file, map_appends, SPARE_READY_NAME};
use crate::writer::{Active, Recovered, RecoveryReport, SegmentInfo, State, TailCut};
use crate::{io_err, DamageKind, Error, Lsn, Result, Wal, WalOptions};

/// The lock file that keeps a second writer out of the directory.
pub(crate) const LOCK_NAME: &str = "LOCK";

/// The segment files of a directory, oldest first.
pub(crate) fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let names = vfs.list_dir(dir).map_err(io_err("list directory", dir))?;
    let mut segments: Vec<(Lsn, PathBuf)> = names
        .iter()
        .filter_map(|n| format::parse_segment_file_name(n).map(|lsn| (lsn, dir.join(n))))
        .collect();
    segments.sort();
    Ok(segments)
}

/// Reads and checks a segment header; the error names the segment.
pub(crate) fn read_header(file: &FileRef, path: &Path, named: Lsn) -> Result<SegmentHeader> {
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    let n = file.read_at(&mut buf, 0).map_err(io_err("read segment header", path))?;
    let bad = |problem: String| Error::BadSegmentHeader { segment: path.to_path_buf(), problem };
    let header = SegmentHeader::decode(&buf[..n]).map_err(|p| bad(format!("{p:?}")))?;
    if header.first_lsn != named {
        return Err(bad(format!("header says first LSN {}, name says {named}", header.first_lsn)));
    }
    Ok(header)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` and recovers it.
    ///
    /// Recovery rules:
    /// - Leftover temporary files (an unfinished segment creation, a spare) are removed.
    /// - Every segment header is checked; a bad header is an error, except in the newest
    ///   segment when no intact record follows it (a torn segment creation): that
    ///   segment is removed and reported.
    /// - The newest segment is scanned. Damage at its tail that no intact record follows
    ///   (a torn write, or a batch without its last record) is cut off, synced and
    ///   reported in [`Wal::recovery`]. Damage followed by an intact record is corruption:
    ///   [`Error::Corrupt`] names the segment and offset (unless
    ///   [`RecoveryMode::Salvage`] is set).
    /// - The newest segment is then synced, so that records written to the OS before a
    ///   process crash become durable before anything is built on them.
    ///
    /// Older segments were synced before the log rotated past them, so damage in them is
    /// always corruption; it is found by replay and by [`crate::verify_dir`].
    pub fn open(vfs: Arc<dyn Vfs>, dir: impl Into<PathBuf>, opts: WalOptions) -> Result<Wal> {
        opts.validate()?;
        let dir = dir.into();
        bourse_fs::create_dir_durable(&*vfs, &dir).map_err(io_err("create directory", &dir))?;
        let lock = vfs.lock(&dir.join(LOCK_NAME)).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::Locked { dir: dir.clone() },
            _ => Error::Io { op: "lock directory", path: dir.join(LOCK_NAME), source: e },
        })?;
        remove_temporaries(&*vfs, &dir)?;
        let spare_ready = keep_spare(&*vfs, &dir, &opts)?;
        let mut report = RecoveryReport::default();
        let mut segments = Vec::new();
        for (lsn, path) in list_segments(&*vfs, &dir)? {
            let file =
                vfs.open(&path, OpenMode::ReadWrite).map_err(io_err("open segment", &path))?;
            segments.push(SegmentInfo { first_lsn: lsn, path, file });
        }
        // A torn creation of the newest segment leaves a bad header and nothing intact.
        // Only the newest may be removed; its first LSN is kept as the next LSN.
        let mut resume_at = opts.first_lsn;
        if let Some(newest) = segments.last() {
            if let Err(e) = read_header(&newest.file, &newest.path, newest.first_lsn) {
                let max = opts.record_bytes_max;
                let intact = find_intact_record(&newest.file, 0, Lsn(0), max)
                    .map_err(io_err("scan", &newest.path))?;
                if intact.is_some() {
                    return Err(e);
                }
                let bytes = newest.file.len().map_err(io_err("stat", &newest.path))?;
                vfs.remove_file(&newest.path)
                    .map_err(io_err("remove torn segment", &newest.path))?;
                vfs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
                report.cuts.push(TailCut {
                    segment: newest.path.clone(),
                    offset: 0,
                    bytes,
                    reason: e.to_string(),
                });
                resume_at = newest.first_lsn;
                segments.pop();
            }
        }
        for s in segments.iter().rev().skip(1) {
            read_header(&s.file, &s.path, s.first_lsn)?;
        }
        let shared_opts = opts.clone();
        let (active, last) = match segments.last() {
            Some(newest) => recover_newest(newest, &shared_opts, &mut report)?,
            None => {
                let first = resume_at;
                let active = create_first_segment(&*vfs, &dir, &opts, first)?;
                segments.push(SegmentInfo {
                    first_lsn: first,
                    path: active.path.clone(),
                    file: active.file.clone(),
                });
                (active, Lsn(first.0 - 1))
            }
        };
        report.segments = segments.len();
        report.first_lsn = segments.first().map(|s| s.first_lsn).unwrap_or(opts.first_lsn);
        report.last_lsn = last;
        for cut in &report.cuts {
            tracing::warn!(segment = %cut.segment.display(), offset = cut.offset, bytes = cut.bytes, reason = %cut.reason, "WAL torn tail cut");
        }
        tracing::info!(dir = %dir.display(), segments = report.segments, first = %report.first_lsn, last = %last, "WAL opened");
        let state = State::new(last.next(), active);
        let recovered = Recovered { state, segments, report, spare_ready };
        Ok(Wal::from_parts(vfs, dir, opts, recovered, lock))
    }
}

/// Keeps the ready spare an earlier process left (removing a synced file of a segment's
/// size costs about half a second per GiB, and pre-writing it again the same I/O) when
/// this WAL pre-writes in the background and the spare has its segment size; removes it
/// otherwise. Returns whether one was kept. A ready spare may hold a segment header
/// (a rotation that crashed before its rename was durable): rotation writes the header
/// again, and no record is ever written before the rename.
fn keep_spare(vfs: &dyn Vfs, dir: &Path, opts: &WalOptions) -> Result<bool> {
    let path = dir.join(SPARE_READY_NAME);
    if !vfs.exists(&path).map_err(io_err("stat spare", &path))? {
        return Ok(false);
    }
    if opts.preallocate == Preallocate::PreWrite {
        let file = vfs.open(&path, OpenMode::Read).map_err(io_err("open spare", &path))?;
        if file.len().map_err(io_err("stat spare", &path))? == opts.segment_bytes {
            return Ok(true);
        }
    }
    vfs.remove_file(&path).map_err(io_err("remove spare", &path))?;
    vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    Ok(false)
}

fn remove_temporaries(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let mut removed = false;
    for name in vfs.list_dir(dir).map_err(io_err("list directory", dir))? {
        if name.ends_with(".wal.tmp") {
            let path = dir.join(&name);
            vfs.remove_file(&path).map_err(io_err("remove temporary", &path))?;
            removed = true;
        }
    }
    if removed {
        vfs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
    }
    Ok(())
}

/// Scans the newest segment, cuts a torn tail, syncs it; returns where appends resume.
fn recover_newest(
    newest: &SegmentInfo,
    opts: &WalOptions,
    report: &mut RecoveryReport,
) -> Result<(Active, Lsn)> {
    let path = &newest.path;
    let header = read_header(&newest.file, path, newest.first_lsn)?;
    let scan = scan_segment(&newest.file, header, opts.read_chunk_bytes, opts.record_bytes_max)
        .map_err(io_err("scan segment", path))?;
    let last = scan.last_lsn.unwrap_or(Lsn(header.first_lsn.0 - 1));
    if let Some((intact_off, intact_lsn)) = scan.intact_after {
        if opts.recovery == RecoveryMode::TolerateTornTail {
            let (offset, kind) = scan.damage.unwrap_or((
                scan.valid_end,
                DamageKind::UnexpectedLsn { expected: last.next(), found: intact_lsn },
            ));
            tracing::error!(segment = %path.display(), offset, intact_off, "intact record after damage");
            return Err(Error::Corrupt { segment: path.clone(), offset, kind });
        }
    }
    let file_len = newest.file.len().map_err(io_err("stat", path))?;
    if scan.damage.is_some() || scan.intact_after.is_some() {
        let reason = match scan.damage {
            Some((off, kind)) => format!("{kind} at offset {off}"),
            None => "records after zeroed bytes (salvage)".to_string(),
        };
        newest.file.set_len(scan.valid_end).map_err(io_err("truncate torn tail", path))?;
        report.cuts.push(TailCut {
            segment: path.clone(),
            offset: scan.valid_end,
            bytes: file_len - scan.valid_end,
            reason,
        });
    }
    // IMPORTANT: what a killed process handed to the OS must be durable before the engine
    // builds on it.
    newest.file.sync_data().map_err(io_err("fdatasync", path))?;
    // A segment of the configured size, not cut, with pre-writing on: the WAL pre-wrote
    // it, so its every block is written and appends may go through a map.
    let prewritten = opts.preallocate != Preallocate::None
        && report.cuts.iter().all(|c| &c.segment != path)
        && file_len == opts.segment_bytes;
    if prewritten {
        map_appends(&newest.file, path, opts);
    }
    let active = Active {
        first_lsn: header.first_lsn,
        path: path.clone(),
        file: newest.file.clone(),
        offset: scan.valid_end,
        writeback_from: scan.valid_end,
        prepared_to: 0,
        prewritten,
    };
    Ok((active, last))
}

/// Creates the first segment of a new WAL, pre-written when preallocation is on. (Not
/// pre-writing it made a fresh `open` with 1 GiB segments take 0.02 s instead of 2.6 s,
/// but the spare's zeros then went to disk during the first seconds of appends, to a
/// segment that grew: submits of 14-121 ms, and half the throughput, in the twenty-eighth
/// session's runs. A start-up wait is the better place for them.)
fn create_first_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &WalOptions,
    first: Lsn,
) -> Result<Active> {
    let mut inline = opts.clone();
    if inline.preallocate == Preallocate::PreWrite {
        inline.preallocate = Preallocate::PreWriteInline;
    }
    create_segment_file(vfs, dir, &inline, first, None)
}
