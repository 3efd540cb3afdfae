//! The business events of an exchange, as Bourse journals and distributes them.
//!
//! [`Event`] covers everything a trading core hands Bourse: order requests and their
//! outcomes, trades, account and position snapshots, ticks, order-book snapshots and
//! deltas, users, transfers, and an opaque extension. Field names are the DIFF
//! protocol's (`DIFF_SPEC.md` §3) so the JSON form maps one to one onto what DIFF
//! clients see. Each event has:
//!
//! - a compact, versioned, variable-length **binary form** ([`Event::encode`],
//!   [`Event::decode`]; layout in [`codec`] and `docs/format-event.md`), used in the WAL
//!   and on shared-memory transports;
//! - a strict **JSON form** ([`Event::from_json`], [`Event::to_json`]) for the ingest
//!   API: an unknown `type`, an unknown field or a field of the wrong type is an error
//!   that names it.
//!
//! Identifiers: instruments are `EXCH.ins` ([`InstrumentId`]); times are `i64`
//! nanoseconds since the Unix epoch.
//!
//! This crate is **not** I/O of any kind: no files, no sockets, no clocks.

pub mod codec;
mod enums;
mod event;
mod finite;
mod ids;
mod market;
pub mod samples;
mod trading;
mod users;

pub use enums::{
    Direction, HedgeFlag, Offset, OrderStatus, PriceType, Side, TimeCondition, TransferKind,
    VolumeCondition,
};
pub use event::{Event, EventKind};
pub use ids::{InstrumentId, ID_BYTES_MAX};
pub use market::{BookDelta, BookSnapshot, Level, LevelChange, Tick, BOOK_LEVELS_MAX};
pub use trading::{
    Account, CancelRequested, Order, OrderCancelled, OrderRejected, OrderRequested, Position,
    Trade, Transfer,
};
pub use users::{AccountBinding, Extension, UserRegistered, UserUpdated};

/// Largest extension payload, in bytes.
pub const EXTENSION_BYTES_MAX: usize = 1 << 20;
/// Longest free-text field (`last_msg`, `password_hash`, ...), in bytes.
pub const TEXT_BYTES_MAX: usize = 4096;

/// Errors of the event model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The binary form is from a codec version this build does not read.
    #[error("unsupported event codec version {version}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The binary form names an event kind this build does not know.
    #[error("unknown event kind {kind}")]
    UnknownKind {
        /// The kind number found.
        kind: u16,
    },
    /// The binary form does not decode.
    #[error("cannot decode {}: {reason}", kind.unwrap_or("event"))]
    Decode {
        /// The event kind, when the header was readable.
        kind: Option<&'static str>,
        /// What went wrong.
        reason: String,
    },
    /// An event could not be encoded.
    #[error("cannot encode {kind}: {reason}")]
    Encode {
        /// The event kind.
        kind: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The JSON form is malformed; `path` names the field (`limit_price`,
    /// `bids[3].volume`) when there is one.
    #[error("invalid event JSON at `{path}`: {reason}")]
    Json {
        /// Where in the document.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A field is well-typed but not acceptable.
    #[error("invalid {kind} event: field `{field}` {reason}")]
    Invalid {
        /// The event kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Event {
    /// Parses and validates the JSON form: an object whose `type` names the kind and
    /// whose other members are that kind's fields.
    pub fn from_json(text: &str) -> Result<Event, Error> {
        let json_err = |path: &str, reason: String| Error::Json { path: path.to_string(), reason };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| json_err(".", e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(json_err(".", "an event must be a JSON object".into()));
        };
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(name)) => {
                EventKind::from_name(&name).ok_or_else(|| {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    json_err(
                        "type",
                        format!(
                            "unknown event type `{name}`, expected one of {}",
                            known.join(", ")
                        ),
                    )
                })?
            }
            Some(other) => return Err(json_err("type", format!("must be a string, is {other}"))),
            None => return Err(json_err("type", "is missing".into())),
        };
        event::build(kind, &mut JsonFields(serde_json::Value::Object(fields)))
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // NOTE: serializing these types to JSON cannot fail: every map key is a string
        // and no float is formatted through a fallible path.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks the limits and identities that types alone do not: every float is finite,
    /// required ids are non-empty and bounded, texts bounded, books and extensions bounded.
    pub fn validate(&self) -> Result<(), Error> {
        let kind = self.kind().name();
        let invalid = |field: &'static str, reason: String| Error::Invalid { kind, field, reason };
        let id = |field: &'static str, v: &str| {
            if v.is_empty() {
                Err(invalid(field, "is empty".into()))
            } else if v.len() > ID_BYTES_MAX {
                Err(invalid(field, format!("is {} bytes, over {ID_BYTES_MAX}", v.len())))
            } else {
                Ok(())
            }
        };
        let text = |field: &'static str, v: &str| {
            (v.len() <= TEXT_BYTES_MAX).then_some(()).ok_or_else(|| {
                invalid(field, format!("is {} bytes, over {TEXT_BYTES_MAX}", v.len()))
            })
        };
        // Each variant's own fields, not the enum: the enum's serialization goes through
        // serde's wrapper for its `type` tag, a third of the check's cost for a tick.
        let non_finite = match self {
            Event::OrderRequested(e) => finite::first_non_finite(e),
            Event::OrderAccepted(e) | Event::OrderUpdated(e) => finite::first_non_finite(e),
            Event::OrderRejected(e) => finite::first_non_finite(e),
            Event::CancelRequested(e) => finite::first_non_finite(e),
            Event::OrderCancelled(e) => finite::first_non_finite(e),
            Event::TradeExecuted(e) => finite::first_non_finite(e),
            Event::AccountUpdated(e) => finite::first_non_finite(e),
            Event::PositionUpdated(e) => finite::first_non_finite(e),
            Event::Tick(e) => finite::first_non_finite(e),
            Event::BookSnapshot(e) => finite::first_non_finite(e),
            Event::BookDelta(e) => finite::first_non_finite(e),
            Event::UserRegistered(e) => finite::first_non_finite(e),
            Event::UserUpdated(e) => finite::first_non_finite(e),
            Event::AccountBound(e) | Event::AccountUnbound(e) => finite::first_non_finite(e),
            Event::Transfer(e) => finite::first_non_finite(e),
            Event::Extension(e) => finite::first_non_finite(e),
        };
        if let Some(field) = non_finite {
            return Err(invalid(field, "is not a finite number".into()));
        }
        if let Some(ins) = self.instrument() {
            if ins.as_str().is_empty() {
                return Err(invalid("instrument_id", "is missing".into()));
            }
        }
        match self {
            Event::OrderRequested(e) => {
                id("user_id", &e.user_id)?;
                id("order_id", &e.order_id)?;
                if e.volume <= 0 {
                    return Err(invalid("volume", format!("must be positive, is {}", e.volume)));
                }
            }
            Event::OrderAccepted(e) | Event::OrderUpdated(e) => {
                id("user_id", &e.user_id)?;
                id("order_id", &e.order_id)?;
                text("last_msg", &e.last_msg)?;
            }
            Event::OrderRejected(e) => {
                id("user_id", &e.user_id)?;
                id("order_id", &e.order_id)?;
                text("last_msg", &e.last_msg)?;
            }
            Event::CancelRequested(e) => {
                id("user_id", &e.user_id)?;
                id("order_id", &e.order_id)?;
            }
            Event::OrderCancelled(e) => {
                id("user_id", &e.user_id)?;
                id("order_id", &e.order_id)?;
                text("last_msg", &e.last_msg)?;
            }
            Event::TradeExecuted(e) => {
                id("user_id", &e.user_id)?;
                id("trade_id", &e.trade_id)?;
                id("order_id", &e.order_id)?;
            }
            Event::AccountUpdated(e) => id("user_id", &e.user_id)?,
            Event::PositionUpdated(e) => id("user_id", &e.user_id)?,
            Event::Tick(_) => {}
            Event::BookSnapshot(e) => {
                for (field, side) in [("bids", &e.bids), ("asks", &e.asks)] {
                    if side.len() > BOOK_LEVELS_MAX {
                        return Err(invalid(
                            field,
                            format!("has {} levels, over {BOOK_LEVELS_MAX}", side.len()),
                        ));
                    }
                }
            }
            Event::BookDelta(e) => {
                if e.changes.len() > BOOK_LEVELS_MAX {
                    return Err(invalid(
                        "changes",
                        format!("has {} entries, over {BOOK_LEVELS_MAX}", e.changes.len()),
                    ));
                }
            }
            Event::UserRegistered(e) => {
                id("user_id", &e.user_id)?;
                text("user_name", &e.user_name)?;
                text("password_hash", &e.password_hash)?;
                text("phone", &e.phone)?;
                text("email", &e.email)?;
            }
            Event::UserUpdated(e) => id("user_id", &e.user_id)?,
            Event::AccountBound(e) | Event::AccountUnbound(e) => {
                id("user_id", &e.user_id)?;
                id("account_id", &e.account_id)?;
            }
            Event::Transfer(e) => {
                id("user_id", &e.user_id)?;
                if !(e.amount.is_finite() && e.amount > 0.0) {
                    return Err(invalid(
                        "amount",
                        format!("must be a positive number, is {}", e.amount),
                    ));
                }
            }
            Event::Extension(e) => {
                if e.data.len() > EXTENSION_BYTES_MAX {
                    return Err(invalid(
                        "data",
                        format!("is {} bytes, over {EXTENSION_BYTES_MAX}", e.data.len()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The members of a JSON event object other than `type`.
struct JsonFields(serde_json::Value);

impl event::FieldSource for JsonFields {
    fn fields<T: serde::de::DeserializeOwned>(&mut self, _kind: EventKind) -> Result<T, Error> {
        serde_path_to_error::deserialize(self.0.take()).map_err(|e| Error::Json {
            path: e.path().to_string(),
            reason: e.into_inner().to_string(),
        })
    }
}
