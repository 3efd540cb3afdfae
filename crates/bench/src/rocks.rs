//! RocksDB as the WAL peer: every write batch committed with `sync = true`, so each
//! acknowledged write is in RocksDB's WAL and fdatasync'ed, the same guarantee as
//! Bourse's `Durable`. A large memtable keeps flushes out of the measurement.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{Options, WriteBatch, WriteOptions, DB};

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
