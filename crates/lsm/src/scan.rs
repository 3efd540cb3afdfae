//! Range scans at a snapshot, streaming.
//!
//! Each source (memtables, tables whose range intersects the scan) is read in chunks of
//! `CHUNK` entries and re-seeked from its last position, so a scan holds a bounded amount
//! of memory however long it runs, and the sources are merged in internal-key order. The
//! newest version of each key visible at the snapshot is returned; tombstones hide older
//! versions and are not returned.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::key::{Entry, InternalKey, Kind, SeqNo, MAX_SEQ};
use crate::memtable::Memtable;
use crate::tree::Tree;
use crate::version::{Merge, TableRef};
use crate::Result;

const CHUNK: usize = 256;

enum Source {
    Mem(Arc<Memtable>),
    Table(Arc<TableRef>),
}

/// A source read in chunks from a moving internal-key position: forward from `from`
/// (inclusive), or, reversed, backward from `from` (exclusive).
struct Cursor {
    source: Source,
    buf: VecDeque<Entry>,
    from: Option<(Vec<u8>, SeqNo)>,
    done: bool,
    reverse: bool,
}

impl Cursor {
    fn refill(&mut self) -> Result<()> {
        if self.reverse {
            return self.refill_reverse();
        }
        let from = self.from.as_ref().map(|(k, s)| (k.as_slice(), *s));
        let chunk: Vec<Entry> = match &self.source {
            Source::Mem(m) => {
                let key = from.map(|(k, s)| InternalKey { user_key: k.to_vec(), seq: s });
                m.iter_from(key.as_ref()).take(CHUNK).collect()
            }
            Source::Table(t) => t.table.iter_from(from).take(CHUNK).collect::<Result<_>>()?,
        };
        self.done = chunk.len() < CHUNK;
        if let Some(last) = chunk.last() {
            // The internal key right after the last one read.
            self.from = Some(if last.seq > 0 {
                (last.key.clone(), last.seq - 1)
            } else {
                let mut k = last.key.clone();
                k.push(0);
                (k, MAX_SEQ)
            });
        }
        self.buf.extend(chunk);
        Ok(())
    }

    fn refill_reverse(&mut self) -> Result<()> {
        let bound = self.from.as_ref().map(|(k, s)| (k.as_slice(), *s));
        let chunk = match &self.source {
            Source::Mem(m) => {
                let key = bound.map(|(k, s)| InternalKey { user_key: k.to_vec(), seq: s });
                m.before(key.as_ref(), CHUNK)
            }
            Source::Table(t) => t.table.before(bound, CHUNK)?,
        };
        self.done = chunk.len() < CHUNK;
        if let Some(last) = chunk.last() {
            self.from = Some((last.key.clone(), last.seq));
        }
        self.buf.extend(chunk);
        Ok(())
    }
}

impl Iterator for Cursor {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.refill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

/// The visible key-value pairs of a range, in key order.
pub struct Scan {
    merge: Merge<'static>,
    end: Bound<Vec<u8>>,
    snapshot: SeqNo,
    last_key: Option<Vec<u8>>,
    finished: bool,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("snapshot", &self.snapshot).field("end", &self.end).finish()
    }
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let e = match self.merge.next()? {
                Ok(e) => e,
                Err(err) => {
                    self.finished = true;
                    return Some(Err(err));
                }
            };
            let past_end = match &self.end {
                Bound::Included(end) => e.key.as_slice() > end.as_slice(),
                Bound::Excluded(end) => e.key.as_slice() >= end.as_slice(),
                Bound::Unbounded => false,
            };
            if past_end {
                self.finished = true;
                return None;
            }
            if e.seq > self.snapshot || self.last_key.as_deref() == Some(e.key.as_slice()) {
                continue;
            }
            self.last_key = Some(e.key.clone());
            if e.kind == Kind::Put {
                return Some(Ok((e.key, e.value)));
            }
        }
        None
    }
}

impl Tree {
    /// The memtables and the tables whose key range intersects `[start, end]`.
    fn sources(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<Source> {
        let (active, imms, version) = {
            let st = self.inner.state.lock();
            (st.active.clone(), st.immutables.clone(), st.version.clone())
        };
        let lo: &[u8] = match start {
            Bound::Included(k) | Bound::Excluded(k) => k,
            Bound::Unbounded => &[],
        };
        let in_range = |t: &TableRef| {
            let m = t.table.meta();
            m.largest.as_slice() >= lo
                && match end {
                    Bound::Included(e) => m.smallest.as_slice() <= e,
                    Bound::Excluded(e) => m.smallest.as_slice() < e,
                    Bound::Unbounded => true,
                }
        };
        let mut sources: Vec<Source> =
            std::iter::once(active).chain(imms.into_iter().rev()).map(Source::Mem).collect();
        for level in &version.levels {
            sources.extend(level.iter().filter(|t| in_range(t)).cloned().map(Source::Table));
        }
        sources
    }

    /// The pairs with keys in `range`, newest version at or below `snapshot`, in key
    /// order. Streams: memory stays bounded however large the range.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, snapshot: SeqNo) -> Scan {
        let from = match start {
            Bound::Included(k) => Some((k.to_vec(), MAX_SEQ)),
            Bound::Excluded(k) => {
                let mut k = k.to_vec();
                k.push(0);
                Some((k, MAX_SEQ))
            }
            Bound::Unbounded => None,
        };
        let sources = self.sources(start, end);
        let cursors = sources
            .into_iter()
            .map(|source| {
                Box::new(Cursor {
                    source,
                    buf: VecDeque::new(),
                    from: from.clone(),
                    done: false,
                    reverse: false,
                }) as Box<dyn Iterator<Item = Result<Entry>>>
            })
            .collect();
        Scan {
            merge: Merge::new(cursors),
            end: end.map(<[u8]>::to_vec),
            snapshot,
            last_key: None,
            finished: false,
        }
    }

    /// The pairs whose key starts with `prefix`, at `snapshot`.
    pub fn prefix(&self, prefix: &[u8], snapshot: SeqNo) -> Scan {
        match prefix_end(prefix) {
            Some(end) => self.range(Bound::Included(prefix), Bound::Excluded(&end), snapshot),
            None => self.range(Bound::Included(prefix), Bound::Unbounded, snapshot),
        }
    }
}

/// The smallest key greater than every key with this prefix, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The visible key-value pairs of a range, in descending key order.
pub struct ScanRev {
    merge: Merge<'static>,
    start: Bound<Vec<u8>>,
    snapshot: SeqNo,
    /// The newest visible version seen so far of the key being assembled.
    candidate: Option<Entry>,
    current: Option<Vec<u8>>,
    finished: bool,
}

impl std::fmt::Debug for ScanRev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanRev")
            .field("snapshot", &self.snapshot)
            .field("start", &self.start)
            .finish()
    }
}

impl ScanRev {
    fn before_start(&self, key: &[u8]) -> bool {
        match &self.start {
            Bound::Included(s) => key < s.as_slice(),
            Bound::Excluded(s) => key <= s.as_slice(),
            Bound::Unbounded => false,
        }
    }
}

impl Iterator for ScanRev {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    // Descending internal order delivers each key's versions oldest first, so a key is
    // complete only when the next key (or the end) arrives.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = if self.finished { None } else { self.merge.next() };
            let e = match next {
                Some(Ok(e)) if !self.before_start(&e.key) => e,
                Some(Err(err)) => {
                    self.finished = true;
                    return Some(Err(err));
                }
                _ => {
                    self.finished = true;
                    let done = self.candidate.take()?;
                    if done.kind == Kind::Put {
                        return Some(Ok((done.key, done.value)));
                    }
                    continue;
                }
            };
            let ready = if self.current.as_deref() != Some(e.key.as_slice()) {
                self.current = Some(e.key.clone());
                self.candidate.take()
            } else {
                None
            };
            if e.seq <= self.snapshot {
                self.candidate = Some(e);
            }
            if let Some(done) = ready.filter(|d| d.kind == Kind::Put) {
                return Some(Ok((done.key, done.value)));
            }
        }
    }
}

impl Tree {
    /// Like [`Tree::range`], in descending key order.
    pub fn range_rev(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, snapshot: SeqNo) -> ScanRev {
        // Everything strictly before this internal key is at most `end`.
        let from = match end {
            Bound::Included(k) => {
                let mut k = k.to_vec();
                k.push(0);
                Some((k, MAX_SEQ))
            }
            Bound::Excluded(k) => Some((k.to_vec(), MAX_SEQ)),
            Bound::Unbounded => None,
        };
        let cursors = self
            .sources(start, end)
            .into_iter()
            .map(|source| {
                Box::new(Cursor {
                    source,
                    buf: VecDeque::new(),
                    from: from.clone(),
                    done: false,
                    reverse: true,
                }) as Box<dyn Iterator<Item = Result<Entry>>>
            })
            .collect();
        ScanRev {
            merge: Merge::new_reverse(cursors),
            start: start.map(<[u8]>::to_vec),
            snapshot,
            candidate: None,
            current: None,
            finished: false,
        }
    }
}
