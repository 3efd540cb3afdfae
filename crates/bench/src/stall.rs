//! `stall_floor` (raw): how often, and for how long, this machine takes a core away from
//! a thread that never blocks. The floor under every sub-10 µs percentile the other
//! cases report.
//!
//! One thread per core spins for a fixed time reading the clock; every gap of at least
//! [`THRESHOLD`] between two consecutive readings is a stall (a timer tick or another
//! interrupt, a hypervisor exit, a preemption). On a virtual machine ticks can cost
//! microseconds each, a thousand times a second, and no code running on it can avoid
//! them. From the stalls the case derives, for an operation of `window_us`, the share of
//! start times at which it overlaps one (`window_hit_share`): where that share is above
//! 1%, a p99 below the stalls' length cannot be met by any code on this machine at that
//! time, for an operation confined to one core; a handoff between two cores is exposed on
//! both.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::{emit, histogram, Latency};

/// The shortest gap counted as a stall.
const THRESHOLD: Duration = Duration::from_micros(1);

/// Operation lengths the hit share is given for (µs).
const WINDOWS_US: [u64; 3] = [1, 2, 5];

/// What one spinning thread saw.
struct Spin {
    /// Stall lengths (ns).
    stalls: Histogram<u64>,
    /// Sum of the stall lengths (ns).
    stalled_ns: u64,
    /// How long it spun (ns).
    spun_ns: u64,
}

fn spin(for_: Duration) -> Spin {
    let mut stalls = histogram();
    let mut stalled_ns = 0u64;
    let start = Instant::now();
    let mut prev = start;
    loop {
        let now = Instant::now();
        let gap = now.duration_since(prev);
        if gap >= THRESHOLD {
            let ns = gap.as_nanos() as u64;
            let _ = stalls.record(ns);
            stalled_ns += ns;
        }
        prev = now;
        if now.duration_since(start) >= for_ {
            break;
        }
    }
    Spin { stalls, stalled_ns, spun_ns: prev.duration_since(start).as_nanos() as u64 }
}

/// Runs the case for `suite`: one spinning thread per core for `for_`, then the result
/// lines (per core, averaged over the cores) and a line on stderr.
pub fn stall_floor(suite: &str, for_: Duration) -> anyhow::Result<()> {
    if !crate::report::wanted("stall_floor") {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spins: Vec<Spin> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores).map(|_| s.spawn(move || spin(for_))).collect();
        handles.into_iter().map(|h| h.join()).collect::<Result<_, _>>()
    })
    .map_err(|_| anyhow::anyhow!("a spinning thread panicked"))?;
    let mut all = histogram();
    let (mut stalled, mut spun) = (0u64, 0u64);
    for s in &spins {
        all.add(&s.stalls).map_err(|e| anyhow::anyhow!("{e}"))?;
        stalled += s.stalled_ns;
        spun += s.spun_ns;
    }
    let spun_s = spun as f64 / 1e9;
    let per_s = all.len() as f64 / spun_s;
    let share = 100.0 * stalled as f64 / spun.max(1) as f64;
    let params = json!({ "threshold_us": THRESHOLD.as_secs_f64() * 1e6, "cores": cores });
    emit(suite, "stall_floor", "raw", &params, "stalls_per_s", per_s, "1/s");
    emit(suite, "stall_floor", "raw", &params, "stalled_share", share, "%");
    // The stalls' own lengths.
    let lat = Latency::of(&all);
    lat.emit(suite, "stall_floor", "raw", &params);
    let mut hits = Vec::new();
    for w in WINDOWS_US {
        // An operation starting anywhere in [stall start - w, stall end) overlaps it
        // (overlapping intervals of nearby stalls are counted twice: an upper bound).
        let hit = (stalled + all.len() * w * 1000) as f64 / spun.max(1) as f64;
        let hit = (100.0 * hit).min(100.0);
        let p = json!({ "threshold_us": THRESHOLD.as_secs_f64() * 1e6, "window_us": w });
        emit(suite, "stall_floor", "raw", &p, "window_hit_share", hit, "%");
        hits.push(format!("{w} µs {hit:.2}%"));
    }
    eprintln!(
        "  stall floor: {per_s:.0} stalls/s per core of ≥ 1 µs (p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs), {share:.2}% of the time; an operation overlaps one: {}",
        lat.p50,
        lat.p99,
        lat.max,
        hits.join(", ")
    );
    Ok(())
}
