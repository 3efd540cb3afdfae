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
