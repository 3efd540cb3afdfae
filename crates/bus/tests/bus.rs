#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The bus: ordering and gap signalling (P8), policies, filters, replay-then-live
//! against a racing writer, durable cursors across restarts, delayed batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse_bus::{
    Bus, BusOptions, DelayedSubscriber, Error, Filter, Message, OnLag, Policy, Publisher,
    SubscribeOptions, Subscriber, SubscriberState, Topic,
};
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::{mixed_kind, sample};
use bourse_model::{Event, EventKind};
use parking_lot::Mutex;

/// A payload whose bytes and length follow from its LSN, so a torn read shows.
fn payload(lsn: u64) -> Vec<u8> {
    let len = 1 + (lsn * 37 % 300) as usize;
    (0..len).map(|i| (lsn as usize * 31 + i) as u8).collect()
}

/// What a subscriber saw, checked against P8: LSNs strictly increase by one, except
/// across an explicit `Lagged { from, to }` that starts exactly at the next LSN.
#[derive(Default, Debug)]
struct Checker {
    next: Option<u64>,
    events: u64,
    lagged: u64,
    violations: Vec<String>,
}

impl Checker {
    fn see(&mut self, m: &Message<'_>) {
        match m {
            Message::Event(d) => {
                if let Some(n) = self.next {
                    if d.lsn != n {
                        self.violations.push(format!("expected {n}, got {}", d.lsn));
                    }
                }
                if d.payload != payload(d.lsn).as_slice() {
                    self.violations.push(format!("payload of {} is torn", d.lsn));
                }
                self.next = Some(d.lsn + 1);
                self.events += 1;
            }
            Message::Lagged { from, to } => {
                if self.next.is_some_and(|n| n != *from) || to < from {
                    self.violations.push(format!("bad Lagged {from}..={to} at {:?}", self.next));
                }
                self.lagged += to - from + 1;
                self.next = Some(to + 1);
            }
            Message::Heartbeat { .. } => {}
        }
    }
}

fn detached(ring_bytes: usize, canary: bool) -> (Bus, Publisher) {
    Bus::detached(BusOptions { ring_bytes, canary_silent_drop: canary, ..BusOptions::default() })
        .unwrap()
}

/// Publishes `n` events from a thread while `subs` read; returns each one's checker.
fn race(
    bus: &Bus,
    publisher: Publisher,
    n: u64,
    subs: Vec<Subscriber>,
    slow: bool,
) -> Vec<Checker> {
    race_batches(bus, publisher, n, 1, subs, slow)
}

/// [`race`], publishing `batch` events per call (`publish_raw_batch` when above 1).
fn race_batches(
    bus: &Bus,
    publisher: Publisher,
    n: u64,
    batch: u64,
    subs: Vec<Subscriber>,
    slow: bool,
) -> Vec<Checker> {
    let _ = bus;
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut c = Checker::default();
                let mut k = 0u64;
                loop {
                    match s.next(Duration::from_millis(5)) {
                        Ok(Some(m)) => c.see(&m),
                        Ok(None) => {
                            if done.load(Ordering::Acquire) && c.next == Some(n + 1) {
                                break;
                            }
                        }
                        Err(e) => {
                            c.violations.push(format!("error {e}"));
                            break;
                        }
                    }
                    k += 1;
                    if slow && i == 0 && k.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    if c.next == Some(n + 1) && done.load(Ordering::Acquire) {
                        break;
                    }
                }
                c
            })
        })
        .collect();
    let mut lsn = 1;
    while lsn <= n {
        if batch == 1 {
            publisher.publish_raw(lsn, lsn as i64, EventKind::Extension, &payload(lsn)).unwrap();
            lsn += 1;
        } else {
            let last = (lsn + batch - 1).min(n);
            let payloads: Vec<Vec<u8>> = (lsn..=last).map(payload).collect();
            // The checker reads timestamps only through the payload; one per batch.
            publisher.publish_raw_batch(lsn, 0, EventKind::Extension, &payloads).unwrap();
            lsn = last + 1;
        }
        if lsn % 1000 < batch.max(1) {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Release);
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

#[test]
fn subscribers_see_every_lsn_in_order_or_an_explicit_gap() {
    let (bus, p) = detached(8192, false);
    let subs = (0..4).map(|_| bus.subscribe(SubscribeOptions::live()).unwrap()).collect();
    let checks = race(&bus, p, 50_000, subs, true);
    for c in &checks {
        assert!(c.violations.is_empty(), "{:?}", &c.violations[..c.violations.len().min(5)]);
        assert_eq!(c.events + c.lagged, 50_000, "{c:?}");
    }
    // The slow one was lapped on an 8 KiB ring, and was told.
    assert!(checks[0].lagged > 0, "the slow subscriber never lagged: {:?}", checks[0]);
}

#[test]
fn canary_a_silent_drop_on_a_full_ring_is_caught() {
    let (bus, p) = detached(8192, true);
    let subs = vec![bus.subscribe(SubscribeOptions::live()).unwrap()];
    let checks = race(&bus, p, 50_000, subs, true);
    assert!(
        !checks[0].violations.is_empty(),
        "a subscriber skipped events without Lagged and the checker did not notice: {:?}",
        checks[0]
    );
}

#[test]
fn block_policy_holds_the_publisher_and_loses_nothing() {
    let (bus, p) = detached(8192, false);
    let policy = Policy::Block { budget: Duration::from_secs(5) };
    let subs = vec![bus.subscribe(SubscribeOptions::live().policy(policy)).unwrap()];
    let checks = race(&bus, p, 20_000, subs, true);
    assert!(checks[0].violations.is_empty(), "{:?}", checks[0].violations);
    assert_eq!((checks[0].events, checks[0].lagged), (20_000, 0));
    assert!(bus.stats().blocked_publishes > 0, "the slow subscriber never held the publisher");
}

#[test]
fn batches_reach_every_subscriber_in_order_or_as_an_explicit_gap() {
    // A batch of 64 is larger than the 8 KiB ring: subscribers are lapped inside it.
    let (bus, p) = detached(8192, false);
    let subs = (0..3).map(|_| bus.subscribe(SubscribeOptions::live()).unwrap()).collect();
    let checks = race_batches(&bus, p, 50_000, 64, subs, true);
    for c in &checks {
        assert!(c.violations.is_empty(), "{:?}", &c.violations[..c.violations.len().min(5)]);
        assert_eq!(c.events + c.lagged, 50_000, "{c:?}");
    }
    assert_eq!(bus.stats().published, 50_000);
}

#[test]
fn block_policy_holds_a_batch_larger_than_the_ring_and_loses_nothing() {
    // Each batch of 256 is several laps of the ring: the publisher must show the
    // subscriber the part it wrote before waiting for it, or it waits out the budget.
    let (bus, p) = detached(8192, false);
    let policy = Policy::Block { budget: Duration::from_secs(5) };
    let subs = vec![bus.subscribe(SubscribeOptions::live().policy(policy)).unwrap()];
    let t = Instant::now();
    let checks = race_batches(&bus, p, 20_000, 256, subs, true);
    assert!(checks[0].violations.is_empty(), "{:?}", checks[0].violations);
    assert_eq!((checks[0].events, checks[0].lagged), (20_000, 0));
    assert!(bus.stats().blocked_publishes > 0, "the slow subscriber never held the publisher");
    assert!(t.elapsed() < Duration::from_secs(5), "the publisher waited out a budget");
}

#[test]
fn a_batch_stops_at_its_first_bad_event_and_keeps_the_ones_before() {
    let (bus, p) = detached(8192, false);
    let mut s = bus.subscribe(SubscribeOptions::live()).unwrap();
    p.publish_raw_batch(1, 0, EventKind::Extension, &[payload(1), payload(2)]).unwrap();
    assert!(matches!(
        p.publish_raw_batch(4, 0, EventKind::Extension, &[payload(4)]),
        Err(Error::OutOfOrder { lsn: 4, last: 2 })
    ));
    let batch = [payload(3), vec![0; 4096], payload(5)];
    assert!(matches!(
        p.publish_raw_batch(3, 0, EventKind::Extension, &batch),
        Err(Error::TooLarge { .. })
    ));
    let events = [sample(EventKind::Extension, 1)];
    assert!(matches!(p.publish_batch(4, 0, &events, &[b"a", b"b"]), Err(Error::BadOption { .. })));
    let mut c = Checker::default();
    while let Some(m) = s.try_next().unwrap() {
        c.see(&m);
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!((c.events, c.next), (3, Some(4)), "1 and 2, then 3 of the refused batch");
    assert_eq!(bus.stats().published, 3);
}

#[test]
fn block_policy_past_its_budget_lags_explicitly() {
    let (bus, p) = detached(8192, false);
    let policy = Policy::Block { budget: Duration::from_micros(50) };
    let mut s = bus.subscribe(SubscribeOptions::live().policy(policy)).unwrap();
    for lsn in 1..=5000 {
        p.publish_raw(lsn, 0, EventKind::Extension, &payload(lsn)).unwrap();
    }
    let mut c = Checker::default();
    while c.next != Some(5001) {
        let m = s.try_next().unwrap().expect("caught up early");
        c.see(&m);
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert!(c.lagged > 0);
}

#[test]
fn disconnect_policy_ends_a_lapped_subscription() {
    let (bus, p) = detached(8192, false);
    let mut s = bus.subscribe(SubscribeOptions::live().policy(Policy::Disconnect)).unwrap();
    for lsn in 1..=5000 {
        p.publish_raw(lsn, 0, EventKind::Extension, &payload(lsn)).unwrap();
    }
    let err = loop {
        match s.try_next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a lapped subscriber was not disconnected"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Disconnected { at: 1 }), "{err}");
    assert!(matches!(s.try_next(), Err(Error::Disconnected { .. })));
    let info = bus.subscribers();
    assert_eq!(info[0].state, SubscriberState::Disconnected);
}

#[test]
fn publishing_out_of_order_or_oversized_is_refused() {
    let (_bus, p) = detached(8192, false);
    p.publish_raw(5, 0, EventKind::Extension, b"x").unwrap();
    assert!(matches!(
        p.publish_raw(7, 0, EventKind::Extension, b"x"),
        Err(Error::OutOfOrder { lsn: 7, last: 5 })
    ));
    assert!(matches!(
        p.publish_raw(6, 0, EventKind::Extension, &vec![0; 4096]),
        Err(Error::TooLarge { .. })
    ));
    p.publish_raw(6, 0, EventKind::Extension, b"y").unwrap();
}

#[test]
fn filters_select_by_topic_instrument_and_account() {
    let (bus, p) = detached(1 << 20, false);
    let trades = SubscribeOptions::live().topics(&[Topic::Trades]);
    let mut t = bus.subscribe(trades).unwrap();
    let events: Vec<Event> = (0..2000).map(|i| sample(mixed_kind(i), i)).collect();
    let target = events.iter().find_map(|e| e.instrument()).unwrap().as_str().to_owned();
    let acct = events
        .iter()
        .filter(|e| Topic::of(e.kind()) == Topic::Orders)
        .find_map(|e| e.account())
        .unwrap()
        .to_owned();
    let mut by_ins =
        bus.subscribe(SubscribeOptions::live().filter(Filter::all().instrument(&target))).unwrap();
    let mut by_acct = bus
        .subscribe(
            SubscribeOptions::live().filter(Filter::all().topic(Topic::Orders).account(&acct)),
        )
        .unwrap();
    for (i, e) in events.iter().enumerate() {
        p.publish(i as u64 + 1, 0, e, &e.encode().unwrap()).unwrap();
    }
    let drain = |s: &mut Subscriber| {
        let mut v = Vec::new();
        let mut last = 0;
        while let Some(m) = s.try_next().unwrap() {
            if let Message::Event(d) = m {
                assert!(d.lsn > last);
                last = d.lsn;
                v.push(d.event().unwrap());
            }
        }
        (v, s.position())
    };
    let want =
        |f: &dyn Fn(&Event) -> bool| events.iter().filter(|e| f(e)).cloned().collect::<Vec<_>>();
    let (got, pos) = drain(&mut t);
    assert_eq!(got, want(&|e| e.kind() == EventKind::TradeExecuted));
    assert_eq!(pos, 2001, "filtered-out events still advance the position");
    let (got, _) = drain(&mut by_ins);
    assert_eq!(got, want(&|e| e.instrument().is_some_and(|i| i.as_str() == target)));
    assert!(!got.is_empty());
    let (got, _) = drain(&mut by_acct);
    assert_eq!(
        got,
        want(&|e| Topic::of(e.kind()) == Topic::Orders && e.account() == Some(acct.as_str()))
    );
    assert!(!got.is_empty());
}

#[test]
fn an_idle_subscriber_gets_heartbeats_with_its_position() {
    let opts = BusOptions { heartbeat: Duration::from_millis(30), ..BusOptions::default() };
    let (bus, p) = Bus::detached(opts).unwrap();
    let mut s = bus.subscribe(SubscribeOptions::live().topics(&[Topic::Trades])).unwrap();
    p.publish_raw(1, 0, EventKind::Tick, b"t").unwrap();
    let t0 = Instant::now();
    let m = s.next(Duration::from_secs(5)).unwrap();
    assert!(matches!(m, Some(Message::Heartbeat { lsn: 1 })), "{m:?}");
    assert!(t0.elapsed() >= Duration::from_millis(20));
}

#[test]
fn delayed_subscribers_get_batches_by_count_or_time() {
    let (bus, p) = detached(1 << 20, false);
    let s = bus.subscribe(SubscribeOptions::live()).unwrap();
    let mut d = DelayedSubscriber::new(s, Duration::from_millis(50), 100);
    for i in 1..=250u64 {
        let e = sample(EventKind::Tick, i);
        p.publish(i, 0, &e, &e.encode().unwrap()).unwrap();
    }
    let b1 = d.next_batch(Duration::from_secs(1)).unwrap().unwrap();
    let b2 = d.next_batch(Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!((b1.events.len(), b2.events.len()), (100, 100));
    let t0 = Instant::now();
    let b3 = d.next_batch(Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!(b3.events.len(), 50);
    assert_eq!(b3.position, 250);
    assert!(
        t0.elapsed() >= Duration::from_millis(40),
        "the partial batch came before its interval"
    );
    let lsns: Vec<u64> = [b1, b2, b3].iter().flat_map(|b| b.events.iter().map(|e| e.0)).collect();
    assert_eq!(lsns, (1..=250).collect::<Vec<_>>());
    assert!(d.next_batch(Duration::from_millis(20)).unwrap().is_none());
}

// ---- with an engine ----

fn engine_opts() -> EngineOptions {
    let mut o = EngineOptions {
        checkpoint_interval: Duration::from_millis(20),
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // No retention of its own: only the bus's pins hold the WAL.
        wal_retain_bytes: 0,
        ..EngineOptions::default()
    };
    o.wal.record_bytes_max = 4096;
    o.wal.segment_bytes = 256 << 10;
    o
}

fn small_bus() -> BusOptions {
    BusOptions {
        ring_bytes: 64 << 10,
        ack_flush_interval: Duration::from_millis(10),
        ..BusOptions::default()
    }
}

/// Submits `n` mixed events in batches of 1–8 from a thread, recording what each LSN
/// carries.
fn writer(
    engine: Arc<Engine>,
    n: u64,
    log: Arc<Mutex<HashMap<u64, Event>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while i < n {
            let k = (1 + i % 8).min(n - i);
            let batch: Vec<Event> = (i..i + k).map(|j| sample(mixed_kind(j), j)).collect();
            let r = engine.submit(&batch, Durability::Buffered).unwrap();
            let mut l = log.lock();
            for (j, e) in batch.into_iter().enumerate() {
                l.insert(r.first.0 + j as u64, e);
            }
            i += k;
        }
    })
}

/// Reads until `last`, checking every LSN arrives once, in order, with the right event.
fn read_all(s: &mut Subscriber, from: u64, last: u64, log: &Mutex<HashMap<u64, Event>>) -> u64 {
    let mut next = from;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next <= last {
        assert!(Instant::now() < deadline, "stuck at {next}");
        match s.next(Duration::from_millis(100)).unwrap() {
            Some(Message::Event(d)) => {
                assert_eq!(d.lsn, next, "gap or duplicate");
                let e = d.event().unwrap();
                // The writer records after submit returns; wait for it.
                loop {
                    if let Some(want) = log.lock().get(&d.lsn) {
                        assert_eq!(&e, want, "LSN {} carries the wrong event", d.lsn);
                        break;
                    }
                    std::thread::yield_now();
                }
                next += 1;
            }
            Some(Message::Lagged { from, to }) => panic!("unexpected Lagged {from}..={to}"),
            Some(Message::Heartbeat { .. }) | None => {}
        }
    }
    next
}

#[test]
fn replay_then_live_has_no_gap_and_no_duplicate_while_the_writer_races() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), engine_opts()).unwrap());
    let log = Arc::new(Mutex::new(HashMap::new()));
    // History from before the bus existed: only in the WAL.
    writer(engine.clone(), 3000, log.clone()).join().unwrap();
    let bus = Bus::attach(engine.clone(), small_bus()).unwrap();
    let total = 30_000u64;
    let w = writer(engine.clone(), total - 3000, log.clone());
    let mut readers = Vec::new();
    for k in 0..4u64 {
        let from = 1 + k * 700;
        let mut s = bus.subscribe(SubscribeOptions::from_lsn(from).on_lag(OnLag::Replay)).unwrap();
        let log = log.clone();
        readers.push(std::thread::spawn(move || read_all(&mut s, from, total, &log)));
        std::thread::sleep(Duration::from_millis(5));
    }
    w.join().unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap(), total + 1);
    }
}

#[test]
fn a_lapped_subscriber_with_replay_fallback_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), engine_opts()).unwrap());
    let bus = Bus::attach(engine.clone(), small_bus()).unwrap();
    let log = Arc::new(Mutex::new(HashMap::new()));
    let mut s = bus.subscribe(SubscribeOptions::live().on_lag(OnLag::Replay)).unwrap();
    // 20 000 events through a 64 KiB ring before the subscriber reads a thing.
    writer(engine.clone(), 20_000, log.clone()).join().unwrap();
    assert_eq!(read_all(&mut s, 1, 20_000, &log), 20_001);
    // A Signal subscriber in the same position is told what it missed instead.
    let mut t = bus.subscribe(SubscribeOptions::live()).unwrap();
    writer(engine.clone(), 20_000, log.clone()).join().unwrap();
    let mut c_next = 20_001;
    let mut lagged = 0;
    while c_next <= 40_000 {
        match t.try_next().unwrap().unwrap() {
            Message::Event(d) => {
                assert_eq!(d.lsn, c_next);
                c_next += 1;
            }
            Message::Lagged { from, to } => {
                assert_eq!(from, c_next);
                lagged += to - from + 1;
                c_next = to + 1;
            }
            Message::Heartbeat { .. } => {}
        }
    }
    assert!(lagged > 0);
}

#[test]
fn durable_cursors_resume_after_the_last_ack_across_restarts_and_hold_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(HashMap::new()));
    {
        let engine = Arc::new(Engine::open(dir.path(), engine_opts()).unwrap());
        let bus = Bus::attach(engine.clone(), small_bus()).unwrap();
        let mut s = bus.durable("gateway", SubscribeOptions::from_lsn(1)).unwrap();
        assert!(matches!(
            bus.durable("gateway", SubscribeOptions::live()),
            Err(Error::CursorInUse { .. })
        ));
        assert!(matches!(s.ack(1), Err(Error::AckAhead { .. })));
        writer(engine.clone(), 5000, log.clone()).join().unwrap();
        read_all(&mut s, 1, 1000, &log);
        s.ack(700).unwrap();
        s.flush_acks().unwrap();
        // More events than the WAL would keep without the pin.
        writer(engine.clone(), 20_000, log.clone()).join().unwrap();
        engine.checkpoint().unwrap();
        assert_eq!(engine.first_retained_lsn(), 1, "the WAL was cut below the cursor");
        read_all(&mut s, 1001, 15_000, &log);
        s.ack(15_000).unwrap();
        s.flush_acks().unwrap();
        engine.checkpoint().unwrap();
        let first = engine.first_retained_lsn();
        assert!(first > 1 && first <= 15_001, "the WAL starts at {first}");
        drop(s);
        drop(bus);
        // The engine is dropped without close: like a crash of the process.
    }
    let floor = bourse_bus::cursor_floor(dir.path()).unwrap();
    assert_eq!(floor, Some(15_001));
    let opts = EngineOptions { wal_hold_at_open: floor, ..engine_opts() };
    let engine = Arc::new(Engine::open(dir.path(), opts).unwrap());
    // Maintenance runs before the bus attaches; the hold keeps the cursor's events.
    std::thread::sleep(Duration::from_millis(100));
    engine.checkpoint().unwrap();
    assert!(engine.first_retained_lsn() <= 15_001);
    let bus = Bus::attach(engine.clone(), small_bus()).unwrap();
    assert_eq!(bus.cursors_list(), vec![("gateway".to_owned(), 15_000, false)]);
    let mut s = bus.durable("gateway", SubscribeOptions::live()).unwrap();
    assert_eq!(s.position(), 15_001);
    read_all(&mut s, 15_001, 25_000, &log);
    let info = bus.subscribers();
    assert_eq!(info.len(), 1);
    assert!(info[0].durable);
    assert_eq!(info[0].name.as_deref(), Some("gateway"));
    // An ack past the journal (as after losing Buffered events to power loss) is
    // reported, not silently accepted.
    drop(s);
    bus.reset_cursor("gateway", 1_000_000).unwrap();
    assert!(matches!(
        bus.durable("gateway", SubscribeOptions::live()),
        Err(Error::CursorAhead { acked: 1_000_000, journal_end: 25_000, .. })
    ));
}

#[test]
fn a_cursor_too_far_behind_stops_holding_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), engine_opts()).unwrap());
    let opts = BusOptions { cursor_lag_max: 1000, ..small_bus() };
    let bus = Bus::attach(engine.clone(), opts).unwrap();
    let s = bus.durable("slow", SubscribeOptions::from_lsn(1)).unwrap();
    drop(s);
    let log = Arc::new(Mutex::new(HashMap::new()));
    writer(engine.clone(), 20_000, log.clone()).join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus.cursors_list()[0].2 {
        assert!(Instant::now() < deadline, "the cursor was never marked as fallen behind");
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.checkpoint().unwrap();
    let first = engine.first_retained_lsn();
    assert!(first > 1, "the WAL still holds everything");
    // Resuming says what is gone, then continues with what the WAL has.
    let mut s = bus.durable("slow", SubscribeOptions::live()).unwrap();
    match s.next(Duration::from_secs(1)).unwrap() {
        Some(Message::Lagged { from: 1, to }) => assert_eq!(to, first - 1),
        m => panic!("expected Lagged, got {m:?}"),
    }
    read_all(&mut s, first, 20_000, &log);
}

#[test]
fn attach_refuses_a_ring_too_small_for_the_largest_record() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), engine_opts()).unwrap());
    let err = Bus::attach(engine, BusOptions { ring_bytes: 8192, ..BusOptions::default() });
    assert!(matches!(err, Err(Error::BadOption { what: "ring_bytes", .. })));
}
