//! Enumerations with their DIFF spellings (`DIFF_SPEC.md` §3.4).

use serde::{Deserialize, Serialize};

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Direction {
    /// `BUY`
    #[default]
    #[serde(rename = "BUY")]
    Buy,
    /// `SELL`
    #[serde(rename = "SELL")]
    Sell,
}

/// Open or close a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Offset {
    /// `OPEN`
    #[default]
    #[serde(rename = "OPEN")]
    Open,
    /// `CLOSE` (history first, or any on exchanges without today/history distinction).
    #[serde(rename = "CLOSE")]
    Close,
    /// `CLOSETODAY` (SHFE/INE: close today's position).
    #[serde(rename = "CLOSETODAY")]
    CloseToday,
}

/// Price type of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PriceType {
    /// `LIMIT`
    #[default]
    #[serde(rename = "LIMIT")]
    Limit,
    /// `ANY` (market).
    #[serde(rename = "ANY")]
    Any,
    /// `BEST` (CFFEX).
    #[serde(rename = "BEST")]
    Best,
    /// `FIVELEVEL` (CFFEX).
    #[serde(rename = "FIVELEVEL")]
    FiveLevel,
}

/// Volume condition of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VolumeCondition {
    /// `ANY`
    #[default]
    #[serde(rename = "ANY")]
    Any,
    /// `MIN`
    #[serde(rename = "MIN")]
    Min,
    /// `ALL` (fill or kill together with IOC).
    #[serde(rename = "ALL")]
    All,
}

/// Time condition of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TimeCondition {
    /// `IOC`
    #[serde(rename = "IOC")]
    Ioc,
    /// `GFS`
    #[serde(rename = "GFS")]
    Gfs,
    /// `GFD`
    #[default]
    #[serde(rename = "GFD")]
    Gfd,
    /// `GTD`
    #[serde(rename = "GTD")]
    Gtd,
    /// `GTC`
    #[serde(rename = "GTC")]
    Gtc,
    /// `GFA`
    #[serde(rename = "GFA")]
    Gfa,
}

/// Hedge flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HedgeFlag {
    /// `SPECULATION`
    #[default]
    #[serde(rename = "SPECULATION")]
    Speculation,
    /// `ARBITRAGE`
    #[serde(rename = "ARBITRAGE")]
    Arbitrage,
    /// `HEDGE`
    #[serde(rename = "HEDGE")]
    Hedge,
    /// `MARKETMAKER`
    #[serde(rename = "MARKETMAKER")]
    MarketMaker,
    /// `COVERED`
    #[serde(rename = "COVERED")]
    Covered,
}

/// Order status: DIFF knows only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum OrderStatus {
    /// `ALIVE`
    #[default]
    #[serde(rename = "ALIVE")]
    Alive,
    /// `FINISHED`
    #[serde(rename = "FINISHED")]
    Finished,
}

/// Side of an order book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Side {
    /// Bids.
    #[default]
    #[serde(rename = "BID")]
    Bid,
    /// Asks.
    #[serde(rename = "ASK")]
    Ask,
}

/// Direction of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TransferKind {
    /// Money into the trading account.
    #[default]
    #[serde(rename = "DEPOSIT")]
    Deposit,
    /// Money out of the trading account.
    #[serde(rename = "WITHDRAW")]
    Withdraw,
}
