//! SSTable decoding on arbitrary bytes: never panics. The bytes go (1) straight into the
//! block decoder (entries and seeks), and (2) into a table file whose footer gets a valid
//! magic and checksum, so the fuzzer reaches the index, filter, properties and data-block
//! paths behind it; a table that opens answers gets and iteration without panicking.
#![no_main]

use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_lsm::block::Block;
use bourse_lsm::table::{FOOTER_BYTES, TABLE_MAGIC, TABLE_VERSION};
use bourse_lsm::{Table, MAX_SEQ};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(block) = Block::new(data.to_vec()) {
        let _ = block.entries();
        let _ = block.seek(b"key", MAX_SEQ);
        let _ = block.seek(b"", 0);
    }
    let mut bytes = data.to_vec();
    if bytes.len() >= FOOTER_BYTES {
        let f = bytes.len() - FOOTER_BYTES;
        bytes[f + 48..f + 52].copy_from_slice(&TABLE_VERSION.to_le_bytes());
        bytes[f + 52..f + 60].copy_from_slice(&TABLE_MAGIC);
        let crc = crc32c::crc32c(&bytes[f..f + 60]);
        bytes[f + 60..f + 64].copy_from_slice(&crc.to_le_bytes());
    }
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let file = fs.open(&dir.join("0000000001.sst"), OpenMode::CreateNew).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    if let Ok(t) = Table::open(&fs, dir, 1) {
        let _ = t.verify();
        let _ = t.get(b"key", MAX_SEQ);
        let _ = t.before(None, 10);
        for e in t.iter_from(None).take(10_000) {
            if e.is_err() {
                break;
            }
        }
    }
});
