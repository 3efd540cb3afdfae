//! `stall_floor` (raw): how often, and for how long, this machine takes a core away from
//! a thread that never blocks. The floor under every sub-10 µs percentile the other
//! cases report.
//!
//! One thread per core spins for a fixed time reading the clock; every gap of at least
//! [`THRESHOLD`] between two consecutive readings is a stall (a timer tick or another
//! interrupt, a hypervisor exit, a preemption). On a virtual machine ticks can cost
//! microseconds each, a thousand times a second, and no code running on it can avoid
//! them. Two exposures follow from the stalls, and the case reports both:
//!
//! - `window_hit_share`: an operation of `window_us` that its own thread times (a submit,
//!   a query) is interrupted when a stall *begins* while it runs (it cannot begin while
//!   its thread is stalled): stalls per second × the window.
//! - `handoff_hit_share`: a handoff from one core to another (a publish seen by a
//!   subscriber) also waits when the receiving core is stalled at the moment of the
//!   send: the stalled share of time, plus a stall beginning on either core during the
//!   window.
//!
//! Where a share is above 1%, no code on this machine can show a p99 below the stalls'
//! length for that kind of operation at that time.
//!
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::report::{emit, histogram, Latency};

/// The shortest gap counted as a stall.
const THRESHOLD: Duration = Duration::from_micros(1);

/// Operation lengths the hit shares are given for (µs).
const WINDOWS_US: [u64; 3] = [1, 5, 10];

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
        let p = json!({ "threshold_us": THRESHOLD.as_secs_f64() * 1e6, "window_us": w });
        // Per core: a stall begins in a window of `w` µs with this probability.
        let own = (100.0 * per_s * w as f64 * 1e-6).min(100.0);
        emit(suite, "stall_floor", "raw", &p, "window_hit_share", own, "%");
        let handoff = (share + 2.0 * own).min(100.0);
        emit(suite, "stall_floor", "raw", &p, "handoff_hit_share", handoff, "%");
        hits.push(format!("{w} µs {own:.2}% (handoff {handoff:.2}%)"));
    }
    eprintln!(
        "  stall floor: {per_s:.0} stalls/s per core of ≥ 1 µs (p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs), {share:.2}% of the time; an operation of its own thread is interrupted: {}",
        lat.p50,
        lat.p99,
        lat.max,
        hits.join(", ")
    );
    Ok(())
}
