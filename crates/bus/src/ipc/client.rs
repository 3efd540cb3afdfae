//! The subscribing side, for another process.

use std::time::{Duration, Instant};

use bourse_model::{Event, EventKind};
use iceoryx2::port::client::Client;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::sample::Sample;

use super::frame::{self, Frame, FrameWords, Reply, Request, FRAME_EVENT, RESPONSE_HEADER};
use super::{
    check_instance, ipc_err, node, requests_name, service, service_name, wake_name, Backoff,
};
use crate::filter::{Filter, Topic};
use crate::{Delivery, Error, Message, OnLag, Result};

/// Where an [`IpcSubscriber`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpcStart {
    /// With the next event published.
    Live,
    /// At this LSN: the past is fetched from the bridge's WAL, then live follows
    /// with no gap and no duplicate.
    Lsn(u64),
    /// Right after the last acknowledgement of this durable cursor (kept by the
    /// bridge's bus, holding its WAL); a new cursor starts live.
    Cursor(String),
}

/// How to subscribe from another process.
#[derive(Debug, Clone)]
pub struct IpcSubscribeOptions {
    /// The bridge's instance ([`super::IpcOptions::instance`]).
    pub instance: String,
    /// Which events. A filter naming exactly one topic reads that topic's service;
    /// any other reads `all` and filters here.
    pub filter: Filter,
    /// Where to start.
    pub start: IpcStart,
    /// What to do about a gap (iceoryx2 dropped frames of a full queue, or the
    /// bridge restarted): fetch it from the bridge (`Replay`) or report
    /// [`Message::Lagged`] (`Signal`).
    pub on_lag: OnLag,
    /// How long [`IpcSubscriber::next`] spins before it sleeps (1 µs to 1 ms).
    pub spin: Duration,
    /// How long a request to the bridge may take before it fails.
    pub request_timeout: Duration,
    /// The replay page size asked for.
    pub page_bytes: u32,
    /// Acknowledgements are sent at most this often ([`IpcSubscriber::flush_acks`]
    /// sends at once).
    pub ack_interval: Duration,
    /// The subscriber queue in frames (at most the bridge's `buffer`; `None`: that).
    pub buffer: Option<usize>,
    /// CANARY for the tests: ignore `prev`, so an overflowed queue becomes a silent
    /// gap. Never set it.
    #[doc(hidden)]
    pub canary_ignore_prev: bool,
}

impl IpcSubscribeOptions {
    /// Everything, live, from the bridge `instance`, filling gaps by replay.
    pub fn new(instance: &str) -> IpcSubscribeOptions {
        IpcSubscribeOptions {
            instance: instance.to_owned(),
            filter: Filter::all(),
            start: IpcStart::Live,
            on_lag: OnLag::Replay,
            spin: Duration::from_micros(100),
            request_timeout: Duration::from_secs(10),
            page_bytes: 1 << 20,
            ack_interval: Duration::from_millis(100),
            buffer: None,
            canary_ignore_prev: false,
        }
    }

    /// Only these topics.
    pub fn topics(mut self, topics: &[Topic]) -> IpcSubscribeOptions {
        for t in topics {
            self.filter = self.filter.topic(*t);
        }
        self
    }

    /// This filter.
    pub fn filter(mut self, f: Filter) -> IpcSubscribeOptions {
        self.filter = f;
        self
    }

    /// This start.
    pub fn start(mut self, s: IpcStart) -> IpcSubscribeOptions {
        self.start = s;
        self
    }

    /// This reaction to gaps.
    pub fn on_lag(mut self, o: OnLag) -> IpcSubscribeOptions {
        self.on_lag = o;
        self
    }

    /// This spin time.
    pub fn spin(mut self, d: Duration) -> IpcSubscribeOptions {
        self.spin = d;
        self
    }
}

/// What `step` found; turned into a [`Message`] borrowing the subscriber.
enum Ready {
    Held { lsn: u64, timestamp: i64, kind: u16 },
    Page { lsn: u64, timestamp: i64, kind: u16, at: usize, len: usize },
    Lagged(u64, u64),
    Heartbeat(u64),
}

/// A subscriber in another process than the bridge: reads the frames in place in
/// shared memory. Create it on the thread that reads it (iceoryx2 ports are not
/// `Send`).
pub struct IpcSubscriber {
    instance: String,
    filter: Filter,
    on_lag: OnLag,
    spin: Duration,
    request_timeout: Duration,
    page_bytes: u32,
    ack_interval: Duration,
    canary_ignore_prev: bool,
    // Ports before the node: fields drop in order.
    sub: Subscriber<ipc::Service, [u8], FrameWords>,
    client: Client<ipc::Service, [u8], (), [u8], ()>,
    notifier: Notifier<ipc::Service>,
    _node: Node<ipc::Service>,
    /// Every LSN up to this one was delivered or filtered out (`None`: live, before
    /// the first frame).
    last: Option<u64>,
    held: Option<Sample<ipc::Service, [u8], FrameWords>>,
    held_delivered: bool,
    page: Vec<u8>,
    page_pos: usize,
    /// When the page is drained, every LSN up to this one is covered.
    page_covered: u64,
    /// A range still to fetch from the bridge (inclusive; `u64::MAX`: up to its head).
    gap: Option<(u64, u64)>,
    lagged: Option<(u64, u64)>,
    cursor: Option<String>,
    ack_pending: u64,
    ack_sent: u64,
    ack_at: Instant,
    req: Vec<u8>,
    resp: Vec<u8>,
    tag: u64,
    stale_replies: u64,
    epoch: u64,
    restarts: u64,
    replayed: u64,
}

impl std::fmt::Debug for IpcSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcSubscriber")
            .field("instance", &self.instance)
            .field("last", &self.last)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl IpcSubscriber {
    /// Connects to the bridge's services. Fails when no bridge of that instance has
    /// ever run on this machine, or (start from a cursor) the bridge does not answer.
    pub fn connect(opts: IpcSubscribeOptions) -> Result<IpcSubscriber> {
        check_instance(&opts.instance)?;
        let node = node()?;
        let svc_name = service_name(&opts.instance, opts.filter.single_topic());
        let factory = node
            .service_builder(&service(&svc_name)?)
            .publish_subscribe::<[u8]>()
            .user_header::<FrameWords>()
            .open()
            .map_err(|e| match e {
                iceoryx2::service::builder::publish_subscribe::PublishSubscribeOpenError::IncompatibleTypes => {
                    ipc_err("open the topic service (its bridge speaks another frame version)", e)
                }
                _ => ipc_err("open the topic service (is a bridge running?)", e),
            })?;
        let mut sb = factory.subscriber_builder();
        if let Some(b) = opts.buffer {
            sb = sb.buffer_size(b);
        }
        let sub = sb.create().map_err(|e| ipc_err("create a subscriber", e))?;
        let rr = node
            .service_builder(&service(&requests_name(&opts.instance))?)
            .request_response::<[u8], [u8]>()
            .open()
            .map_err(|e| ipc_err("open the request service (is a bridge running?)", e))?;
        let client = rr
            .client_builder()
            // A dead bridge must not block us: the request is re-sent on timeout.
            .backpressure_strategy(BackpressureStrategy::DiscardData)
            .initial_max_slice_len(256)
            .allocation_strategy(AllocationStrategy::PowerOfTwo)
            .create()
            .map_err(|e| ipc_err("create a request client", e))?;
        let notifier = node
            .service_builder(&service(&wake_name(&opts.instance))?)
            .event()
            .open()
            .map_err(|e| ipc_err("open the wake-up service (is a bridge running?)", e))?
            .notifier_builder()
            .create()
            .map_err(|e| ipc_err("create a notifier", e))?;
        // Tells the bridge it has a new subscriber, so it sends frames at once rather
        // than from its next recount (best effort: the recount finds us anyway).
        let _ = notifier.notify();
        let mut s = IpcSubscriber {
            instance: opts.instance,
            filter: opts.filter,
            on_lag: opts.on_lag,
            spin: opts.spin.clamp(Duration::from_micros(1), Duration::from_millis(1)),
            request_timeout: opts.request_timeout,
            page_bytes: opts.page_bytes.max(4096),
            ack_interval: opts.ack_interval,
            canary_ignore_prev: opts.canary_ignore_prev,
            sub,
            client,
            notifier,
            _node: node,
            last: None,
            held: None,
            held_delivered: false,
            page: Vec::new(),
            page_pos: 0,
            page_covered: 0,
            gap: None,
            lagged: None,
            cursor: None,
            ack_pending: 0,
            ack_sent: 0,
            ack_at: Instant::now(),
            req: Vec::new(),
            resp: Vec::new(),
            tag: first_tag(),
            stale_replies: 0,
            epoch: 0,
            restarts: 0,
            replayed: 0,
        };
        match opts.start {
            IpcStart::Live => {}
            IpcStart::Lsn(n) => {
                let n = n.max(1);
                s.last = Some(n - 1);
                s.gap = Some((n, u64::MAX));
            }
            IpcStart::Cursor(name) => {
                crate::cursor::check_name(&name)?;
                let reply = s.request(&Request::Open { name: name.clone(), start: 0 })?;
                let Reply::Ok { next: acked, .. } = reply else {
                    return Err(Error::Ipc { op: "open cursor", why: format!("{reply:?}") });
                };
                s.last = Some(acked);
                s.gap = Some((acked + 1, u64::MAX));
                s.ack_pending = acked;
                s.ack_sent = acked;
                s.cursor = Some(name);
            }
        }
        Ok(s)
    }

    /// The next message, waiting up to `timeout`; `None` when nothing came.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Message<'_>>> {
        // A frame that is already there costs no clock read; the wait starts at the
        // first miss.
        let r = match self.step()? {
            Some(r) => r,
            None => {
                let mut backoff = Backoff::new(self.spin, timeout);
                loop {
                    if !backoff.wait() {
                        return Ok(None);
                    }
                    if let Some(r) = self.step()? {
                        break r;
                    }
                }
            }
        };
        Ok(Some(self.message(r)))
    }

    /// The next message if one is ready.
    pub fn try_next(&mut self) -> Result<Option<Message<'_>>> {
        match self.step()? {
            Some(r) => Ok(Some(self.message(r))),
            None => Ok(None),
        }
    }

    /// Every LSN up to this one was delivered or filtered out (0 before the first).
    pub fn position(&self) -> u64 {
        self.last.unwrap_or(0)
    }

    /// How many times the bridge was seen to restart.
    pub fn bridge_restarts(&self) -> u64 {
        self.restarts
    }

    /// Responses dropped because they answered another request: one that this
    /// client gave up waiting for, or one sent by a client that died and whose
    /// iceoryx2 port this client took over.
    pub fn stale_replies(&self) -> u64 {
        self.stale_replies
    }

    /// Events received as replay pages rather than live frames.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Acknowledges every event up to `lsn` on this subscriber's durable cursor; sent
    /// to the bridge at most every `ack_interval`, and at once by
    /// [`IpcSubscriber::flush_acks`].
    pub fn ack(&mut self, lsn: u64) -> Result<()> {
        if self.cursor.is_none() {
            return Err(Error::NotDurable);
        }
        let delivered = self.position();
        if lsn > delivered {
            return Err(Error::AckAhead { lsn, delivered });
        }
        self.ack_pending = self.ack_pending.max(lsn);
        if self.ack_pending > self.ack_sent && self.ack_at.elapsed() >= self.ack_interval {
            self.send_ack(false)?;
        }
        Ok(())
    }

    /// Sends the acknowledged position and waits until the bridge has it on disk.
    pub fn flush_acks(&mut self) -> Result<()> {
        if self.cursor.is_none() {
            return Err(Error::NotDurable);
        }
        self.send_ack(true)
    }

    fn send_ack(&mut self, flush: bool) -> Result<()> {
        let Some(name) = self.cursor.clone() else { return Err(Error::NotDurable) };
        let lsn = self.ack_pending;
        match self.request(&Request::Ack { name, lsn, flush })? {
            Reply::Ok { .. } => {
                self.ack_sent = lsn;
                self.ack_at = Instant::now();
                Ok(())
            }
            other => Err(Error::Ipc { op: "acknowledge", why: format!("{other:?}") }),
        }
    }

    fn message(&self, r: Ready) -> Message<'_> {
        match r {
            Ready::Held { lsn, timestamp, kind } => {
                let payload = self.held.as_ref().map_or(&[][..], |s| s.payload());
                Message::Event(Delivery {
                    lsn,
                    timestamp,
                    kind: EventKind::from_u16(kind),
                    payload,
                })
            }
            Ready::Page { lsn, timestamp, kind, at, len } => Message::Event(Delivery {
                lsn,
                timestamp,
                kind: EventKind::from_u16(kind),
                payload: &self.page[at..at + len],
            }),
            Ready::Lagged(from, to) => Message::Lagged { from, to },
            Ready::Heartbeat(lsn) => Message::Heartbeat { lsn },
        }
    }

    fn accepts(&self, kind: u16, hashes: Option<(u16, u16)>, payload: &[u8]) -> bool {
        let Some(k) = EventKind::from_u16(kind) else { return false };
        if !self.filter.accepts_topic(Topic::of(k)) {
            return false;
        }
        if self.filter.topics_only() {
            return true;
        }
        if let Some((ih, ah)) = hashes {
            if self.filter.prefilter(kind as u8, ih, ah) == Some(false) {
                return false;
            }
        }
        Event::decode(payload).is_ok_and(|e| self.filter.accepts(&e))
    }

    /// One move of the state machine: a message to hand out, or `None` when nothing
    /// is ready.
    fn step(&mut self) -> Result<Option<Ready>> {
        if self.held_delivered {
            self.held = None;
            self.held_delivered = false;
        }
        loop {
            if let Some((from, to)) = self.lagged.take() {
                return Ok(Some(Ready::Lagged(from, to)));
            }
            // 1. What is left of a replay page.
            while self.page_pos < self.page.len() {
                let rec = frame::read_record(&self.page, self.page_pos)
                    .map_err(|why| Error::Ipc { op: "read a replay page", why: why.into() })?;
                self.page_pos = rec.at + rec.len;
                if self.last.is_some_and(|l| rec.lsn <= l) {
                    continue;
                }
                self.last = Some(rec.lsn);
                if self.accepts(rec.kind, None, &self.page[rec.at..rec.at + rec.len]) {
                    self.replayed += 1;
                    return Ok(Some(Ready::Page {
                        lsn: rec.lsn,
                        timestamp: rec.timestamp,
                        kind: rec.kind,
                        at: rec.at,
                        len: rec.len,
                    }));
                }
            }
            if self.page_covered > self.last.unwrap_or(0) {
                self.last = Some(self.page_covered);
            }
            self.page_covered = 0;
            // 2. A range still to fetch.
            if let Some((from, to)) = self.gap {
                self.fetch(from, to)?;
                continue;
            }
            // 3. The live frame that waited for the gap, or a new one.
            if self.held.is_none() {
                match self.sub.receive().map_err(|e| ipc_err("receive", e))? {
                    Some(s) => self.held = Some(s),
                    None => return Ok(None),
                }
            }
            if let Some(r) = self.take_held()? {
                return Ok(Some(r));
            }
        }
    }

    /// Looks at the held live frame: delivers it, drops it (a duplicate or filtered
    /// out), or opens a gap before it (and keeps holding it).
    fn take_held(&mut self) -> Result<Option<Ready>> {
        let Some(sample) = &self.held else { return Ok(None) };
        let f = match Frame::from_words(sample.user_header(), sample.payload().len()) {
            Ok(f) => f,
            Err(why) => {
                self.held = None;
                return Err(Error::Ipc { op: "read a frame", why: why.into() });
            }
        };
        if f.epoch != self.epoch {
            if self.epoch != 0 {
                self.restarts += 1;
            }
            self.epoch = f.epoch;
        }
        let last = *self.last.get_or_insert(f.prev);
        if f.typ == FRAME_EVENT && f.lsn <= last {
            self.held = None;
            return Ok(None);
        }
        if f.prev > last && !self.canary_ignore_prev {
            match self.on_lag {
                OnLag::Replay => self.gap = Some((last + 1, f.prev)),
                OnLag::Signal => {
                    self.lagged = Some((last + 1, f.prev));
                    self.last = Some(f.prev);
                }
            }
            return Ok(None);
        }
        if f.typ != FRAME_EVENT {
            let l = last.max(f.lsn);
            self.last = Some(l);
            self.held = None;
            return Ok(Some(Ready::Heartbeat(l)));
        }
        self.last = Some(f.lsn);
        if self.accepts(f.kind, Some((f.ih, f.ah)), sample.payload()) {
            self.held_delivered = true;
            return Ok(Some(Ready::Held { lsn: f.lsn, timestamp: f.timestamp, kind: f.kind }));
        }
        self.held = None;
        Ok(None)
    }

    /// Fetches the next page of the gap `from..=to` into `page`.
    fn fetch(&mut self, from: u64, to: u64) -> Result<()> {
        let topics = self.filter.topic_bits();
        let req = Request::Replay { from, to, topics, max_bytes: self.page_bytes };
        match self.request(&req)? {
            Reply::Ok { next, head, .. } => {
                std::mem::swap(&mut self.page, &mut self.resp);
                self.page_pos = RESPONSE_HEADER;
                self.page_covered = next.saturating_sub(1).min(to);
                let done = if to == u64::MAX { next > head } else { next > to };
                if done {
                    self.gap = None;
                } else if next == from {
                    // Committed but not yet visible on the bridge: ask again shortly.
                    self.gap = Some((next, to));
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    self.gap = Some((next, to));
                }
                Ok(())
            }
            Reply::Gone { first, .. } => {
                let missed_to = first.saturating_sub(1).min(to);
                self.lagged = Some((from, missed_to));
                self.last = Some(missed_to);
                self.gap = if first <= to { Some((first, to)) } else { None };
                Ok(())
            }
            Reply::Refused(why) => Err(Error::Ipc { op: "replay", why }),
        }
    }

    /// Sends a request and waits for its answer (in `resp`), re-sending when the
    /// bridge changed or did not answer.
    fn request(&mut self, req: &Request) -> Result<Reply> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            // A new tag for every send: only the answer to this one is taken.
            self.tag = self.tag.wrapping_add(1);
            let tag = self.tag;
            req.encode(tag, &mut self.req);
            let pending = self
                .client
                .loan_slice_uninit(self.req.len())
                .map_err(|e| ipc_err("loan a request", e))?
                .write_from_slice(&self.req)
                .send()
                .map_err(|e| ipc_err("send a request", e))?;
            if let Err(e) = self.notifier.notify() {
                tracing::debug!(error = ?e, "the request wake-up was not delivered");
            }
            let resend_in = deadline.saturating_duration_since(Instant::now());
            let mut backoff =
                Backoff::new(Duration::from_micros(50), resend_in.min(Duration::from_millis(500)));
            while backoff.wait() {
                if let Some(r) = pending.receive().map_err(|e| ipc_err("receive a response", e))? {
                    if frame::tag_of(r.payload()) != tag {
                        self.stale_replies += 1;
                        tracing::debug!(
                            tag,
                            got = frame::tag_of(r.payload()),
                            "dropped a response to another request"
                        );
                        continue;
                    }
                    self.resp.clear();
                    self.resp.extend_from_slice(r.payload());
                    return frame::read_response(&self.resp)
                        .map_err(|why| Error::Ipc { op: "read a response", why: why.into() });
                }
            }
            if Instant::now() >= deadline {
                let why = format!(
                    "no answer from the bridge of instance {:?} within {:?}",
                    self.instance, self.request_timeout
                );
                return Err(Error::Ipc { op: "request", why });
            }
        }
    }
}

/// Where a client's tags start: random, so a new client never expects the tag of a
/// response sent to the dead client whose port it reuses.
fn first_tag() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::hash::RandomState::new().hash_one((std::process::id(), now))
}

impl Drop for IpcSubscriber {
    fn drop(&mut self) {
        if self.cursor.is_some() && self.ack_pending > self.ack_sent {
            if let Err(e) = self.send_ack(true) {
                tracing::warn!(error = %e, "the last acknowledgement could not be sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::ipc::frame::{begin_response, finish_response, set_tag, tag_of};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A stand-in bridge that answers every request twice: first with a reply
    /// carrying another tag (what a client that took a dead client's port can be
    /// handed), then with the real one.
    fn fake_bridge(instance: String, stop: Arc<AtomicBool>, up: std::sync::mpsc::Sender<()>) {
        let node = node().unwrap();
        let _topic = node
            .service_builder(&service(&service_name(&instance, None)).unwrap())
            .publish_subscribe::<[u8]>()
            .user_header::<FrameWords>()
            .open_or_create()
            .unwrap();
        let _wake = node
            .service_builder(&service(&wake_name(&instance)).unwrap())
            .event()
            .open_or_create()
            .unwrap();
        let rr = node
            .service_builder(&service(&requests_name(&instance)).unwrap())
            .request_response::<[u8], [u8]>()
            .open_or_create()
            .unwrap();
        let server = rr.server_builder().initial_max_slice_len(64).create().unwrap();
        up.send(()).unwrap();
        let mut out = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let Some(active) = server.receive().unwrap() else {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            };
            let tag = tag_of(active.payload());
            for (next, t) in [(999, tag.wrapping_add(7)), (5, tag)] {
                begin_response(&mut out);
                finish_response(&mut out, 0, next, 1000);
                set_tag(&mut out, t);
                active.loan_slice_uninit(out.len()).unwrap().write_from_slice(&out).send().unwrap();
            }
        }
    }

    /// A topic service of frame version 1 (its header inside the payload, no iceoryx2
    /// user header) is refused with an error that says so, not taken for a bridge
    /// that is not running and not read as garbage.
    #[test]
    fn a_bridge_of_the_first_frame_version_is_named_in_the_error() {
        let instance = format!("v1-{}", std::process::id());
        let node = node().unwrap();
        let _old = node
            .service_builder(&service(&service_name(&instance, None)).unwrap())
            .publish_subscribe::<[u8]>()
            .open_or_create()
            .unwrap();
        let e = IpcSubscriber::connect(IpcSubscribeOptions::new(&instance)).unwrap_err();
        assert!(e.to_string().contains("another frame version"), "{e}");
    }

    #[test]
    fn a_reply_with_another_tag_is_dropped() {
        let instance = format!("tag-{}", std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let bridge = {
            let (instance, stop) = (instance.clone(), stop.clone());
            std::thread::spawn(move || fake_bridge(instance, stop, tx))
        };
        rx.recv().unwrap();
        let opts = IpcSubscribeOptions::new(&instance).start(IpcStart::Cursor("c".into()));
        let mut s = IpcSubscriber::connect(opts).unwrap();
        assert_eq!(s.position(), 5, "the cursor came from the reply with the right tag");
        assert_eq!(s.stale_replies(), 1);
        s.ack(5).unwrap();
        s.flush_acks().unwrap();
        assert_eq!(s.stale_replies(), 2);
        drop(s);
        stop.store(true, Ordering::Release);
        bridge.join().unwrap();
    }
}
