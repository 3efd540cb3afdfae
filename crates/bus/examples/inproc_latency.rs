//! In-process latency round by round, for chasing tails: each round publishes
//! `SAMPLES` stamped events of `BYTES` bytes, one every 2 µs, to one live subscriber on
//! a detached bus (as `bourse-bench bus` does), and prints the round's p50, p99 and
//! maximum, how many deliveries took over 20 µs, and the subscriber thread's voluntary
//! and involuntary context switches during the round (from `/proc`). With `FLOOR` set,
//! the same rounds hand the stamps over through a preallocated array and a published
//! count instead (the least a cross-core queue costs), for comparison. With
//! `PUBLISH_ONLY` set, it times the publish call alone (no subscriber), `ROUNDS` times
//! `SAMPLES` calls. With `THROUGHPUT` set, each round publishes `SAMPLES` events one
//! call each, as fast as it can, to one spinning `Block` subscriber, and prints the
//! messages per second (the bench's `inproc` throughput case at batch 1).
//!
//! `cargo run --release -p bourse-bus --example inproc_latency -- [BYTES] [ROUNDS] [SAMPLES]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bourse_bus::{Bus, BusOptions, Message, Policy, SubscribeOptions};
use bourse_model::EventKind;

fn ns_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// This thread's (voluntary, involuntary) context switches so far.
fn switches() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("voluntary_ctxt_switches:"), get("nonvoluntary_ctxt_switches:"))
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let bytes = args.first().copied().unwrap_or(64).max(8);
    let rounds = args.get(1).copied().unwrap_or(10);
    let samples = args.get(2).copied().unwrap_or(100_000) as u64;
    if std::env::var_os("PUBLISH_ONLY").is_some() {
        // The publish call alone, no subscriber: its cost per message.
        let (_bus, p) = Bus::detached(BusOptions::default()).unwrap();
        let payload = vec![0u8; bytes];
        for r in 0..rounds {
            let t = Instant::now();
            for i in 0..samples {
                p.publish_raw(r as u64 * samples + i + 1, 0, EventKind::Extension, &payload)
                    .unwrap();
            }
            println!("publish: {:.1} ns per call", t.elapsed().as_nanos() as f64 / samples as f64);
        }
        return;
    }
    if std::env::var_os("THROUGHPUT").is_some() {
        for _ in 0..rounds {
            throughput_round(bytes, samples);
        }
        return;
    }
    let floor = std::env::var_os("FLOOR").is_some();
    for round in 0..rounds {
        let base = Instant::now();
        if floor {
            floor_round(round, base, samples);
            continue;
        }
        let (bus, p) = Bus::detached(BusOptions::default()).unwrap();
        let mut s =
            bus.subscribe(SubscribeOptions::live().spin(Duration::from_millis(50))).unwrap();
        let start = Arc::new(Barrier::new(2));
        let go = start.clone();
        let reader = std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(samples as usize);
            go.wait();
            let before = switches();
            while (lat.len() as u64) < samples {
                match s.next(Duration::from_secs(5)).unwrap() {
                    Some(Message::Event(d)) => {
                        let now = ns_since(base);
                        let t = u64::from_le_bytes(d.payload[..8].try_into().unwrap());
                        if t != u64::MAX {
                            lat.push(now.saturating_sub(t));
                        }
                    }
                    Some(_) => {}
                    None => panic!("no event for 5 s"),
                }
            }
            let after = switches();
            (lat, after.0 - before.0, after.1 - before.1)
        });
        start.wait();
        let mut payload = vec![0u8; bytes];
        // Warm-up, not measured.
        payload[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut lsn = 0;
        for _ in 0..1000 {
            lsn += 1;
            p.publish_raw(lsn, 0, EventKind::Extension, &payload).unwrap();
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(2) {}
        }
        for _ in 0..samples {
            lsn += 1;
            payload[..8].copy_from_slice(&ns_since(base).to_le_bytes());
            p.publish_raw(lsn, 0, EventKind::Extension, &payload).unwrap();
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(2) {}
        }
        let (lat, vol, invol) = reader.join().unwrap();
        report(round, lat, vol, invol);
    }
}

/// Publishes `samples` events one call each to one spinning `Block` subscriber.
fn throughput_round(bytes: usize, samples: u64) {
    let (bus, p) = Bus::detached(BusOptions::default()).unwrap();
    let policy = Policy::Block { budget: Duration::from_secs(10) };
    let mut s = bus
        .subscribe(SubscribeOptions::live().policy(policy).spin(Duration::from_millis(50)))
        .unwrap();
    let start = Arc::new(Barrier::new(2));
    let go = start.clone();
    let reader = std::thread::spawn(move || {
        go.wait();
        let mut got = 0;
        while got < samples {
            if let Some(Message::Event(_)) = s.next(Duration::from_secs(5)).unwrap() {
                got += 1;
            }
        }
    });
    start.wait();
    let payload = vec![1u8; bytes];
    let t = Instant::now();
    for lsn in 1..=samples {
        p.publish_raw(lsn, 0, EventKind::Extension, &payload).unwrap();
    }
    reader.join().unwrap();
    println!("throughput: {:.1} M msg/s", samples as f64 / t.elapsed().as_secs_f64() / 1e6);
}

/// One round through the plainest queue: stamps in a preallocated array of words, and
/// one word counting how many are published (the reader spins on it, and takes every
/// stamp, so a reader that was held up sees all the late ones, as a ring's reader does).
fn floor_round(round: usize, base: Instant, samples: u64) {
    let stamps: Arc<Vec<AtomicU64>> = Arc::new((0..samples).map(|_| AtomicU64::new(0)).collect());
    let head = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(2));
    let (st, h, go) = (stamps.clone(), head.clone(), start.clone());
    let reader = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(samples as usize);
        go.wait();
        let before = switches();
        let mut next = 0u64;
        while next < samples {
            let end = h.load(Ordering::Acquire);
            if end == next {
                std::hint::spin_loop();
                continue;
            }
            let now = ns_since(base);
            for i in next..end {
                lat.push(now.saturating_sub(st[i as usize].load(Ordering::Relaxed)));
            }
            next = end;
        }
        let after = switches();
        (lat, after.0 - before.0, after.1 - before.1)
    });
    start.wait();
    for i in 0..samples {
        stamps[i as usize].store(ns_since(base), Ordering::Relaxed);
        head.store(i + 1, Ordering::Release);
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(2) {}
    }
    let (lat, vol, invol) = reader.join().unwrap();
    report(round, lat, vol, invol);
}

fn report(round: usize, mut lat: Vec<u64>, vol: u64, invol: u64) {
    {
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1e3;
        let slow = lat.iter().filter(|&&ns| ns > 20_000).count();
        println!(
            "round {round}: p50 {:.2} p99 {:.2} max {:.1} us; {slow} over 20 us; subscriber switches {vol} voluntary, {invol} involuntary",
            at(0.5),
            at(0.99),
            *lat.last().unwrap() as f64 / 1e3
        );
    }
}
