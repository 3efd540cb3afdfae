//! Exchange snapshots: the whole [`Exchange`] as of one request, so recovery replays the
//! journal from there instead of from LSN 1 and the WAL can be truncated below it.
//!
//! File `DATA/sim/snapshot`, replaced atomically (write `snapshot.tmp`, fsync, rename,
//! fsync the directory). Little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `BSIMSNAP` |
//! | 8 | 4 | version (1) |
//! | 12 | 8 | LSN of the last request the state includes; its answers are durable in the journal |
//! | 20 | 8 | body length |
//! | 28 | 4 | CRC32C of the body |
//! | 32 | 4 | CRC32C of bytes 0..32 |
//! | 36 | n | body: the exchange, postcard-encoded |
//!
//! A file that fails any check is reported, never skipped: recovering from an older point
//! would answer requests twice. Removing the file makes recovery start from LSN 1, which
//! works while the journal still reaches back that far.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Exchange};

const MAGIC: [u8; 8] = *b"BSIMSNAP";
const VERSION: u32 = 1;
const HEADER: usize = 36;

/// The snapshot file in a data directory.
pub fn path(data: &Path) -> PathBuf {
    data.join("sim").join("snapshot")
}

fn io(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::Snapshot(format!("{what} {}: {e}", p.display()))
}

/// Writes the snapshot of `exchange` as of request `lsn`, atomically.
pub fn write(data: &Path, lsn: u64, exchange: &Exchange) -> Result<(), Error> {
    let body =
        postcard::to_allocvec(exchange).map_err(|e| Error::Snapshot(format!("encoding: {e}")))?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&lsn.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let head_crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&head_crc.to_le_bytes());
    bytes.extend_from_slice(&body);
    let file = path(data);
    let dir = file.parent().unwrap_or(data).to_path_buf();
    // Synced into the data directory when made: the journal is truncated below the
    // snapshot, so a power loss must not take the snapshot's directory away.
    bourse_fs::create_dir_durable(&bourse_fs::RealFs, &dir).map_err(|e| io("creating", &dir, e))?;
    let tmp = dir.join("snapshot.tmp");
    {
        let mut f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    }
    fs::rename(&tmp, &file).map_err(|e| io("renaming", &tmp, e))?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", &dir, e))?;
    Ok(())
}

/// Reads the snapshot, if there is one: the LSN it is as of and the exchange.
pub fn read(data: &Path) -> Result<Option<(u64, Exchange)>, Error> {
    let file = path(data);
    let bytes = match fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &file, e)),
    };
    let bad = |why: &str| {
        Error::Snapshot(format!(
            "{} is damaged ({why}); remove it to rebuild the exchange from LSN 1",
            file.display()
        ))
    };
    if bytes.len() < HEADER || bytes[..8] != MAGIC {
        return Err(bad("no snapshot header"));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if crc32c::crc32c(&bytes[..32]) != u32_at(32) {
        return Err(bad("header checksum"));
    }
    if u32_at(8) != VERSION {
        return Err(bad(&format!("version {} is not {VERSION}", u32_at(8))));
    }
    let lsn = u64_at(12);
    let len = u64_at(20);
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(bad(&format!("body is {} bytes, header says {len}", body.len())));
    }
    if crc32c::crc32c(body) != u32_at(28) {
        return Err(bad("body checksum"));
    }
    let exchange =
        postcard::from_bytes(body).map_err(|e| bad(&format!("body does not decode: {e}")))?;
    Ok(Some((lsn, exchange)))
}
