//! JSON-line results (`BENCH.md`) and latency summaries.

use std::sync::OnceLock;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Prints one result line.
pub fn emit(
    suite: &str,
    case: &str,
    system: &str,
    params: &Value,
    metric: &str,
    value: f64,
    unit: &str,
) {
    let line = json!({
        "suite": suite, "case": case, "system": system, "params": params,
        "metric": metric, "value": (value * 1000.0).round() / 1000.0, "unit": unit,
    });
    println!("{line}");
}

/// A latency histogram in nanoseconds.
pub fn histogram() -> Histogram<u64> {
    // Three significant digits, up to 60 s: the constructor cannot fail for these bounds.
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Records one latency.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_nanos() as u64).max(1));
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// Prints the four latency lines.
    pub fn emit(&self, suite: &str, case: &str, system: &str, params: &Value) {
        for (metric, v) in [
            ("latency_p50", self.p50),
            ("latency_p99", self.p99),
            ("latency_p999", self.p999),
            ("latency_max", self.max),
        ] {
            emit(suite, case, system, params, metric, v, "us");
        }
    }
}

/// One system's latency over interleaved rounds: every sample, and each round's own
/// p50 and p99.
pub struct Rounds {
    /// Every sample of every round.
    pub all: Histogram<u64>,
    /// Each round's p50 and p99 (µs).
    each: Vec<(f64, f64)>,
}

impl Rounds {
    pub fn new() -> Rounds {
        Rounds { all: histogram(), each: Vec::new() }
    }

    /// Adds one round's histogram.
    pub fn add(&mut self, h: &Histogram<u64>) -> anyhow::Result<()> {
        let l = Latency::of(h);
        self.each.push((l.p50, l.p99));
        self.all.add(h).map_err(|e| anyhow::anyhow!("merging latencies: {e}"))
    }

    /// The median round's p50 and p99 (µs): a stall of the machine that hits one
    /// round moves the percentiles over all samples, not these.
    pub fn median(&self) -> (f64, f64) {
        let p50 = median(self.each.iter().map(|r| r.0).collect());
        let p99 = median(self.each.iter().map(|r| r.1).collect());
        (p50, p99)
    }

    /// The four latency lines over all samples and the two median-round lines.
    pub fn emit(&self, suite: &str, case: &str, system: &str, params: &Value) {
        Latency::of(&self.all).emit(suite, case, system, params);
        let (p50, p99) = self.median();
        emit(suite, case, system, params, "latency_p50_median_round", p50, "us");
        emit(suite, case, system, params, "latency_p99_median_round", p99, "us");
    }

    /// Ratio lines of these rounds (`system`'s) to `floor`'s, named after `floor_name`:
    /// p50 and p99 over all samples and of the median round.
    pub fn emit_ratios(
        &self,
        floor: &Rounds,
        floor_name: &str,
        (suite, case, system): (&str, &str, &str),
        params: &Value,
    ) {
        let (b, f) = (Latency::of(&self.all), Latency::of(&floor.all));
        let (bm, fm) = (self.median(), floor.median());
        for (name, x, y) in [
            ("p50", b.p50, f.p50),
            ("p99", b.p99, f.p99),
            ("p50_median_round", bm.0, fm.0),
            ("p99_median_round", bm.1, fm.1),
        ] {
            emit(suite, case, system, params, &format!("{name}_ratio_vs_{floor_name}"), x / y, "x");
        }
    }
}

/// The median of a few runs.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

static ONLY: OnceLock<Vec<String>> = OnceLock::new();

/// Restricts the run to cases whose name contains one of `filters` (all when empty).
pub fn set_only(filters: Vec<String>) {
    let _ = ONLY.set(filters);
}

/// Whether case `case` runs (`--only`).
pub fn wanted(case: &str) -> bool {
    ONLY.get().is_none_or(|f| f.is_empty() || f.iter().any(|x| case.contains(x.as_str())))
}

/// CPU time (user and system, all threads) this process has used so far, from
/// `/proc/self/stat` (in clock ticks of 10 ms); `None` where that is not available.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
