//! Runs an [`Exchange`] against an engine: requests are read from the commit stream in
//! LSN order, and the events each one causes are journaled as one submit.
//!
//! **Recovery.** The exchange is a deterministic function of the requests in the journal
//! (see [`Exchange`]), so [`SimRunner::start`] rebuilds it by replaying the journal from
//! LSN 1. While replaying it also works out which answers are already journaled: the
//! answers of request *n* are journaled after request *n* and before those of request
//! *n + 1*, so the journal holds the answers of a prefix of the requests. Each answer
//! read back is matched against the recomputed answers, oldest request first; what is
//! left unmatched when the replay catches up is exactly what a crash lost, and it is
//! journaled before the runner goes live. Nothing is answered twice and nothing is lost.
//!
//! **Snapshots.** Every [`SimOptions::snapshot_every`] requests, and when it stops, the
//! runner syncs the journal (so every answer so far is durable) and writes the whole
//! exchange to `DATA/sim/snapshot` ([`crate::snapshot`]). Recovery then starts from the
//! snapshot and replays the journal after it, and the runner's WAL pin
//! ([`Engine::pin_wal`]) moves up to the snapshot, so the journal can be truncated below
//! it. Answers to requests the snapshot includes may follow it in the journal; with no
//! request of their own waiting, they match nothing and are passed over.
//!
//! **Durability of answers.** The answers are journaled at
//! [`SimOptions::durability`] (`Buffered` by default). They need not be durable: after a
//! power loss the durable requests recompute them exactly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bourse_engine::{CommitStream, Durability, Engine, WalPin};
use bourse_model::Event;
use parking_lot::{Condvar, Mutex};

use crate::{Error, Exchange, SimConfig};

/// How the runner journals.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Durability of the exchange's answers.
    pub durability: Durability,
    /// Most events per submit (answers longer than this are split, in order).
    pub batch_events_max: usize,
    /// Requests between snapshots (0: only when the runner stops).
    pub snapshot_every: u64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            durability: Durability::Buffered,
            batch_events_max: 4096,
            snapshot_every: 100_000,
        }
    }
}

/// What recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the snapshot recovery started from (0: none, replayed from LSN 1).
    pub snapshot_lsn: u64,
    /// Events read from the journal.
    pub events: u64,
    /// Requests replayed.
    pub requests: u64,
    /// Requests whose answers were missing and have been journaled now.
    pub answered_now: u64,
    /// How long it took.
    pub elapsed: Duration,
}

struct Shared {
    exchange: Mutex<Exchange>,
    /// LSN of the newest request whose answer is journaled.
    processed: Mutex<u64>,
    changed: Condvar,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
    /// Holds the journal from the request after the latest snapshot.
    pin: WalPin,
}

/// A running exchange. Dropping it stops the thread.
pub struct SimRunner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    report: RecoveryReport,
}

impl std::fmt::Debug for SimRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRunner").field("processed", &self.processed()).finish_non_exhaustive()
    }
}

/// One request's recomputed answer during recovery, and how much of it the journal
/// already holds.
struct Pending {
    lsn: u64,
    answer: Vec<Event>,
    matched: usize,
}

impl SimRunner {
    /// Rebuilds the exchange from the journal, journals any answers a crash lost, and
    /// starts answering new requests on a thread of its own.
    pub fn start(
        engine: Arc<Engine>,
        cfg: SimConfig,
        opts: SimOptions,
    ) -> Result<SimRunner, Error> {
        cfg.check()?;
        let (base, exchange) = match crate::snapshot::read(engine.dir())? {
            Some((lsn, ex)) => {
                if ex.config() != &cfg {
                    tracing::warn!(
                        "sim: the snapshot was taken with another configuration; it is kept"
                    );
                }
                (lsn, ex)
            }
            None => (0, Exchange::new(cfg)),
        };
        let pin = engine.pin_wal(base + 1);
        let (first, applied) = (engine.first_retained_lsn(), engine.applied_lsn());
        if applied < base {
            return Err(Error::Recovery(format!(
                "the snapshot is as of LSN {base} but the journal ends at LSN {applied}"
            )));
        }
        if first > base + 1 && applied > base {
            return Err(Error::Recovery(format!(
                "the journal starts at LSN {first}, but the exchange must replay it from LSN {}",
                base + 1
            )));
        }
        let started = Instant::now();
        let mut exchange = exchange;
        // Repeated order ids are recognised by the store (`answer`), not remembered.
        exchange.forget_order_ids();
        let mut stream = engine.commits(base + 1)?;
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let mut report = RecoveryReport { snapshot_lsn: base, ..RecoveryReport::default() };
        let mut processed = base;
        while let Some(c) = stream.next_event()? {
            report.events += 1;
            if Exchange::is_request(&c.event) {
                report.requests += 1;
                let answer = answer(&engine, &mut exchange, c.lsn, &c.event)?;
                pending.push_back(Pending { lsn: c.lsn, answer, matched: 0 });
            } else if let Some(front) = pending.front_mut() {
                if front.answer.get(front.matched) == Some(&c.event) {
                    front.matched += 1;
                }
            }
            while pending.front().is_some_and(|p| p.matched == p.answer.len()) {
                if let Some(p) = pending.pop_front() {
                    processed = p.lsn;
                }
            }
        }
        for p in pending {
            for chunk in p.answer[p.matched..].chunks(opts.batch_events_max.max(1)) {
                engine.submit(chunk, opts.durability)?;
            }
            report.answered_now += 1;
            processed = p.lsn;
        }
        report.elapsed = started.elapsed();
        if report.answered_now > 0 {
            tracing::info!(
                answered = report.answered_now,
                "sim: journaled answers a crash had lost"
            );
        }
        let shared = Arc::new(Shared {
            exchange: Mutex::new(exchange),
            processed: Mutex::new(processed),
            changed: Condvar::new(),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
            pin,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("bourse-sim".into())
                .spawn(move || {
                    if let Err(e) = live(&engine, stream, &shared, &opts) {
                        tracing::error!(error = %e, "sim: stopped");
                        *shared.error.lock() = Some(e.to_string());
                    }
                    shared.changed.notify_all();
                })
                .map_err(|e| Error::Recovery(format!("cannot start the sim thread: {e}")))?
        };
        Ok(SimRunner { shared, thread: Some(thread), report })
    }

    /// What recovery found at start.
    pub fn recovery(&self) -> RecoveryReport {
        self.report
    }

    /// LSN of the newest request whose answer is journaled.
    pub fn processed(&self) -> u64 {
        *self.shared.processed.lock()
    }

    /// Waits until the request at `lsn` (or a later one) is answered; false on timeout
    /// or when the runner has stopped.
    pub fn wait_processed(&self, lsn: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.processed.lock();
        while *p < lsn {
            if self.shared.error.lock().is_some() || self.shared.stop.load(Ordering::Acquire) {
                return false;
            }
            if self.shared.changed.wait_until(&mut p, deadline).timed_out() {
                return *p >= lsn;
            }
        }
        true
    }

    /// Reads the exchange's current state.
    pub fn with_exchange<R>(&self, f: impl FnOnce(&Exchange) -> R) -> R {
        f(&self.shared.exchange.lock())
    }

    /// Why the runner stopped, if it failed.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().clone()
    }

    /// Stops the runner and waits for its thread.
    pub fn stop(mut self) -> Result<(), Error> {
        self.halt();
        match self.error() {
            Some(e) => Err(Error::Recovery(format!("the sim had stopped: {e}"))),
            None => Ok(()),
        }
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimRunner {
    fn drop(&mut self) {
        self.halt();
    }
}

fn live(
    engine: &Engine,
    mut stream: CommitStream,
    shared: &Shared,
    opts: &SimOptions,
) -> Result<(), Error> {
    let mut since_snapshot = 0u64;
    let result = (|| {
        while !shared.stop.load(Ordering::Acquire) {
            let Some(c) = stream.wait_next(Duration::from_millis(50))? else { continue };
            if !Exchange::is_request(&c.event) {
                continue;
            }
            let answer = answer(engine, &mut shared.exchange.lock(), c.lsn, &c.event)?;
            for chunk in answer.chunks(opts.batch_events_max.max(1)) {
                engine.submit(chunk, opts.durability)?;
            }
            *shared.processed.lock() = c.lsn;
            shared.changed.notify_all();
            since_snapshot += 1;
            if opts.snapshot_every > 0 && since_snapshot >= opts.snapshot_every {
                snapshot(engine, shared)?;
                since_snapshot = 0;
            }
        }
        Ok(())
    })();
    if result.is_ok() && since_snapshot > 0 {
        snapshot(engine, shared)?;
    }
    result
}

/// The exchange's answer to the request journaled at `lsn`. An order whose id its
/// account used before changes nothing, as in the store, which keeps the first: the
/// store's record of the order was created by an earlier event. Asking the store, rather
/// than remembering every id, keeps the exchange's memory and snapshots bounded by
/// what is live; the record's creating LSN never changes, so recovery, which asks the
/// store after everything is applied, decides exactly as the live runner did.
fn answer(
    engine: &Engine,
    exchange: &mut Exchange,
    lsn: u64,
    event: &Event,
) -> Result<Vec<Event>, Error> {
    if let Event::OrderRequested(r) = event {
        let first = engine.order(&r.user_id, &r.order_id)?;
        if first.is_some_and(|rec| rec.created_lsn != lsn) {
            return Ok(Vec::new());
        }
    }
    Ok(exchange.process(event))
}

/// Makes every answer so far durable, then writes the exchange as of the last processed
/// request and lets the journal go below it.
fn snapshot(engine: &Engine, shared: &Shared) -> Result<(), Error> {
    engine.sync()?;
    let lsn = *shared.processed.lock();
    crate::snapshot::write(engine.dir(), lsn, &shared.exchange.lock())?;
    shared.pin.advance(lsn + 1);
    tracing::debug!(lsn, "sim: snapshot written");
    Ok(())
}
