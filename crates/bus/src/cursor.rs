//! Durable cursors: a named subscriber's acknowledged LSN, persisted crash-safely.
//!
//! One file per cursor, `<engine dir>/cursors/<name>.cur`, replaced atomically
//! (write temp → fsync → rename → fsync directory), 32 bytes, little-endian:
//!
//! | offset | width | field |
//! |---|---|---|
//! | 0 | 4 | magic `BCUR` |
//! | 4 | 2 | version (1) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 8 | acknowledged LSN (every LSN up to it is processed) |
//! | 16 | 8 | when it was written (ns since the Unix epoch) |
//! | 24 | 4 | CRC32C of bytes 0–23 |
//! | 28 | 4 | reserved (0) |

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bourse_engine::{Engine, WalPin};
use bourse_fs::Vfs;
use parking_lot::Mutex;

use crate::{Error, Result};

/// The directory (under the engine's) holding cursor files.
pub const CURSOR_DIR: &str = "cursors";
/// The size of a cursor file.
pub const CURSOR_BYTES: usize = 32;
const MAGIC: &[u8; 4] = b"BCUR";
const VERSION: u16 = 1;
const SUFFIX: &str = ".cur";

/// Encodes a cursor file.
pub fn encode_cursor(acked: u64, written_ns: i64) -> [u8; CURSOR_BYTES] {
    let mut b = [0u8; CURSOR_BYTES];
    b[0..4].copy_from_slice(MAGIC);
    b[4..6].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&acked.to_le_bytes());
    b[16..24].copy_from_slice(&written_ns.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a cursor file: the acknowledged LSN and when it was written.
pub fn decode_cursor(b: &[u8]) -> std::result::Result<(u64, i64), &'static str> {
    if b.len() != CURSOR_BYTES {
        return Err("wrong size");
    }
    if &b[0..4] != MAGIC {
        return Err("bad magic");
    }
    let mut u16b = [0u8; 2];
    u16b.copy_from_slice(&b[4..6]);
    if u16::from_le_bytes(u16b) != VERSION {
        return Err("unknown version");
    }
    let mut u32b = [0u8; 4];
    u32b.copy_from_slice(&b[24..28]);
    if crc32c::crc32c(&b[0..24]) != u32::from_le_bytes(u32b) {
        return Err("checksum mismatch");
    }
    let mut u64b = [0u8; 8];
    u64b.copy_from_slice(&b[8..16]);
    let acked = u64::from_le_bytes(u64b);
    u64b.copy_from_slice(&b[16..24]);
    Ok((acked, i64::from_le_bytes(u64b)))
}

/// The lowest LSN the durable cursors under the engine directory `dir` still need
/// (`None` without cursors). Pass it as `EngineOptions::wal_hold_at_open` so nothing is
/// truncated between the engine's open and [`crate::Bus::attach`].
pub fn cursor_floor(dir: &std::path::Path) -> Result<Option<u64>> {
    let vfs = bourse_fs::RealFs::shared();
    let cursors = read_cursors(&*vfs, &dir.join(CURSOR_DIR))?;
    Ok(cursors.iter().map(|(_, acked)| acked + 1).min())
}

/// Every cursor file in `dir`: (name, acknowledged LSN). A missing directory has none.
fn read_cursors(vfs: &dyn Vfs, dir: &std::path::Path) -> Result<Vec<(String, u64)>> {
    let io = |op, source| Error::CursorIo { name: "*".into(), op, source };
    if !vfs.exists(dir).map_err(|e| io("stat directory", e))? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for file in vfs.list_dir(dir).map_err(|e| io("list directory", e))? {
        let Some(name) = file.strip_suffix(SUFFIX) else {
            // A leftover temporary file of an interrupted write: the previous
            // version is still in place.
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        let path = dir.join(&file);
        let bytes = bourse_fs::read_file(vfs, &path).map_err(|source| Error::CursorIo {
            name: name.into(),
            op: "read",
            source,
        })?;
        let (acked, _) = decode_cursor(&bytes)
            .map_err(|why| Error::CursorCorrupt { path: path.clone(), why })?;
        out.push((name.to_owned(), acked));
    }
    Ok(out)
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::BadCursorName { name: name.to_owned() })
    }
}

/// One durable cursor's live state.
pub(crate) struct Cursor {
    pub name: String,
    /// Acknowledged (in memory).
    pub acked: AtomicU64,
    /// Acknowledged and on disk.
    pub persisted: AtomicU64,
    /// Holds the WAL from `acked + 1`; dropped when the cursor falls too far behind.
    pub pin: Mutex<Option<WalPin>>,
    pub fell_behind: AtomicBool,
    pub in_use: AtomicBool,
    /// Serialises writes of this cursor's file.
    write_lock: Mutex<()>,
}

/// Every durable cursor of a bus.
pub(crate) struct Cursors {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    pub map: Mutex<std::collections::BTreeMap<String, Arc<Cursor>>>,
}

impl Cursors {
    /// Loads every cursor under `<engine dir>/cursors` and pins the WAL for each.
    pub fn load(engine: &Engine) -> Result<Cursors> {
        let vfs = engine.vfs();
        let dir = engine.dir().join(CURSOR_DIR);
        let io = |op, source| Error::CursorIo { name: "*".into(), op, source };
        bourse_fs::create_dir_durable(&*vfs, &dir).map_err(|e| io("create directory", e))?;
        let mut map = std::collections::BTreeMap::new();
        for (name, acked) in read_cursors(&*vfs, &dir)? {
            let pin = engine.pin_wal(acked + 1);
            map.insert(name.clone(), Arc::new(Cursor::new(&name, acked, Some(pin))));
        }
        Ok(Cursors { vfs, dir, map: Mutex::new(map) })
    }

    /// Writes the cursor's acknowledged LSN if it moved since the last write.
    pub fn persist(&self, c: &Cursor) -> Result<()> {
        let _g = c.write_lock.lock();
        let acked = c.acked.load(Ordering::Acquire);
        if acked == c.persisted.load(Ordering::Acquire) && self.exists(&c.name) {
            return Ok(());
        }
        let now = crate::bus::now_ns();
        let file = format!("{}{SUFFIX}", c.name);
        bourse_fs::write_file_atomic(&*self.vfs, &self.dir, &file, &encode_cursor(acked, now))
            .map_err(|source| Error::CursorIo { name: c.name.clone(), op: "write", source })?;
        c.persisted.store(acked, Ordering::Release);
        Ok(())
    }

    fn exists(&self, name: &str) -> bool {
        self.vfs.exists(&self.dir.join(format!("{name}{SUFFIX}"))).unwrap_or(false)
    }

    /// Persists every cursor that moved.
    pub fn persist_all(&self) -> Result<()> {
        let all: Vec<Arc<Cursor>> = self.map.lock().values().cloned().collect();
        for c in all {
            self.persist(&c)?;
        }
        Ok(())
    }
}

impl Cursor {
    pub fn new(name: &str, acked: u64, pin: Option<WalPin>) -> Cursor {
        Cursor {
            name: name.to_owned(),
            acked: AtomicU64::new(acked),
            persisted: AtomicU64::new(acked),
            pin: Mutex::new(pin),
            fell_behind: AtomicBool::new(false),
            in_use: AtomicBool::new(false),
            write_lock: Mutex::new(()),
        }
    }

    /// Records an acknowledgement (never moves backwards) and moves the WAL pin.
    pub fn ack(&self, lsn: u64) {
        let prev = self.acked.fetch_max(lsn, Ordering::AcqRel);
        if lsn > prev {
            if let Some(pin) = &*self.pin.lock() {
                pin.advance(lsn + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn cursor_files_round_trip_and_reject_damage() {
        let b = encode_cursor(12345, 678);
        assert_eq!(decode_cursor(&b), Ok((12345, 678)));
        for i in 0..28 {
            for bit in 0..8 {
                let mut d = b;
                d[i] ^= 1 << bit;
                assert!(decode_cursor(&d).is_err(), "flip of byte {i} bit {bit} went unnoticed");
            }
        }
        assert!(decode_cursor(&b[..31]).is_err());
    }

    #[test]
    fn cursor_names_are_checked() {
        for ok in ["a", "gateway-1", "olap.export", "A_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
