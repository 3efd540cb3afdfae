//! `bourse inspect wal PATH`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use bourse_fs::{RealFs, Vfs};
use bourse_model::{Event, EventKind};
use bourse_wal::{format::parse_segment_file_name, inspect_segment};

/// Dumps one segment or every segment of a WAL directory.
pub(crate) fn wal(path: &Path, limit: Option<u64>) -> anyhow::Result<ExitCode> {
    let segments: Vec<PathBuf> = if path.is_dir() {
        let names = RealFs.list_dir(path).with_context(|| format!("listing {}", path.display()))?;
        names
            .iter()
            .filter(|n| parse_segment_file_name(n).is_some())
            .map(|n| path.join(n))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut left = limit.unwrap_or(u64::MAX);
    let mut damaged = false;
    for seg in segments {
        if left == 0 {
            break;
        }
        let _ = writeln!(out, "== segment {}", seg.display());
        let mut io_result = Ok(());
        let (_header, damage) = inspect_segment(&RealFs, &seg, |r| {
            if left == 0 || io_result.is_err() {
                return;
            }
            left -= 1;
            let kind = EventKind::from_u16(r.kind)
                .map_or_else(|| format!("kind#{}", r.kind), |k| k.name().to_string());
            let event = Event::decode(r.payload)
                .map_or_else(|e| format!("(not a model event: {e})"), |e| e.to_json());
            let when = humantime::format_rfc3339_nanos(
                UNIX_EPOCH + Duration::from_nanos(r.timestamp.max(0) as u64),
            );
            let end = if r.batch_end { "|" } else { " " };
            io_result = writeln!(
                out,
                "{:>12} {:>12}{end} {:<18} {:>7}  {when}  {event}",
                r.offset,
                r.lsn.0,
                kind,
                r.payload.len()
            );
        })?;
        if io_result.is_err() {
            // NOTE: the reader closed the pipe (`| head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
        if let Some((offset, kind)) = damage {
            damaged = true;
            let _ = writeln!(out, "-- decoding stopped at offset {offset}: {kind}");
        }
    }
    let _ = writeln!(
        out,
        "-- columns: offset, LSN ('|' ends a batch), kind, payload bytes, timestamp, event"
    );
    Ok(if damaged { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Printable form of a key: UTF-8 as is, other bytes escaped.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Dumps one SSTable.
/// For an engine partition's table: the stored event, shortened (values that are not
/// events, like order and user records or index entries, show nothing).
fn engine_value(v: &[u8]) -> String {
    match bourse_model::Event::decode(v) {
        Ok(e) => {
            let json = e.to_json();
            let short: String = json.chars().take(100).collect();
            format!("  {short}{}", if json.len() > short.len() { " ..." } else { "" })
        }
        Err(_) => String::new(),
    }
}

pub(crate) fn sst(path: &Path, limit: Option<u64>) -> anyhow::Result<ExitCode> {
    let (dir, id) = table_location(path)?;
    let table = bourse_lsm::Table::open(&RealFs, &dir, id)?;
    let m = table.meta();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(
        out,
        "== table {} ({} bytes): {} entries, {} tombstones, sequences {}..={}, keys {:?}..={:?}",
        path.display(),
        m.bytes,
        m.entries,
        m.tombstones,
        m.min_seq,
        m.max_seq,
        show(&m.smallest),
        show(&m.largest)
    );
    for e in
        table.iter_from(None).take(usize::try_from(limit.unwrap_or(u64::MAX)).unwrap_or(usize::MAX))
    {
        match e {
            Ok(e) => {
                if writeln!(
                    out,
                    "{:>12} {:<6} {:>8}  {}{}",
                    e.seq,
                    format!("{:?}", e.kind),
                    e.value.len(),
                    show(&e.key),
                    engine_value(&e.value)
                )
                .is_err()
                {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(err) => {
                let _ = writeln!(out, "-- stopped: {err}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    let _ = writeln!(
        out,
        "-- columns: sequence, kind, value bytes, key, and the event stored (engine tables)"
    );
    Ok(ExitCode::SUCCESS)
}

fn table_location(path: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".sst"))
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("{} is not a table file (NNNNNNNNNN.sst)", path.display()))?;
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok((dir, id))
}

/// Dumps the manifest of a tree directory.
pub(crate) fn manifest(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some((shape, path, torn)) = bourse_lsm::manifest::Manifest::read(&RealFs, dir)? else {
        anyhow::bail!("no CURRENT in {}: not an LSM tree directory", dir.display());
    };
    println!(
        "== manifest {}: flushed sequence {}, next table id {}",
        path.display(),
        shape.flushed_seq,
        shape.next_id
    );
    if let Some(offset) = torn {
        println!("-- torn record at offset {offset} (open cuts it)");
    }
    for (level, tables) in shape.levels.iter().enumerate() {
        let bytes: u64 = tables.values().map(|m| m.bytes).sum();
        println!("L{level}: {} tables, {bytes} bytes", tables.len());
        for m in tables.values() {
            println!(
                "  {:010}.sst {:>10} bytes {:>8} entries  seq {}..={}  keys {:?}..={:?}",
                m.id,
                m.bytes,
                m.entries,
                m.min_seq,
                m.max_seq,
                show(&m.smallest),
                show(&m.largest)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
