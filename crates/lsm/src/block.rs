//! Blocks: sorted entries with prefix-compressed keys and restart points.
//!
//! | part     | layout                                                                 |
//! |----------|------------------------------------------------------------------------|
//! | entry    | shared: varint, unshared: varint, value length: varint, trailer: u64 LE (seq << 8 \| kind), key suffix, value |
//! | restarts | u32 LE offset of every `RESTART_INTERVAL`-th entry (its `shared` is 0) |
//! | count    | u32 LE number of restarts                                              |
//!
//! Decoding is bounds-checked throughout: a malformed block yields `None` (reported by
//! the caller as corruption), never a panic or an out-of-range read.

use crate::key::{cmp_internal, untrailer, Kind, SeqNo};

/// Entries between restart points.
pub const RESTART_INTERVAL: usize = 16;

/// Appends a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint at `*pos`, advancing it.
pub(crate) fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Builds one block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    last_key: Vec<u8>,
    count: usize,
}

impl BlockBuilder {
    /// Appends an entry; entries must come in internal-key order.
    pub fn add(&mut self, key: &[u8], trailer: u64, value: &[u8]) {
        let shared = if self.count.is_multiple_of(RESTART_INTERVAL) {
            self.restarts.push(self.buf.len() as u32);
            0
        } else {
            self.last_key.iter().zip(key).take_while(|(a, b)| a == b).count()
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (key.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&trailer.to_le_bytes());
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count += 1;
    }

    /// Bytes the block will take when finished.
    pub fn estimated_bytes(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Gives back a buffer [`BlockBuilder::finish`] returned, once its bytes are used,
    /// so that the next block does not grow a new one from empty.
    pub fn reuse(&mut self, mut buf: Vec<u8>) {
        if self.buf.capacity() == 0 {
            buf.clear();
            self.buf = buf;
        }
    }

    /// Finishes the block and resets the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.last_key.clear();
        self.count = 0;
        out
    }
}

/// A block whose bytes do not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A decoded view of a block.
#[derive(Debug, Clone)]
pub struct Block {
    data: Vec<u8>,
    /// End of the entries (start of the restart array).
    entries_end: usize,
    restarts: Vec<u32>,
}

/// One entry read from a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// User key.
    pub key: Vec<u8>,
    /// Sequence number.
    pub seq: SeqNo,
    /// Kind.
    pub kind: Kind,
    /// Value.
    pub value: Vec<u8>,
}

impl Block {
    /// Checks the restart array; `None` if it is malformed.
    pub fn new(data: Vec<u8>) -> Option<Block> {
        let n = data.len().checked_sub(4)?;
        let count = u32::from_le_bytes(data.get(n..n + 4)?.try_into().ok()?) as usize;
        let entries_end = n.checked_sub(count.checked_mul(4)?)?;
        let restarts: Vec<u32> = data[entries_end..n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if restarts.iter().any(|r| *r as usize >= entries_end.max(1))
            || (count == 0 && entries_end != 0)
        {
            return None;
        }
        Some(Block { data, entries_end, restarts })
    }

    /// Decodes the entry at `pos` over `key`, which holds the previous entry's key and
    /// afterwards this entry's; returns the sequence, kind and value range. No
    /// allocation once `key` has grown to the longest key. `None` if malformed.
    fn decode_raw(
        &self,
        pos: &mut usize,
        key: &mut Vec<u8>,
    ) -> Option<(SeqNo, Kind, std::ops::Range<usize>)> {
        let b = &self.data[..self.entries_end];
        let shared = usize::try_from(get_varint(b, pos)?).ok()?;
        let unshared = usize::try_from(get_varint(b, pos)?).ok()?;
        let vlen = usize::try_from(get_varint(b, pos)?).ok()?;
        let t = u64::from_le_bytes(b.get(*pos..*pos + 8)?.try_into().ok()?);
        *pos += 8;
        if shared > key.len() {
            return None;
        }
        let suffix = b.get(*pos..pos.checked_add(unshared)?)?;
        *pos += unshared;
        let value = *pos..pos.checked_add(vlen)?;
        b.get(value.clone())?;
        *pos += vlen;
        let (seq, kind) = untrailer(t);
        key.truncate(shared);
        key.extend_from_slice(suffix);
        Some((seq, kind?, value))
    }

    /// Decodes the entry at `*pos` as an owned entry; advances `*pos`.
    fn decode_at(&self, pos: &mut usize, key: &mut Vec<u8>) -> Option<BlockEntry> {
        let (seq, kind, value) = self.decode_raw(pos, key)?;
        Some(BlockEntry { key: key.clone(), seq, kind, value: self.data[value].to_vec() })
    }

    /// Bytes the block occupies in memory (for the block cache's accounting).
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.restarts.len()
    }

    /// Every entry in order; `None` if the block is malformed.
    pub fn entries(&self) -> Option<Vec<BlockEntry>> {
        let mut out = Vec::new();
        let mut pos = 0;
        let mut key = Vec::new();
        while pos < self.entries_end {
            out.push(self.decode_at(&mut pos, &mut key)?);
        }
        Some(out)
    }

    /// The restart point to scan from for `(key, seq)`: the last one whose key is before
    /// it (binary search); `None` if the block is malformed.
    fn restart_for(&self, key: &[u8], seq: SeqNo) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.restarts.len());
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            let mut pos = self.restarts[mid] as usize;
            let mut k = Vec::new();
            let (s, _, _) = self.decode_raw(&mut pos, &mut k)?;
            if cmp_internal(&k, s, key, seq).is_lt() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(self.restarts.get(lo).map_or(0, |r| *r as usize))
    }

    /// The first entry whose internal key is at or after `(key, seq)`, if any; `Malformed` if
    /// the block is malformed. Decodes only up to that entry (point lookups).
    pub fn seek_first(&self, key: &[u8], seq: SeqNo) -> Result<Option<BlockEntry>, Malformed> {
        let mut pos = self.restart_for(key, seq).ok_or(Malformed)?;
        let mut k = Vec::new();
        while pos < self.entries_end {
            let (s, kind, value) = self.decode_raw(&mut pos, &mut k).ok_or(Malformed)?;
            if !cmp_internal(&k, s, key, seq).is_lt() {
                return Ok(Some(BlockEntry {
                    key: k,
                    seq: s,
                    kind,
                    value: self.data[value].to_vec(),
                }));
            }
        }
        Ok(None)
    }

    /// Entries from the first whose internal key is at or after `(key, seq)`; `None` if
    /// the block is malformed.
    #[cfg(test)]
    pub fn seek(self: &std::sync::Arc<Self>, key: &[u8], seq: SeqNo) -> Option<Vec<BlockEntry>> {
        BlockIter::seek(self.clone(), key, seq)?.collect::<Result<_, _>>().ok()
    }
}

/// Entries of a block decoded one at a time: a scan that stops early decodes (and
/// allocates for) only what it returns.
#[derive(Debug)]
pub struct BlockIter {
    block: std::sync::Arc<Block>,
    pos: usize,
    key: Vec<u8>,
    /// An entry decoded while seeking, returned first.
    peeked: Option<BlockEntry>,
}

impl BlockIter {
    /// From the block's first entry.
    pub fn new(block: std::sync::Arc<Block>) -> BlockIter {
        BlockIter { block, pos: 0, key: Vec::new(), peeked: None }
    }

    /// From the first entry whose internal key is at or after `(key, seq)`; `None` if the
    /// block is malformed.
    pub fn seek(block: std::sync::Arc<Block>, key: &[u8], seq: SeqNo) -> Option<BlockIter> {
        let pos = block.restart_for(key, seq)?;
        let mut it = BlockIter { block, pos, key: Vec::new(), peeked: None };
        while it.pos < it.block.entries_end {
            let (s, kind, value) = it.block.decode_raw(&mut it.pos, &mut it.key)?;
            if !cmp_internal(&it.key, s, key, seq).is_lt() {
                let value = it.block.data[value].to_vec();
                it.peeked = Some(BlockEntry { key: it.key.clone(), seq: s, kind, value });
                break;
            }
        }
        Some(it)
    }
}

impl Iterator for BlockIter {
    type Item = Result<BlockEntry, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.peeked.take() {
            return Some(Ok(e));
        }
        if self.pos >= self.block.entries_end {
            return None;
        }
        match self.block.decode_at(&mut self.pos, &mut self.key) {
            Some(e) => Some(Ok(e)),
            None => {
                self.pos = usize::MAX;
                Some(Err(Malformed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::trailer;

    #[test]
    fn round_trip_and_seek() {
        let mut b = BlockBuilder::default();
        let keys: Vec<Vec<u8>> = (0..100u32).map(|i| format!("key{i:04}").into_bytes()).collect();
        for (i, k) in keys.iter().enumerate() {
            b.add(k, trailer(1000 - i as u64, Kind::Put), format!("v{i}").as_bytes());
        }
        let block = std::sync::Arc::new(Block::new(b.finish()).unwrap());
        let all = block.entries().unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[42].key, keys[42]);
        let from = block.seek(b"key0042", u64::MAX >> 8).unwrap();
        assert_eq!(from[0].key, b"key0042");
        assert_eq!(from.len(), 58);
        assert!(block.seek(b"zzz", 0).unwrap().is_empty());
    }

    #[test]
    fn malformed_blocks_are_refused_not_panicking() {
        assert!(Block::new(vec![]).is_none());
        assert!(Block::new(vec![9, 9, 9, 9]).is_none());
        let mut b = BlockBuilder::default();
        b.add(b"abc", trailer(1, Kind::Put), b"value");
        let good = b.finish();
        for cut in 0..good.len() {
            if let Some(block) = Block::new(good[..cut].to_vec()) {
                let _ = block.entries();
            }
        }
    }
}
