//! `bourse verify --data DIR`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bourse_fs::RealFs;
use bourse_wal::{verify_dir, WalOptions};

/// Verifies the WAL and every LSM tree of a data directory; exit 1 on any problem
/// recovery would not tolerate.
pub(crate) fn run(data: &Path) -> anyhow::Result<ExitCode> {
    let dir = crate::wal_dir(data);
    let trees = tree_dirs(data, 3);
    if !dir.is_dir() && trees.is_empty() {
        bail!("no WAL and no LSM tree under {} (is it a Bourse data directory?)", data.display());
    }
    let wal_clean = !dir.is_dir() || verify_wal(&dir)?;
    let mut trees_clean = true;
    for t in &trees {
        trees_clean &= verify_tree(t)?;
    }
    if wal_clean && trees_clean {
        println!("verify: clean");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("verify: FAILED");
        Ok(ExitCode::from(1))
    }
}

/// Directories (up to `depth` below `root`) that hold an LSM tree.
fn tree_dirs(root: &Path, depth: usize) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if bourse_lsm::is_tree_dir(&RealFs, root) {
        out.push(root.to_path_buf());
    }
    if depth > 0 {
        if let Ok(entries) = std::fs::read_dir(root) {
            let mut dirs: Vec<_> =
                entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
            dirs.sort();
            for d in dirs {
                out.extend(tree_dirs(&d, depth - 1));
            }
        }
    }
    out
}

fn verify_tree(dir: &Path) -> anyhow::Result<bool> {
    let report = bourse_lsm::verify_tree(&RealFs, dir)
        .with_context(|| format!("reading {}", dir.display()))?;
    let entries: u64 = report.tables.iter().map(|t| t.2).sum();
    println!(
        "LSM tree {}: {} tables, {entries} entries, flushed to sequence {}",
        dir.display(),
        report.tables.len(),
        report.flushed_seq
    );
    for t in &report.tolerated {
        println!("  tolerated (open repairs it): {t}");
    }
    for p in &report.problems {
        println!("  CORRUPT: {p}");
    }
    Ok(report.is_clean())
}

fn verify_wal(dir: &Path) -> anyhow::Result<bool> {
    let report = verify_dir(&RealFs, dir, &WalOptions::default())
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
    Ok(report.is_clean())
}
