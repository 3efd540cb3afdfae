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
    let wal = if dir.is_dir() { Some(verify_wal(&dir)?) } else { None };
    let wal_clean = wal.as_ref().is_none_or(|w| w.0);
    let mut trees_clean = true;
    let mut flushed = Vec::new();
    for t in &trees {
        let (clean, seq) = verify_tree(t)?;
        trees_clean &= clean;
        flushed.push((t.clone(), seq));
    }
    let engine_clean = if data.join("parts").is_dir() {
        verify_engine(data, wal.map(|w| (w.1, w.2)), &flushed)?
    } else {
        true
    };
    if wal_clean && trees_clean && engine_clean {
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

/// Checks that tie an engine's partitions to its WAL: every listed instrument partition
/// exists and every instrument directory is listed; the WAL still holds every LSN some
/// partition lacks; no partition is ahead of the WAL.
fn verify_engine(
    data: &Path,
    wal: Option<(u64, u64)>,
    flushed: &[(std::path::PathBuf, u64)],
) -> anyhow::Result<bool> {
    let mut clean = true;
    // A build opens only its own key layout; a directory from before the layout file
    // has data and no file (layout 1).
    let this = bourse_engine::layout::KEY_LAYOUT;
    match bourse_engine::data_layout(&RealFs, data) {
        Ok(Some(n)) if n == this => println!("engine: key layout {n}"),
        Ok(found) => {
            let found = found.map_or("1 (no layout file)".to_string(), |n| n.to_string());
            println!("  INCOMPATIBLE: key layout {found}; this build opens only layout {this}");
            clean = false;
        }
        Err(e) => {
            println!("  CORRUPT: {e}");
            clean = false;
        }
    }
    let inst = data.join("parts/instruments");
    let list_path = inst.join(bourse_engine::PARTITION_LIST);
    let listed: Vec<String> = std::fs::read_to_string(&list_path)
        .map(|t| t.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    // A listed partition without a tree is what a crash between the list and the tree's
    // creation leaves: the open creates it and replays it from the WAL's first record,
    // which the engine kept at or before the partition's first event. From outside that
    // is provable only when the WAL was never truncated.
    let wal_from = wal.map(|(first, _)| first);
    let mut treeless = false;
    for name in &listed {
        if !bourse_lsm::is_tree_dir(&RealFs, &inst.join(name)) {
            treeless = true;
            if wal_from == Some(1) {
                println!(
                    "  note: partition {name} is listed in {} but has no tree yet (a creation cut short); opening creates it and replays it from the whole WAL",
                    list_path.display()
                );
            } else {
                println!(
                    "  CORRUPT: partition {name} is listed in {} but has no tree, and the WAL starts at LSN {}: if the partition had events before it, they are lost",
                    list_path.display(),
                    wal_from.unwrap_or(0)
                );
                clean = false;
            }
        }
    }
    for (dir, _) in flushed {
        if dir.parent() == Some(inst.as_path()) {
            let name =
                dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !listed.contains(&name) {
                println!(
                    "  CORRUPT: {} is not listed in {}: the engine would not open it",
                    dir.display(),
                    list_path.display()
                );
                clean = false;
            }
        }
    }
    // (A listed partition without a tree is created with nothing flushed.)
    let min = if treeless { 0 } else { flushed.iter().map(|f| f.1).min().unwrap_or(0) };
    let max = flushed.iter().map(|f| f.1).max().unwrap_or(0);
    match wal {
        Some((first, last)) => {
            // An empty WAL (everything flushed and truncated) ends just before it starts.
            let last = if last == 0 { first.saturating_sub(1) } else { last };
            if last >= first && first > min + 1 {
                println!(
                    "  CORRUPT: a partition holds only up to LSN {min} but the WAL starts at LSN {first}: LSNs {}..{} are lost",
                    min + 1,
                    first - 1
                );
                clean = false;
            }
            if max > last {
                println!("  CORRUPT: a partition holds LSN {max} but the WAL ends at LSN {last}");
                clean = false;
            }
            if clean {
                println!(
                    "engine: {} instrument partitions listed; opening replays the WAL after LSN {min} (up to {last})",
                    listed.len()
                );
            }
        }
        None => {
            println!("  CORRUPT: {} has partitions but no WAL", data.display());
            clean = false;
        }
    }
    Ok(clean)
}

fn verify_tree(dir: &Path) -> anyhow::Result<(bool, u64)> {
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
    Ok((report.is_clean(), report.flushed_seq))
}

/// Whether the WAL is clean, its first and last LSN.
fn verify_wal(dir: &Path) -> anyhow::Result<(bool, u64, u64)> {
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
    Ok((report.is_clean(), first, last))
}
