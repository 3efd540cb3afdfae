//! Manifest replay on arbitrary bytes: never panics; `verify_tree` reports instead.
#![no_main]

use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_lsm::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let current = fs.open(&dir.join("CURRENT"), OpenMode::CreateNew).unwrap();
    current.write_all_at(b"MANIFEST-000001\n", 0).unwrap();
    let m = fs.open(&dir.join("MANIFEST-000001"), OpenMode::CreateNew).unwrap();
    m.write_all_at(data, 0).unwrap();
    let _ = Manifest::read(&fs, dir);
    let _ = bourse_lsm::verify_tree(&fs, dir);
    let _ = Manifest::load(&fs, dir);
});
