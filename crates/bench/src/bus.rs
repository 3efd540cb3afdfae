//! `bus`: in-process one-way latency and throughput of the bus's ring, a bare SPSC ring
//! (rtrb) as the floor, replay from the WAL through a subscriber, and (`ipc.rs`) the
//! cross-process case over iceoryx2.
//!
//! Latency: the publisher writes its send time (ns since a shared `Instant`) into the
//! first 8 bytes of the payload and paces itself; each subscriber takes the difference
//! when it sees the event. One subscriber spins on its own core; with 4 and 16 on a
//! 2-core machine they sleep until woken (spinning would starve the publisher), so
//! those numbers include a futex wake-up. The one-subscriber latency runs interleaved
//! with the floor's, in rounds (3 quick, 10 full), and is also reported as the median
//! round with its ratios to the floor.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bourse_bus::{Bus, BusOptions, Message, OnLag, Policy, SubscribeOptions};
use bourse_engine::{Durability, Engine, EngineOptions};
use bourse_model::samples::{mixed_kind, sample};
use bourse_model::EventKind;
use serde_json::json;

use hdrhistogram::Histogram;

use crate::report::{emit, histogram, record, Latency, Rounds};

const SUITE: &str = "bus";

/// The send time of a warm-up event (not measured).
const WARM_UP: u64 = u64::MAX;

fn ns_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn stamp(buf: &mut [u8], t: u64) {
    buf[..8].copy_from_slice(&t.to_le_bytes());
}

fn read_stamp(buf: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[..8]);
    u64::from_le_bytes(b)
}

/// Busy-waits `d` (pacing between latency samples).
fn pause(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

pub fn run(dir: &Path, quick: bool) -> anyhow::Result<()> {
    let samples = if quick { 10_000 } else { 100_000 };
    let burst = if quick { 1_000_000 } else { 5_000_000 };
    // The machine's own stalls, the floor under the latency percentiles below.
    crate::stall::stall_floor(SUITE, Duration::from_secs(if quick { 1 } else { 3 }))?;
    spsc_floor_throughput::<64>(burst)?;
    spsc_floor_throughput::<512>(burst)?;
    let rounds = if quick { 3 } else { 10 };
    for bytes in [64usize, 512] {
        one_subscriber_latency(bytes, samples, rounds)?;
        for subs in [1usize, 4, 16] {
            inproc(bytes, subs, samples, burst)?;
        }
    }
    replay(dir, quick)?;
    crate::ipc::run(quick, dir)?;
    Ok(())
}

/// One round of the floor's latency: `samples` paced pushes of `N`-byte arrays through
/// rtrb. The least a bus must do is done on each side: the writer writes every byte of
/// the event into a ring slot after taking its time stamp, and the reader reads every
/// byte before taking its own. The ring's slots are written once before the clock
/// starts, as the bus ring is when it is made, so no sample pays a page fault.
///
/// Until the fifteenth session each sample was a `Vec` allocated before the round and
/// written only after its stamp. Where the allocator handed out pages not yet touched,
/// the first write to each page faulted inside the measured window (up to one sample in
/// 8 at 512 B, one in 64 at 64 B), and the floor's p99 (1.3–8.9 µs) was often above the
/// bus's.
fn spsc_floor_round<const N: usize>(samples: u64) -> anyhow::Result<Histogram<u64>> {
    const SLOTS: usize = 4096;
    let base = Instant::now();
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; N]>::new(SLOTS);
    for _ in 0..SLOTS {
        if tx.push([0u8; N]).is_err() || rx.pop().is_err() {
            anyhow::bail!("the floor ring refused a warm-up slot");
        }
    }
    let n = samples;
    let warm = Arc::new(AtomicU64::new(0));
    let seen = warm.clone();
    let reader = std::thread::spawn(move || {
        let mut h = histogram();
        let mut got = 0;
        while got < n {
            if let Ok(v) = rx.pop() {
                std::hint::black_box(v.iter().fold(0u8, |a, b| a ^ b));
                let now = ns_since(base);
                if read_stamp(&v) == WARM_UP {
                    seen.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                record(&mut h, Duration::from_nanos(now.saturating_sub(read_stamp(&v))));
                got += 1;
            } else {
                std::hint::spin_loop();
            }
        }
        h
    });
    // Warm-up, not measured, as in the bus's rounds: until the reader has seen 64
    // events, so that its thread's start does not count as latency.
    while warm.load(Ordering::Relaxed) < 64 {
        let mut b = [0u8; N];
        stamp(&mut b, WARM_UP);
        if tx.push(b).is_err() {
            std::hint::spin_loop();
        }
        pause(Duration::from_micros(2));
        anyhow::ensure!(base.elapsed() < Duration::from_secs(30), "the floor's reader never woke");
    }
    for i in 0..n {
        let mut b = [0u8; N];
        stamp(&mut b, ns_since(base));
        b[8..].fill(i as u8);
        while let Err(rtrb::PushError::Full(v)) = tx.push(b) {
            b = v;
        }
        pause(Duration::from_micros(2));
    }
    reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))
}

/// One-subscriber latency, interleaved with the floor: `rounds` rounds, each running
/// the floor and then the bus with a share of the samples, so a slow stretch of the
/// machine falls on both alike. Reports both over all samples and as the median
/// round, and the bus's ratios to the floor.
fn one_subscriber_latency(bytes: usize, samples: u64, rounds: u64) -> anyhow::Result<()> {
    let (floor_on, bus_on) = (crate::report::wanted("spsc_floor"), crate::report::wanted("inproc"));
    if !floor_on && !bus_on {
        return Ok(());
    }
    let (mut floor, mut bus) = (Rounds::new(), Rounds::new());
    let mut lagged = 0;
    for round in 0..rounds {
        eprintln!("latency {bytes} B, 1 subscriber: round {} of {rounds}", round + 1);
        if floor_on {
            let n = samples / rounds;
            floor.add(&match bytes {
                64 => spsc_floor_round::<64>(n)?,
                512 => spsc_floor_round::<512>(n)?,
                _ => anyhow::bail!("no floor for {bytes}-byte events"),
            })?;
        }
        if bus_on {
            let (h, l) = inproc_latency_round(bytes, 1, samples / rounds)?;
            bus.add(&h)?;
            lagged += l;
        }
    }
    if floor_on {
        floor.emit(SUITE, "spsc_floor", "raw", &json!({"bytes": bytes}));
    }
    if bus_on {
        let params = json!({"subscribers": 1, "bytes": bytes});
        bus.emit(SUITE, "inproc", "bourse", &params);
        emit(SUITE, "inproc", "bourse", &params, "lagged_in_latency_run", lagged as f64, "events");
        if floor_on {
            bus.emit_ratios(&floor, "raw", (SUITE, "inproc", "bourse"), &params);
        }
    }
    Ok(())
}

/// Floor throughput: `N`-byte arrays through rtrb, no allocation; the reader reads every
/// byte it pops (`black_box`), as a subscriber copying the payload out would.
fn spsc_floor_throughput<const N: usize>(burst: u64) -> anyhow::Result<()> {
    if !crate::report::wanted("spsc_floor") {
        return Ok(());
    }
    // As many bytes as the bus ring (64 MiB by default): a writer that runs ahead
    // of its reader spills the same amount of memory out of the caches.
    let slots = BusOptions::default().ring_bytes / N;
    let (mut tx, mut rx) = rtrb::RingBuffer::<[u8; N]>::new(slots);
    // One lap before the clock starts, so that its memory is resident (the bus ring
    // is written once when it is made).
    for _ in 0..slots {
        if tx.push([0u8; N]).is_err() || rx.pop().is_err() {
            anyhow::bail!("the floor ring refused a warm-up slot");
        }
    }
    let t = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        while got < burst {
            if let Ok(m) = rx.pop() {
                std::hint::black_box(&m);
                got += 1;
            }
        }
    });
    let msg = [7u8; N];
    let mut sent = 0;
    while sent < burst {
        if tx.push(msg).is_ok() {
            sent += 1;
        }
    }
    reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let rate = burst as f64 / t.elapsed().as_secs_f64();
    emit(SUITE, "spsc_floor", "raw", &json!({"bytes": N}), "throughput", rate, "msg/s");
    Ok(())
}

/// Latency with `subs` subscribers (more than one: a single run; one: see
/// [`one_subscriber_latency`]), then throughput.
fn inproc(bytes: usize, subs: usize, samples: u64, burst: u64) -> anyhow::Result<()> {
    if !crate::report::wanted("inproc") {
        return Ok(());
    }
    let spin = if subs == 1 { Duration::from_millis(50) } else { Duration::ZERO };
    if subs > 1 {
        let params = json!({"subscribers": subs, "bytes": bytes});
        let (h, lagged) = inproc_latency_round(bytes, subs, samples)?;
        Latency::of(&h).emit(SUITE, "inproc", "bourse", &params);
        emit(SUITE, "inproc", "bourse", &params, "lagged_in_latency_run", lagged as f64, "events");
    }
    // Throughput, one publish call per message and (as the engine publishes its
    // batches) 64 per call.
    for batch in [1, 64] {
        inproc_throughput(bytes, subs, burst, batch, spin)?;
    }
    Ok(())
}

/// One latency run: `samples` paced publishes to `subs` live subscribers
/// (`DropOldest`; nothing should lag at this pace). Returns the merged histogram and
/// how many events lagged.
fn inproc_latency_round(
    bytes: usize,
    subs: usize,
    samples: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let base = Instant::now();
    let spin = if subs == 1 { Duration::from_millis(50) } else { Duration::ZERO };
    let (bus, p) = Bus::detached(BusOptions::default())?;
    let start = Arc::new(Barrier::new(subs + 1));
    let warm = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..subs)
        .map(|_| {
            let mut s = bus.subscribe(SubscribeOptions::live().spin(spin))?;
            let (start, warm) = (start.clone(), warm.clone());
            Ok(std::thread::spawn(move || -> anyhow::Result<_> {
                let mut h = histogram();
                let mut got = 0u64;
                let mut lagged = 0u64;
                start.wait();
                while got + lagged < samples {
                    match s.next(Duration::from_secs(5))? {
                        Some(Message::Event(d)) if read_stamp(d.payload) == WARM_UP => {
                            warm.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Message::Event(d)) => {
                            let now = ns_since(base);
                            record(
                                &mut h,
                                Duration::from_nanos(now.saturating_sub(read_stamp(d.payload))),
                            );
                            got += 1;
                        }
                        Some(Message::Lagged { from, to }) => lagged += to - from + 1,
                        Some(Message::Heartbeat { .. }) => {}
                        None => anyhow::bail!("no event for 5 s"),
                    }
                }
                Ok((h, lagged))
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    start.wait();
    let mut payload = vec![0u8; bytes];
    let pace = Duration::from_micros(match subs {
        1 => 2,
        4 => 60,
        _ => 250,
    });
    // Warm-up, not measured: until every subscriber has seen 64 events, so that a
    // subscriber thread still waking from the barrier does not count as latency.
    stamp(&mut payload, WARM_UP);
    let mut lsn = 0;
    while warm.load(Ordering::Relaxed) < 64 * subs as u64 {
        lsn += 1;
        p.publish_raw(lsn, 0, EventKind::Extension, &payload)?;
        pause(pace);
        anyhow::ensure!(base.elapsed() < Duration::from_secs(30), "the subscribers never woke");
    }
    for lsn in lsn + 1..=lsn + samples {
        stamp(&mut payload, ns_since(base));
        p.publish_raw(lsn, 0, EventKind::Extension, &payload)?;
        // Paced above the cost of waking every subscriber on 2 cores, so the
        // numbers are latency, not queueing.
        pause(pace);
    }
    let mut all = histogram();
    let mut lagged = 0;
    for r in readers {
        let (h, l) = r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        all.add(&h).map_err(|e| anyhow::anyhow!("{e}"))?;
        lagged += l;
    }
    Ok((all, lagged))
}

/// Throughput: as fast as possible, Block so no subscriber loses anything; `batch`
/// messages per publish call.
fn inproc_throughput(
    bytes: usize,
    subs: usize,
    burst: u64,
    batch: u64,
    spin: Duration,
) -> anyhow::Result<()> {
    let params = json!({"subscribers": subs, "bytes": bytes, "batch": batch});
    let (bus, p) = Bus::detached(BusOptions::default())?;
    let n = if subs == 1 { burst } else { burst / 4 };
    let done = Arc::new(AtomicBool::new(false));
    let policy = Policy::Block { budget: Duration::from_secs(10) };
    let start = Arc::new(Barrier::new(subs + 1));
    let readers: Vec<_> = (0..subs)
        .map(|_| {
            let mut s = bus.subscribe(SubscribeOptions::live().policy(policy).spin(spin))?;
            let start = start.clone();
            let done = done.clone();
            Ok(std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut got = 0u64;
                start.wait();
                while got < n {
                    match s.next(Duration::from_secs(5))? {
                        Some(Message::Event(_)) => got += 1,
                        Some(Message::Lagged { .. }) => anyhow::bail!("a Block subscriber lagged"),
                        _ if done.load(Ordering::Acquire) => break,
                        _ => {}
                    }
                }
                Ok(got)
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    start.wait();
    let payload = vec![1u8; bytes];
    let payloads = vec![payload.as_slice(); batch as usize];
    let t = Instant::now();
    if batch == 1 {
        for lsn in 1..=n {
            p.publish_raw(lsn, 0, EventKind::Extension, &payload)?;
        }
    } else {
        let mut lsn = 1;
        while lsn <= n {
            let k = batch.min(n - lsn + 1);
            p.publish_raw_batch(lsn, 0, EventKind::Extension, &payloads[..k as usize])?;
            lsn += k;
        }
    }
    done.store(true, Ordering::Release);
    let mut delivered = 0;
    for r in readers {
        delivered += r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    emit(SUITE, "inproc", "bourse", &params, "throughput", n as f64 / secs, "msg/s");
    emit(SUITE, "inproc", "bourse", &params, "deliveries", delivered as f64 / secs, "msg/s");
    Ok(())
}

fn replay(dir: &Path, quick: bool) -> anyhow::Result<()> {
    if !crate::report::wanted("replay") {
        return Ok(());
    }
    let n: u64 = if quick { 300_000 } else { 2_000_000 };
    let path = dir.join("bus-replay");
    let engine = Arc::new(Engine::open(&path, EngineOptions::default())?);
    let mut i = 0;
    let mut bytes = 0u64;
    while i < n {
        let batch: Vec<_> = (i..i + 256).map(|j| sample(mixed_kind(j), j)).collect();
        for e in &batch {
            bytes += e.encode()?.len() as u64;
        }
        engine.submit(&batch, Durability::Buffered)?;
        i += 256;
    }
    let n = i;
    let params = json!({"events": n, "payload_bytes": bytes});
    // Measure a quiet engine: flush the memtables the writes filled now (the WAL held
    // from LSN 1), rather than time the reads against the flushes' background work on
    // a small machine's other core.
    let hold = engine.pin_wal(1);
    engine.checkpoint()?;
    // ... and the WAL's dirty pages written back, so the kernel's writeback threads do
    // not share the cores with the reads either.
    engine.sync()?;
    anyhow::ensure!(engine.first_retained_lsn() == 1, "the WAL was truncated past LSN 1");
    // ... and the compactions those flushes start (up to 60 s).
    let settle = Instant::now();
    while settle.elapsed() < std::time::Duration::from_secs(60)
        && engine.stats().partitions.iter().any(|p| p.tree.pending_compaction_bytes > 0)
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!("replay: compactions settled after {:?}", settle.elapsed());
    // Floor: the engine's commit stream, raw records, no bus.
    let t = Instant::now();
    let mut s = engine.commits(1)?;
    let mut got = 0;
    while s.next_raw()?.is_some() {
        got += 1;
    }
    anyhow::ensure!(got == n, "commit stream gave {got} of {n}");
    let secs = t.elapsed().as_secs_f64();
    emit(
        SUITE,
        "replay",
        "commit_stream",
        &params,
        "throughput",
        bytes as f64 / secs / 1e9,
        "GB/s",
    );
    // The bus: a subscriber from LSN 1 (replays the WAL, then would switch to live).
    let bus = Bus::attach(engine.clone(), BusOptions::default())?;
    let mut sub = bus.subscribe(SubscribeOptions::from_lsn(1).on_lag(OnLag::Replay))?;
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        match sub.try_next()? {
            Some(Message::Event(_)) => got += 1,
            Some(m) => anyhow::bail!("unexpected {m:?}"),
            None => anyhow::bail!("replay stopped at {got} of {n}"),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    emit(SUITE, "replay", "bourse", &params, "throughput", bytes as f64 / secs / 1e9, "GB/s");
    emit(SUITE, "replay", "bourse", &params, "events", n as f64 / secs, "events/s");
    drop(sub);
    drop(bus);
    drop(hold);
    if let Ok(e) = Arc::try_unwrap(engine) {
        e.close()?;
    }
    Ok(())
}
