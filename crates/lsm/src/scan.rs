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
use crate::table::TableIter;
use crate::tree::Tree;
use crate::version::{Merge, TableHandle, TableRef};
use crate::Result;

/// First chunk read from a source; chunks double up to `CHUNK_MAX`, so a short scan reads
/// little and a long one reads in large steps.
const CHUNK_MIN: usize = 16;
const CHUNK_MAX: usize = 512;

enum Source {
    Mem(Arc<Memtable>),
    /// One level-0 table.
    Table(Arc<TableRef>),
    /// The disjoint, sorted tables of a level >= 1, read one after another (forward) or
    /// from the last backwards (reverse); the index is the table being read.
    Level(Vec<Arc<TableRef>>, usize),
}

/// A level read forward without re-seeking: one owning table iterator at a time.
struct LevelIter {
    tables: Vec<Arc<TableRef>>,
    next: usize,
    from: Option<(Vec<u8>, SeqNo)>,
    current: Option<TableIter<TableHandle>>,
}

impl Iterator for LevelIter {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(it) = &mut self.current {
                if let Some(e) = it.next() {
                    return Some(e);
                }
            }
            let t = self.tables.get(self.next)?.clone();
            self.next += 1;
            // Only the first table needs the seek; later ones start at their beginning.
            let from = self.from.take();
            self.current = Some(TableIter::new(
                TableHandle(t),
                from.as_ref().map(|(k, s)| (k.as_slice(), *s)),
            ));
        }
    }
}

/// A source read in chunks from a moving internal-key position: forward from `from`
/// (inclusive), or, reversed, backward from `from` (exclusive).
struct Cursor {
    source: Source,
    buf: VecDeque<Entry>,
    from: Option<(Vec<u8>, SeqNo)>,
    /// The scan's far end in its direction (user keys): its end going forward, its start
    /// in reverse. A memtable copies out nothing past it.
    limit: Bound<Vec<u8>>,
    done: bool,
    reverse: bool,
    chunk: usize,
}

impl Cursor {
    fn new(
        source: Source,
        from: Option<(Vec<u8>, SeqNo)>,
        limit: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Self {
        let buf = VecDeque::new();
        Cursor { source, buf, from, limit, done: false, reverse, chunk: CHUNK_MIN }
    }

    fn grow(&mut self) -> usize {
        let n = self.chunk;
        self.chunk = (self.chunk * 2).min(CHUNK_MAX);
        n
    }
}

impl Cursor {
    fn refill(&mut self) -> Result<()> {
        if self.reverse {
            return self.refill_reverse();
        }
        let n = self.grow();
        let from = self.from.as_ref().map(|(k, s)| (k.as_slice(), *s));
        let chunk: Vec<Entry> = match &mut self.source {
            Source::Mem(m) => {
                let key = from.map(|(k, s)| InternalKey { user_key: k.to_vec(), seq: s });
                m.chunk_from(key.as_ref(), n, self.limit.as_ref().map(Vec::as_slice))
            }
            // NOTE: forward scans read tables through `LevelIter`, never through here.
            Source::Table(_) | Source::Level(..) => Vec::new(),
        };
        self.done = chunk.len() < n;
        if let Some(last) = chunk.last() {
            self.from = Some(next_key(last));
        }
        self.buf.extend(chunk);
        Ok(())
    }

    fn refill_reverse(&mut self) -> Result<()> {
        let n = self.grow();
        let bound = self.from.as_ref().map(|(k, s)| (k.as_slice(), *s));
        let chunk = match &mut self.source {
            Source::Mem(m) => {
                let key = bound.map(|(k, s)| InternalKey { user_key: k.to_vec(), seq: s });
                m.before_within(key.as_ref(), n, self.limit.as_ref().map(Vec::as_slice))
            }
            Source::Table(t) => t.table.before(bound, n)?,
            Source::Level(tables, i) => {
                let mut out: Vec<Entry> = Vec::new();
                while let Some(t) = tables.get(*i) {
                    let b = out
                        .last()
                        .map(|e| (e.key.clone(), e.seq))
                        .or_else(|| bound.map(|(k, s)| (k.to_vec(), s)));
                    let got = t
                        .table
                        .before(b.as_ref().map(|(k, s)| (k.as_slice(), *s)), n - out.len())?;
                    let exhausted = got.len() < n - out.len();
                    out.extend(got);
                    if !exhausted || *i == 0 {
                        if exhausted {
                            tables.clear();
                        }
                        break;
                    }
                    *i -= 1;
                }
                out
            }
        };
        self.done = chunk.len() < n;
        if let Some(last) = chunk.last() {
            self.from = Some((last.key.clone(), last.seq));
        }
        self.buf.extend(chunk);
        Ok(())
    }
}

/// The internal key right after `e`'s.
fn next_key(e: &Entry) -> (Vec<u8>, SeqNo) {
    if e.seq > 0 {
        (e.key.clone(), e.seq - 1)
    } else {
        let mut k = e.key.clone();
        k.push(0);
        (k, MAX_SEQ)
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
            match &mut self.last_key {
                Some(k) => k.clone_from(&e.key),
                None => self.last_key = Some(e.key.clone()),
            }
            if e.kind == Kind::Put {
                return Some(Ok((e.key, e.value)));
            }
        }
        None
    }
}

impl Tree {
    /// The memtables and the tables whose key range intersects `[start, end]`.
    fn sources(&self, start: Bound<&[u8]>, end: Bound<&[u8]>, reverse: bool) -> Vec<Source> {
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
        for (n, level) in version.levels.iter().enumerate() {
            let tables: Vec<Arc<TableRef>> =
                level.iter().filter(|t| in_range(t)).cloned().collect();
            if n == 0 {
                sources.extend(tables.into_iter().map(Source::Table));
            } else if !tables.is_empty() {
                // Forward starts at the first table, reverse at the last.
                let start = if reverse { tables.len() - 1 } else { 0 };
                sources.push(Source::Level(tables, start));
            }
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
        let sources = self.sources(start, end, false);
        let cursors = sources
            .into_iter()
            .map(|source| match source {
                // Tables are read through lazy block iterators; only memtables (whose
                // iterators borrow them) are read in re-seeked chunks.
                Source::Level(tables, _) => {
                    Box::new(LevelIter { tables, next: 0, from: from.clone(), current: None })
                        as Box<dyn Iterator<Item = Result<Entry>> + Send>
                }
                Source::Table(t) => Box::new(LevelIter {
                    tables: vec![t],
                    next: 0,
                    from: from.clone(),
                    current: None,
                }),
                mem => Box::new(Cursor::new(mem, from.clone(), end.map(<[u8]>::to_vec), false)),
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

/// The smallest key greater than every key with this prefix (`None` when the prefix is
/// all `0xff` bytes: nothing is greater).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
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
            .sources(start, end, true)
            .into_iter()
            .map(|source| {
                Box::new(Cursor::new(source, from.clone(), start.map(<[u8]>::to_vec), true))
                    as Box<dyn Iterator<Item = Result<Entry>> + Send>
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
