//! `bourse demo`: what exists so far, end to end, in one command.
//!
//! Writes an exchange-shaped event mix through the WAL from several threads with
//! `Durable` acknowledgements (group commit), reopens it (recovery), replays it, verifies
//! it and prints a few decoded records.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bourse_fs::RealFs;
use bourse_model::samples::sample;
use bourse_model::{Event, EventKind};
use bourse_wal::{Durability, Entry, Wal, WalOptions};
use indicatif::{ProgressBar, ProgressStyle};

/// The event mix of a busy futures exchange: mostly market data, then order flow.
const MIX: [(EventKind, u32); 9] = [
    (EventKind::Tick, 40),
    (EventKind::BookDelta, 25),
    (EventKind::OrderRequested, 10),
    (EventKind::OrderAccepted, 8),
    (EventKind::TradeExecuted, 6),
    (EventKind::AccountUpdated, 4),
    (EventKind::PositionUpdated, 4),
    (EventKind::CancelRequested, 2),
    (EventKind::OrderCancelled, 1),
];

fn kind_for(n: u64) -> EventKind {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut x = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32 % total;
    for (kind, w) in MIX {
        if x < w {
            return kind;
        }
        x -= w;
    }
    EventKind::Tick
}

fn wal_options() -> WalOptions {
    WalOptions { segment_bytes: 64 << 20, ..WalOptions::default() }
}

pub(crate) fn run(
    data: &Path,
    events: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<ExitCode> {
    let dir = crate::wal_dir(data);
    let t = Instant::now();
    let wal = Arc::new(
        Wal::open(RealFs::shared(), &dir, wal_options())
            .with_context(|| format!("opening {}", dir.display()))?,
    );
    let start_lsn = wal.last_lsn();
    println!("Bourse demo: journal in {}", dir.display());
    println!("  opened in {:.2?}: existing log ends at LSN {start_lsn}", t.elapsed());
    let (elapsed, bytes) = write(&wal, events, writers.max(1), batch.clamp(1, 4096))?;
    let stats = wal.stats();
    println!(
        "  appended {events} events ({:.1} MB) with {writers} writers x batches of {batch}, Durable: {:.0} events/s",
        bytes as f64 / 1e6,
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  group commit: {} batches shared {} fdatasyncs ({:.1} batches per sync), {} segment rotations",
        stats.batches,
        stats.syncs,
        stats.batches as f64 / stats.syncs.max(1) as f64,
        stats.rotations
    );
    drop(wal);

    let t = Instant::now();
    let wal = Wal::open(RealFs::shared(), &dir, wal_options())?;
    println!(
        "  reopened (recovery) in {:.2?}: LSN {}..={}",
        t.elapsed(),
        wal.first_lsn(),
        wal.last_lsn()
    );
    replay(&wal)?;
    drop(wal);
    println!();
    let code = crate::verify::run(data)?;
    println!();
    println!(
        "Next: `bourse inspect wal {}/wal --limit 20`, or run the demo again to append more.",
        data.display()
    );
    Ok(code)
}

fn write(
    wal: &Arc<Wal>,
    events: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<(Duration, u64)> {
    let bar = ProgressBar::new(events);
    bar.set_style(ProgressStyle::with_template(
        "  {bar:40} {pos}/{len} events, {per_sec}, eta {eta}",
    )?);
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (wal, next, bytes, bar) = (wal.clone(), next.clone(), bytes.clone(), bar.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(batch);
                loop {
                    let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                    if first >= events {
                        return Ok(());
                    }
                    let n = (events - first).min(batch as u64);
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64);
                    payloads.clear();
                    let mut kinds = Vec::with_capacity(batch);
                    for i in first..first + n {
                        let kind = kind_for(i);
                        payloads.push(sample(kind, i).encode()?);
                        kinds.push(kind);
                    }
                    let entries: Vec<Entry<'_>> = payloads
                        .iter()
                        .zip(&kinds)
                        .map(|(p, k)| Entry { kind: k.as_u16(), timestamp: now, payload: p })
                        .collect();
                    wal.append_batch(&entries, Durability::Durable)?;
                    bytes.fetch_add(
                        payloads.iter().map(|p| p.len() as u64 + 28).sum(),
                        Ordering::Relaxed,
                    );
                    bar.inc(n);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    bar.finish_and_clear();
    Ok((t.elapsed(), bytes.load(Ordering::Relaxed)))
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
