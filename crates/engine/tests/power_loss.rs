#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Power loss through the simulated file system: the disk dies at a spread of points in
//! a workload that flushes, compacts, checkpoints and truncates the WAL; the machine
//! restarts with only what was synced (or a torn part of the rest); the engine reopens.
//! Every `Durable` acknowledgement must survive (P1), and the state must be an exact
//! prefix of the batches submitted, whole batches only (P2–P4), latest books included
//! (with book checkpoints written every two deltas). The kill -9 driver
//! cannot test this: a killed process loses nothing the OS holds.

use std::path::Path;
use std::time::Duration;

use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_fs::{CrashFate, SimFs};
use bourse_model::{Account, BookSnapshot, Event, InstrumentId, OrderRequested, Tick, Trade};

const ACCT: &str = "pl-acct";

fn opts() -> EngineOptions {
    let mut o = EngineOptions {
        memtable_bytes: 16 << 10,
        memtable_budget_bytes: 64 << 10,
        checkpoint_interval: Duration::from_millis(2),
        maintenance_threads: 1,
        wal_retain_bytes: 0,
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // Book checkpoints all the time, so crashes land among their writes and deletes.
        book_checkpoint_every: 2,
        ..EngineOptions::default()
    };
    o.wal.segment_bytes = 32 << 10;
    o
}

fn instrument(b: u64) -> InstrumentId {
    InstrumentId::new(format!("SIM.p{}", b % 3)).unwrap()
}

/// Batch `b`'s book event: every 31st a snapshot, else a delta; every fourth round of an
/// instrument's deltas is late by 1 to 3 rounds
/// ([`bourse_model::samples::late_book_event`]).
fn book_event(b: u64) -> Event {
    bourse_model::samples::late_book_event(instrument(b), b, 3, 31, 3)
}

/// The book the first `n` batches leave on instrument `k`.
fn expected_book(k: u64, n: u64) -> Option<BookSnapshot> {
    let events: Vec<(u64, Event)> = (0..n).map(|b| (b, book_event(b))).collect();
    bourse_model::samples::book_in_store_order(&events, &instrument(k))
}

fn batch(b: u64) -> Vec<Event> {
    let ins = instrument(b);
    vec![
        Event::OrderRequested(OrderRequested {
            user_id: ACCT.into(),
            order_id: format!("b{b}"),
            instrument_id: ins.clone(),
            volume: 1,
            limit_price: 10.0,
            datetime: b as i64,
            ..OrderRequested::default()
        }),
        Event::TradeExecuted(Trade {
            user_id: ACCT.into(),
            trade_id: format!("b{b}"),
            order_id: format!("b{b}"),
            instrument_id: ins.clone(),
            volume: 1,
            price: 10.0,
            trade_date_time: b as i64,
            ..Trade::default()
        }),
        Event::Tick(Tick {
            instrument_id: ins,
            datetime: b as i64,
            last_price: b as f64,
            ..Tick::default()
        }),
        Event::AccountUpdated(Account {
            user_id: ACCT.into(),
            currency: "CNY".into(),
            deposit: b as f64,
            ..Account::default()
        }),
        book_event(b),
    ]
}

/// Submits batches until the disk dies or `max` are in; returns how many batches were
/// acknowledged `Durable` at the latest (every batch up to it must survive).
fn workload(e: &Engine, max: u64) -> Option<u64> {
    let mut durable = None;
    for b in 0..max {
        let d = if b % 2 == 0 { Durability::Durable } else { Durability::Buffered };
        match e.submit(&batch(b), d) {
            Ok(_) if d == Durability::Durable => durable = Some(b),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    durable
}

fn check(fs: &SimFs, durable: Option<u64>) -> Result<u64, String> {
    let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {})
        .map_err(|e| format!("reopen: {e}"))?;
    let orders: Vec<String> = e
        .orders(ACCT, OrderFilter::All)
        .map(|o| o.map(|o| o.order.order_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let n = orders.len() as u64;
    let want: Vec<String> = (0..n).rev().map(|b| format!("b{b}")).collect();
    if orders != want {
        return Err(format!("orders are not a prefix: {orders:?}"));
    }
    let trades: Vec<String> = e
        .user_trades(ACCT)
        .map(|t| t.map(|t| t.trade_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if trades != want {
        return Err(format!("{n} orders but trades {trades:?}: a torn batch"));
    }
    let deposit = e.accounts(ACCT).map_err(|e| e.to_string())?.first().map(|a| a.deposit);
    if deposit != n.checked_sub(1).map(|b| b as f64) {
        return Err(format!("{n} batches but the account shows {deposit:?}"));
    }
    if let Some(d) = durable {
        if d >= n {
            return Err(format!("batch {d} was acknowledged Durable but only {n} survived"));
        }
    }
    for k in 0..3 {
        let book = e.latest_book(&instrument(k)).map(|b| (*b).clone());
        let want = expected_book(k, n);
        if book != want {
            return Err(format!("{n} batches, book of {k}: {book:?}, expected {want:?}"));
        }
    }
    // The store keeps working after recovery.
    e.submit(&batch(n), Durability::Durable).map_err(|e| format!("write after recovery: {e}"))?;
    Ok(n)
}

#[test]
fn power_loss_at_spread_out_points_keeps_durable_acks_and_a_prefix() {
    // How many file-system calls a clean run makes (background work makes it vary a
    // little from run to run; the crash points only need to spread over it).
    let fs = SimFs::new();
    {
        let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}).unwrap();
        workload(&e, 150);
    }
    let total = fs.ops().max(100);
    let mut survived = Vec::new();
    for seed in 0..40u64 {
        for fate in [CrashFate::LoseUnsynced, CrashFate::Torn { seed }] {
            let fs = SimFs::new();
            fs.crash_after(10 + seed * 7919 % total);
            let mut durable = None;
            if let Ok(e) = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}) {
                durable = workload(&e, 150);
            }
            fs.crash(fate);
            let n = check(&fs, durable).unwrap_or_else(|e| panic!("seed {seed}, {fate:?}: {e}"));
            survived.push(n);
        }
    }
    // The crash points really fell inside the workload: some runs kept a little, some
    // kept a lot.
    let (min, max) = (survived.iter().min().unwrap(), survived.iter().max().unwrap());
    assert!(*min < 20 && *max > 60, "batches kept ranged {min}..{max}");
}

/// A flush must never put into tables what the WAL could still lose: after power loss,
/// no partition may hold an LSN the WAL does not (its LSNs would be handed out again).
#[test]
fn flushes_and_checkpoints_never_get_ahead_of_the_durable_wal() {
    // One segment: no rotation syncs the WAL behind the test's back.
    let mut o = opts();
    o.wal.segment_bytes = 1 << 20;
    for fate in [CrashFate::LoseUnsynced, CrashFate::Torn { seed: 3 }] {
        let fs = SimFs::new();
        {
            let e =
                Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {}).unwrap();
            for b in 0..40 {
                e.submit(&batch(b), Durability::Buffered).unwrap();
            }
            // Flushes every partition and marks idle ones clean, with nothing synced by
            // the writers.
            e.checkpoint().unwrap();
            for b in 40..60 {
                e.submit(&batch(b), Durability::Buffered).unwrap();
            }
            // The power goes before the engine can sync anything on its way down.
            fs.crash_after(0);
        }
        fs.crash(fate);
        let e = Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {}).unwrap();
        let applied = e.applied_lsn();
        for p in e.stats().partitions {
            assert!(
                p.flushed_lsn <= applied,
                "{fate:?}: partition {} holds LSN {} but the WAL ends at {applied}",
                p.id,
                p.flushed_lsn
            );
        }
        drop(e);
        let n = check(&fs, None).unwrap_or_else(|e| panic!("{fate:?}: {e}"));
        assert!(n >= 40, "{fate:?}: the checkpointed batches are durable, kept {n}");
    }
}

/// With `sync_interval`, what `Buffered` submits wrote is durable once the interval has
/// passed, with no `Durable` submit, flush or close to sync it; without it, a power loss
/// takes it all (the control, so that the first half cannot pass by accident).
#[test]
fn the_sync_interval_makes_buffered_writes_durable() {
    for every in [Some(Duration::from_millis(10)), None] {
        let mut o = opts();
        // Nothing else syncs the WAL: no rotation, no flush, no checkpoint, and no new
        // partition created on disk (its flush gate syncs the WAL up to its first event).
        o.defer_partition_creation = true;
        o.wal.segment_bytes = 1 << 20;
        o.memtable_bytes = 4 << 20;
        o.memtable_budget_bytes = 16 << 20;
        o.checkpoint_interval = Duration::from_secs(3600);
        o.sync_interval = every;
        let fs = SimFs::new();
        {
            let e = Engine::open_with(fs.shared(), Path::new("/db"), o, &mut |_| {}).unwrap();
            let mut last = 0;
            for b in 0..40 {
                last = e.submit(&batch(b), Durability::Buffered).unwrap().last.0;
            }
            // Long enough for several intervals; the control waits a while only.
            let wait = Duration::from_millis(if every.is_some() { 10_000 } else { 200 });
            let start = std::time::Instant::now();
            while e.durable_lsn() < last && start.elapsed() < wait {
                std::thread::sleep(Duration::from_millis(5));
            }
            match every {
                Some(_) => assert!(e.durable_lsn() >= last, "not synced after 10 s"),
                None => assert!(e.durable_lsn() < last, "something else synced the WAL"),
            }
            // The power goes before the engine can sync anything on its way down.
            fs.crash_after(0);
        }
        fs.crash(CrashFate::LoseUnsynced);
        let n = check(&fs, None).unwrap_or_else(|e| panic!("{every:?}: {e}"));
        match every {
            Some(_) => assert_eq!(n, 40, "every batch was synced before the power went"),
            None => assert!(n < 40, "kept {n} batches that nothing synced"),
        }
    }
}

/// Every directory the engine makes (its data directory, each partition's) is synced
/// into its parent. Otherwise a power loss takes a new partition away with its tables,
/// however synced, and once a checkpoint has truncated the WAL below them nothing can
/// bring their events back.
#[test]
fn new_directories_survive_power_loss_after_the_wal_is_truncated() {
    let fs = SimFs::new();
    {
        let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}).unwrap();
        for b in 0..150 {
            e.submit(&batch(b), Durability::Durable).unwrap();
        }
        e.checkpoint().unwrap();
        assert!(e.first_retained_lsn() > 1, "the checkpoint truncated nothing");
        fs.crash_after(0);
    }
    fs.crash(CrashFate::LoseUnsynced);
    assert_eq!(check(&fs, Some(149)), Ok(150));
}

/// A new instrument's partition is made in memory by its first event; a checkpoint (or
/// a maintenance thread) then lists it, makes the WAL durable, and creates its tree. A
/// crash at any point of that first submit and the creation after it leaves an engine
/// that opens, with the tick if it was acknowledged, takes a second one and creates the
/// tree.
#[test]
fn a_crash_at_any_point_of_a_partition_creation_leaves_an_openable_engine() {
    let mut o = opts();
    o.checkpoint_interval = Duration::from_secs(3600);
    // Only the checkpoint below creates the partition, so the crash points are the same
    // calls in every run.
    o.defer_partition_creation = true;
    let id = InstrumentId::new("NEW.x").unwrap();
    let (mut acked_runs, mut cut_runs) = (0, 0);
    for at in 0..40u64 {
        for fate in [CrashFate::LoseUnsynced, CrashFate::KeepAll] {
            let fs = SimFs::new();
            let acked = {
                let e = Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {})
                    .unwrap();
                e.submit(&batch(0), Durability::Durable).unwrap();
                e.checkpoint().unwrap();
                fs.crash_after(at);
                let acked =
                    e.submit(&new_tick(1), Durability::Durable).is_ok() && !fs.has_crashed();
                let _ = e.checkpoint();
                fs.crash_after(0);
                acked
            };
            fs.crash(fate);
            if acked {
                acked_runs += 1
            } else {
                cut_runs += 1
            }
            let ctx = format!("crash after {at} ops, {fate:?}, acknowledged {acked}");
            let e = Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {})
                .unwrap_or_else(|err| panic!("{ctx}: reopen: {err}"));
            let kept = e.ticks(&id, i64::MIN, i64::MAX).count();
            assert!(kept <= 1 && (!acked || kept == 1), "{ctx}: {kept} ticks");
            e.submit(&new_tick(2), Durability::Durable)
                .unwrap_or_else(|err| panic!("{ctx}: {err}"));
            e.checkpoint().unwrap();
            drop(e);
            assert!(fs.contents(Path::new("/db/parts/instruments/NEW.x/CURRENT")).is_ok(), "{ctx}");
            let e = Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {})
                .unwrap_or_else(|err| panic!("{ctx}: second reopen: {err}"));
            assert_eq!(e.ticks(&id, i64::MIN, i64::MAX).count(), kept + 1, "{ctx}");
        }
    }
    assert!(acked_runs > 0 && cut_runs > 0, "the crash points missed the creation");
}

/// A tick of the instrument `NEW.x`, never seen before the first one.
fn new_tick(b: i64) -> Vec<Event> {
    vec![Event::Tick(Tick {
        instrument_id: InstrumentId::new("NEW.x").unwrap(),
        datetime: b,
        last_price: b as f64,
        ..Tick::default()
    })]
}

/// The instruments in the partition list, as on the simulated disk now.
fn listed(fs: &SimFs) -> Vec<String> {
    let text = fs.contents(Path::new("/db/parts/instruments/PARTITIONS")).unwrap_or_default();
    String::from_utf8(text).unwrap().lines().map(str::to_string).collect()
}

/// A new instrument's first event makes its partition in memory without a single
/// file-system call beyond the WAL's (no `fsync` on the submit path), and the partition
/// is on the list before any partition records a flushed LSN at or past that event: the
/// open replays from the lowest flushed LSN of the listed partitions, so recording one
/// first could skip the new partition's events after a crash.
#[test]
fn a_new_partition_costs_its_first_submit_nothing_and_is_listed_before_any_flush_passes_it() {
    let mut o = opts();
    o.checkpoint_interval = Duration::from_secs(3600);
    o.defer_partition_creation = true;
    o.wal.preallocate = bourse_wal::Preallocate::None;
    let fs = SimFs::new();
    let e = Engine::open_with(fs.shared(), Path::new("/db"), o.clone(), &mut |_| {}).unwrap();
    let old = |b: i64| {
        vec![Event::Tick(Tick {
            instrument_id: InstrumentId::new("OLD.x").unwrap(),
            datetime: b,
            ..Tick::default()
        })]
    };
    e.submit(&old(0), Durability::Buffered).unwrap();
    e.checkpoint().unwrap();
    assert_eq!(listed(&fs), ["OLD.x"]);
    let before = fs.ops();
    e.submit(&old(1), Durability::Durable).unwrap();
    let known = fs.ops() - before;
    let before = fs.ops();
    let c = e.submit(&new_tick(1), Durability::Durable).unwrap().first.0;
    let new = fs.ops() - before;
    assert_eq!(
        new, known,
        "file-system calls of a new partition's first submit, and of a known one's"
    );
    let on_disk = |e: &Engine| {
        e.stats().partitions.iter().find(|p| p.id.to_string().contains("NEW.x")).map(|p| p.on_disk)
    };
    assert_eq!(on_disk(&e), Some(false));
    assert!(!listed(&fs).contains(&"NEW.x".to_string()));
    // Fill the accounts partition until a maintenance thread flushes it past `c`.
    let accounts_past = |e: &Engine| {
        e.stats().partitions.iter().any(|p| p.id.to_string() == "accounts" && p.flushed_lsn >= c)
    };
    let mut b = 0;
    while !accounts_past(&e) {
        assert!(b < 5000, "the accounts partition never flushed");
        e.submit(&batch(b), Durability::Durable).unwrap();
        b += 1;
    }
    assert!(
        listed(&fs).contains(&"NEW.x".to_string()),
        "a flush recorded LSN {c} or later before NEW.x was listed"
    );
    drop(e);
    fs.crash(CrashFate::LoseUnsynced);
    let e = Engine::open_with(fs.shared(), Path::new("/db"), o, &mut |_| {}).unwrap();
    let id = InstrumentId::new("NEW.x").unwrap();
    assert_eq!(e.ticks(&id, i64::MIN, i64::MAX).count(), 1);
}

/// A data directory made by someone else, its entry never synced, is synced by the
/// engine's open: `Durable` acknowledgements in it survive a power loss.
#[test]
fn a_data_directory_made_by_hand_is_synced_at_open() {
    use bourse_fs::Vfs;
    let fs = SimFs::new();
    fs.create_dir_all(Path::new("/db")).unwrap();
    {
        let e = Engine::open_with(fs.shared(), Path::new("/db"), opts(), &mut |_| {}).unwrap();
        for b in 0..5 {
            e.submit(&batch(b), Durability::Durable).unwrap();
        }
        fs.crash_after(0);
    }
    fs.crash(CrashFate::LoseUnsynced);
    assert_eq!(check(&fs, Some(4)), Ok(5));
}
