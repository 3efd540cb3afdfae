//! Offline checks and dumps (`bourse verify`, `bourse inspect wal`). Read-only.

use std::path::{Path, PathBuf};

use bourse_fs::{OpenMode, Vfs};

use crate::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::recover::{list_segments, read_header};
use crate::scan::{scan_segment, Scanner, Step};
use crate::{io_err, DamageKind, Lsn, Result, WalOptions};

/// What `verify_dir` found in one segment.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    /// The segment file.
    pub path: PathBuf,
    /// First LSN (from the name).
    pub first_lsn: Lsn,
    /// Last LSN of the last complete batch, if any.
    pub last_lsn: Option<Lsn>,
    /// Records in complete batches.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// What is wrong, if anything.
    pub problem: Option<String>,
    /// True when the problem is a torn tail of the newest segment, which recovery cuts.
    pub tolerated: bool,
}

/// What `verify_dir` found in a WAL directory.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Every segment, oldest first.
    pub segments: Vec<SegmentReport>,
}

impl VerifyReport {
    /// True when no segment has a problem recovery would not tolerate.
    pub fn is_clean(&self) -> bool {
        self.segments.iter().all(|s| s.problem.is_none() || s.tolerated)
    }
    /// Total records in complete batches.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
}

/// Checks every segment of the WAL in `dir` without changing anything: headers,
/// checksums, LSN continuity inside and across segments, batch completeness. Damage at
/// the tail of the newest segment that no intact record follows is reported as
/// tolerated; anything else is a problem naming the segment and offset.
pub fn verify_dir(vfs: &dyn Vfs, dir: &Path, opts: &WalOptions) -> Result<VerifyReport> {
    let segments = list_segments(vfs, dir)?;
    let mut report = VerifyReport::default();
    let mut expected: Option<Lsn> = None;
    for (i, (first, path)) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let file = vfs.open(path, OpenMode::Read).map_err(io_err("open segment", path))?;
        let bytes = file.len().map_err(io_err("stat", path))?;
        let mut seg = SegmentReport {
            path: path.clone(),
            first_lsn: *first,
            last_lsn: None,
            records: 0,
            bytes,
            problem: None,
            tolerated: false,
        };
        match read_header(&file, path, *first) {
            Err(e) => {
                seg.problem = Some(e.to_string());
                expected = None;
            }
            Ok(header) => {
                if let Some(exp) = expected.filter(|e| *e != *first) {
                    seg.problem =
                        Some(format!("gap: LSN {exp} expected, segment starts at {first}"));
                }
                let scan =
                    scan_segment(&file, header, opts.read_chunk_bytes, opts.record_bytes_max)
                        .map_err(io_err("scan segment", path))?;
                seg.records = scan.records;
                seg.last_lsn = scan.last_lsn;
                if seg.problem.is_none() {
                    (seg.problem, seg.tolerated) = classify(&scan, newest);
                }
                // NOTE: after a damaged segment the next one is not also reported as a gap.
                expected = seg.problem.is_none().then(|| scan.last_lsn.map_or(*first, Lsn::next));
            }
        }
        report.segments.push(seg);
    }
    Ok(report)
}

fn classify(scan: &crate::scan::SegmentScan, newest: bool) -> (Option<String>, bool) {
    match (scan.damage, scan.intact_after) {
        (None, None) => (None, false),
        (Some((off, kind)), None) => (Some(format!("{kind} at offset {off}")), newest),
        (Some((off, kind)), Some((at, lsn))) => (
            Some(format!("{kind} at offset {off}, yet record LSN {lsn} is intact at offset {at}")),
            false,
        ),
        (None, Some((at, lsn))) => (
            Some(format!(
                "data ends at offset {}, yet record LSN {lsn} is intact at offset {at}",
                scan.valid_end
            )),
            false,
        ),
    }
}

/// One record as `inspect_segment` shows it.
#[derive(Debug, Clone, Copy)]
pub struct InspectedRecord<'a> {
    /// Byte offset of the record header.
    pub offset: u64,
    /// LSN.
    pub lsn: Lsn,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// Opaque kind.
    pub kind: u16,
    /// Whether the record ends its batch.
    pub batch_end: bool,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads one segment file: returns its header and calls `f` for every decodable record;
/// the returned damage says where and why decoding stopped before a clean end.
pub fn inspect_segment(
    vfs: &dyn Vfs,
    path: &Path,
    mut f: impl FnMut(&InspectedRecord<'_>),
) -> Result<(SegmentHeader, Option<(u64, DamageKind)>)> {
    let file = vfs.open(path, OpenMode::Read).map_err(io_err("open segment", path))?;
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    let n = file.read_at(&mut buf, 0).map_err(io_err("read header", path))?;
    let header = SegmentHeader::decode(&buf[..n]).map_err(|p| crate::Error::BadSegmentHeader {
        segment: path.to_path_buf(),
        problem: format!("{p:?}"),
    })?;
    let opts = WalOptions::default();
    let mut scanner = Scanner::new(
        file,
        SEGMENT_HEADER_BYTES as u64,
        opts.read_chunk_bytes,
        opts.record_bytes_max,
        Some(header.first_lsn),
    );
    loop {
        match scanner.next_step().map_err(io_err("read segment", path))? {
            Step::Record { offset, header: h } => f(&InspectedRecord {
                offset,
                lsn: h.lsn,
                timestamp: h.timestamp,
                kind: h.kind,
                batch_end: h.is_batch_end(),
                payload: scanner.payload(),
            }),
            Step::End { .. } => return Ok((header, None)),
            Step::Damage { offset, kind } => return Ok((header, Some((offset, kind)))),
        }
    }
}
