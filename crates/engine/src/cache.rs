//! The market cache: the latest tick and the latest book of every instrument, in memory.
//!
//! Updated by the apply step (so it moves in LSN order), rebuilt at open from the
//! instrument partitions, and read without touching disk. The latest book is the newest
//! snapshot with every later delta applied.

use std::collections::HashMap;
use std::sync::Arc;

use bourse_model::{BookDelta, BookSnapshot, InstrumentId, Level, Side, Tick};
use parking_lot::RwLock;

/// Latest tick and book per instrument.
#[derive(Debug, Default)]
pub struct MarketCache {
    ticks: RwLock<HashMap<InstrumentId, Arc<Tick>>>,
    books: RwLock<HashMap<InstrumentId, Arc<BookSnapshot>>>,
}

impl MarketCache {
    /// The latest tick of `id`.
    pub fn tick(&self, id: &InstrumentId) -> Option<Arc<Tick>> {
        self.ticks.read().get(id).cloned()
    }

    /// The latest book of `id`.
    pub fn book(&self, id: &InstrumentId) -> Option<Arc<BookSnapshot>> {
        self.books.read().get(id).cloned()
    }

    /// Instruments with a cached tick or book.
    pub fn instruments(&self) -> Vec<InstrumentId> {
        let mut v: Vec<InstrumentId> = self.ticks.read().keys().cloned().collect();
        v.extend(self.books.read().keys().cloned());
        v.sort();
        v.dedup();
        v
    }

    pub(crate) fn set_tick(&self, t: &Tick) {
        self.ticks.write().insert(t.instrument_id.clone(), Arc::new(t.clone()));
    }

    pub(crate) fn set_book(&self, b: &BookSnapshot) {
        self.books.write().insert(b.instrument_id.clone(), Arc::new(b.clone()));
    }

    /// Applies a delta to the cached book (a delta with no snapshot before it starts an
    /// empty book).
    pub(crate) fn apply_delta(&self, d: &BookDelta) {
        let mut books = self.books.write();
        let entry = books.entry(d.instrument_id.clone()).or_insert_with(|| {
            Arc::new(BookSnapshot {
                instrument_id: d.instrument_id.clone(),
                datetime: d.datetime,
                bids: Vec::new(),
                asks: Vec::new(),
            })
        });
        let book = Arc::make_mut(entry);
        apply_delta(book, d);
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
