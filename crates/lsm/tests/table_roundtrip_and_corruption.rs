//! SSTables: what is written reads back at every snapshot, and a flipped bit anywhere in
//! the file is an error (at open, at get, or while iterating), never a wrong value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bourse_fs::{OpenMode, SimFs, Vfs};
use bourse_lsm::table::WRITE_CHUNK;
use bourse_lsm::{Kind, Table, TableWriter, MAX_SEQ};

/// 2,000 keys; every third has an older version, every seventh's newest is a delete.
fn entries() -> Vec<(Vec<u8>, u64, Kind, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..2000u64 {
        let key = format!("user{:06}", i * 3).into_bytes();
        let newest_kind = if i % 7 == 0 { Kind::Delete } else { Kind::Put };
        let v = if newest_kind == Kind::Put {
            format!("value-{i}-new").into_bytes()
        } else {
            Vec::new()
        };
        out.push((key.clone(), 10_000 + i, newest_kind, v));
        if i % 3 == 0 {
            out.push((key, 100 + i, Kind::Put, format!("value-{i}-old").into_bytes()));
        }
    }
    out
}

fn write(fs: &SimFs) -> Vec<(Vec<u8>, u64, Kind, Vec<u8>)> {
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let mut w = TableWriter::create(fs, dir, 7, 4096, 10).unwrap();
    let es = entries();
    for (k, s, kind, v) in &es {
        w.add(k, *s, *kind, v).unwrap();
    }
    let meta = w.finish().unwrap();
    assert_eq!(meta.entries, es.len() as u64);
    assert_eq!(meta.tombstones, es.iter().filter(|e| e.2 == Kind::Delete).count() as u64);
    assert_eq!((meta.min_seq, meta.max_seq), (100, 11_999));
    es
}

#[test]
fn versions_read_back_at_every_snapshot() {
    let fs = SimFs::new();
    let es = write(&fs);
    let t = Table::open(&fs, Path::new("/db"), 7).unwrap();
    assert_eq!(t.verify().unwrap(), es.len() as u64);
    for i in (0..2000u64).step_by(13) {
        let key = format!("user{:06}", i * 3).into_bytes();
        let newest = t.get(&key, MAX_SEQ).unwrap().unwrap();
        assert_eq!(newest.0, 10_000 + i);
        assert_eq!(newest.1, if i % 7 == 0 { Kind::Delete } else { Kind::Put });
        let old = t.get(&key, 5_000).unwrap();
        if i % 3 == 0 {
            assert_eq!(old.unwrap().2, format!("value-{i}-old").into_bytes());
        } else {
            assert!(old.is_none());
        }
        assert!(t.get(&key, 50).unwrap().is_none());
        // Keys between stored keys are absent.
        let missing = format!("user{:06}", i * 3 + 1).into_bytes();
        assert!(t.get(&missing, MAX_SEQ).unwrap().is_none());
    }
    let from: Vec<_> =
        t.iter_from(Some((b"user003000", MAX_SEQ))).map(|e| e.unwrap().key).take(3).collect();
    assert_eq!(from[0], b"user003000");
    let all: Vec<_> = t.iter_from(None).map(|e| e.unwrap()).collect();
    assert_eq!(all.len(), es.len());
}

#[test]
fn the_bloom_filter_skips_most_misses() {
    let fs = SimFs::new();
    write(&fs);
    let t = Table::open(&fs, Path::new("/db"), 7).unwrap();
    let admitted =
        (0..10_000u32).filter(|i| t.may_contain(format!("absent{i}").as_bytes())).count();
    assert!(admitted < 300, "{admitted} of 10000 misses admitted");
}

#[test]
fn every_flipped_bit_is_detected_or_harmless() {
    let clean = SimFs::new();
    let es = write(&clean);
    let path = Path::new("/db").join("0000000007.sst");
    let bytes = clean.contents(&path).unwrap();
    let step = (bytes.len() / 1500).max(1);
    let (mut detected, mut harmless) = (0, 0);
    for byte in (0..bytes.len()).step_by(step) {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/db")).unwrap();
        let f = fs.open(&path, OpenMode::CreateNew).unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        fs.flip_bit(&path, byte as u64, (byte % 8) as u8).unwrap();
        let Ok(t) = Table::open(&fs, Path::new("/db"), 7) else {
            detected += 1;
            continue;
        };
        match t.iter_from(None).collect::<Result<Vec<_>, _>>() {
            Err(_) => detected += 1,
            Ok(all) => {
                // Undetected only if the flip changed nothing readable (e.g. filter bits).
                let got: Vec<_> =
                    all.into_iter().map(|e| (e.key, e.seq, e.kind, e.value)).collect();
                assert_eq!(got, es, "flip at byte {byte} changed data undetected");
                harmless += 1;
            }
        }
    }
    assert!(detected > harmless, "detected {detected}, harmless {harmless}");
}

/// Regression (found by the `sst_table` fuzz target): a block handle whose size is near
/// `u64::MAX` wrapped the bounds check around and indexed out of bounds.
#[test]
fn a_huge_block_handle_is_corruption_not_a_panic() {
    let fs = SimFs::new();
    write(&fs);
    let path = Path::new("/db").join("0000000007.sst");
    let mut bytes = fs.contents(&path).unwrap();
    let f = bytes.len() - bourse_lsm::table::FOOTER_BYTES;
    bytes[f + 8..f + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // filter handle size
    let crc = crc32c::crc32c(&bytes[f..f + 60]);
    bytes[f + 60..f + 64].copy_from_slice(&crc.to_le_bytes());
    let fs2 = SimFs::new();
    fs2.create_dir_all(Path::new("/db")).unwrap();
    fs2.open(&path, OpenMode::CreateNew).unwrap().write_all_at(&bytes, 0).unwrap();
    assert!(matches!(
        Table::open(&fs2, Path::new("/db"), 7),
        Err(bourse_lsm::Error::Corrupt { .. })
    ));
}

#[test]
fn lz4_blocks_read_back_smaller_and_corruption_is_still_caught() {
    use bourse_lsm::Compression;
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let mut plain = TableWriter::create(&fs, dir, 1, 4096, 10).unwrap();
    let mut packed =
        TableWriter::create(&fs, dir, 2, 4096, 10).unwrap().with_compression(Compression::Lz4);
    let es = entries();
    for (k, s, kind, v) in &es {
        plain.add(k, *s, *kind, v).unwrap();
        packed.add(k, *s, *kind, v).unwrap();
    }
    let (a, b) = (plain.finish().unwrap(), packed.finish().unwrap());
    assert!(
        b.bytes * 10 < a.bytes * 9,
        "LZ4 saves space on repetitive values: {} vs {}",
        b.bytes,
        a.bytes
    );
    let t = Table::open(&fs, dir, 2).unwrap();
    assert_eq!(t.verify().unwrap(), es.len() as u64);
    let all: Vec<_> =
        t.iter_from(None).map(|e| e.unwrap()).map(|e| (e.key, e.seq, e.kind, e.value)).collect();
    assert_eq!(all, es);
    let path = dir.join("0000000002.sst");
    let mut detected = 0;
    for byte in (0..b.bytes / 2).step_by(97) {
        let copy = SimFs::new();
        copy.create_dir_all(dir).unwrap();
        copy.open(&path, OpenMode::CreateNew)
            .unwrap()
            .write_all_at(&fs.contents(&path).unwrap(), 0)
            .unwrap();
        copy.flip_bit(&path, byte, 3).unwrap();
        match Table::open(&copy, dir, 2).and_then(|t| t.verify()) {
            Err(_) => detected += 1,
            Ok(_) => panic!("flip at {byte} of a data block went unnoticed"),
        }
    }
    assert!(detected > 0);
}

/// A table being written hands its bytes to the device every `writeback_bytes` (a hint
/// the file system records), and the hint changes nothing in the table.
#[test]
fn a_table_starts_writeback_as_it_grows() {
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let value = vec![7u8; 1000];
    let write = |id, every| {
        let mut w = TableWriter::create(&fs, dir, id, 4096, 10).unwrap().with_writeback(every);
        for i in 0..3_500u64 {
            w.add(format!("key{i:08}").as_bytes(), i + 1, Kind::Put, &value).unwrap();
        }
        w.finish().unwrap()
    };
    let quiet = write(1, 0);
    assert_eq!(fs.writeback_hints(), (0, 0), "0 turns the hints off");
    let hinted = write(2, 1 << 20);
    let (calls, bytes) = fs.writeback_hints();
    // About 3.5 MB of blocks: a hint after each whole mebibyte, none for the tail.
    assert_eq!(calls, 3, "hints for {} bytes", hinted.bytes);
    assert!((3 << 20..=hinted.bytes).contains(&bytes), "{bytes} hinted of {}", hinted.bytes);
    assert_eq!(quiet.bytes, hinted.bytes);
    let a = fs.contents(&dir.join("0000000001.sst")).unwrap();
    let b = fs.contents(&dir.join("0000000002.sst")).unwrap();
    assert_eq!(a, b, "the same table either way");
}

/// A table reaches its file in writes of `WRITE_CHUNK` bytes (the last one shorter), not
/// one per block: about 3.5 MB of 4 KiB blocks take four writes, not some 860.
#[test]
fn a_table_is_written_in_large_chunks() {
    let fs = SimFs::new();
    let dir = Path::new("/db");
    fs.create_dir_all(dir).unwrap();
    let value = vec![7u8; 1000];
    let mut w = TableWriter::create(&fs, dir, 1, 4096, 10).unwrap();
    let created = fs.ops();
    for i in 0..3_500u64 {
        w.add(format!("key{i:08}").as_bytes(), i + 1, Kind::Put, &value).unwrap();
        // Nothing reaches the file before a whole chunk is ready.
        let chunks = w.bytes() / WRITE_CHUNK as u64;
        assert!(
            fs.ops() - created <= chunks,
            "{} writes for {} bytes",
            fs.ops() - created,
            w.bytes()
        );
    }
    let meta = w.finish().unwrap();
    let writes = meta.bytes.div_ceil(WRITE_CHUNK as u64);
    assert_eq!(writes, 4, "{} bytes", meta.bytes);
    // The writes and the closing `fdatasync`.
    assert_eq!(fs.ops() - created, writes + 1);
    // And it reads back.
    let t = Table::open(&fs, dir, 1).unwrap();
    assert_eq!(t.verify().unwrap(), 3_500);
    for i in (0..3_500u64).step_by(97) {
        let got = t.get(format!("key{i:08}").as_bytes(), MAX_SEQ).unwrap().unwrap();
        assert_eq!((got.0, got.1, &got.2[..]), (i + 1, Kind::Put, &value[..]));
    }
}
