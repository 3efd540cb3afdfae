//! The bus: publishing side (the engine's commit sink), subscriptions, the registry and
//! durable cursors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bourse_engine::{CommitSink, CommitStream, Encoded, Engine, WalPin};
use bourse_model::{Event, EventKind};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::cursor::{check_name, Cursor, Cursors};
use crate::filter::{hashes, Filter, Topic};
use crate::ring::{meta, Header, Read, Ring, Writer};
use crate::{Error, Result};

/// Bus configuration.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The ring's size in bytes (rounded up to a power of two). A record may use at
    /// most a quarter of it, so it must be at least four times the WAL's
    /// `record_bytes_max` plus headers. Default 64 MiB. The ring and its LSN index
    /// (half its size again) are written once when the bus starts, so they are
    /// resident from the start: the first lap takes no page faults.
    pub ring_bytes: usize,
    /// A subscriber that receives nothing for this long gets a
    /// [`Message::Heartbeat`]. Default 1 s.
    pub heartbeat: Duration,
    /// How often acknowledged cursor positions are written to disk. Default 100 ms.
    pub ack_flush_interval: Duration,
    /// A durable cursor further than this many LSNs behind the journal stops holding
    /// the WAL and is marked as fallen behind. Default 50 M.
    pub cursor_lag_max: u64,
    /// Test-only fault: a lapped subscriber skips without `Lagged` (the checkers
    /// must notice).
    #[doc(hidden)]
    pub canary_silent_drop: bool,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            ring_bytes: 64 << 20,
            heartbeat: Duration::from_secs(1),
            ack_flush_interval: Duration::from_millis(100),
            cursor_lag_max: 50_000_000,
            canary_silent_drop: false,
        }
    }
}

/// What happens when a subscriber is too slow for the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Publishing waits for this subscriber, up to `budget` per publish; past the
    /// budget the subscriber is treated as lagging (see [`OnLag`]) and no longer
    /// holds the publisher.
    Block {
        /// The longest a publish waits for this subscriber.
        budget: Duration,
    },
    /// The subscriber skips what was overwritten, told by [`Message::Lagged`] (or
    /// replays it, see [`OnLag`]).
    DropOldest,
    /// The subscription ends with [`Error::Disconnected`].
    Disconnect,
}

/// How a lagging subscriber (policy `DropOldest`, or `Block` past its budget) catches
/// up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLag {
    /// Skip to recent events and say what was skipped ([`Message::Lagged`]).
    Signal,
    /// Read what it missed from the WAL, then switch back to the ring: no gap. Falls
    /// back to `Lagged` only for what the WAL no longer holds.
    Replay,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next event published.
    Live,
    /// At this LSN (replayed from the WAL if the ring no longer holds it).
    Lsn(u64),
}

/// A subscription's settings (builder style).
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Where it starts.
    pub start: Start,
    /// Which events it receives.
    pub filter: Filter,
    /// What happens when it is too slow.
    pub policy: Policy,
    /// How it catches up after lagging.
    pub on_lag: OnLag,
    /// A name shown in [`Bus::subscribers`].
    pub name: Option<String>,
    /// Busy-wait this long for the next event before sleeping (lowest latency at the
    /// price of a core). Default zero.
    pub spin: Duration,
}

impl SubscribeOptions {
    /// Live from the next event, every topic, `DropOldest`, `Signal`.
    pub fn live() -> SubscribeOptions {
        SubscribeOptions {
            start: Start::Live,
            filter: Filter::all(),
            policy: Policy::DropOldest,
            on_lag: OnLag::Signal,
            name: None,
            spin: Duration::ZERO,
        }
    }

    /// From `lsn` (replaying the past), then live.
    pub fn from_lsn(lsn: u64) -> SubscribeOptions {
        SubscribeOptions { start: Start::Lsn(lsn), ..SubscribeOptions::live() }
    }

    /// Only these topics.
    pub fn topics(mut self, topics: &[Topic]) -> SubscribeOptions {
        for t in topics {
            self.filter = self.filter.topic(*t);
        }
        self
    }

    /// This filter.
    pub fn filter(mut self, f: Filter) -> SubscribeOptions {
        self.filter = f;
        self
    }

    /// This policy.
    pub fn policy(mut self, p: Policy) -> SubscribeOptions {
        self.policy = p;
        self
    }

    /// This way of catching up.
    pub fn on_lag(mut self, o: OnLag) -> SubscribeOptions {
        self.on_lag = o;
        self
    }

    /// A display name.
    pub fn name(mut self, name: &str) -> SubscribeOptions {
        self.name = Some(name.to_owned());
        self
    }

    /// Busy-wait before sleeping.
    pub fn spin(mut self, d: Duration) -> SubscribeOptions {
        self.spin = d;
        self
    }
}

/// One event as delivered: borrowed from the subscriber (its buffer, or while it
/// replays, the journal reader's) until its next call.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// Its LSN.
    pub lsn: u64,
    /// When it was submitted (ns since the Unix epoch).
    pub timestamp: i64,
    /// Its kind.
    pub kind: Option<EventKind>,
    /// The encoded event (`bourse_model::Event::decode`).
    pub payload: &'a [u8],
}

impl Delivery<'_> {
    /// Decodes the event.
    pub fn event(&self) -> Result<Event> {
        Event::decode(self.payload).map_err(|e| Error::Decode { lsn: self.lsn, why: e.to_string() })
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// The next event it asked for.
    Event(Delivery<'a>),
    /// Events `from..=to` were skipped (overwritten before it read them, or no longer
    /// in the WAL).
    Lagged {
        /// The first LSN missed.
        from: u64,
        /// The last LSN missed.
        to: u64,
    },
    /// Nothing arrived for [`BusOptions::heartbeat`]; every LSN up to `lsn` has been
    /// delivered or filtered out.
    Heartbeat {
        /// The subscriber's position.
        lsn: u64,
    },
}

/// A subscriber's state, as listed by [`Bus::subscribers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberState {
    /// Reading the ring.
    Live,
    /// Reading the WAL.
    Replaying,
    /// Was lapped and has not caught up yet.
    Lagging,
    /// Disconnected by its policy.
    Disconnected,
}

impl SubscriberState {
    fn from_u8(n: u8) -> SubscriberState {
        match n {
            0 => SubscriberState::Live,
            1 => SubscriberState::Replaying,
            2 => SubscriberState::Lagging,
            _ => SubscriberState::Disconnected,
        }
    }
}

/// One subscriber, as listed by [`Bus::subscribers`].
#[derive(Debug, Clone)]
pub struct SubscriberInfo {
    /// Its id (unique per bus).
    pub id: u64,
    /// Its name (the cursor name for durable subscribers).
    pub name: Option<String>,
    /// Whether it has a durable cursor.
    pub durable: bool,
    /// Its state.
    pub state: SubscriberState,
    /// Every LSN up to this one was delivered or filtered out.
    pub position: u64,
    /// How many LSNs it is behind the last published one.
    pub lag_lsns: u64,
    /// How old the last event it was given is, when it is behind (zero when caught up).
    pub lag: Duration,
    /// Events delivered.
    pub delivered: u64,
    /// LSNs it was told it missed.
    pub missed: u64,
    /// Its policy.
    pub policy: Policy,
}

/// Counters of the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStats {
    /// The last LSN published.
    pub last_lsn: u64,
    /// Events published since the bus was created.
    pub published: u64,
    /// Live subscribers.
    pub subscribers: usize,
    /// The ring's size in bytes.
    pub ring_bytes: u64,
    /// Publishes that waited for a `Block` subscriber.
    pub blocked_publishes: u64,
}

struct Gate {
    pos: AtomicU64,
    active: AtomicBool,
    demoted: AtomicBool,
    budget: Duration,
}

/// Sees every published record, in LSN order, on the publishing thread, once it has
/// passed the publish checks and right before the ring takes it (the iceoryx2
/// transport publishes from here, so other processes get an event without a thread
/// hop or a wait for the ring's copy).
pub(crate) trait Tap: Send + Sync {
    /// Record `h` with `payload` was published.
    fn published(&self, h: &Header, payload: &[u8]);
}

/// The ring's writer, its tap, and what it remembers of the gates between publishes.
struct WriterState {
    w: Writer,
    /// Sees every record right before the ring (set under this lock, so a tap sees
    /// LSN order and the publish path takes no other lock to find it).
    tap: Option<Arc<dyn Tap>>,
    /// No active `Block` subscriber is overwritten by records ending at or below this
    /// (the gates' positions only grow, so it stays true until the gates change).
    limit: u64,
    /// The `gates_gen` that `limit` was computed for.
    gates_gen: u64,
}

/// A value on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines).
/// For what one thread writes on every message, so that the fields beside it, read on
/// another core (the ring's address a spinning subscriber loads), and whatever the
/// allocator put next to it, do not travel with it.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The publishing side: the ring, its one writer, the blocking gates and the wake-up.
struct PubSide {
    ring: Arc<Ring>,
    /// Locked and written on every publish.
    writer: Padded<Mutex<WriterState>>,
    gates: RwLock<Vec<Arc<Gate>>>,
    /// Bumped whenever the set of gates changes, so the writer recomputes its limit.
    gates_gen: AtomicU64,
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    wait_cond: Condvar,
    /// Written on every publish.
    published: Padded<AtomicU64>,
    blocked: AtomicU64,
    /// The last LSN handed to the tap (0: none): other processes may hold it, and
    /// acknowledge it, before the ring or the engine shows it.
    tapped: AtomicU64,
}

impl PubSide {
    fn new(ring_bytes: usize) -> PubSide {
        let ring = Arc::new(Ring::new(ring_bytes));
        PubSide {
            writer: Padded(Mutex::new(WriterState {
                w: Writer::new(ring.clone()),
                tap: None,
                limit: u64::MAX,
                gates_gen: 0,
            })),
            ring,
            gates: RwLock::new(Vec::new()),
            gates_gen: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            wait_cond: Condvar::new(),
            published: Padded(AtomicU64::new(0)),
            blocked: AtomicU64::new(0),
            tapped: AtomicU64::new(0),
        }
    }

    fn publish(&self, h: Header, payload: &[u8]) -> Result<()> {
        self.publish_batch(std::iter::once((h, payload)))
    }

    /// Publishes records in order under one acquisition of the writer, and shows them
    /// to readers with one store of the ring's tail (and at most one wake-up) at the
    /// end, or earlier if the writer must wait for a `Block` subscriber. Stops at the
    /// first record that is too large or out of order; the ones before it stay
    /// published.
    fn publish_batch<'a>(
        &self,
        records: impl IntoIterator<Item = (Header, &'a [u8])>,
    ) -> Result<()> {
        let max = self.ring.max_payload();
        let mut w = self.writer.lock();
        let mut result = Ok(());
        let mut n = 0u64;
        for (h, payload) in records {
            if payload.len() > max {
                result = Err(Error::TooLarge { bytes: payload.len(), max });
                break;
            }
            let last = w.w.last_lsn();
            if h.lsn == 0 || (last != 0 && h.lsn != last + 1) {
                result = Err(Error::OutOfOrder { lsn: h.lsn, last });
                break;
            }
            if let Some(t) = &w.tap {
                // Under the writer's lock: taps see LSN order. Before the ring's write
                // (nothing after the checks above can refuse the record), so another
                // process's subscriber does not wait for this process's ring. Noted
                // first: a subscriber there may acknowledge it at once.
                self.tapped.store(h.lsn, Ordering::Release);
                t.published(&h, payload);
            }
            // The gates are looked at only when the set changed or this record would
            // pass the limit they allowed last time, not on every publish (their
            // positions move on the readers' cores).
            let end = w.w.end_for(payload.len());
            let gen = self.gates_gen.load(Ordering::Acquire);
            if gen != w.gates_gen || end > w.limit {
                // A `Block` subscriber waits for what this batch wrote so far.
                if w.w.commit() {
                    self.wake();
                }
                w.gates_gen = gen;
                w.limit = self.wait_gates(end);
            }
            let limit = w.limit;
            w.w.write_within(h, payload, limit);
            n += 1;
        }
        let any = w.w.commit();
        // Only the lock's holder writes it: a plain store, no read-modify-write.
        self.published.store(self.published.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        drop(w);
        if any {
            self.wake();
        }
        result
    }

    /// Wakes the subscribers that sleep waiting for the tail to move.
    fn wake(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.wait_lock.lock();
            self.wait_cond.notify_all();
        }
    }

    /// Waits until no active `Block` subscriber would be overwritten by a record
    /// ending at `end`, each for at most its budget. Returns the end up to which the
    /// gates still waited for allow writing (at least `end`; `u64::MAX` with no gates).
    fn wait_gates(&self, end: u64) -> u64 {
        let cap = self.ring.capacity();
        let mut demoted = false;
        let mut limit = u64::MAX;
        for g in self.gates.read().iter() {
            if !g.active.load(Ordering::Acquire) || g.demoted.load(Ordering::Acquire) {
                continue;
            }
            let at = g.pos.load(Ordering::Acquire) + cap;
            if end <= at {
                limit = limit.min(at);
                continue;
            }
            self.blocked.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + g.budget;
            let mut spins = 0u32;
            while end > g.pos.load(Ordering::Acquire) + cap && g.active.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    tracing::warn!(budget = ?g.budget, "a Block subscriber exceeded its budget; it now lags");
                    g.demoted.store(true, Ordering::Release);
                    demoted = true;
                    break;
                }
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if !g.demoted.load(Ordering::Acquire) && g.active.load(Ordering::Acquire) {
                limit = limit.min(g.pos.load(Ordering::Acquire) + cap);
            }
        }
        if demoted {
            let mut gates = self.gates.write();
            gates.retain(|g| !g.demoted.load(Ordering::Acquire));
            self.gates_gen.fetch_add(1, Ordering::AcqRel);
        }
        limit.max(end)
    }

    fn add_gate(&self, g: &Arc<Gate>) {
        let mut gates = self.gates.write();
        if !gates.iter().any(|x| Arc::ptr_eq(x, g)) {
            gates.push(g.clone());
        }
        self.gates_gen.fetch_add(1, Ordering::AcqRel);
    }

    fn remove_gate(&self, g: &Arc<Gate>) {
        let mut gates = self.gates.write();
        gates.retain(|x| !Arc::ptr_eq(x, g));
        self.gates_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// Sleeps until the ring's tail moves past `seen` or `until`.
    fn wait(&self, seen: u64, until: Instant) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut g = self.wait_lock.lock();
        if self.ring.tail() == seen {
            let _ = self.wait_cond.wait_until(&mut g, until);
        }
        drop(g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

fn header_for(lsn: u64, timestamp: i64, event: &Event, len: usize) -> Header {
    let (ih, ah) = hashes(event);
    Header { lsn, timestamp, meta: meta(len, event.kind().as_u16() as u8, ih, ah) }
}

impl CommitSink for PubSide {
    fn committed(&self, lsn: u64, timestamp: i64, event: &Event, encoded: &[u8]) {
        if let Err(e) = self.publish(header_for(lsn, timestamp, event, encoded.len()), encoded) {
            // Attach checks the ring fits the WAL's largest record and the engine
            // applies in LSN order, so this is a bug, not a runtime condition.
            tracing::error!(error = %e, lsn, "the bus could not publish a committed event");
        }
    }

    fn committed_batch(&self, first: u64, timestamp: i64, events: &[Event], encoded: &Encoded) {
        let records = events
            .iter()
            .zip(encoded.iter())
            .enumerate()
            .map(|(i, (e, p))| (header_for(first + i as u64, timestamp, e, p.len()), p));
        if let Err(e) = self.publish_batch(records) {
            // As above: a bug, not a runtime condition.
            tracing::error!(error = %e, first, "the bus could not publish a committed batch");
        }
    }
}

/// Publishes into a bus that has no engine ([`Bus::detached`]): tests, benchmarks and
/// embedders with their own journal. LSNs must follow one another.
pub struct Publisher {
    side: Arc<PubSide>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("last_lsn", &self.side.ring.last_lsn()).finish()
    }
}

impl Publisher {
    /// Publishes event `lsn` with its encoded form.
    pub fn publish(&self, lsn: u64, timestamp: i64, event: &Event, encoded: &[u8]) -> Result<()> {
        self.side.publish(header_for(lsn, timestamp, event, encoded.len()), encoded)
    }

    /// Publishes consecutive events from LSN `first` on (`encoded[i]` is
    /// `events[i]`'s encoded form), all with `timestamp`. Subscribers see the batch
    /// at once, as the engine's batches: one store of the ring's tail instead of one
    /// per event. Stops at the first event that cannot be published; the ones before
    /// it stay published.
    pub fn publish_batch<P: AsRef<[u8]>>(
        &self,
        first: u64,
        timestamp: i64,
        events: &[Event],
        encoded: &[P],
    ) -> Result<()> {
        if events.len() != encoded.len() {
            let why = format!("{} events but {} encoded forms", events.len(), encoded.len());
            return Err(Error::BadOption { what: "publish_batch", why });
        }
        self.side.publish_batch(events.iter().zip(encoded).enumerate().map(|(i, (e, p))| {
            let p = p.as_ref();
            (header_for(first + i as u64, timestamp, e, p.len()), p)
        }))
    }

    /// [`Publisher::publish_batch`] for already-encoded payloads of `kind`, without
    /// instrument or account.
    pub fn publish_raw_batch<P: AsRef<[u8]>>(
        &self,
        first: u64,
        timestamp: i64,
        kind: EventKind,
        payloads: &[P],
    ) -> Result<()> {
        self.side.publish_batch(payloads.iter().enumerate().map(|(i, p)| {
            let p = p.as_ref();
            let h = Header {
                lsn: first + i as u64,
                timestamp,
                meta: meta(p.len(), kind.as_u16() as u8, 0, 0),
            };
            (h, p)
        }))
    }

    /// Publishes an already-encoded payload of `kind` without instrument or account
    /// (filters by instrument or account will decode it).
    pub fn publish_raw(
        &self,
        lsn: u64,
        timestamp: i64,
        kind: EventKind,
        payload: &[u8],
    ) -> Result<()> {
        let h = Header { lsn, timestamp, meta: meta(payload.len(), kind.as_u16() as u8, 0, 0) };
        self.side.publish(h, payload)
    }
}

/// A subscriber's shared state: its thread stores `next`, `delivered` and `last_ts` on
/// every message, so it has cache lines of its own (see [`Padded`]).
#[repr(align(128))]
struct SubShared {
    id: u64,
    name: Option<String>,
    durable: bool,
    policy: Policy,
    state: AtomicU8,
    next: AtomicU64,
    delivered: AtomicU64,
    missed: AtomicU64,
    last_ts: AtomicI64,
}

pub(crate) struct Shared {
    side: Arc<PubSide>,
    pub(crate) engine: Option<Arc<Engine>>,
    /// The first LSN the ring receives (engine mode; 0 when detached).
    start_lsn: u64,
    opts: BusOptions,
    subs: Mutex<BTreeMap<u64, Arc<SubShared>>>,
    next_id: AtomicU64,
    cursors: Option<Cursors>,
    shutdown: Mutex<bool>,
    shutdown_cond: Condvar,
}

/// The bus. Dropping it detaches it from the engine; subscribers then see no new
/// events.
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("stats", &self.stats()).finish()
    }
}

fn check_opts(opts: &BusOptions) -> Result<()> {
    if opts.ring_bytes < 4096 {
        return Err(Error::BadOption { what: "ring_bytes", why: "at least 4096".into() });
    }
    if opts.heartbeat.is_zero() || opts.ack_flush_interval.is_zero() {
        let why = "heartbeat and ack_flush_interval must be positive".into();
        return Err(Error::BadOption { what: "heartbeat", why });
    }
    Ok(())
}

impl Bus {
    /// A bus fed by `engine`: every event applied from now on is published, every
    /// older retained one can be replayed. Loads the durable cursors (and pins the WAL
    /// for them). Open the engine with `wal_hold_at_open` set to
    /// [`crate::cursor_floor`] of its directory, or its maintenance may truncate
    /// what a cursor needs before this call; attach releases that hold, and dropping
    /// the bus sets it again at its cursors' floor. One bus per engine: attaching another replaces the first's feed.
    pub fn attach(engine: Arc<Engine>, opts: BusOptions) -> Result<Bus> {
        check_opts(&opts)?;
        let side = Arc::new(PubSide::new(opts.ring_bytes));
        let need = engine.options().wal.record_bytes_max;
        if side.ring.max_payload() < need {
            let why = format!(
                "the ring's record limit ({} bytes, a quarter of the ring) is below the WAL's record_bytes_max ({need})",
                side.ring.max_payload()
            );
            return Err(Error::BadOption { what: "ring_bytes", why });
        }
        let cursors = Cursors::load(&engine)?;
        // The cursors now hold their own pins.
        engine.set_wal_hold(None);
        let start_lsn = engine.attach_sink(side.clone());
        let shared = Arc::new(Shared {
            side,
            engine: Some(engine),
            start_lsn,
            opts,
            subs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            cursors: Some(cursors),
            shutdown: Mutex::new(false),
            shutdown_cond: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bourse-bus".into())
            .spawn(move || s.maintenance_loop())
            .map_err(|source| Error::CursorIo { name: "*".into(), op: "spawn thread", source })?;
        Ok(Bus { shared, thread: Some(thread) })
    }

    /// A bus without an engine, and its one publisher. No replay (a subscriber
    /// older than the ring gets `Lagged`) and no durable cursors.
    pub fn detached(opts: BusOptions) -> Result<(Bus, Publisher)> {
        check_opts(&opts)?;
        let side = Arc::new(PubSide::new(opts.ring_bytes));
        let shared = Arc::new(Shared {
            side: side.clone(),
            engine: None,
            start_lsn: 0,
            opts,
            subs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            cursors: None,
            shutdown: Mutex::new(false),
            shutdown_cond: Condvar::new(),
        });
        Ok((Bus { shared, thread: None }, Publisher { side }))
    }

    /// Subscribes.
    pub fn subscribe(&self, opts: SubscribeOptions) -> Result<Subscriber> {
        Subscriber::new(self.shared.clone(), opts, None)
    }

    /// Subscribes with the durable cursor `name`: it starts right after the cursor's
    /// last persisted acknowledgement (a new cursor starts where `opts.start` says),
    /// and its acknowledgements ([`Subscriber::ack`]) are persisted and hold the WAL.
    /// It always catches up from the WAL when lapped ([`OnLag::Replay`]); only what the
    /// WAL no longer holds (a cursor past `cursor_lag_max`) is signalled as `Lagged`.
    /// Delivery is at least once: events after the last persisted ack come again.
    pub fn durable(&self, name: &str, mut opts: SubscribeOptions) -> Result<Subscriber> {
        let cursor = self.shared.cursor(name, opts.start)?;
        if cursor.in_use.swap(true, Ordering::AcqRel) {
            return Err(Error::CursorInUse { name: name.to_owned() });
        }
        let acked = match self.shared.resume(&cursor) {
            Ok(a) => a,
            Err(e) => {
                cursor.in_use.store(false, Ordering::Release);
                return Err(e);
            }
        };
        opts.start = Start::Lsn(acked + 1);
        opts.name = Some(name.to_owned());
        // A durable subscriber exists not to lose events: it catches up from the WAL.
        opts.on_lag = OnLag::Replay;
        match Subscriber::new(self.shared.clone(), opts, Some(cursor.clone())) {
            Ok(s) => Ok(s),
            Err(e) => {
                cursor.in_use.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Sets a durable cursor's acknowledged LSN (creating it if needed), for instance
    /// after [`Error::CursorAhead`]. The cursor must not be in use.
    pub fn reset_cursor(&self, name: &str, acked: u64) -> Result<()> {
        check_name(name)?;
        let engine = self.shared.engine("durable cursors")?;
        let cursors = self.shared.cursors()?;
        let mut map = cursors.map.lock();
        if map.get(name).is_some_and(|c| c.in_use.load(Ordering::Acquire)) {
            return Err(Error::CursorInUse { name: name.to_owned() });
        }
        let c = Arc::new(Cursor::new(name, acked, Some(engine.pin_wal(acked + 1))));
        c.persisted.store(u64::MAX, Ordering::Release);
        cursors.persist(&c)?;
        map.insert(name.to_owned(), c);
        Ok(())
    }

    /// Opens the durable cursor `name` for a reader that is not a [`Subscriber`] of
    /// this bus (another process over [`crate::ipc`], a network stream), creating it at
    /// `start` if it does not exist, and returns its acknowledged LSN: the reader
    /// resumes at the next one. Unlike [`Bus::durable`] it does not mark the cursor in
    /// use, because the bus cannot see such a reader go away; one reader per name is
    /// the caller's rule. The cursor holds the WAL like any other.
    pub fn open_cursor(&self, name: &str, start: Start) -> Result<u64> {
        self.shared.open_cursor(name, start)
    }

    /// Acknowledges `lsn` on the cursor `name` opened with [`Bus::open_cursor`]
    /// (acknowledgements never move it backwards); with `flush` it is on disk before
    /// this returns, otherwise within [`BusOptions::ack_flush_interval`].
    pub fn ack_cursor(&self, name: &str, lsn: u64, flush: bool) -> Result<u64> {
        self.shared.ack_cursor(name, lsn, flush)
    }

    /// Durable cursors: (name, acknowledged LSN, whether it fell behind).
    pub fn cursors_list(&self) -> Vec<(String, u64, bool)> {
        let Some(c) = &self.shared.cursors else { return Vec::new() };
        c.map
            .lock()
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    c.acked.load(Ordering::Acquire),
                    c.fell_behind.load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// Writes every moved cursor to disk now.
    pub fn flush_cursors(&self) -> Result<()> {
        match &self.shared.cursors {
            Some(c) => c.persist_all(),
            None => Ok(()),
        }
    }

    /// Every subscriber with its state and lag.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        let last = self.shared.head();
        let now = now_ns();
        self.shared
            .subs
            .lock()
            .values()
            .map(|s| {
                let position = s.next.load(Ordering::Acquire).saturating_sub(1);
                let lag_lsns = last.saturating_sub(position);
                let ts = s.last_ts.load(Ordering::Acquire);
                let lag = if lag_lsns > 0 && ts > 0 {
                    Duration::from_nanos(now.saturating_sub(ts).max(0) as u64)
                } else {
                    Duration::ZERO
                };
                SubscriberInfo {
                    id: s.id,
                    name: s.name.clone(),
                    durable: s.durable,
                    state: SubscriberState::from_u8(s.state.load(Ordering::Acquire)),
                    position,
                    lag_lsns,
                    lag,
                    delivered: s.delivered.load(Ordering::Acquire),
                    missed: s.missed.load(Ordering::Acquire),
                    policy: s.policy,
                }
            })
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> BusStats {
        let side = &self.shared.side;
        BusStats {
            last_lsn: side.ring.last_lsn(),
            published: side.published.load(Ordering::Relaxed),
            subscribers: self.shared.subs.lock().len(),
            ring_bytes: side.ring.capacity() * 8,
            blocked_publishes: side.blocked.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(e) = &self.shared.engine {
            e.detach_sink();
        }
        *self.shared.shutdown.lock() = true;
        self.shared.shutdown_cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.flush_cursors() {
            tracing::error!(error = %e, "durable cursors could not be written at close");
        }
        // The cursors' pins go with the bus: hold the WAL for them until a bus attaches.
        if let (Some(engine), Some(c)) = (&self.shared.engine, &self.shared.cursors) {
            let floor = c
                .map
                .lock()
                .values()
                .filter(|c| !c.fell_behind.load(Ordering::Acquire))
                .map(|c| c.acked.load(Ordering::Acquire) + 1)
                .min();
            engine.set_wal_hold(floor);
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Shared {
    fn engine(&self, what: &'static str) -> Result<&Arc<Engine>> {
        self.engine.as_ref().ok_or(Error::NoEngine { what })
    }

    fn cursors(&self) -> Result<&Cursors> {
        self.cursors.as_ref().ok_or(Error::NoEngine { what: "durable cursors" })
    }

    pub(crate) fn open_cursor(&self, name: &str, start: Start) -> Result<u64> {
        let cursor = self.cursor(name, start)?;
        self.resume(&cursor)
    }

    /// The durable cursor `name`, created at `start` (persisted at once, so its
    /// existence survives a restart) when it does not exist.
    fn cursor(&self, name: &str, start: Start) -> Result<Arc<Cursor>> {
        check_name(name)?;
        let engine = self.engine("durable cursors")?;
        let cursors = self.cursors()?;
        let mut map = cursors.map.lock();
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let first = match start {
            Start::Live => self.head() + 1,
            Start::Lsn(n) => n.max(1),
        };
        let c = Arc::new(Cursor::new(name, first - 1, Some(engine.pin_wal(first))));
        c.persisted.store(u64::MAX, Ordering::Release);
        cursors.persist(&c)?;
        map.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Checks a cursor can resume (it does not acknowledge events the journal lost)
    /// and pins the WAL again for one that had fallen behind; returns its
    /// acknowledged LSN.
    fn resume(&self, cursor: &Cursor) -> Result<u64> {
        let engine = self.engine("durable cursors")?;
        let acked = cursor.acked.load(Ordering::Acquire);
        let journal_end = self.delivered_end(engine);
        if acked > journal_end {
            return Err(Error::CursorAhead { name: cursor.name.clone(), acked, journal_end });
        }
        if cursor.fell_behind.swap(false, Ordering::AcqRel) {
            *cursor.pin.lock() = Some(engine.pin_wal(acked + 1));
        }
        Ok(acked)
    }

    pub(crate) fn ack_cursor(&self, name: &str, lsn: u64, flush: bool) -> Result<u64> {
        check_name(name)?;
        let engine = self.engine("durable cursors")?;
        let cursors = self.cursors()?;
        let Some(cursor) = cursors.map.lock().get(name).cloned() else {
            let why = format!("no durable cursor named {name:?}: open it first");
            return Err(Error::BadOption { what: "cursor", why });
        };
        let end = self.delivered_end(engine);
        if lsn > end {
            return Err(Error::AckAhead { lsn, delivered: end });
        }
        cursor.ack(lsn);
        if flush {
            cursors.persist(&cursor)?;
        }
        Ok(cursor.acked.load(Ordering::Acquire))
    }

    /// The last LSN published (or, before the first publish, the one before the
    /// attach point).
    /// Installs (or with `None` removes) the tap. `init` runs first, under the
    /// writer's lock, with the last LSN published (the tap's stream starts right
    /// after it).
    pub(crate) fn set_tap(&self, tap: Option<Arc<dyn Tap>>, init: impl FnOnce(u64)) {
        let mut w = self.side.writer.lock();
        init(self.head());
        w.tap = tap;
    }

    /// The last LSN any subscriber can have received: the tap hands an event to other
    /// processes before the ring holds it, and the ring publishes it just before the
    /// engine makes it visible.
    fn delivered_end(&self, engine: &Engine) -> u64 {
        let tapped = self.side.tapped.load(Ordering::Acquire);
        engine.applied_lsn().max(self.head()).max(tapped)
    }

    pub(crate) fn head(&self) -> u64 {
        match self.side.ring.last_lsn() {
            0 => self.start_lsn.saturating_sub(1),
            n => n,
        }
    }

    fn maintenance_loop(&self) {
        let mut stop = self.shutdown.lock();
        while !*stop {
            let _ = self.shutdown_cond.wait_for(&mut stop, self.opts.ack_flush_interval);
            if *stop {
                break;
            }
            drop(stop);
            if let Some(c) = &self.cursors {
                if let Err(e) = c.persist_all() {
                    tracing::error!(error = %e, "durable cursors could not be written");
                }
                if let Some(engine) = &self.engine {
                    let end = engine.applied_lsn();
                    for cur in c.map.lock().values() {
                        let acked = cur.acked.load(Ordering::Acquire);
                        if end.saturating_sub(acked) > self.opts.cursor_lag_max
                            && cur.pin.lock().take().is_some()
                        {
                            cur.fell_behind.store(true, Ordering::Release);
                            tracing::warn!(cursor = %cur.name, acked, end, "durable cursor fell behind cursor_lag_max; it no longer holds the WAL");
                        }
                    }
                }
            }
            stop = self.shutdown.lock();
        }
    }
}

enum Source {
    Ring,
    Replay(Box<Replay>),
}

struct Replay {
    stream: CommitStream,
    pin: WalPin,
    since_pin: u32,
}

enum Got {
    Event(Header),
    Lagged(u64, u64),
    Nothing,
}

/// A `Block` subscriber publishes its position at least every this many records.
const GATE_EVERY: u32 = 32;

const LIVE: u8 = 0;
const REPLAYING: u8 = 1;
const LAGGING: u8 = 2;
const DISCONNECTED: u8 = 3;

/// One subscription. Read it with [`Subscriber::next`] or [`Subscriber::try_next`].
pub struct Subscriber {
    shared: Arc<Shared>,
    side: Arc<PubSide>,
    info: Arc<SubShared>,
    filter: Filter,
    policy: Policy,
    on_lag: OnLag,
    spin: Duration,
    source: Source,
    pos: u64,
    /// The ring's tail as this subscriber last loaded it ([`Ring::read`]).
    seen_tail: u64,
    next: u64,
    buf: Vec<u8>,
    pending_lag: Option<(u64, u64)>,
    gate: Option<Arc<Gate>>,
    cursor: Option<Arc<Cursor>>,
    disconnected: Option<u64>,
    last_msg: Instant,
    /// A message was returned since `last_msg` was stamped: the next idle wait stamps it
    /// (reading the clock per message would cost more than the rest of a delivery).
    fresh: bool,
    /// Records read since the gate's position was last published.
    unpublished: u32,
    delivered: u64,
    missed: u64,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.info.id)
            .field("next", &self.next)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Subscriber {
    fn new(shared: Arc<Shared>, o: SubscribeOptions, cursor: Option<Arc<Cursor>>) -> Result<Self> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(SubShared {
            id,
            name: o.name.clone(),
            durable: cursor.is_some(),
            policy: o.policy,
            state: AtomicU8::new(LIVE),
            next: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            last_ts: AtomicI64::new(0),
        });
        let gate = match o.policy {
            Policy::Block { budget } => Some(Arc::new(Gate {
                pos: AtomicU64::new(0),
                active: AtomicBool::new(false),
                demoted: AtomicBool::new(false),
                budget,
            })),
            _ => None,
        };
        let mut s = Subscriber {
            side: shared.side.clone(),
            shared,
            info,
            filter: o.filter,
            policy: o.policy,
            on_lag: o.on_lag,
            spin: o.spin,
            source: Source::Ring,
            pos: 0,
            seen_tail: 0,
            next: 0,
            buf: Vec::new(),
            pending_lag: None,
            gate,
            cursor,
            disconnected: None,
            last_msg: Instant::now(),
            fresh: false,
            unpublished: 0,
            delivered: 0,
            missed: 0,
        };
        s.start(o.start)?;
        s.shared.subs.lock().insert(id, s.info.clone());
        Ok(s)
    }

    fn start(&mut self, start: Start) -> Result<()> {
        let ring = self.side.ring.clone();
        let from = {
            // Under the writer's lock, the last LSN and the tail agree.
            let _w = self.side.writer.lock();
            let head = self.shared.head();
            let from = match start {
                Start::Live => head + 1,
                Start::Lsn(n) => n.max(1),
            };
            if from > head + 1 {
                let why = format!("LSN {from} is in the future: the last published is {head}");
                return Err(Error::BadOption { what: "start", why });
            }
            if from == head + 1 {
                // Detached and never published: accept whatever LSN comes first.
                self.next = if head == 0 && self.shared.engine.is_none() { 0 } else { from };
                let pos = ring.tail();
                drop(_w);
                self.enter_ring(pos);
                return Ok(());
            }
            from
        };
        if let Some(p) = ring.locate(from) {
            self.next = from;
            self.enter_ring(p);
            return Ok(());
        }
        self.next = from;
        if self.shared.engine.is_some() {
            self.start_replay()
        } else {
            self.resync();
            Ok(())
        }
    }

    /// After falling out of the ring (or starting before it): replay from the WAL
    /// when there is an engine and the policy allows, else skip ahead with `Lagged`.
    fn catch_up(&mut self) -> Result<()> {
        if self.shared.engine.is_some() && self.on_lag == OnLag::Replay {
            self.start_replay()
        } else {
            self.resync();
            Ok(())
        }
    }

    fn start_replay(&mut self) -> Result<()> {
        let Some(engine) = self.shared.engine.clone() else {
            return Err(Error::NoEngine { what: "replay" });
        };
        if let Some(g) = &self.gate {
            g.active.store(false, Ordering::Release);
        }
        loop {
            let pin = engine.pin_wal(self.next);
            let first = engine.first_retained_lsn();
            if self.next < first {
                self.lag(self.next, first - 1);
                self.next = first;
                pin.advance(first);
            }
            match engine.commits(self.next) {
                Ok(stream) => {
                    self.source = Source::Replay(Box::new(Replay { stream, pin, since_pin: 0 }));
                    self.info.state.store(REPLAYING, Ordering::Release);
                    return Ok(());
                }
                // Truncated between the check and the open: look again.
                Err(bourse_engine::Error::NotRetained { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Skips to the oldest record still safely in the ring, signalling the gap.
    fn resync(&mut self) {
        let ring = self.side.ring.clone();
        loop {
            if let Some(p) = ring.locate(self.next) {
                // Still there after all (a race with the writer): no gap.
                if ring.tail() - p <= ring.capacity() / 2 {
                    self.enter_ring(p);
                    return;
                }
            }
            if let Some((lsn, p)) = ring.resync_point() {
                if lsn > self.next {
                    self.lag(self.next, lsn - 1);
                }
                if lsn >= self.next {
                    self.next = lsn;
                    self.enter_ring(p);
                    return;
                }
            }
            if ring.last_lsn() == 0 || ring.last_lsn() < self.next {
                // Nothing newer to skip to: start at the tail.
                let _w = self.side.writer.lock();
                let last = ring.last_lsn();
                if last >= self.next {
                    continue;
                }
                let pos = ring.tail();
                drop(_w);
                self.enter_ring(pos);
                return;
            }
            std::thread::yield_now();
        }
    }

    fn lag(&mut self, from: u64, to: u64) {
        if self.shared.opts.canary_silent_drop {
            // CANARY: skips without saying so; the ordering tests must catch it.
            return;
        }
        let (f, t) = match self.pending_lag {
            Some((f, _)) => (f, to),
            None => (from, to),
        };
        self.pending_lag = Some((f, t));
        self.info.state.store(LAGGING, Ordering::Release);
    }

    fn enter_ring(&mut self, pos: u64) {
        self.pos = pos;
        self.seen_tail = 0;
        self.unpublished = 0;
        self.source = Source::Ring;
        if let Some(g) = &self.gate {
            g.pos.store(pos, Ordering::Release);
            g.demoted.store(false, Ordering::Release);
            g.active.store(true, Ordering::Release);
            self.side.add_gate(g);
        }
        if self.pending_lag.is_none() {
            self.info.state.store(LIVE, Ordering::Release);
        }
    }

    /// Accepts or rejects an event by its header, decoding only when the filter names
    /// instruments or accounts.
    fn accepts(&self, h: &Header) -> bool {
        let kind = (h.meta >> 32) as u8;
        let ih = ((h.meta >> 40) & 0xfff) as u16;
        let ah = ((h.meta >> 52) & 0xfff) as u16;
        match self.filter.prefilter(kind, ih, ah) {
            Some(b) => b,
            None => Event::decode(&self.buf).is_ok_and(|e| self.filter.accepts(&e)),
        }
    }

    fn poll(&mut self) -> Result<Got> {
        if let Some(at) = self.disconnected {
            return Err(Error::Disconnected { at });
        }
        loop {
            if let Some((f, t)) = self.pending_lag.take() {
                self.missed += t - f + 1;
                self.info.missed.store(self.missed, Ordering::Release);
                self.info.next.store(self.next, Ordering::Release);
                return Ok(Got::Lagged(f, t));
            }
            match &mut self.source {
                Source::Replay(r) => {
                    let ring = &self.side.ring;
                    let first = ring.first_lsn();
                    if first != 0 && self.next >= first {
                        // Switch only with half a ring of room, or a fast writer would
                        // lap it again at once.
                        if let Some(p) = ring.locate(self.next) {
                            if ring.tail() - p <= ring.capacity() / 2 {
                                self.enter_ring(p);
                                continue;
                            }
                        }
                    }
                    let Some(raw) = r.stream.next_raw()? else { return Ok(Got::Nothing) };
                    if raw.lsn != self.next {
                        let why = format!("the WAL gave {} where {} was due", raw.lsn, self.next);
                        return Err(Error::Decode { lsn: self.next, why });
                    }
                    // The payload stays in the stream's buffer: `finish` lends it from
                    // there rather than copying it into `buf`.
                    let h = Header {
                        lsn: raw.lsn,
                        timestamp: raw.timestamp,
                        meta: meta(raw.payload.len(), raw.kind as u8, 0, 0),
                    };
                    self.next += 1;
                    r.since_pin += 1;
                    if r.since_pin >= 4096 {
                        r.pin.advance(self.next);
                        r.since_pin = 0;
                    }
                    let ok = match self.filter.prefilter(raw.kind as u8, 0, 0) {
                        Some(false) => false,
                        _ if self.filter.is_all() => true,
                        _ => Event::decode(raw.payload).is_ok_and(|e| self.filter.accepts(&e)),
                    };
                    if ok {
                        return Ok(Got::Event(h));
                    }
                }
                Source::Ring => {
                    let ring = &self.side.ring;
                    match ring.read(&mut self.pos, &mut self.seen_tail, self.next, &mut self.buf) {
                        Read::Empty => {
                            // Caught up: the publisher must not wait for what was read.
                            if let Some(g) = &self.gate {
                                if self.unpublished > 0 {
                                    g.pos.store(self.pos, Ordering::Release);
                                    self.unpublished = 0;
                                }
                            }
                            return Ok(Got::Nothing);
                        }
                        Read::Record(h) => {
                            self.next = h.lsn + 1;
                            if let Some(g) = &self.gate {
                                // Published every GATE_EVERY records (and when caught
                                // up): a publisher waiting on this reader reads the
                                // line, and a store per record would then cost the
                                // reader a cache miss per record.
                                self.unpublished += 1;
                                if self.unpublished >= GATE_EVERY {
                                    g.pos.store(self.pos, Ordering::Release);
                                    self.unpublished = 0;
                                }
                            }
                            if self.accepts(&h) {
                                return Ok(Got::Event(h));
                            }
                        }
                        Read::Lapped => {
                            if self.next == 0 {
                                // Detached, joined before the first publish: the first
                                // LSN published is the first it missed.
                                self.next = ring.first_lsn();
                            }
                            if self.policy == Policy::Disconnect {
                                self.disconnected = Some(self.next);
                                self.info.state.store(DISCONNECTED, Ordering::Release);
                                if let Some(g) = &self.gate {
                                    self.side.remove_gate(g);
                                }
                                return Err(Error::Disconnected { at: self.next });
                            }
                            self.catch_up()?;
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self, got: Got) -> Option<Message<'_>> {
        match got {
            Got::Nothing => None,
            Got::Lagged(from, to) => {
                self.fresh = true;
                Some(Message::Lagged { from, to })
            }
            Got::Event(h) => {
                self.fresh = true;
                self.delivered += 1;
                self.info.delivered.store(self.delivered, Ordering::Relaxed);
                self.info.next.store(self.next, Ordering::Relaxed);
                self.info.last_ts.store(h.timestamp, Ordering::Relaxed);
                let kind = EventKind::from_u16(((h.meta >> 32) & 0xff) as u16);
                Some(Message::Event(Delivery {
                    lsn: h.lsn,
                    timestamp: h.timestamp,
                    kind,
                    // An event read during replay is still in the commit stream's
                    // buffer (`poll` returns as soon as it reads one, so the source it
                    // came from is the current one); one from the ring was copied out.
                    payload: match &self.source {
                        Source::Replay(r) => r.stream.last_payload(),
                        Source::Ring => &self.buf,
                    },
                }))
            }
        }
    }

    /// The next message if one is ready, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Message<'_>>> {
        let got = self.poll()?;
        Ok(self.finish(got))
    }

    /// The next message, waiting up to `timeout`. Returns a heartbeat when nothing
    /// arrived for the bus's heartbeat interval, and `None` when `timeout` ran out.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Message<'_>>> {
        let heartbeat = self.shared.opts.heartbeat;
        // The clock is read only once nothing is ready.
        let mut deadline = None;
        let got = loop {
            // Reading the ring, the tail the empty read just loaded is the one to wait
            // on; replaying, the tail before the WAL was asked (the engine publishes an
            // event before the WAL reader can see it).
            let before = match self.source {
                Source::Ring => None,
                Source::Replay(_) => Some(self.side.ring.tail()),
            };
            match self.poll()? {
                Got::Nothing => {}
                got => break got,
            }
            let seen = match (&self.source, before) {
                // An empty read of the ring has just loaded the tail.
                (Source::Ring, _) => self.seen_tail,
                (Source::Replay(_), Some(t)) => t,
                // A lapped reader went back to the WAL within this poll: poll again,
                // with the tail loaded first.
                (Source::Replay(_), None) => continue,
            };
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            if self.fresh {
                // Nothing is ready right after a message: the idle time starts now.
                self.last_msg = now;
                self.fresh = false;
            }
            if now >= self.last_msg + heartbeat {
                self.last_msg = now;
                self.info.next.store(self.next, Ordering::Relaxed);
                return Ok(Some(Message::Heartbeat { lsn: self.next.saturating_sub(1) }));
            }
            if now >= deadline {
                self.info.next.store(self.next, Ordering::Relaxed);
                return Ok(None);
            }
            let until = deadline.min(self.last_msg + heartbeat);
            if !self.spin.is_zero() {
                // Spin on the tail; look at the clock only every 256 turns.
                let spin_until = (now + self.spin).min(until);
                let mut turns = 0u32;
                while self.side.ring.tail() == seen {
                    std::hint::spin_loop();
                    turns = turns.wrapping_add(1);
                    if turns.is_multiple_of(256) && Instant::now() >= spin_until {
                        break;
                    }
                }
                if self.side.ring.tail() != seen {
                    continue;
                }
            }
            // Replay that caught up waits for the ring too: the engine publishes an
            // event before making it visible to the WAL reader.
            self.side.wait(seen, until);
        };
        Ok(self.finish(got))
    }

    /// Every LSN below this one was delivered, filtered out or signalled as lagged.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// This subscriber's id (as in [`Bus::subscribers`]).
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// Acknowledges every LSN up to `lsn` (durable subscribers). The position is
    /// written to disk within [`BusOptions::ack_flush_interval`] (or by
    /// [`Subscriber::flush_acks`]); after a restart the subscriber resumes after the
    /// last written acknowledgement.
    pub fn ack(&mut self, lsn: u64) -> Result<()> {
        let Some(c) = &self.cursor else { return Err(Error::NotDurable) };
        let delivered = self.next.saturating_sub(1);
        if lsn > delivered {
            return Err(Error::AckAhead { lsn, delivered });
        }
        c.ack(lsn);
        Ok(())
    }

    /// Writes the acknowledged position to disk now.
    pub fn flush_acks(&mut self) -> Result<()> {
        let Some(c) = &self.cursor else { return Err(Error::NotDurable) };
        match &self.shared.cursors {
            Some(cs) => cs.persist(c),
            None => Err(Error::NoEngine { what: "durable cursors" }),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(g) = &self.gate {
            g.active.store(false, Ordering::Release);
            self.side.remove_gate(g);
        }
        self.shared.subs.lock().remove(&self.info.id);
        if let Some(c) = &self.cursor {
            if let Some(cs) = &self.shared.cursors {
                if let Err(e) = cs.persist(c) {
                    tracing::error!(error = %e, cursor = %c.name, "cursor could not be written");
                }
            }
            c.in_use.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use bourse_engine::{Durability, EngineOptions};
    use bourse_model::samples::sample;

    /// Acknowledges each record on a cursor from inside the tap, as a subscriber in
    /// another process may do the moment the transport hands it the record.
    struct AckingTap {
        shared: Arc<Shared>,
        results: Mutex<Vec<(u64, Result<u64>)>>,
    }

    impl Tap for AckingTap {
        fn published(&self, h: &Header, _payload: &[u8]) {
            let r = self.shared.ack_cursor("fast", h.lsn, false);
            self.results.lock().push((h.lsn, r));
        }
    }

    /// The tap hands a record to other processes before this process's ring holds it
    /// and before the engine shows it; a subscriber there may acknowledge it at once.
    /// That acknowledgement must be accepted (it once was refused as "ack of N but only
    /// N-1 was delivered", which the kill -9 test of the iceoryx2 transport hit).
    #[test]
    fn an_ack_of_a_record_the_tap_handed_out_is_accepted_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = EngineOptions::default();
        opts.wal.record_bytes_max = 4096;
        opts.wal.segment_bytes = 256 << 10;
        let engine = Arc::new(Engine::open(dir.path(), opts).unwrap());
        let bus_opts = BusOptions { ring_bytes: 64 << 10, ..BusOptions::default() };
        let bus = Bus::attach(engine.clone(), bus_opts).unwrap();
        bus.open_cursor("fast", Start::Live).unwrap();
        let tap =
            Arc::new(AckingTap { shared: bus.shared.clone(), results: Mutex::new(Vec::new()) });
        bus.shared.set_tap(Some(tap.clone()), |_| {});
        for n in 0..20 {
            let batch: Vec<Event> = (0..3).map(|i| sample(EventKind::Tick, n * 3 + i)).collect();
            engine.submit(&batch, Durability::Buffered).unwrap();
        }
        bus.shared.set_tap(None, |_| {});
        let results = std::mem::take(&mut *tap.results.lock());
        assert_eq!(results.len(), 60);
        for (lsn, r) in results {
            assert!(r.is_ok(), "ack of {lsn} from the tap: {r:?}");
        }
        assert_eq!(bus.cursors_list(), vec![("fast".to_string(), 60, false)]);
    }
}
