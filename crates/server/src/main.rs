//! `bourse`: the command-line front of Bourse.
//!
//! `bourse demo` serves the simulated exchange over HTTP and WebSocket; `bourse serve`
//! serves a store without it. The other commands verify, back up, inspect and publish
//! stores, and `bourse selftest` writes, replays and verifies an exchange-shaped journal.
//! This binary wires crates together and holds no business logic.

/// jemalloc rather than the system's malloc: the engine's apply path allocates small
/// buffers on one thread and frees them on another, which glibc's malloc does slowly
/// (see docs/server.md, "Memory allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod inspect;
mod publish;
mod selftest;
mod serve;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Bourse: the storage and distribution engine for exchanges.
#[derive(Debug, Parser)]
#[command(name = "bourse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the simulated exchange: a store in DATA, the reference exchange answering
    /// orders, simulated traders, demo users (credentials printed), HTTP and WebSocket
    /// on LISTEN. Stops cleanly on SIGINT/SIGTERM.
    Demo {
        /// Data directory.
        #[arg(long, default_value = "./bourse-data")]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
        /// Server configuration (TOML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Orders per second sent by the simulated traders.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Run the exchange without simulated traders.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve a store over HTTP and WebSocket without the simulated exchange.
    Serve {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Server configuration (TOML); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write an exchange-shaped journal through the WAL (concurrent durable writers),
    /// replay it, verify it and show what is in it.
    Selftest {
        /// Data directory (the WAL goes to DATA/wal).
        #[arg(long, default_value = "./bourse-data")]
        data: PathBuf,
        /// How many events to append.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Concurrent writer threads.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Events per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Publish a store's committed events to other processes over iceoryx2 shared
    /// memory (services `bourse/INSTANCE/all`, `.../trades`, ...), optionally writing
    /// the exchange-shaped sample mix; stops on SIGINT/SIGTERM or after `--seconds`.
    Publish {
        /// Data directory.
        #[arg(long, default_value = "./bourse-data")]
        data: PathBuf,
        /// The iceoryx2 instance name (several stores can share a machine).
        #[arg(long, default_value = "default")]
        instance: String,
        /// Sample events written per second (0: publish only what others write).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Check every WAL segment and every LSM tree (manifest, every table block by block)
    /// of a data directory; exit 0 only when it is clean (a torn tail of the newest WAL
    /// segment or of a manifest, which recovery cuts, is reported and tolerated).
    Verify {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Write a consistent, openable copy of a store (tables hard-linked, plus the WAL tail
    /// they need). Opens the store, so it must not be running; a running server takes
    /// backups through the engine while writes continue.
    Backup {
        /// Data directory of the store.
        #[arg(long)]
        data: PathBuf,
        /// Where to write the copy (must not exist or be empty).
        #[arg(long)]
        to: PathBuf,
    },
    /// Human-readable dumps of Bourse's files.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
}

#[derive(Debug, Subcommand)]
enum Inspect {
    /// Dump a WAL segment file, or every segment of a WAL directory: header, then each
    /// record's offset, LSN, kind, size, timestamp and decoded event.
    Wal {
        /// A segment file or a WAL directory.
        path: PathBuf,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Dump an SSTable: properties, then every entry (key, sequence, kind, value size).
    Sst {
        /// The `.sst` file.
        path: PathBuf,
        /// Stop after this many entries.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Dump the manifest of an LSM tree directory: flushed sequence and tables per level.
    Manifest {
        /// The tree directory (holding `CURRENT`).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,iceoryx2_bb_loggers=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { data, listen, config, rate, quiet } => {
            server_config(config.as_deref(), Some(data), Some(listen)).and_then(|cfg| {
                let mode = serve::Mode { sim: true, demo: true, traders: !quiet, demo_rate: rate };
                serve::run(cfg, mode).map(|()| ExitCode::SUCCESS)
            })
        }
        Command::Serve { data, listen, config } => server_config(config.as_deref(), data, listen)
            .and_then(|cfg| {
                let mode = serve::Mode { sim: false, demo: false, traders: false, demo_rate: 0 };
                serve::run(cfg, mode).map(|()| ExitCode::SUCCESS)
            }),
        Command::Selftest { data, events, writers, batch } => {
            selftest::run(&data, events, writers, batch)
        }
        Command::Publish { data, instance, rate, seconds } => {
            publish::run(&data, &instance, rate, seconds)
        }
        Command::Verify { data } => verify::run(&data),
        Command::Backup { data, to } => backup(&data, &to),
        Command::Inspect { what: Inspect::Wal { path, limit } } => inspect::wal(&path, limit),
        Command::Inspect { what: Inspect::Sst { path, limit } } => inspect::sst(&path, limit),
        Command::Inspect { what: Inspect::Manifest { dir } } => inspect::manifest(&dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The configuration file (if any) with the flags laid over it.
fn server_config(
    file: Option<&std::path::Path>,
    data: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<serve::ServerConfig> {
    let mut cfg = match file {
        Some(f) => serve::ServerConfig::load(f)?,
        None => serve::ServerConfig::default(),
    };
    if let Some(d) = data {
        cfg.data = d;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    Ok(cfg)
}

fn backup(data: &std::path::Path, to: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let t = std::time::Instant::now();
    let engine = bourse_engine::Engine::open_with(
        bourse_fs::RealFs::shared(),
        data,
        bourse_engine::EngineOptions::default(),
        &mut |p| {
            let rate = p.records as f64 / p.elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "  replaying the WAL after LSN {}: {} records ({rate:.0}/s){}",
                p.from,
                p.records,
                if p.done { ", done" } else { "" }
            );
        },
    )
    .with_context(|| format!("opening {}", data.display()))?;
    println!(
        "opened {} in {:.2?} (applied LSN {})",
        data.display(),
        t.elapsed(),
        engine.applied_lsn()
    );
    let r = engine.backup(to).with_context(|| format!("backing up into {}", to.display()))?;
    println!(
        "backup written to {} in {:.2?}: {} partitions, journal up to LSN {} (opening it replays from LSN {})",
        to.display(),
        r.elapsed,
        r.partitions,
        r.last_lsn,
        r.replay_from
    );
    engine.close()?;
    Ok(ExitCode::SUCCESS)
}

/// The WAL directory inside a data directory.
pub(crate) fn wal_dir(data: &std::path::Path) -> PathBuf {
    data.join("wal")
}
