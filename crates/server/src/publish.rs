//! `bourse publish`: a store whose committed events other processes read over
//! iceoryx2 shared memory, optionally fed with the exchange-shaped sample mix.
//!
//! It opens the engine, attaches the bus and an [`IpcBridge`], and (with `--rate`)
//! writes events at that rate until `--seconds` pass or SIGINT/SIGTERM arrives, then
//! checkpoints and closes cleanly. Pair it with the `ipc_subscribe` example of
//! `bourse-bus`. The server (`bourse serve`) will run the same bridge.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bourse_bus::ipc::{IpcBridge, IpcOptions};
use bourse_bus::{Bus, BusOptions};
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::{mixed_kind, sample};

pub(crate) fn run(
    data: &Path,
    instance: &str,
    rate: u64,
    seconds: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Release))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let floor = bourse_bus::cursor_floor(data)?;
    let opts = EngineOptions { wal_hold_at_open: floor, ..EngineOptions::default() };
    let engine =
        Arc::new(Engine::open(data, opts).with_context(|| format!("opening {}", data.display()))?);
    let bus = Bus::attach(engine.clone(), BusOptions::default())?;
    let bridge =
        IpcBridge::start(&bus, IpcOptions { instance: instance.into(), ..IpcOptions::default() })
            .context("starting the iceoryx2 bridge")?;
    println!(
        "Bourse publishes {} over iceoryx2 as instance {instance:?} (services bourse/{instance}/all, .../trades, ...); the journal ends at LSN {}",
        data.display(),
        engine.applied_lsn()
    );
    println!("  read it from another process: cargo run --release -p bourse-bus --example ipc_subscribe -- --instance {instance}");
    let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut last_report = Instant::now();
    let mut next = engine.applied_lsn() + 1;
    while !stop.load(Ordering::Acquire) && until.is_none_or(|u| Instant::now() < u) {
        if rate == 0 {
            std::thread::sleep(Duration::from_millis(50));
        } else {
            // Paced in batches of 1 ms worth of events.
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            if written < due {
                let n = (due - written).min(4096);
                let batch: Vec<_> = (next..next + n).map(|i| sample(mixed_kind(i), i)).collect();
                let r = engine.submit(&batch, Durability::Buffered)?;
                next = r.last.0 + 1;
                written += n;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let s = bridge.stats();
            println!(
                "  LSN {}: {} events published as {} frames, {} heartbeats, {} requests ({} events replayed), {} dead nodes removed",
                engine.applied_lsn(),
                s.events,
                s.frames,
                s.heartbeats,
                s.requests,
                s.replayed,
                s.dead_nodes_removed
            );
        }
    }
    println!("  stopping: {written} events written");
    drop(bridge);
    drop(bus);
    engine.checkpoint()?;
    match Arc::try_unwrap(engine) {
        Ok(e) => e.close()?,
        Err(_) => anyhow::bail!("the engine is still shared at close"),
    }
    Ok(ExitCode::SUCCESS)
}
