//! The memtable: a lock-free skiplist of internal keys with its size in bytes.

use std::cmp::Ordering as CmpOrdering;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;
use smallvec::SmallVec;

use crate::key::{key_prefix, Entry, InternalKey, Kind, SeqNo};

/// Bytes accounted per entry beyond key and value (skiplist node, sequence, kind).
const ENTRY_OVERHEAD: usize = 48;

/// User keys up to this many bytes live inside the skiplist node.
const INLINE_KEY_BYTES: usize = 32;

/// The memtable's internal key. A search compares keys in many nodes it never uses,
/// so each comparison must stay within the node: the user key is stored inline (up to
/// [`INLINE_KEY_BYTES`]) and its [`key_prefix`] decides most comparisons with one
/// integer compare; equal prefixes fall through to the full comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MemKey {
    prefix: u64,
    user_key: SmallVec<[u8; INLINE_KEY_BYTES]>,
    seq: SeqNo,
}

impl MemKey {
    fn new(user_key: &[u8], seq: SeqNo) -> MemKey {
        MemKey { prefix: key_prefix(user_key), user_key: SmallVec::from_slice(user_key), seq }
    }

    fn from_internal(k: &InternalKey) -> MemKey {
        MemKey::new(&k.user_key, k.seq)
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.prefix
            .cmp(&other.prefix)
            .then_with(|| self.user_key.as_slice().cmp(other.user_key.as_slice()))
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// An in-memory sorted run of writes. Concurrent readers and one writer at a time.
#[derive(Debug)]
pub struct Memtable {
    map: SkipMap<MemKey, (Kind, Box<[u8]>)>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    /// The lowest sequence inserted (`u64::MAX` when empty).
    min_seq: AtomicU64,
}

impl Default for Memtable {
    fn default() -> Self {
        Memtable {
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
        }
    }
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts one version.
    pub fn insert(&self, key: &[u8], seq: SeqNo, kind: Kind, value: &[u8]) {
        self.bytes.fetch_add(key.len() + value.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
        self.max_seq.fetch_max(seq, Ordering::Relaxed);
        self.min_seq.fetch_min(seq, Ordering::Relaxed);
        self.map.insert(MemKey::new(key, seq), (kind, Box::from(value)));
    }

    /// The newest version of `key` with a sequence at most `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Option<(SeqNo, Kind, Vec<u8>)> {
        let from = MemKey::new(key, snapshot);
        let e = self.map.lower_bound(Bound::Included(&from))?;
        if e.key().user_key.as_slice() != key {
            return None;
        }
        let (kind, value) = e.value();
        Some((e.key().seq, *kind, value.to_vec()))
    }

    /// Every version at or after `from` (internal order), as owned entries, lazily.
    pub fn iter_from<'a>(&'a self, from: Option<&InternalKey>) -> impl Iterator<Item = Entry> + 'a {
        let start = match from {
            Some(k) => Bound::Included(MemKey::from_internal(k)),
            None => Bound::Unbounded,
        };
        self.map.range((start, Bound::Unbounded)).map(|e| to_entry(&e))
    }

    /// Up to `n` versions strictly before `bound` (or before the end), in descending
    /// internal order.
    pub fn before(&self, bound: Option<&InternalKey>, n: usize) -> Vec<Entry> {
        let end = match bound {
            Some(k) => Bound::Excluded(MemKey::from_internal(k)),
            None => Bound::Unbounded,
        };
        self.map.range((Bound::Unbounded, end)).rev().take(n).map(|e| to_entry(&e)).collect()
    }

    /// Accounted size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The highest sequence inserted (0 when empty).
    pub fn max_seq(&self) -> SeqNo {
        self.max_seq.load(Ordering::Relaxed)
    }

    /// The lowest sequence inserted (`u64::MAX` when empty).
    pub fn min_seq(&self) -> SeqNo {
        self.min_seq.load(Ordering::Relaxed)
    }
}

/// An owned copy of a skiplist entry.
fn to_entry(e: &crossbeam_skiplist::map::Entry<'_, MemKey, (Kind, Box<[u8]>)>) -> Entry {
    let (kind, value) = e.value();
    Entry { key: e.key().user_key.to_vec(), seq: e.key().seq, kind: *kind, value: value.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The prefix shortcut and inline storage order keys exactly as internal keys
        /// (short keys, zero bytes and keys longer than the inline buffer included).
        #[test]
        fn mem_key_order_is_internal_key_order(
            a in proptest::collection::vec(0u8..3, 0..40),
            b in proptest::collection::vec(0u8..3, 0..40),
            sa in 0u64..3,
            sb in 0u64..3,
        ) {
            let (ia, ib) = (InternalKey { user_key: a, seq: sa }, InternalKey { user_key: b, seq: sb });
            prop_assert_eq!(
                MemKey::from_internal(&ia).cmp(&MemKey::from_internal(&ib)),
                ia.cmp(&ib)
            );
        }
    }

    #[test]
    fn get_respects_snapshots_and_tombstones() {
        let m = Memtable::new();
        m.insert(b"a", 1, Kind::Put, b"v1");
        m.insert(b"a", 5, Kind::Put, b"v5");
        m.insert(b"a", 7, Kind::Delete, b"");
        m.insert(b"b", 2, Kind::Put, b"b2");
        assert_eq!(m.get(b"a", 4), Some((1, Kind::Put, b"v1".to_vec())));
        assert_eq!(m.get(b"a", 6), Some((5, Kind::Put, b"v5".to_vec())));
        assert_eq!(m.get(b"a", 100).map(|v| v.1), Some(Kind::Delete));
        assert_eq!(m.get(b"a", 0), None);
        assert_eq!(m.get(b"c", 100), None);
        let keys: Vec<(Vec<u8>, u64)> = m.iter_from(None).map(|e| (e.key, e.seq)).collect();
        assert_eq!(
            keys,
            vec![(b"a".to_vec(), 7), (b"a".to_vec(), 5), (b"a".to_vec(), 1), (b"b".to_vec(), 2)]
        );
        assert_eq!(m.max_seq(), 7);
    }
}
