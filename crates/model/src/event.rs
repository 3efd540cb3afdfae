//! The one event type the journal carries, and its kinds.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;

use crate::ids::InstrumentId;
use crate::market::{BookDelta, BookSnapshot, Tick};
use crate::trading::{
    Account, CancelRequested, Order, OrderCancelled, OrderRejected, OrderRequested, Position,
    Trade, Transfer,
};
use crate::users::{AccountBinding, Extension, UserRegistered, UserUpdated};

/// A business event. Its JSON form is an object with a `type` field naming the variant
/// in snake case (`"trade_executed"`) and the variant's fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A client asks to place an order.
    OrderRequested(OrderRequested),
    /// The exchange accepted an order.
    OrderAccepted(Order),
    /// An order changed (partly filled, finished).
    OrderUpdated(Order),
    /// An order was refused.
    OrderRejected(OrderRejected),
    /// A client asks to cancel an order.
    CancelRequested(CancelRequested),
    /// An order left the book unfilled.
    OrderCancelled(OrderCancelled),
    /// A fill.
    TradeExecuted(Trade),
    /// An account's funds changed.
    AccountUpdated(Account),
    /// A position changed.
    PositionUpdated(Position),
    /// A market-data tick.
    Tick(Tick),
    /// A full order-book snapshot.
    BookSnapshot(BookSnapshot),
    /// Order-book changes.
    BookDelta(BookDelta),
    /// A user registered.
    UserRegistered(UserRegistered),
    /// A user was frozen or unfrozen.
    UserUpdated(UserUpdated),
    /// A trading account was bound to a user.
    AccountBound(AccountBinding),
    /// A trading account was unbound from a user.
    AccountUnbound(AccountBinding),
    /// A deposit or withdrawal.
    Transfer(Transfer),
    /// A producer-defined event.
    Extension(Extension),
}

/// The kind of an event as stored on disk and on the wire. The numbers never change;
/// new kinds get new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[allow(missing_docs)] // One per `Event` variant, same name.
pub enum EventKind {
    OrderRequested = 1,
    OrderAccepted = 2,
    OrderUpdated = 3,
    OrderRejected = 4,
    CancelRequested = 5,
    OrderCancelled = 6,
    TradeExecuted = 7,
    AccountUpdated = 8,
    PositionUpdated = 9,
    Tick = 10,
    BookSnapshot = 11,
    BookDelta = 12,
    UserRegistered = 13,
    UserUpdated = 14,
    AccountBound = 15,
    AccountUnbound = 16,
    Transfer = 17,
    Extension = 18,
}

impl EventKind {
    /// Every kind, in number order.
    pub const ALL: [EventKind; 18] = [
        Self::OrderRequested,
        Self::OrderAccepted,
        Self::OrderUpdated,
        Self::OrderRejected,
        Self::CancelRequested,
        Self::OrderCancelled,
        Self::TradeExecuted,
        Self::AccountUpdated,
        Self::PositionUpdated,
        Self::Tick,
        Self::BookSnapshot,
        Self::BookDelta,
        Self::UserRegistered,
        Self::UserUpdated,
        Self::AccountBound,
        Self::AccountUnbound,
        Self::Transfer,
        Self::Extension,
    ];

    /// The kind with this number, if any.
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The number stored on disk.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The kind whose JSON `type` name is `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The JSON `type` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrderRequested => "order_requested",
            Self::OrderAccepted => "order_accepted",
            Self::OrderUpdated => "order_updated",
            Self::OrderRejected => "order_rejected",
            Self::CancelRequested => "cancel_requested",
            Self::OrderCancelled => "order_cancelled",
            Self::TradeExecuted => "trade_executed",
            Self::AccountUpdated => "account_updated",
            Self::PositionUpdated => "position_updated",
            Self::Tick => "tick",
            Self::BookSnapshot => "book_snapshot",
            Self::BookDelta => "book_delta",
            Self::UserRegistered => "user_registered",
            Self::UserUpdated => "user_updated",
            Self::AccountBound => "account_bound",
            Self::AccountUnbound => "account_unbound",
            Self::Transfer => "transfer",
            Self::Extension => "extension",
        }
    }
}

impl Event {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::OrderRequested(_) => EventKind::OrderRequested,
            Self::OrderAccepted(_) => EventKind::OrderAccepted,
            Self::OrderUpdated(_) => EventKind::OrderUpdated,
            Self::OrderRejected(_) => EventKind::OrderRejected,
            Self::CancelRequested(_) => EventKind::CancelRequested,
            Self::OrderCancelled(_) => EventKind::OrderCancelled,
            Self::TradeExecuted(_) => EventKind::TradeExecuted,
            Self::AccountUpdated(_) => EventKind::AccountUpdated,
            Self::PositionUpdated(_) => EventKind::PositionUpdated,
            Self::Tick(_) => EventKind::Tick,
            Self::BookSnapshot(_) => EventKind::BookSnapshot,
            Self::BookDelta(_) => EventKind::BookDelta,
            Self::UserRegistered(_) => EventKind::UserRegistered,
            Self::UserUpdated(_) => EventKind::UserUpdated,
            Self::AccountBound(_) => EventKind::AccountBound,
            Self::AccountUnbound(_) => EventKind::AccountUnbound,
            Self::Transfer(_) => EventKind::Transfer,
            Self::Extension(_) => EventKind::Extension,
        }
    }

    /// The instrument the event belongs to, for partitioning by instrument.
    pub fn instrument(&self) -> Option<&InstrumentId> {
        match self {
            Self::OrderRequested(e) => Some(&e.instrument_id),
            Self::OrderAccepted(e) | Self::OrderUpdated(e) => Some(&e.instrument_id),
            Self::OrderRejected(e) => Some(&e.instrument_id),
            Self::OrderCancelled(e) => Some(&e.instrument_id),
            Self::TradeExecuted(e) => Some(&e.instrument_id),
            Self::PositionUpdated(e) => Some(&e.instrument_id),
            Self::Tick(e) => Some(&e.instrument_id),
            Self::BookSnapshot(e) => Some(&e.instrument_id),
            Self::BookDelta(e) => Some(&e.instrument_id),
            _ => None,
        }
    }

    /// The trading account the event belongs to, when it has one (`user_id` of the
    /// trading events, `account_id` of bindings).
    pub fn account(&self) -> Option<&str> {
        match self {
            Self::OrderRequested(e) => Some(&e.user_id),
            Self::OrderAccepted(e) | Self::OrderUpdated(e) => Some(&e.user_id),
            Self::OrderRejected(e) => Some(&e.user_id),
            Self::CancelRequested(e) => Some(&e.user_id),
            Self::OrderCancelled(e) => Some(&e.user_id),
            Self::TradeExecuted(e) => Some(&e.user_id),
            Self::AccountUpdated(e) => Some(&e.user_id),
            Self::PositionUpdated(e) => Some(&e.user_id),
            Self::Transfer(e) => Some(&e.user_id),
            Self::AccountBound(e) | Self::AccountUnbound(e) => Some(&e.account_id),
            _ => None,
        }
    }

    /// The business time the event carries, when it has one (nanoseconds).
    pub fn datetime(&self) -> Option<i64> {
        match self {
            Self::OrderRequested(e) => Some(e.datetime),
            Self::OrderAccepted(e) | Self::OrderUpdated(e) => Some(e.insert_date_time),
            Self::OrderRejected(e) => Some(e.datetime),
            Self::CancelRequested(e) => Some(e.datetime),
            Self::OrderCancelled(e) => Some(e.datetime),
            Self::TradeExecuted(e) => Some(e.trade_date_time),
            Self::Tick(e) => Some(e.datetime),
            Self::BookSnapshot(e) => Some(e.datetime),
            Self::BookDelta(e) => Some(e.datetime),
            Self::UserRegistered(e) => Some(e.datetime),
            Self::UserUpdated(e) => Some(e.datetime),
            Self::AccountBound(e) | Self::AccountUnbound(e) => Some(e.datetime),
            Self::Transfer(e) => Some(e.datetime),
            Self::AccountUpdated(_) | Self::PositionUpdated(_) | Self::Extension(_) => None,
        }
    }
}

/// Where the fields of one event variant come from (the binary body, a JSON object).
pub(crate) trait FieldSource {
    /// Deserializes the variant struct `T` of an event of `kind`.
    fn fields<T: DeserializeOwned>(&mut self, kind: EventKind) -> Result<T, Error>;
}

/// Builds the event of `kind` from `src`, then validates it.
pub(crate) fn build(kind: EventKind, src: &mut impl FieldSource) -> Result<Event, Error> {
    let event = match kind {
        EventKind::OrderRequested => Event::OrderRequested(src.fields(kind)?),
        EventKind::OrderAccepted => Event::OrderAccepted(src.fields(kind)?),
        EventKind::OrderUpdated => Event::OrderUpdated(src.fields(kind)?),
        EventKind::OrderRejected => Event::OrderRejected(src.fields(kind)?),
        EventKind::CancelRequested => Event::CancelRequested(src.fields(kind)?),
        EventKind::OrderCancelled => Event::OrderCancelled(src.fields(kind)?),
        EventKind::TradeExecuted => Event::TradeExecuted(src.fields(kind)?),
        EventKind::AccountUpdated => Event::AccountUpdated(src.fields(kind)?),
        EventKind::PositionUpdated => Event::PositionUpdated(src.fields(kind)?),
        EventKind::Tick => Event::Tick(src.fields(kind)?),
        EventKind::BookSnapshot => Event::BookSnapshot(src.fields(kind)?),
        EventKind::BookDelta => Event::BookDelta(src.fields(kind)?),
        EventKind::UserRegistered => Event::UserRegistered(src.fields(kind)?),
        EventKind::UserUpdated => Event::UserUpdated(src.fields(kind)?),
        EventKind::AccountBound => Event::AccountBound(src.fields(kind)?),
        EventKind::AccountUnbound => Event::AccountUnbound(src.fields(kind)?),
        EventKind::Transfer => Event::Transfer(src.fields(kind)?),
        EventKind::Extension => Event::Extension(src.fields(kind)?),
    };
    event.validate()?;
    Ok(event)
}
