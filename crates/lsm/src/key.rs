//! Internal keys: a user key, a sequence number and a kind.
//!
//! Order: user key ascending, then sequence descending, so the newest version of a key
//! comes first and a seek to `(key, snapshot)` lands on the newest version visible at
//! that snapshot.

use std::cmp::Ordering;

/// A sequence number: the engine's LSN of the write. Higher is newer.
pub type SeqNo = u64;

/// The largest sequence number; a snapshot at `MAX_SEQ` sees everything.
pub const MAX_SEQ: SeqNo = (1 << 56) - 1;

/// What a version of a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A deletion marker (tombstone).
    Delete = 0,
    /// A value.
    Put = 1,
}

impl Kind {
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Put),
            _ => None,
        }
    }
}

/// Packs a sequence number and kind into the 8-byte trailer stored with each key.
pub(crate) fn trailer(seq: SeqNo, kind: Kind) -> u64 {
    (seq << 8) | kind as u64
}

/// Unpacks a trailer.
pub(crate) fn untrailer(t: u64) -> (SeqNo, Option<Kind>) {
    (t >> 8, Kind::from_u8((t & 0xff) as u8))
}

/// Compares internal keys: user key ascending, then sequence descending.
pub(crate) fn cmp_internal(a_key: &[u8], a_seq: SeqNo, b_key: &[u8], b_seq: SeqNo) -> Ordering {
    a_key.cmp(b_key).then(b_seq.cmp(&a_seq))
}

/// The first eight bytes of `key`, big-endian, zero-padded. Prefixes order keys
/// consistently with the keys: if `prefix(a) < prefix(b)` then `a < b` (zero padding
/// sorts a shorter key before its extensions, as lexicographic order does); equal
/// prefixes say nothing. Searches compare these integers first to stay within one
/// cache line.
pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
}

/// An owned internal key, ordered as above (used as the memtable's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalKey {
    /// The user key.
    pub user_key: Vec<u8>,
    /// The sequence number.
    pub seq: SeqNo,
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_internal(&self.user_key, self.seq, &other.user_key, other.seq)
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One version of a key as iterators return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user key.
    pub key: Vec<u8>,
    /// Its sequence number.
    pub seq: SeqNo,
    /// Put or delete.
    pub kind: Kind,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_sorts_first() {
        let a = InternalKey { user_key: b"k".to_vec(), seq: 9 };
        let b = InternalKey { user_key: b"k".to_vec(), seq: 3 };
        let c = InternalKey { user_key: b"ka".to_vec(), seq: 100 };
        assert!(a < b && b < c);
        assert_eq!(untrailer(trailer(77, Kind::Put)), (77, Some(Kind::Put)));
    }
}
