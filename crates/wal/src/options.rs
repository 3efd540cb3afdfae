//! WAL configuration.

use crate::{Error, Lsn, Result};

/// How a segment's space is prepared before records are appended to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocate {
    /// Segments grow as records are appended: every `fdatasync` also journals the new
    /// file size and extents (about twice the latency measured on these machines).
    None,
    /// The next segment is written full of zeros and synced ahead of time by a
    /// background thread, so appends overwrite already-allocated blocks. The first
    /// segment of a new WAL is pre-written during `open`.
    PreWrite,
    /// Like `PreWrite` but done in line, during rotation: deterministic, for tests and
    /// small segments.
    PreWriteInline,
}

/// What recovery does with damage in the newest segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut a torn tail (damage that no intact record follows) and report it; refuse to
    /// open when an intact record follows the damage (that is corruption, not a torn
    /// write). The default.
    TolerateTornTail,
    /// Cut everything from the first damage in the newest segment, even when intact
    /// records follow, and report what was cut. For salvaging after a power loss on a
    /// device that persisted writes out of order; it may drop acknowledged records.
    Salvage,
}

/// Deliberately broken behaviours that the reliability harness must catch. Never set
/// them outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Canary {
    /// Acknowledge `Durable` appends before their `fdatasync` runs.
    pub ack_durable_before_sync: bool,
    /// Skip the directory fsync after creating a segment.
    pub skip_dir_sync: bool,
}

/// WAL configuration; every limit carries its unit in its name.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment when the next batch would not fit (default 1 GiB).
    pub segment_bytes: u64,
    /// Largest payload of one record (default 16 MiB).
    pub record_bytes_max: usize,
    /// Most records in one batch (default 65 536).
    pub batch_records_max: usize,
    /// Bytes queued for writing before appenders wait for the writer (default 64 MiB).
    pub pending_bytes_max: usize,
    /// Most bytes one group-commit write carries (default 4 MiB).
    pub group_commit_bytes_max: usize,
    /// How long a group-commit leader waits for more appenders before a sync, in
    /// microseconds (default 0: followers already pile up while a sync runs).
    pub group_commit_delay_us: u64,
    /// How segments are prepared (default `PreWrite`).
    pub preallocate: Preallocate,
    /// With `PreWrite`: do not start pre-writing the spare segment at open, only once
    /// [`crate::Wal::start_preallocation`] is called (default false). For an owner that
    /// replays the log right after opening it and wants the disk and a core for that;
    /// until then a rotation creates its segment inline.
    pub defer_preallocation: bool,
    /// With `PreWrite`: the background thread starts pre-writing the next segment's
    /// spare once the active segment holds this percentage of `segment_bytes`
    /// (default 50; 0: at once, when the segment is created or the log opened; at
    /// most 90). A pre-write takes a core and the disk for about half a second per
    /// GiB here, and every `fsync` on the same file system meanwhile waits behind its
    /// zeros: a fresh engine that started its spare at open held the `fsync`s of its
    /// first instruments' partitions for up to 1.25 s (`docs/format-wal.md`). Started
    /// at half, the spare has half a segment of appends to finish in; appends that
    /// outrun it make the rotation create its segment inline, as without a spare.
    pub spare_start_percent: u8,
    /// What recovery does with damage in the newest segment.
    pub recovery: RecoveryMode,
    /// The LSN of the first record of a brand-new WAL (default 1).
    pub first_lsn: Lsn,
    /// Read buffer for replay and recovery in bytes (default 256 KiB: small enough to
    /// stay in a core's L2 cache while its records are checked).
    pub read_chunk_bytes: usize,
    /// Readers ([`crate::Wal::read_from`]) read segments in place through a read-only
    /// memory map, with no copy per read (default true; recovery, `verify` and
    /// [`crate::Wal::read_from_buffered`] always read through the buffer). The catch of any map: if something outside this
    /// process shortens a segment file while a reader has it mapped, the process dies
    /// of `SIGBUS` instead of getting an error. File systems without maps (the tests'
    /// `SimFs`) read through the buffer either way.
    pub mmap_reads: bool,
    /// Pre-written segments (`Preallocate::PreWrite` or `PreWriteInline`) are mapped
    /// shared and writable, and a write round of up to a page copies into the map
    /// instead of calling `pwrite` once 16 rounds passed without a sync round (default
    /// true). The bytes are in the page cache when the copy ends, as after a `pwrite`,
    /// so `Buffered` means what it did, and `fdatasync` makes them durable. A 100-byte
    /// append then costs a copy instead of a system call (1–2 µs on the machines of
    /// `docs/benchmarks.md`); larger rounds, and logs synced every few rounds, keep
    /// `pwrite`, which costs them less (see `docs/format-wal.md`). The same catch as
    /// `mmap_reads`: a segment file shortened by something outside this process kills
    /// it with `SIGBUS` at the next mapped append. Segments that were not pre-written,
    /// and file systems without maps (`SimFs`), use `pwrite` either way.
    pub map_appends: bool,
    /// Nice value (0 to 19, higher is lower priority; 0 leaves it as it is) of the
    /// background thread that pre-writes spare segments (`Preallocate::PreWrite`) and
    /// drops sealed segments' maps. Pre-writing a 256 MiB segment kept a core busy for
    /// 133 ms here (`perf sched latency`), about half a second per GiB; at the default
    /// priority a woken writer could wait a whole scheduler tick for it. The engine
    /// sets its `maintenance_nice` here unless this is set (default 0).
    pub background_nice: i32,
    /// Every this many bytes appended to a segment, its pages written so far start going
    /// to the device (`sync_file_range`, asynchronous; by the background thread when
    /// there is one), as RocksDB's `wal_bytes_per_sync` does. A sync then finds little
    /// left to write: the one that seals a segment at rotation, which every writer
    /// waits behind (a 256 MiB segment of `Buffered` appends took 32 ms to seal
    /// without it here), and a `Durable` or timed sync after a run of `Buffered`
    /// appends. Nothing it does is needed for durability. 0 turns it off; default
    /// 1 MiB.
    pub writeback_bytes: u64,
    #[doc(hidden)]
    pub canary: Canary,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            record_bytes_max: 16 << 20,
            batch_records_max: 65_536,
            pending_bytes_max: 64 << 20,
            group_commit_bytes_max: 4 << 20,
            group_commit_delay_us: 0,
            preallocate: Preallocate::PreWrite,
            defer_preallocation: false,
            spare_start_percent: 50,
            recovery: RecoveryMode::TolerateTornTail,
            first_lsn: Lsn(1),
            read_chunk_bytes: 256 << 10,
            mmap_reads: true,
            map_appends: true,
            background_nice: 0,
            writeback_bytes: 1 << 20,
            canary: Canary::default(),
        }
    }
}

/// The most [`WalOptions::spare_start_percent`] may be.
const SPARE_START_PERCENT_MAX: u8 = 90;

impl WalOptions {
    /// The offset in the active segment from which its spare is pre-written
    /// ([`WalOptions::spare_start_percent`]): a division by a constant, cheap enough
    /// for every write round.
    pub(crate) fn spare_start_bytes(&self) -> u64 {
        self.segment_bytes / 100 * u64::from(self.spare_start_percent.min(SPARE_START_PERCENT_MAX))
    }

    /// Checks that the limits fit together.
    pub fn validate(&self) -> Result<()> {
        let min_segment =
            (crate::format::SEGMENT_HEADER_BYTES + crate::format::RECORD_HEADER_BYTES) as u64;
        if self.segment_bytes < min_segment * 2 {
            return Err(Error::InvalidOptions("segment_bytes is too small"));
        }
        if self.segment_bytes > u64::from(u32::MAX) * 64 {
            return Err(Error::InvalidOptions("segment_bytes is too large"));
        }
        if self.record_bytes_max == 0 || self.record_bytes_max > u32::MAX as usize {
            return Err(Error::InvalidOptions("record_bytes_max must be in 1..=u32::MAX"));
        }
        if self.batch_records_max == 0 || self.pending_bytes_max == 0 {
            return Err(Error::InvalidOptions(
                "batch_records_max and pending_bytes_max must be positive",
            ));
        }
        if self.group_commit_bytes_max == 0 || self.read_chunk_bytes == 0 {
            return Err(Error::InvalidOptions(
                "group_commit_bytes_max and read_chunk_bytes must be positive",
            ));
        }
        if self.spare_start_percent > SPARE_START_PERCENT_MAX {
            return Err(Error::InvalidOptions(
                "spare_start_percent must be at most 90 (a spare started later would seldom be ready by the rotation)",
            ));
        }
        if self.first_lsn.0 == 0 {
            return Err(Error::InvalidOptions("first_lsn must be at least 1"));
        }
        Ok(())
    }
}
