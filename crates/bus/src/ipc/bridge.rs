//! The publishing side: a bus subscriber that republishes into iceoryx2, and the
//! request server (replay pages, durable cursors).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bourse_engine::{CommitStream, Engine};
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::server::Server;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use iceoryx2::service::port_factory::PortFactory as _;

use super::frame::{self, Frame, FrameWords, Request, FRAME_EVENT, FRAME_HEARTBEAT};
use super::{check_instance, ipc_err, node, requests_name, service, service_name, wake_name};
use crate::bus::{now_ns, Shared, Tap};
use crate::filter::Topic;
use crate::ring::Header;
use crate::{Bus, Error, Result, Start};

/// How a bridge publishes.
#[derive(Debug, Clone)]
pub struct IpcOptions {
    /// Names the services (`bourse/<instance>/...`), so several Bourse processes can
    /// share a machine. `[A-Za-z0-9_.-]{1,64}`.
    pub instance: String,
    /// Each subscriber's queue, in frames (iceoryx2's `subscriber_max_buffer_size`).
    /// A subscriber that falls this far behind loses the oldest frames, and learns
    /// it from the next frame's `prev`.
    pub buffer: usize,
    /// Subscribers per service.
    pub max_subscribers: usize,
    /// The first size of an event's shared-memory slot in bytes (the frame header
    /// travels beside it); larger events make iceoryx2 allocate bigger slots
    /// (power-of-two growth).
    pub initial_frame_bytes: usize,
    /// A service that sent nothing for this long gets a heartbeat.
    pub heartbeat: Duration,
    /// The largest replay page (a page always holds at least one event).
    pub page_bytes: usize,
    /// How often dead nodes are looked for and removed.
    pub cleanup_interval: Duration,
}

impl Default for IpcOptions {
    fn default() -> Self {
        IpcOptions {
            instance: "default".into(),
            buffer: 1024,
            max_subscribers: 16,
            initial_frame_bytes: 1024,
            heartbeat: Duration::from_millis(100),
            page_bytes: 1 << 20,
            cleanup_interval: Duration::from_secs(5),
        }
    }
}

/// A bridge's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcStats {
    /// Events seen on the bus.
    pub events: u64,
    /// Frames sent (an event goes to `all` and to its topic's service).
    pub frames: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Frames iceoryx2 could not take (out of slots); subscribers see the gap.
    pub send_failures: u64,
    /// Requests answered.
    pub requests: u64,
    /// Events served as replay.
    pub replayed: u64,
    /// Dead nodes removed.
    pub dead_nodes_removed: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    frames: AtomicU64,
    heartbeats: AtomicU64,
    send_failures: AtomicU64,
    requests: AtomicU64,
    replayed: AtomicU64,
    dead_nodes_removed: AtomicU64,
}

/// Republishes a bus into iceoryx2 services and answers replay and cursor
/// requests. Events are published on the bus's publishing thread (no thread hop:
/// a frame costs a shared-memory loan, a copy and a send per service with
/// subscribers); heartbeats, subscriber counts and dead-node cleanup run on a
/// housekeeping thread, requests on a third. Dropping it stops them.
pub struct IpcBridge {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
    counters: Arc<Counters>,
    instance: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IpcBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcBridge")
            .field("instance", &self.instance)
            .field("stats", &self.stats())
            .finish()
    }
}

impl IpcBridge {
    /// Starts publishing `bus` from its next event on. Fails (and starts nothing)
    /// when the services cannot be created or opened, for instance because another
    /// process runs a bridge of the same instance.
    pub fn start(bus: &Bus, opts: IpcOptions) -> Result<IpcBridge> {
        check_instance(&opts.instance)?;
        if opts.buffer == 0 || opts.max_subscribers == 0 || opts.page_bytes < 4096 {
            let why = "buffer and max_subscribers must be positive, page_bytes at least 4096";
            return Err(Error::BadOption { what: "ipc", why: why.into() });
        }
        let removed = super::cleanup_dead_nodes()?;
        if removed > 0 {
            tracing::info!(removed, "removed the shared memory of dead iceoryx2 nodes");
        }
        let counters = Arc::new(Counters::default());
        counters.dead_nodes_removed.fetch_add(removed as u64, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let node = node()?;
        let (outs, watch) = open_outs(&node, &opts)?;
        let watch = Arc::new(watch);
        let outs =
            Arc::new(Mutex::new(Outs { outs, head: 0, epoch: now_ns() as u64, _node: node }));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        {
            let (stop, counters, opts, ready) =
                (stop.clone(), counters.clone(), opts.clone(), ready_tx);
            let (shared, watch) = (bus.shared.clone(), watch.clone());
            threads.push(spawn("bourse-ipc-req", move || {
                serve_loop(&shared, &watch, &opts, &stop, &counters, &ready)
            })?);
        }
        let shared = bus.shared.clone();
        let mut bridge = IpcBridge {
            stop: stop.clone(),
            threads,
            counters: counters.clone(),
            instance: opts.instance.clone(),
            shared: shared.clone(),
        };
        let r = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::Ipc { op: "start", why: "the request thread ended early".into() })
        });
        if let Err(e) = r {
            let _ = bridge.shutdown();
            return Err(e);
        }
        // Everything before the first frame is, for a subscriber, a range it may have
        // missed: the first frames' `prev` says so.
        let tap = Arc::new(IpcTap {
            outs: outs.clone(),
            watch: watch.clone(),
            counters: counters.clone(),
        });
        // Under the bus writer's lock (taken before ours, as the tap does), so no
        // event passes between the head and the tap.
        shared.set_tap(Some(tap), |head| {
            let mut g = outs.lock();
            g.head = head;
            for o in &mut g.outs {
                o.prev = head;
            }
        });
        let (ready_tx, ready_rx) = sync_channel::<Result<()>>(1);
        bridge.threads.push(spawn("bourse-ipc-hk", move || {
            housekeeping(&outs, &watch, &opts, &stop, &counters, &ready_tx)
        })?);
        let r = ready_rx.recv().unwrap_or_else(|_| {
            Err(Error::Ipc { op: "start", why: "the housekeeping thread ended early".into() })
        });
        if let Err(e) = r {
            let _ = bridge.shutdown();
            return Err(e);
        }
        Ok(bridge)
    }

    /// The services' instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Counters.
    pub fn stats(&self) -> IpcStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IpcStats {
            events: g(&c.events),
            frames: g(&c.frames),
            heartbeats: g(&c.heartbeats),
            send_failures: g(&c.send_failures),
            requests: g(&c.requests),
            replayed: g(&c.replayed),
            dead_nodes_removed: g(&c.dead_nodes_removed),
        }
    }

    /// Stops both threads and reports the first error either ended with.
    pub fn shutdown(&mut self) -> Result<()> {
        self.shared.set_tap(None, |_| {});
        self.stop.store(true, Ordering::Release);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| {
                Err(Error::Ipc { op: "join", why: "a bridge thread panicked".into() })
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for IpcBridge {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "the iceoryx2 bridge ended with an error");
        }
    }
}

fn spawn(
    name: &str,
    f: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Ipc { op: "spawn thread", why: e.to_string() })
}

/// One published service: all topics (`topic == None`) or one. Its [`Watch`] has the
/// same index.
struct Out {
    topic: Option<Topic>,
    publisher: Publisher<ipc::Service, [u8], FrameWords>,
    /// The last LSN of this service's topics the bridge has seen (sent or not).
    prev: u64,
}

/// What the housekeeping thread and the tap share without a lock, per service: the
/// tap reads the subscriber count and bumps `sent`; the housekeeping and request
/// threads recount (each through its own [`Census`]) and the housekeeping thread
/// watches `sent` for idleness. So the publishing thread never reads a clock or the
/// services' shared-memory metadata, and never waits for the housekeeping thread
/// except when it sends a heartbeat on an idle service.
struct Watch {
    /// Subscribers connected, as last counted.
    subscribers: AtomicUsize,
    /// Frames sent (events and heartbeats).
    sent: AtomicU64,
}

/// The publishing state, shared by the tap (the bus's publishing thread) and the
/// housekeeping thread (heartbeats), always behind one mutex.
///
/// Its ports are `ipc::Service` ports, not `ipc_threadsafe` ones: those put every port
/// behind a recursive pthread mutex of their own, which cost about a quarter of a
/// microsecond per publish on the 2-core machine (raw iceoryx2 publish calls, p50
/// 0.81–0.84 µs thread-safe against 0.55–0.58 µs), while this mutex is needed anyway
/// to keep LSN order and each service's `prev`.
struct Outs {
    // Ports before the node: fields drop in order.
    outs: Vec<Out>,
    /// The last LSN published.
    head: u64,
    epoch: u64,
    _node: Node<ipc::Service>,
}

// SAFETY: `ipc::Service` ports are `!Send` only because they share their node's and
// their service's state through `Rc`s (iceoryx2's `SingleThreaded` policy) and
// unsynchronised cells. An `Outs` owns that node and every port made from it; no
// `Rc`, port or sample leaves it (samples are loaned and sent inside one call under
// the lock); and it is reachable only through one `Mutex` (the tap's and the
// housekeeping thread's `Arc<Mutex<Outs>>`), so one thread at a time touches any of
// that state and the mutex orders those touches (release on unlock, acquire on
// lock). iceoryx2 keeps no thread-local state for these ports and starts no
// threads. Moving the whole graph to another thread between locked sections is then
// what a `Mutex<T: Send>` does with any `T`. The `Census` of the other threads use
// their own nodes and never share this one.
#[allow(unsafe_code)]
unsafe impl Send for Outs {}

/// Reads the services' subscriber counts from shared memory, through a node of the
/// thread that holds it (the housekeeping thread and the request thread each have
/// their own; `ipc::Service` handles stay on the thread that made them).
struct Census {
    factories: Vec<PortFactory<ipc::Service, [u8], FrameWords>>,
}

impl Census {
    /// Opens every topic service through `node`, which must outlive the census.
    fn open(node: &Node<ipc::Service>, opts: &IpcOptions) -> Result<Census> {
        let factories =
            topics().map(|topic| topic_service(node, topic, opts)).collect::<Result<Vec<_>>>()?;
        Ok(Census { factories })
    }

    /// Re-reads every service's subscriber count: on every housekeeping tick (which
    /// notices subscribers that left, or connected without signalling) and whenever
    /// the wake-up event fires (a subscriber signals it once connected). A subscriber
    /// counted late sees the frames it missed as a gap (`prev`).
    fn recount(&self, watch: &[Watch]) {
        for (f, w) in self.factories.iter().zip(watch) {
            let n = f.dynamic_config().number_of_subscribers();
            w.subscribers.store(n, Ordering::Relaxed);
        }
    }
}

/// The services in [`Out`] order: all topics, then each topic.
fn topics() -> impl Iterator<Item = Option<Topic>> {
    std::iter::once(None).chain(Topic::ALL.into_iter().map(Some))
}

/// Opens (or creates) the service of `topic` (`None`: all), with the bridge's settings.
fn topic_service(
    node: &Node<ipc::Service>,
    topic: Option<Topic>,
    opts: &IpcOptions,
) -> Result<PortFactory<ipc::Service, [u8], FrameWords>> {
    let name = service(&service_name(&opts.instance, topic))?;
    node.service_builder(&name)
        .publish_subscribe::<[u8]>()
        .user_header::<FrameWords>()
        .subscriber_max_buffer_size(opts.buffer)
        .max_subscribers(opts.max_subscribers)
        // A restarted bridge may meet its dead predecessor before the cleanup.
        .max_publishers(2)
        .history_size(0)
        .enable_safe_overflow(true)
        .open_or_create()
        .map_err(|e| ipc_err("open or create a topic service", e))
}

fn open_outs(node: &Node<ipc::Service>, opts: &IpcOptions) -> Result<(Vec<Out>, Vec<Watch>)> {
    let mut outs = Vec::new();
    let mut watch = Vec::new();
    for topic in topics() {
        let factory = topic_service(node, topic, opts)?;
        let publisher = factory
            .publisher_builder()
            .initial_max_slice_len(opts.initial_frame_bytes)
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .create()
            .map_err(|e| ipc_err("create a publisher", e))?;
        let subscribers = factory.dynamic_config().number_of_subscribers();
        outs.push(Out { topic, publisher, prev: 0 });
        watch.push(Watch { subscribers: AtomicUsize::new(subscribers), sent: AtomicU64::new(0) });
    }
    Ok((outs, watch))
}

/// Sends one frame: its header into the sample's user header, its payload copied
/// once, straight into the loaned sample.
fn send(out: &mut Out, watch: &Watch, f: &Frame, payload: &[u8], counters: &Counters) {
    let sent =
        out.publisher.loan_slice_uninit(payload.len()).map_err(|e| format!("{e:?}")).and_then(
            |mut s| {
                *s.user_header_mut() = f.to_words();
                s.write_from_slice(payload).send().map_err(|e| format!("{e:?}"))
            },
        );
    match sent {
        Ok(_) => {
            // Called only under the outputs' lock: plain stores, no read-modify-write.
            bump(&counters.frames);
            bump(&watch.sent);
        }
        Err(why) => {
            // The subscribers see the gap in the next frame's `prev`.
            counters.send_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%why, topic = ?out.topic, "iceoryx2 could not take a frame");
        }
    }
}

/// What other processes may see of an event: a user's registration goes out with its
/// password hash emptied (shared memory is readable by any process of the user that
/// runs the bridge, and logins are verified inside Bourse, never by subscribers). The
/// LSN and everything else are unchanged. Other events are passed through as they are.
fn shareable(kind: u16, payload: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if kind != bourse_model::EventKind::UserRegistered.as_u16() {
        return Cow::Borrowed(payload);
    }
    let redacted = match bourse_model::Event::decode(payload) {
        Ok(bourse_model::Event::UserRegistered(mut u)) => {
            u.password_hash.clear();
            bourse_model::Event::UserRegistered(u).encode().ok()
        }
        _ => None,
    };
    // A registration that does not re-encode (not seen: the engine encoded it) goes
    // out empty rather than with its hash; the subscriber reports it as undecodable.
    Cow::Owned(redacted.unwrap_or_else(|| {
        tracing::warn!("a user registration could not be redacted; sent without a payload");
        Vec::new()
    }))
}

/// Adds one to a counter that only the holder of the outputs' lock writes (others
/// only read it), without a locked read-modify-write on the publishing path.
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Publishes each event into iceoryx2 on the bus's publishing thread.
struct IpcTap {
    outs: Arc<Mutex<Outs>>,
    watch: Arc<Vec<Watch>>,
    counters: Arc<Counters>,
}

impl Tap for IpcTap {
    fn published(&self, h: &Header, payload: &[u8]) {
        let kind = ((h.meta >> 32) & 0xff) as u16;
        let ih = ((h.meta >> 40) & 0xfff) as u16;
        let ah = ((h.meta >> 52) & 0xfff) as u16;
        let topic = bourse_model::EventKind::from_u16(kind).map(Topic::of);
        let payload = shareable(kind, payload);
        let mut g = self.outs.lock();
        bump(&self.counters.events);
        let Outs { outs, head, epoch, .. } = &mut *g;
        *head = h.lsn;
        for (o, w) in outs.iter_mut().zip(self.watch.iter()) {
            if o.topic.is_some() && o.topic != topic {
                continue;
            }
            if w.subscribers.load(Ordering::Relaxed) > 0 {
                let f = Frame {
                    typ: FRAME_EVENT,
                    kind,
                    ih,
                    ah,
                    lsn: h.lsn,
                    timestamp: h.timestamp,
                    prev: o.prev,
                    epoch: *epoch,
                    len: payload.len() as u32,
                };
                send(o, w, &f, &payload, &self.counters);
            }
            o.prev = h.lsn;
        }
    }
}

/// Heartbeats on idle services, subscriber counts, dead-node cleanup.
fn housekeeping(
    outs: &Mutex<Outs>,
    watch: &[Watch],
    opts: &IpcOptions,
    stop: &AtomicBool,
    counters: &Counters,
    ready: &std::sync::mpsc::SyncSender<Result<()>>,
) -> Result<()> {
    let setup = node().and_then(|n| Census::open(&n, opts).map(|c| (n, c)));
    let (_node, census) = match setup {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let tick = (opts.heartbeat / 2).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut last_cleanup = Instant::now();
    // Per service: the `sent` count last seen and when it last moved.
    let mut seen: Vec<(u64, Instant)> =
        watch.iter().map(|w| (w.sent.load(Ordering::Relaxed), Instant::now())).collect();
    let mut due = Vec::new();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        let now = Instant::now();
        due.clear();
        census.recount(watch);
        for (i, (w, seen)) in watch.iter().zip(seen.iter_mut()).enumerate() {
            let subscribers = w.subscribers.load(Ordering::Relaxed);
            let sent = w.sent.load(Ordering::Relaxed);
            if sent != seen.0 {
                *seen = (sent, now);
            } else if subscribers > 0 && now.duration_since(seen.1) >= opts.heartbeat {
                due.push(i);
            }
        }
        if !due.is_empty() {
            let mut g = outs.lock();
            let Outs { outs, head, epoch, .. } = &mut *g;
            for &i in &due {
                let o = &mut outs[i];
                let f = Frame {
                    typ: FRAME_HEARTBEAT,
                    kind: 0,
                    ih: 0,
                    ah: 0,
                    lsn: *head,
                    timestamp: now_ns(),
                    prev: o.prev,
                    epoch: *epoch,
                    len: 0,
                };
                send(o, &watch[i], &f, &[], counters);
                counters.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        }
        if last_cleanup.elapsed() >= opts.cleanup_interval {
            last_cleanup = Instant::now();
            match super::cleanup_dead_nodes() {
                Ok(n) => {
                    counters.dead_nodes_removed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "dead-node cleanup failed"),
            }
        }
    }
    Ok(())
}

/// Open commit streams kept between replay pages, so a client paging through the
/// WAL does not make the bridge seek from a segment's start for every page.
struct Streams {
    open: VecDeque<CommitStream>,
}

const STREAMS_KEPT: usize = 8;

impl Streams {
    fn take(&mut self, engine: &Engine, from: u64) -> bourse_engine::Result<CommitStream> {
        if let Some(i) = self.open.iter().position(|s| s.position() == from) {
            if let Some(s) = self.open.remove(i) {
                return Ok(s);
            }
        }
        engine.commits(from)
    }

    fn keep(&mut self, s: CommitStream) {
        if self.open.len() == STREAMS_KEPT {
            self.open.pop_front();
        }
        self.open.push_back(s);
    }
}

fn serve_loop(
    shared: &Arc<Shared>,
    watch: &[Watch],
    opts: &IpcOptions,
    stop: &AtomicBool,
    counters: &Counters,
    ready: &std::sync::mpsc::SyncSender<Result<()>>,
) -> Result<()> {
    let setup = node().and_then(|n| {
        let name = service(&requests_name(&opts.instance))?;
        let svc = n
            .service_builder(&name)
            .request_response::<[u8], [u8]>()
            .max_clients(opts.max_subscribers * 8)
            .max_servers(2)
            .max_active_requests_per_client(2)
            .max_response_buffer_size(2)
            .open_or_create()
            .map_err(|e| ipc_err("open or create the request service", e))?;
        let server = svc
            .server_builder()
            // A dead or stuck client must not block the bridge.
            .backpressure_strategy(BackpressureStrategy::DiscardData)
            .initial_max_slice_len(opts.page_bytes + 64 * 1024)
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .create()
            .map_err(|e| ipc_err("create the request server", e))?;
        let wake = n
            .service_builder(&service(&wake_name(&opts.instance))?)
            .event()
            .open_or_create()
            .map_err(|e| ipc_err("open or create the wake-up service", e))?;
        let listener =
            wake.listener_builder().create().map_err(|e| ipc_err("create a listener", e))?;
        let census = Census::open(&n, opts)?;
        Ok((n, svc, server, wake, listener, census))
    });
    let (_node, _svc, server, _wake, listener, census) = match setup {
        Ok(x) => {
            let _ = ready.send(Ok(()));
            x
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let server: Server<ipc::Service, [u8], (), [u8], ()> = server;
    let mut streams = Streams { open: VecDeque::new() };
    let mut out = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let active = match server.receive() {
            Ok(Some(a)) => a,
            Ok(None) => {
                // Sleeps until a client signals a request (clients re-send after
                // 500 ms, so a lost signal only delays); wakes to check `stop`.
                if let Err(e) = listener.timed_wait(|_| {}, Duration::from_millis(50)) {
                    tracing::warn!(error = ?e, "waiting for requests failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                // A subscriber that connects signals too: count it now, so its frames
                // start at once rather than at the next housekeeping tick.
                census.recount(watch);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = ?e, "receiving an iceoryx2 request failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match Request::decode(active.payload()) {
            Ok(req) => answer(shared, opts, &req, &mut streams, &mut out, counters),
            Err(why) => frame::error_response(&mut out, why),
        }
        frame::set_tag(&mut out, frame::tag_of(active.payload()));
        let sent = active
            .loan_slice_uninit(out.len())
            .map_err(|e| format!("{e:?}"))
            .and_then(|r| r.write_from_slice(&out).send().map_err(|e| format!("{e:?}")));
        if let Err(why) = sent {
            tracing::warn!(%why, "an iceoryx2 response could not be sent");
        }
    }
    Ok(())
}

fn answer(
    shared: &Arc<Shared>,
    opts: &IpcOptions,
    req: &Request,
    streams: &mut Streams,
    out: &mut Vec<u8>,
    counters: &Counters,
) {
    let Some(engine) = shared.engine.clone() else {
        frame::error_response(out, "this bus has no engine: no replay and no durable cursors");
        return;
    };
    match req {
        Request::Replay { from, to, topics, max_bytes } => {
            let max = (*max_bytes as usize).clamp(4096, opts.page_bytes);
            if let Err(e) = replay_page(&engine, *from, *to, *topics, max, streams, out, counters) {
                frame::error_response(out, &e.to_string());
            }
        }
        Request::Open { name, start } => {
            let start = if *start == 0 { Start::Live } else { Start::Lsn(*start) };
            match shared.open_cursor(name, start) {
                Ok(acked) => {
                    frame::begin_response(out);
                    frame::finish_response(out, 0, acked, engine.applied_lsn());
                }
                Err(e) => frame::error_response(out, &e.to_string()),
            }
        }
        Request::Ack { name, lsn, flush } => match shared.ack_cursor(name, *lsn, *flush) {
            Ok(acked) => {
                frame::begin_response(out);
                frame::finish_response(out, 0, acked, engine.applied_lsn());
            }
            Err(e) => frame::error_response(out, &e.to_string()),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn replay_page(
    engine: &Engine,
    from: u64,
    to: u64,
    topics: u8,
    max: usize,
    streams: &mut Streams,
    out: &mut Vec<u8>,
    counters: &Counters,
) -> bourse_engine::Result<()> {
    let from = from.max(1);
    let head = engine.applied_lsn();
    frame::begin_response(out);
    if from > head || from > to {
        frame::finish_response(out, 0, from, head);
        return Ok(());
    }
    let _pin = engine.pin_wal(from);
    let first = engine.first_retained_lsn();
    if from < first {
        frame::gone_response(out, first, head);
        return Ok(());
    }
    let mut stream = match streams.take(engine, from) {
        Ok(s) => s,
        Err(bourse_engine::Error::NotRetained { first, .. }) if from < first => {
            frame::gone_response(out, first, head);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut count = 0u32;
    let mut next = from;
    while out.len() < max {
        let Some(rec) = stream.next_raw()? else { break };
        if rec.lsn > to {
            // Read one too far: this stream cannot be kept at `next`.
            frame::finish_response(out, count, next, head);
            counters.replayed.fetch_add(count as u64, Ordering::Relaxed);
            return Ok(());
        }
        next = rec.lsn + 1;
        let wanted = topics == 0
            || bourse_model::EventKind::from_u16(rec.kind)
                .is_some_and(|k| topics & frame::topic_bit(Topic::of(k)) != 0);
        if wanted {
            let payload = shareable(rec.kind, rec.payload);
            frame::push_record(out, rec.lsn, rec.timestamp, rec.kind, &payload);
            count += 1;
        }
    }
    next = next.max(stream.position());
    frame::finish_response(out, count, next, head);
    counters.replayed.fetch_add(count as u64, Ordering::Relaxed);
    streams.keep(stream);
    Ok(())
}
