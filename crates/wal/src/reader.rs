//! Replay: read records in LSN order from any retained LSN, up to the last written one.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::format::SEGMENT_HEADER_BYTES;
use crate::scan::{Scanner, Step};
use crate::writer::{SegmentInfo, Shared};
use crate::{Error, Lsn, Result, Wal};

/// One record read back from the WAL; the payload borrows the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's LSN.
    pub lsn: Lsn,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// Opaque kind.
    pub kind: u16,
    /// Whether this record ends its batch.
    pub batch_end: bool,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads records in LSN order. [`WalReader::next_record`] returns `None` when the reader
/// has caught up with the last written LSN; calling it again later returns what was
/// written since, so a reader can follow the log.
pub struct WalReader {
    shared: Arc<Shared>,
    next: Lsn,
    segment: SegmentInfo,
    scanner: Scanner,
    /// Set after re-reading the active segment once at the current offset.
    retried: bool,
    /// Whether it maps its segments (when the file system can).
    mapped: bool,
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("next", &self.next)
            .field("segment", &self.segment.path)
            .finish()
    }
}

impl Wal {
    /// A reader positioned at `from`, which must be retained and at most one past the last
    /// written LSN. It reads in place through memory maps when
    /// [`crate::WalOptions::mmap_reads`] is set (the default) and the file system has
    /// them.
    pub fn read_from(&self, from: Lsn) -> Result<WalReader> {
        self.reader(from, self.shared.opts.mmap_reads)
    }

    /// Like [`Wal::read_from`], but always reading through the reader's buffer: a
    /// damaged disk then fails a read with an error naming the segment, where a mapped
    /// read would die of `SIGBUS`. For reads that must report such damage cleanly, as
    /// the replay when an engine opens.
    pub fn read_from_buffered(&self, from: Lsn) -> Result<WalReader> {
        self.reader(from, false)
    }

    fn reader(&self, from: Lsn, mapped: bool) -> Result<WalReader> {
        let shared = self.shared.clone();
        let last = Lsn(shared.written.load(Ordering::Acquire));
        let segment = {
            let segs = shared.segments.read();
            let first = segs.first().map(|s| s.first_lsn).unwrap_or_default();
            if from < first || from > last.next() {
                return Err(Error::OutOfRange { lsn: from, first, last });
            }
            let i = segs.partition_point(|s| s.first_lsn <= from).saturating_sub(1);
            segs[i].clone()
        };
        let scanner =
            new_scanner(&shared, &segment, SEGMENT_HEADER_BYTES as u64, segment.first_lsn, mapped);
        Ok(WalReader { shared, next: from, segment, scanner, retried: false, mapped })
    }
}

fn new_scanner(
    shared: &Shared,
    segment: &SegmentInfo,
    offset: u64,
    expect: Lsn,
    mapped: bool,
) -> Scanner {
    let opts = &shared.opts;
    let file = segment.file.clone();
    let (chunk, max) = (opts.read_chunk_bytes, opts.record_bytes_max);
    if mapped {
        Scanner::mapped(file, offset, chunk, max, Some(expect))
    } else {
        Scanner::new(file, offset, chunk, max, Some(expect))
    }
}

impl WalReader {
    /// The LSN the next record will carry.
    pub fn position(&self) -> Lsn {
        self.next
    }

    /// Whether the reader reads its current segment in place through a memory map
    /// ([`crate::WalOptions::mmap_reads`] on a file system with maps) rather than
    /// through its buffer.
    pub fn reads_in_place(&self) -> bool {
        self.scanner.is_mapped()
    }

    fn replace_scanner(&mut self, fresh: Scanner) {
        let old = std::mem::replace(&mut self.scanner, fresh);
        self.scanner.reuse_buffer(old);
    }

    /// The next record, or `None` when caught up with the last written LSN.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>> {
        let header = loop {
            if self.next.0 > self.shared.written.load(Ordering::Acquire) {
                return Ok(None);
            }
            match self.scanner.next_step().map_err(|source| Error::Io {
                op: "read segment",
                path: self.segment.path.clone(),
                source,
            })? {
                Step::Record { header, .. } if header.lsn < self.next => continue,
                Step::Record { header, .. } => break header,
                Step::End { offset } => self.at_end(offset, None)?,
                Step::Damage { offset, kind } => self.at_end(offset, Some(kind))?,
            }
        };
        self.next = header.lsn.next();
        self.retried = false;
        Ok(Some(Record {
            lsn: header.lsn,
            timestamp: header.timestamp,
            kind: header.kind,
            batch_end: header.is_batch_end(),
            payload: self.scanner.payload(),
        }))
    }

    /// The payload of the record the last [`WalReader::next_record`] returned, again
    /// (empty before the first record, and after a call that returned none). For a
    /// caller that hands the payload on after it has stopped borrowing the record.
    pub fn last_payload(&self) -> &[u8] {
        self.scanner.payload()
    }

    /// Calls `f` for every record up to the last written LSN; returns how many.
    pub fn for_each(&mut self, mut f: impl FnMut(Record<'_>)) -> Result<u64> {
        let mut n = 0;
        while let Some(r) = self.next_record()? {
            f(r);
            n += 1;
        }
        Ok(n)
    }

    /// The scanner stopped although `self.next` is written. First re-read the current
    /// segment from here: its buffer may hold bytes from before the latest writes (even if
    /// the log has rotated since), and its map may end before them (a segment that grows
    /// with its appends). If it stops at the same place again, move to the next
    /// segment when it continues the sequence, or report corruption.
    fn at_end(&mut self, offset: u64, damage: Option<crate::DamageKind>) -> Result<()> {
        if !self.retried {
            self.retried = true;
            let fresh = new_scanner(&self.shared, &self.segment, offset, self.next, self.mapped);
            self.replace_scanner(fresh);
            return Ok(());
        }
        let next_segment = {
            let segs = self.shared.segments.read();
            segs.iter().find(|s| s.first_lsn > self.segment.first_lsn).cloned()
        };
        match next_segment {
            Some(seg) if damage.is_none() => {
                if seg.first_lsn != self.next {
                    return Err(Error::Gap {
                        segment: seg.path,
                        expected: self.next,
                        found: seg.first_lsn,
                    });
                }
                let at = SEGMENT_HEADER_BYTES as u64;
                let fresh = new_scanner(&self.shared, &seg, at, seg.first_lsn, self.mapped);
                self.replace_scanner(fresh);
                self.segment = seg;
                self.retried = false;
                Ok(())
            }
            _ => Err(Error::Corrupt {
                segment: self.segment.path.clone(),
                offset,
                kind: damage.unwrap_or(crate::DamageKind::UnexpectedLsn {
                    expected: self.next,
                    found: Lsn(0),
                }),
            }),
        }
    }
}
