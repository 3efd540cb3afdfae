//! Sequential decoding of a segment's records: shared by recovery, replay and `verify`.

use std::io;

use bourse_fs::{FileRef, Mapping};

use crate::format::{
    record_crc, record_crc_whole, RecordHeader, SegmentHeader, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::{DamageKind, Lsn};

/// The first read of a scanner asks for at most this many bytes (see `Scanner::window`).
const FIRST_READ: usize = 4096;

/// One step of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A whole, checksummed record starts at `offset`; its payload is
    /// [`Scanner::payload`].
    Record { offset: u64, header: RecordHeader },
    /// Clean end of data at `offset` (end of file or an all-zero header).
    End { offset: u64 },
    /// Undecodable bytes at `offset`.
    Damage { offset: u64, kind: DamageKind },
}

/// Reads records one after another through a buffer of `chunk` bytes, or, made with
/// [`Scanner::mapped`] on a file system with maps, in place from a memory map of the
/// file (no copy per read: replay checks a record's checksum where the page cache holds
/// it, and hands out its payload from there).
pub(crate) struct Scanner {
    file: FileRef,
    /// The file's map in mapped mode; `buf`, `start`, `end`, `eof` and `window` are
    /// then unused, `buf_off` is the next record's offset and `payload` is in file
    /// offsets.
    map: Option<Mapping>,
    buf: Vec<u8>,
    buf_off: u64,
    start: usize,
    end: usize,
    eof: bool,
    chunk: usize,
    /// Bytes the next read asks for at most (beyond what a record needs): it starts
    /// small and doubles up to `chunk`, so that a reader that follows the log, and
    /// starts a scanner each time it catches up, reads about what was appended rather
    /// than a whole chunk of the pre-written segment's zeros.
    window: usize,
    max_record: usize,
    expect: Option<Lsn>,
    payload: (usize, usize),
}

impl Scanner {
    /// Starts at `offset`; `expect` is the LSN the first record must carry, if known.
    pub(crate) fn new(
        file: FileRef,
        offset: u64,
        chunk: usize,
        max_record: usize,
        expect: Option<Lsn>,
    ) -> Self {
        Self {
            file,
            map: None,
            buf: Vec::new(),
            buf_off: offset,
            start: 0,
            end: 0,
            eof: false,
            chunk: chunk.max(RECORD_HEADER_BYTES * 2),
            window: FIRST_READ.min(chunk),
            max_record,
            expect,
            payload: (0, 0),
        }
    }

    /// Like [`Scanner::new`], but reading in place from a map of the file when the file
    /// system has maps, and through the buffer otherwise: also when mapping fails (a
    /// file system that cannot map files, no address space left), since the buffered
    /// scanner reads the same records.
    ///
    /// Only for records that are finished when they are read and not changed while
    /// their payload is borrowed: a reader that stops at the last written LSN (the
    /// WAL's readers). Damage past the last written record, which recovery scans for
    /// while a segment may still be cut, is the buffered scanner's job.
    pub(crate) fn mapped(
        file: FileRef,
        offset: u64,
        chunk: usize,
        max_record: usize,
        expect: Option<Lsn>,
    ) -> Self {
        let map = file.map().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "WAL segment not mapped: reading it through the buffer");
            None
        });
        let mut s = Self::new(file, offset, chunk, max_record, expect);
        s.map = map;
        s
    }

    /// Takes over `old`'s buffer, if this scanner has none yet: a reader that follows
    /// the log replaces its scanner each time it catches up, and a new buffer would be
    /// allocated and zeroed every time.
    pub(crate) fn reuse_buffer(&mut self, old: Scanner) {
        if self.buf.is_empty() {
            self.buf = old.buf;
        }
    }

    /// Whether it reads in place from a map of the file.
    pub(crate) fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// The file offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.buf_off + self.start as u64
    }

    /// The payload of the record returned by the last [`Step::Record`].
    pub(crate) fn payload(&self) -> &[u8] {
        match &self.map {
            Some(map) => {
                let (from, to) = self.payload;
                in_place(map, from as u64, to - from).unwrap_or_default()
            }
            None => &self.buf[self.payload.0..self.payload.1],
        }
    }

    /// Whether the map holds the file's bytes up to `end`. A map covers the file as it
    /// was when mapped; a reader that reaches the end of a map of a growing segment
    /// (one written without pre-writing) gets `End` and starts a fresh scanner there
    /// (`WalReader::at_end`), which maps the file again.
    fn mapped_to(&self, end: u64) -> bool {
        self.map.as_ref().is_some_and(|m| end <= m.len() as u64)
    }

    /// Bytes `offset .. offset + len` of the map (mapped mode).
    fn mapped_bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        self.map.as_ref().and_then(|m| in_place(m, offset, len))
    }

    /// [`Scanner::next_step`] in mapped mode: the same steps, read in place.
    fn next_mapped(&mut self) -> io::Result<Step> {
        let offset = self.buf_off;
        if !self.mapped_to(offset + RECORD_HEADER_BYTES as u64) {
            // Less than a header left before the end of the file.
            let left = self.map.as_ref().map_or(0, |m| m.len() as u64).saturating_sub(offset);
            let rest = self.mapped_bytes(offset, left as usize).unwrap_or_default();
            return Ok(if rest.iter().all(|b| *b == 0) {
                Step::End { offset }
            } else {
                Step::Damage { offset, kind: DamageKind::TruncatedHeader }
            });
        }
        let Some(bytes) = self.mapped_bytes(offset, RECORD_HEADER_BYTES) else {
            return Ok(Step::Damage { offset, kind: DamageKind::TruncatedHeader });
        };
        let header = RecordHeader::decode(bytes);
        if header.is_zero() {
            return Ok(Step::End { offset });
        }
        let len = header.len as usize;
        if len > self.max_record {
            return Ok(Step::Damage { offset, kind: DamageKind::BadLength { len: header.len } });
        }
        let total = RECORD_HEADER_BYTES + len;
        if !self.mapped_to(offset + total as u64) {
            return Ok(Step::Damage { offset, kind: DamageKind::TruncatedPayload });
        }
        let Some(record) = self.mapped_bytes(offset, total) else {
            return Ok(Step::Damage { offset, kind: DamageKind::TruncatedPayload });
        };
        if let Some(kind) = record_damage(&header, record, self.expect) {
            return Ok(Step::Damage { offset, kind });
        }
        self.expect = Some(header.lsn.next());
        let body = (offset as usize) + RECORD_HEADER_BYTES;
        self.payload = (body, body + len);
        self.buf_off = offset + total as u64;
        Ok(Step::Record { offset, header })
    }

    /// Makes `n` bytes available from `start`; false if the file ends first.
    fn ensure(&mut self, n: usize) -> io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.buf_off += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        let want = n.max(self.chunk);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.end < n && !self.eof {
            let limit = (self.end + self.window.max(n - self.end)).min(self.buf.len());
            self.window = (self.window * 2).min(self.chunk);
            let got = self
                .file
                .read_at(&mut self.buf[self.end..limit], self.buf_off + self.end as u64)?;
            if got == 0 {
                self.eof = true;
            }
            self.end += got;
        }
        Ok(self.end - self.start >= n)
    }

    /// Decodes the next record.
    pub(crate) fn next_step(&mut self) -> io::Result<Step> {
        if self.map.is_some() {
            return self.next_mapped();
        }
        let offset = self.offset();
        if !self.ensure(RECORD_HEADER_BYTES)? {
            let rest = &self.buf[self.start..self.end];
            return Ok(if rest.iter().all(|b| *b == 0) {
                Step::End { offset }
            } else {
                Step::Damage { offset, kind: DamageKind::TruncatedHeader }
            });
        }
        let header = RecordHeader::decode(&self.buf[self.start..self.start + RECORD_HEADER_BYTES]);
        if header.is_zero() {
            return Ok(Step::End { offset });
        }
        let len = header.len as usize;
        if len > self.max_record {
            return Ok(Step::Damage { offset, kind: DamageKind::BadLength { len: header.len } });
        }
        if !self.ensure(RECORD_HEADER_BYTES + len)? {
            return Ok(Step::Damage { offset, kind: DamageKind::TruncatedPayload });
        }
        let body = self.start + RECORD_HEADER_BYTES;
        if let Some(kind) = record_damage(&header, &self.buf[self.start..body + len], self.expect) {
            return Ok(Step::Damage { offset, kind });
        }
        self.expect = Some(header.lsn.next());
        self.payload = (body, body + len);
        self.start = body + len;
        Ok(Step::Record { offset, header })
    }
}

/// What is wrong with a whole record (`record`: its header and payload, contiguous)
/// against its header: its checksum, then its LSN if `expect` names one.
fn record_damage(header: &RecordHeader, record: &[u8], expect: Option<Lsn>) -> Option<DamageKind> {
    let actual = record_crc_whole(record);
    if actual != header.crc {
        return Some(DamageKind::BadChecksum { expected: header.crc, actual });
    }
    match expect {
        Some(expected) if header.lsn != expected => {
            Some(DamageKind::UnexpectedLsn { expected, found: header.lsn })
        }
        _ => None,
    }
}

/// Bytes `offset .. offset + len` of a segment's map, for a mapped scanner.
fn in_place(map: &Mapping, offset: u64, len: usize) -> Option<&[u8]> {
    let offset = usize::try_from(offset).ok()?;
    #[allow(unsafe_code)]
    // SAFETY: a mapped scanner belongs to a `WalReader`, which reads a record only once
    // its LSN is written (so its bytes are finished) and, past the last record of a
    // segment, only segments the writer has left. The WAL never rewrites a finished
    // record or cuts a segment below one, except `Wal::truncate_after`, whose contract
    // excludes readers positioned after its cut; whole segments are removed by unlinking,
    // which leaves maps intact. The returned slice borrows the scanner, which ends the
    // borrow before it reads on.
    unsafe {
        map.bytes(offset, len)
    }
}

/// Looks for a whole, checksummed record with an LSN above `above` anywhere at or after
/// `from`. Used to tell a torn tail (nothing intact follows) from mid-log corruption.
pub(crate) fn find_intact_record(
    file: &FileRef,
    from: u64,
    above: Lsn,
    max_record: usize,
) -> io::Result<Option<(u64, Lsn)>> {
    const CHUNK: usize = 1 << 20;
    let len = file.len()?;
    let mut base = from;
    let span = usize::try_from(len.saturating_sub(from)).unwrap_or(CHUNK);
    let mut buf = vec![0u8; span.min(CHUNK + RECORD_HEADER_BYTES)];
    while base < len {
        let want = usize::try_from((len - base).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..want], base)?;
        let window = &buf[..want];
        // NOTE: pre-written segments end in long zero runs; skip them at memory speed.
        // (An OR over fixed blocks vectorizes; an early-exit byte loop does not.)
        let zero = window.chunks(4096).all(|c| c.iter().fold(0u8, |a, b| a | b) == 0);
        if !zero {
            let last = want.saturating_sub(RECORD_HEADER_BYTES - 1).min(CHUNK);
            for i in 0..last {
                let h = RecordHeader::decode(&window[i..]);
                if h.lsn <= above || h.lsn.0 - above.0 > (1 << 32) || h.len as usize > max_record {
                    continue;
                }
                let mut payload = vec![0u8; h.len as usize];
                let at = base + (i + RECORD_HEADER_BYTES) as u64;
                if file.read_exact_at(&mut payload, at).is_err() {
                    continue;
                }
                if record_crc(&window[i..], &payload) == h.crc {
                    return Ok(Some((base + i as u64, h.lsn)));
                }
            }
        }
        base += CHUNK as u64;
    }
    Ok(None)
}

/// What a full scan of one segment found.
#[derive(Debug, Clone)]
pub(crate) struct SegmentScan {
    /// Whole records in complete batches.
    pub records: u64,
    /// The last LSN of the last complete batch.
    pub last_lsn: Option<Lsn>,
    /// The offset just past the last complete batch.
    pub valid_end: u64,
    /// Where and why decoding stopped, when not at a clean end.
    pub damage: Option<(u64, DamageKind)>,
    /// The first intact record after the damage (or after a clean end inside the file).
    pub intact_after: Option<(u64, Lsn)>,
}

/// Scans a segment whose header says it starts at `header.first_lsn`.
pub(crate) fn scan_segment(
    file: &FileRef,
    header: SegmentHeader,
    chunk: usize,
    max_record: usize,
) -> io::Result<SegmentScan> {
    let start = SEGMENT_HEADER_BYTES as u64;
    let mut scanner = Scanner::new(file.clone(), start, chunk, max_record, Some(header.first_lsn));
    let mut scan = SegmentScan {
        records: 0,
        last_lsn: None,
        valid_end: start,
        damage: None,
        intact_after: None,
    };
    let mut in_batch = 0u64;
    let stop_at = loop {
        match scanner.next_step()? {
            Step::Record { header: h, .. } => {
                in_batch += 1;
                if h.is_batch_end() {
                    scan.records += in_batch;
                    in_batch = 0;
                    scan.last_lsn = Some(h.lsn);
                    scan.valid_end = scanner.offset();
                }
            }
            Step::End { offset } => {
                if in_batch > 0 {
                    scan.damage = Some((scan.valid_end, DamageKind::IncompleteBatch));
                }
                break offset;
            }
            Step::Damage { offset, kind } => {
                scan.damage = Some((offset, kind));
                break offset;
            }
        }
    };
    let above = scan.last_lsn.unwrap_or(Lsn(header.first_lsn.0.saturating_sub(1)));
    scan.intact_after = find_intact_record(file, stop_at + 1, above, max_record)?;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::Path;

    use bourse_fs::{OpenMode, SimFs, Vfs};

    use super::*;
    use crate::format::encode_record;

    /// A segment-like file: records with these payload sizes, then 1 MiB of zeros (a
    /// pre-written segment's unused part).
    fn file_with(sizes: &[usize]) -> FileRef {
        let fs = SimFs::new();
        let mut bytes = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            encode_record(&mut bytes, Lsn(i as u64 + 1), 0, 1, true, &vec![i as u8; *n]);
        }
        bytes.resize(bytes.len() + (1 << 20), 0);
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/seg"), OpenMode::CreateNew).unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        f
    }

    #[test]
    fn a_new_scanner_reads_little_then_more() {
        let f = file_with(&[100; 3]);
        let mut s = Scanner::new(f, 0, 256 << 10, 1 << 20, Some(Lsn(1)));
        assert!(matches!(s.next_step().unwrap(), Step::Record { .. }));
        // A reader that catches up starts a scanner each time: it must not read a
        // whole chunk of zeros to find one new record.
        assert_eq!(s.end, FIRST_READ, "the first read asks for {FIRST_READ} bytes");
        for lsn in 2..=3 {
            match s.next_step().unwrap() {
                Step::Record { header, .. } => assert_eq!(header.lsn, Lsn(lsn)),
                other => panic!("expected record {lsn}, got {other:?}"),
            }
        }
        assert!(matches!(s.next_step().unwrap(), Step::End { .. }));
    }

    #[test]
    fn records_larger_than_the_first_read_come_whole() {
        let sizes = [10, 3 * FIRST_READ, 50, 600 << 10, 7];
        let f = file_with(&sizes);
        let mut s = Scanner::new(f, 0, 256 << 10, 1 << 20, Some(Lsn(1)));
        for (i, n) in sizes.iter().enumerate() {
            assert!(matches!(s.next_step().unwrap(), Step::Record { .. }), "record {i}");
            assert_eq!(s.payload(), &vec![i as u8; *n][..]);
        }
        assert!(matches!(s.next_step().unwrap(), Step::End { .. }));
    }
}
