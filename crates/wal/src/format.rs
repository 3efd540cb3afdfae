//! On-disk format of WAL segments and records (version 1).
//!
//! All integers are little-endian. Checksums are CRC32C (Castagnoli).
//!
//! # Segment file
//!
//! A segment is named `{first_lsn:020}.wal` and starts with a 32-byte header:
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 8    | magic `b"BOURSWAL"`                     |
//! | 8      | 4    | format version (`1`)                    |
//! | 12     | 4    | header length in bytes (`32`)           |
//! | 16     | 8    | first LSN of the segment                |
//! | 24     | 4    | reserved, zero                          |
//! | 28     | 4    | CRC32C of bytes 0..28                   |
//!
//! Records follow back to back from offset 32. A segment may end with zero bytes when it
//! was pre-written (preallocated) and not filled: an all-zero record header marks the
//! clean end of data.
//!
//! # Record
//!
//! | offset | size | field                                                     |
//! |-------:|-----:|-----------------------------------------------------------|
//! | 0      | 4    | CRC32C of bytes 4..28 followed by the payload             |
//! | 4      | 4    | payload length `n` in bytes                               |
//! | 8      | 8    | LSN                                                       |
//! | 16     | 8    | timestamp, i64 nanoseconds since the Unix epoch           |
//! | 24     | 2    | kind (opaque to the WAL; the engine's event kind)         |
//! | 26     | 2    | flags: bit 0 = `BATCH_END`, other bits zero               |
//! | 28     | n    | payload                                                   |
//!
//! LSNs are contiguous across records and segments. A batch is the run of records up to
//! and including one with `BATCH_END`; after recovery a batch is present whole or not at
//! all. A single append is a batch of one.
//!
//! **Torn writes.** A crash can leave a prefix of the last write: a short header, a short
//! payload, a checksum mismatch, or a batch without its `BATCH_END` record. Recovery
//! tolerates such damage only at the tail of the newest segment and only when no intact
//! record follows it; everywhere else it is corruption and is reported with the segment
//! and offset.

use crate::Lsn;

/// The segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"BOURSWAL";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Segment header length in bytes.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Record header length in bytes.
pub const RECORD_HEADER_BYTES: usize = 28;
/// Record flag: the last record of its batch.
pub const FLAG_BATCH_END: u16 = 1;

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The LSN of the first record the segment holds (or will hold).
    pub first_lsn: Lsn,
}

/// Why a segment header did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer than 32 bytes.
    Short,
    /// The magic is wrong.
    BadMagic,
    /// The version is not one this build reads.
    UnsupportedVersion(u32),
    /// The header checksum does not match.
    BadChecksum,
}

impl SegmentHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.first_lsn.0.to_le_bytes());
        let crc = crate::crc::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8]) -> Result<Self, HeaderProblem> {
        if b.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderProblem::Short);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        if u32_at(b, 28) != crate::crc::crc32c(&b[0..28]) {
            return Err(HeaderProblem::BadChecksum);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnsupportedVersion(version));
        }
        Ok(Self { first_lsn: Lsn(u64_at(b, 16)) })
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Stored checksum.
    pub crc: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// The record's LSN.
    pub lsn: Lsn,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// Opaque kind.
    pub kind: u16,
    /// Flags (`FLAG_BATCH_END`).
    pub flags: u16,
}

impl RecordHeader {
    /// Decodes a header from the first 28 bytes of `b` (no checksum check). Panics if
    /// `b` is shorter.
    pub fn decode(b: &[u8]) -> Self {
        // One bounds check for the whole header (replay decodes one per record), then
        // fixed offsets into the array.
        let Some(b) = b.first_chunk::<RECORD_HEADER_BYTES>() else {
            panic!("a record header needs {RECORD_HEADER_BYTES} bytes, got {}", b.len())
        };
        Self {
            crc: u32_at(b, 0),
            len: u32_at(b, 4),
            lsn: Lsn(u64_at(b, 8)),
            timestamp: u64_at(b, 16) as i64,
            kind: u16::from_le_bytes([b[24], b[25]]),
            flags: u16::from_le_bytes([b[26], b[27]]),
        }
    }

    /// Whether every field is zero, i.e. the 28 bytes decoded were all zero: what a
    /// pre-written or never-written part of a segment holds.
    pub fn is_zero(&self) -> bool {
        *self == RecordHeader { crc: 0, len: 0, lsn: Lsn(0), timestamp: 0, kind: 0, flags: 0 }
    }

    /// Whether this record ends its batch.
    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }
}

/// Appends one encoded record to `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    lsn: Lsn,
    timestamp: i64,
    kind: u16,
    batch_end: bool,
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&lsn.0.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    let flags = if batch_end { FLAG_BATCH_END } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crate::crc::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Computes the checksum a record with this header tail (bytes 4..28) and payload must
/// carry.
pub fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    crate::crc::crc32c_append(crate::crc::crc32c(&header[4..RECORD_HEADER_BYTES]), payload)
}

/// Computes the checksum a whole record (header then payload, contiguous) must carry:
/// the same value as [`record_crc`], in one pass (replay checks every record, and a
/// second call per record cost as much as the first on short payloads).
pub fn record_crc_whole(record: &[u8]) -> u32 {
    crate::crc::crc32c(&record[4..])
}

/// The encoded size of a record with an `n`-byte payload.
pub const fn record_bytes(n: usize) -> usize {
    RECORD_HEADER_BYTES + n
}

/// The file name of the segment whose first LSN is `lsn`.
pub fn segment_file_name(lsn: Lsn) -> String {
    format!("{:020}.wal", lsn.0)
}

/// Parses a segment file name back into its first LSN.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader { first_lsn: Lsn(42) };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[17] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderProblem::BadChecksum));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderProblem::Short));
    }

    #[test]
    fn record_crc_covers_header_and_payload() {
        let mut out = Vec::new();
        encode_record(&mut out, Lsn(7), -5, 3, true, b"payload");
        let h = RecordHeader::decode(&out);
        assert_eq!((h.lsn, h.timestamp, h.kind, h.len), (Lsn(7), -5, 3, 7));
        assert!(h.is_batch_end());
        assert_eq!(h.crc, record_crc(&out, &out[RECORD_HEADER_BYTES..]));
        assert_eq!(h.crc, record_crc_whole(&out));
        // A flipped bit in the payload, then one in the header's length.
        for at in [30, 5] {
            out[at] ^= 0x10;
            assert_ne!(h.crc, record_crc(&out, &out[RECORD_HEADER_BYTES..]));
            assert_ne!(h.crc, record_crc_whole(&out));
            out[at] ^= 0x10;
        }
    }

    #[test]
    fn segment_names() {
        let name = segment_file_name(Lsn(123));
        assert_eq!(name, "00000000000000000123.wal");
        assert_eq!(parse_segment_file_name(&name), Some(Lsn(123)));
        assert_eq!(parse_segment_file_name("123.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000000123.wal.tmp"), None);
    }
}
