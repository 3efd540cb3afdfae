#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A loom model of the ring's publish/read protocol: whatever the interleaving, a
//! reader gets whole records in LSN order or is told it was lapped, never a torn
//! record. Run with `cargo test -p bourse-bus --features loom --test loom --release`.
#![cfg(feature = "loom")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bourse_bus::loom_api::{meta, Canary, Header, Read, Ring, Writer};

/// Each record's one payload word is derived from its LSN.
fn word(lsn: u64) -> [u8; 8] {
    (lsn * 0x0101_0101_0101_0101).to_le_bytes()
}

/// The writer shows readers its records `batch` at a time (one `tail` store each).
///
/// Returns, over all the executions explored, the most records one reader read and
/// how many executions ended with the reader lapped, so that a test can tell the model
/// is not vacuous (a ring that lapped every reader at once would pass it).
fn model(records: u64, batch: u64, preemptions: usize, canary: Option<Canary>) -> (u64, u64) {
    // Outside loom's control: counted across executions.
    static MOST: AtomicU64 = AtomicU64::new(0);
    static LAPPED: AtomicU64 = AtomicU64::new(0);
    MOST.store(0, Ordering::SeqCst);
    LAPPED.store(0, Ordering::SeqCst);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(move || {
        // 8 words: two 4-word records (3 header words + 1 payload word) fit, so the
        // third overwrites the first.
        let ring = Arc::new(Ring::new(64));
        let mut w = Writer::new(ring.clone());
        let r = ring.clone();
        let reader = loom::thread::spawn(move || {
            let (mut pos, mut seen, mut expect, mut buf) = (0u64, 0u64, 1u64, Vec::new());
            for _ in 0..records * 2 {
                let got = match canary {
                    Some(c) => r.read_canary(&mut pos, &mut seen, expect, &mut buf, c),
                    None => r.read(&mut pos, &mut seen, expect, &mut buf),
                };
                match got {
                    Read::Record(h) => {
                        assert_eq!(h.lsn, expect, "out of order");
                        assert_eq!(h.timestamp, expect as i64 * 10, "torn header");
                        assert_eq!(buf.as_slice(), &word(expect), "torn payload");
                        MOST.fetch_max(expect, Ordering::SeqCst);
                        expect += 1;
                    }
                    Read::Lapped => {
                        LAPPED.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Read::Empty => loom::thread::yield_now(),
                }
            }
        });
        for lsn in 1..=records {
            let h = Header { lsn, timestamp: lsn as i64 * 10, meta: meta(8, 18, 0, 0) };
            if batch == 1 {
                w.publish(h, &word(lsn));
            } else {
                w.write_within(h, &word(lsn), u64::MAX);
                if lsn % batch == 0 || lsn == records {
                    w.commit();
                }
            }
        }
        reader.join().unwrap();
    });
    (MOST.load(Ordering::SeqCst), LAPPED.load(Ordering::SeqCst))
}

#[test]
fn readers_never_see_a_torn_or_reordered_record() {
    let (most, lapped) = model(3, 1, 3, None);
    assert_eq!(most, 3, "some execution must read every record");
    assert!(lapped > 0, "some execution must lap the reader");
}

#[test]
fn readers_never_see_a_torn_or_reordered_record_of_a_batch() {
    // Records 1 and 2 appear together; 3 overwrites 1.
    let (most, lapped) = model(3, 2, 3, None);
    assert_eq!(most, 3, "some execution must read every record");
    assert!(lapped > 0, "some execution must lap the reader");
}

#[test]
fn canary_a_read_without_its_final_check_is_caught() {
    let r = std::panic::catch_unwind(|| model(3, 1, 3, Some(Canary::NoFinalCheck)));
    assert!(r.is_err(), "the model accepted a reader that skips the seqlock check");
}

#[test]
fn canary_a_relaxed_load_of_the_tail_is_caught() {
    let r = std::panic::catch_unwind(|| model(3, 1, 3, Some(Canary::RelaxedTail)));
    assert!(r.is_err(), "the model accepted a reader that does not acquire the tail");
}
