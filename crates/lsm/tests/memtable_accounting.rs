//! The memtable's byte count is what the flush policy and the engine's memory budget go
//! by, so it must follow the heap the memtable really takes, counted here by jemalloc.
//! One test in its own binary: another test allocating at the same time would be
//! counted too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bourse_lsm::{Kind, Memtable};
use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn allocated() -> usize {
    epoch::advance().unwrap();
    stats::allocated::read().unwrap()
}

/// An account's keys at random positions (tag, user, order id), and an instrument's in
/// ascending order (tag, time, sequence), each with an index entry's small value and
/// an event-sized one.
#[test]
fn accounted_bytes_follow_the_heap() {
    const N: u64 = 100_000;
    let scattered = |i: u64| {
        let h = i.wrapping_mul(0x2545_F491_4F6C_DD1D);
        format!("{}acct{:05}ord{i}", ['O', 'B', 'P'][(h % 3) as usize], (h >> 17) % 10_000)
            .into_bytes()
    };
    let appended = |i: u64| {
        let mut k = vec![b'T'];
        k.extend_from_slice(&(1_763_800_000_000_000_000u64 + i * 1000).to_be_bytes());
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    for (shape, key) in
        [("scattered", &scattered as &dyn Fn(u64) -> Vec<u8>), ("appended", &appended)]
    {
        let keys: Vec<Vec<u8>> = (0..N).map(key).collect();
        for value_len in [10usize, 150] {
            let value = vec![1u8; value_len];
            let before = allocated();
            let m = Memtable::new();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k, i as u64 + 1, Kind::Put, &value);
            }
            let heap = allocated().saturating_sub(before) as f64;
            let ratio = heap / m.bytes() as f64;
            assert!(
                (0.8..1.25).contains(&ratio),
                "{shape}, {value_len}-byte values: heap {heap} bytes, accounted {}, ratio {ratio:.2}",
                m.bytes()
            );
        }
    }
}
