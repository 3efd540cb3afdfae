//! RocksDB as the WAL peer: every write batch committed with `sync = true`, so each
//! acknowledged write is in RocksDB's WAL and fdatasync'ed, the same guarantee as
//! Bourse's `Durable`. A large memtable keeps flushes out of the measurement.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Options, WriteBatch, WriteOptions, DB};

use crate::lsm::{Kv, MEMTABLE_BYTES};
use crate::wal::Appender;

/// Opens a RocksDB in `dir` and returns a durable appender of key-value batches (8-byte
/// keys, the records as values).
pub fn appender(dir: &Path) -> anyhow::Result<Appender> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(512 << 20);
    opts.set_max_write_buffer_number(4);
    opts.set_disable_auto_compactions(true);
    opts.set_enable_pipelined_write(true);
    let db = Arc::new(DB::open(&opts, dir)?);
    let next = Arc::new(AtomicU64::new(0));
    Ok(Arc::new(move |records: &[Vec<u8>]| {
        let mut batch = WriteBatch::default();
        for r in records {
            let key = next.fetch_add(1, Ordering::Relaxed).to_be_bytes();
            batch.put(key, r);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo)?;
        Ok(())
    }))
}

/// RocksDB configured like the Bourse tree: no WAL (the engine owns durability), the same
/// memtable size, 10 bloom bits per key, 4 KiB blocks, no compression.
struct Rocks {
    db: DB,
}

/// Opens RocksDB as an LSM peer in `dir`.
pub fn open_kv(dir: &Path) -> anyhow::Result<Box<dyn Kv>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(MEMTABLE_BYTES);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(4096);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    Ok(Box::new(Rocks { db: DB::open(&opts, dir)? }))
}

impl Kv for Rocks {
    fn system(&self) -> &'static str {
        "rocksdb"
    }
    fn put(&self, k: &[u8], v: &[u8]) -> anyhow::Result<()> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        Ok(self.db.put_opt(k, v, &wo)?)
    }
    fn get(&self, k: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.db.get(k)?)
    }
    fn seek_next(&self, k: &[u8], n: usize) -> anyhow::Result<usize> {
        let mut it = self.db.raw_iterator();
        it.seek(k);
        let mut count = 0;
        while it.valid() && count < n {
            count += 1;
            it.next();
        }
        it.status()?;
        Ok(count)
    }
    fn settle(&self) -> anyhow::Result<()> {
        self.db.flush()?;
        while self.db.property_int_value("rocksdb.compaction-pending")?.unwrap_or(0) > 0
            || self.db.property_int_value("rocksdb.num-running-compactions")?.unwrap_or(0) > 0
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }
    fn write_amp(&self) -> Option<f64> {
        None
    }
}
