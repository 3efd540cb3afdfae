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
