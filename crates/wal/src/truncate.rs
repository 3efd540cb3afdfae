//! Truncation at either end: checkpoints (`truncate_before`) and discarding an
//! unreplicated tail (`truncate_after`).

use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use crate::format::{
    record_crc, RecordHeader, FLAG_BATCH_END, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::scan::{Scanner, Step};
use crate::segment::{create_segment_file, sync_dir};
use crate::writer::{Active, SegmentInfo, Shared};
use crate::{io_err, Error, Lsn, Result, Wal};

impl Wal {
    /// Deletes whole segments all of whose records are below `lsn`. Never deletes the
    /// active segment or any record at or after `lsn`. Segments go oldest first, each
    /// removal made durable before the next, so a crash leaves a contiguous suffix.
    /// Returns how many segments were deleted.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let shared = &*self.shared;
        let mut segs = shared.segments.write();
        let mut removed = 0;
        while segs.len() > 1 && segs[1].first_lsn <= lsn {
            let path = segs[0].path.clone();
            shared.vfs.remove_file(&path).map_err(io_err("remove segment", &path))?;
            sync_dir(&*shared.vfs, &shared.dir, &shared.opts)?;
            segs.remove(0);
            removed += 1;
            tracing::info!(segment = %path.display(), below = %lsn, "WAL segment removed");
        }
        Ok(removed)
    }

    /// Discards every record after `lsn` (for a tail that was never replicated), so the
    /// next append gets `lsn + 1`. Waits for in-flight appends to be written first. Must
    /// not race with readers positioned after `lsn` (readers may read the segment in
    /// place through a memory map, so a cut under one is not only a wrong answer). A batch cut in the middle keeps its
    /// records up to `lsn`, which become a batch of their own.
    pub fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        loop {
            if let Some(cause) = &st.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if !st.io_busy() && !st.has_pending() {
                break;
            }
            if st.has_pending() {
                shared.step_write(&mut st);
            } else {
                shared.cond.wait(&mut st);
            }
        }
        if lsn >= st.written {
            return Ok(());
        }
        let first = self.first_lsn();
        if lsn.0 + 1 < first.0 {
            return Err(Error::OutOfRange { lsn, first, last: st.written });
        }
        // Both flags: no round may start while the tail is cut.
        st.write_busy = true;
        st.sync_busy = true;
        drop(st.active.take());
        let result = MutexGuard::unlocked(&mut st, || shared.cut_after(lsn));
        let outcome = match result {
            Ok(active) => {
                st.seg_fill = active.offset;
                st.active_prewritten = active.prewritten;
                st.tail_file = active.tail();
                st.active = Some(active);
                st.next_lsn = lsn.next();
                st.written = lsn;
                st.synced = lsn;
                shared.written.store(lsn.0, Ordering::Release);
                shared.publish_durable(lsn);
                Ok(())
            }
            Err(e) => {
                st.poisoned = Some(e.to_string());
                Err(e)
            }
        };
        st.write_busy = false;
        st.sync_busy = false;
        shared.cond.notify_all();
        outcome
    }
}

impl Shared {
    /// Removes segments after `lsn` (newest first), then cuts the segment holding `lsn`
    /// right after it; returns the new active segment.
    fn cut_after(&self, lsn: Lsn) -> Result<Active> {
        let mut segs = self.segments.write();
        while let Some(last) = segs.last().cloned() {
            if last.first_lsn <= lsn {
                break;
            }
            self.vfs.remove_file(&last.path).map_err(io_err("remove segment", &last.path))?;
            self.sync_dir()?;
            segs.pop();
            tracing::info!(segment = %last.path.display(), after = %lsn, "WAL segment removed");
        }
        let Some(seg) = segs.last().cloned() else {
            // Everything was after `lsn`: start an empty log at `lsn + 1`.
            let active = create_segment_file(&*self.vfs, &self.dir, &self.opts, lsn.next(), None)?;
            segs.push(SegmentInfo {
                first_lsn: active.first_lsn,
                path: active.path.clone(),
                file: active.file.clone(),
            });
            return Ok(active);
        };
        let (offset, header) = self.find_record(&seg, lsn)?;
        let end = offset + (RECORD_HEADER_BYTES + header.len as usize) as u64;
        let path = &seg.path;
        if !header.is_batch_end() {
            // Make `lsn` the end of its batch first: a crash before the cut then leaves
            // the old records intact rather than an unterminated batch.
            let mut rec = vec![0u8; RECORD_HEADER_BYTES + header.len as usize];
            seg.file.read_exact_at(&mut rec, offset).map_err(io_err("read record", path))?;
            let flags = header.flags | FLAG_BATCH_END;
            rec[26..28].copy_from_slice(&flags.to_le_bytes());
            let crc = record_crc(&rec, &rec[RECORD_HEADER_BYTES..]);
            rec[0..4].copy_from_slice(&crc.to_le_bytes());
            seg.file
                .write_all_at(&rec[..RECORD_HEADER_BYTES], offset)
                .map_err(io_err("rewrite record", path))?;
            seg.file.sync_data().map_err(io_err("fdatasync", path))?;
        }
        seg.file.set_len(end).map_err(io_err("truncate segment", path))?;
        seg.file.sync_data().map_err(io_err("fdatasync", path))?;
        Ok(Active {
            first_lsn: seg.first_lsn,
            path: seg.path.clone(),
            file: seg.file.clone(),
            offset: end,
            writeback_from: end,
            prepared_to: 0,
            // Cut to its end: appends grow it.
            prewritten: false,
        })
    }

    fn find_record(&self, seg: &SegmentInfo, lsn: Lsn) -> Result<(u64, RecordHeader)> {
        let opts = &self.opts;
        let start = SEGMENT_HEADER_BYTES as u64;
        let mut scanner = Scanner::new(
            seg.file.clone(),
            start,
            opts.read_chunk_bytes,
            opts.record_bytes_max,
            Some(seg.first_lsn),
        );
        loop {
            match scanner.next_step().map_err(io_err("read segment", &seg.path))? {
                Step::Record { offset, header } if header.lsn == lsn => {
                    return Ok((offset, header))
                }
                Step::Record { .. } => {}
                Step::End { offset } => {
                    let kind = crate::DamageKind::UnexpectedLsn { expected: lsn, found: Lsn(0) };
                    return Err(Error::Corrupt { segment: seg.path.clone(), offset, kind });
                }
                Step::Damage { offset, kind } => {
                    return Err(Error::Corrupt { segment: seg.path.clone(), offset, kind });
                }
            }
        }
    }
}
