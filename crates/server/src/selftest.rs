//! `bourse selftest`: the store on its own, end to end, in one command.
//!
//! Submits an exchange-shaped event mix to the engine from several threads with
//! `Durable` acknowledgements (one WAL, group commit, partitions per instrument),
//! reopens it (recovery replays the WAL tail), runs a few queries, checkpoints, replays
//! the journal, verifies the data directory and prints a few decoded records.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bourse_engine::{Durability, Engine, EngineOptions, OrderFilter};
use bourse_fs::RealFs;
use bourse_model::samples::{mixed_kind, sample};
use bourse_model::{Event, EventKind};
use bourse_wal::{Wal, WalOptions};
use indicatif::{ProgressBar, ProgressStyle};

fn wal_options() -> WalOptions {
    WalOptions { segment_bytes: 64 << 20, ..WalOptions::default() }
}

fn engine_options() -> EngineOptions {
    EngineOptions { wal: wal_options(), ..EngineOptions::default() }
}

pub(crate) fn run(
    data: &Path,
    events: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<ExitCode> {
    let t = Instant::now();
    let engine = Arc::new(
        Engine::open(data, engine_options())
            .with_context(|| format!("opening {}", data.display()))?,
    );
    let start_lsn = engine.applied_lsn();
    println!("Bourse selftest: store in {}", data.display());
    println!("  opened in {:.2?}: the journal ends at LSN {start_lsn}", t.elapsed());
    let elapsed = write(&engine, start_lsn, events, writers.max(1), batch.clamp(1, 4096))?;
    let stats = engine.stats();
    println!(
        "  submitted {events} events with {writers} writers x batches of {batch}, Durable: {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  group commit: {} batches shared {} fdatasyncs ({:.1} batches per sync); {} partitions",
        stats.wal.batches,
        stats.wal.syncs,
        stats.wal.batches as f64 / stats.wal.syncs.max(1) as f64,
        stats.partitions.len()
    );
    drop(engine);

    let t = Instant::now();
    let engine = Engine::open_with(RealFs::shared(), data, engine_options(), &mut |p| {
        if p.done && p.records > 0 {
            println!(
                "  recovery replayed {} WAL records ({:.1} MB) after LSN {} in {:.2?}",
                p.records,
                p.bytes as f64 / 1e6,
                p.from,
                p.elapsed
            );
        }
    })?;
    println!("  reopened in {:.2?}: applied LSN {}", t.elapsed(), engine.applied_lsn());
    queries(&engine)?;
    let t = Instant::now();
    let first = engine.checkpoint()?;
    println!(
        "  checkpoint in {:.2?}: every partition flushed, the WAL now starts at LSN {first}",
        t.elapsed()
    );
    engine.close()?;

    let wal = Wal::open(RealFs::shared(), crate::wal_dir(data), wal_options())?;
    replay(&wal)?;
    drop(wal);
    println!();
    let code = crate::verify::run(data)?;
    println!();
    println!(
        "Next: `bourse inspect wal {}/wal --limit 20`, `bourse backup --data {} --to BACKUP_DIR`, or run the selftest again to append more.",
        data.display(),
        data.display()
    );
    Ok(code)
}

/// A few queries, each at one snapshot.
fn queries(engine: &Engine) -> anyhow::Result<()> {
    for id in engine.instruments().iter().take(5) {
        let t = Instant::now();
        let tick = engine.latest_tick(id);
        let took = t.elapsed();
        if let Some(tick) = tick {
            let trades = engine.trades(id, i64::MIN, i64::MAX).take(100_000).count();
            println!(
                "  {:<14} last {:>10.1}  volume {:>8}  (latest tick from memory in {took:.2?}); {trades} trades stored",
                id.as_str(),
                tick.last_price,
                tick.volume
            );
        }
    }
    let user = "acct0001";
    let open = engine.orders(user, OrderFilter::Open).count();
    let all = engine.orders(user, OrderFilter::All).count();
    let trades = engine.user_trades(user).count();
    println!(
        "  account {user}: {all} orders ({open} open), {trades} trades, {} positions",
        engine.positions(user)?.len()
    );
    Ok(())
}

fn write(
    engine: &Arc<Engine>,
    start: u64,
    events: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let bar = ProgressBar::new(events);
    bar.set_style(ProgressStyle::with_template(
        "  {bar:40} {pos}/{len} events, {per_sec}, eta {eta}",
    )?);
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (engine, next, bar) = (engine.clone(), next.clone(), bar.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut batch_events: Vec<Event> = Vec::with_capacity(batch);
                loop {
                    let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                    if first >= events {
                        return Ok(());
                    }
                    let n = (events - first).min(batch as u64);
                    batch_events.clear();
                    for i in first..first + n {
                        let mut e = sample(mixed_kind(start + i), start + i);
                        stamp(&mut e);
                        batch_events.push(e);
                    }
                    engine.submit(&batch_events, Durability::Durable)?;
                    bar.inc(n);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    bar.finish_and_clear();
    Ok(t.elapsed())
}

/// Gives market data the current time, so time-range queries look like a live day.
fn stamp(e: &mut Event) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    match e {
        Event::Tick(t) => t.datetime = now,
        Event::BookDelta(d) => d.datetime = now,
        Event::TradeExecuted(t) => t.trade_date_time = now,
        _ => {}
    }
}

fn replay(wal: &Wal) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut reader = wal.read_from(wal.first_lsn())?;
    let mut counts = [0u64; EventKind::ALL.len()];
    let mut bytes = 0u64;
    let mut shown = 0;
    let mut first_records = Vec::new();
    while let Some(r) = reader.next_record()? {
        bytes += r.payload.len() as u64 + 28;
        if let Some(k) = EventKind::from_u16(r.kind) {
            counts[usize::from(k.as_u16() - 1)] += 1;
        }
        if shown < 3 {
            shown += 1;
            first_records.push((r.lsn, Event::decode(r.payload)?));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "  replayed {:.1} MB in {:.2?} ({:.2} GB/s, records decoded: first three shown)",
        bytes as f64 / 1e6,
        t.elapsed(),
        bytes as f64 / secs / 1e9
    );
    for (lsn, e) in first_records {
        let json = e.to_json();
        let short: String = json.chars().take(140).collect();
        println!("    LSN {lsn}: {short}{}", if json.len() > short.len() { " ..." } else { "" });
    }
    let per_kind: Vec<String> = EventKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(k, c)| format!("{} {c}", k.name()))
        .collect();
    println!("  by kind: {}", per_kind.join(", "));
    Ok(())
}
