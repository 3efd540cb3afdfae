//! `GET /metrics`: Prometheus text exposition of the store, the bus, the exchange and
//! the HTTP front.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use parking_lot::Mutex;

use super::App;

/// Upper bounds of the HTTP latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's own counters.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    ingested: AtomicU64,
    orders: AtomicU64,
    ws_sent: AtomicU64,
}

impl Metrics {
    pub(crate) fn http(&self, route: &str, status: u16, took: Duration) {
        *self.requests.lock().entry((route.to_string(), status)).or_default() += 1;
        let secs = took.as_secs_f64();
        let mut l = self.latency.lock();
        let h = l.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub(crate) fn ingested(&self, n: u64) {
        self.ingested.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn order(&self) {
        self.orders.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ws_sent(&self, frames: u64) {
        self.ws_sent.fetch_add(frames, Ordering::Relaxed);
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

pub(crate) async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    let s = app.engine.stats();
    metric(&mut out, "bourse_wal_applied_lsn", "gauge", "Highest applied LSN.", s.applied_lsn);
    metric(&mut out, "bourse_wal_durable_lsn", "gauge", "Highest durable LSN.", s.durable_lsn);
    metric(
        &mut out,
        "bourse_wal_first_lsn",
        "gauge",
        "Oldest LSN the WAL retains.",
        s.wal_first_lsn,
    );
    metric(
        &mut out,
        "bourse_lsm_partitions",
        "gauge",
        "Partitions (LSM trees).",
        s.partitions.len(),
    );
    metric(
        &mut out,
        "bourse_engine_open_book_deltas",
        "gauge",
        "Book deltas read from tables at open to rebuild the latest books.",
        s.open_book_deltas,
    );
    let mem: usize = s.partitions.iter().map(|p| p.memtable_bytes).sum();
    metric(&mut out, "bourse_lsm_memtable_bytes", "gauge", "Bytes in all memtables.", mem);
    let tables: usize =
        s.partitions.iter().map(|p| p.tree.tables_per_level.iter().sum::<usize>()).sum();
    let table_bytes: u64 =
        s.partitions.iter().map(|p| p.tree.bytes_per_level.iter().sum::<u64>()).sum();
    let pending: u64 = s.partitions.iter().map(|p| p.tree.pending_compaction_bytes).sum();
    metric(&mut out, "bourse_lsm_tables", "gauge", "SSTables in all partitions.", tables);
    metric(
        &mut out,
        "bourse_lsm_table_bytes",
        "gauge",
        "Bytes of SSTables in all partitions.",
        table_bytes,
    );
    metric(
        &mut out,
        "bourse_lsm_pending_compaction_bytes",
        "gauge",
        "Bytes waiting for compaction.",
        pending,
    );
    let b = app.bus.stats();
    metric(
        &mut out,
        "bourse_bus_published_total",
        "counter",
        "Events published on the bus.",
        b.published,
    );
    metric(&mut out, "bourse_bus_subscribers", "gauge", "Live bus subscribers.", b.subscribers);
    metric(
        &mut out,
        "bourse_bus_blocked_publishes_total",
        "counter",
        "Publishes that waited for a Block subscriber.",
        b.blocked_publishes,
    );
    if let Some(sim) = &app.sim {
        metric(
            &mut out,
            "bourse_sim_processed_lsn",
            "gauge",
            "LSN of the newest answered request.",
            sim.processed(),
        );
        let (live, (orders, matches), accounts) =
            sim.with_exchange(|x| (x.live_orders(), x.counts(), x.accounts()));
        metric(&mut out, "bourse_sim_live_orders", "gauge", "Orders resting in the books.", live);
        metric(
            &mut out,
            "bourse_sim_orders_accepted_total",
            "counter",
            "Orders the exchange accepted.",
            orders,
        );
        metric(
            &mut out,
            "bourse_sim_matches_total",
            "counter",
            "Matches (each one a trade per side).",
            matches,
        );
        metric(&mut out, "bourse_sim_accounts", "gauge", "Trading accounts with funds.", accounts);
    }
    metric(
        &mut out,
        "bourse_http_ingested_events_total",
        "counter",
        "Events written through POST /api/v1/events.",
        app.metrics.ingested.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "bourse_http_orders_total",
        "counter",
        "Orders placed through POST /api/v1/orders.",
        app.metrics.orders.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "bourse_ws_connections",
        "gauge",
        "Open /ws/events connections.",
        app.ws_connections.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "bourse_ws_frames_sent_total",
        "counter",
        "Frames sent on /ws/events.",
        app.metrics.ws_sent.load(Ordering::Relaxed),
    );
    let _ = writeln!(out, "# HELP bourse_http_requests_total HTTP requests by route and status.\n# TYPE bourse_http_requests_total counter");
    for ((route, status), n) in app.metrics.requests.lock().iter() {
        let _ = writeln!(
            out,
            "bourse_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP bourse_http_request_seconds HTTP request latency.\n# TYPE bourse_http_request_seconds histogram");
    for (route, h) in app.metrics.latency.lock().iter() {
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "bourse_http_request_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "bourse_http_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "bourse_http_request_seconds_sum{{route=\"{route}\"}} {}", h.sum);
        let _ = writeln!(out, "bourse_http_request_seconds_count{{route=\"{route}\"}} {}", h.count);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
