//! `bourse-crashtest`: the kill -9 harness (`RELIABILITY.md`, harness 5).
//!
//! `bourse-crashtest run --dir DIR [--cycles N] [--seed S] [--writers W]` repeats: start
//! a child process that opens the store in `DIR/data` and runs an exchange-shaped
//! workload from several writer threads (orders, trades, ticks and books over many
//! instruments, now and then an instrument never seen before, account and position
//! updates, user registrations; `Accepted`,
//! `Buffered` and `Durable` submits), recording each acknowledgement in `DIR/acks`
//! (outside the data directory); kill it with SIGKILL at a random moment; reopen the
//! store and check it against the model:
//!
//! - **P1** every batch acknowledged `Buffered` or `Durable` is present (a process crash
//!   loses nothing the OS has);
//! - **P2** each writer's batches present are exactly a prefix of what it submitted, and
//!   the latest account, tick, position and order book agree with that prefix (the
//!   books' deltas arrive partly late, and book checkpoints are written every few
//!   deltas, so crashes land around checkpoints and their deletions);
//! - **P3** nothing is present that no writer submitted;
//! - **P4** a batch is all there or not at all.
//!
//! The next child recovers the same store and continues each writer after its prefix,
//! so later cycles also crash during recovery's aftermath, flushes, compactions,
//! checkpoints and WAL truncation (small memtables and segments make those frequent).
//! Exits 0 when every cycle passed; prints the first violation and exits 1 otherwise.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_model::{
    Account, BookSnapshot, Event, InstrumentId, OrderRequested, Position, Tick, Trade,
    UserRegistered,
};

/// Instruments per writer.
const INSTRUMENTS: u64 = 8;

fn options() -> EngineOptions {
    let mut o = EngineOptions {
        memtable_bytes: 256 << 10,
        memtable_budget_bytes: 2 << 20,
        checkpoint_interval: Duration::from_millis(30),
        wal_retain_bytes: 0,
        wal_bytes_max: 4 << 20,
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        book_checkpoint_every: 4,
        ..EngineOptions::default()
    };
    o.wal.segment_bytes = 512 << 10;
    o
}

fn account(w: u64) -> String {
    format!("crash-acct-{w}")
}

fn instrument(w: u64, b: u64) -> InstrumentId {
    // NOTE: the format is fixed, so this cannot fail; fall back to a valid id anyway.
    InstrumentId::new(format!("SIM.w{w}i{}", b % INSTRUMENTS)).unwrap_or_default()
}

/// Every this many batches, a writer's batch also ticks an instrument of its own.
const NEW_EVERY: u64 = 500;

/// The instrument that only writer `w`'s batch `b` names (`b % NEW_EVERY == NEW_EVERY - 1`).
fn new_instrument(w: u64, b: u64) -> InstrumentId {
    InstrumentId::new(format!("SIM.w{w}n{b}")).unwrap_or_default()
}

/// The events of writer `w`'s batch `b`. Every event names (w, b), so the checker can
/// tell which batches are present.
fn batch(w: u64, b: u64) -> Vec<Event> {
    let ins = instrument(w, b);
    let acct = account(w);
    let mut v = vec![
        Event::OrderRequested(OrderRequested {
            user_id: acct.clone(),
            order_id: format!("b{b}"),
            instrument_id: ins.clone(),
            volume: 1 + (b % 5) as i64,
            limit_price: 100.0 + b as f64,
            datetime: b as i64,
            ..OrderRequested::default()
        }),
        Event::TradeExecuted(Trade {
            user_id: acct.clone(),
            trade_id: format!("b{b}"),
            order_id: format!("b{b}"),
            instrument_id: ins.clone(),
            volume: 1,
            price: 100.0 + b as f64,
            trade_date_time: b as i64,
            ..Trade::default()
        }),
        Event::Tick(Tick {
            instrument_id: ins.clone(),
            datetime: b as i64,
            last_price: b as f64,
            volume: b as i64,
            ..Tick::default()
        }),
        Event::AccountUpdated(Account {
            user_id: acct.clone(),
            currency: "CNY".into(),
            deposit: b as f64,
            balance: 1e6 + b as f64,
            ..Account::default()
        }),
        Event::PositionUpdated(Position {
            user_id: acct,
            instrument_id: ins,
            volume_long: b as i64,
            ..Position::default()
        }),
        book_event(w, b),
    ];
    if b % NEW_EVERY == NEW_EVERY - 1 {
        // An instrument never seen before: its partition is made by this event.
        v.push(Event::Tick(Tick {
            instrument_id: new_instrument(w, b),
            datetime: b as i64,
            last_price: b as f64,
            ..Tick::default()
        }));
    }
    if b.is_multiple_of(10) {
        v.push(Event::UserRegistered(UserRegistered {
            user_id: format!("crash-user-{w}-{b}"),
            user_name: "crash".into(),
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            datetime: b as i64,
            ..UserRegistered::default()
        }));
    }
    v
}

/// Writer `w`'s book event of batch `b` on its instrument: every 201st a snapshot, the
/// others deltas; every fourth round of an instrument's deltas is late by 1 to 6 rounds,
/// sometimes landing before the instrument's book checkpoint
/// ([`bourse_model::samples::late_book_event`]).
fn book_event(w: u64, b: u64) -> Event {
    bourse_model::samples::late_book_event(instrument(w, b), b, INSTRUMENTS, 201, 6)
}

/// The book the first `n` batches of writer `w` leave on instrument `k`.
fn expected_book(w: u64, k: u64, n: u64) -> Option<BookSnapshot> {
    let events: Vec<(u64, Event)> =
        (0..n).filter(|b| b % INSTRUMENTS == k).map(|b| (b, book_event(w, b))).collect();
    bourse_model::samples::book_in_store_order(&events, &instrument(w, k))
}

fn durability(b: u64) -> Durability {
    match b % 3 {
        0 => Durability::Durable,
        1 => Durability::Buffered,
        _ => Durability::Accepted,
    }
}

/// How many batches of writer `w` the store holds (its orders), after checking P2–P4
/// for that writer.
fn check_writer(e: &Engine, w: u64) -> Result<u64, String> {
    let acct = account(w);
    let orders: Vec<String> = e
        .orders(&acct, OrderFilter::All)
        .map(|o| o.map(|o| o.order.order_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let n = orders.len() as u64;
    // Newest first: b{n-1} .. b0, exactly (a prefix, nothing invented).
    for (i, id) in orders.iter().enumerate() {
        let want = format!("b{}", n - 1 - i as u64);
        if *id != want {
            return Err(format!("writer {w}: order #{i} is {id}, expected {want} (not a prefix)"));
        }
    }
    let trades: Vec<String> = e
        .user_trades(&acct)
        .map(|t| t.map(|t| t.trade_id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if trades != orders {
        return Err(format!(
            "writer {w}: {} orders but {} trades: a batch is torn (P4)",
            orders.len(),
            trades.len()
        ));
    }
    let accounts = e.accounts(&acct).map_err(|e| e.to_string())?;
    match (n, accounts.first()) {
        (0, None) => {}
        (n, Some(a)) if a.deposit == (n - 1) as f64 => {}
        (n, a) => {
            return Err(format!(
                "writer {w}: {n} batches but the account shows deposit {:?}",
                a.map(|a| a.deposit)
            ))
        }
    }
    for k in 0..INSTRUMENTS.min(n) {
        // The newest batch of this writer on instrument k.
        let last = (0..n).rev().find(|b| b % INSTRUMENTS == k).unwrap_or(0);
        let ins = instrument(w, last);
        let tick = e.latest_tick(&ins).map(|t| t.last_price);
        if tick != Some(last as f64) {
            return Err(format!("writer {w}: latest tick of {ins:?} is {tick:?}, expected {last}"));
        }
        let ticks = e.ticks(&ins, i64::MIN, i64::MAX).count() as u64;
        let want = (0..n).filter(|b| b % INSTRUMENTS == k).count() as u64;
        if ticks != want {
            return Err(format!("writer {w}: {ticks} ticks of {ins:?}, expected {want}"));
        }
        let pos = e.positions(&acct).map_err(|e| e.to_string())?;
        let p = pos.iter().find(|p| p.instrument_id == ins).map(|p| p.volume_long);
        if p != Some(last as i64) {
            return Err(format!("writer {w}: position in {ins:?} is {p:?}, expected {last}"));
        }
        let book = e.latest_book(&ins).map(|b| (*b).clone());
        let want = expected_book(w, k, n);
        if book != want {
            return Err(format!("writer {w}: book of {ins:?} is {book:?}, expected {want:?}"));
        }
    }
    // Each instrument made by a batch of the prefix holds that batch's tick; the next
    // one, from a batch after it, does not exist.
    let mut b = NEW_EVERY - 1;
    loop {
        let ins = new_instrument(w, b);
        let ticks: Vec<f64> = e
            .ticks(&ins, i64::MIN, i64::MAX)
            .map(|t| t.map(|t| t.last_price))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let latest = e.latest_tick(&ins).map(|t| t.last_price);
        if b < n && (ticks != [b as f64] || latest != Some(b as f64)) {
            return Err(format!("writer {w}: the new instrument {ins:?} of batch {b} has ticks {ticks:?}, latest {latest:?} (P2)"));
        }
        if b >= n {
            if !ticks.is_empty() || latest.is_some() {
                return Err(format!("writer {w}: {ins:?} of batch {b}, after {n}, has ticks (P3)"));
            }
            break;
        }
        b += NEW_EVERY;
    }
    for b in (0..n).step_by(10) {
        if e.user(&format!("crash-user-{w}-{b}")).map_err(|e| e.to_string())?.is_none() {
            return Err(format!("writer {w}: batch {b} is present but its user is not (P4)"));
        }
    }
    if e.user(&format!("crash-user-{w}-{}", n.div_ceil(10) * 10))
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err(format!("writer {w}: a user from a batch after {n} is present (P3)"));
    }
    Ok(n)
}

/// How many batches writer `w` has in the store: its account's deposit marks the last.
fn batches_of(e: &Engine, w: u64) -> Result<u64, String> {
    let accounts = e.accounts(&account(w)).map_err(|e| e.to_string())?;
    Ok(accounts.first().map_or(0, |a| a.deposit as u64 + 1))
}

fn child(data: &Path, acks: &Path, ready: &Path, writers: u64) -> Result<(), String> {
    let e = Arc::new(Engine::open(data, options()).map_err(|e| e.to_string())?);
    let starts: Vec<u64> = (0..writers).map(|w| batches_of(&e, w)).collect::<Result<_, _>>()?;
    std::fs::write(ready, b"ready").map_err(|e| e.to_string())?;
    let log = Arc::new(parking_lot::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(acks)
            .map_err(|e| e.to_string())?,
    ));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (e, log, mut b) = (e.clone(), log.clone(), starts[w as usize]);
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let d = durability(b);
                    e.submit(&batch(w, b), d).map_err(|e| e.to_string())?;
                    if d != Durability::Accepted {
                        // One write call per line, made before the next batch starts: SIGKILL
                        // keeps what the OS has, and can at worst cut the last line.
                        let line = format!("{w} {b}\n");
                        log.lock().write_all(line.as_bytes()).map_err(|e| e.to_string())?;
                    }
                    b += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "writer panicked".to_string())??;
    }
    Ok(())
}

fn run(dir: &Path, cycles: u64, seed: u64, writers: u64) -> Result<(), String> {
    let data = dir.join("data");
    let acks = dir.join("acks");
    let ready = dir.join("ready");
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = seed.max(1);
    let mut next = move || {
        // xorshift64: enough to spread the kill moments.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut total_acked = 0usize;
    for cycle in 1..=cycles {
        let _ = std::fs::remove_file(&acks);
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(&exe)
            .arg("child")
            .arg("--data")
            .arg(&data)
            .arg("--acks")
            .arg(&acks)
            .arg("--ready")
            .arg(&ready)
            .arg("--writers")
            .arg(writers.to_string())
            .spawn()
            .map_err(|e| e.to_string())?;
        // One cycle in four kills at a random moment from the start (often during
        // recovery); the others let the workload run for a random time first.
        let during_recovery = next() % 4 == 0;
        let spawned = Instant::now();
        if !during_recovery {
            while !ready.exists() && spawned.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let wait = Duration::from_millis(next() % 700);
        std::thread::sleep(wait);
        let wait = spawned.elapsed();
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("cycle {cycle}: the child exited by itself ({status})"));
        }
        child.kill().map_err(|e| e.to_string())?;
        let _ = child.wait();
        // Check.
        let e =
            Engine::open(&data, options()).map_err(|e| format!("cycle {cycle}: reopen: {e}"))?;
        let mut counts = Vec::new();
        for w in 0..writers {
            counts.push(check_writer(&e, w).map_err(|m| format!("cycle {cycle}: {m}"))?);
        }
        let text = std::fs::read_to_string(&acks).unwrap_or_default();
        let mut acked = 0;
        for line in text.lines() {
            if !text.ends_with('\n') && text.lines().last() == Some(line) {
                // The last line may be cut by the kill (no newline yet): it acknowledges
                // nothing, since the ack was not complete.
                continue;
            }
            let mut it = line.split(' ').map(str::parse::<u64>);
            let (Some(Ok(w)), Some(Ok(b))) = (it.next(), it.next()) else {
                // The last line can be cut by the kill; a cut line acknowledges nothing.
                continue;
            };
            acked += 1;
            if counts.get(w as usize).is_none_or(|n| b >= *n) {
                return Err(format!(
                    "cycle {cycle}: writer {w} batch {b} was acknowledged but is lost (P1); \
                     the store holds {:?} batches",
                    counts.get(w as usize)
                ));
            }
        }
        total_acked += acked;
        drop(e);
        println!(
            "cycle {cycle}/{cycles}: killed {} ms after start{}, {acked} acks checked, batches per writer {counts:?}",
            wait.as_millis(),
            if during_recovery { " (at a random moment)" } else { " (while writing)" }
        );
    }
    println!(
        "bourse-crashtest: {cycles} cycles, {total_acked} acknowledged batches checked, 0 violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: u64| {
        flag(&args, name)
            .map_or(Ok(default), |v| v.parse::<u64>().map_err(|e| format!("{name}: {e}")))
    };
    let result = match args.get(1).map(String::as_str) {
        Some("run") => {
            match (flag(&args, "--dir"), num("--cycles", 10), num("--seed", 1), num("--writers", 4))
            {
                (Some(dir), Ok(c), Ok(s), Ok(w)) => run(&PathBuf::from(dir), c, s, w.max(1)),
                (None, ..) => Err("run needs --dir DIR".into()),
                (_, c, s, w) => Err(format!("bad arguments: {:?}", [c.err(), s.err(), w.err()])),
            }
        }
        Some("child") => {
            let (d, a, r) = (flag(&args, "--data"), flag(&args, "--acks"), flag(&args, "--ready"));
            match (d, a, r, num("--writers", 4)) {
                (Some(d), Some(a), Some(r), Ok(w)) => {
                    child(Path::new(&d), Path::new(&a), Path::new(&r), w.max(1))
                }
                _ => Err("child needs --data, --acks, --ready and --writers".into()),
            }
        }
        _ => {
            Err("usage: bourse-crashtest run --dir DIR [--cycles N] [--seed S] [--writers W]"
                .into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bourse-crashtest: {e}");
            ExitCode::FAILURE
        }
    }
}
