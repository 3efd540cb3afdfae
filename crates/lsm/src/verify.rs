//! Offline checks of a tree directory (`bourse verify`). Read-only.

use std::path::{Path, PathBuf};

use bourse_fs::Vfs;

use crate::manifest::Manifest;
use crate::table::Table;
use crate::{Error, Result};

/// What `verify_tree` found.
#[derive(Debug, Clone, Default)]
pub struct TreeReport {
    /// The manifest read.
    pub manifest: PathBuf,
    /// Tables checked, with their level and entry count.
    pub tables: Vec<(usize, PathBuf, u64)>,
    /// Problems that open would refuse.
    pub problems: Vec<String>,
    /// Conditions open repairs by itself (a torn manifest tail, orphan tables).
    pub tolerated: Vec<String>,
    /// Highest flushed sequence.
    pub flushed_seq: u64,
}

impl TreeReport {
    /// True when nothing open would refuse was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Whether `dir` holds a tree (it has a `CURRENT` file).
pub fn is_tree_dir(vfs: &dyn Vfs, dir: &Path) -> bool {
    vfs.exists(&dir.join("CURRENT")).unwrap_or(false)
}

/// Checks the manifest, then every table it lists block by block (checksums, key order,
/// entry counts), and lists table files it does not know.
pub fn verify_tree(vfs: &dyn Vfs, dir: &Path) -> Result<TreeReport> {
    let mut report = TreeReport::default();
    let (shape, path, torn) = match Manifest::read(vfs, dir) {
        Ok(Some(found)) => found,
        Ok(None) => {
            report.problems.push(format!("no CURRENT in {}", dir.display()));
            return Ok(report);
        }
        Err(e @ Error::Corrupt { .. }) => {
            report.problems.push(e.to_string());
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.manifest = path;
    report.flushed_seq = shape.flushed_seq;
    if let Some(offset) = torn {
        report.tolerated.push(format!("torn manifest record at offset {offset} (open cuts it)"));
    }
    for (level, tables) in shape.levels.iter().enumerate() {
        for id in tables.keys() {
            let table_path = dir.join(crate::table::table_file_name(*id));
            match Table::open(vfs, dir, *id).and_then(|t| t.verify()) {
                Ok(n) => report.tables.push((level, table_path, n)),
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }
    for name in vfs.list_dir(dir).map_err(Error::io("list directory", dir))? {
        if let Some(id) = name.strip_suffix(".sst").and_then(|n| n.parse::<u64>().ok()) {
            if !shape.levels.iter().any(|l| l.contains_key(&id)) {
                report.tolerated.push(format!("orphan table {name} (open removes it)"));
            }
        }
    }
    Ok(report)
}
