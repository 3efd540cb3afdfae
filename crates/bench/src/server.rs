//! The `server` suite: the `bourse` binary over loopback HTTP and WebSocket.
//!
//! - `http_ingest` (params `batch`): NDJSON batches of 1, 100 and 1000 ticks to
//!   `POST /api/v1/events` at `Durable` from 4 concurrent connections; events/s (median
//!   of 3 runs) and per-request latency.
//! - `order_roundtrip`: a resting order from one demo user, then a crossing order from the
//!   other; time from sending the crossing `POST /api/v1/orders` until its trade arrives on
//!   `/ws/events`.
//! - `stream_fanout` (params `subscribers`, `events_per_second`): ticks ingested at a
//!   steady rate in batches of 10 while 1 or 100 `/ws/events` clients read; delivery
//!   latency from the commit timestamp to receipt, and deliveries against those expected.
//!
//! The server is the release `bourse` binary next to this one (build it with
//! `cargo build --release -p bourse`), started as a child process with its data in the
//! measured directory. No peer is named for this suite.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::report::{emit, histogram, median, record, Latency};

const ADMIN: &str = "bench-admin-token-0123456789";
const SUITE: &str = "server";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn bourse_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("bourse");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p bourse`",
            bin.display()
        );
    }
    Ok(bin)
}

fn start(cmd: &[&str], data: &Path) -> anyhow::Result<Server> {
    let cfg = data.with_extension("toml");
    std::fs::write(&cfg, format!("admin_token = \"{ADMIN}\"\nws_connections_max = 512\n"))?;
    let mut child = Command::new(bourse_binary()?)
        .args(cmd)
        .args([
            "--data",
            &data.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--config",
            &cfg.to_string_lossy(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bourse")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(a) = line.strip_prefix("bourse listening on ") {
            base = Some(a.trim().to_string());
        }
        if line == "ready" {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let base = base.context("bourse did not print its address")?;
    Ok(Server { child, base })
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn tick(n: i64) -> String {
    json!({ "type": "tick", "instrument_id": "SHFE.cu2512", "datetime": n, "last_price": 78000.0, "volume": n }).to_string()
}

/// Runs the suite.
pub fn run(dir: &Path, quick: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        ingest(dir, quick).await?;
        roundtrip(dir, quick).await?;
        for (subscribers, rate) in [(1, 100), (100, 100), (100, 500)] {
            fanout(dir, quick, subscribers, rate).await?;
        }
        Ok(())
    })
}

async fn ingest(dir: &Path, quick: bool) -> anyhow::Result<()> {
    let server = start(&["serve"], &dir.join("server-ingest"))?;
    let url = format!("{}/api/v1/events", server.base);
    let client = reqwest::Client::new();
    let run_for = Duration::from_secs(if quick { 2 } else { 10 });
    let connections = 4;
    let seq = Arc::new(AtomicU64::new(1));
    for batch in [1usize, 100, 1000] {
        let params = json!({ "batch": batch, "connections": connections, "durability": "durable" });
        let mut rates = Vec::new();
        let mut hist = histogram();
        for _ in 0..3 {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (client, url, seq) = (client.clone(), url.clone(), seq.clone());
                tasks.push(tokio::spawn(async move {
                    let mut h = histogram();
                    let mut sent = 0u64;
                    while started.elapsed() < run_for {
                        let first = seq.fetch_add(batch as u64, Ordering::Relaxed) as i64;
                        let body: Vec<String> =
                            (0..batch as i64).map(|i| tick(first + i)).collect();
                        let t = Instant::now();
                        let resp = client
                            .post(&url)
                            .bearer_auth(ADMIN)
                            .body(body.join("\n"))
                            .send()
                            .await?;
                        if !resp.status().is_success() {
                            bail!(
                                "ingest answered {}: {}",
                                resp.status(),
                                resp.text().await.unwrap_or_default()
                            );
                        }
                        resp.bytes().await?;
                        record(&mut h, t.elapsed());
                        sent += batch as u64;
                    }
                    anyhow::Ok((sent, h))
                }));
            }
            let mut events = 0;
            for t in tasks {
                let (sent, h) = t.await??;
                events += sent;
                hist.add(&h)?;
            }
            rates.push(events as f64 / started.elapsed().as_secs_f64());
        }
        let rate = median(rates);
        eprintln!("server http_ingest batch={batch}: {rate:.0} events/s (Durable, {connections} connections)");
        emit(SUITE, "http_ingest", "bourse", &params, "throughput", rate, "events/s");
        Latency::of(&hist).emit(SUITE, "http_ingest", "bourse", &params);
    }
    Ok(())
}

async fn login(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    let r: Value = client
        .post(format!("{base}/api/v1/login"))
        .json(&json!({ "user_id": user, "password": password }))
        .send()
        .await?
        .json()
        .await?;
    r["token"].as_str().map(str::to_string).context("login failed")
}

async fn roundtrip(dir: &Path, quick: bool) -> anyhow::Result<()> {
    let server = start(&["demo", "--quiet"], &dir.join("server-orders"))?;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let taker = login(&client, &base, "demo1", "bourse-demo-1").await?;
    let maker = login(&client, &base, "demo2", "bourse-demo-2").await?;
    let ws_url =
        format!("{}/ws/events?topics=trades&token={ADMIN}", base.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    let (_, mut ws) = ws.split();
    let rounds = if quick { 200 } else { 1000 };
    let mut hist = histogram();
    let place = |token: &str, id: String, dir: &str, offset: &str, price: f64| {
        client
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(token)
            .json(&json!({ "order_id": id, "instrument_id": "DCE.m2601", "direction": dir, "offset": offset, "volume": 1, "limit_price": price }))
            .send()
    };
    for i in 0..rounds {
        // Positions go 0 → 1 → 0: opens on even rounds, closes on odd ones.
        let (maker_dir, taker_dir, offset) =
            if i % 2 == 0 { ("SELL", "BUY", "OPEN") } else { ("BUY", "SELL", "CLOSE") };
        let r = place(&maker, format!("m{i}"), maker_dir, offset, 2900.0).await?;
        if r.status().as_u16() != 201 {
            bail!("maker order answered {}: {}", r.status(), r.text().await.unwrap_or_default());
        }
        let id = format!("t{i}");
        let t = Instant::now();
        let r = place(&taker, id.clone(), taker_dir, offset, 2900.0).await?;
        if r.status().as_u16() != 201 {
            bail!("taker order answered {}: {}", r.status(), r.text().await.unwrap_or_default());
        }
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await?
                .context("stream closed")??;
            let v: Value = serde_json::from_str(msg.to_text()?)?;
            if v["event"]["type"] == "trade_executed" && v["event"]["order_id"] == id.as_str() {
                break;
            }
        }
        record(&mut hist, t.elapsed());
    }
    let params = json!({ "rounds": rounds });
    let l = Latency::of(&hist);
    eprintln!("server order_roundtrip: p50 {:.0} us, p99 {:.0} us", l.p50, l.p99);
    l.emit(SUITE, "order_roundtrip", "bourse", &params);
    Ok(())
}

/// Only the field the fan-out reader needs (the rest of the frame is skipped).
#[derive(serde::Deserialize)]
struct Frame {
    timestamp: Option<i64>,
}

async fn fanout(dir: &Path, quick: bool, subscribers: u64, rate: u64) -> anyhow::Result<()> {
    let server = start(&["serve"], &dir.join(format!("server-fanout-{subscribers}-{rate}")))?;
    let run_for = Duration::from_secs(if quick { 4 } else { 20 });
    let ws_url = format!(
        "{}/ws/events?topics=market&token={ADMIN}",
        server.base.replace("http://", "ws://")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let (_, mut ws) = ws.split();
            let mut h: Histogram<u64> = histogram();
            while !stop.load(Ordering::Acquire) {
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_millis(200), ws.next()).await
                else {
                    continue;
                };
                let Ok(text) = msg.to_text() else { continue };
                let Ok(f) = serde_json::from_str::<Frame>(text) else { continue };
                if let Some(ts) = f.timestamp {
                    let _ = h.record(((now_ns() - ts).max(1)) as u64);
                }
            }
            h
        }));
    }
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/events?durability=buffered", server.base);
    let started = Instant::now();
    let mut n = 0i64;
    let batch = 10;
    let period = Duration::from_nanos(1_000_000_000 * batch / rate);
    let mut next = Instant::now();
    while started.elapsed() < run_for {
        let body: Vec<String> = (0..batch as i64).map(|i| tick(n + i)).collect();
        n += batch as i64;
        client.post(&url).bearer_auth(ADMIN).body(body.join("\n")).send().await?.bytes().await?;
        next += period;
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);
    let mut hist = histogram();
    for r in readers {
        hist.add(&r.await?)?;
    }
    let params = json!({ "subscribers": subscribers, "events_per_second": rate });
    let l = Latency::of(&hist);
    let expected = n as u64 * subscribers;
    eprintln!(
        "server stream_fanout {rate} events/s to {subscribers}: {} of {expected} deliveries, p50 {:.0} us, p99 {:.0} us",
        hist.len(),
        l.p50,
        l.p99
    );
    emit(SUITE, "stream_fanout", "bourse", &params, "deliveries", hist.len() as f64, "count");
    emit(
        SUITE,
        "stream_fanout",
        "bourse",
        &params,
        "deliveries_expected",
        expected as f64,
        "count",
    );
    l.emit(SUITE, "stream_fanout", "bourse", &params);
    Ok(())
}
