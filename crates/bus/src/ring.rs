//! The broadcast ring: one writer, any number of readers, variable-length records in a
//! bounded array of 64-bit words, read under a sequence lock.
//!
//! Written in safe Rust: every word is an `AtomicU64`, so a reader racing the writer
//! reads stale or new words, never undefined ones, and the validation below tells which.
//!
//! # Layout
//!
//! Positions are logical word offsets that only grow; a position's word is
//! `words[pos & mask]`. A record never straddles the end of the array: when it does not
//! fit, the writer stores [`PAD`] at the current offset and starts at the next lap.
//!
//! | word | holds |
//! |---|---|
//! | 0 | the LSN (never 0; [`PAD`] marks padding to the end of the lap) |
//! | 1 | the submit timestamp (ns since the Unix epoch, as `i64` bits) |
//! | 2 | `meta`: payload length (bits 0–31), event kind (32–39), instrument hash (40–51), account hash (52–63) |
//! | 3.. | the payload, 8 bytes per word, little-endian, the last word zero-padded |
//!
//! # Protocol
//!
//! Before the writer stores a word at or past position `e`, it has stored `intent`
//! ≥ `e` followed by a release fence. It claims ahead: when a record would end past
//! the current `intent`, it stores `intent` = that end plus `reserve` words (a sixteenth
//! of the ring, capped by what `Block` subscribers allow, see
//! [`Writer::write_within`]), so `intent` changes about once per sixteenth of the
//! ring and its cache line stays
//! shared between the cores instead of moving on every record. The writer stores the
//! words (relaxed), then publishes `tail` (the end of the record, or of the last record of
//! a batch: [`Writer::commit`]). A reader at position `p`
//! loads `tail` (acquire) when it has consumed what it last saw, copies the words
//! (relaxed), issues an acquire fence and loads `intent`: the copy is whole if
//! `intent <= p + capacity`, because any overwrite of the words it read is preceded by
//! an `intent` store past `p + capacity`, and the fences order that store before the
//! reader's check once the reader has seen any overwritten word. Otherwise the reader
//! was (or may have been) lapped and must not use what it copied. Claiming ahead only
//! makes the check more cautious: a reader more than `capacity - reserve` words
//! behind may be told it was lapped a little early.
//!
//! An index of `(lsn, position)` slots lets a reader find where an LSN starts (replay
//! switching to live, and lapped readers jumping ahead). It has at least as many slots
//! as the ring can hold records, so a record still in the ring always has its slot.

use crate::sync::{fence, AtomicU64, Ordering};

/// Marks padding from here to the end of the lap.
pub(crate) const PAD: u64 = u64::MAX;
/// Words in a record header.
pub(crate) const HEADER_WORDS: u64 = 3;

/// A record's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The record's LSN.
    pub lsn: u64,
    /// Submit time (ns since the Unix epoch).
    pub timestamp: i64,
    /// Length, kind and filter hashes ([`meta`]).
    pub meta: u64,
}

impl Header {
    /// Payload length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        (self.meta & 0xffff_ffff) as usize
    }
}

/// Packs the `meta` word.
pub fn meta(len: usize, kind: u8, instrument_hash: u16, account_hash: u16) -> u64 {
    (len as u64 & 0xffff_ffff)
        | (kind as u64) << 32
        | ((instrument_hash & 0xfff) as u64) << 40
        | ((account_hash & 0xfff) as u64) << 52
}

fn payload_words(len: usize) -> u64 {
    len.div_ceil(8) as u64
}

struct Slot {
    lsn: AtomicU64,
    pos: AtomicU64,
}

/// What the writer stores on every record, on a cache line of its own.
#[repr(align(128))]
struct Published {
    tail: AtomicU64,
    last_lsn: AtomicU64,
}

/// What the writer stores rarely (readers load `intent` once per record), on another
/// line, so that publishing does not take it away from the readers' caches.
#[repr(align(128))]
struct Claimed {
    intent: AtomicU64,
    first_lsn: AtomicU64,
}

/// The shared memory of the ring.
pub struct Ring {
    words: Box<[AtomicU64]>,
    mask: u64,
    reserve: u64,
    slots: Box<[Slot]>,
    slot_mask: u64,
    claimed: Claimed,
    published: Published,
}

/// Which safeguard a canary read leaves out.
#[cfg(feature = "loom")]
#[derive(Debug, Clone, Copy)]
pub enum Canary {
    /// The check of `intent` after copying the payload.
    NoFinalCheck,
    /// The acquire on `tail` (a relaxed load instead).
    RelaxedTail,
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Nothing published at this position yet.
    Empty,
    /// A whole record; its payload is in the buffer and the position moved past it.
    Record(Header),
    /// The writer overwrote (or may have overwritten) the position: resynchronise.
    Lapped,
}

impl Ring {
    /// A ring of at least `bytes` (rounded up to a power of two of 8-byte words, at
    /// least 8 words).
    pub fn new(bytes: usize) -> Ring {
        let cap = (bytes / 8).max(8).next_power_of_two();
        // The smallest record is a header plus one word.
        let slots = (cap / (HEADER_WORDS as usize + 1)).max(2).next_power_of_two();
        let ring = Ring {
            words: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            mask: cap as u64 - 1,
            // At least the smallest record, so that some publishes store no intent
            // even in the smallest rings (the loom model's).
            reserve: (cap as u64 / 16).max(HEADER_WORDS + 1),
            slots: (0..slots)
                .map(|_| Slot { lsn: AtomicU64::new(0), pos: AtomicU64::new(0) })
                .collect(),
            slot_mask: slots as u64 - 1,
            claimed: Claimed { intent: AtomicU64::new(0), first_lsn: AtomicU64::new(0) },
            published: Published { tail: AtomicU64::new(0), last_lsn: AtomicU64::new(0) },
        };
        ring.touch();
        ring
    }

    /// Writes every page of the ring and its index once, so that the first lap's
    /// publishes do not take page faults (the allocator may hand out untouched zero
    /// pages; a fault costs microseconds, which is a latency tail for a new ring).
    fn touch(&self) {
        const PAGE: usize = 4096;
        for w in self.words.iter().step_by(PAGE / std::mem::size_of::<AtomicU64>()) {
            w.store(0, Ordering::Relaxed);
        }
        for s in self.slots.iter().step_by(PAGE / std::mem::size_of::<Slot>()) {
            s.lsn.store(0, Ordering::Relaxed);
        }
    }

    /// Capacity in words.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The largest payload a record may carry: a quarter of the ring (plus the
    /// header), so a reader always has room to catch up.
    pub fn max_payload(&self) -> usize {
        self.capacity() as usize / 4 * 8
    }

    /// The end of the last published record.
    pub fn tail(&self) -> u64 {
        self.published.tail.load(Ordering::SeqCst)
    }

    /// The LSN of the last published record (0 before the first).
    pub fn last_lsn(&self) -> u64 {
        self.published.last_lsn.load(Ordering::Acquire)
    }

    /// The LSN of the first record ever published (0 before the first).
    pub fn first_lsn(&self) -> u64 {
        self.claimed.first_lsn.load(Ordering::Acquire)
    }

    /// Where the record of `lsn` starts, if its index slot still names it and the
    /// writer has not yet claimed its words. The caller still validates the record it
    /// reads there (the writer may overwrite it at any moment).
    pub fn locate(&self, lsn: u64) -> Option<u64> {
        if lsn == 0 {
            return None;
        }
        let slot = &self.slots[(lsn & self.slot_mask) as usize];
        let l1 = slot.lsn.load(Ordering::Acquire);
        if l1 != lsn {
            return None;
        }
        let pos = slot.pos.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let l2 = slot.lsn.load(Ordering::Relaxed);
        let live = pos + self.capacity() >= self.claimed.intent.load(Ordering::Relaxed);
        (l2 == lsn && live).then_some(pos)
    }

    fn whole(&self, pos: u64) -> bool {
        fence(Ordering::Acquire);
        self.claimed.intent.load(Ordering::Relaxed) <= pos + self.capacity()
    }

    /// Reads the record at `*pos`, which must carry `expect` (the LSN after the last
    /// one read), into `buf`. `seen` is the reader's copy of the tail, loaded again
    /// only once `*pos` reaches it (start it at 0), so a reader that is behind does not
    /// touch the line the writer stores on every record.
    pub fn read(&self, pos: &mut u64, seen: &mut u64, expect: u64, buf: &mut Vec<u8>) -> Read {
        self.read_impl(pos, seen, expect, buf, true, Ordering::Acquire)
    }

    /// CANARY for the loom model: [`Ring::read`] with one of its safeguards removed,
    /// which the model must catch returning a torn record.
    #[cfg(feature = "loom")]
    pub fn read_canary(
        &self,
        pos: &mut u64,
        seen: &mut u64,
        expect: u64,
        buf: &mut Vec<u8>,
        canary: Canary,
    ) -> Read {
        match canary {
            Canary::NoFinalCheck => {
                self.read_impl(pos, seen, expect, buf, false, Ordering::Acquire)
            }
            Canary::RelaxedTail => self.read_impl(pos, seen, expect, buf, true, Ordering::Relaxed),
        }
    }

    #[inline(always)]
    fn read_impl(
        &self,
        pos: &mut u64,
        seen: &mut u64,
        expect: u64,
        buf: &mut Vec<u8>,
        check: bool,
        tail_order: Ordering,
    ) -> Read {
        let cap = self.capacity();
        loop {
            if *pos >= *seen {
                *seen = self.published.tail.load(tail_order);
                if *pos >= *seen {
                    return Read::Empty;
                }
            }
            if *seen - *pos > cap {
                return Read::Lapped;
            }
            let off = *pos & self.mask;
            let w0 = self.words[off as usize].load(Ordering::Relaxed);
            if w0 == PAD {
                if !self.whole(*pos) {
                    return Read::Lapped;
                }
                *pos += cap - off;
                continue;
            }
            if off + HEADER_WORDS > cap {
                // Only a torn read can put a header here.
                return Read::Lapped;
            }
            let ts = self.words[off as usize + 1].load(Ordering::Relaxed);
            let meta = self.words[off as usize + 2].load(Ordering::Relaxed);
            if !self.whole(*pos) {
                return Read::Lapped;
            }
            let h = Header { lsn: w0, timestamp: ts as i64, meta };
            if h.lsn != expect && expect != 0 {
                return Read::Lapped;
            }
            let n = payload_words(h.len());
            let start = off + HEADER_WORDS;
            if start + n > cap {
                return Read::Lapped;
            }
            buf.clear();
            buf.resize(n as usize * 8, 0);
            let words = &self.words[start as usize..(start + n) as usize];
            for (dst, w) in buf.chunks_exact_mut(8).zip(words) {
                dst.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            if check && !self.whole(*pos) {
                return Read::Lapped;
            }
            buf.truncate(h.len());
            *pos += HEADER_WORDS + n;
            return Read::Record(h);
        }
    }

    /// For a lapped reader: the oldest LSN still in the ring whose record starts at
    /// least half a ring behind the writer's intent (so the reader has room), and
    /// where it starts. `None` if nothing qualifies right now (retry).
    pub fn resync_point(&self) -> Option<(u64, u64)> {
        let last = self.last_lsn();
        if last == 0 {
            return None;
        }
        let floor = self.claimed.intent.load(Ordering::Acquire).saturating_sub(self.capacity() / 2);
        let mut lo = last.saturating_sub(self.slot_mask).max(self.first_lsn()).max(1);
        let mut hi = last;
        // Smallest LSN in [lo, hi] located at or after `floor`; positions grow with LSNs.
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            match self.locate(mid) {
                Some(p) if p >= floor => {
                    found = Some((mid, p));
                    // mid >= lo >= 1, so this cannot underflow.
                    hi = mid - 1;
                }
                _ => lo = mid + 1,
            }
        }
        found
    }

    /// The position the next record will start at (the writer's view).
    fn writer_end(&self, pos: u64, len: usize) -> (u64, u64) {
        let n = HEADER_WORDS + payload_words(len);
        let off = pos & self.mask;
        let start = if off + n > self.capacity() { pos + self.capacity() - off } else { pos };
        (start, start + n)
    }
}

/// The one writer of a ring. Not `Clone`: the single-writer rule is in the type.
pub struct Writer {
    ring: std::sync::Arc<Ring>,
    pos: u64,
    /// The `intent` last stored: words below it may be written without storing it again.
    claimed: u64,
    /// The LSN of the last record written, published or not.
    last: u64,
    /// Whether records were written since `tail` was last stored.
    pending: bool,
}

impl Writer {
    /// The writer of `ring` (there must be only one).
    pub fn new(ring: std::sync::Arc<Ring>) -> Writer {
        let claimed = ring.claimed.intent.load(Ordering::Relaxed);
        let last = ring.last_lsn();
        Writer { ring, pos: 0, claimed, last, pending: false }
    }

    /// The LSN of the last record written (published or still pending).
    pub fn last_lsn(&self) -> u64 {
        self.last
    }

    /// The end position that publishing a payload of `len` bytes will claim: readers
    /// at positions below `end - capacity` will be overwritten.
    pub fn end_for(&self, len: usize) -> u64 {
        self.ring.writer_end(self.pos, len).1
    }

    /// Publishes one record. `payload.len()` must not exceed [`Ring::max_payload`].
    #[cfg(feature = "loom")]
    pub fn publish(&mut self, h: Header, payload: &[u8]) {
        self.write_within(h, payload, u64::MAX);
        self.commit();
    }

    /// Writes one record, claiming ahead no further than `limit` (at least the
    /// record's end, [`Writer::end_for`]): a reader at position `p` with
    /// `p + capacity >= limit` must not be told it was lapped. `payload.len()` must not
    /// exceed [`Ring::max_payload`]. Readers see it, and every record written before
    /// it, at the next [`Writer::commit`]: a batch costs them one look at `tail`
    /// instead of one per record.
    pub fn write_within(&mut self, h: Header, payload: &[u8], limit: u64) {
        let ring = &*self.ring;
        debug_assert!(payload.len() <= ring.max_payload());
        debug_assert_eq!(h.len(), payload.len());
        let (start, end) = ring.writer_end(self.pos, payload.len());
        if end > self.claimed {
            self.claimed = (end + ring.reserve).min(limit).max(end);
            ring.claimed.intent.store(self.claimed, Ordering::Relaxed);
            fence(Ordering::Release);
        }
        if start != self.pos {
            ring.words[(self.pos & ring.mask) as usize].store(PAD, Ordering::Relaxed);
        }
        let off = (start & ring.mask) as usize;
        ring.words[off].store(h.lsn, Ordering::Relaxed);
        ring.words[off + 1].store(h.timestamp as u64, Ordering::Relaxed);
        ring.words[off + 2].store(h.meta, Ordering::Relaxed);
        let mut i = off + HEADER_WORDS as usize;
        let mut chunks = payload.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            ring.words[i].store(u64::from_le_bytes(b), Ordering::Relaxed);
            i += 1;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            ring.words[i].store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        let slot = &ring.slots[(h.lsn & ring.slot_mask) as usize];
        slot.lsn.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        slot.pos.store(start, Ordering::Relaxed);
        slot.lsn.store(h.lsn, Ordering::Release);
        if ring.claimed.first_lsn.load(Ordering::Relaxed) == 0 {
            ring.claimed.first_lsn.store(h.lsn, Ordering::Release);
        }
        self.pos = end;
        self.last = h.lsn;
        self.pending = true;
    }

    /// Shows readers every record written since the last commit; `false` if there
    /// was none.
    pub fn commit(&mut self) -> bool {
        if !self.pending {
            return false;
        }
        self.pending = false;
        let ring = &*self.ring;
        ring.published.last_lsn.store(self.last, Ordering::Release);
        // SeqCst pairs with a waiting reader's SeqCst registration (see `Bus`).
        ring.published.tail.store(self.pos, Ordering::SeqCst);
        true
    }
}
