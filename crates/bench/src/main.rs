//! `bourse-bench`: Bourse side by side with its peers and the physical floor.
//!
//! One runner, one output shape (`BENCH.md`): every result is a JSON object on its own
//! line on stdout; human text goes to stderr. Peers (RocksDB) are compiled only with the
//! `peers` feature, so the default build and the tests never compile them. A comparison
//! is made only between runs in the same invocation, interleaved, on the same disk.
//!
//! This crate is **not** compiled into Bourse and is not a test: it asserts nothing.

/// jemalloc rather than the system's malloc: the engine's apply path allocates small
/// buffers on one thread and frees them on another, which glibc's malloc does slowly
/// (see docs/server.md, "Memory allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bus;
mod engine;
mod ipc;
mod lsm;
mod memory;
mod report;
mod server;
mod stall;
mod wal;

#[cfg(feature = "peers")]
mod fjall_peer;
#[cfg(feature = "peers")]
mod rocks;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// Benchmarks of Bourse, with peers and physical floors.
#[derive(Debug, Parser)]
#[command(name = "bourse-bench", about)]
struct Cli {
    /// Which suite to run.
    suite: Suite,
    /// Finish each suite in under 60 seconds (what reviewers run).
    #[arg(long)]
    quick: bool,
    /// Directory on the disk to measure (made if missing; a temporary directory is made
    /// inside it).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Run only the cases whose name contains this text (repeatable), e.g.
    /// `--only submit_buffered`; for profiling one case.
    #[arg(long)]
    only: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Suite {
    /// The write-ahead log.
    Wal,
    /// The LSM tree.
    Lsm,
    /// The exchange store (`Engine::submit` and queries).
    Engine,
    /// Reopen and WAL replay of the exchange store.
    Recovery,
    /// The bus: in-process fan-out, the SPSC floor, replay.
    Bus,
    /// The `bourse` server over loopback HTTP and WebSocket.
    Server,
    /// Every suite.
    All,
}

fn main() -> anyhow::Result<()> {
    if let Some(r) = ipc::child_main() {
        return r;
    }
    if let Some(r) = engine::reopen_child() {
        return r;
    }
    let cli = Cli::parse();
    report::set_only(cli.only.clone());
    // The directory to measure in is made when it does not exist yet.
    std::fs::create_dir_all(&cli.dir)
        .with_context(|| format!("cannot create the directory {}", cli.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("bourse-bench-")
        .tempdir_in(&cli.dir)
        .with_context(|| format!("cannot make a directory inside {}", cli.dir.display()))?;
    eprintln!("bourse-bench: measuring in {}", tmp.path().display());
    if !cfg!(feature = "peers") {
        eprintln!("bourse-bench: built without the `peers` feature: peers are skipped");
    }
    match cli.suite {
        Suite::Wal => wal::run(tmp.path(), cli.quick)?,
        Suite::Lsm => lsm::run(tmp.path(), cli.quick)?,
        Suite::Engine => engine::run(tmp.path(), cli.quick)?,
        Suite::Recovery => engine::run_recovery(tmp.path(), cli.quick)?,
        Suite::Bus => bus::run(tmp.path(), cli.quick)?,
        Suite::Server => server::run(tmp.path(), cli.quick)?,
        Suite::All => {
            wal::run(tmp.path(), cli.quick)?;
            lsm::run(tmp.path(), cli.quick)?;
            engine::run(tmp.path(), cli.quick)?;
            engine::run_recovery(tmp.path(), cli.quick)?;
            bus::run(tmp.path(), cli.quick)?;
            server::run(tmp.path(), cli.quick)?;
        }
    }
    Ok(())
}
