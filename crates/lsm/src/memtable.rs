//! The memtable: sorted leaves of up to [`LEAF_MAX`] versions, each a small B-tree
//! behind its own reader-writer lock, found through an index of the leaves' lower
//! bounds; with its size in bytes.
//!
//! An insert looks up its leaf in the index (a few thousand leaves even for a million
//! versions, so it stays in cache, behind a lock that is written only when a leaf
//! splits) and inserts into a B-tree of a few hundred entries. The skiplist of every
//! version that this replaced took a cache miss per level: 1.8 µs per insert at random
//! positions in 600,000 versions against 0.8 µs here, and an exchange's account keys
//! land at random positions. One writer at a time inserts. A reader locks one leaf at a
//! time, only to copy out at most a chunk of entries, so it holds up the writer only
//! when both are in the same leaf, and then for microseconds. (Taking out shared
//! references under the lock and copying after it was slower in `examples/scan_loop`:
//! each row's key was copied twice, and its value block's shared counter went up and
//! down once more per row.) (One lock over the whole table was faster still for
//! inserts, and halved the throughput of writers racing readers: a reader preempted
//! while holding it stalled every writer.)
//!
//! A leaf whose inserts all came in ascending order holds them in a sorted vector
//! instead of a B-tree (see `LeafData`): an instrument's ticks, trades and book deltas
//! are keyed by time, so its partition's inserts append at the end of a few leaves, and
//! an append then compares with one version and pushes, where the B-tree's descent
//! took a cache miss per level.
//!
//! The writer remembers the last few leaves that it appended to, with their lower
//! bounds, and inserts into one of them without a search of the index when the key
//! falls in its range (see `Writer`): the families of an instrument's partition each
//! append to one leaf, so most of their inserts take no search.
//!
//! A leaf covers the keys from its lower bound (its key in the index, which never
//! changes) up to `high`, exclusive (`None`: no end). A full leaf splits: the writer
//! moves its upper half into a new leaf and adds that to the index before it releases
//! the old leaf's lock. A reader that locked a leaf and finds its key at or past `high`
//! looks the leaf up again. Leaves are never removed (a memtable only grows).

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::key::{key_prefix, Entry, InternalKey, Kind, SeqNo};

/// Bytes of one version in a leaf: its key (with up to [`INLINE_KEY_BYTES`] of the
/// user key inline) and its value's handle.
const ENTRY_BYTES: usize = std::mem::size_of::<(MemKey, Value)>();

/// Bytes accounted per version in a leaf's B-tree: the version itself over the
/// nodes' fill, which is about two thirds (random inserts) down to a half (ascending
/// ones), plus the internal nodes and the allocator's size classes. Measured with
/// `examples/memtable_footprint`, which compares the accounting with the heap.
const MAP_ENTRY_BYTES: usize = ENTRY_BYTES * 2;

/// Bytes accounted per leaf beyond its versions: the leaf itself behind its lock and
/// reference count, and its entry in the index.
const LEAF_BYTES: usize =
    std::mem::size_of::<LeafData>() + 2 * std::mem::size_of::<(MemKey, Leaf)>() + 64;

/// User keys up to this many bytes live inside the key.
const INLINE_KEY_BYTES: usize = 32;

/// A leaf holding more versions than this splits.
#[cfg(not(test))]
const LEAF_MAX: usize = 512;
/// Tiny leaves in unit tests, so that the model test splits them all the time.
#[cfg(test)]
const LEAF_MAX: usize = 4;

/// The least room a run reserves when it grows.
const RUN_MIN: usize = 4;

/// A full leaf whose last this many inserts came in ascending order splits after the
/// last one (see [`LeafData::split`]).
#[cfg(not(test))]
const STREAK_MIN: usize = 16;
/// Small in unit tests, where leaves hold four versions.
#[cfg(test)]
const STREAK_MIN: usize = 2;

/// The first chunk an iterator copies out; each next one doubles, up to [`CHUNK_MAX`].
const CHUNK_MIN: usize = 16;
/// The most entries an iterator copies out at a time.
const CHUNK_MAX: usize = 128;

/// The memtable's internal key. A search compares keys in many nodes it never uses,
/// so each comparison must stay within the node: the user key is stored inline (up to
/// [`INLINE_KEY_BYTES`]), and its first sixteen bytes, as two big-endian integers
/// ([`key_prefix`]), decide most comparisons with integer compares (keys that share
/// their first eight bytes are common: a family letter and a timestamp's high bytes, or
/// a zero-padded counter). Equal integers fall through to the full comparison.
#[derive(Debug, PartialEq, Eq)]
struct MemKey {
    prefix: u64,
    prefix2: u64,
    user_key: SmallVec<[u8; INLINE_KEY_BYTES]>,
    seq: SeqNo,
}

impl MemKey {
    fn new(user_key: &[u8], seq: SeqNo) -> MemKey {
        MemKey {
            prefix: key_prefix(user_key),
            prefix2: key_prefix(user_key.get(8..).unwrap_or_default()),
            user_key: SmallVec::from_slice(user_key),
            seq,
        }
    }

    fn from_internal(k: &InternalKey) -> MemKey {
        MemKey::new(&k.user_key, k.seq)
    }

    /// The smallest internal key (the empty user key at the highest sequence): the
    /// first leaf's lower bound.
    fn min() -> MemKey {
        MemKey::new(&[], SeqNo::MAX)
    }
}

/// By hand: `SmallVec`'s own `clone` pushes the bytes one at a time (it is written for
/// any `Clone` item), about 190 instructions for a typical key against one copy here,
/// and the writer clones a key for most inserts (the leaf's last key, a leaf's bound).
impl Clone for MemKey {
    fn clone(&self) -> Self {
        MemKey {
            prefix: self.prefix,
            prefix2: self.prefix2,
            user_key: SmallVec::from_slice(&self.user_key),
            seq: self.seq,
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.prefix = source.prefix;
        self.prefix2 = source.prefix2;
        self.user_key.clear();
        self.user_key.extend_from_slice(&source.user_key);
        self.seq = source.seq;
    }
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.prefix
            .cmp(&other.prefix)
            .then(self.prefix2.cmp(&other.prefix2))
            .then_with(|| self.user_key.as_slice().cmp(other.user_key.as_slice()))
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// A version's kind and value. The value is a slice of one of the memtable's value
/// blocks (see [`Arena`]).
type Value = (Kind, Bytes);

/// Bytes of one value block.
const BLOCK_BYTES: usize = 32 << 10;

/// Values at least this large get a block of their own.
const BLOCK_VALUE_MAX: usize = BLOCK_BYTES / 4;

/// Where the memtable's values live: blocks of [`BLOCK_BYTES`], each value a
/// reference-counted slice of one. An insert copies its value into the current block
/// instead of allocating it alone: one allocation per few hundred typical values
/// rather than one each, and they are freed together when the last memtable entry
/// (or other handle) that holds the block goes.
#[derive(Debug, Default)]
struct Arena {
    /// The current block's unused part.
    block: BytesMut,
    /// Where new blocks come from first, when the memtable has a pool.
    pool: Option<Arc<BlockPool>>,
}

impl Arena {
    /// A handle on a copy of `value`.
    fn copy(&mut self, value: &[u8]) -> Bytes {
        if value.len() >= BLOCK_VALUE_MAX {
            return Bytes::copy_from_slice(value);
        }
        if self.block.capacity() - self.block.len() < value.len() {
            self.block = self
                .pool
                .as_ref()
                .and_then(|p| p.take())
                .unwrap_or_else(|| BytesMut::with_capacity(BLOCK_BYTES));
        }
        self.block.extend_from_slice(value);
        // What was written goes out as its own handle on the block; the rest stays.
        self.block.split().freeze()
    }
}

/// Value blocks made ahead of need, for the arenas of the memtables that share it
/// ([`Memtable::with_block_pool`]), by a thread of their owner's that runs
/// [`BlockPool::run`]. A block is written in full when it is made, so its pages are
/// in memory before an insert copies into it: otherwise the first copy into each
/// 4 KiB page of a fresh block takes a page fault on the writer's thread (in a
/// profile of one-event submits, about half the memtables' faults, and 4.7% of the
/// time inside a submit). Holds at most `blocks` blocks (32 KiB each);
/// an arena that finds it empty makes its block itself, as without a pool.
#[derive(Debug)]
pub struct BlockPool {
    /// Whether arenas take from the pool now ([`BlockPool::serve`]).
    serving: std::sync::atomic::AtomicBool,
    state: Mutex<PoolState>,
    /// Signalled when the pool is down to half, or stopped.
    low: parking_lot::Condvar,
    blocks: usize,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: Vec<BytesMut>,
    stopped: bool,
}

impl BlockPool {
    /// An empty pool of at most `blocks` blocks; [`BlockPool::run`] fills it.
    pub fn new(blocks: usize) -> BlockPool {
        BlockPool {
            serving: std::sync::atomic::AtomicBool::new(true),
            state: Mutex::default(),
            low: parking_lot::Condvar::new(),
            blocks,
        }
    }

    /// Sets whether arenas take from the pool (initially they do). An owner whose
    /// every core is busy turns it off: the filler's work then competes with threads
    /// the writer waits for, and a block written on another core costs the writer's
    /// copies a transfer per cache line. While off, nothing is taken, so nothing is
    /// refilled.
    pub fn serve(&self, on: bool) {
        if self.serving.load(Ordering::Relaxed) != on {
            self.serving.store(on, Ordering::Relaxed);
        }
    }

    /// Blocks ready now.
    pub fn ready(&self) -> usize {
        self.state.lock().ready.len()
    }

    /// A ready block, if there is one; asks for more when the pool is down to half.
    fn take(&self) -> Option<BytesMut> {
        if !self.serving.load(Ordering::Relaxed) {
            return None;
        }
        let mut s = self.state.lock();
        let block = s.ready.pop();
        if s.ready.len() <= self.blocks / 2 {
            // Cheap when the filler is not waiting (it is filling already).
            self.low.notify_one();
        }
        block
    }

    /// Fills the pool whenever it is down to half, until [`BlockPool::stop`]: the loop
    /// of the owner's thread. Blocks are made outside the lock, a few at a time, with
    /// the core offered to other threads in between: on a machine with both cores busy
    /// (an apply lane, flushes), a refill made in one stretch held up the thread the
    /// writer was waiting for.
    pub fn run(&self) {
        const STEP: usize = 4;
        loop {
            {
                let mut s = self.state.lock();
                while !s.stopped && s.ready.len() > self.blocks / 2 {
                    self.low.wait(&mut s);
                }
                if s.stopped {
                    return;
                }
            }
            loop {
                let made: Vec<BytesMut> = (0..STEP)
                    .map(|_| {
                        let mut b = BytesMut::with_capacity(BLOCK_BYTES);
                        // Written to bring its pages in; then emptied, keeping its room.
                        b.resize(BLOCK_BYTES, 0);
                        b.clear();
                        b
                    })
                    .collect();
                let full = {
                    let mut s = self.state.lock();
                    if s.stopped {
                        return;
                    }
                    let room = self.blocks.saturating_sub(s.ready.len());
                    s.ready.extend(made.into_iter().take(room));
                    s.ready.len() >= self.blocks
                };
                if full {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }

    /// Ends [`BlockPool::run`] (now, or when it finishes the blocks it is making) and
    /// frees the ready blocks.
    pub fn stop(&self) {
        let mut s = self.state.lock();
        s.stopped = true;
        s.ready.clear();
        self.low.notify_all();
    }
}

/// A leaf's contents: its versions, and where its range ends.
///
/// The versions are in one of two forms, never both (at most one of `run` and `map`
/// is non-empty). A leaf whose inserts have all come in ascending order (the tail of a
/// time-ordered family: an instrument's ticks, trades, book deltas) keeps them in
/// `run`, a sorted vector, so an insert compares with the last version and appends:
/// no descent of a B-tree whose right edge a leaf of another family has pushed out of
/// the cache. The first insert below the run's last version moves the run into `map`,
/// and the leaf stays a map from then on.
#[derive(Debug, Default)]
struct LeafData {
    /// The versions, in ascending order, while every insert has come in that order.
    run: Vec<(MemKey, Value)>,
    /// The versions, once one insert came out of order.
    map: BTreeMap<MemKey, Value>,
    /// The last version inserted into `map`.
    last: Option<MemKey>,
    /// How many inserts into `map` in a row came each above the one before.
    streak: usize,
    /// The exclusive upper bound of the leaf's range; `None` for the last leaf.
    high: Option<MemKey>,
}

impl LeafData {
    /// The number of versions.
    fn len(&self) -> usize {
        self.run.len() + self.map.len()
    }

    /// The bytes the versions take, as accounted: the run's whole capacity, or the
    /// map's versions at [`MAP_ENTRY_BYTES`] (values and spilled keys are accounted
    /// apart).
    fn footprint(&self) -> usize {
        self.run.capacity() * ENTRY_BYTES + self.map.len() * MAP_ENTRY_BYTES
    }

    /// The versions within `range`, in ascending order (either way round).
    fn range<'a>(
        &'a self,
        range: (Bound<&MemKey>, Bound<&MemKey>),
    ) -> impl DoubleEndedIterator<Item = (&'a MemKey, &'a Value)> + 'a {
        // The first index past every version below `k` (and past `k` itself too when
        // `past_equal`).
        let index = |k: &MemKey, past_equal: bool| {
            self.run.partition_point(|(x, _)| x < k || (past_equal && x == k))
        };
        let start = match range.0 {
            Bound::Included(k) => index(k, false),
            Bound::Excluded(k) => index(k, true),
            Bound::Unbounded => 0,
        };
        let end = match range.1 {
            Bound::Included(k) => index(k, true),
            Bound::Excluded(k) => index(k, false),
            Bound::Unbounded => self.run.len(),
        };
        let run = self.run.get(start..end.max(start)).unwrap_or_default();
        self.map.range(range).chain(run.iter().map(|(k, v)| (k, v)))
    }

    /// Inserts a version; returns whether it is new (the same key and sequence again
    /// replaces the value).
    fn insert(&mut self, k: MemKey, v: Value) -> bool {
        if self.map.is_empty() {
            match self.run.last_mut() {
                Some((last, _)) if k > *last => {}
                None => {}
                Some((last, value)) if k == *last => {
                    *value = v;
                    return false;
                }
                // Out of order: the leaf becomes a map (built from the sorted run in one
                // pass) for good.
                Some(_) => self.map = std::mem::take(&mut self.run).into_iter().collect(),
            }
            if self.map.is_empty() {
                if self.run.len() == self.run.capacity() {
                    // Doubling, but never past what a leaf holds before it splits: a
                    // full run would otherwise double once more for its last version
                    // and keep half its room unused for good.
                    let most = (LEAF_MAX + 1).saturating_sub(self.run.len()).max(1);
                    let room = self.run.len().max(RUN_MIN).min(most);
                    self.run.reserve_exact(room);
                }
                self.run.push((k, v));
                return true;
            }
        }
        self.streak = match &self.last {
            Some(prev) if k > *prev => self.streak + 1,
            _ => 0,
        };
        match &mut self.last {
            Some(last) => last.clone_from(&k),
            None => self.last = Some(k.clone()),
        }
        self.map.insert(k, v).is_none()
    }

    /// Splits a leaf that holds too many versions, `inserted` being the one just
    /// inserted: returns the new leaf, holding the upper part, with its lower bound.
    /// When `inserted` is the leaf's last version (keys in ascending order), it alone
    /// starts the new leaf, as a run with room for a whole leaf (the family's next
    /// versions fill it; one that stops there leaves that room unused, but accounted).
    /// When the inserts came in ascending order for a while but below other versions
    /// (a family appending below the start of the next one: an instrument's ticks
    /// below its trades), the leaf splits right after `inserted`, so that the family's
    /// next versions go last in this leaf and its next split is the first kind.
    /// Otherwise the leaf splits in the middle.
    fn split(&mut self, inserted: &MemKey) -> Option<(MemKey, LeafData)> {
        let mut right = LeafData::default();
        if self.map.is_empty() {
            let appended = self.run.last().is_some_and(|(last, _)| last == inserted);
            let at = if appended { self.run.len() - 1 } else { self.run.len() / 2 };
            if appended {
                // A family that filled this leaf in order fills the new one too: room for
                // all of it now, rather than a reallocation (and a copy) at every
                // doubling. Accounted from now on (see `footprint`), so the room a family
                // that stops here leaves unused still counts against the budget.
                right.run.reserve_exact(LEAF_MAX + 1);
            }
            right.run.extend(self.run.drain(at..));
        } else if self.map.last_key_value().is_some_and(|(last, _)| last == inserted) {
            right.run.extend(self.map.pop_last());
        } else if self.streak >= STREAK_MIN {
            let after = (Bound::Excluded(inserted), Bound::Unbounded);
            let next = self.map.range(after).next()?.0.clone();
            right.map = self.map.split_off(&next);
        } else {
            let mid = self.map.keys().nth(self.map.len() / 2).cloned()?;
            right.map = self.map.split_off(&mid);
        }
        let low = right.range((Bound::Unbounded, Bound::Unbounded)).next()?.0.clone();
        right.high = self.high.replace(low.clone());
        Some((low, right))
    }
}

type Leaf = Arc<RwLock<LeafData>>;

/// Versions a [`KeyFilter`] word stands for, as planned: about ten bits a key, for about
/// one lookup in a hundred of an absent key going past the filter.
const KEYS_PER_WORD: usize = 6;

/// A filter of the user keys a memtable holds (a bloom filter blocked by 64-bit word:
/// a key sets four bits of one word), so that a point lookup of a key the memtable does
/// not hold (a new order id, checked for a repeat) answers from one word instead of a
/// descent through the index and a leaf. One writer sets bits; readers may run at the
/// same time (a key's bits are set before its version is inserted).
#[derive(Debug)]
struct KeyFilter {
    words: Box<[AtomicU64]>,
}

impl KeyFilter {
    /// A filter planned for `keys` keys (more only raise the false positives).
    fn new(keys: usize) -> KeyFilter {
        let n = (keys / KEYS_PER_WORD).max(64).next_power_of_two();
        KeyFilter { words: (0..n).map(|_| AtomicU64::new(0)).collect() }
    }

    fn probe(&self, key: &[u8]) -> (&AtomicU64, u64) {
        let h = crate::bloom::hash(key);
        let bits = (0..4).fold(0u64, |b, i| b | 1 << ((h >> (6 * i)) & 63));
        // The word from the high half, the bits from the low: independent enough.
        let at = (h >> 32) as usize & (self.words.len() - 1);
        (&self.words[at], bits)
    }

    fn add(&self, key: &[u8]) {
        let (word, bits) = self.probe(key);
        word.fetch_or(bits, Ordering::Relaxed);
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        let (word, bits) = self.probe(key);
        word.load(Ordering::Relaxed) & bits == bits
    }

    fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Leaves the writer remembers (see [`Writer`]): an instrument partition's families
/// that append (ticks, book deltas, trades, the order flow, book checkpoints and
/// snapshots) each write one leaf at a time.
const RECENT_LEAVES: usize = 8;

/// What only the writer uses: its value arena, and the run leaves it wrote last with
/// their lower bounds. An insert whose key lies in one of those leaves locks it directly,
/// without a search of the index (thousands of leaves), the index's shared lock and a
/// reference count taken and dropped. A leaf's lower bound never changes and only the
/// writer splits leaves, so the leaf whose bound is the greatest at or below the key is
/// the key's leaf whenever the key is also below its `high` (checked under its lock);
/// otherwise the index decides, as for any leaf not remembered.
#[derive(Debug, Default)]
struct Writer {
    arena: Arena,
    recent: SmallVec<[(MemKey, Leaf); RECENT_LEAVES]>,
    /// The slot the next leaf remembered replaces, once all are taken.
    next: usize,
    /// Inserts that searched the index for their leaf.
    searches: u64,
}

impl Writer {
    /// The remembered leaf with the greatest lower bound at or below `k`.
    fn recent_for(&self, k: &MemKey) -> Option<&Leaf> {
        let mut best: Option<&(MemKey, Leaf)> = None;
        for e in &self.recent {
            if e.0 <= *k && best.is_none_or(|b| e.0 > b.0) {
                best = Some(e);
            }
        }
        best.map(|(_, leaf)| leaf)
    }

    /// Remembers `leaf` (lower bound `low`), in place of the one remembered longest ago
    /// once all slots are taken.
    fn remember(&mut self, low: MemKey, leaf: Leaf) {
        if self.recent.len() < RECENT_LEAVES {
            self.recent.push((low, leaf));
        } else {
            self.recent[self.next] = (low, leaf);
            self.next = (self.next + 1) % RECENT_LEAVES;
        }
    }
}

/// An in-memory sorted run of writes. Concurrent readers and one writer at a time.
#[derive(Debug)]
pub struct Memtable {
    leaves: RwLock<BTreeMap<MemKey, Leaf>>,
    /// Taken by the one writer only (inserts are serialised by the tree).
    writer: Mutex<Writer>,
    len: AtomicUsize,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    /// The lowest sequence inserted (`u64::MAX` when empty).
    min_seq: AtomicU64,
    /// Present when made by [`Memtable::with_filter`].
    filter: Option<KeyFilter>,
}

impl Default for Memtable {
    fn default() -> Self {
        let leaves = BTreeMap::from([(MemKey::min(), Leaf::default())]);
        Memtable {
            leaves: RwLock::new(leaves),
            writer: Mutex::default(),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
            filter: None,
        }
    }
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable with a filter of its keys planned for about `keys` of them
    /// (about 10 bits each): [`Memtable::get`] of a key it does not hold then usually
    /// answers without a search. For tables that are read by point lookups of keys
    /// that are often absent; it costs every insert a hash and a word.
    pub fn with_filter(keys: usize) -> Self {
        Memtable { filter: Some(KeyFilter::new(keys)), ..Self::default() }
    }

    /// The same memtable, taking its value blocks from `pool` first (see
    /// [`BlockPool`]).
    pub fn with_block_pool(mut self, pool: Arc<BlockPool>) -> Self {
        self.writer.get_mut().arena.pool = Some(pool);
        self
    }

    /// The leaf whose range holds `k`, as the index says now (the caller checks
    /// `high` once it holds the lock).
    fn leaf_for(&self, k: &MemKey) -> Leaf {
        self.indexed_leaf_for(k).1
    }

    /// [`Memtable::leaf_for`] with the leaf's lower bound.
    fn indexed_leaf_for(&self, k: &MemKey) -> (MemKey, Leaf) {
        if let Some((low, leaf)) = self.leaves.read().range(..=k).next_back() {
            return (low.clone(), leaf.clone());
        }
        // Not reached: the first leaf's bound is the smallest key, and leaves are never
        // removed. Restore it rather than write into a leaf nobody can find.
        (MemKey::min(), self.leaves.write().entry(MemKey::min()).or_default().clone())
    }

    /// Inserts one version. A second version of `key` with the same `seq` replaces the
    /// first (within one batch, the last write of a key wins).
    pub fn insert(&self, key: &[u8], seq: SeqNo, kind: Kind, value: &[u8]) {
        // Before the version: a reader that can see the version sees its bits.
        if let Some(f) = &self.filter {
            f.add(key);
        }
        // Built before a lock is taken, so readers wait only for the tree's insert.
        let k = MemKey::new(key, seq);
        let mut w = self.writer.lock();
        let v: Value = (kind, w.arena.copy(value));
        // The value as its length in its block (the blocks' unused tails, at most a
        // block's worth at a time, are not accounted).
        let mut added = value.len();
        if key.len() > INLINE_KEY_BYTES {
            added += key.len();
        }
        // The leaf the index found, if no remembered one covered the key; a leaf to
        // remember (one a split made); whether the index's leaf is worth remembering.
        let mut indexed = None;
        let mut learned = None;
        let run;
        {
            // A remembered leaf, if it still covers the key; else the index's.
            let mut hit = None;
            if let Some(leaf) = w.recent_for(&k) {
                let d = leaf.write();
                if d.high.as_ref().is_none_or(|h| k < *h) {
                    hit = Some(d);
                }
            }
            let mut d = match hit {
                Some(d) => d,
                None => indexed.insert(self.indexed_leaf_for(&k)).1.write(),
            };
            // Inserts are serialised by the writer's lock, which is held, so no split can
            // have moved the key out of the leaf the index gave.
            debug_assert!(d.high.as_ref().is_none_or(|h| k < *h));
            // The key is kept only for a split; the leaf's insert is a single descent (or
            // none, for a run), since asking first where the key goes cost a second one
            // with cache misses all the way down on a cold leaf.
            let probe = (d.len() >= LEAF_MAX).then(|| k.clone());
            let before = d.footprint();
            if d.insert(k, v) {
                self.len.store(self.len.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            // Only runs are remembered: a family appends to them, while a B-tree leaf
            // takes inserts at random (an account's keys), where remembering costs more
            // than it saves (a leaf forgotten is a cold reference count dropped).
            run = d.map.is_empty();
            if let Some(k) = probe.filter(|_| d.len() > LEAF_MAX) {
                if let Some((low, right)) = d.split(&k) {
                    added += right.footprint() + LEAF_BYTES;
                    let right_run = right.map.is_empty();
                    let right = Arc::new(RwLock::new(right));
                    // Published while the left leaf is still locked: a reader that finds
                    // its key past the new `high` looks again and finds this one.
                    self.leaves.write().insert(low.clone(), right.clone());
                    // An appending family's next versions go there.
                    learned = right_run.then_some((low, right));
                }
            }
            // Signed: the leaf itself can shrink (a split moved half of it out).
            let grown = (added + d.footprint()) as isize - before as isize;
            // One writer at a time: plain stores, no read-modify-write.
            let bytes = self.bytes.load(Ordering::Relaxed).saturating_add_signed(grown);
            self.bytes.store(bytes, Ordering::Relaxed);
        }
        w.searches += u64::from(indexed.is_some());
        if let Some((low, leaf)) = learned.or(indexed.filter(|_| run)) {
            w.remember(low, leaf);
        }
        drop(w);
        if seq > self.max_seq.load(Ordering::Relaxed) {
            self.max_seq.store(seq, Ordering::Relaxed);
        }
        if seq < self.min_seq.load(Ordering::Relaxed) {
            self.min_seq.store(seq, Ordering::Relaxed);
        }
    }

    /// Up to `n` versions from `at` on, in internal order, one leaf at a time, and none
    /// whose user key is past `end`: fewer than `n` means there are no more in range.
    fn chunk(&self, mut at: Bound<MemKey>, n: usize, end: Bound<&[u8]>) -> Vec<Entry> {
        let in_range = |k: &MemKey| within(&k.user_key, (Bound::Unbounded, end));
        // Room for a typical chunk up front: it is filled under a leaf's lock, where each
        // reallocation moves every entry taken so far. (Not all of `n`: a scan's last
        // chunk, often empty, would reserve tens of kilobytes for nothing.)
        let mut out = Vec::with_capacity(n.min(CHUNK_MAX));
        while out.len() < n {
            let probe = match &at {
                Bound::Included(k) | Bound::Excluded(k) => k.clone(),
                Bound::Unbounded => MemKey::min(),
            };
            let leaf = self.leaf_for(&probe);
            race_window();
            let d = leaf.read();
            if d.high.as_ref().is_some_and(|h| probe >= *h) {
                // Split since the lookup: look again.
                continue;
            }
            let ended =
                take_within(&mut out, n, d.range((at.as_ref(), Bound::Unbounded)), in_range);
            let next = d.high.clone();
            drop(d);
            match next {
                // The next leaf starts at `h`: nothing there is in range past the end.
                Some(h) if !ended && in_range(&h) => at = Bound::Included(h),
                _ => break,
            }
        }
        out
    }

    /// Up to `n` versions from `from` on (internal order; `None`: from the start) whose
    /// user keys are within `end`, copied out in one pass: fewer than `n` means the range
    /// holds no more. For a scan that knows its end: nothing past it is copied.
    pub fn chunk_from(
        &self,
        from: Option<&InternalKey>,
        n: usize,
        end: Bound<&[u8]>,
    ) -> Vec<Entry> {
        let at = match from {
            Some(k) => Bound::Included(MemKey::from_internal(k)),
            None => Bound::Unbounded,
        };
        self.chunk(at, n, end)
    }

    /// The newest version of `key` with a sequence at most `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Option<(SeqNo, Kind, Vec<u8>)> {
        if self.filter.as_ref().is_some_and(|f| !f.may_contain(key)) {
            return None;
        }
        // The first version at or after (key, snapshot); only a version of `key` is
        // copied out (a miss, the common case for a new id, allocates nothing).
        let mut probe = MemKey::new(key, snapshot);
        loop {
            let leaf = self.leaf_for(&probe);
            race_window();
            let d = leaf.read();
            if d.high.as_ref().is_some_and(|h| probe >= *h) {
                // Split since the lookup: look again.
                continue;
            }
            // Copied under the lock, as a chunk is (see the module's notes).
            let first = d.range((Bound::Included(&probe), Bound::Unbounded)).next().map(
                |(k, (kind, value))| {
                    (k.user_key.as_slice() == key).then(|| (k.seq, *kind, value.to_vec()))
                },
            );
            match first {
                Some(found) => return found,
                // Nothing here at or after the probe: the next leaf's first version is
                // (its lower bound is this leaf's `high`).
                None => match &d.high {
                    Some(h) => probe = h.clone(),
                    None => return None,
                },
            }
        }
    }

    /// Every version at or after `from` (internal order), as owned entries, lazily:
    /// the iterator copies growing chunks out and holds no lock between them, so it
    /// may run alongside inserts (it sees those after its position, like any reader
    /// of a live memtable; snapshots filter them).
    pub fn iter_from<'a>(&'a self, from: Option<&InternalKey>) -> impl Iterator<Item = Entry> + 'a {
        MemIter {
            mem: self,
            at: match from {
                Some(k) => Bound::Included(MemKey::from_internal(k)),
                None => Bound::Unbounded,
            },
            buf: Vec::new().into_iter(),
            chunk: CHUNK_MIN,
            done: false,
        }
    }

    /// Calls `f` with every version in internal order, lending key and value instead of
    /// copying them out (a flush writes each once and keeps nothing). Only for a
    /// memtable that takes no more inserts: the leaves are listed once at the start, so
    /// a split during the walk would hide the versions it moved. Holds one leaf's read
    /// lock at a time, for as long as `f` takes on that leaf's versions.
    pub(crate) fn for_each_frozen<E>(
        &self,
        mut f: impl FnMut(&[u8], SeqNo, Kind, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let leaves: Vec<Leaf> = self.leaves.read().values().cloned().collect();
        for leaf in leaves {
            let d = leaf.read();
            for (k, (kind, value)) in d.range((Bound::Unbounded, Bound::Unbounded)) {
                f(&k.user_key, k.seq, *kind, value)?;
            }
        }
        Ok(())
    }

    /// Up to `n` versions strictly before `bound` (or before the end), in descending
    /// internal order.
    pub fn before(&self, bound: Option<&InternalKey>, n: usize) -> Vec<Entry> {
        self.before_within(bound, n, Bound::Unbounded)
    }

    /// Like [`Memtable::before`], and none whose user key is before `start`: fewer than
    /// `n` means the range holds no more. For a reverse scan that knows where it
    /// starts: nothing before that is copied.
    pub fn before_within(
        &self,
        bound: Option<&InternalKey>,
        n: usize,
        start: Bound<&[u8]>,
    ) -> Vec<Entry> {
        let in_range = |k: &MemKey| within(&k.user_key, (start, Bound::Unbounded));
        let mut end = bound.map(MemKey::from_internal);
        // As in `chunk`: room for a typical chunk, filled under a leaf's lock.
        let mut out = Vec::with_capacity(n.min(CHUNK_MAX));
        while out.len() < n {
            let found = {
                let leaves = self.leaves.read();
                let e = match &end {
                    Some(b) => leaves.range(..b).next_back(),
                    None => leaves.iter().next_back(),
                };
                e.map(|(low, leaf)| (low.clone(), leaf.clone()))
            };
            let Some((low, leaf)) = found else { break };
            race_window();
            let d = leaf.read();
            let covers = match (&end, &d.high) {
                (_, None) => true,
                (Some(b), Some(h)) => b <= h,
                (None, Some(_)) => false,
            };
            if !covers {
                // Split since the lookup: look again.
                continue;
            }
            let upper = end.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let ended =
                take_within(&mut out, n, d.range((Bound::Unbounded, upper)).rev(), in_range);
            drop(d);
            // The previous leaf holds only versions before `low`: none is in range when
            // `low` itself is not.
            if ended || !in_range(&low) {
                break;
            }
            end = Some(low);
        }
        out
    }

    /// Accounted size in bytes: what the versions, their values, the leaves and the key
    /// filter take on the heap (runs by their capacity, B-tree versions with their
    /// nodes' slack), which `examples/memtable_footprint` finds within about 10% of the
    /// heap jemalloc counts, in the partitions' shapes.
    pub fn bytes(&self) -> usize {
        // The filter counts once something is in (an empty memtable takes nothing a
        // flush could free, and callers take 0 for "nothing in memory").
        match self.bytes.load(Ordering::Relaxed) {
            0 => 0,
            b => b + self.filter.as_ref().map_or(0, KeyFilter::bytes),
        }
    }

    /// Number of versions held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// Between a reader's lookup of a leaf and its lock: unit tests yield here, so that
/// splits land in that window often enough for the race test to see a reader that
/// ignored them.
#[inline(always)]
fn race_window() {
    #[cfg(test)]
    std::thread::yield_now();
}

/// [`Memtable::iter_from`]'s iterator.
struct MemIter<'a> {
    mem: &'a Memtable,
    /// Where the next chunk starts.
    at: Bound<MemKey>,
    buf: std::vec::IntoIter<Entry>,
    chunk: usize,
    done: bool,
}

impl Iterator for MemIter<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        loop {
            if let Some(e) = self.buf.next() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            let chunk = self.mem.chunk(self.at.clone(), self.chunk, Bound::Unbounded);
            self.done = chunk.len() < self.chunk;
            if let Some(last) = chunk.last() {
                self.at = Bound::Excluded(MemKey::new(&last.key, last.seq));
            }
            self.chunk = (self.chunk * 2).min(CHUNK_MAX);
            self.buf = chunk.into_iter();
        }
    }
}

/// What a reader copies out of a leaf while it holds the lock.
fn take((k, (kind, value)): (&MemKey, &Value)) -> Entry {
    Entry { key: k.user_key.to_vec(), seq: k.seq, kind: *kind, value: value.to_vec() }
}

/// Whether a user key lies within a range of user keys.
fn within(key: &[u8], range: (Bound<&[u8]>, Bound<&[u8]>)) -> bool {
    RangeBounds::<&[u8]>::contains(&range, &key)
}

/// Takes `entries` out (under their leaf's lock) into `out` until it holds `n`; returns
/// whether it stopped at an entry outside the range.
fn take_within<'a>(
    out: &mut Vec<Entry>,
    n: usize,
    entries: impl Iterator<Item = (&'a MemKey, &'a Value)>,
    in_range: impl Fn(&MemKey) -> bool,
) -> bool {
    for entry in entries {
        if out.len() == n {
            return false;
        }
        if !in_range(entry.0) {
            return true;
        }
        out.push(take(entry));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The prefix shortcut and inline storage order keys exactly as user keys
        /// (short keys, zero bytes and keys longer than the inline buffer included).
        /// `b` starts with up to 24 of `a`'s bytes, so that the two often share the 16
        /// bytes the prefixes hold and only the full comparison can tell them apart.
        #[test]
        fn mem_key_order_is_user_key_order(
            a in proptest::collection::vec(0u8..3, 0..40),
            shared in 0usize..24,
            tail in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let b: Vec<u8> = a.iter().take(shared).chain(&tail).copied().collect();
            prop_assert_eq!(MemKey::new(&a, 0).cmp(&MemKey::new(&b, 0)), a.cmp(&b));
        }

        /// Against a sorted map of internal keys: inserts in any sequence order (the
        /// same key and sequence twice replaces), then `get` at any snapshot,
        /// `iter_from` any internal key, `chunk_from` it up to any end and `before` any
        /// bound (down to any start) agree with the model.
        #[test]
        fn memtable_equals_a_sorted_map_of_versions(
            ops in proptest::collection::vec((0u8..6, 1u64..30, any::<bool>(), any::<u8>()), 0..120),
            probes in proptest::collection::vec((0u8..7, 0u64..32, 0usize..12), 1..20),
            ascending in 0usize..120,
            filtered in any::<bool>(),
        ) {
            // Short keys, and (from 3 on) keys that share their first 24 bytes, past the
            // 16 the integer prefixes hold, so that only the full comparison tells
            // them apart.
            let key = |k: u8| {
                let stem = if k < 3 { vec![b'k'; k as usize + 1] } else { vec![b'L'; 24 + k as usize % 2] };
                stem.into_iter().chain([k]).collect::<Vec<u8>>()
            };
            // The first `ascending` inserts come in internal order (key up, sequence
            // down), as a time-ordered family's do: leaves keep them as runs, split
            // them, and turn into maps at the first insert out of order.
            let mut ops = ops;
            let sorted = ascending.min(ops.len());
            ops[..sorted].sort_by_key(|&(k, seq, ..)| (key(k), std::cmp::Reverse(seq)));
            // A filter planned for a handful of keys: full, so it answers "maybe" often
            // and "no" sometimes, both of which must leave `get` exact.
            let m = if filtered { Memtable::with_filter(4) } else { Memtable::new() };
            let mut model = std::collections::BTreeMap::new();
            for &(k, seq, put, v) in &ops {
                let kind = if put { Kind::Put } else { Kind::Delete };
                m.insert(&key(k), seq, kind, &[v]);
                model.insert(InternalKey { user_key: key(k), seq }, (kind, vec![v]));
            }
            let entry = |(k, (kind, v)): (&InternalKey, &(Kind, Vec<u8>))| Entry {
                key: k.user_key.clone(), seq: k.seq, kind: *kind, value: v.clone(),
            };
            prop_assert_eq!(m.len(), model.len());
            // No run holds room past a full leaf's (its memory is not accounted).
            for leaf in m.leaves.read().values() {
                prop_assert!(leaf.read().run.capacity() <= LEAF_MAX + 1);
            }
            let all: Vec<Entry> = model.iter().map(entry).collect();
            prop_assert_eq!(m.iter_from(None).collect::<Vec<_>>(), all.clone());
            for &(k, seq, n) in &probes {
                let ik = InternalKey { user_key: key(k), seq };
                let want_get = model
                    .range(ik.clone()..)
                    .next()
                    .filter(|(mk, _)| mk.user_key == ik.user_key)
                    .map(|(mk, (kind, v))| (mk.seq, *kind, v.clone()));
                prop_assert_eq!(m.get(&ik.user_key, seq), want_get);
                let want_from: Vec<Entry> = model.range(ik.clone()..).map(entry).collect();
                prop_assert_eq!(m.iter_from(Some(&ik)).collect::<Vec<_>>(), want_from.clone());
                // A bounded chunk: the first `n` of those whose key is within the end
                // (the probe's key, included or not, or none), nothing past it.
                let end_key = key((k + 2) % 7);
                for end in [
                    Bound::Included(end_key.as_slice()),
                    Bound::Excluded(end_key.as_slice()),
                    Bound::Unbounded,
                ] {
                    let within = |e: &&Entry| within(&e.key, (Bound::Unbounded, end));
                    let want: Vec<Entry> =
                        want_from.iter().take_while(within).take(n).cloned().collect();
                    prop_assert_eq!(m.chunk_from(Some(&ik), n, end), want);
                    let from_start: Vec<Entry> =
                        all.iter().take_while(within).take(n).cloned().collect();
                    prop_assert_eq!(m.chunk_from(None, n, end), from_start);
                }
                let want_before: Vec<Entry> =
                    model.range(..ik.clone()).rev().take(n).map(entry).collect();
                prop_assert_eq!(m.before(Some(&ik), n), want_before.clone());
                // Bounded below: the first `n` of those whose key is within the start.
                let start_key = key((k + 5) % 7);
                for start in [
                    Bound::Included(start_key.as_slice()),
                    Bound::Excluded(start_key.as_slice()),
                    Bound::Unbounded,
                ] {
                    let within = |e: &&Entry| within(&e.key, (start, Bound::Unbounded));
                    let want: Vec<Entry> = model
                        .range(..ik.clone())
                        .rev()
                        .map(entry)
                        .take_while(|e| within(&e))
                        .take(n)
                        .collect();
                    prop_assert_eq!(m.before_within(Some(&ik), n, start), want);
                    let from_end: Vec<Entry> =
                        model.iter().rev().map(entry).take_while(|e| within(&e)).take(n).collect();
                    prop_assert_eq!(m.before_within(None, n, start), from_end);
                }
                let want_last: Vec<Entry> = model.iter().rev().take(n).map(entry).collect();
                prop_assert_eq!(m.before(None, n), want_last);
            }
        }
    }

    /// The key filter never says no to a key it holds, and says yes to about one absent
    /// key in a hundred at its planned load (so lookups of absent keys mostly skip the
    /// search).
    #[test]
    fn the_key_filter_has_no_false_negatives_and_few_false_positives() {
        let n = 100_000;
        let f = KeyFilter::new(n);
        let key = |tag: &str, i: usize| format!("{tag}{i:08}").into_bytes();
        for i in 0..n {
            f.add(&key("present", i));
        }
        assert!((0..n).all(|i| f.may_contain(&key("present", i))));
        let fp = (0..n).filter(|&i| f.may_contain(&key("absent", i))).count();
        assert!(fp < n / 40, "{fp} false positives in {n}");
        // And a filtered memtable finds every key it holds, at every sequence.
        let m = Memtable::with_filter(1000);
        for i in 0..5000u64 {
            m.insert(&key("k", i as usize % 2500), i + 1, Kind::Put, &i.to_be_bytes());
        }
        for i in 0..2500u64 {
            let got = m.get(&key("k", i as usize), SeqNo::MAX).map(|(seq, ..)| seq);
            assert_eq!(got, Some(i + 2501));
        }
        assert_eq!(m.get(b"absent", SeqNo::MAX), None);
    }

    proptest! {
        /// A leaf's range, over a run and over a map, is the sorted map's, at every kind
        /// of bound on either side, both ways round.
        #[test]
        fn leaf_range_equals_the_map_range(
            keys in proptest::collection::btree_set(0u8..40, 0..30),
            lo in (0u8..3, 0u8..42),
            hi in (0u8..3, 0u8..42),
            as_map in any::<bool>(),
        ) {
            let mk = |k: u8| MemKey::new(&[k], 0);
            let model: BTreeMap<MemKey, Value> =
                keys.iter().map(|&k| (mk(k), (Kind::Put, Bytes::new()))).collect();
            let mut leaf = LeafData::default();
            for (k, v) in &model {
                leaf.insert(k.clone(), v.clone());
            }
            if as_map {
                leaf.map = std::mem::take(&mut leaf.run).into_iter().collect();
            }
            prop_assert_eq!(leaf.len(), model.len());
            let (lo_key, hi_key) = (mk(lo.1), mk(hi.1));
            let bound = |(kind, _): (u8, u8), k| match kind {
                0 => Bound::Included(k),
                1 => Bound::Excluded(k),
                _ => Bound::Unbounded,
            };
            let range = (bound(lo, &lo_key), bound(hi, &hi_key));
            // The combinations a sorted map refuses (it panics) are not asked for.
            let refused = match range {
                (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                    a > b || (a == b && matches!(range, (Bound::Excluded(_), Bound::Excluded(_))))
                }
                _ => false,
            };
            prop_assume!(!refused);
            let want: Vec<&MemKey> = model.range(range).map(|(k, _)| k).collect();
            prop_assert_eq!(leaf.range(range).map(|(k, _)| k).collect::<Vec<_>>(), want.clone());
            let back: Vec<&MemKey> = want.into_iter().rev().collect();
            prop_assert_eq!(leaf.range(range).rev().map(|(k, _)| k).collect::<Vec<_>>(), back);
        }
    }

    /// Readers racing a writer that splits leaves all the time (four versions per leaf
    /// under test): every scan, forward or backward, is strictly ordered and holds
    /// every version inserted before it started; every point lookup of such a version
    /// finds it.
    #[test]
    fn readers_racing_splits_miss_nothing() {
        const N: u64 = 4000;
        // Scattered keys, so that splits happen all over the table (leaves as maps);
        // then ascending keys (leaves as runs, each split leaving the new key alone in
        // the next leaf).
        let scattered = |i: u64| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40).to_be_bytes();
        let ascending = |i: u64| i.to_be_bytes();
        // Three times each: a split landing in a reader's window is likely, not certain.
        for key in [scattered, scattered, scattered, ascending, ascending, ascending] {
            let m = Memtable::new();
            let done = AtomicU64::new(0);
            let start = std::sync::Barrier::new(3);
            std::thread::scope(|s| {
                for reader in 0..2 {
                    let (m, done, start) = (&m, &done, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut rounds = 0u64;
                        while done.load(Ordering::Acquire) < N || rounds < 3 {
                            rounds += 1;
                            let before = done.load(Ordering::Acquire);
                            let got: Vec<(Vec<u8>, u64)> = if reader == 0 {
                                m.iter_from(None).map(|e| (e.key, e.seq)).collect()
                            } else {
                                let mut v: Vec<_> = m
                                    .before(None, usize::MAX)
                                    .into_iter()
                                    .map(|e| (e.key, e.seq))
                                    .collect();
                                v.reverse();
                                v
                            };
                            let ik = |(k, s): &(Vec<u8>, u64)| InternalKey {
                                user_key: k.clone(),
                                seq: *s,
                            };
                            for w in got.windows(2) {
                                assert!(ik(&w[0]) < ik(&w[1]), "reader {reader}: out of order");
                            }
                            let seen: std::collections::HashSet<_> = got.into_iter().collect();
                            for i in 0..before {
                                assert!(
                                    seen.contains(&(key(i).to_vec(), i + 1)),
                                    "reader {reader} missed {i}"
                                );
                            }
                            if before > 0 {
                                let i = rounds * 7919 % before;
                                assert_eq!(m.get(&key(i), i + 1).map(|g| g.0), Some(i + 1));
                            }
                        }
                    });
                }
                start.wait();
                for i in 0..N {
                    m.insert(&key(i), i + 1, Kind::Put, &[1]);
                    done.store(i + 1, Ordering::Release);
                    // Let the readers run between inserts, so many scans overlap splits.
                    std::thread::yield_now();
                }
            });
            assert_eq!(m.len(), N as usize);
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

    /// Families appending in key order go to the leaves the writer remembers, with
    /// almost no search of the index; inserts at random places search every time; and
    /// every version stays where a reader finds it.
    #[test]
    fn appends_go_to_remembered_leaves_without_a_search() {
        let mem = Memtable::new();
        let searches = || mem.writer.lock().searches;
        // Five families, each appending in key order, interleaved: after the first
        // splits each has a leaf of its own, and the writer remembers all five.
        let (families, rounds) = (5u64, 400u64);
        for i in 0..rounds {
            for f in 0..families {
                mem.insert(format!("{f}-{i:06}").as_bytes(), i * families + f, Kind::Put, b"v");
            }
        }
        let total = families * rounds;
        assert!(searches() < total / 10, "{} searches for {total} appends", searches());
        // Inserts at random places search every time (B-tree leaves are not remembered).
        let before = searches();
        for i in 0..200u64 {
            let key = format!("{}-{:06}x", i % families, (i * 7919) % rounds);
            mem.insert(key.as_bytes(), total + i, Kind::Put, b"w");
        }
        assert!(searches() - before > 150, "{} searches", searches() - before);
        // And every version is where a reader finds it.
        for i in (0..rounds).step_by(7) {
            for f in 0..families {
                let key = format!("{f}-{i:06}");
                assert_eq!(mem.get(key.as_bytes(), SeqNo::MAX).map(|v| v.2), Some(b"v".to_vec()));
            }
        }
        assert_eq!(mem.len() as u64, total + 200);
    }

    /// A block pool fills to its bound when run, an arena with the pool takes its
    /// blocks from it (one without takes none, nor one while the pool does not serve),
    /// the pool is refilled once down to half, values in pooled blocks come back
    /// exactly, and `stop` ends the filler and empties the pool.
    #[test]
    fn a_block_pool_feeds_the_arenas_and_refills_at_half() {
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !f() {
                assert!(start.elapsed() < std::time::Duration::from_secs(20), "{what}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        let pool = Arc::new(BlockPool::new(8));
        let filler = std::thread::spawn({
            let pool = pool.clone();
            move || pool.run()
        });
        wait_for("filled", &|| pool.ready() == 8);
        // Eight 4,000-byte values fill a block.
        let value = |i: usize| -> Vec<u8> { (0..4000).map(|j| (i * 13 + j) as u8).collect() };
        let plain = Memtable::new();
        for i in 0..40 {
            plain.insert(format!("k{i:03}").as_bytes(), 1, Kind::Put, &value(i));
        }
        assert_eq!(pool.ready(), 8, "a memtable without the pool took from it");
        let mem = Memtable::new().with_block_pool(pool.clone());
        mem.insert(b"k000", 1, Kind::Put, &value(0));
        assert_eq!(pool.ready(), 7, "the first value's block came from the pool");
        // Three more blocks: down to four, half, which asks for a refill.
        for i in 1..25 {
            mem.insert(format!("k{i:03}").as_bytes(), 1, Kind::Put, &value(i));
        }
        wait_for("refilled", &|| pool.ready() == 8);
        // Not serving: the arena makes its blocks itself (two more here).
        pool.serve(false);
        for i in 25..40 {
            mem.insert(format!("k{i:03}").as_bytes(), 1, Kind::Put, &value(i));
        }
        assert_eq!(pool.ready(), 8, "taken from a pool that does not serve");
        pool.serve(true);
        for i in 0..40 {
            let (_, _, v) = mem.get(format!("k{i:03}").as_bytes(), 1).unwrap();
            assert!(v == value(i), "value {i} differs");
        }
        pool.stop();
        filler.join().unwrap();
        assert_eq!(pool.ready(), 0);
        // With the pool stopped and empty, the arena makes its blocks itself.
        for i in 40..50 {
            mem.insert(format!("k{i:03}").as_bytes(), 1, Kind::Put, &value(i));
        }
        assert_eq!(mem.get(b"k049", 1).unwrap().2, value(49));
    }

    /// Values of every size around the value blocks' limits (empty, filling a block to
    /// its last byte, one past it, the largest that shares a block, the smallest that
    /// gets its own, several blocks long) come back byte for byte, by `get` and in
    /// order, also after the memtable itself is gone (a handle on a value holds its
    /// block).
    #[test]
    fn values_in_blocks_come_back_exactly() {
        let sizes = [
            0,
            1,
            BLOCK_VALUE_MAX - 1,
            BLOCK_VALUE_MAX,
            BLOCK_VALUE_MAX + 1,
            3 * BLOCK_BYTES + 7,
            100,
            BLOCK_BYTES - 300,
        ];
        let value = |i: usize, len: usize| -> Vec<u8> {
            (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
        };
        let m = Memtable::new();
        let mut want = Vec::new();
        // Enough values to fill many blocks, each size many times at varying offsets.
        for i in 0..600 {
            let len = sizes[i % sizes.len()];
            let key = format!("k{i:04}").into_bytes();
            m.insert(&key, i as u64 + 1, Kind::Put, &value(i, len));
            want.push((key, value(i, len)));
        }
        for (i, (key, v)) in want.iter().enumerate() {
            let got = m.get(key, u64::MAX).map(|(_, _, v)| v);
            assert_eq!(got.as_deref(), Some(&v[..]), "value {i} of {} bytes", v.len());
        }
        let mut it = m.iter_from(None);
        let first = it.next().map(|e| e.value);
        let all: Vec<Vec<u8>> = first.into_iter().chain(it.map(|e| e.value)).collect();
        let expected: Vec<Vec<u8>> = want.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(all, expected);
        // A reference taken out under a leaf lock outlives the memtable.
        let kept = {
            let leaf = m.leaf_for(&MemKey::new(b"k0003", u64::MAX));
            let d = leaf.read();
            let found = d
                .range((Bound::Unbounded, Bound::Unbounded))
                .find(|(k, _)| k.user_key.as_slice() == b"k0003");
            found.map(|(_, (_, v))| v.clone())
        };
        drop(m);
        assert_eq!(kept.as_deref(), Some(&value(3, sizes[3])[..]));
    }

    /// The lending walk a flush uses visits exactly what the copying iterator does, in
    /// the same order, over leaves split all over (keys in scattered order, several
    /// versions of some keys, tombstones).
    #[test]
    fn frozen_walk_equals_the_iterator() {
        let m = Memtable::new();
        for i in 0..3000u64 {
            let k = format!("k{:05}", (i * 7919) % 1200).into_bytes();
            let kind = if i % 13 == 0 { Kind::Delete } else { Kind::Put };
            m.insert(&k, i + 1, kind, format!("v{i}").as_bytes());
        }
        let copied: Vec<(Vec<u8>, u64, Kind, Vec<u8>)> =
            m.iter_from(None).map(|e| (e.key, e.seq, e.kind, e.value)).collect();
        let mut lent = Vec::new();
        m.for_each_frozen(|k, seq, kind, v| {
            lent.push((k.to_vec(), seq, kind, v.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(copied.len(), 3000);
        assert_eq!(lent, copied);
    }
}
