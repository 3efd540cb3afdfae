//! SSTables: immutable sorted files of internal keys (format version 1).
//!
//! | part        | content                                                             |
//! |-------------|---------------------------------------------------------------------|
//! | data blocks | [`crate::block`] blocks of about `block_bytes`, each followed by a block trailer |
//! | filter      | bloom filter over the user keys ([`crate::bloom`]) + block trailer   |
//! | properties  | entry count, tombstone count, min and max sequence, smallest and largest user key + block trailer |
//! | index       | a block with one entry per data block: its last internal key → handle (offset varint, size varint) + block trailer |
//! | footer      | 64 bytes, below                                                     |
//!
//! Block trailer (5 bytes): compression u8 (0 = none, 1 = LZ4 block format with the
//! decompressed size prepended as u32 LE), CRC32C u32 of the stored block and that byte.
//! Only data blocks are compressed, and only when that saves at least 1/8.
//!
//! Footer:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 16 | filter handle (offset u64, size u64) |
//! | 16 | 16 | properties handle |
//! | 32 | 16 | index handle |
//! | 48 | 4  | format version (`1`) |
//! | 52 | 8  | magic `BOURSSST` |
//! | 60 | 4  | CRC32C of bytes 0..60 |
//!
//! Every read is bounds-checked and checksummed: a damaged table yields
//! [`Error::Corrupt`], never a panic or a wrong value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bourse_fs::{FileRef, OpenMode, Vfs};

use crate::block::{get_varint, put_varint, Block, BlockBuilder, BlockIter};
use crate::bloom;
use crate::key::{cmp_internal, key_prefix, trailer, Entry, Kind, SeqNo};
use crate::{Error, Result};

/// Footer size in bytes.
pub const FOOTER_BYTES: usize = 64;
/// Table magic.
pub const TABLE_MAGIC: [u8; 8] = *b"BOURSSST";
/// Table format version.
pub const TABLE_VERSION: u32 = 1;
const TRAILER_BYTES: usize = 5;
/// Largest decompressed block accepted (a corrupt size prefix cannot make us allocate more).
const BLOCK_BYTES_MAX: usize = 64 << 20;

/// How data blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As is.
    #[default]
    None,
    /// LZ4 (block format), when it saves at least 1/8.
    Lz4,
}

/// A table's identity: the number in its file name, never reused.
pub type TableId = u64;

/// The file name of table `id`.
pub fn table_file_name(id: TableId) -> String {
    format!("{id:010}.sst")
}

/// What is known about a table without reading its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    /// File number.
    pub id: TableId,
    /// File size in bytes.
    pub bytes: u64,
    /// Smallest user key.
    pub smallest: Vec<u8>,
    /// Largest user key.
    pub largest: Vec<u8>,
    /// Lowest sequence.
    pub min_seq: SeqNo,
    /// Highest sequence.
    pub max_seq: SeqNo,
    /// Entries (versions).
    pub entries: u64,
    /// Tombstones among them.
    pub tombstones: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    offset: u64,
    size: u64,
}

/// A table goes to its file in writes of this many bytes, each starting at a multiple
/// of it. A write per block (about 4 KiB, at any offset) cost the maintenance threads
/// more in the kernel's per-page write path than in building the table; a write this
/// large also lets the page cache hold the file in large folios.
pub const WRITE_CHUNK: usize = 1 << 20;

/// Writes one table. Entries must be added in internal-key order. The encoded blocks
/// wait in memory until [`WRITE_CHUNK`] bytes are ready (at most that plus a block per
/// writer), and [`TableWriter::finish`] writes the rest.
#[derive(Debug)]
pub struct TableWriter {
    file: FileRef,
    path: PathBuf,
    offset: u64,
    block_bytes: usize,
    bits_per_key: usize,
    block: BlockBuilder,
    index: BlockBuilder,
    /// The sequence and kind of the last entry added (`None` before the first); its
    /// key is `last_key`, a buffer reused for every entry.
    last: Option<(SeqNo, Kind)>,
    last_key: Vec<u8>,
    hashes: Vec<u64>,
    meta: TableMeta,
    compression: Compression,
    /// Encoded blocks not yet written: they go to the file [`WRITE_CHUNK`] bytes at a
    /// time, each write starting at a multiple of it.
    out: Vec<u8>,
    /// The file offset `out` starts at (everything before it is written).
    written: u64,
    /// Start writeback every this many bytes (0: never before `finish`).
    writeback_bytes: u64,
    /// Where the writeback not yet started begins.
    writeback_from: u64,
}

impl TableWriter {
    /// Stores data blocks with `compression` from now on.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Starts writing the file to the device every `bytes` bytes, without waiting (see
    /// [`bourse_fs::VfsFile::start_writeback`]); 0 leaves it all to `finish`'s sync.
    pub fn with_writeback(mut self, bytes: u64) -> Self {
        self.writeback_bytes = bytes;
        self
    }

    /// Creates `dir/{id}.sst`.
    pub fn create(
        vfs: &dyn Vfs,
        dir: &Path,
        id: TableId,
        block_bytes: usize,
        bits_per_key: usize,
    ) -> Result<Self> {
        let path = dir.join(table_file_name(id));
        let file =
            vfs.open(&path, OpenMode::CreateNew).map_err(Error::io("create table", &path))?;
        let meta = TableMeta {
            id,
            bytes: 0,
            smallest: Vec::new(),
            largest: Vec::new(),
            min_seq: SeqNo::MAX,
            max_seq: 0,
            entries: 0,
            tombstones: 0,
        };
        Ok(Self {
            file,
            path,
            offset: 0,
            block_bytes,
            bits_per_key,
            block: BlockBuilder::default(),
            index: BlockBuilder::default(),
            last: None,
            last_key: Vec::new(),
            hashes: Vec::new(),
            meta,
            compression: Compression::None,
            out: Vec::new(),
            written: 0,
            writeback_bytes: 0,
            writeback_from: 0,
        })
    }

    /// Adds one version.
    pub fn add(&mut self, key: &[u8], seq: SeqNo, kind: Kind, value: &[u8]) -> Result<()> {
        if self.meta.entries == 0 {
            self.meta.smallest = key.to_vec();
        }
        if self.last.is_none() || self.last_key != key {
            self.hashes.push(bloom::hash(key));
        }
        self.block.add(key, trailer(seq, kind), value);
        self.meta.entries += 1;
        self.meta.tombstones += u64::from(kind == Kind::Delete);
        self.meta.min_seq = self.meta.min_seq.min(seq);
        self.meta.max_seq = self.meta.max_seq.max(seq);
        self.last = Some((seq, kind));
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        if self.block.estimated_bytes() >= self.block_bytes {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Bytes written so far (for splitting compaction output).
    pub fn bytes(&self) -> u64 {
        self.offset + self.block.estimated_bytes() as u64
    }

    fn write_block(&mut self, data: &[u8], compress: bool) -> Result<Handle> {
        let packed = (compress && self.compression == Compression::Lz4)
            .then(|| lz4_flex::block::compress_prepend_size(data))
            .filter(|p| p.len() < data.len() - data.len() / 8);
        let (stored, kind) = match &packed {
            Some(p) => (p.as_slice(), 1u8),
            None => (data, 0u8),
        };
        if self.out.capacity() == 0 {
            self.out.reserve(WRITE_CHUNK + self.block_bytes);
        }
        let start = self.out.len();
        self.out.extend_from_slice(stored);
        self.out.push(kind);
        let crc = crc32c::crc32c(&self.out[start..]);
        self.out.extend_from_slice(&crc.to_le_bytes());
        let handle = Handle { offset: self.offset, size: stored.len() as u64 };
        self.offset += (self.out.len() - start) as u64;
        if self.out.len() >= WRITE_CHUNK {
            self.write_out(WRITE_CHUNK)?;
        }
        Ok(handle)
    }

    /// Writes the first `n` bytes of `out` at `written`, then starts writeback when
    /// `writeback_bytes` more were written since it last did.
    fn write_out(&mut self, n: usize) -> Result<()> {
        self.file
            .write_all_at(&self.out[..n], self.written)
            .map_err(Error::io("write table", &self.path))?;
        self.out.drain(..n);
        self.written += n as u64;
        if self.writeback_bytes > 0 && self.written - self.writeback_from >= self.writeback_bytes {
            let (from, len) = (self.writeback_from, self.written - self.writeback_from);
            self.file
                .start_writeback(from, len)
                .map_err(Error::io("start writeback of table", &self.path))?;
            self.writeback_from = self.written;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let data = self.block.finish();
        let handle = self.write_block(&data, true)?;
        self.block.reuse(data);
        if let Some((seq, kind)) = self.last {
            let mut v = Vec::new();
            put_varint(&mut v, handle.offset);
            put_varint(&mut v, handle.size);
            self.index.add(&self.last_key, trailer(seq, kind), &v);
        }
        Ok(())
    }

    /// Writes filter, properties, index and footer, then `fdatasync`s the file.
    pub fn finish(mut self) -> Result<TableMeta> {
        self.flush_block()?;
        if self.last.is_some() {
            self.meta.largest.clone_from(&self.last_key);
        }
        let filter = bloom::build(&self.hashes, self.bits_per_key);
        let filter_h = self.write_block(&filter, false)?;
        let props = encode_props(&self.meta);
        let props_h = self.write_block(&props, false)?;
        let index = self.index.finish();
        let index_h = self.write_block(&index, false)?;
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        for h in [filter_h, props_h, index_h] {
            footer.extend_from_slice(&h.offset.to_le_bytes());
            footer.extend_from_slice(&h.size.to_le_bytes());
        }
        footer.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC);
        let crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(&footer);
        self.offset += footer.len() as u64;
        self.write_out(self.out.len())?;
        self.file.sync_data().map_err(Error::io("fdatasync table", &self.path))?;
        self.meta.bytes = self.offset;
        if self.meta.entries == 0 {
            self.meta.min_seq = 0;
        }
        Ok(self.meta)
    }
}

fn encode_props(m: &TableMeta) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [m.entries, m.tombstones, m.min_seq, m.max_seq] {
        put_varint(&mut v, x);
    }
    for k in [&m.smallest, &m.largest] {
        put_varint(&mut v, k.len() as u64);
        v.extend_from_slice(k);
    }
    v
}

fn decode_props(b: &[u8], id: TableId, bytes: u64) -> Option<TableMeta> {
    let mut pos = 0;
    let mut n = [0u64; 4];
    for x in &mut n {
        *x = get_varint(b, &mut pos)?;
    }
    let mut keys = [Vec::new(), Vec::new()];
    for k in &mut keys {
        let len = usize::try_from(get_varint(b, &mut pos)?).ok()?;
        *k = b.get(pos..pos.checked_add(len)?)?.to_vec();
        pos += len;
    }
    let [smallest, largest] = keys;
    Some(TableMeta {
        id,
        bytes,
        smallest,
        largest,
        min_seq: n[2],
        max_seq: n[3],
        entries: n[0],
        tombstones: n[1],
    })
}

#[derive(Debug, Clone, Copy)]
struct BlockWeight;

impl quick_cache::Weighter<(TableId, u64), Arc<Block>> for BlockWeight {
    fn weight(&self, _key: &(TableId, u64), block: &Arc<Block>) -> u64 {
        block.bytes() as u64 + 64
    }
}

/// A cache of decoded data blocks shared by the tables of a tree, bounded in bytes.
#[derive(Debug)]
pub struct BlockCache {
    cache: quick_cache::sync::Cache<(TableId, u64), Arc<Block>, BlockWeight>,
}

impl BlockCache {
    /// A cache holding at most `bytes` of blocks.
    pub fn new(bytes: usize) -> Arc<Self> {
        let items = (bytes / 4096).max(16);
        Arc::new(Self {
            cache: quick_cache::sync::Cache::with_weighter(items, bytes as u64, BlockWeight),
        })
    }

    /// Blocks cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

/// An open table: index, filter and properties in memory; data blocks read on demand
/// (through the block cache when there is one).
#[derive(Debug)]
pub struct Table {
    file: FileRef,
    path: PathBuf,
    meta: TableMeta,
    filter: Vec<u8>,
    /// (last user key, last seq, handle) of every data block.
    index: Vec<(Vec<u8>, SeqNo, Handle)>,
    /// `key_prefix` of each index key, contiguous, so a seek's binary search touches
    /// one small array instead of a heap key per step.
    index_prefix: Vec<u64>,
    cache: Option<Arc<BlockCache>>,
}

impl Table {
    /// Opens and checks footer, index, filter and properties (no block cache).
    pub fn open(vfs: &dyn Vfs, dir: &Path, id: TableId) -> Result<Table> {
        Self::open_cached(vfs, dir, id, None)
    }

    /// Like [`Table::open`], reading data blocks through `cache`.
    pub fn open_cached(
        vfs: &dyn Vfs,
        dir: &Path,
        id: TableId,
        cache: Option<Arc<BlockCache>>,
    ) -> Result<Table> {
        let path = dir.join(table_file_name(id));
        let file = vfs.open(&path, OpenMode::Read).map_err(Error::io("open table", &path))?;
        let len = file.len().map_err(Error::io("stat table", &path))?;
        let corrupt = |what: &str| Error::Corrupt { path: path.clone(), what: what.to_string() };
        if len < FOOTER_BYTES as u64 {
            return Err(corrupt("shorter than a footer"));
        }
        let mut footer = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut footer, len - FOOTER_BYTES as u64)
            .map_err(Error::io("read footer", &path))?;
        if footer[52..60] != TABLE_MAGIC {
            return Err(corrupt("bad footer magic"));
        }
        if u32::from_le_bytes([footer[60], footer[61], footer[62], footer[63]])
            != crc32c::crc32c(&footer[..60])
        {
            return Err(corrupt("footer checksum mismatch"));
        }
        let version = u32::from_le_bytes([footer[48], footer[49], footer[50], footer[51]]);
        if version != TABLE_VERSION {
            return Err(corrupt(&format!("unsupported table version {version}")));
        }
        let handle = |i: usize| Handle {
            offset: u64::from_le_bytes(footer[i * 16..i * 16 + 8].try_into().unwrap_or_default()),
            size: u64::from_le_bytes(
                footer[i * 16 + 8..i * 16 + 16].try_into().unwrap_or_default(),
            ),
        };
        let mut t = Table {
            file,
            path: path.clone(),
            meta: TableMeta { id, bytes: len, ..empty_meta() },
            filter: Vec::new(),
            index: Vec::new(),
            index_prefix: Vec::new(),
            cache,
        };
        t.filter = t.read_block(handle(0))?;
        let props = t.read_block(handle(1))?;
        t.meta = decode_props(&props, id, len).ok_or_else(|| corrupt("bad properties block"))?;
        let index = Block::new(t.read_block(handle(2))?)
            .and_then(|b| b.entries())
            .ok_or_else(|| corrupt("bad index block"))?;
        for e in index {
            let mut pos = 0;
            let h = (|| {
                Some(Handle {
                    offset: get_varint(&e.value, &mut pos)?,
                    size: get_varint(&e.value, &mut pos)?,
                })
            })()
            .ok_or_else(|| corrupt("bad index entry"))?;
            t.index_prefix.push(key_prefix(&e.key));
            t.index.push((e.key, e.seq, h));
        }
        Ok(t)
    }

    /// The table's properties.
    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_block(&self, h: Handle) -> Result<Vec<u8>> {
        let corrupt = |what: String| Error::Corrupt { path: self.path.clone(), what };
        // NOTE: handles come from disk; every sum is checked so a huge size cannot wrap
        // around the bounds check (found by the sst_table fuzz target).
        let end = h.size.checked_add(TRAILER_BYTES as u64).and_then(|n| h.offset.checked_add(n));
        if end.is_none_or(|e| e > self.meta.bytes) {
            return Err(corrupt(format!(
                "block at {} of {} bytes is outside the file",
                h.offset, h.size
            )));
        }
        let size = usize::try_from(h.size).map_err(|_| corrupt("block size".into()))?;
        let mut buf = vec![0u8; size + TRAILER_BYTES];
        self.file.read_exact_at(&mut buf, h.offset).map_err(Error::io("read block", &self.path))?;
        let crc = u32::from_le_bytes([buf[size + 1], buf[size + 2], buf[size + 3], buf[size + 4]]);
        if crc != crc32c::crc32c(&buf[..size + 1]) {
            return Err(corrupt(format!("block checksum mismatch at offset {}", h.offset)));
        }
        match buf[size] {
            0 => {
                buf.truncate(size);
                Ok(buf)
            }
            1 => {
                let raw = buf
                    .get(..4)
                    .map_or(usize::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                if raw > BLOCK_BYTES_MAX {
                    return Err(corrupt(format!(
                        "compressed block at offset {} claims {raw} bytes",
                        h.offset
                    )));
                }
                lz4_flex::block::decompress_size_prepended(&buf[..size]).map_err(|e| {
                    corrupt(format!("LZ4 block at offset {} does not decompress: {e}", h.offset))
                })
            }
            other => Err(corrupt(format!("unknown compression {other} at offset {}", h.offset))),
        }
    }

    fn data_block(&self, i: usize) -> Result<Arc<Block>> {
        let handle = self.index[i].2;
        let key = (self.meta.id, handle.offset);
        if let Some(block) = self.cache.as_ref().and_then(|c| c.cache.get(&key)) {
            return Ok(block);
        }
        let data = self.read_block(handle)?;
        let block = Arc::new(Block::new(data).ok_or_else(|| self.malformed(i))?);
        if let Some(c) = &self.cache {
            c.cache.insert(key, block.clone());
        }
        Ok(block)
    }

    /// The first block whose last internal key is at or after `(key, seq)` (the index
    /// length if none).
    fn index_seek(&self, key: &[u8], seq: SeqNo) -> usize {
        let p = key_prefix(key);
        let lo = self.index_prefix.partition_point(|x| *x < p);
        let hi = lo + self.index_prefix[lo..].partition_point(|x| *x == p);
        lo + self.index[lo..hi]
            .partition_point(|(ik, is, _)| cmp_internal(ik, *is, key, seq).is_lt())
    }

    /// Whether the bloom filter admits `key`.
    pub fn may_contain(&self, key: &[u8]) -> bool {
        bloom::may_contain(&self.filter, bloom::hash(key))
    }

    /// The newest version of `key` at or below `snapshot`.
    pub fn get(&self, key: &[u8], snapshot: SeqNo) -> Result<Option<(SeqNo, Kind, Vec<u8>)>> {
        if key < self.meta.smallest.as_slice()
            || key > self.meta.largest.as_slice()
            || !self.may_contain(key)
        {
            return Ok(None);
        }
        let i = self.index_seek(key, snapshot);
        if i == self.index.len() {
            return Ok(None);
        }
        let found = self.data_block(i)?.seek_first(key, snapshot).map_err(|_| self.malformed(i))?;
        Ok(found.filter(|e| e.key == key).map(|e| (e.seq, e.kind, e.value)))
    }

    fn malformed(&self, i: usize) -> Error {
        Error::Corrupt { path: self.path.clone(), what: format!("malformed data block {i}") }
    }

    /// Entries at or after `(key, seq)` (or from the start), block by block.
    pub fn iter_from(&self, from: Option<(&[u8], SeqNo)>) -> TableIter<&Table> {
        TableIter::new(self, from)
    }

    /// Up to `n` entries strictly before `(key, seq)` (or before the end), newest key
    /// last: returned in descending internal order.
    pub fn before(&self, bound: Option<(&[u8], SeqNo)>, n: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        if self.index.is_empty() || n == 0 {
            return Ok(out);
        }
        let mut i = match bound {
            Some((k, s)) => self.index_seek(k, s),
            None => self.index.len() - 1,
        }
        .min(self.index.len() - 1);
        loop {
            let entries = self.data_block(i)?.entries().ok_or_else(|| self.malformed(i))?;
            for e in entries.into_iter().rev() {
                if bound.is_none_or(|(k, s)| cmp_internal(&e.key, e.seq, k, s).is_lt()) {
                    out.push(Entry { key: e.key, seq: e.seq, kind: e.kind, value: e.value });
                    if out.len() == n {
                        return Ok(out);
                    }
                }
            }
            if i == 0 {
                return Ok(out);
            }
            i -= 1;
        }
    }

    /// Reads every block and checks every checksum and the key order (for `verify`).
    pub fn verify(&self) -> Result<u64> {
        let mut n = 0;
        let mut prev: Option<(Vec<u8>, SeqNo)> = None;
        for e in self.iter_from(None) {
            let e = e?;
            if let Some((k, s)) = &prev {
                if !cmp_internal(k, *s, &e.key, e.seq).is_lt() {
                    return Err(Error::Corrupt {
                        path: self.path.clone(),
                        what: "keys out of order".into(),
                    });
                }
            }
            prev = Some((e.key, e.seq));
            n += 1;
        }
        if n != self.meta.entries {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                what: format!("{n} entries, properties say {}", self.meta.entries),
            });
        }
        Ok(n)
    }
}

fn empty_meta() -> TableMeta {
    TableMeta {
        id: 0,
        bytes: 0,
        smallest: Vec::new(),
        largest: Vec::new(),
        min_seq: 0,
        max_seq: 0,
        entries: 0,
        tombstones: 0,
    }
}

/// Iterates a table's entries in internal-key order.
#[derive(Debug)]
/// Generic over how it holds the table: borrowed (`&Table`, from [`Table::iter_from`]) or
/// shared (an owning handle, for scans that outlive a borrow).
pub struct TableIter<R: std::ops::Deref<Target = Table>> {
    table: R,
    block: usize,
    from: Option<(Vec<u8>, SeqNo)>,
    pending: Option<BlockIter>,
}

impl<R: std::ops::Deref<Target = Table>> TableIter<R> {
    /// Iterates `table` from the first entry at or after `(key, seq)` (or the start).
    pub fn new(table: R, from: Option<(&[u8], SeqNo)>) -> Self {
        let block = match from {
            Some((k, s)) => table.index_seek(k, s),
            None => 0,
        };
        TableIter { table, block, from: from.map(|(k, s)| (k.to_vec(), s)), pending: None }
    }
}

impl<R: std::ops::Deref<Target = Table>> Iterator for TableIter<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            match self.pending.as_mut().and_then(Iterator::next) {
                Some(Ok(e)) => {
                    return Some(Ok(Entry { key: e.key, seq: e.seq, kind: e.kind, value: e.value }))
                }
                Some(Err(_)) => {
                    // NOTE: `self.block` already points past the damaged block.
                    let err = self.table.malformed(self.block.saturating_sub(1));
                    self.pending = None;
                    self.block = usize::MAX;
                    return Some(Err(err));
                }
                None => {}
            }
            if self.block >= self.table.index.len() {
                return None;
            }
            let block = match self.table.data_block(self.block) {
                Ok(b) => b,
                Err(e) => {
                    self.block = usize::MAX;
                    return Some(Err(e));
                }
            };
            let iter = match self.from.take() {
                Some((k, s)) => BlockIter::seek(block, &k, s),
                None => Some(BlockIter::new(block)),
            };
            let Some(iter) = iter else {
                let err = self.table.malformed(self.block);
                self.block = usize::MAX;
                return Some(Err(err));
            };
            self.block += 1;
            self.pending = Some(iter);
        }
    }
}
