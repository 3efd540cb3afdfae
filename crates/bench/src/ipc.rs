//! `bus` / `ipc`: cross-process one-way latency and throughput over iceoryx2 —
//! Bourse (bus → bridge → iceoryx2 → `IpcSubscriber`) beside raw iceoryx2
//! publish/subscribe of the same payload (the floor).
//!
//! The subscriber is this benchmark binary again, started as a child
//! (`BOURSE_BENCH_IPC_CHILD`); it writes its latencies to a file and prints one
//! `result` line, which the parent adds to its system's totals. Send times are
//! wall-clock nanoseconds in the payload's first 8 bytes (both processes read the same
//! clock); byte 8 is the phase: 0 latency, 1 throughput, 2 end.
//!
//! The systems run **interleaved**: several rounds, each running every system once
//! with a share of the samples, so a slow stretch of the machine (this VM has them)
//! falls on all of them alike. Latencies are reported over all rounds and as the
//! median round's p50/p99 (`*_median_round`: robust to a stall that hits one round),
//! throughput as the median round, and the ratios of Bourse to each floor as their own
//! lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bourse_bus::ipc::{IpcBridge, IpcOptions, IpcSubscribeOptions, IpcSubscriber};
use bourse_bus::{Bus, BusOptions, Message, OnLag};
use bourse_model::EventKind;
use iceoryx2::prelude::*;
use serde_json::json;

use crate::report::{emit, histogram, median, record, Latency, Rounds};

const SUITE: &str = "bus";
const CHILD: &str = "BOURSE_BENCH_IPC_CHILD";
const LATENCY: u8 = 0;
const THROUGHPUT: u8 = 1;
const END: u8 = 2;
const WARM_UP: u8 = 3;

/// Unmeasured sends before each round's latency samples, paced like them: more than a
/// subscriber queue (1,024 frames) holds, so every shared-memory slot of the round's
/// fresh services has been written once (its first write takes page faults, a cost of
/// starting a service that a long-running one does not pay) and the child is polling.
const WARM_UP_SENDS: u64 = 2048;

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn stamp(buf: &mut [u8], phase: u8) {
    buf[..8].copy_from_slice(&wall_ns().to_le_bytes());
    buf[8] = phase;
}

fn read_stamp(buf: &[u8]) -> (u64, u8) {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[..8]);
    (u64::from_le_bytes(b), buf[8])
}

fn pause(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Whether this process is a benchmark child; runs it if so.
pub fn child_main() -> Option<anyhow::Result<()>> {
    let role = std::env::var(CHILD).ok()?;
    let name = std::env::var("BOURSE_BENCH_IPC_NAME").unwrap_or_default();
    Some(match role.as_str() {
        "raw" | "raw_threadsafe" => raw_child(&name),
        "bourse" => bourse_child(&name),
        other => Err(anyhow::anyhow!("unknown child role {other}")),
    })
}

/// What a child measured, in one place for both systems.
struct Tally {
    lat: Vec<u64>,
    got: u64,
    lost: u64,
    first: Option<Instant>,
    last: Instant,
}

impl Tally {
    fn new() -> Tally {
        Tally { lat: Vec::new(), got: 0, lost: 0, first: None, last: Instant::now() }
    }

    /// Returns false at the end marker.
    fn see(&mut self, payload: &[u8]) -> bool {
        let (sent, phase) = read_stamp(payload);
        match phase {
            LATENCY => self.lat.push(wall_ns().saturating_sub(sent).max(1)),
            WARM_UP => {}
            THROUGHPUT => {
                self.first.get_or_insert_with(Instant::now);
                self.last = Instant::now();
                self.got += 1;
            }
            _ => return false,
        }
        true
    }

    /// Writes the latencies (little-endian `u64` ns) to the file the parent named and
    /// prints `result <deliveries per second> <signalled lost> <received>` (the last
    /// two for the throughput phase; only Bourse can signal a loss).
    fn report(&self) -> anyhow::Result<()> {
        let path = std::env::var("BOURSE_BENCH_IPC_OUT")?;
        let bytes: Vec<u8> = self.lat.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(path, bytes)?;
        let secs = self.first.map_or(0.0, |f| self.last.duration_since(f).as_secs_f64());
        let rate = if secs > 0.0 { self.got as f64 / secs } else { 0.0 };
        println!("result {rate} {} {}", self.lost, self.got);
        Ok(())
    }
}

fn raw_child(name: &str) -> anyhow::Result<()> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = node.service_builder(&name.try_into()?).publish_subscribe::<[u8]>().open()?;
    let sub = svc.subscriber_builder().create()?;
    println!("ready");
    let mut t = Tally::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(s) = sub.receive()? {
            if !t.see(s.payload()) {
                break;
            }
        }
    }
    t.report()
}

/// Polls without ever sleeping, as the raw child does: `next` would sleep after its
/// spin time, and the first event after the 100 ms the parent waits before sending
/// would then measure a wake-up (up to 1 ms) rather than the transport.
fn bourse_child(name: &str) -> anyhow::Result<()> {
    let opts = IpcSubscribeOptions::new(name).on_lag(OnLag::Signal);
    let mut sub = IpcSubscriber::connect(opts)?;
    println!("ready");
    let mut t = Tally::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match sub.try_next()? {
            Some(Message::Event(d)) if !t.see(d.payload) => break,
            Some(Message::Lagged { from, to }) => t.lost += to - from + 1,
            _ => {}
        }
    }
    t.report()
}

/// One system's totals over all rounds of one payload size.
struct Totals {
    system: &'static str,
    lat: Rounds,
    calls: hdrhistogram::Histogram<u64>,
    deliveries: Vec<f64>,
    /// Throughput-phase messages sent and not received, over all rounds.
    missing: u64,
    /// Throughput-phase messages the subscriber was told it lost (`Lagged`).
    signalled: u64,
}

impl Totals {
    fn new(system: &'static str) -> Totals {
        Totals {
            system,
            lat: Rounds::new(),
            calls: histogram(),
            deliveries: Vec::new(),
            missing: 0,
            signalled: 0,
        }
    }

    fn emit(&self, bytes: usize) {
        let params = json!({"bytes": bytes});
        self.lat.emit(SUITE, "ipc", self.system, &params);
        let call = Latency::of(&self.calls);
        emit(SUITE, "ipc", self.system, &params, "publish_call_p50", call.p50, "us");
        emit(SUITE, "ipc", self.system, &params, "publish_call_p99", call.p99, "us");
        let rate = median(self.deliveries.clone());
        emit(SUITE, "ipc", self.system, &params, "deliveries", rate, "msg/s");
        // Counted alike for every system: sent minus received. Raw iceoryx2 (safe
        // overflow) drops the oldest sample silently when the subscriber's buffer is
        // full; Bourse must signal every loss (`Lagged`), so its two counts must agree.
        emit(
            SUITE,
            "ipc",
            self.system,
            &params,
            "lost_in_throughput_run",
            self.missing as f64,
            "msg",
        );
        if self.system == "bourse" {
            let s = self.signalled as f64;
            emit(SUITE, "ipc", self.system, &params, "signalled_lost_in_throughput_run", s, "msg");
            if self.signalled != self.missing {
                eprintln!(
                    "ipc {bytes} B: bourse lost {} messages but signalled {}: a silent loss",
                    self.missing, self.signalled
                );
            }
        }
    }
}

/// Starts the child and waits until it is subscribed; returns it with its output.
fn start_child(
    role: &str,
    name: &str,
    out_file: &std::path::Path,
) -> anyhow::Result<(std::process::Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD, role)
        .env("BOURSE_BENCH_IPC_NAME", name)
        .env("BOURSE_BENCH_IPC_OUT", out_file)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no child stdout"))?;
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the {role} child did not start: {line:?}");
    // Let the publisher side see the new subscriber.
    std::thread::sleep(Duration::from_millis(100));
    Ok((child, out))
}

/// Waits for the child and adds what it measured to `t`.
fn finish_child(
    mut child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    out_file: &std::path::Path,
    burst: u64,
    t: &mut Totals,
) -> anyhow::Result<()> {
    let mut result = None;
    for line in out.lines() {
        let line = line?;
        match line.strip_prefix("result ") {
            Some(r) => result = Some(r.to_string()),
            None => eprintln!("ipc child: {line}"),
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the benchmark child failed: {status}");
    let result = result.ok_or_else(|| anyhow::anyhow!("the benchmark child sent no result"))?;
    let mut parts = result.split_whitespace().map(|x| x.parse::<f64>());
    let (Some(Ok(rate)), Some(Ok(lost)), Some(Ok(got))) =
        (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("a bad result line from the child: {result:?}");
    };
    t.deliveries.push(rate);
    t.signalled += lost as u64;
    t.missing += burst.saturating_sub(got as u64);
    let mut round = histogram();
    for v in std::fs::read(out_file)?.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(v);
        let _ = round.record(u64::from_le_bytes(b));
    }
    let l = Latency::of(&round);
    eprintln!("  {}: p50 {:.2} p99 {:.2} p99.9 {:.2} us", t.system, l.p50, l.p99, l.p999);
    t.lat.add(&round)
}

/// Runs the phases (warm-up, latency, throughput, end) through `send`, adding how long
/// each send call takes in the latency phase to `calls` (the publishing side's share of
/// the one-way latency, measured on one clock).
fn drive(
    bytes: usize,
    samples: u64,
    burst: u64,
    calls: &mut hdrhistogram::Histogram<u64>,
    mut send: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut payload = vec![0u8; bytes.max(16)];
    for _ in 0..WARM_UP_SENDS {
        stamp(&mut payload, WARM_UP);
        send(&payload)?;
        pause(Duration::from_micros(10));
    }
    for _ in 0..samples {
        stamp(&mut payload, LATENCY);
        let t = Instant::now();
        send(&payload)?;
        record(calls, t.elapsed());
        pause(Duration::from_micros(10));
    }
    for _ in 0..burst {
        stamp(&mut payload, THROUGHPUT);
        send(&payload)?;
    }
    // Let the queue drain, then mark the end (a few times: overflow may drop one).
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..4 {
        stamp(&mut payload, END);
        send(&payload)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The size of one round: latency samples and throughput burst.
#[derive(Clone, Copy)]
struct Round {
    bytes: usize,
    samples: u64,
    burst: u64,
}

/// Raw iceoryx2 through a publisher of service type `S`: `ipc::Service` is the floor;
/// `ipc_threadsafe::Service` (ports behind a mutex each) is the floor of a publisher
/// shared between threads.
fn raw<S: iceoryx2::service::Service>(
    role: &str,
    r: Round,
    out_file: &std::path::Path,
    t: &mut Totals,
) -> anyhow::Result<()> {
    let name = format!("bourse-bench/{role}/{}", std::process::id());
    let node = NodeBuilder::new().create::<S>()?;
    let svc = node
        .service_builder(&name.as_str().try_into()?)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(1024)
        .enable_safe_overflow(true)
        .open_or_create()?;
    let publisher = svc
        .publisher_builder()
        .initial_max_slice_len(r.bytes.max(16))
        .allocation_strategy(AllocationStrategy::PowerOfTwo)
        .create()?;
    let (child, out) = start_child(role, &name, out_file)?;
    drive(r.bytes, r.samples, r.burst, &mut t.calls, |p| {
        publisher.loan_slice_uninit(p.len())?.write_from_slice(p).send()?;
        Ok(())
    })?;
    finish_child(child, out, out_file, r.burst, t)
}

fn bourse(r: Round, out_file: &std::path::Path, t: &mut Totals) -> anyhow::Result<()> {
    let instance = format!("bench-{}", std::process::id());
    let (bus, p) = Bus::detached(BusOptions::default())?;
    let _bridge =
        IpcBridge::start(&bus, IpcOptions { instance: instance.clone(), ..IpcOptions::default() })?;
    let (child, out) = start_child("bourse", &instance, out_file)?;
    let mut lsn = 0u64;
    drive(r.bytes, r.samples, r.burst, &mut t.calls, |payload| {
        lsn += 1;
        p.publish_raw(lsn, 0, EventKind::Extension, payload)?;
        Ok(())
    })?;
    finish_child(child, out, out_file, r.burst, t)
}

/// The `ipc` case: the three systems at 64 and 512 bytes, interleaved in rounds.
/// `--only ipc` runs all; `--only "ipc bourse"` (or `ipc raw_threadsafe`) one system
/// (`ipc raw` matches both raw ones).
pub fn run(quick: bool, dir: &std::path::Path) -> anyhow::Result<()> {
    let rounds: u64 = if quick { 3 } else { 10 };
    let samples = if quick { 10_000 } else { 100_000 };
    let burst = if quick { 200_000 } else { 2_000_000 };
    let wanted = |role: &str| crate::report::wanted(&format!("ipc {role}"));
    let out_file = dir.join(format!("ipc-latencies-{}", std::process::id()));
    for bytes in [64usize, 512] {
        let r = Round { bytes, samples: samples / rounds, burst: burst / rounds };
        let mut totals =
            [Totals::new("iceoryx2"), Totals::new("iceoryx2_threadsafe"), Totals::new("bourse")];
        for round in 0..rounds {
            eprintln!("ipc {bytes} B: round {} of {rounds}", round + 1);
            let [t_raw, t_ts, t_bourse] = &mut totals;
            if wanted("raw") {
                raw::<ipc::Service>("raw", r, &out_file, t_raw)?;
            }
            if wanted("raw_threadsafe") {
                raw::<ipc_threadsafe::Service>("raw_threadsafe", r, &out_file, t_ts)?;
            }
            if wanted("bourse") {
                bourse(r, &out_file, t_bourse)?;
            }
        }
        let _ = std::fs::remove_file(&out_file);
        for t in totals.iter().filter(|t| !t.lat.all.is_empty()) {
            t.emit(bytes);
        }
        let [raw_t, ts_t, b] = &totals;
        if b.lat.all.is_empty() {
            continue;
        }
        let params = json!({"bytes": bytes});
        for floor in [raw_t, ts_t].into_iter().filter(|t| !t.lat.all.is_empty()) {
            b.lat.emit_ratios(&floor.lat, floor.system, (SUITE, "ipc", "bourse"), &params);
        }
    }
    Ok(())
}
