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
//! The journal must therefore reach back to LSN 1: the runner pins it
//! ([`Engine::pin_wal`]). Bounding that with exchange snapshots is future work.
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
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions { durability: Durability::Buffered, batch_events_max: 4096 }
    }
}

/// What recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
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
}

/// A running exchange. Dropping it stops the thread.
pub struct SimRunner {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    report: RecoveryReport,
    _pin: WalPin,
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
        let pin = engine.pin_wal(1);
        let first = engine.first_retained_lsn();
        if first > 1 && engine.applied_lsn() > 0 {
            return Err(Error::Recovery(format!(
                "the journal starts at LSN {first}; the exchange is rebuilt from LSN 1, so \
                 this store cannot run the simulator"
            )));
        }
        let started = Instant::now();
        let mut exchange = Exchange::new(cfg);
        let mut stream = engine.commits(1)?;
        let mut pending: std::collections::VecDeque<Pending> = Default::default();
        let mut report = RecoveryReport::default();
        let mut processed = 0;
        while let Some(c) = stream.next_event()? {
            report.events += 1;
            if Exchange::is_request(&c.event) {
                report.requests += 1;
                let answer = exchange.process(&c.event);
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
        Ok(SimRunner { shared, thread: Some(thread), report, _pin: pin })
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
    while !shared.stop.load(Ordering::Acquire) {
        let Some(c) = stream.wait_next(Duration::from_millis(50))? else { continue };
        if !Exchange::is_request(&c.event) {
            continue;
        }
        let answer = shared.exchange.lock().process(&c.event);
        for chunk in answer.chunks(opts.batch_events_max.max(1)) {
            engine.submit(chunk, opts.durability)?;
        }
        *shared.processed.lock() = c.lsn;
        shared.changed.notify_all();
    }
    Ok(())
}
