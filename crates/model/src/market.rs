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
