//! SSTable decoding (footer, index, filter, properties, data blocks) on arbitrary bytes:
//! never panics; a table that opens answers gets and full iteration without panicking.
#![no_main]

use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_lsm::{Table, MAX_SEQ};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let f = fs.open(&dir.join("0000000001.sst"), OpenMode::CreateNew).unwrap();
    f.write_all_at(data, 0).unwrap();
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
