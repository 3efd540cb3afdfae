//! Bourse's distribution: sequenced pub/sub over the engine's commit stream.
//!
//! The bus **is** one ordered stream of committed events, many views of it:
//! in-process subscribers on a bounded seqlock ring (one copy of each payload, however
//! many subscribers; no allocation per message), replay from the WAL for the past that
//! switches to the ring with no gap and no duplicate, delayed (batched) delivery,
//! durable named cursors that survive restarts and hold WAL retention, and (feature
//! `ipc`) other processes over iceoryx2 shared memory.
//!
//! It is **not** a second source of truth: it never assigns or reorders LSNs; it
//! carries the engine's. A subscriber sees LSNs that strictly increase (by one, unless
//! it filters), or an explicit [`Message::Lagged`] naming what it missed — never a
//! silent gap (invariant P8 in `RELIABILITY.md`).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bourse_bus::{Bus, BusOptions, Message, SubscribeOptions, Topic};
//! use bourse_engine::{Engine, EngineOptions};
//!
//! let engine = Arc::new(Engine::open("data", EngineOptions::default())?);
//! let bus = Bus::attach(engine.clone(), BusOptions::default())?;
//! let mut sub = bus.subscribe(SubscribeOptions::from_lsn(1).topics(&[Topic::Trades]))?;
//! while let Some(msg) = sub.next(Duration::from_secs(1))? {
//!     match msg {
//!         Message::Event(d) => println!("{} {:?}", d.lsn, d.event()?),
//!         Message::Lagged { from, to } => println!("missed {from}..={to}"),
//!         Message::Heartbeat { lsn } => println!("idle at {lsn}"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod bus;
mod cursor;
mod delayed;
mod filter;
#[cfg(feature = "ipc")]
pub mod ipc;
mod ring;
mod sync;

#[cfg(feature = "loom")]
#[doc(hidden)]
pub mod loom_api;

pub use bus::{
    Bus, BusOptions, BusStats, Delivery, Message, OnLag, Policy, Publisher, Start,
    SubscribeOptions, Subscriber, SubscriberInfo, SubscriberState,
};
pub use cursor::{cursor_floor, decode_cursor, encode_cursor, CURSOR_BYTES, CURSOR_DIR};
pub use delayed::{Batch, DelayedSubscriber};
pub use filter::{Filter, Topic};

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed (replay, retention).
    #[error(transparent)]
    Engine(#[from] bourse_engine::Error),
    /// A durable cursor file could not be read or written.
    #[error("cursor {name}: {op}: {source}")]
    CursorIo {
        /// Cursor name.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A durable cursor file is damaged.
    #[error("cursor file {path} is corrupt: {why}")]
    CursorCorrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// A cursor name outside `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid cursor name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ . -")]
    BadCursorName {
        /// The name.
        name: String,
    },
    /// The named cursor already has a live subscriber.
    #[error("cursor {name} is already in use")]
    CursorInUse {
        /// The name.
        name: String,
    },
    /// The cursor acknowledges LSNs the journal does not hold (they were lost in a
    /// crash at a durability level below `Durable`): the subscriber processed events
    /// that no longer exist. [`Bus::reset_cursor`] accepts the loss.
    #[error("cursor {name} acknowledged {acked} but the journal ends at {journal_end}")]
    CursorAhead {
        /// The name.
        name: String,
        /// The persisted acknowledgement.
        acked: u64,
        /// The last LSN of the journal.
        journal_end: u64,
    },
    /// An acknowledgement of an LSN not yet delivered to this subscriber.
    #[error("ack of {lsn} but only {delivered} was delivered")]
    AckAhead {
        /// The LSN acknowledged.
        lsn: u64,
        /// The last LSN delivered.
        delivered: u64,
    },
    /// `ack` on a subscriber without a durable cursor.
    #[error("this subscriber has no durable cursor")]
    NotDurable,
    /// The operation needs an engine (replay, durable cursors) and the bus has none.
    #[error("the bus is detached from an engine: {what} needs one")]
    NoEngine {
        /// The operation.
        what: &'static str,
    },
    /// The subscriber's policy is `Disconnect` and it fell a whole ring behind.
    #[error("disconnected: fell a whole ring behind at LSN {at}")]
    Disconnected {
        /// The next LSN it would have received.
        at: u64,
    },
    /// A publish out of order (the bus carries LSNs, it never invents them).
    #[error("publish of LSN {lsn} after {last}: LSNs must follow one another")]
    OutOfOrder {
        /// The LSN offered.
        lsn: u64,
        /// The last LSN published.
        last: u64,
    },
    /// A payload larger than a quarter of the ring.
    #[error("payload of {bytes} bytes exceeds the ring's limit of {max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit ([`BusOptions::ring_bytes`] / 4).
        max: usize,
    },
    /// A configuration value out of range.
    #[error("bad bus option {what}: {why}")]
    BadOption {
        /// The option.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// iceoryx2 failed, or a peer process sent something malformed.
    #[error("ipc: {op}: {why}")]
    Ipc {
        /// What was being done.
        op: &'static str,
        /// The cause.
        why: String,
    },
    /// An event in the ring or the WAL does not decode.
    #[error("event {lsn} does not decode: {why}")]
    Decode {
        /// Its LSN.
        lsn: u64,
        /// The decoder's message.
        why: String,
    },
}

/// The bus's result type.
pub type Result<T> = std::result::Result<T, Error>;
