//! WAL decoding (record framing, recovery, replay, verify) on arbitrary segment bytes:
//! never panics, and whatever opens replays without error or reports corruption.
#![no_main]

use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_wal::format::SegmentHeader;
use bourse_wal::{verify_dir, Lsn, Preallocate, Wal, WalOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    let dir = Path::new("/wal");
    fs.create_dir_all(dir).unwrap();
    let file = fs.open(&dir.join("00000000000000000001.wal"), OpenMode::CreateNew).unwrap();
    // Most inputs get a valid header so the fuzzer spends its time on records.
    let body = if data.first().is_some_and(|b| b % 8 != 0) {
        let mut v = SegmentHeader { first_lsn: Lsn(1) }.encode().to_vec();
        v.extend_from_slice(&data[1..]);
        v
    } else {
        data.to_vec()
    };
    file.write_all_at(&body, 0).unwrap();
    file.sync_data().unwrap();
    fs.sync_dir(dir).unwrap();
    let opts = WalOptions {
        record_bytes_max: 1 << 16,
        segment_bytes: 1 << 20,
        read_chunk_bytes: 4096,
        preallocate: Preallocate::None,
        ..WalOptions::default()
    };
    let _ = verify_dir(&fs, dir, &opts);
    if let Ok(wal) = Wal::open(fs.shared(), dir, opts) {
        if let Ok(mut reader) = wal.read_from(wal.first_lsn()) {
            while let Ok(Some(_)) = reader.next_record() {}
        }
    }
});
