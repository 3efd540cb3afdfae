//! `bourse verify --data DIR`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bourse_fs::RealFs;
use bourse_wal::{verify_dir, WalOptions};

/// Verifies the WAL of a data directory; exit 1 on any problem recovery would not
/// tolerate.
pub(crate) fn run(data: &Path) -> anyhow::Result<ExitCode> {
    let dir = crate::wal_dir(data);
    if !dir.is_dir() {
        bail!("no WAL at {} (is {} a Bourse data directory?)", dir.display(), data.display());
    }
    let report = verify_dir(&RealFs, &dir, &WalOptions::default())
        .with_context(|| format!("reading {}", dir.display()))?;
    let bytes: u64 = report.segments.iter().map(|s| s.bytes).sum();
    let first = report.segments.first().map(|s| s.first_lsn.0).unwrap_or(0);
    let last = report.segments.iter().rev().find_map(|s| s.last_lsn).map_or(0, |l| l.0);
    println!(
        "WAL {}: {} segments, {} records, LSN {first}..={last}, {:.1} MB on disk",
        dir.display(),
        report.segments.len(),
        report.records(),
        bytes as f64 / 1e6
    );
    for s in &report.segments {
        let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let range = match s.last_lsn {
            Some(l) => format!("LSN {}..={}", s.first_lsn, l),
            None => format!("empty, starts at LSN {}", s.first_lsn),
        };
        let status = match (&s.problem, s.tolerated) {
            (None, _) => "ok".to_string(),
            (Some(p), true) => format!("torn tail, tolerated (recovery cuts it): {p}"),
            (Some(p), false) => format!("CORRUPT: {p}"),
        };
        println!("  {name}  {range}  {} records  {status}", s.records);
    }
    if report.is_clean() {
        println!("verify: clean");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verify: FAILED");
        Ok(ExitCode::from(1))
    }
}
