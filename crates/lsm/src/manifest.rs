//! The manifest: which tables make up the tree, as an append-only log of version edits.
//!
//! Files: `MANIFEST-{n:06}` (the log) and `CURRENT` (the name of the live manifest,
//! replaced atomically: write temp → fsync → rename → fsync directory).
//!
//! Record: `len: u32 LE`, `crc32c: u32 LE` (of the payload), payload = one version
//! edit = a varint count of changes, then each change:
//!
//! | tag | change | fields (varints; keys as varint length + bytes) |
//! |----:|--------|--------------------------------------------------|
//! | 1 | add table | level, id, bytes, min_seq, max_seq, entries, tombstones, smallest, largest |
//! | 2 | remove table | level, id |
//! | 3 | flushed sequence | seq |
//! | 4 | next table id | id |
//!
//! An edit is applied whole or not at all: a torn last record (short or failing its
//! checksum, with nothing intact after it) was never acknowledged and is ignored; damage
//! anywhere else is corruption. Every append is `fdatasync`ed before it returns, so no
//! input file is deleted before the edit that removes it is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bourse_fs::{read_file, write_file_atomic, FileRef, OpenMode, Vfs};

use crate::block::{get_varint, put_varint};
use crate::table::{TableId, TableMeta};
use crate::{Error, Result, SeqNo};

/// One change to the tree's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A table joined a level.
    Add {
        /// Level (0 = newest).
        level: u8,
        /// The table.
        meta: TableMeta,
    },
    /// A table left a level.
    Remove {
        /// Level.
        level: u8,
        /// Table id.
        id: TableId,
    },
    /// Every write up to this sequence is in tables.
    FlushedSeq(SeqNo),
    /// Table ids below this are used (never reused, across restarts too).
    NextId(TableId),
}

/// The tree's shape as the manifest describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Tables per level, by id.
    pub levels: Vec<BTreeMap<TableId, TableMeta>>,
    /// Highest flushed sequence.
    pub flushed_seq: SeqNo,
    /// Next unused table id.
    pub next_id: TableId,
}

impl Shape {
    /// Applies one change.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::Add { level, meta } => {
                let l = usize::from(*level);
                if self.levels.len() <= l {
                    self.levels.resize_with(l + 1, BTreeMap::new);
                }
                self.levels[l].insert(meta.id, meta.clone());
                self.next_id = self.next_id.max(meta.id + 1);
            }
            Change::Remove { level, id } => {
                if let Some(l) = self.levels.get_mut(usize::from(*level)) {
                    l.remove(id);
                }
            }
            Change::FlushedSeq(s) => self.flushed_seq = self.flushed_seq.max(*s),
            Change::NextId(id) => self.next_id = self.next_id.max(*id),
        }
    }

    /// The changes that rebuild this shape from nothing.
    pub fn as_changes(&self) -> Vec<Change> {
        let mut out = vec![Change::FlushedSeq(self.flushed_seq), Change::NextId(self.next_id)];
        for (level, tables) in self.levels.iter().enumerate() {
            for meta in tables.values() {
                out.push(Change::Add { level: level as u8, meta: meta.clone() });
            }
        }
        out
    }
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    put_varint(v, b.len() as u64);
    v.extend_from_slice(b);
}

fn get_bytes(b: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let len = usize::try_from(get_varint(b, pos)?).ok()?;
    let out = b.get(*pos..pos.checked_add(len)?)?.to_vec();
    *pos += len;
    Some(out)
}

fn encode_edit(changes: &[Change]) -> Vec<u8> {
    let mut v = Vec::new();
    put_varint(&mut v, changes.len() as u64);
    for c in changes {
        match c {
            Change::Add { level, meta: m } => {
                v.push(1);
                for x in [
                    u64::from(*level),
                    m.id,
                    m.bytes,
                    m.min_seq,
                    m.max_seq,
                    m.entries,
                    m.tombstones,
                ] {
                    put_varint(&mut v, x);
                }
                put_bytes(&mut v, &m.smallest);
                put_bytes(&mut v, &m.largest);
            }
            Change::Remove { level, id } => {
                v.push(2);
                put_varint(&mut v, u64::from(*level));
                put_varint(&mut v, *id);
            }
            Change::FlushedSeq(s) => {
                v.push(3);
                put_varint(&mut v, *s);
            }
            Change::NextId(id) => {
                v.push(4);
                put_varint(&mut v, *id);
            }
        }
    }
    v
}

fn decode_edit(b: &[u8]) -> Option<Vec<Change>> {
    let mut pos = 0;
    let n = get_varint(b, &mut pos)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let tag = *b.get(pos)?;
        pos += 1;
        let mut num = || get_varint(b, &mut pos);
        out.push(match tag {
            1 => {
                let level = u8::try_from(num()?).ok()?;
                let (id, bytes, min_seq, max_seq, entries, tombstones) =
                    (num()?, num()?, num()?, num()?, num()?, num()?);
                let smallest = get_bytes(b, &mut pos)?;
                let largest = get_bytes(b, &mut pos)?;
                Change::Add {
                    level,
                    meta: TableMeta {
                        id,
                        bytes,
                        smallest,
                        largest,
                        min_seq,
                        max_seq,
                        entries,
                        tombstones,
                    },
                }
            }
            2 => Change::Remove { level: u8::try_from(num()?).ok()?, id: num()? },
            3 => Change::FlushedSeq(num()?),
            4 => Change::NextId(num()?),
            _ => return None,
        });
    }
    (pos == b.len()).then_some(out)
}

/// The live manifest log.
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    number: u64,
    file: FileRef,
    path: PathBuf,
    offset: u64,
}

fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:06}")
}

impl Manifest {
    /// Writes a new manifest holding `shape`, makes it current, removes the old one.
    pub fn create(vfs: &dyn Vfs, dir: &Path, number: u64, shape: &Shape) -> Result<Manifest> {
        let path = dir.join(manifest_name(number));
        if vfs.exists(&path).map_err(Error::io("stat manifest", &path))? {
            vfs.remove_file(&path).map_err(Error::io("remove stale manifest", &path))?;
        }
        let file =
            vfs.open(&path, OpenMode::CreateNew).map_err(Error::io("create manifest", &path))?;
        let mut m = Manifest { dir: dir.to_path_buf(), number, file, path, offset: 0 };
        m.append(&shape.as_changes())?;
        // IMPORTANT: CURRENT switches only after the new manifest is durable.
        write_file_atomic(vfs, dir, "CURRENT", format!("{}\n", manifest_name(number)).as_bytes())
            .map_err(Error::io("write CURRENT", dir.join("CURRENT")))?;
        if number > 1 {
            let old = dir.join(manifest_name(number - 1));
            if vfs.exists(&old).map_err(Error::io("stat manifest", &old))? {
                vfs.remove_file(&old).map_err(Error::io("remove old manifest", &old))?;
            }
        }
        Ok(m)
    }

    /// Appends one edit and `fdatasync`s it.
    pub fn append(&mut self, changes: &[Change]) -> Result<()> {
        let payload = encode_edit(changes);
        let mut rec = Vec::with_capacity(payload.len() + 8);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        self.file
            .write_all_at(&rec, self.offset)
            .map_err(Error::io("append manifest", &self.path))?;
        self.file.sync_data().map_err(Error::io("fdatasync manifest", &self.path))?;
        self.offset += rec.len() as u64;
        Ok(())
    }

    /// Bytes in the log (rotation happens when it grows past a limit).
    pub fn bytes(&self) -> u64 {
        self.offset
    }

    /// This manifest's number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads `CURRENT` and replays the manifest it names without changing anything:
    /// the shape, the manifest's path, and the offset of a torn tail if there is one.
    /// `Ok(None)` when there is no `CURRENT`.
    pub fn read(vfs: &dyn Vfs, dir: &Path) -> Result<Option<(Shape, PathBuf, Option<u64>)>> {
        let Some((shape, path, _, valid_end, len)) = Self::read_current(vfs, dir)? else {
            return Ok(None);
        };
        Ok(Some((shape, path, (valid_end < len).then_some(valid_end))))
    }

    #[allow(clippy::type_complexity)]
    fn read_current(vfs: &dyn Vfs, dir: &Path) -> Result<Option<(Shape, PathBuf, u64, u64, u64)>> {
        let current = dir.join("CURRENT");
        if !vfs.exists(&current).map_err(Error::io("stat CURRENT", &current))? {
            return Ok(None);
        }
        let name = read_file(vfs, &current).map_err(Error::io("read CURRENT", &current))?;
        let name = String::from_utf8_lossy(&name).trim().to_string();
        let corrupt = |what: String| Error::Corrupt { path: current.clone(), what };
        let number: u64 = name
            .strip_prefix("MANIFEST-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt(format!("CURRENT names {name:?}")))?;
        let path = dir.join(&name);
        let bytes = read_file(vfs, &path).map_err(Error::io("read manifest", &path))?;
        let (shape, valid_end) = replay(&bytes).map_err(|(offset, what)| Error::Corrupt {
            path: path.clone(),
            what: format!("{what} at offset {offset}"),
        })?;
        Ok(Some((shape, path, number, valid_end, bytes.len() as u64)))
    }

    /// Reads `CURRENT` and replays the manifest it names, cutting a torn last record.
    /// `Ok(None)` when there is no `CURRENT` (a new tree).
    pub fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Option<(Shape, Manifest)>> {
        let Some((shape, path, number, valid_end, len)) = Self::read_current(vfs, dir)? else {
            return Ok(None);
        };
        let file =
            vfs.open(&path, OpenMode::ReadWrite).map_err(Error::io("open manifest", &path))?;
        if valid_end < len {
            tracing::warn!(manifest = %path.display(), offset = valid_end, "cutting a torn manifest record");
            file.set_len(valid_end).map_err(Error::io("truncate manifest", &path))?;
            file.sync_data().map_err(Error::io("fdatasync manifest", &path))?;
        }
        Ok(Some((
            shape,
            Manifest { dir: dir.to_path_buf(), number, file, path, offset: valid_end },
        )))
    }
}

/// Replays records; returns the shape and the end of the last whole record, or the
/// offset and nature of damage that is not a torn tail.
fn replay(bytes: &[u8]) -> std::result::Result<(Shape, u64), (usize, String)> {
    let mut shape = Shape::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        match record_at(bytes, pos) {
            Ok((payload, next)) => {
                let changes = decode_edit(payload).ok_or((pos, "undecodable edit".to_string()))?;
                for c in &changes {
                    shape.apply(c);
                }
                pos = next;
            }
            // A damaged record is a torn tail only if nothing intact follows it.
            Err(what) if intact_after(bytes, pos + 1) => return Err((pos, what.to_string())),
            Err(_) => break,
        }
    }
    Ok((shape, pos as u64))
}

/// The checksummed payload of the record at `pos` and where the next one starts.
fn record_at(bytes: &[u8], pos: usize) -> std::result::Result<(&[u8], usize), &'static str> {
    let head = bytes.get(pos..pos + 8).ok_or("short record header")?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let payload = bytes.get(pos + 8..pos + 8 + len).ok_or("short record")?;
    if crc32c::crc32c(payload) != crc {
        return Err("record checksum mismatch");
    }
    Ok((payload, pos + 8 + len))
}

fn intact_after(bytes: &[u8], from: usize) -> bool {
    (from..bytes.len()).any(|p| {
        record_at(bytes, p).is_ok_and(|(pl, _)| !pl.is_empty() && decode_edit(pl).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bourse_fs::SimFs;

    fn meta(id: u64) -> TableMeta {
        TableMeta {
            id,
            bytes: 100,
            smallest: b"a".to_vec(),
            largest: b"z".to_vec(),
            min_seq: 1,
            max_seq: 9,
            entries: 3,
            tombstones: 1,
        }
    }

    #[test]
    fn edits_replay_and_torn_tails_are_ignored() {
        let fs = SimFs::new();
        let dir = Path::new("/db");
        fs.create_dir_all(dir).unwrap();
        let mut m = Manifest::create(&fs, dir, 1, &Shape::default()).unwrap();
        m.append(&[Change::Add { level: 0, meta: meta(3) }, Change::FlushedSeq(9)]).unwrap();
        m.append(&[Change::Remove { level: 0, id: 3 }, Change::Add { level: 1, meta: meta(4) }])
            .unwrap();
        let (shape, _) = Manifest::load(&fs, dir).unwrap().unwrap();
        assert_eq!(shape.levels[1].len(), 1);
        assert!(shape.levels[0].is_empty());
        assert_eq!((shape.flushed_seq, shape.next_id), (9, 5));
        // A torn record at the end is dropped.
        let path = dir.join("MANIFEST-000001");
        let f = fs.open(&path, OpenMode::ReadWrite).unwrap();
        f.write_all_at(&[20, 0, 0, 0, 1, 2], f.len().unwrap()).unwrap();
        let (again, m2) = Manifest::load(&fs, dir).unwrap().unwrap();
        assert_eq!(again, shape);
        // Rotation keeps the shape.
        let m3 = Manifest::create(&fs, dir, m2.number() + 1, &again).unwrap();
        assert_eq!(Manifest::load(&fs, dir).unwrap().unwrap().0, shape);
        assert!(!fs.exists(&path).unwrap());
        drop(m3);
    }

    #[test]
    fn damage_before_an_intact_record_is_corruption() {
        let fs = SimFs::new();
        let dir = Path::new("/db");
        fs.create_dir_all(dir).unwrap();
        let mut m = Manifest::create(&fs, dir, 1, &Shape::default()).unwrap();
        m.append(&[Change::Add { level: 0, meta: meta(3) }]).unwrap();
        m.append(&[Change::FlushedSeq(20)]).unwrap();
        fs.flip_bit(&dir.join("MANIFEST-000001"), 12, 1).unwrap();
        assert!(matches!(Manifest::load(&fs, dir), Err(Error::Corrupt { .. })));
    }
}
