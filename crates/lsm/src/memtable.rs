//! The memtable: a lock-free skiplist of internal keys with its size in bytes.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;

use crate::key::{Entry, InternalKey, Kind, SeqNo};

/// Bytes accounted per entry beyond key and value (skiplist node, sequence, kind).
const ENTRY_OVERHEAD: usize = 48;

/// An in-memory sorted run of writes. Concurrent readers and one writer at a time.
#[derive(Debug, Default)]
pub struct Memtable {
    map: SkipMap<InternalKey, (Kind, Vec<u8>)>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
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
        self.map.insert(InternalKey { user_key: key.to_vec(), seq }, (kind, value.to_vec()));
    }

    /// The newest version of `key` with a sequence at most `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Option<(SeqNo, Kind, Vec<u8>)> {
        let from = InternalKey { user_key: key.to_vec(), seq: snapshot };
        let e = self.map.lower_bound(Bound::Included(&from))?;
        if e.key().user_key != key {
            return None;
        }
        let (kind, value) = e.value();
        Some((e.key().seq, *kind, value.clone()))
    }

    /// Every version at or after `from` (internal order), as owned entries, lazily.
    pub fn iter_from<'a>(&'a self, from: Option<&InternalKey>) -> impl Iterator<Item = Entry> + 'a {
        let start = match from {
            Some(k) => Bound::Included(k.clone()),
            None => Bound::Unbounded,
        };
        self.map.range((start, Bound::Unbounded)).map(|e| to_entry(&e))
    }

    /// Up to `n` versions strictly before `bound` (or before the end), in descending
    /// internal order.
    pub fn before(&self, bound: Option<&InternalKey>, n: usize) -> Vec<Entry> {
        let end = match bound {
            Some(k) => Bound::Excluded(k.clone()),
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
}

/// An owned copy of a skiplist entry.
fn to_entry(e: &crossbeam_skiplist::map::Entry<'_, InternalKey, (Kind, Vec<u8>)>) -> Entry {
    let (kind, value) = e.value();
    Entry { key: e.key().user_key.clone(), seq: e.key().seq, kind: *kind, value: value.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

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
