#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property test: random sequences of publish / subscribe / read / drop against a model
//! of the stream. Every subscriber sees LSNs in order with the right payloads, gaps only
//! as `Lagged` and only for events really published, and a subscriber that keeps up
//! (reads after each burst smaller than the ring) never lags.

use bourse_bus::{Bus, BusOptions, Message, SubscribeOptions, Subscriber};
use bourse_model::EventKind;
use proptest::prelude::*;

fn payload(lsn: u64, salt: u8) -> Vec<u8> {
    let len = (lsn * 13 + salt as u64) as usize % 200;
    (0..len).map(|i| (lsn as usize + i) as u8 ^ salt).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Publish { n: u16, salt: u8 },
    Subscribe { back: u16 },
    Read { sub: usize, max: u16 },
    Drop { sub: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..400, any::<u8>()).prop_map(|(n, salt)| Op::Publish { n, salt }),
        1 => (0u16..600).prop_map(|back| Op::Subscribe { back }),
        3 => (0usize..4, 1u16..500).prop_map(|(sub, max)| Op::Read { sub, max }),
        1 => (0usize..4).prop_map(|sub| Op::Drop { sub }),
    ]
}

struct Sub {
    s: Subscriber,
    next: u64,
    keeper: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_view_is_the_stream_or_says_what_it_missed(ops in proptest::collection::vec(op(), 1..60)) {
        let (bus, p) = Bus::detached(BusOptions { ring_bytes: 16 << 10, ..BusOptions::default() }).unwrap();
        let mut salts = vec![0u8]; // salts[lsn]
        // One subscriber that reads everything after every publish: it must never lag.
        let mut keeper = Sub { s: bus.subscribe(SubscribeOptions::live()).unwrap(), next: 1, keeper: true };
        let mut subs: Vec<Sub> = Vec::new();
        let read = |sub: &mut Sub, max: u16, salts: &Vec<u8>| -> Result<(), TestCaseError> {
            let last = salts.len() as u64 - 1;
            for _ in 0..max {
                let Some(m) = sub.s.try_next().unwrap() else { break };
                match m {
                    Message::Event(d) => {
                        prop_assert_eq!(d.lsn, sub.next, "gap or duplicate");
                        let want = payload(d.lsn, salts[d.lsn as usize]);
                        prop_assert_eq!(d.payload, want.as_slice());
                        sub.next += 1;
                    }
                    Message::Lagged { from, to } => {
                        prop_assert!(!sub.keeper, "a subscriber that keeps up lagged");
                        prop_assert_eq!(from, sub.next);
                        prop_assert!(to >= from && to <= last, "Lagged past the stream: {}..={} of {}", from, to, last);
                        sub.next = to + 1;
                    }
                    Message::Heartbeat { .. } => {}
                }
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Publish { n, salt } => {
                    // Bursts (at most 60 × 28 words) stay below the ring (2048 words), so the
                    // keeper can keep up.
                    for _ in 0..n.min(60) {
                        let lsn = salts.len() as u64;
                        p.publish_raw(lsn, 0, EventKind::Extension, &payload(lsn, salt)).unwrap();
                        salts.push(salt);
                    }
                    read(&mut keeper, u16::MAX, &salts)?;
                    prop_assert_eq!(keeper.next, salts.len() as u64);
                }
                Op::Subscribe { back } => {
                    if subs.len() < 4 {
                        let last = salts.len() as u64 - 1;
                        let from = last.saturating_sub(back as u64).max(1);
                        let s = bus.subscribe(SubscribeOptions::from_lsn(from)).unwrap();
                        subs.push(Sub { next: from, s, keeper: false });
                    }
                }
                Op::Read { sub, max } => {
                    if let Some(s) = subs.get_mut(sub) {
                        read(s, max, &salts)?;
                    }
                }
                Op::Drop { sub } => {
                    if sub < subs.len() {
                        subs.remove(sub);
                    }
                }
            }
        }
        // Everyone drains to the end.
        for s in subs.iter_mut() {
            read(s, u16::MAX, &salts)?;
            read(s, u16::MAX, &salts)?;
            prop_assert_eq!(s.next, salts.len() as u64);
        }
        prop_assert_eq!(bus.subscribers().len(), 1 + subs.len());
    }
}
