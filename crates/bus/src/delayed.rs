//! Delayed subscriptions: events delivered in batches, every N ms or every M events,
//! whichever comes first.

use std::time::{Duration, Instant};

use bourse_model::Event;

use crate::{Message, Result, Subscriber};

/// One delivered batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Events in LSN order: (LSN, submit timestamp, event).
    pub events: Vec<(u64, i64, Event)>,
    /// Gaps signalled while the batch filled (`from..=to`), in order.
    pub lagged: Vec<(u64, u64)>,
    /// Every LSN up to this one has been delivered or filtered out.
    pub position: u64,
}

/// A subscriber that hands out batches (the origin documents' "delayed"
/// subscription, by default every 100 ms).
pub struct DelayedSubscriber {
    inner: Subscriber,
    interval: Duration,
    max_events: usize,
    started: Option<Instant>,
    pending: Batch,
}

impl std::fmt::Debug for DelayedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedSubscriber")
            .field("interval", &self.interval)
            .field("max_events", &self.max_events)
            .finish()
    }
}

impl DelayedSubscriber {
    /// Wraps `inner`: a batch is closed `interval` after its first event arrived, or
    /// when it holds `max_events` (at least 1).
    pub fn new(inner: Subscriber, interval: Duration, max_events: usize) -> DelayedSubscriber {
        DelayedSubscriber {
            inner,
            interval,
            max_events: max_events.max(1),
            started: None,
            pending: Batch::default(),
        }
    }

    /// The wrapped subscriber (acknowledge through it).
    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.inner
    }

    /// Waits up to `timeout` for the next batch. Returns `None` when the time ran out
    /// with nothing to deliver; a partial batch is delivered once its interval is up.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<Batch>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let due = self.started.map(|s| s + self.interval);
            if self.pending.events.len() >= self.max_events || due.is_some_and(|d| now >= d) {
                return Ok(Some(self.take()));
            }
            if now >= deadline {
                return Ok(None);
            }
            let until = due.map_or(deadline, |d| d.min(deadline));
            match self.inner.next(until.saturating_duration_since(now))? {
                Some(Message::Event(d)) => {
                    let e = d.event()?;
                    let (lsn, ts) = (d.lsn, d.timestamp);
                    self.pending.events.push((lsn, ts, e));
                    self.pending.position = lsn;
                    self.started.get_or_insert_with(Instant::now);
                }
                Some(Message::Lagged { from, to }) => {
                    self.pending.lagged.push((from, to));
                    self.pending.position = to;
                    self.started.get_or_insert_with(Instant::now);
                }
                Some(Message::Heartbeat { lsn }) => {
                    self.pending.position = self.pending.position.max(lsn);
                }
                None => {}
            }
        }
    }

    fn take(&mut self) -> Batch {
        self.started = None;
        let position = self.pending.position;
        let mut b = std::mem::take(&mut self.pending);
        b.position = position;
        self.pending.position = position;
        b
    }
}
