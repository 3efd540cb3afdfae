use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
fn main() {
    let a = AtomicU64::new(0);
    let n = 200_000_000u64;
    for round in 0..3 {
        let t = Instant::now();
        let mut x = 0u64;
        for i in 0..n { x = x.wrapping_add(a.fetch_add(i & 1, Ordering::AcqRel)); }
        let d = t.elapsed().as_nanos() as f64 / n as f64;
        let t2 = Instant::now();
        let mut y = 0u64;
        for i in 0..n { y = y.wrapping_add(std::hint::black_box(i & 1)); }
        let d2 = t2.elapsed().as_nanos() as f64 / n as f64;
        println!("round {round}: fetch_add {d:.2} ns each; plain loop {d2:.2} ns ({x} {y})");
    }
}
