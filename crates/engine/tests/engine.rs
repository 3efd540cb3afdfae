#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Engine behaviour: submit and query, recovery by replay, users, the commit stream,
//! the market cache, checkpoints and WAL truncation.

use std::time::Duration;

use bourse_engine::{Durability, Engine, EngineOptions, Error, NewUser, OrderFilter};
use bourse_model::samples::sample;
use bourse_model::{
    BookDelta, BookSnapshot, Event, EventKind, InstrumentId, Level, LevelChange, OrderCancelled,
    OrderStatus, Side, Tick, Trade,
};

fn opts() -> EngineOptions {
    EngineOptions {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        checkpoint_interval: Duration::from_millis(20),
        ..EngineOptions::default()
    }
}

fn ins(s: &str) -> InstrumentId {
    InstrumentId::new(s).unwrap()
}

fn tick(id: &str, t: i64, price: f64) -> Event {
    Event::Tick(Tick { instrument_id: ins(id), datetime: t, last_price: price, ..Tick::default() })
}

fn trade(id: &str, user: &str, n: u64, t: i64) -> Event {
    Event::TradeExecuted(Trade {
        user_id: user.into(),
        trade_id: format!("t{n}"),
        order_id: format!("o{n}"),
        instrument_id: ins(id),
        volume: 1,
        price: 100.0 + n as f64,
        trade_date_time: t,
        ..Trade::default()
    })
}

#[test]
fn orders_follow_their_lifecycle_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    let mut req = match sample(EventKind::OrderRequested, 1) {
        Event::OrderRequested(r) => r,
        _ => unreachable!(),
    };
    req.user_id = "acct1".into();
    let mut batch = Vec::new();
    for i in 0..5 {
        req.order_id = format!("o{i}");
        batch.push(Event::OrderRequested(req.clone()));
    }
    let r = e.submit(&batch, Durability::Durable).unwrap();
    assert_eq!(r.last.0 - r.first.0, 4);
    // Cancel o1 and o3.
    for id in ["o1", "o3"] {
        let c = Event::OrderCancelled(OrderCancelled {
            user_id: "acct1".into(),
            order_id: id.into(),
            instrument_id: req.instrument_id.clone(),
            volume_left: 2,
            last_msg: "cancelled by user".into(),
            datetime: 5,
        });
        e.submit(&[c], Durability::Buffered).unwrap();
    }
    let check = |e: &Engine| {
        let all: Vec<String> =
            e.orders("acct1", OrderFilter::All).map(|o| o.unwrap().order.order_id).collect();
        assert_eq!(all, ["o4", "o3", "o2", "o1", "o0"]);
        let open: Vec<String> =
            e.orders("acct1", OrderFilter::Open).map(|o| o.unwrap().order.order_id).collect();
        assert_eq!(open, ["o4", "o2", "o0"]);
        let o1 = e.order("acct1", "o1").unwrap().unwrap();
        assert_eq!(o1.order.status, OrderStatus::Finished);
        assert_eq!(o1.order.volume_left, 2);
        assert_eq!(o1.order.last_msg, "cancelled by user");
        assert!(e.order("acct1", "nope").unwrap().is_none());
        assert_eq!(e.orders("acct2", OrderFilter::All).count(), 0);
    };
    check(&e);
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    check(&e);
}

#[test]
fn queries_stream_time_ranges_and_see_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    for n in 0..200u64 {
        let user = if n % 2 == 0 { "even" } else { "odd" };
        e.submit(&[trade("DCE.m2601", user, n, n as i64 * 10)], Durability::Buffered).unwrap();
    }
    let got: Vec<i64> =
        e.trades(&ins("DCE.m2601"), 100, 200).map(|t| t.unwrap().trade_date_time).collect();
    assert_eq!(got, (10..20).map(|i| i * 10).collect::<Vec<_>>());
    assert_eq!(e.trades(&ins("DCE.m2601"), 200, 100).count(), 0);
    assert_eq!(e.trades(&ins("DCE.m9999"), 0, i64::MAX).count(), 0);
    let odd: Vec<String> = e.user_trades("odd").take(3).map(|t| t.unwrap().trade_id).collect();
    assert_eq!(odd, ["t199", "t197", "t195"]);
    // A scan started before later writes keeps reading its snapshot.
    let mut rows = e.trades(&ins("DCE.m2601"), 0, i64::MAX);
    let first = rows.next().unwrap().unwrap();
    e.submit(&[trade("DCE.m2601", "even", 1000, 5)], Durability::Buffered).unwrap();
    assert_eq!(first.trade_date_time, 0);
    assert_eq!(rows.count(), 199);
    assert_eq!(e.trades(&ins("DCE.m2601"), 0, i64::MAX).count(), 201);
    // Force everything to tables, and read again.
    e.checkpoint().unwrap();
    assert_eq!(e.trades(&ins("DCE.m2601"), 0, i64::MAX).count(), 201);
    assert_eq!(e.instruments(), vec![ins("DCE.m2601")]);
}

#[test]
fn market_cache_tracks_ticks_and_books_and_is_rebuilt_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    e.submit(
        &[tick("SHFE.cu2512", 1, 70000.0), tick("SHFE.cu2512", 2, 70010.0)],
        Durability::Buffered,
    )
    .unwrap();
    let book = BookSnapshot {
        instrument_id: ins("SHFE.cu2512"),
        datetime: 3,
        bids: vec![Level { price: 70000.0, volume: 5 }],
        asks: vec![Level { price: 70010.0, volume: 4 }],
    };
    let delta = BookDelta {
        instrument_id: ins("SHFE.cu2512"),
        datetime: 4,
        changes: vec![LevelChange { side: Side::Bid, price: 70005.0, volume: 2 }],
    };
    e.submit(&[Event::BookSnapshot(book.clone()), Event::BookDelta(delta)], Durability::Durable)
        .unwrap();
    let check = |e: &Engine| {
        assert_eq!(e.latest_tick(&ins("SHFE.cu2512")).unwrap().last_price, 70010.0);
        let b = e.latest_book(&ins("SHFE.cu2512")).unwrap();
        assert_eq!(b.bids.iter().map(|l| l.price).collect::<Vec<_>>(), [70005.0, 70000.0]);
        assert_eq!(e.book_at(&ins("SHFE.cu2512"), 3).unwrap().unwrap(), book);
        assert!(e.book_at(&ins("SHFE.cu2512"), 2).unwrap().is_none());
        assert!(e.latest_tick(&ins("SHFE.rb2601")).is_none());
    };
    check(&e);
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    check(&e);
    e.checkpoint().unwrap();
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    check(&e);
}

/// A submit returns once its whole batch is visible, including the instrument
/// partitions' writes that large batches hand to the apply lane thread, while other
/// writers' batches overlap it.
#[test]
fn a_submitted_batch_is_visible_when_submit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.wal.segment_bytes = 4 << 20;
    let e = Engine::open(dir.path(), o).unwrap();
    std::thread::scope(|sc| {
        for w in 0..3i64 {
            let e = &e;
            sc.spawn(move || {
                let id = format!("SHFE.cu25{w:02}");
                for b in 0..150i64 {
                    let batch: Vec<Event> =
                        (0..32).map(|i| tick(&id, b * 32 + i + 1, 1.0)).collect();
                    e.submit(&batch, Durability::Buffered).unwrap();
                    let seen = e.ticks(&ins(&id), 0, i64::MAX).count() as i64;
                    assert_eq!(seen, (b + 1) * 32, "writer {w}, batch {b}");
                    assert_eq!(e.latest_tick(&ins(&id)).unwrap().datetime, (b + 1) * 32);
                }
            });
        }
    });
}

/// Writers stamp their own times, so books arrive out of time order. The cache keeps
/// store order, (time, LSN): a late delta takes its place among the later ones, a late
/// snapshot restarts the book, an old tick is not the latest; and a reopen (which
/// reloads from the store) gives the same.
#[test]
fn market_cache_keeps_store_order_when_times_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.wal.segment_bytes = 4 << 20;
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    let id = ins("SHFE.cu2512");
    let delta = |t: i64, changes: &[(f64, i64)]| {
        Event::BookDelta(BookDelta {
            instrument_id: id.clone(),
            datetime: t,
            changes: changes
                .iter()
                .map(|&(price, volume)| LevelChange { side: Side::Bid, price, volume })
                .collect(),
        })
    };
    let bids = |e: &Engine| -> Vec<(f64, i64)> {
        e.latest_book(&id).unwrap().bids.iter().map(|l| (l.price, l.volume)).collect()
    };
    // In time order: t10 sets 100 and 99, t20 sets 100 to 5, t30 adds 98. t20 comes last.
    for ev in [
        delta(10, &[(100.0, 1), (99.0, 1)]),
        delta(30, &[(98.0, 3)]),
        delta(20, &[(100.0, 5), (99.0, 0)]),
    ] {
        e.submit(&[ev], Durability::Buffered).unwrap();
    }
    assert_eq!(bids(&e), [(100.0, 5), (98.0, 3)]);
    // A late delta that a later one overrides at the same price: the later one wins.
    e.submit(&[delta(15, &[(98.0, 7), (97.0, 2)])], Durability::Buffered).unwrap();
    assert_eq!(bids(&e), [(100.0, 5), (98.0, 3), (97.0, 2)]);
    // A late snapshot (t25): the book restarts from it, with the deltas after it (t30).
    let snap = BookSnapshot {
        instrument_id: id.clone(),
        datetime: 25,
        bids: vec![Level { price: 90.0, volume: 9 }],
        asks: vec![],
    };
    e.submit(&[Event::BookSnapshot(snap)], Durability::Buffered).unwrap();
    assert_eq!(bids(&e), [(98.0, 3), (90.0, 9)]);
    // An old delta (before the snapshot) and an old tick change nothing.
    e.submit(&[delta(5, &[(80.0, 1)]), tick("SHFE.cu2512", 50, 1.0)], Durability::Buffered)
        .unwrap();
    e.submit(&[tick("SHFE.cu2512", 40, 2.0)], Durability::Buffered).unwrap();
    assert_eq!(bids(&e), [(98.0, 3), (90.0, 9)]);
    assert_eq!(e.latest_tick(&id).unwrap().last_price, 1.0);
    drop(e);
    for checkpoint in [false, true] {
        let e = Engine::open(dir.path(), o.clone()).unwrap();
        assert_eq!(bids(&e), [(98.0, 3), (90.0, 9)], "reopen, checkpointed: {checkpoint}");
        assert_eq!(e.latest_tick(&id).unwrap().last_price, 1.0);
        e.checkpoint().unwrap();
    }
}

#[test]
fn users_register_login_freeze_and_bind() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    let alice = NewUser {
        user_id: "alice".into(),
        user_name: "Alice".into(),
        password: "correct horse".into(),
        ..NewUser::default()
    };
    e.register_user(&alice).unwrap();
    assert!(matches!(e.register_user(&alice), Err(Error::UserExists(_))));
    let short = NewUser { user_id: "bob".into(), password: "short".into(), ..NewUser::default() };
    assert!(matches!(e.register_user(&short), Err(Error::Invalid(_))));
    let rec = e.login("alice", "correct horse").unwrap();
    assert!(rec.password_hash.starts_with("$argon2id$"));
    assert!(!rec.password_hash.contains("correct horse"));
    assert!(matches!(e.login("alice", "wrong password"), Err(Error::BadCredentials)));
    assert!(matches!(e.login("nobody", "correct horse"), Err(Error::BadCredentials)));
    e.bind_account("alice", "acct1").unwrap();
    e.bind_account("alice", "acct2").unwrap();
    let bob = NewUser { user_id: "bob".into(), password: "bob's password".into(), ..alice.clone() };
    e.register_user(&bob).unwrap();
    assert!(matches!(e.bind_account("bob", "acct1"), Err(Error::AccountTaken { .. })));
    assert!(matches!(e.unbind_account("bob", "acct1"), Err(Error::NotBound { .. })));
    e.unbind_account("alice", "acct2").unwrap();
    e.set_frozen("alice", true).unwrap();
    assert!(matches!(e.login("alice", "correct horse"), Err(Error::Frozen(_))));
    let check = |e: &Engine| {
        assert_eq!(e.accounts_of("alice").unwrap(), ["acct1"]);
        assert_eq!(e.owner_of("acct1").unwrap().as_deref(), Some("alice"));
        assert_eq!(e.owner_of("acct2").unwrap(), None);
        assert!(e.user("alice").unwrap().unwrap().frozen);
        let ids: Vec<String> = e.users().map(|u| u.unwrap().user_id).collect();
        assert_eq!(ids, ["alice", "bob"]);
    };
    check(&e);
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    check(&e);
    e.set_frozen("alice", false).unwrap();
    e.login("alice", "correct horse").unwrap();
}

#[test]
fn a_zero_sync_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = EngineOptions { sync_interval: Some(Duration::ZERO), ..opts() };
    let err = Engine::open(dir.path(), o).unwrap_err();
    assert!(matches!(err, Error::Invalid(ref m) if m.contains("sync_interval")), "{err}");
    // It changed nothing: the directory holds no store.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn invalid_batches_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    let bad = Event::Tick(Tick {
        instrument_id: ins("SHFE.cu2512"),
        last_price: f64::NAN,
        ..Tick::default()
    });
    let err = e.submit(&[tick("SHFE.cu2512", 1, 1.0), bad], Durability::Durable).unwrap_err();
    assert!(matches!(err, Error::Event { index: 1, .. }), "{err}");
    assert!(e.submit(&[], Durability::Durable).is_err());
    assert_eq!(e.applied_lsn(), 0);
    assert!(e.latest_tick(&ins("SHFE.cu2512")).is_none());
    let big = vec![tick("SHFE.cu2512", 1, 1.0); 5000];
    assert!(matches!(e.submit(&big, Durability::Buffered), Err(Error::Invalid(_))));
}

#[test]
fn commit_stream_replays_then_follows_live_writers() {
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(Engine::open(dir.path(), opts()).unwrap());
    for n in 0..50 {
        e.submit(&[tick("SHFE.cu2512", n, n as f64)], Durability::Buffered).unwrap();
    }
    let mut s = e.commits(1).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let e = e.clone();
            std::thread::spawn(move || {
                for n in 0..250 {
                    let d = if n % 7 == 0 { Durability::Durable } else { Durability::Buffered };
                    e.submit(
                        &[tick("SHFE.cu2512", w * 1000 + n, 1.0), tick("DCE.m2601", n, 2.0)],
                        d,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    let mut next = 1;
    while next <= 50 + 4 * 250 * 2 {
        let c = s.wait_next(Duration::from_secs(10)).unwrap().expect("stream stalled");
        assert_eq!(c.lsn, next, "LSNs arrive in order, without gaps");
        next += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(s.next_event().unwrap().is_none());
    assert_eq!(e.applied_lsn(), 50 + 2000);
    assert!(matches!(e.commits(0), Err(Error::NotRetained { .. })));
    assert!(matches!(e.commits(5000), Err(Error::NotRetained { .. })));
}

#[test]
fn checkpoints_truncate_the_wal_but_never_below_pins_and_reopen_replays_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.wal.segment_bytes = 64 << 10;
    o.wal_retain_bytes = 0;
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    let pin = e.pin_wal(1000);
    for n in 0..3000u64 {
        e.submit(&[trade("SHFE.rb2601", "u", n, n as i64)], Durability::Buffered).unwrap();
    }
    e.checkpoint().unwrap();
    let first = e.stats().wal_first_lsn;
    assert!(first <= 1000 && first > 1, "pinned at 1000, truncated to {first}");
    pin.advance(2500);
    e.checkpoint().unwrap();
    let first = e.stats().wal_first_lsn;
    assert!(first > 1000 && first <= 2500, "truncated to {first}");
    drop(pin);
    for n in 3000..3100u64 {
        e.submit(&[trade("SHFE.rb2601", "u", n, n as i64)], Durability::Buffered).unwrap();
    }
    drop(e);
    let mut replayed = 0;
    let e = Engine::open_with(bourse_fs::RealFs::shared(), dir.path(), o, &mut |p| {
        if p.done {
            replayed = p.records;
        }
    })
    .unwrap();
    assert!((100..1000).contains(&replayed), "replayed {replayed}");
    assert_eq!(e.trades(&ins("SHFE.rb2601"), 0, i64::MAX).count(), 3100);
    assert_eq!(e.user_trades("u").count(), 3100);
}

#[test]
fn backups_taken_during_writes_open_to_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.memtable_bytes = 64 << 10;
    o.wal.segment_bytes = 64 << 10;
    let e = std::sync::Arc::new(Engine::open(dir.path().join("live"), o.clone()).unwrap());
    for n in 0..500u64 {
        e.submit(&[trade("SHFE.rb2601", "u", n, n as i64)], Durability::Buffered).unwrap();
    }
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            for n in 500..3000u64 {
                e.submit(
                    &[trade("SHFE.rb2601", "u", n, n as i64), tick("SHFE.rb2601", n as i64, 1.0)],
                    Durability::Buffered,
                )
                .unwrap();
            }
        })
    };
    let dest = dir.path().join("backup");
    let report = e.backup(&dest).unwrap();
    writer.join().unwrap();
    assert!(e.backup(&dest).is_err(), "a non-empty target is refused");
    let b = Engine::open(&dest, o).unwrap();
    assert_eq!(b.applied_lsn(), report.last_lsn);
    // The copy is a prefix: trades 0..k for some k, all of them.
    let ids: Vec<String> = b.user_trades("u").map(|t| t.unwrap().trade_id).collect();
    let k = ids.len() as u64;
    assert!(k >= 500, "{k}");
    let want: Vec<String> = (0..k).rev().map(|n| format!("t{n}")).collect();
    assert_eq!(ids, want);
    // And it is a working store.
    b.submit(&[trade("SHFE.rb2601", "u", 99999, 1)], Durability::Durable).unwrap();
    assert_eq!(b.applied_lsn(), report.last_lsn + 1);
}

/// A backup of a store whose newest partition is still in memory only (not yet created
/// on disk) holds that partition: it is listed in the copy and its tree is there, and the
/// copy replays its events; the live store still has nothing of it on disk.
#[test]
fn a_backup_holds_a_partition_not_yet_created_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.defer_partition_creation = true;
    o.checkpoint_interval = Duration::from_secs(3600);
    let e = Engine::open(dir.path().join("live"), o.clone()).unwrap();
    e.submit(&[tick("SHFE.rb2601", 1, 10.0)], Durability::Durable).unwrap();
    e.checkpoint().unwrap();
    e.submit(&[tick("NEW.x", 2, 20.0), tick("NEW.x", 3, 30.0)], Durability::Durable).unwrap();
    let live_tree = dir.path().join("live/parts/instruments/NEW.x");
    assert!(!live_tree.exists(), "created on disk before the test could back it up");
    let dest = dir.path().join("backup");
    e.backup(&dest).unwrap();
    assert!(!live_tree.exists(), "the backup created the live partition");
    let listed = std::fs::read_to_string(dest.join("parts/instruments/PARTITIONS")).unwrap();
    assert!(listed.lines().any(|l| l == "NEW.x"), "{listed}");
    assert!(dest.join("parts/instruments/NEW.x/CURRENT").exists());
    drop(e);
    let b = Engine::open(&dest, o).unwrap();
    let prices: Vec<f64> =
        b.ticks(&ins("NEW.x"), i64::MIN, i64::MAX).map(|t| t.unwrap().last_price).collect();
    assert_eq!(prices, [20.0, 30.0]);
    assert_eq!(b.latest_tick(&ins("SHFE.rb2601")).map(|t| t.last_price), Some(10.0));
}

/// Open holds the WAL's spare segment back while it replays, and starts it after: a
/// reopened engine gets its pre-written spare.
#[test]
fn the_wal_spare_is_prepared_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.wal.preallocate = bourse_wal::Preallocate::PreWrite;
    o.wal.segment_bytes = 1 << 20;
    // Started as soon as the replay lets it, not once the segment is half full.
    o.wal.spare_start_percent = 0;
    let spare = dir.path().join("wal").join("spare.wal.ready");
    for round in 0..2 {
        if round == 1 {
            // The first round's spare would be kept across the reopen: remove it, so
            // that this round sees an open with a journal to replay start a new one.
            std::fs::remove_file(&spare).unwrap();
        }
        let e = Engine::open(dir.path(), o.clone()).unwrap();
        e.submit(&[tick("SHFE.rb2501", round, 1.0)], Durability::Durable).unwrap();
        let t = std::time::Instant::now();
        while std::fs::metadata(&spare).map_or(true, |m| m.len() < o.wal.segment_bytes) {
            assert!(t.elapsed() < Duration::from_secs(30), "no spare after open {round}");
            std::thread::sleep(Duration::from_millis(5));
        }
        e.close().unwrap();
    }
}

/// The maintenance threads run at the nice value the options give (Linux keeps one per
/// thread, in field 19 of `/proc/self/task/TID/stat`); so does the WAL's background
/// thread.
#[cfg(target_os = "linux")]
#[test]
fn maintenance_threads_lower_their_priority() {
    let nice_of = |prefix: &str| -> Vec<i64> {
        let mut found = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let t = t.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(t.join("comm")) else { continue };
            if !comm.starts_with(prefix) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(t.join("stat")) else { continue };
            // Fields after the command (which is in parentheses): state is field 3.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            found.push(rest.split(' ').nth(19 - 3).unwrap().parse().unwrap());
        }
        found
    };
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.maintenance_threads = 2;
    o.maintenance_nice = 7;
    let e = Engine::open(dir.path(), o).unwrap();
    // The threads set it first thing; give them a moment to start. Other tests' engines
    // run beside this one with the default (10), so count the sevens: the two
    // maintenance threads, and the WAL's spare pre-writer ("bourse-wal-prealloc",
    // which the kernel's 15-byte thread names cut short).
    let sevens = |prefix: &str| nice_of(prefix).into_iter().filter(|&n| n == 7).count();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (sevens("bourse-maint") < 2 || sevens("bourse-wal-prea") < 1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(sevens("bourse-maint"), 2, "maintenance threads: {:?}", nice_of("bourse-maint"));
    assert_eq!(sevens("bourse-wal-prea"), 1, "WAL thread: {:?}", nice_of("bourse-wal-prea"));
    drop(e);
}

#[test]
fn the_sync_thread_stops_at_close_without_waiting_out_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let o = EngineOptions { sync_interval: Some(Duration::from_secs(3600)), ..opts() };
    let e = Engine::open(dir.path(), o).unwrap();
    e.submit(&[tick("SHFE.cu2501", 1, 1.0)], Durability::Buffered).unwrap();
    let start = std::time::Instant::now();
    e.close().unwrap();
    // A hang guard, not a speed claim: the thread would otherwise sleep for an hour.
    assert!(start.elapsed() < Duration::from_secs(60), "close waited for the sync thread");
}

#[test]
fn the_accounts_partition_can_have_a_smaller_memtable() {
    // Writes of about 200 KiB to accounts and to one instrument; with the accounts
    // memtable at 32 KiB it flushes into tables, the instrument's (1 MiB) does not.
    for small in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let o = EngineOptions {
            memtable_bytes: 1 << 20,
            accounts_memtable_bytes: small.then_some(32 << 10),
            checkpoint_interval: Duration::from_secs(3600),
            ..opts()
        };
        let e = Engine::open(dir.path(), o).unwrap();
        for n in 0..1000u64 {
            let mut a = match sample(EventKind::AccountUpdated, n) {
                Event::AccountUpdated(a) => a,
                _ => unreachable!(),
            };
            a.user_id = format!("acct{n}");
            let batch = [Event::AccountUpdated(a), tick("SHFE.cu2501", n as i64, 1.0)];
            e.submit(&batch, Durability::Buffered).unwrap();
        }
        let tables = |e: &Engine, name: &str| -> usize {
            let st = e.stats();
            let p = st.partitions.iter().find(|p| p.id.to_string().contains(name)).unwrap();
            p.tree.tables_per_level.iter().sum()
        };
        let start = std::time::Instant::now();
        while small && tables(&e, "accounts") == 0 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tables(&e, "accounts") > 0, small, "accounts flushed (small: {small})");
        assert_eq!(tables(&e, "cu2501"), 0, "the instrument's memtable holds all of it");
    }
    let dir = tempfile::tempdir().unwrap();
    let o = EngineOptions { accounts_memtable_bytes: Some(0), ..opts() };
    assert!(matches!(Engine::open(dir.path(), o), Err(Error::Invalid(_))));
}

/// The partitions apply looks absent keys up in (`accounts`: is a new order id a
/// repeat?; `users`: is a new user id taken?) keep a key filter on their memtables; the
/// instruments, which are only scanned, do not. Seen in what the memtables account: a
/// filter planned for a 64 MiB memtable is 1 MiB and counts from the first insert.
#[test]
fn accounts_and_users_filter_their_memtable_keys_instruments_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let o = EngineOptions {
        memtable_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(3600),
        ..opts()
    };
    let e = Engine::open(dir.path(), o).unwrap();
    let batch = [
        sample(EventKind::AccountUpdated, 1),
        sample(EventKind::UserRegistered, 1),
        tick("SHFE.cu2501", 1, 1.0),
    ];
    e.submit(&batch, Durability::Buffered).unwrap();
    let st = e.stats();
    let bytes = |name: &str| {
        st.partitions.iter().find(|p| p.id.to_string().contains(name)).unwrap().memtable_bytes
    };
    assert!(bytes("accounts") >= 1 << 20, "accounts: {} bytes", bytes("accounts"));
    assert!(bytes("users") >= 1 << 20, "users: {} bytes", bytes("users"));
    assert!(bytes("cu2501") < 64 << 10, "the instrument: {} bytes", bytes("cu2501"));
}

/// Every file under `dir` with its bytes, for checking that a refused open changed
/// nothing.
fn tree_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_data_directory_names_its_key_layout_and_another_layout_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join(bourse_engine::layout::LAYOUT_FILE);
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        e.submit(&[trade("SHFE.cu2512", "acct1", 1, 5)], Durability::Durable).unwrap();
    }
    let want = format!("bourse key layout {}\n", bourse_engine::layout::KEY_LAYOUT);
    assert_eq!(std::fs::read_to_string(&layout).unwrap(), want);
    // Reopened with its own layout, it holds what was written.
    {
        let e = Engine::open(dir.path(), opts()).unwrap();
        assert_eq!(e.user_trades("acct1").count(), 1);
    }
    // A directory from before the file (data, no file) is layout 1; a file naming
    // another layout is that layout; a file that names none is corrupt. Each open is
    // refused and leaves every file as it was.
    let cases: [(Option<&str>, Option<u32>); 3] =
        [(None, Some(1)), (Some("bourse key layout 3\n"), Some(3)), (Some("junk\n"), None)];
    for (text, found) in cases {
        match text {
            Some(t) => std::fs::write(&layout, t).unwrap(),
            None => std::fs::remove_file(&layout).unwrap(),
        }
        let before = tree_bytes(dir.path());
        let err = Engine::open(dir.path(), opts()).expect_err("the open is refused");
        match (&err, found) {
            (Error::Layout { found: f, .. }, Some(want)) => {
                assert_eq!(*f, want);
                assert!(err.to_string().contains("reads only layout 2"), "{err}");
            }
            (Error::Corrupt { what }, None) => assert!(what.contains("LAYOUT"), "{what}"),
            _ => panic!("{text:?}: unexpected error {err}"),
        }
        assert_eq!(tree_bytes(dir.path()), before, "{text:?}: a refused open changed files");
    }
    // An empty directory made beforehand (by hand, by a script) is new: it gets the file.
    let empty = tempfile::tempdir().unwrap();
    drop(Engine::open(empty.path(), opts()).unwrap());
    let made = empty.path().join(bourse_engine::layout::LAYOUT_FILE);
    assert_eq!(std::fs::read_to_string(made).unwrap(), want);
}
