//! The commit stream: committed events in LSN order from any retained LSN, replayed
//! from the journal and then followed live.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse_model::Event;
use bourse_wal::{Lsn, WalReader};

use crate::engine::Inner;
use crate::{Engine, Error, Result};

/// One committed event.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Its LSN.
    pub lsn: u64,
    /// When it was submitted (ns since the Unix epoch).
    pub timestamp: i64,
    /// The event.
    pub event: Event,
}

/// One committed event in its encoded form (see [`CommitStream::next_raw`]).
#[derive(Debug, Clone, Copy)]
pub struct RawCommitted<'a> {
    /// Its LSN.
    pub lsn: u64,
    /// When it was submitted (ns since the Unix epoch).
    pub timestamp: i64,
    /// The event kind's number ([`bourse_model::EventKind::as_u16`]).
    pub kind: u16,
    /// The encoded event ([`Event::decode`] reads it).
    pub payload: &'a [u8],
}

/// Committed events in LSN order. [`CommitStream::next_event`] returns what is already
/// applied and `None` when caught up; [`CommitStream::wait_next`] blocks for more.
pub struct CommitStream {
    inner: Arc<Inner>,
    reader: WalReader,
    next: u64,
}

impl std::fmt::Debug for CommitStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitStream").field("next", &self.next).finish()
    }
}

impl Engine {
    /// A stream of committed events starting at `from` (inclusive). `from` must be
    /// retained by the WAL (pin it with [`Engine::pin_wal`] to keep it so) and at most
    /// one past the last applied LSN.
    pub fn commits(&self, from: u64) -> Result<CommitStream> {
        let inner = self.inner.clone();
        let first = inner.wal.first_lsn().0;
        let last = inner.visible.load(Ordering::Acquire);
        if from == 0 || from < first || from > last + 1 {
            return Err(Error::NotRetained { asked: from, first, last });
        }
        let reader = inner.wal.read_from(Lsn(from))?;
        Ok(CommitStream { inner, reader, next: from })
    }
}

impl CommitStream {
    /// The LSN the next event will carry.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next committed event, or `None` when every applied event has been returned.
    pub fn next_event(&mut self) -> Result<Option<Committed>> {
        if self.next > self.inner.visible.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(rec) = self.reader.next_record()? else { return Ok(None) };
        let event = Event::decode(rec.payload).map_err(|e| Error::Corrupt {
            what: format!("WAL record {} does not decode: {e}", rec.lsn.0),
        })?;
        let c = Committed { lsn: rec.lsn.0, timestamp: rec.timestamp, event };
        self.next = c.lsn + 1;
        Ok(Some(c))
    }

    /// The next committed event as the WAL holds it (its kind and encoded payload,
    /// borrowed until the next call), or `None` when every applied event has been
    /// returned. The cheap path for relaying events without decoding them.
    pub fn next_raw(&mut self) -> Result<Option<RawCommitted<'_>>> {
        if self.next > self.inner.visible.load(Ordering::Acquire) {
            return Ok(None);
        }
        let Some(rec) = self.reader.next_record()? else { return Ok(None) };
        self.next = rec.lsn.0 + 1;
        Ok(Some(RawCommitted {
            lsn: rec.lsn.0,
            timestamp: rec.timestamp,
            kind: rec.kind,
            payload: rec.payload,
        }))
    }

    /// The encoded payload of the event the last [`CommitStream::next_raw`] (or
    /// [`CommitStream::next_event`]) returned, again; empty before the first and after
    /// a call that returned none.
    pub fn last_payload(&self) -> &[u8] {
        self.reader.last_payload()
    }

    /// Like [`CommitStream::next_event`], waiting up to `timeout` for an event to be
    /// applied.
    pub fn wait_next(&mut self, timeout: Duration) -> Result<Option<Committed>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.next_event()? {
                return Ok(Some(c));
            }
            let mut seq = self.inner.seq.lock();
            if let Some(cause) = &seq.poisoned {
                return Err(Error::Poisoned { cause: cause.clone() });
            }
            if seq.applied < self.next
                && self.inner.seq_cond.wait_until(&mut seq, deadline).timed_out()
            {
                return Ok(None);
            }
        }
    }
}
