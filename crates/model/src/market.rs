//! Market data: ticks (quotes with five levels) and order-book snapshots and deltas.

use serde::{Deserialize, Serialize};

use crate::enums::Side;
use crate::ids::InstrumentId;

/// Most levels per side in a book snapshot or changes in a delta.
pub const BOOK_LEVELS_MAX: usize = 1000;

/// A market-data tick: every DIFF quote price and volume field with five levels
/// (`DIFF_SPEC.md` §3.1, §3.2). `close` and `settlement` are absent before the close.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // The fields are DIFF's, documented in DIFF_SPEC.md §3.1.
pub struct Tick {
    pub instrument_id: InstrumentId,
    /// Exchange time, nanoseconds since the Unix epoch.
    pub datetime: i64,
    pub last_price: f64,
    pub average: f64,
    pub highest: f64,
    pub lowest: f64,
    pub open: f64,
    pub close: Option<f64>,
    pub settlement: Option<f64>,
    pub pre_close: f64,
    pub pre_settlement: f64,
    pub upper_limit: f64,
    pub lower_limit: f64,
    pub volume: i64,
    pub amount: f64,
    pub open_interest: i64,
    pub pre_open_interest: i64,
    pub bid_price1: f64,
    pub bid_volume1: i64,
    pub ask_price1: f64,
    pub ask_volume1: i64,
    pub bid_price2: f64,
    pub bid_volume2: i64,
    pub ask_price2: f64,
    pub ask_volume2: i64,
    pub bid_price3: f64,
    pub bid_volume3: i64,
    pub ask_price3: f64,
    pub ask_volume3: i64,
    pub bid_price4: f64,
    pub bid_volume4: i64,
    pub ask_price4: f64,
    pub ask_volume4: i64,
    pub bid_price5: f64,
    pub bid_volume5: i64,
    pub ask_price5: f64,
    pub ask_volume5: i64,
}

/// One price level.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Price.
    pub price: f64,
    /// Total lots at that price.
    pub volume: i64,
}

/// A full order-book snapshot with any number of levels (up to [`BOOK_LEVELS_MAX`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookSnapshot {
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Exchange time.
    pub datetime: i64,
    /// Bids, best (highest) first.
    pub bids: Vec<Level>,
    /// Asks, best (lowest) first.
    pub asks: Vec<Level>,
}

/// Whether the first price is better than the second on one side of a book.
type Better = fn(f64, f64) -> bool;

impl BookSnapshot {
    /// An empty book of `instrument_id` at `datetime`.
    pub fn empty(instrument_id: InstrumentId, datetime: i64) -> BookSnapshot {
        BookSnapshot { instrument_id, datetime, bids: Vec::new(), asks: Vec::new() }
    }

    /// Applies `d`: each change sets the total volume at a price, 0 removes the level;
    /// bids stay best (highest) first, asks best (lowest) first; the book's time becomes
    /// the later of its own and the delta's.
    pub fn apply(&mut self, d: &BookDelta) {
        self.datetime = self.datetime.max(d.datetime);
        for c in &d.changes {
            let (levels, better): (&mut Vec<Level>, Better) = match c.side {
                Side::Bid => (&mut self.bids, |a, b| a > b),
                Side::Ask => (&mut self.asks, |a, b| a < b),
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
}

/// One change to a book level: the new total volume at a price (0 removes the level).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelChange {
    /// Which side.
    pub side: Side,
    /// Price.
    pub price: f64,
    /// New total lots at that price; 0 removes the level.
    pub volume: i64,
}

/// Changes to an order book since the previous snapshot or delta.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookDelta {
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Exchange time.
    pub datetime: i64,
    /// The changes, applied in order.
    pub changes: Vec<LevelChange>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enums::Side;

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
        book.apply(&d);
        let p = |v: &[Level]| v.iter().map(|l| (l.price, l.volume)).collect::<Vec<_>>();
        assert_eq!(p(&book.bids), vec![(9.0, 5), (8.0, 2)]);
        assert_eq!(p(&book.asks), vec![(10.5, 4), (11.0, 7), (12.0, 1)]);
        assert_eq!(book.datetime, 2);
    }
}
