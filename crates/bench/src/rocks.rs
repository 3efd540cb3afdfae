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

/// RocksDB that can add column families while shared.
type MtDb = rocksdb::DBWithThreadMode<rocksdb::MultiThreaded>;

/// RocksDB as the engine peer: the engine's own writes (`bourse_engine::apply::apply`),
/// one column family per partition, one `WriteBatch` per submit through RocksDB's WAL
/// (`sync = true` for `Durable`). LSNs come from a counter; the reads apply makes (an
/// order's previous state) go to RocksDB. Submits are planned one at a time and written
/// concurrently, so RocksDB's own group commit works.
pub struct RocksStore {
    db: MtDb,
    lsn: parking_lot::Mutex<u64>,
    cfs: parking_lot::RwLock<std::collections::HashSet<String>>,
    opts: Options,
}

fn cf_name(p: &bourse_engine::layout::PartitionId) -> String {
    p.dir_name()
}

struct RocksState<'a>(&'a RocksStore);

impl bourse_engine::apply::StateRead for RocksState<'_> {
    fn get(
        &self,
        part: &bourse_engine::layout::PartitionId,
        key: &[u8],
    ) -> bourse_engine::Result<Option<Vec<u8>>> {
        let name = cf_name(part);
        let Some(cf) = self.0.db.cf_handle(&name) else { return Ok(None) };
        self.0
            .db
            .get_cf(&cf, key)
            .map_err(|e| bourse_engine::Error::Corrupt { what: e.to_string() })
    }
    fn catalogued(&self, id: &bourse_model::InstrumentId) -> bool {
        self.0
            .cfs
            .read()
            .contains(&cf_name(&bourse_engine::layout::PartitionId::Instrument(id.clone())))
    }
}

/// Opens the engine peer in `dir`.
pub fn open_store(dir: &Path) -> anyhow::Result<Arc<dyn crate::engine::Store>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_size(64 << 20);
    // All column families' memtables under one budget, Bourse's own (eight memtables'
    // worth; `engine_options`), so that both hold the same memory in memtables.
    opts.set_db_write_buffer_size(8 * (64 << 20));
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    opts.set_enable_pipelined_write(true);
    let mut table = BlockBasedOptions::default();
    table.set_block_size(4096);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    let names = ["accounts", "users", "market"];
    let db = MtDb::open_cf(&opts, dir, names)?;
    let cfs = names.iter().map(|s| s.to_string()).collect();
    Ok(Arc::new(RocksStore {
        db,
        lsn: parking_lot::Mutex::new(0),
        cfs: parking_lot::RwLock::new(cfs),
        opts,
    }))
}

impl crate::engine::Store for RocksStore {
    fn system(&self) -> &'static str {
        "rocksdb"
    }
    fn submit(&self, events: &[bourse_model::Event], durable: bool) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        {
            let mut lsn = self.lsn.lock();
            for e in events {
                *lsn += 1;
                let encoded = e.encode()?;
                let mut writes = bourse_engine::apply::Writes::new();
                bourse_engine::apply::apply(*lsn, e, &encoded, &RocksState(self), &mut writes)?;
                for w in writes.drain(..) {
                    let name = cf_name(&w.part);
                    if !self.cfs.read().contains(&name) {
                        self.db.create_cf(&name, &self.opts)?;
                        self.cfs.write().insert(name.clone());
                    }
                    let cf = self.db.cf_handle(&name).ok_or_else(|| anyhow::anyhow!("no cf"))?;
                    match w.value {
                        Some(v) => batch.put_cf(&cf, &w.key, v),
                        None => batch.delete_cf(&cf, &w.key),
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }
    fn latest_tick(&self, ins: &bourse_model::InstrumentId) -> anyhow::Result<Option<f64>> {
        let name = cf_name(&bourse_engine::layout::PartitionId::Instrument(ins.clone()));
        let Some(cf) = self.db.cf_handle(&name) else { return Ok(None) };
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_for_prev([bourse_engine::layout::inst::TICK + 1]);
        match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.first() == Some(&bourse_engine::layout::inst::TICK) => {
                match bourse_model::Event::decode(v)? {
                    bourse_model::Event::Tick(t) => Ok(Some(t.last_price)),
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
    fn open_orders(&self, acct: &str, limit: usize) -> anyhow::Result<usize> {
        use bourse_engine::layout::{acct as a, Key};
        let Some(cf) = self.db.cf_handle("accounts") else { return Ok(0) };
        let prefix = Key::account(acct, a::OPEN_ORDER).into_vec();
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek(&prefix);
        let mut n = 0;
        while n < limit {
            let Some(k) = it.key() else { break };
            if !k.starts_with(&prefix) {
                break;
            }
            let id = it.value().unwrap_or_default().to_vec();
            let okey = Key::order(acct, &String::from_utf8_lossy(&id)).into_vec();
            std::hint::black_box(self.db.get_cf(&cf, okey)?);
            n += 1;
            it.next();
        }
        Ok(n)
    }
    fn trades_since(
        &self,
        ins: &bourse_model::InstrumentId,
        from_ns: i64,
        limit: usize,
    ) -> anyhow::Result<usize> {
        use bourse_engine::layout::{inst, Key};
        let name = cf_name(&bourse_engine::layout::PartitionId::Instrument(ins.clone()));
        let Some(cf) = self.db.cf_handle(&name) else { return Ok(0) };
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek(Key::new(inst::TRADE).time(from_ns).into_vec());
        let mut n = 0;
        while n < limit {
            let Some(k) = it.key() else { break };
            if k.first() != Some(&inst::TRADE) {
                break;
            }
            std::hint::black_box(bourse_model::Event::decode(it.value().unwrap_or_default())?);
            n += 1;
            it.next();
        }
        Ok(n)
    }
}

/// RocksDB reopen after `n` events written through its WAL and never flushed, behind
/// `history` events flushed into tables first (0: none).
pub fn reopen_case(root: &Path, n: u64, history: u64) -> anyhow::Result<()> {
    let dir = root.join("recovery-rocksdb");
    let names: Vec<String>;
    {
        let store = open_store_sized(&dir, 1 << 30)?;
        let submit =
            |batch: &[bourse_model::Event]| crate::engine::Store::submit(&store, batch, false);
        crate::engine::in_batches(0..history, submit)?;
        // The history goes into tables, as the engine's checkpoint puts it.
        for name in store.cfs.read().iter() {
            let cf = store.db.cf_handle(name).ok_or_else(|| anyhow::anyhow!("no cf"))?;
            store.db.flush_cf(&cf)?;
        }
        crate::engine::in_batches(history..history + n, submit)?;
        store.db.flush_wal(true)?;
        names = store.cfs.read().iter().cloned().collect();
        // Dropped without a flush: reopening replays RocksDB's WAL.
    }
    let t = std::time::Instant::now();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(1 << 30);
    let db = MtDb::open_cf(&opts, &dir, &names)?;
    let secs = t.elapsed().as_secs_f64();
    drop(db);
    let params = if history > 0 {
        serde_json::json!({ "events": n, "history_events": history })
    } else {
        serde_json::json!({ "events": n })
    };
    crate::report::emit("recovery", "reopen", "rocksdb", &params, "seconds", secs, "s");
    let behind = if history > 0 { format!(" after {history} in tables") } else { String::new() };
    eprintln!("  reopen           rocksdb  {n} unflushed events{behind}: {secs:.2} s");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn open_store_sized(dir: &Path, memtable: usize) -> anyhow::Result<RocksStore> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_write_buffer_size(memtable);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let names = ["accounts", "users", "market"];
    let db = MtDb::open_cf(&opts, dir, names)?;
    let cfs = names.iter().map(|s| s.to_string()).collect();
    Ok(RocksStore { db, lsn: parking_lot::Mutex::new(0), cfs: parking_lot::RwLock::new(cfs), opts })
}
