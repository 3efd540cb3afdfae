//! fjall as an LSM peer: one keyspace, its journal written but never synced
//! (`manual_journal_persist`), the same memtable size as Bourse, 10 bloom bits per key,
//! 4 KiB data blocks, no compression, a 64 MiB block cache.

use std::path::Path;

use fjall::config::{
    BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::lsm::{Kv, MEMTABLE_BYTES};

struct Fjall {
    _db: Database,
    ks: Keyspace,
}

/// Opens fjall in `dir`.
pub fn open_kv(dir: &Path) -> anyhow::Result<Box<dyn Kv>> {
    let db = Database::builder(dir).manual_journal_persist(true).cache_size(64 << 20).open()?;
    let ks = db.keyspace("bench", || {
        KeyspaceCreateOptions::default()
            .max_memtable_size(MEMTABLE_BYTES as u64)
            .data_block_compression_policy(CompressionPolicy::disabled())
            .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                BloomConstructionPolicy::BitsPerKey(10.0),
            )))
            .data_block_size_policy(BlockSizePolicy::all(4096))
    })?;
    Ok(Box::new(Fjall { _db: db, ks }))
}

impl Kv for Fjall {
    fn system(&self) -> &'static str {
        "fjall"
    }
    fn put(&self, k: &[u8], v: &[u8]) -> anyhow::Result<()> {
        self.ks.insert(k, v)?;
        Ok(())
    }
    fn get(&self, k: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.ks.get(k)?.map(|v| v.to_vec()))
    }
    fn seek_next(&self, k: &[u8], n: usize) -> anyhow::Result<usize> {
        let mut count = 0;
        for guard in self.ks.range(k..).take(n) {
            guard.into_inner()?;
            count += 1;
        }
        Ok(count)
    }
    fn settle(&self) -> anyhow::Result<()> {
        // NOTE: fjall offers no way to wait for its compactions; flush, then give its
        // background workers a moment.
        self.ks.rotate_memtable_and_wait()?;
        std::thread::sleep(std::time::Duration::from_secs(2));
        Ok(())
    }
    fn write_amp(&self) -> Option<f64> {
        None
    }
}
