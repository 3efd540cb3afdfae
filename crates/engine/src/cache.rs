//! The market cache: the latest tick and the latest book of every instrument, in memory.
//!
//! "Latest" is store order, (datetime, LSN), the order of the instrument partition's
//! keys: the latest tick is the one with the greatest (datetime, LSN); the latest book
//! is the greatest snapshot with every later delta applied in that order. Updated by
//! the apply step and rebuilt at open from the instrument partitions, the two agree
//! even when a feed's datetimes go backwards (as they do whenever several writers stamp
//! their own events): a tick or snapshot older than the cached one is ignored; a
//! snapshot that arrives older than a delta already applied makes the apply step reload
//! the book from that snapshot ([`Update::Reload`]); a delta that arrives older than
//! one already applied is put in its place by re-applying, from the store, the deltas
//! from it onwards ([`Update::Late`]). Both read only what came after the late event.
//! Reads never touch disk.
//!
//! **Book checkpoints.** A producer that never sends snapshots would make every open
//! re-read every delta ever stored. So every [`crate::EngineOptions::book_checkpoint_every`]
//! deltas the apply step also stores the book as it stands after a delta, at that
//! delta's position (see [`BookPlan`]); opening starts from the newer of the newest
//! snapshot and that checkpoint. An instrument keeps at most one checkpoint: a newer one
//! replaces it, and any book event stored before it (a late delta or snapshot) or any
//! snapshot at all deletes it, in the same tree batch as the event. Whether and where a
//! checkpoint is written depends only on the store's contents before the event, so the
//! apply step stays deterministic: a replay writes the same checkpoints the live apply
//! wrote.

use std::sync::Arc;

use ahash::HashMap;
use bourse_model::{BookDelta, BookSnapshot, InstrumentId, Tick};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// A position in store order: (datetime, LSN).
pub(crate) type Pos = (i64, u64);

#[derive(Debug, Clone)]
struct BookEntry {
    /// The snapshot the book starts from (`None`: deltas on an empty book).
    snapshot: Option<Pos>,
    /// The newest delta applied.
    last_delta: Option<Pos>,
    /// The instrument's book checkpoint in the store, and the deltas it counted.
    checkpoint: Option<(Pos, u64)>,
    /// Deltas stored after the snapshot's position (all of them, with no snapshot).
    since_snapshot: u64,
    book: Arc<BookSnapshot>,
}

impl BookEntry {
    fn empty(id: &InstrumentId, datetime: i64) -> BookEntry {
        BookEntry {
            snapshot: None,
            last_delta: None,
            checkpoint: None,
            since_snapshot: 0,
            book: Arc::new(BookSnapshot::empty(id.clone(), datetime)),
        }
    }
}

/// A book checkpoint as stored (value of `C ts lsn` in the instrument partition): the
/// book after the delta at (ts, lsn), with every stored delta and snapshot before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BookCheckpoint {
    /// Deltas stored after the newest snapshot up to and including this position (all
    /// of them, with no snapshot): the count the next checkpoint is spaced by.
    pub deltas_since_snapshot: u64,
    /// The book.
    pub book: BookSnapshot,
}

/// What a book event does to the instrument's checkpoint, decided before the event is
/// written (the writes go into the event's own tree batch) and recorded in the cache
/// after it with [`MarketCache::settle`].
#[derive(Debug, Default)]
pub(crate) struct BookPlan {
    /// Delete the checkpoint at this position.
    pub delete: Option<Pos>,
    /// Write this checkpoint at this position.
    pub write: Option<(Pos, BookCheckpoint)>,
}

/// Where [`MarketCache::reset`] starts an instrument's book.
#[derive(Debug)]
pub(crate) enum BookStart {
    /// No snapshot and no checkpoint: the deltas build the book from empty.
    Empty,
    /// The newest snapshot, stored at this LSN.
    Snapshot(u64, BookSnapshot),
    /// The checkpoint at `at`, newer than the newest snapshot (at `snapshot`).
    Checkpoint {
        /// The newest snapshot's position.
        snapshot: Option<Pos>,
        /// The checkpoint's position (that of the delta it ends with).
        at: Pos,
        /// The checkpoint.
        checkpoint: BookCheckpoint,
    },
}

/// What the apply step must do after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Update {
    /// The cache is up to date.
    Done,
    /// A snapshot arrived after a later delta: reload the book from the store (the
    /// newest snapshot and the deltas after it).
    Reload,
    /// A delta arrived after a later one: re-apply the store's deltas from its position
    /// on ([`MarketCache::reapply_delta`]).
    Late,
}

/// Latest tick and book per instrument.
#[derive(Debug, Default)]
pub struct MarketCache {
    ticks: RwLock<HashMap<InstrumentId, (u64, Arc<Tick>)>>,
    books: RwLock<HashMap<InstrumentId, BookEntry>>,
}

impl MarketCache {
    /// The latest tick of `id`.
    pub fn tick(&self, id: &InstrumentId) -> Option<Arc<Tick>> {
        self.ticks.read().get(id).map(|(_, t)| t.clone())
    }

    /// The latest book of `id`.
    pub fn book(&self, id: &InstrumentId) -> Option<Arc<BookSnapshot>> {
        self.books.read().get(id).map(|b| b.book.clone())
    }

    /// Instruments with a cached tick or book.
    pub fn instruments(&self) -> Vec<InstrumentId> {
        let mut v: Vec<InstrumentId> = self.ticks.read().keys().cloned().collect();
        v.extend(self.books.read().keys().cloned());
        v.sort();
        v.dedup();
        v
    }

    /// Offers tick `t` stored at `lsn`; it becomes the latest unless a later one (in
    /// store order) is cached.
    pub(crate) fn set_tick(&self, t: &Tick, lsn: u64) {
        let mut ticks = self.ticks.write();
        if let Some(cur) = ticks.get_mut(&t.instrument_id) {
            if (t.datetime, lsn) <= (cur.1.datetime, cur.0) {
                return;
            }
            // No reader holds the cached tick (readers clone it only under the read
            // lock, which this write lock excludes): overwritten in place, with no
            // allocation. Every field but the id, which is the same (it is the key).
            if let Some(slot) = Arc::get_mut(&mut cur.1) {
                let id = std::mem::take(&mut slot.instrument_id);
                *slot = Tick { instrument_id: id, ..*t };
                cur.0 = lsn;
                return;
            }
        }
        drop(ticks);
        // A reader still holds the cached tick (or the instrument is new): a new one,
        // built outside the lock (readers of every instrument wait while it is held),
        // and the one it replaces dropped after the lock is released.
        let mut latest = (lsn, Arc::new(t.clone()));
        let mut ticks = self.ticks.write();
        match ticks.get_mut(&t.instrument_id) {
            Some(cur) => {
                if (t.datetime, lsn) > (cur.1.datetime, cur.0) {
                    std::mem::swap(cur, &mut latest);
                }
            }
            None => {
                // The id is copied only the first time an instrument ticks.
                ticks.insert(t.instrument_id.clone(), latest);
                return;
            }
        }
        drop(ticks);
        // `latest` now holds the replaced tick (or the offered one, if it was older).
        drop(latest);
    }

    /// Offers snapshot `b` stored at `lsn`.
    pub(crate) fn set_book(&self, b: &BookSnapshot, lsn: u64) -> Update {
        let pos = (b.datetime, lsn);
        let mut books = self.books.write();
        if let Some(cur) = books.get(&b.instrument_id) {
            if cur.snapshot.is_some_and(|s| s > pos) {
                return Update::Done;
            }
            if cur.last_delta.is_some_and(|d| d > pos) {
                // Deltas after this snapshot were applied to an older book.
                return Update::Reload;
            }
        }
        let entry = BookEntry {
            snapshot: Some(pos),
            last_delta: None,
            // Any snapshot deletes the checkpoint (`plan_snapshot`).
            checkpoint: None,
            since_snapshot: 0,
            book: Arc::new(b.clone()),
        };
        books.insert(b.instrument_id.clone(), entry);
        Update::Done
    }

    /// Applies delta `d` stored at `lsn` to the cached book (a delta with no snapshot
    /// before it starts an empty book).
    pub(crate) fn apply_delta(&self, d: &BookDelta, lsn: u64) -> Update {
        let pos = (d.datetime, lsn);
        let mut books = self.books.write();
        let entry = books
            .entry(d.instrument_id.clone())
            .or_insert_with(|| BookEntry::empty(&d.instrument_id, d.datetime));
        if entry.snapshot.is_some_and(|s| s > pos) {
            // Before the snapshot: the snapshot already holds it.
            return Update::Done;
        }
        entry.since_snapshot += 1;
        if entry.last_delta.is_some_and(|l| l > pos) {
            return Update::Late;
        }
        entry.last_delta = Some(pos);
        apply_delta(Arc::make_mut(&mut entry.book), d);
        Update::Done
    }

    /// Applies delta `d` at `lsn` whatever deltas were applied before it (unless it
    /// precedes the snapshot). After a late delta, the apply step calls this for it and
    /// every later delta in store order: each delta sets whole levels, so the last one
    /// (in store order) to touch a price wins again.
    pub(crate) fn reapply_delta(&self, d: &BookDelta, lsn: u64) {
        let pos = (d.datetime, lsn);
        let mut books = self.books.write();
        let Some(entry) = books.get_mut(&d.instrument_id) else { return };
        if entry.snapshot.is_some_and(|s| s > pos) {
            return;
        }
        entry.last_delta = entry.last_delta.max(Some(pos));
        apply_delta(Arc::make_mut(&mut entry.book), d);
    }

    /// Replaces what is cached for `id` with the store's latest tick and the book's
    /// starting point; the caller then applies, in store order, the deltas after it.
    pub(crate) fn reset(&self, id: &InstrumentId, tick: Option<(u64, Tick)>, start: BookStart) {
        let mut ticks = self.ticks.write();
        match tick {
            Some((lsn, t)) => ticks.insert(id.clone(), (lsn, Arc::new(t))),
            None => ticks.remove(id),
        };
        drop(ticks);
        self.books.write().remove(id);
        match start {
            BookStart::Empty => {}
            BookStart::Snapshot(lsn, b) => {
                // The book is empty now, so this cannot ask for a recompute.
                let _ = self.set_book(&b, lsn);
            }
            BookStart::Checkpoint { snapshot, at, checkpoint } => {
                let entry = BookEntry {
                    snapshot,
                    last_delta: Some(at),
                    checkpoint: Some((at, checkpoint.deltas_since_snapshot)),
                    since_snapshot: checkpoint.deltas_since_snapshot,
                    book: Arc::new(checkpoint.book),
                };
                self.books.write().insert(id.clone(), entry);
            }
        }
    }

    /// Plans what delta `d` at `lsn` does to the instrument's checkpoint: a delta stored
    /// before the checkpoint deletes it (the checkpoint's book lacks it); a delta in
    /// order that brings the deltas since the checkpoint (or since the snapshot, with
    /// none) to `every` writes a new one and deletes the old. `every` 0 writes none.
    pub(crate) fn plan_delta(&self, d: &BookDelta, lsn: u64, every: u64) -> BookPlan {
        let pos = (d.datetime, lsn);
        let books = self.books.read();
        // An instrument's first book event never needs one: the open reads just it.
        let Some(entry) = books.get(&d.instrument_id) else { return BookPlan::default() };
        let old = entry.checkpoint.map(|(at, _)| at);
        if old.is_some_and(|at| at > pos) {
            return BookPlan { delete: old, write: None };
        }
        let in_order =
            entry.snapshot.is_none_or(|s| s < pos) && entry.last_delta.is_none_or(|l| l < pos);
        let count = entry.since_snapshot + 1;
        let base = entry.checkpoint.map_or(0, |(_, n)| n);
        if every == 0 || !in_order || count.saturating_sub(base) < every {
            return BookPlan::default();
        }
        let mut book = (*entry.book).clone();
        drop(books);
        book.apply(d);
        let cp = BookCheckpoint { deltas_since_snapshot: count, book };
        BookPlan { delete: old, write: Some((pos, cp)) }
    }

    /// Plans what a snapshot does to the instrument's checkpoint: deletes it. (Stored
    /// before the checkpoint, the snapshot makes it wrong; stored after it, useless.)
    pub(crate) fn plan_snapshot(&self, b: &BookSnapshot) -> BookPlan {
        let books = self.books.read();
        let old = books.get(&b.instrument_id).and_then(|e| e.checkpoint).map(|(at, _)| at);
        BookPlan { delete: old, write: None }
    }

    /// Records what `plan` wrote, once the event's writes and cache update are done.
    pub(crate) fn settle(&self, id: &InstrumentId, plan: &BookPlan) {
        if plan.delete.is_none() && plan.write.is_none() {
            return;
        }
        let mut books = self.books.write();
        if let Some(entry) = books.get_mut(id) {
            entry.checkpoint = plan.write.as_ref().map(|(at, cp)| (*at, cp.deltas_since_snapshot));
        }
    }
}

/// Applies `d` to `book` ([`BookSnapshot::apply`]): each change sets the total volume
/// at a price, 0 removes the level; bids stay best (highest) first, asks best (lowest)
/// first.
pub fn apply_delta(book: &mut BookSnapshot, d: &BookDelta) {
    book.apply(d);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn tick(datetime: i64, last_price: f64) -> Tick {
        let instrument_id = InstrumentId::new("SHFE.cu2512").unwrap();
        Tick { instrument_id, datetime, last_price, ..Tick::default() }
    }

    /// The latest tick is overwritten in place while no reader holds it, and replaced
    /// by a new one while a reader does, whose copy then stays as it was.
    #[test]
    fn a_held_tick_stays_as_it_was_and_an_unheld_one_is_reused() {
        let c = MarketCache::default();
        let id = InstrumentId::new("SHFE.cu2512").unwrap();
        let latest = |c: &MarketCache| {
            let t = c.tick(&id).unwrap();
            (t.datetime, t.last_price, Arc::as_ptr(&t))
        };
        c.set_tick(&tick(10, 1.0), 1);
        let (_, _, first) = latest(&c);
        c.set_tick(&tick(20, 2.0), 2);
        assert_eq!(latest(&c), (20, 2.0, first), "unheld: overwritten in place");
        let held = c.tick(&id).unwrap();
        c.set_tick(&tick(30, 3.0), 3);
        let (at, price, second) = latest(&c);
        assert_eq!((at, price), (30, 3.0));
        assert_ne!(second, first, "held: a new tick");
        assert_eq!((held.datetime, held.last_price), (20, 2.0), "the held copy is unchanged");
        assert_eq!(held.instrument_id, id);
        drop(held);
        // An older tick changes nothing, in place or not.
        c.set_tick(&tick(25, 9.0), 4);
        assert_eq!(latest(&c), (30, 3.0, second));
        c.set_tick(&tick(30, 8.0), 2);
        assert_eq!(latest(&c), (30, 3.0, second), "the same time at a lower LSN is older");
        c.set_tick(&tick(40, 4.0), 5);
        assert_eq!(latest(&c), (40, 4.0, second));
        assert_eq!(c.tick(&id).unwrap().instrument_id, id, "the id survives the overwrite");
    }
}
