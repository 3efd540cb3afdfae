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

use std::sync::Arc;

use ahash::HashMap;
use bourse_model::{BookDelta, BookSnapshot, InstrumentId, Level, Side, Tick};
use parking_lot::RwLock;

/// A position in store order: (datetime, LSN).
type Pos = (i64, u64);

#[derive(Debug, Clone)]
struct BookEntry {
    /// The snapshot the book starts from (`None`: deltas on an empty book).
    snapshot: Option<Pos>,
    /// The newest delta applied.
    last_delta: Option<Pos>,
    book: Arc<BookSnapshot>,
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
        // Built before the write lock is taken, and the tick it replaces dropped after it
        // is released: readers of every instrument wait while the lock is held.
        let mut latest = (lsn, Arc::new(t.clone()));
        let mut ticks = self.ticks.write();
        // The id is copied only the first time an instrument ticks.
        match ticks.get_mut(&t.instrument_id) {
            Some(cur) => {
                if (t.datetime, lsn) > (cur.1.datetime, cur.0) {
                    std::mem::swap(cur, &mut latest);
                }
            }
            None => {
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
        let entry = BookEntry { snapshot: Some(pos), last_delta: None, book: Arc::new(b.clone()) };
        books.insert(b.instrument_id.clone(), entry);
        Update::Done
    }

    /// Applies delta `d` stored at `lsn` to the cached book (a delta with no snapshot
    /// before it starts an empty book).
    pub(crate) fn apply_delta(&self, d: &BookDelta, lsn: u64) -> Update {
        let pos = (d.datetime, lsn);
        let mut books = self.books.write();
        let entry = books.entry(d.instrument_id.clone()).or_insert_with(|| BookEntry {
            snapshot: None,
            last_delta: None,
            book: Arc::new(BookSnapshot {
                instrument_id: d.instrument_id.clone(),
                datetime: d.datetime,
                bids: Vec::new(),
                asks: Vec::new(),
            }),
        });
        if entry.snapshot.is_some_and(|s| s > pos) {
            // Before the snapshot: the snapshot already holds it.
            return Update::Done;
        }
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

    /// Replaces what is cached for `id` with the store's latest tick and latest
    /// snapshot; the caller then applies, in store order, the deltas after it.
    pub(crate) fn reset(
        &self,
        id: &InstrumentId,
        tick: Option<(u64, Tick)>,
        snapshot: Option<(u64, BookSnapshot)>,
    ) {
        let mut ticks = self.ticks.write();
        match tick {
            Some((lsn, t)) => ticks.insert(id.clone(), (lsn, Arc::new(t))),
            None => ticks.remove(id),
        };
        drop(ticks);
        self.books.write().remove(id);
        if let Some((lsn, b)) = snapshot {
            // The book is empty now, so this cannot ask for a recompute.
            let _ = self.set_book(&b, lsn);
        }
    }
}

/// Whether the first price is better than the second on one side of the book.
type Better = fn(f64, f64) -> bool;

/// Applies `d` to `book`: each change sets the total volume at a price, 0 removes the
/// level; bids stay best (highest) first, asks best (lowest) first.
pub fn apply_delta(book: &mut BookSnapshot, d: &BookDelta) {
    book.datetime = book.datetime.max(d.datetime);
    for c in &d.changes {
        let (levels, better): (&mut Vec<Level>, Better) = match c.side {
            Side::Bid => (&mut book.bids, |a, b| a > b),
            Side::Ask => (&mut book.asks, |a, b| a < b),
        };
        let at = levels.iter().position(|l| !better(l.price, c.price));
        match at {
            Some(i) if levels[i].price == c.price => {
                if c.volume == 0 {
                    levels.remove(i);
                } else {
                    levels[i].volume = c.volume;
                }
            }
            Some(i) if c.volume != 0 => {
                levels.insert(i, Level { price: c.price, volume: c.volume })
            }
            None if c.volume != 0 => levels.push(Level { price: c.price, volume: c.volume }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_model::LevelChange;

    #[test]
    fn deltas_keep_sides_sorted_and_remove_empty_levels() {
        let id = InstrumentId::new("SHFE.cu2512").unwrap();
        let mut book = BookSnapshot {
            instrument_id: id.clone(),
            datetime: 1,
            bids: vec![Level { price: 10.0, volume: 1 }, Level { price: 8.0, volume: 2 }],
            asks: vec![Level { price: 11.0, volume: 3 }],
        };
        let ch = |side, price, volume| LevelChange { side, price, volume };
        let d = BookDelta {
            instrument_id: id,
            datetime: 2,
            changes: vec![
                ch(Side::Bid, 9.0, 5),
                ch(Side::Bid, 10.0, 0),
                ch(Side::Ask, 12.0, 1),
                ch(Side::Ask, 10.5, 4),
                ch(Side::Ask, 11.0, 7),
                ch(Side::Bid, 1.0, 0),
            ],
        };
        apply_delta(&mut book, &d);
        let p = |v: &[Level]| v.iter().map(|l| (l.price, l.volume)).collect::<Vec<_>>();
        assert_eq!(p(&book.bids), vec![(9.0, 5), (8.0, 2)]);
        assert_eq!(p(&book.asks), vec![(10.5, 4), (11.0, 7), (12.0, 1)]);
        assert_eq!(book.datetime, 2);
    }
}
