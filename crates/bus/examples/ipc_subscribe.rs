//! Subscribes to a running Bourse from another process over iceoryx2 and prints the
//! events (one JSON line each), gaps and heartbeats.
//!
//! ```text
//! cargo run --release -p bourse -- publish --data /tmp/bourse-ipc --rate 1000
//! cargo run --release -p bourse-bus --example ipc_subscribe -- --topics trades,market
//! cargo run --release -p bourse-bus --example ipc_subscribe -- --from 1 --count 100
//! cargo run --release -p bourse-bus --example ipc_subscribe -- --cursor my-reader
//! ```
//!
//! Flags: `--instance NAME` (default `default`), `--from LSN` (replay from there, then
//! live), `--cursor NAME` (resume a durable cursor; acknowledges what it printed),
//! `--topics LIST` (orders, trades, accounts, positions, market, users, other),
//! `--instrument ID`, `--account ID`, `--count N` (stop after N events).

use std::process::ExitCode;
use std::time::Duration;

use bourse_bus::ipc::{IpcStart, IpcSubscribeOptions, IpcSubscriber};
use bourse_bus::{Filter, Message, Topic};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = IpcSubscribeOptions::new("default");
    let mut filter = Filter::all();
    let mut count = u64::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--instance" => opts.instance = value()?,
            "--from" => opts.start = IpcStart::Lsn(value()?.parse()?),
            "--cursor" => opts.start = IpcStart::Cursor(value()?),
            "--topics" => {
                for name in value()?.split(',') {
                    let t = Topic::from_name(name).ok_or(format!("unknown topic {name:?}"))?;
                    filter = filter.topic(t);
                }
            }
            "--instrument" => filter = filter.instrument(&value()?),
            "--account" => filter = filter.account(&value()?),
            "--count" => count = value()?.parse()?,
            other => return Err(format!("unknown flag {other:?}").into()),
        }
    }
    let durable = matches!(opts.start, IpcStart::Cursor(_));
    let mut sub = IpcSubscriber::connect(opts.filter(filter))?;
    eprintln!("connected; every LSN up to {} is behind us", sub.position());
    let mut printed = 0u64;
    while printed < count {
        let Some(msg) = sub.next(Duration::from_secs(1))? else {
            eprintln!("(nothing for 1 s: is the publisher running?)");
            continue;
        };
        match msg {
            Message::Event(d) => {
                let lsn = d.lsn;
                println!("{{\"lsn\":{lsn},\"event\":{}}}", serde_json::to_string(&d.event()?)?);
                printed += 1;
                if durable {
                    sub.ack(lsn)?;
                }
            }
            Message::Lagged { from, to } => eprintln!("missed {from}..={to}"),
            Message::Heartbeat { lsn } => eprintln!("idle at LSN {lsn}"),
        }
    }
    if durable {
        sub.flush_acks()?;
    }
    Ok(())
}
