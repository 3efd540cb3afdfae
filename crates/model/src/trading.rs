//! Trading events: orders, trades, accounts, positions, transfers.
//!
//! Field names are DIFF's (`DIFF_SPEC.md` §3.3). Two conventions apply throughout:
//! `user_id` is the *trading account* (DIFF keys its trade tree by it), and
//! `instrument_id` is the full `EXCH.ins`; the DIFF layer derives DIFF's separate
//! `exchange_id` and short `instrument_id` from it ([`InstrumentId::exchange`],
//! [`InstrumentId::symbol`]). Prices and money are `f64` as in DIFF; volumes are `i64`;
//! times are `i64` nanoseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

use crate::enums::{
    Direction, HedgeFlag, Offset, OrderStatus, PriceType, TimeCondition, TransferKind,
    VolumeCondition,
};
use crate::ids::InstrumentId;

/// A client asks to place an order (DIFF `insert_order`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequested {
    /// Trading account.
    pub user_id: String,
    /// Client-chosen id, unique per account.
    pub order_id: String,
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Buy or sell.
    pub direction: Direction,
    /// Open or close.
    pub offset: Offset,
    /// Lots requested.
    pub volume: i64,
    /// Limit or market.
    pub price_type: PriceType,
    /// Limit price (ignored for market orders).
    #[serde(default)]
    pub limit_price: f64,
    /// Volume condition.
    pub volume_condition: VolumeCondition,
    /// Time condition.
    pub time_condition: TimeCondition,
    /// Hedge flag (default speculation).
    #[serde(default)]
    pub hedge_flag: HedgeFlag,
    /// When the request was made.
    #[serde(default)]
    pub datetime: i64,
}

impl OrderRequested {
    /// The order this request asks for: alive, nothing filled, no exchange id, no frozen
    /// margin, no message. The store and the exchange fill in their own parts.
    pub fn to_order(&self) -> Order {
        Order {
            seqno: 0,
            user_id: self.user_id.clone(),
            order_id: self.order_id.clone(),
            instrument_id: self.instrument_id.clone(),
            direction: self.direction,
            offset: self.offset,
            volume_orign: self.volume,
            price_type: self.price_type,
            limit_price: self.limit_price,
            volume_condition: self.volume_condition,
            time_condition: self.time_condition,
            hedge_flag: self.hedge_flag,
            insert_date_time: self.datetime,
            exchange_order_id: String::new(),
            status: OrderStatus::Alive,
            volume_left: self.volume,
            frozen_margin: 0.0,
            last_msg: String::new(),
        }
    }
}

/// The state of an order (DIFF `orders.<order_id>`); carried by accepted and updated
/// events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Order {
    /// Sequence number within the account.
    pub seqno: i64,
    /// Trading account.
    pub user_id: String,
    /// Client-chosen id.
    pub order_id: String,
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Buy or sell.
    pub direction: Direction,
    /// Open or close.
    pub offset: Offset,
    /// Lots originally ordered (DIFF's spelling).
    pub volume_orign: i64,
    /// Limit or market.
    pub price_type: PriceType,
    /// Limit price.
    pub limit_price: f64,
    /// Volume condition.
    pub volume_condition: VolumeCondition,
    /// Time condition.
    pub time_condition: TimeCondition,
    /// Hedge flag.
    pub hedge_flag: HedgeFlag,
    /// When the exchange accepted it.
    pub insert_date_time: i64,
    /// The exchange's id for it.
    pub exchange_order_id: String,
    /// `ALIVE` or `FINISHED`.
    pub status: OrderStatus,
    /// Lots not yet filled.
    pub volume_left: i64,
    /// Margin frozen for the unfilled part.
    pub frozen_margin: f64,
    /// Last status message.
    pub last_msg: String,
}

/// An order was refused before reaching the book.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRejected {
    /// Trading account.
    pub user_id: String,
    /// The refused order.
    pub order_id: String,
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Machine-readable reason code.
    pub error_id: i32,
    /// Human-readable reason.
    pub last_msg: String,
    /// When it was refused.
    pub datetime: i64,
}

/// A client asks to cancel an order (DIFF `cancel_order`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequested {
    /// Trading account.
    pub user_id: String,
    /// The order to cancel.
    pub order_id: String,
    /// When the request was made.
    #[serde(default)]
    pub datetime: i64,
}

/// An order left the book unfilled (cancelled, or the rest of an IOC order).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    /// Trading account.
    pub user_id: String,
    /// The cancelled order.
    pub order_id: String,
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// Lots that were still open.
    pub volume_left: i64,
    /// Why.
    pub last_msg: String,
    /// When.
    pub datetime: i64,
}

/// A fill (DIFF `trades.<trade_id>`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trade {
    /// Sequence number within the account.
    pub seqno: i64,
    /// Trading account.
    pub user_id: String,
    /// Trade id (`order_id|n` by DIFF convention).
    pub trade_id: String,
    /// The order filled.
    pub order_id: String,
    /// `EXCH.ins`.
    pub instrument_id: InstrumentId,
    /// The exchange's id for the fill.
    #[serde(default)]
    pub exchange_trade_id: String,
    /// Buy or sell.
    pub direction: Direction,
    /// Open or close.
    pub offset: Offset,
    /// Lots filled.
    pub volume: i64,
    /// Fill price.
    pub price: f64,
    /// When.
    pub trade_date_time: i64,
    /// Commission charged.
    #[serde(default)]
    pub commission: f64,
}

/// The funds of a trading account (DIFF `accounts.<currency>`, every field).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // The fields are DIFF's, documented in DIFF_SPEC.md §3.3.
pub struct Account {
    pub user_id: String,
    pub currency: String,
    pub pre_balance: f64,
    pub deposit: f64,
    pub withdraw: f64,
    pub static_balance: f64,
    pub close_profit: f64,
    pub commission: f64,
    pub premium: f64,
    pub position_profit: f64,
    pub float_profit: f64,
    pub balance: f64,
    pub margin: f64,
    pub frozen_margin: f64,
    pub frozen_commission: f64,
    pub frozen_premium: f64,
    pub available: f64,
    pub risk_ratio: f64,
    pub value_balance: f64,
    pub market_value: f64,
    pub ctp_balance: f64,
    pub ctp_available: f64,
}

/// A position of a trading account in one instrument (DIFF `positions.<EXCH.ins>`,
/// every field).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // The fields are DIFF's, documented in DIFF_SPEC.md §3.3.
pub struct Position {
    pub user_id: String,
    pub instrument_id: InstrumentId,
    pub hedge_flag: HedgeFlag,
    pub volume_long_today: i64,
    pub volume_long_his: i64,
    pub volume_long: i64,
    pub volume_long_frozen_today: i64,
    pub volume_long_frozen_his: i64,
    pub volume_long_frozen: i64,
    pub volume_short_today: i64,
    pub volume_short_his: i64,
    pub volume_short: i64,
    pub volume_short_frozen_today: i64,
    pub volume_short_frozen_his: i64,
    pub volume_short_frozen: i64,
    pub volume_long_yd: i64,
    pub volume_short_yd: i64,
    pub pos_long_his: i64,
    pub pos_long_today: i64,
    pub pos_short_his: i64,
    pub pos_short_today: i64,
    pub pos: i64,
    pub pos_long: i64,
    pub pos_short: i64,
    pub open_price_long: f64,
    pub open_price_short: f64,
    pub open_cost_long: f64,
    pub open_cost_short: f64,
    pub position_price_long: f64,
    pub position_price_short: f64,
    pub position_cost_long: f64,
    pub position_cost_short: f64,
    pub last_price: f64,
    pub float_profit_long: f64,
    pub float_profit_short: f64,
    pub float_profit: f64,
    pub position_profit_long: f64,
    pub position_profit_short: f64,
    pub position_profit: f64,
    pub margin_long: f64,
    pub margin_short: f64,
    pub margin: f64,
    pub market_value_long: f64,
    pub market_value_short: f64,
    pub market_value: f64,
    pub order_volume_buy_open: i64,
    pub order_volume_buy_close: i64,
    pub order_volume_sell_open: i64,
    pub order_volume_sell_close: i64,
}

/// Money moved into or out of a trading account (DIFF `transfers.<seq>`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// Trading account.
    pub user_id: String,
    /// Deposit or withdrawal.
    pub kind: TransferKind,
    /// Currency (`CNY`).
    pub currency: String,
    /// Amount, positive.
    pub amount: f64,
    /// When.
    pub datetime: i64,
    /// 0 on success.
    #[serde(default)]
    pub error_id: i32,
    /// Error text, empty on success.
    #[serde(default)]
    pub error_msg: String,
}
