#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The iceoryx2 transport: ordering and gap signalling (P8) across processes,
//! replay-then-live, filters, durable cursors, and kill -9 of either side.
//!
//! The multi-process tests run this test binary again as the child
//! (`BOURSE_IPC_CHILD` names its role), so they need no helper binary.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse_bus::ipc::{IpcBridge, IpcOptions, IpcStart, IpcSubscribeOptions, IpcSubscriber};
use bourse_bus::{Bus, BusOptions, Filter, Message, OnLag, Topic};
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::{mixed_kind, sample};
use bourse_model::Event;

/// The event the writers put at `lsn` (one writer, one event per submit), so a
/// reader can check every payload it sees.
fn event_at(lsn: u64) -> Event {
    sample(mixed_kind(lsn), lsn)
}

fn instance(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

fn engine_opts() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.wal.segment_bytes = 4 << 20;
    o
}

fn open(dir: &Path) -> (Arc<Engine>, Bus) {
    let floor = bourse_bus::cursor_floor(dir).unwrap();
    let opts = EngineOptions { wal_hold_at_open: floor, ..engine_opts() };
    let engine = Arc::new(Engine::open(dir, opts).unwrap());
    let bus = Bus::attach(engine.clone(), BusOptions::default()).unwrap();
    (engine, bus)
}

fn bridge(bus: &Bus, instance: &str, buffer: usize) -> IpcBridge {
    let opts = IpcOptions {
        instance: instance.into(),
        buffer,
        heartbeat: Duration::from_millis(20),
        cleanup_interval: Duration::from_millis(200),
        ..IpcOptions::default()
    };
    IpcBridge::start(bus, opts).unwrap()
}

/// Writes `n` more events, one per submit, checking each lands where `event_at`
/// says; `pause` every 64 events lets slow readers keep up (or not).
fn write(engine: &Engine, n: u64, pause: Duration) -> u64 {
    let mut last = engine.applied_lsn();
    for i in 0..n {
        let lsn = last + 1;
        let r = engine.submit(&[event_at(lsn)], Durability::Buffered).unwrap();
        assert_eq!(r.first.0, lsn);
        last = lsn;
        if i % 64 == 63 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    last
}

/// P8 across processes: LSNs strictly increase; a skip only across an explicit
/// `Lagged` starting right after the last LSN seen; every payload is the one
/// written at its LSN.
#[derive(Default, Debug)]
struct Checker {
    last: u64,
    seen: BTreeSet<u64>,
    lagged: u64,
    violations: Vec<String>,
    contiguous: bool,
}

impl Checker {
    fn new(contiguous: bool) -> Checker {
        Checker { contiguous, ..Checker::default() }
    }

    fn see(&mut self, m: &Message<'_>) {
        match m {
            Message::Event(d) => {
                if d.lsn <= self.last {
                    self.violations.push(format!("{} after {}", d.lsn, self.last));
                }
                if self.contiguous && self.last != 0 && d.lsn != self.last + 1 {
                    self.violations.push(format!("silent gap: {} after {}", d.lsn, self.last));
                }
                match d.event() {
                    Ok(e) if e == event_at(d.lsn) => {}
                    _ => self.violations.push(format!("payload of {} is wrong", d.lsn)),
                }
                self.last = d.lsn;
                self.seen.insert(d.lsn);
            }
            Message::Lagged { from, to } => {
                if *from != self.last + 1 || to < from {
                    self.violations.push(format!("bad Lagged {from}..={to} after {}", self.last));
                }
                self.lagged += to - from + 1;
                self.last = *to;
            }
            Message::Heartbeat { lsn } => {
                if *lsn < self.last {
                    self.violations.push(format!("heartbeat {lsn} behind {}", self.last));
                }
                self.last = self.last.max(*lsn);
            }
        }
    }
}

/// Reads until position `until`, or panics after `limit`.
fn read_until(s: &mut IpcSubscriber, c: &mut Checker, until: u64, limit: Duration) {
    let t = Instant::now();
    while s.position() < until {
        assert!(t.elapsed() < limit, "stuck at {} of {until}: {c:?}", s.position());
        match s.next(Duration::from_millis(50)) {
            Ok(Some(m)) => c.see(&m),
            Ok(None) => {}
            // Only a request to a bridge that is not up yet (the caller restarts it).
            Err(bourse_bus::Error::Ipc { op: "request", .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn replay_then_live_across_the_transport_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("rtl");
    let _bridge = bridge(&bus, &inst, 1024);
    // History from before the subscriber exists.
    write(&engine, 3000, Duration::ZERO);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Acquire) {
                last = write(&engine, 256, Duration::from_micros(200));
            }
            last
        })
    };
    let mut s = IpcSubscriber::connect(
        IpcSubscribeOptions::new(&inst).start(IpcStart::Lsn(1)).on_lag(OnLag::Replay),
    )
    .unwrap();
    let mut c = Checker::new(true);
    read_until(&mut s, &mut c, 8000, Duration::from_secs(60));
    stop.store(true, Ordering::Release);
    let end = writer.join().unwrap();
    read_until(&mut s, &mut c, end, Duration::from_secs(30));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.seen.len() as u64, end, "every LSN exactly once");
    assert_eq!(c.lagged, 0);
    assert!(s.replayed() >= 3000, "the history came as replay: {}", s.replayed());
}

/// A slow reader on a 4-frame queue while 20 000 events are written as fast as
/// possible: the queue overflows many times. Returns what it saw, the LSN it
/// started after, the last LSN written and how many events came as replay.
fn overflow_run(
    engine: &Engine,
    inst: &str,
    on_lag: OnLag,
    canary: bool,
) -> (Checker, u64, u64, u64) {
    let mut opts = IpcSubscribeOptions::new(inst).on_lag(on_lag);
    opts.buffer = Some(4);
    opts.canary_ignore_prev = canary;
    let mut s = IpcSubscriber::connect(opts).unwrap();
    let mut c = Checker::new(on_lag == OnLag::Replay);
    // The subscriber's first frame fixes its start; wait for a heartbeat.
    while s.position() == 0 {
        if let Some(m) = s.next(Duration::from_millis(50)).unwrap() {
            c.see(&m);
        }
    }
    let start = s.position();
    let end = write(engine, 20_000, Duration::ZERO);
    let t = Instant::now();
    while s.position() < end && t.elapsed() < Duration::from_secs(60) {
        if let Some(m) = s.next(Duration::from_millis(50)).unwrap() {
            c.see(&m);
            if c.seen.len().is_multiple_of(16) {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
    }
    assert!(s.position() >= end, "stuck at {} of {end}: {c:?}", s.position());
    (c, start, end, s.replayed())
}

#[test]
fn a_full_queue_is_never_a_silent_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("ovf");
    let b = bridge(&bus, &inst, 8);
    // Something to stand on: a heartbeat then says where the stream is.
    write(&engine, 10, Duration::ZERO);
    for on_lag in [OnLag::Signal, OnLag::Replay] {
        let (c, start, end, replayed) = overflow_run(&engine, &inst, on_lag, false);
        assert!(c.violations.is_empty(), "{on_lag:?}: {:?}", c.violations);
        let covered = c.seen.len() as u64 + c.lagged;
        assert_eq!(covered, end - start, "{on_lag:?}: every LSN delivered or reported");
        match on_lag {
            OnLag::Signal => assert!(c.lagged > 0, "the queue overflowed: {c:?}"),
            OnLag::Replay => {
                assert_eq!(c.lagged, 0);
                assert!(replayed > 0, "gaps were fetched");
            }
        }
    }
    assert!(b.stats().frames > 0);
}

/// The canary: a subscriber that ignores `prev` turns the same overflow into a
/// silent gap, and the checks above catch it.
#[test]
fn canary_a_subscriber_that_ignores_prev_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("can");
    let _b = bridge(&bus, &inst, 8);
    write(&engine, 10, Duration::ZERO);
    let (c, start, end, _) = overflow_run(&engine, &inst, OnLag::Signal, true);
    assert_eq!(c.lagged, 0, "the canary never signals");
    let covered = c.seen.len() as u64 + c.lagged;
    assert!(covered < end - start, "the overflow went unreported: {covered} of {}", end - start);
}

#[test]
fn filters_pick_a_topic_service_or_filter_all() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("flt");
    let _b = bridge(&bus, &inst, 4096);
    let trades = IpcSubscribeOptions::new(&inst).topics(&[Topic::Trades]).start(IpcStart::Lsn(1));
    let mut t = IpcSubscriber::connect(trades).unwrap();
    let instr = event_at(1).instrument().map(|i| i.as_str().to_owned());
    let instr = instr.unwrap_or_else(|| "SHFE.cu2512".into());
    let f = Filter::all().topic(Topic::Market).topic(Topic::Orders).instrument(&instr);
    let mut m = IpcSubscriber::connect(
        IpcSubscribeOptions::new(&inst).filter(f.clone()).start(IpcStart::Lsn(1)),
    )
    .unwrap();
    let end = write(&engine, 3000, Duration::from_micros(100));
    for (s, filter) in [(&mut t, Filter::all().topic(Topic::Trades)), (&mut m, f)] {
        let mut got = Vec::new();
        let t0 = Instant::now();
        while s.position() < end {
            assert!(t0.elapsed() < Duration::from_secs(30));
            if let Some(Message::Event(d)) = s.next(Duration::from_millis(50)).unwrap() {
                got.push(d.lsn);
            }
        }
        let want: Vec<u64> = (1..=end).filter(|l| filter.accepts(&event_at(*l))).collect();
        assert!(!want.is_empty());
        assert_eq!(got, want);
    }
}

#[test]
fn a_durable_cursor_resumes_after_the_subscriber_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("cur");
    let _b = bridge(&bus, &inst, 1024);
    write(&engine, 500, Duration::ZERO);
    let opts = || IpcSubscribeOptions::new(&inst).start(IpcStart::Cursor("gw".into()));
    // A new cursor starts live.
    let mut s = IpcSubscriber::connect(opts()).unwrap();
    assert_eq!(s.position(), 500);
    write(&engine, 500, Duration::ZERO);
    let mut c = Checker::new(true);
    while s.position() < 800 {
        if let Some(m) = s.next(Duration::from_millis(50)).unwrap() {
            c.see(&m);
        }
    }
    assert!(matches!(s.ack(5000), Err(bourse_bus::Error::AckAhead { .. })));
    s.ack(700).unwrap();
    s.flush_acks().unwrap();
    drop(s);
    assert!(bus.cursors_list().contains(&("gw".to_owned(), 700, false)));
    let mut s = IpcSubscriber::connect(opts()).unwrap();
    let mut c = Checker::new(true);
    c.last = 700;
    read_until(&mut s, &mut c, 1000, Duration::from_secs(30));
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.seen.first(), Some(&701));
    assert_eq!(c.seen.len(), 300);
    let plain = IpcSubscriber::connect(IpcSubscribeOptions::new(&inst));
    assert!(matches!(plain.unwrap().ack(1), Err(bourse_bus::Error::NotDurable)));
}

/// Another process never sees a password hash: a registration reaches live and
/// replaying IPC subscribers with its hash emptied and everything else intact, while
/// in-process subscribers, inside the trust boundary, see the event as stored. (The
/// registration is the model's sample, submitted as an event: `register_user` would
/// spend seconds of argon2 in a debug build beside the kill -9 tests.)
#[test]
fn ipc_subscribers_never_see_a_password_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("pw");
    let _b = bridge(&bus, &inst, 1024);
    let users = || IpcSubscribeOptions::new(&inst).topics(&[Topic::Users]);
    let live = IpcSubscriber::connect(users()).unwrap();
    let mut inproc = bus
        .subscribe(bourse_bus::SubscribeOptions::live().filter(Filter::all().topic(Topic::Users)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    write(&engine, 10, Duration::ZERO);
    // The model's sample registration (its hash is a fixed argon2 string).
    let registration = sample(bourse_model::EventKind::UserRegistered, 7);
    let Event::UserRegistered(stored) = registration.clone() else { unreachable!() };
    assert!(!stored.password_hash.is_empty());
    let at = engine.submit(&[registration], Durability::Buffered).unwrap().first.0;
    write(&engine, 10, Duration::ZERO);
    let decode = |d: &bourse_bus::Delivery<'_>| match Event::decode(d.payload).unwrap() {
        Event::UserRegistered(u) => u,
        other => panic!("not a registration at {}: {other:?}", d.lsn),
    };
    let Some(Message::Event(d)) = inproc.next(Duration::from_secs(5)).unwrap() else {
        panic!("the in-process subscriber saw nothing")
    };
    assert_eq!(d.lsn, at);
    assert_eq!(decode(&d), stored);
    let replaying = IpcSubscriber::connect(users().start(IpcStart::Lsn(1))).unwrap();
    for mut s in [live, replaying] {
        let t0 = Instant::now();
        let u = loop {
            assert!(t0.elapsed() < Duration::from_secs(20), "no registration arrived");
            if let Some(Message::Event(d)) = s.next(Duration::from_millis(50)).unwrap() {
                assert_eq!(d.lsn, at);
                break decode(&d);
            }
        };
        assert_eq!(u.password_hash, "");
        assert_eq!(
            u,
            bourse_model::UserRegistered { password_hash: String::new(), ..stored.clone() }
        );
    }
}

/// A subscriber signals the bridge when it connects, so frames reach it at once, not
/// from the housekeeping thread's next recount (every 50 ms here): with a detached bus
/// there is no replay, so a late count would show up as `Lagged` before LSN 1.
#[test]
fn a_new_subscriber_is_counted_at_once() {
    let inst = instance("count");
    let (bus, publisher) = Bus::detached(BusOptions::default()).unwrap();
    let opts = IpcOptions {
        instance: inst.clone(),
        heartbeat: Duration::from_secs(10),
        ..IpcOptions::default()
    };
    let _bridge = IpcBridge::start(&bus, opts).unwrap();
    let mut s =
        IpcSubscriber::connect(IpcSubscribeOptions::new(&inst).on_lag(OnLag::Signal)).unwrap();
    std::thread::sleep(Duration::from_millis(15));
    for lsn in 1..=3 {
        publisher.publish_raw(lsn, 0, bourse_model::EventKind::Extension, b"x").unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match s.next(Duration::from_secs(5)).unwrap() {
            Some(Message::Event(d)) => seen.push(d.lsn),
            Some(Message::Lagged { from, to }) => panic!("missed {from}..={to}"),
            Some(_) => {}
            None => panic!("nothing after {seen:?}"),
        }
    }
    assert_eq!(seen, [1, 2, 3]);
}

/// The bridge's publishers are plain `ipc::Service` ports kept behind one lock and
/// moved between threads (the `unsafe impl Send` for its state): here four writer
/// threads commit concurrently, so each batch is published on whichever thread holds
/// the engine's publish turn, while the housekeeping thread sends heartbeats through
/// the same ports every few milliseconds. The subscriber in this process must see
/// LSNs 1..=end in order, each with the payload the journal has, and no gap.
#[test]
fn writers_on_many_threads_reach_an_ipc_subscriber_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, bus) = open(dir.path());
    let inst = instance("threads");
    let opts = IpcOptions {
        instance: inst.clone(),
        heartbeat: Duration::from_millis(4),
        ..IpcOptions::default()
    };
    let bridge = IpcBridge::start(&bus, opts).unwrap();
    let mut s = IpcSubscriber::connect(
        IpcSubscribeOptions::new(&inst).start(IpcStart::Lsn(1)).on_lag(OnLag::Replay),
    )
    .unwrap();
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..1500u64 {
                    let n = t * 1_000_000 + i;
                    let batch = [sample(mixed_kind(n), n), sample(mixed_kind(n + 1), n + 1)];
                    engine.submit(&batch[..1 + (i % 2) as usize], Durability::Buffered).unwrap();
                    if i % 100 == 99 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let t = Instant::now();
    let mut done = false;
    while !done || s.position() < engine.applied_lsn() {
        assert!(t.elapsed() < Duration::from_secs(120), "stuck at {}", s.position());
        match s.next(Duration::from_millis(20)).unwrap() {
            Some(Message::Event(d)) => got.push((d.lsn, d.payload.to_vec())),
            Some(Message::Lagged { from, to }) => panic!("Lagged {from}..={to} with Replay"),
            Some(Message::Heartbeat { .. }) | None => {}
        }
        done = done || writers.iter().all(|w| w.is_finished());
    }
    for w in writers {
        w.join().unwrap();
    }
    let end = engine.applied_lsn();
    assert_eq!(end, 4 * (750 + 750 * 2), "every submit committed");
    let lsns: Vec<u64> = got.iter().map(|(l, _)| *l).collect();
    assert_eq!(lsns, (1..=end).collect::<Vec<_>>(), "every LSN once, in order");
    let mut journal = engine.commits(1).unwrap();
    for (lsn, payload) in &got {
        let c = journal.next_raw().unwrap().unwrap();
        assert_eq!((c.lsn, c.payload), (*lsn, &payload[..]), "the payload the journal has");
    }
    assert!(bridge.stats().heartbeats > 0, "the housekeeping thread used the ports too");
}

#[test]
fn connecting_without_a_bridge_is_a_clear_error() {
    let e = IpcSubscriber::connect(IpcSubscribeOptions::new(&instance("none"))).unwrap_err();
    assert!(e.to_string().contains("is a bridge running"), "{e}");
    let e = IpcSubscriber::connect(IpcSubscribeOptions::new("bad/name")).unwrap_err();
    assert!(matches!(e, bourse_bus::Error::BadOption { .. }), "{e}");
}

// ---------------------------------------------------------------------------------
// Multi-process: the child roles.

const CHILD: &str = "BOURSE_IPC_CHILD";

fn spawn_child(role: &str, dir: &Path, inst: &str, out: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, role)
        .env("BOURSE_IPC_DIR", dir)
        .env("BOURSE_IPC_INSTANCE", inst)
        .env("BOURSE_IPC_OUT", out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Not a test on its own: the entry point of the child processes.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD) else { return };
    let dir = std::path::PathBuf::from(std::env::var("BOURSE_IPC_DIR").unwrap());
    let inst = std::env::var("BOURSE_IPC_INSTANCE").unwrap();
    let out = std::path::PathBuf::from(std::env::var("BOURSE_IPC_OUT").unwrap());
    match role.as_str() {
        "publisher" => child_publisher(&dir, &inst, &out),
        "subscriber" => child_subscriber(&inst, &out),
        other => panic!("unknown child role {other}"),
    }
}

/// Opens the engine, starts the bridge and writes until killed, recording in `out`
/// that it is up.
fn child_publisher(dir: &Path, inst: &str, out: &Path) {
    let (engine, bus) = open(dir);
    let _b = bridge(&bus, inst, 64);
    std::fs::write(out, format!("{}\n", engine.applied_lsn())).unwrap();
    loop {
        write(&engine, 64, Duration::from_micros(300));
    }
}

/// Reads with the durable cursor `kill` until LSN `BOURSE_IPC_END`, appending each
/// LSN to `out` before acknowledging it.
fn child_subscriber(inst: &str, out: &Path) {
    let end: u64 = std::env::var("BOURSE_IPC_END").unwrap().parse().unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out).unwrap();
    let opts = IpcSubscribeOptions::new(inst).start(IpcStart::Cursor("kill".into()));
    let mut s = IpcSubscriber::connect(opts).unwrap();
    // One write per line, so a kill never leaves half a line.
    f.write_all(format!("start {}\n", s.position()).as_bytes()).unwrap();
    if s.stale_replies() > 0 {
        // A reply meant for another request (a killed run's) was dropped.
        f.write_all(format!("stale {}\n", s.stale_replies()).as_bytes()).unwrap();
    }
    while s.position() < end {
        match s.next(Duration::from_millis(100)).unwrap() {
            Some(Message::Event(d)) => {
                assert_eq!(d.event().unwrap(), event_at(d.lsn), "payload of {}", d.lsn);
                let lsn = d.lsn;
                f.write_all(format!("{lsn}\n").as_bytes()).unwrap();
                s.ack(lsn).unwrap();
            }
            Some(Message::Lagged { from, to }) => panic!("a durable reader lagged {from}..={to}"),
            _ => {}
        }
    }
    s.flush_acks().unwrap();
    f.write_all(b"done\n").unwrap();
}

fn count_starts(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map_or(0, |s| s.lines().filter(|l| l.starts_with("start")).count())
}

fn wait_file(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() || std::fs::metadata(path).unwrap().len() == 0 {
        assert!(t.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_of_the_publisher_never_shows_a_torn_or_reordered_event() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let inst = instance("kpub");
    let mut c = Checker::new(true);
    let mut sub: Option<IpcSubscriber> = None;
    let mut rng_state = 0x9e37_79b9_u64;
    let mut kills = 0;
    for round in 0..4 {
        let up = dir.path().join(format!("up-{round}"));
        let mut child = spawn_child("publisher", dir.path(), &inst, &up);
        wait_file(&up, Duration::from_secs(30));
        let s = sub.get_or_insert_with(|| {
            let mut o = IpcSubscribeOptions::new(&inst).start(IpcStart::Lsn(1));
            // A gap found while the bridge is dead waits for the next one.
            o.request_timeout = Duration::from_millis(300);
            IpcSubscriber::connect(o).unwrap()
        });
        // Read while the child writes, then kill it at a pseudo-random moment.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let run = Duration::from_millis(200 + rng_state % 400);
        let t = Instant::now();
        while t.elapsed() < run {
            match s.next(Duration::from_millis(10)) {
                Ok(Some(m)) => c.see(&m),
                Ok(None) => {}
                // A slow bridge (the machine is shared with other tests): try again.
                Err(bourse_bus::Error::Ipc { op: "request", .. }) => {}
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // Drain what is already in shared memory; replays need the next bridge.
        loop {
            match s.try_next() {
                Ok(Some(m)) => c.see(&m),
                Ok(None) => break,
                // A gap to fetch: it waits for the next bridge.
                Err(bourse_bus::Error::Ipc { op: "request", .. }) => break,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(c.violations.is_empty(), "round {round}: {:?}", c.violations);
    }
    // A last publisher, to reach the journal's end and check nothing is missing.
    let up = dir.path().join("up-last");
    let mut child = spawn_child("publisher", dir.path(), &inst, &up);
    wait_file(&up, Duration::from_secs(30));
    let started_at: u64 = std::fs::read_to_string(&up).unwrap().trim().parse().unwrap();
    let s = sub.as_mut().unwrap();
    read_until(s, &mut c, started_at + 500, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.lagged, 0);
    assert_eq!(c.seen.len() as u64, c.last, "every LSN from 1 exactly once");
    // Frames (not replay pages) carry the incarnation: an incarnation killed while
    // the subscriber was replaying may go unseen, the first and the last may not.
    assert!(
        s.bridge_restarts() >= 1 && s.bridge_restarts() <= kills,
        "restarts seen: {}",
        s.bridge_restarts()
    );
    assert!(bourse_bus::ipc::cleanup_dead_nodes().is_ok());
}

#[test]
fn kill_9_of_a_subscriber_resumes_from_its_cursor_and_its_node_is_cleaned_up() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (engine, bus) = open(&data);
    let inst = instance("ksub");
    let b = bridge(&bus, &inst, 64);
    let end = 20_000u64;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) && engine.applied_lsn() < end {
                write(&engine, 64, Duration::from_micros(500));
            }
        })
    };
    let out = dir.path().join("seen");
    let mut kills = 0;
    let mut rng_state = 0x1234_5678_u64;
    // A run that panics must fail the test even when the kill below lands while it is
    // still on its way out (it did once: a refused acknowledgement went unnoticed).
    let stderr_of = |run: usize| dir.path().join(format!("stderr-{run}"));
    let check_run = |run: usize| {
        let text = std::fs::read_to_string(stderr_of(run)).unwrap_or_default();
        assert!(!text.contains("panicked"), "subscriber run {run} panicked:\n{text}");
    };
    loop {
        let run = kills;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD, "subscriber")
            .env("BOURSE_IPC_DIR", &data)
            .env("BOURSE_IPC_INSTANCE", &inst)
            .env("BOURSE_IPC_OUT", &out)
            .env("BOURSE_IPC_END", end.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr_of(run)).unwrap())
            .spawn()
            .unwrap();
        if kills < 4 {
            // Kill it only once it has started reading (printed its start).
            let t = Instant::now();
            while count_starts(&out) < kills + 1 && child.try_wait().unwrap().is_none() {
                assert!(t.elapsed() < Duration::from_secs(30), "the subscriber never started");
                std::thread::sleep(Duration::from_millis(5));
            }
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            std::thread::sleep(Duration::from_millis(150 + rng_state % 300));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                check_run(run);
                kills += 1;
                continue;
            }
        }
        let status = child.wait().unwrap();
        check_run(run);
        assert!(status.success(), "the subscriber failed: {status}");
        break;
    }
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    // Each run starts at or before the one after the last it acknowledged, goes up
    // by one, and together they cover 1..=end.
    let mut seen = BTreeSet::new();
    let mut runs = 0;
    let mut prev: Option<u64> = None;
    for line in std::io::BufReader::new(std::fs::File::open(&out).unwrap()).lines() {
        let line = line.unwrap();
        if let Some(pos) = line.strip_prefix("start ") {
            let pos: u64 = pos.parse().unwrap();
            // At-least-once: never past what the previous run recorded.
            assert!(pos <= seen.last().copied().unwrap_or(pos), "resumed at {pos}, after {seen:?}");
            runs += 1;
            prev = Some(pos);
            continue;
        }
        if let Some(n) = line.strip_prefix("stale ") {
            eprintln!("run {runs} dropped {n} replies to other requests before its start");
            continue;
        }
        if line == "done" {
            continue;
        }
        let lsn: u64 = line.parse().unwrap();
        if let Some(p) = prev {
            assert_eq!(lsn, p + 1, "run {runs}: {lsn} after {p}");
        }
        prev = Some(lsn);
        seen.insert(lsn);
    }
    assert_eq!(runs, kills + 1);
    assert!(kills >= 1, "no subscriber was killed");
    let first = *seen.first().unwrap();
    assert_eq!(seen.len() as u64, end - first + 1, "no gap from {first} to {end}");
    // The killed subscribers' nodes are gone (the bridge's periodic cleanup or this).
    let t = Instant::now();
    while bourse_bus::ipc::dead_nodes().unwrap() > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "dead nodes stay");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(b);
}
