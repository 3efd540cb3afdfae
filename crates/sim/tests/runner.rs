#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The runner answers requests from the journal, and after a crash it answers exactly
//! the requests whose answers were lost: the journal ends up holding every request's
//! answer once, in request order, equal to what a fresh exchange computes.

use std::sync::Arc;
use std::time::Duration;

use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_model::{
    Direction, Event, InstrumentId, Offset, OrderRequested, OrderStatus, PriceType, TimeCondition,
    Transfer, TransferKind, VolumeCondition,
};
use bourse_sim::runner::{SimOptions, SimRunner};
use bourse_sim::{Exchange, SimConfig};

fn deposit(user: &str) -> Event {
    Event::Transfer(Transfer {
        user_id: user.into(),
        kind: TransferKind::Deposit,
        currency: "CNY".into(),
        amount: 10_000_000.0,
        datetime: 1,
        error_id: 0,
        error_msg: String::new(),
    })
}

fn order(n: u64) -> Event {
    let user = ["a", "b", "c"][(n % 3) as usize];
    let buy = (n / 3).is_multiple_of(2);
    Event::OrderRequested(OrderRequested {
        user_id: user.into(),
        order_id: format!("o{n}"),
        instrument_id: InstrumentId::new("DCE.m2601").unwrap(),
        direction: if buy { Direction::Buy } else { Direction::Sell },
        offset: Offset::Open,
        volume: 1 + (n % 4) as i64,
        price_type: PriceType::Limit,
        limit_price: 2900.0 + ((n * 7) % 5) as f64 - 2.0,
        volume_condition: VolumeCondition::Any,
        time_condition: if n.is_multiple_of(5) { TimeCondition::Ioc } else { TimeCondition::Gfd },
        hedge_flag: Default::default(),
        datetime: 1_000 + n as i64,
    })
}

fn opts() -> EngineOptions {
    let mut o =
        EngineOptions { argon2_memory_kib: 8, argon2_iterations: 1, ..EngineOptions::default() };
    o.wal.segment_bytes = 4 << 20;
    o
}

/// Every event of the journal, in LSN order.
fn journal(engine: &Engine) -> Vec<Event> {
    let mut s = engine.commits(1).unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next_event().unwrap() {
        out.push(c.event);
    }
    out
}

/// The journal's requests, and what a fresh exchange answers to them, concatenated.
fn recompute(events: &[Event]) -> (Vec<Event>, Vec<Event>) {
    let mut ex = Exchange::new(SimConfig::default());
    let (mut requests, mut answers) = (Vec::new(), Vec::new());
    for e in events.iter().filter(|e| Exchange::is_request(e)) {
        requests.push(e.clone());
        answers.extend(ex.process(e));
    }
    (requests, answers)
}

fn sim_opts() -> SimOptions {
    SimOptions { snapshot_every: 7, ..SimOptions::default() }
}

#[test]
fn a_crash_between_requests_and_answers_is_recovered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Phase 1: a live runner answers requests.
    {
        let engine = Arc::new(Engine::open(dir.path(), opts()).unwrap());
        let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
        engine.submit(&[deposit("a"), deposit("b"), deposit("c")], Durability::Buffered).unwrap();
        let mut last = 0;
        for n in 0..60 {
            last = engine.submit(&[order(n)], Durability::Buffered).unwrap().last.0;
        }
        assert!(sim.wait_processed(last, Duration::from_secs(10)));
        sim.stop().unwrap();
        // Phase 2: requests arrive while no exchange runs (the crash window).
        for n in 60..90 {
            engine.submit(&[order(n)], Durability::Buffered).unwrap();
        }
        drop(engine);
    }
    // Phase 3: restart; recovery answers exactly the 30 unanswered requests.
    let engine = Arc::new(Engine::open(dir.path(), opts()).unwrap());
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
    let report = sim.recovery();
    // Phase 1's 63 requests ended with a snapshot when the runner stopped; recovery
    // replays only the 30 after it and answers each.
    assert!(bourse_sim::snapshot::path(dir.path()).exists());
    assert_eq!(report.requests, 30, "{report:?}");
    assert!(report.snapshot_lsn >= 63, "{report:?}");
    assert_eq!(report.answered_now, 30, "{report:?}");
    let mut last = 0;
    for n in 90..120 {
        last = engine.submit(&[order(n)], Durability::Buffered).unwrap().last.0;
    }
    assert!(sim.wait_processed(last, Duration::from_secs(10)));
    let events = journal(&engine);
    let (requests, answers) = recompute(&events);
    assert_eq!(requests.len(), 123);
    let journaled: Vec<Event> = events.into_iter().filter(|e| !Exchange::is_request(e)).collect();
    assert!(journaled.iter().any(|e| matches!(e, Event::TradeExecuted(_))), "the workload trades");
    assert_eq!(journaled.len(), answers.len(), "every answer journaled exactly once");
    assert!(journaled == answers, "the journal's answers equal a fresh exchange's");
    // The store answers queries from what the exchange journaled.
    let open: Vec<_> = engine.orders("a", OrderFilter::Open).collect::<Result<_, _>>().unwrap();
    let live = sim.with_exchange(|x| {
        (0..120).filter(|n| x.live_order("a", &format!("o{n}")).is_some()).count()
    });
    assert_eq!(open.len(), live);
    assert!(open.iter().all(|r| r.order.status == OrderStatus::Alive));
    let acc = engine.accounts("a").unwrap();
    assert_eq!(acc.first(), sim.with_exchange(|x| x.account("a").cloned()).as_ref());
    // A second restart finds nothing to answer.
    sim.stop().unwrap();
    drop(engine);
    let engine = Arc::new(Engine::open(dir.path(), opts()).unwrap());
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
    assert_eq!(sim.recovery().answered_now, 0);
    assert_eq!(sim.processed(), last);
    // Without snapshots, the journal alone rebuilds the same exchange.
    sim.stop().unwrap();
    let from_snapshot = bourse_sim::snapshot::read(dir.path()).unwrap().unwrap().1;
    std::fs::remove_file(bourse_sim::snapshot::path(dir.path())).unwrap();
    let no_snapshots = SimOptions { snapshot_every: 0, ..SimOptions::default() };
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), no_snapshots).unwrap();
    assert_eq!(sim.recovery().snapshot_lsn, 0);
    assert_eq!(sim.recovery().answered_now, 0);
    for a in ["a", "b", "c"] {
        let rebuilt = sim.with_exchange(|x| x.account(a).cloned());
        assert_eq!(rebuilt.as_ref(), from_snapshot.account(a), "account {a}");
    }
    assert_eq!(sim.with_exchange(|x| x.live_orders()), from_snapshot.live_orders());
}

#[test]
fn a_damaged_snapshot_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), opts()).unwrap());
    {
        let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
        let r = engine.submit(&[deposit("a"), order(0), order(3)], Durability::Buffered).unwrap();
        assert!(sim.wait_processed(r.last.0, Duration::from_secs(10)));
        sim.stop().unwrap();
    }
    let path = bourse_sim::snapshot::path(dir.path());
    let good = std::fs::read(&path).unwrap();
    for at in [0, 9, 13, 30, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts())
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot") && err.contains("damaged"), "byte {at}: {err}");
    }
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    assert!(
        SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).is_err(),
        "a short file"
    );
    std::fs::write(&path, &good).unwrap();
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
    assert_eq!(sim.recovery().requests, 0);
    assert!(
        sim.with_exchange(|x| x.live_order("a", "o3").is_some()),
        "the snapshot holds the resting order"
    );
}

/// The runner ignores an order whose id its account used before, as the store does,
/// by asking the store: its exchange remembers no ids (they would grow with every
/// order of a long-running server, and with them every snapshot), live or recovered.
#[test]
fn repeated_order_ids_are_ignored_without_remembering_ids() {
    let dir = tempfile::tempdir().unwrap();
    let repeat = |n: u64| {
        // Same account and id as `order(n)`, another price and volume.
        let Event::OrderRequested(mut r) = order(n) else { unreachable!() };
        r.limit_price += 1.0;
        r.volume += 1;
        Event::OrderRequested(r)
    };
    let engine = Arc::new(Engine::open(dir.path(), opts()).unwrap());
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
    engine.submit(&[deposit("a"), deposit("b"), deposit("c")], Durability::Buffered).unwrap();
    let mut last = 0;
    for n in 0..30 {
        last = engine.submit(&[order(n)], Durability::Buffered).unwrap().last.0;
        if n % 4 == 3 {
            // A repeat of a live order and of one that has traded or ended.
            engine.submit(&[repeat(n)], Durability::Buffered).unwrap();
            last = engine.submit(&[repeat(n / 2)], Durability::Buffered).unwrap().last.0;
        }
    }
    assert!(sim.wait_processed(last, Duration::from_secs(10)));
    assert_eq!(sim.with_exchange(|x| x.remembered_order_ids()), 0);
    sim.stop().unwrap();
    // Repeats that arrive while no exchange runs are ignored by recovery too.
    for n in 30..40 {
        engine.submit(&[order(n)], Durability::Buffered).unwrap();
        engine.submit(&[repeat(n - 10)], Durability::Buffered).unwrap();
    }
    let snapshot = bourse_sim::snapshot::read(dir.path()).unwrap().unwrap().1;
    assert_eq!(snapshot.remembered_order_ids(), 0, "snapshots carry no ids");
    let sim = SimRunner::start(engine.clone(), SimConfig::default(), sim_opts()).unwrap();
    assert_eq!(sim.recovery().requests, 20);
    assert_eq!(sim.with_exchange(|x| x.remembered_order_ids()), 0);
    let events = journal(&engine);
    // A fresh exchange that remembers ids answers nothing to a repeat.
    let (requests, answers) = recompute(&events);
    assert_eq!(requests.len(), 3 + 30 + 14 + 20);
    let journaled: Vec<Event> = events.into_iter().filter(|e| !Exchange::is_request(e)).collect();
    assert!(journaled == answers, "the journal's answers equal a fresh exchange's");
}
