//! Versions: the immutable set of tables readers work against, and merging iteration.
//!
//! A reader clones the current `Arc<Version>` and keeps every table in it alive; a table
//! removed by compaction is marked obsolete and its file is deleted only when the last
//! version and reader holding it let go, so no file is deleted under a reader.

use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use bourse_fs::Vfs;

use crate::key::{cmp_internal, Entry};
use crate::table::Table;
use crate::Result;

/// An open table shared by versions and readers.
#[derive(Debug)]
pub(crate) struct TableRef {
    pub table: Table,
    obsolete: AtomicBool,
    vfs: Arc<dyn Vfs>,
}

impl TableRef {
    pub(crate) fn new(table: Table, vfs: Arc<dyn Vfs>) -> Arc<Self> {
        Arc::new(Self { table, obsolete: AtomicBool::new(false), vfs })
    }

    /// Deletes the file once nothing refers to the table any more.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }

    pub(crate) fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        let m = self.table.meta();
        m.smallest.as_slice() <= hi && m.largest.as_slice() >= lo
    }
}

/// An owning handle that reads as the table (for iterators that outlive a borrow).
#[derive(Debug, Clone)]
pub(crate) struct TableHandle(pub Arc<TableRef>);

impl std::ops::Deref for TableHandle {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.0.table
    }
}

impl Drop for TableRef {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            let path: &Path = self.table.path();
            if let Err(e) = self.vfs.remove_file(path) {
                tracing::warn!(table = %path.display(), error = %e, "could not delete an obsolete table");
            }
        }
    }
}

/// The tables of the tree: level 0 newest first (ranges may overlap), levels 1.. sorted
/// by key with disjoint ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct Version {
    pub levels: Vec<Vec<Arc<TableRef>>>,
}

impl Version {
    pub(crate) fn with_levels(n: usize) -> Self {
        Self { levels: vec![Vec::new(); n] }
    }

    /// Bytes in a level.
    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels.get(level).map_or(0, |l| l.iter().map(|t| t.table.meta().bytes).sum())
    }

    /// Tables of `level` whose key range intersects `[lo, hi]`.
    pub(crate) fn overlapping(&self, level: usize, lo: &[u8], hi: &[u8]) -> Vec<Arc<TableRef>> {
        self.levels
            .get(level)
            .map_or_else(Vec::new, |l| l.iter().filter(|t| t.overlaps(lo, hi)).cloned().collect())
    }

    /// Keeps levels 1.. sorted by smallest key.
    pub(crate) fn sort(&mut self) {
        for level in self.levels.iter_mut().skip(1) {
            level.sort_by(|a, b| a.table.meta().smallest.cmp(&b.table.meta().smallest));
        }
    }
}

struct Head {
    entry: Entry,
    source: usize,
    reverse: bool,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // BinaryHeap is a max-heap: reverse so the smallest internal key pops first; ties
    // (the same version in two sources) go to the lower source index (newer data).
    fn cmp(&self, other: &Self) -> Ordering {
        let by_key =
            cmp_internal(&other.entry.key, other.entry.seq, &self.entry.key, self.entry.seq);
        let by_key = if self.reverse { by_key.reverse() } else { by_key };
        by_key.then(other.source.cmp(&self.source))
    }
}

/// Merges sorted sources into one stream in internal-key order (or, reversed, in
/// descending order from sources that are each descending).
pub(crate) struct Merge<'a> {
    sources: Vec<Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>>,
    heap: BinaryHeap<Head>,
    started: bool,
    reverse: bool,
}

impl<'a> Merge<'a> {
    pub(crate) fn new(sources: Vec<Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>>) -> Self {
        Self { sources, heap: BinaryHeap::new(), started: false, reverse: false }
    }

    pub(crate) fn new_reverse(
        sources: Vec<Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>>,
    ) -> Self {
        Self { reverse: true, ..Self::new(sources) }
    }

    fn pull(&mut self, source: usize) -> Result<()> {
        if let Some(next) = self.sources[source].next() {
            self.heap.push(Head { entry: next?, source, reverse: self.reverse });
        }
        Ok(())
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        // Replace the top with its source's next entry and let it sink (one sift instead
        // of a pop and a push); a long run from one source stays on top cheaply.
        let mut top = self.heap.peek_mut()?;
        match self.sources[top.source].next() {
            Some(Ok(next)) => Some(Ok(std::mem::replace(&mut top.entry, next))),
            Some(Err(e)) => {
                PeekMut::pop(top);
                Some(Err(e))
            }
            None => Some(Ok(PeekMut::pop(top).entry)),
        }
    }
}
