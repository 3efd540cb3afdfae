//! Times a checksum call at the sizes replay sees: `bourse_wal::crc::crc32c` against the
//! `crc32c` crate, over slices at every alignment of a 1 MiB buffer.
//!
//! `cargo run --release -p bourse-wal --example crc`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let buf: Vec<u8> =
        (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let calls = 2_000_000;
    for len in [24usize, 100, 152, 300, 1_000, 10_000] {
        let time = |f: &dyn Fn(&[u8]) -> u32| {
            let (mut acc, mut off) = (0u32, 0usize);
            let t = Instant::now();
            for _ in 0..calls {
                acc ^= f(black_box(&buf[off..off + len]));
                off = (off + len + 3) % (buf.len() - 20_000);
            }
            black_box(acc);
            t.elapsed().as_nanos() as f64 / calls as f64
        };
        let ours = time(&bourse_wal::crc::crc32c);
        let crate_ = time(&crc32c::crc32c);
        println!("{len:>6} bytes: bourse_wal::crc {ours:6.1} ns, crc32c crate {crate_:6.1} ns");
    }
}
