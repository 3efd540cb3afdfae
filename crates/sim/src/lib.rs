//! Bourse's reference exchange: a compact, deterministic futures exchange core that
//! gives the demo, the tests, the benchmarks and DIFF clients a real producer.
//!
//! - [`config`]: instruments and their rules, from TOML ([`SimConfig::default`] is a
//!   handful of Chinese futures).
//! - [`Exchange`]: price-time-priority matching (LIMIT and market, GFD and IOC, FAK and
//!   FOK, cancels), validation with clear rejection reasons, and futures accounts
//!   (margin, frozen funds, commission, today/history positions, close and position
//!   profit marked to the last price). A pure state machine: requests in, events out.
//! - [`runner`]: drives an [`Exchange`] from an engine's commit stream, journaling its
//!   answers, and recovers exactly after a crash by replaying the journal from the last
//!   [`snapshot`].
//! - [`participants`]: simulated traders that keep the demo's markets alive.
//!
//! ```
//! use bourse_model::{Event, Transfer, TransferKind, OrderRequested, Direction, Offset,
//!     PriceType, TimeCondition, VolumeCondition, InstrumentId};
//! use bourse_sim::{Exchange, SimConfig};
//!
//! let mut ex = Exchange::new(SimConfig::default());
//! ex.process(&Event::Transfer(Transfer {
//!     user_id: "alice".into(), kind: TransferKind::Deposit, currency: "CNY".into(),
//!     amount: 1_000_000.0, datetime: 1, error_id: 0, error_msg: String::new(),
//! }));
//! let out = ex.process(&Event::OrderRequested(OrderRequested {
//!     user_id: "alice".into(), order_id: "o1".into(),
//!     instrument_id: InstrumentId::new("SHFE.rb2601").unwrap(),
//!     direction: Direction::Buy, offset: Offset::Open, volume: 2,
//!     price_type: PriceType::Limit, limit_price: 3100.0,
//!     volume_condition: VolumeCondition::Any, time_condition: TimeCondition::Gfd,
//!     hedge_flag: Default::default(), datetime: 2,
//! }));
//! assert!(matches!(out[0], Event::OrderAccepted(_)));
//! ```

pub mod config;
mod exchange;
pub mod participants;
pub mod runner;
pub mod snapshot;

pub use config::{InstrumentSpec, SimConfig};
pub use exchange::{closable, BookLevel, Exchange, RejectReason, Settlement, SETTLEMENT_KIND};

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("sim configuration: {0}")]
    Config(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] bourse_engine::Error),
    /// The journal cannot rebuild the exchange.
    #[error("sim recovery: {0}")]
    Recovery(String),
    /// A snapshot cannot be written or read.
    #[error("sim snapshot: {0}")]
    Snapshot(String),
}
