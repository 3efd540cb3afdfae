//! `bus` / `ipc`: cross-process one-way latency and throughput over iceoryx2 —
//! Bourse (bus → bridge → iceoryx2 → `IpcSubscriber`) beside raw iceoryx2
//! publish/subscribe of the same payload (the floor).
//!
//! The subscriber is this benchmark binary again, started as a child
//! (`BOURSE_BENCH_IPC_CHILD`); it prints its result lines on stdout, which the parent
//! relays. Send times are wall-clock nanoseconds in the payload's first 8 bytes (both
//! processes read the same clock); byte 8 is the phase: 0 latency, 1 throughput,
//! 2 end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bourse_bus::ipc::{IpcBridge, IpcOptions, IpcSubscribeOptions, IpcSubscriber};
use bourse_bus::{Bus, BusOptions, Message, OnLag};
use bourse_model::EventKind;
use iceoryx2::prelude::*;
use serde_json::json;

use crate::report::{emit, histogram, record, Latency};

const SUITE: &str = "bus";
const CHILD: &str = "BOURSE_BENCH_IPC_CHILD";
const LATENCY: u8 = 0;
const THROUGHPUT: u8 = 1;
const END: u8 = 2;

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
    let bytes: usize =
        std::env::var("BOURSE_BENCH_IPC_BYTES").ok().and_then(|b| b.parse().ok()).unwrap_or(64);
    Some(match role.as_str() {
        "raw" => raw_child(&name, bytes, "iceoryx2"),
        "raw_threadsafe" => raw_child(&name, bytes, "iceoryx2_threadsafe"),
        "bourse" => bourse_child(&name, bytes),
        other => Err(anyhow::anyhow!("unknown child role {other}")),
    })
}

/// What a child measured, in one place for both systems.
struct Tally {
    h: hdrhistogram::Histogram<u64>,
    got: u64,
    lost: u64,
    first: Option<Instant>,
    last: Instant,
}

impl Tally {
    fn new() -> Tally {
        Tally { h: histogram(), got: 0, lost: 0, first: None, last: Instant::now() }
    }

    /// Returns false at the end marker.
    fn see(&mut self, payload: &[u8]) -> bool {
        let (sent, phase) = read_stamp(payload);
        match phase {
            LATENCY => record(&mut self.h, Duration::from_nanos(wall_ns().saturating_sub(sent))),
            THROUGHPUT => {
                self.first.get_or_insert_with(Instant::now);
                self.last = Instant::now();
                self.got += 1;
            }
            _ => return false,
        }
        true
    }

    fn print(&self, system: &str, bytes: usize) {
        let params = json!({"bytes": bytes});
        Latency::of(&self.h).emit(SUITE, "ipc", system, &params);
        let secs = self.first.map_or(0.0, |f| self.last.duration_since(f).as_secs_f64());
        let rate = if secs > 0.0 { self.got as f64 / secs } else { 0.0 };
        emit(SUITE, "ipc", system, &params, "deliveries", rate, "msg/s");
        emit(SUITE, "ipc", system, &params, "lost_in_throughput_run", self.lost as f64, "msg");
    }
}

fn raw_child(name: &str, bytes: usize, system: &str) -> anyhow::Result<()> {
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
    t.print(system, bytes);
    Ok(())
}

fn bourse_child(name: &str, bytes: usize) -> anyhow::Result<()> {
    let opts = IpcSubscribeOptions::new(name).on_lag(OnLag::Signal).spin(Duration::from_millis(1));
    let mut sub = IpcSubscriber::connect(opts)?;
    println!("ready");
    let mut t = Tally::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match sub.next(Duration::from_millis(100))? {
            Some(Message::Event(d)) if !t.see(d.payload) => break,
            Some(Message::Lagged { from, to }) => t.lost += to - from + 1,
            _ => {}
        }
    }
    t.print("bourse", bytes);
    Ok(())
}

/// Starts the child and waits until it is subscribed; returns it with its output.
fn start_child(
    role: &str,
    name: &str,
    bytes: usize,
) -> anyhow::Result<(std::process::Child, BufReader<std::process::ChildStdout>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD, role)
        .env("BOURSE_BENCH_IPC_NAME", name)
        .env("BOURSE_BENCH_IPC_BYTES", bytes.to_string())
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

fn finish_child(
    mut child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
) -> anyhow::Result<()> {
    for line in out.lines() {
        println!("{}", line?);
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the benchmark child failed: {status}");
    Ok(())
}

/// Runs the three phases through `send`, and reports how long a send call takes in
/// the latency phase (`publish_call_p50`/`_p99`): the publishing side's share of the
/// one-way latency, measured on one clock.
fn drive(
    system: &str,
    bytes: usize,
    samples: u64,
    burst: u64,
    mut send: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut payload = vec![0u8; bytes.max(16)];
    let mut calls = histogram();
    for _ in 0..samples {
        stamp(&mut payload, LATENCY);
        let t = Instant::now();
        send(&payload)?;
        record(&mut calls, t.elapsed());
        pause(Duration::from_micros(10));
    }
    let call = Latency::of(&calls);
    let params = json!({"bytes": bytes});
    emit(SUITE, "ipc", system, &params, "publish_call_p50", call.p50, "us");
    emit(SUITE, "ipc", system, &params, "publish_call_p99", call.p99, "us");
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

/// Raw iceoryx2 through a publisher of service type `S`: `ipc::Service` is the floor;
/// `ipc_threadsafe::Service` (ports behind a mutex) is what the bridge must use, since
/// the bus publishes on whichever thread commits.
fn raw<S: iceoryx2::service::Service>(
    role: &str,
    bytes: usize,
    samples: u64,
    burst: u64,
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
        .initial_max_slice_len(bytes.max(16))
        .allocation_strategy(AllocationStrategy::PowerOfTwo)
        .create()?;
    let (child, out) = start_child(role, &name, bytes)?;
    let system = if role == "raw" { "iceoryx2" } else { "iceoryx2_threadsafe" };
    drive(system, bytes, samples, burst, |p| {
        publisher.loan_slice_uninit(p.len())?.write_from_slice(p).send()?;
        Ok(())
    })?;
    finish_child(child, out)
}

fn bourse(bytes: usize, samples: u64, burst: u64) -> anyhow::Result<()> {
    let instance = format!("bench-{}", std::process::id());
    let (bus, p) = Bus::detached(BusOptions::default())?;
    let _bridge =
        IpcBridge::start(&bus, IpcOptions { instance: instance.clone(), ..IpcOptions::default() })?;
    let (child, out) = start_child("bourse", &instance, bytes)?;
    let mut lsn = 0u64;
    drive("bourse", bytes, samples, burst, |payload| {
        lsn += 1;
        p.publish_raw(lsn, 0, EventKind::Extension, payload)?;
        Ok(())
    })?;
    finish_child(child, out)
}

/// The `ipc` case: both systems at 64 and 512 bytes.
pub fn run(quick: bool) -> anyhow::Result<()> {
    let samples = if quick { 10_000 } else { 100_000 };
    let burst = if quick { 200_000 } else { 2_000_000 };
    // `--only ipc` runs every system; `--only "ipc bourse"` (or `raw`, `raw_threadsafe`)
    // runs one of them.
    let wanted = |role: &str| crate::report::wanted(&format!("ipc {role}"));
    for bytes in [64usize, 512] {
        if wanted("raw") {
            raw::<ipc::Service>("raw", bytes, samples, burst)?;
        }
        if wanted("raw_threadsafe") {
            raw::<ipc_threadsafe::Service>("raw_threadsafe", bytes, samples, burst)?;
        }
        if wanted("bourse") {
            bourse(bytes, samples, burst)?;
        }
    }
    Ok(())
}
