#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The reference exchange: matching, validation, accounts, and the invariants a futures
//! exchange keeps (open interest balances, cash is conserved up to commission, the same
//! requests give the same events).

use bourse_model::{
    CancelRequested, Direction, Event, InstrumentId, Offset, OrderRequested, OrderStatus,
    PriceType, TimeCondition, Transfer, TransferKind, VolumeCondition,
};
use bourse_sim::{Exchange, Settlement, SimConfig};
use proptest::prelude::*;

fn ins(s: &str) -> InstrumentId {
    InstrumentId::new(s).unwrap()
}

fn deposit(user: &str, amount: f64) -> Event {
    Event::Transfer(Transfer {
        user_id: user.into(),
        kind: TransferKind::Deposit,
        currency: "CNY".into(),
        amount,
        datetime: 1,
        error_id: 0,
        error_msg: String::new(),
    })
}

fn withdraw(user: &str, amount: f64) -> Event {
    Event::Transfer(Transfer { kind: TransferKind::Withdraw, ..transfer_of(deposit(user, amount)) })
}

fn transfer_of(e: Event) -> Transfer {
    match e {
        Event::Transfer(t) => t,
        _ => unreachable!(),
    }
}

#[allow(clippy::too_many_arguments)]
fn order(
    user: &str,
    id: &str,
    instrument: &str,
    dir: Direction,
    off: Offset,
    vol: i64,
    price: f64,
    tc: TimeCondition,
) -> Event {
    Event::OrderRequested(OrderRequested {
        user_id: user.into(),
        order_id: id.into(),
        instrument_id: ins(instrument),
        direction: dir,
        offset: off,
        volume: vol,
        price_type: PriceType::Limit,
        limit_price: price,
        volume_condition: VolumeCondition::Any,
        time_condition: tc,
        hedge_flag: Default::default(),
        datetime: 1_700_000_000_000_000_000,
    })
}

fn cancel(user: &str, id: &str) -> Event {
    Event::CancelRequested(CancelRequested {
        user_id: user.into(),
        order_id: id.into(),
        datetime: 5,
    })
}

fn rejected(out: &[Event]) -> Option<(i32, String)> {
    match out.first() {
        Some(Event::OrderRejected(r)) => Some((r.error_id, r.last_msg.clone())),
        _ => None,
    }
}

fn kinds(out: &[Event]) -> Vec<&'static str> {
    out.iter().map(|e| e.kind().name()).collect()
}

const RB: &str = "SHFE.rb2601";
const M: &str = "DCE.m2601";
use Direction::{Buy, Sell};
use Offset::{Close, CloseToday, Open};
use TimeCondition::{Gfd, Ioc};

#[test]
fn a_crossing_order_trades_at_the_resting_price_and_updates_both_accounts() {
    let mut ex = Exchange::new(SimConfig::default());
    ex.process(&deposit("a", 1_000_000.0));
    ex.process(&deposit("b", 1_000_000.0));
    let out = ex.process(&order("a", "1", RB, Buy, Open, 3, 3100.0, Gfd));
    assert_eq!(kinds(&out), ["order_accepted", "account_updated", "tick", "book_snapshot"]);
    let acc = ex.account("a").unwrap();
    // Margin 3100 × 10 × 0.10 = 3100 per lot, commission 1 per lot, frozen for 3 lots.
    assert_eq!(acc.frozen_margin, 9300.0);
    assert_eq!(acc.frozen_commission, 3.0);
    assert_eq!(acc.available, 1_000_000.0 - 9303.0);

    let out = ex.process(&order("b", "9", RB, Sell, Open, 5, 3099.0, Gfd));
    let trades: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Event::TradeExecuted(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(trades.len(), 2, "{:?}", kinds(&out));
    assert!(trades.iter().all(|t| t.price == 3100.0 && t.volume == 3));
    assert_eq!(trades[0].user_id, "a");
    assert_eq!(trades[0].trade_id, "1|1");
    assert_eq!(trades[1].user_id, "b");
    assert_eq!(
        trades[0].exchange_trade_id, trades[1].exchange_trade_id,
        "one match, one exchange id"
    );
    assert_eq!(ex.open_interest(&ins(RB)), 3);
    assert_eq!(ex.last_price(&ins(RB)), Some(3100.0));
    // b's remaining 2 lots rest as the best ask.
    let (bids, asks) = ex.depth(&ins(RB), 5);
    assert!(bids.is_empty());
    assert_eq!((asks[0].price, asks[0].volume), (3099.0, 2));
    let a = ex.account("a").unwrap();
    assert_eq!(a.frozen_margin, 0.0);
    assert_eq!(a.margin, 9300.0);
    assert_eq!(a.commission, 3.0);
    let pa = ex.positions("a").next().unwrap();
    assert_eq!((pa.volume_long_today, pa.volume_long, pa.pos), (3, 3, 3));
    assert_eq!(pa.open_price_long, 3100.0);
    let pb = ex.positions("b").next().unwrap();
    assert_eq!(pb.volume_short, 3);
    let b = ex.account("b").unwrap();
    assert_eq!(b.frozen_margin, 2.0 * 3100.0);
    // a offers 2 of its long at 3090 (better than b's 3099); b buys 1 back to close.
    let out = ex.process(&order("a", "2", RB, Sell, CloseToday, 2, 3090.0, Gfd));
    assert_eq!(rejected(&out), None);
    assert_eq!(ex.positions("a").next().unwrap().volume_long_frozen_today, 2);
    let out = ex.process(&order("b", "10", RB, Buy, CloseToday, 1, 3120.0, Gfd));
    assert_eq!(rejected(&out), None, "{out:?}");
    // Closed at 3090 against an open price of 3100, 10 units per lot.
    assert_eq!(ex.account("a").unwrap().close_profit, -100.0);
    assert_eq!(ex.account("b").unwrap().close_profit, 100.0);
    assert_eq!(ex.open_interest(&ins(RB)), 2);
    let pa = ex.positions("a").next().unwrap();
    assert_eq!((pa.volume_long, pa.volume_long_frozen), (2, 1));
}

#[test]
fn every_rule_rejects_with_its_reason_and_changes_nothing() {
    let mut ex = Exchange::new(SimConfig::default());
    ex.process(&deposit("a", 20_000.0));
    let before = ex.account("a").unwrap().clone();
    let cases = [
        (order("a", "1", "SHFE.zz9999", Buy, Open, 1, 3100.0, Gfd), 1),
        (order("nobody", "1", RB, Buy, Open, 1, 3100.0, Gfd), 2),
        (order("a", "2", RB, Buy, Open, 0, 3100.0, Gfd), 3),
        (order("a", "3", RB, Buy, Open, 501, 3100.0, Gfd), 3),
        (order("a", "4", RB, Buy, Open, 1, 3100.5, Gfd), 4),
        (order("a", "5", RB, Buy, Open, 1, 3400.0, Gfd), 5),
        (order("a", "6", RB, Buy, Open, 10, 3100.0, Gfd), 6),
        (order("a", "7", RB, Sell, Close, 1, 3100.0, Gfd), 7),
        (order("a", "8", M, Sell, CloseToday, 1, 2900.0, Gfd), 8),
    ];
    for (req, code) in cases {
        let out = ex.process(&req);
        let (got, msg) = rejected(&out).unwrap_or_else(|| panic!("not rejected: {out:?}"));
        assert_eq!(got, code, "{msg}");
        assert!(!msg.is_empty());
        assert_eq!(out.len(), 1, "a rejection is the only event: {out:?}");
    }
    // A market order must be IOC; MIN is not supported.
    let mut market = order("a", "9", RB, Buy, Open, 1, 0.0, Gfd);
    if let Event::OrderRequested(r) = &mut market {
        r.price_type = PriceType::Any;
    }
    assert_eq!(rejected(&ex.process(&market)).unwrap().0, 9);
    assert_eq!(ex.account("a").unwrap(), &before);
    assert_eq!(ex.live_orders(), 0);
    // The error ids and reasons are part of the interface.
    assert!(rejected(&ex.process(&order("a", "10", RB, Buy, Open, 10, 3100.0, Gfd)))
        .unwrap()
        .1
        .contains("insufficient funds"));
}

#[test]
fn ioc_fok_market_orders_and_cancels() {
    let mut ex = Exchange::new(SimConfig::default());
    for u in ["a", "b"] {
        ex.process(&deposit(u, 10_000_000.0));
    }
    ex.process(&order("a", "1", M, Sell, Open, 2, 2900.0, Gfd));
    ex.process(&order("a", "2", M, Sell, Open, 2, 2902.0, Gfd));
    // FAK: takes 2 at 2900, the rest is cancelled.
    let out = ex.process(&order("b", "1", M, Buy, Open, 5, 2901.0, Ioc));
    assert!(kinds(&out).contains(&"trade_executed"));
    let cancelled = out.iter().find_map(|e| match e {
        Event::OrderCancelled(c) => Some(c.volume_left),
        _ => None,
    });
    assert_eq!(cancelled, Some(3));
    // FOK: 3 lots are not available at ≤ 2902 (only 2), so nothing trades.
    let mut fok = order("b", "2", M, Buy, Open, 3, 2902.0, Ioc);
    if let Event::OrderRequested(r) = &mut fok {
        r.volume_condition = VolumeCondition::All;
    }
    let out = ex.process(&fok);
    assert!(!kinds(&out).contains(&"trade_executed"), "{:?}", kinds(&out));
    assert!(kinds(&out).contains(&"order_cancelled"));
    // Market IOC sweeps at the resting price.
    let mut mkt = order("b", "3", M, Buy, Open, 1, 0.0, Ioc);
    if let Event::OrderRequested(r) = &mut mkt {
        r.price_type = PriceType::Any;
    }
    let out = ex.process(&mkt);
    let price = out.iter().find_map(|e| match e {
        Event::TradeExecuted(t) => Some(t.price),
        _ => None,
    });
    assert_eq!(price, Some(2902.0));
    // Cancel the rest of a's order 2; cancelling it again does nothing.
    let out = ex.process(&cancel("a", "2"));
    assert_eq!(out.first().map(|e| e.kind().name()), Some("order_cancelled"));
    assert!(ex.process(&cancel("a", "2")).is_empty());
    assert!(ex.process(&cancel("b", "nope")).is_empty());
    let a = ex.account("a").unwrap();
    assert_eq!((a.frozen_margin, a.frozen_commission), (0.0, 0.0));
    // A repeated order id is ignored: the store keeps the first.
    assert!(ex.process(&order("a", "1", M, Sell, Open, 2, 2900.0, Gfd)).is_empty());
}

#[test]
fn withdrawals_beyond_available_fail_with_a_record() {
    let mut ex = Exchange::new(SimConfig::default());
    ex.process(&deposit("a", 100.0));
    let out = ex.process(&withdraw("a", 150.0));
    assert!(matches!(&out[..], [Event::Transfer(t)] if t.error_id == 1), "{out:?}");
    assert_eq!(ex.account("a").unwrap().balance, 100.0);
    let out = ex.process(&withdraw("a", 40.0));
    assert!(
        matches!(&out[..], [Event::AccountUpdated(a)] if a.balance == 60.0 && a.withdraw == 40.0)
    );
    // The failure record is not a request.
    assert!(!Exchange::is_request(&Event::Transfer(Transfer {
        error_id: 1,
        ..transfer_of(withdraw("a", 1.0))
    })));
}

fn settle(prices: &[(&str, f64)]) -> Event {
    Settlement { datetime: 9, prices: prices.iter().map(|(i, p)| (i.to_string(), *p)).collect() }
        .to_event()
}

#[test]
fn settlement_carries_the_day_into_history_and_moves_the_limits() {
    let mut ex = Exchange::new(SimConfig::default());
    ex.process(&deposit("a", 1_000_000.0));
    ex.process(&deposit("b", 1_000_000.0));
    ex.process(&order("a", "1", RB, Buy, Open, 2, 3100.0, Gfd));
    ex.process(&order("b", "1", RB, Sell, Open, 2, 3100.0, Gfd));
    ex.process(&order("a", "2", RB, Buy, Open, 1, 3000.0, Gfd));
    assert_eq!(ex.live_orders(), 1);
    let out = ex.process(&settle(&[(RB, 3150.0)]));
    assert!(Exchange::is_request(&settle(&[])));
    let expired = out.iter().find_map(|e| match e {
        Event::OrderCancelled(c) => Some((c.order_id.clone(), c.last_msg.clone())),
        _ => None,
    });
    assert_eq!(expired.map(|(id, _)| id), Some("2".to_string()), "day orders expire");
    assert_eq!(ex.live_orders(), 0);
    assert!(kinds(&out).contains(&"book_snapshot") && kinds(&out).contains(&"tick"));
    // a is long 2 from 3100, settled at 3150: +1000, less 2 commission, into pre_balance.
    let a = ex.account("a").unwrap();
    assert_eq!(a.pre_balance, 1_000_000.0 + 1000.0 - 2.0);
    assert_eq!(
        (a.balance, a.commission, a.close_profit, a.deposit),
        (a.pre_balance, 0.0, 0.0, 0.0)
    );
    assert_eq!(ex.account("b").unwrap().pre_balance, 1_000_000.0 - 1000.0 - 2.0);
    let p = ex.positions("a").next().unwrap();
    assert_eq!((p.volume_long_today, p.volume_long_his, p.pos_long_his), (0, 2, 2));
    assert_eq!((p.position_price_long, p.open_price_long), (3150.0, 3100.0));
    assert_eq!((p.position_profit, p.float_profit), (0.0, 1000.0));
    // Margin and limits now follow 3150.
    assert_eq!(a.margin, 2.0 * 3150.0 * 10.0 * 0.10);
    let spec = ex.spec(&ins(RB)).unwrap();
    assert_eq!((spec.pre_settlement, spec.price_of(spec.upper_ticks())), (3150.0, 3339.0));
    // On SHFE, history closes with CLOSE; CLOSETODAY finds no today position.
    assert_eq!(
        rejected(&ex.process(&order("a", "3", RB, Sell, CloseToday, 1, 3160.0, Gfd))).unwrap().0,
        7
    );
    assert_eq!(rejected(&ex.process(&order("a", "4", RB, Sell, Close, 1, 3160.0, Gfd))), None);
    ex.process(&order("b", "2", RB, Buy, Close, 1, 3160.0, Gfd));
    // Closed at 3160 against the settlement price 3150: +100 for a, -100 for b.
    assert_eq!(ex.account("a").unwrap().close_profit, 100.0);
    assert_eq!(ex.account("b").unwrap().close_profit, -100.0);
    // A settlement that does not parse changes nothing.
    let junk = Event::Extension(bourse_model::Extension {
        kind: bourse_sim::SETTLEMENT_KIND,
        data: b"{".to_vec(),
    });
    assert!(ex.process(&junk).is_empty());
}

// ----- property tests -------------------------------------------------------------

const INSTRUMENTS: [&str; 3] = ["SHFE.rb2601", "DCE.m2601", "CFFEX.IF2512"];
const USERS: [&str; 4] = ["u1", "u2", "u3", "u4"];

fn request() -> impl Strategy<Value = (u8, usize, usize, bool, u8, i64, i64, bool, u32)> {
    (
        0u8..11,
        0..USERS.len(),
        0..INSTRUMENTS.len(),
        any::<bool>(),
        0u8..3,
        1i64..8,
        -6i64..6,
        any::<bool>(),
        0u32..40,
    )
}

fn build(ex: &Exchange, n: usize, r: (u8, usize, usize, bool, u8, i64, i64, bool, u32)) -> Event {
    let (what, u, i, buy, off, vol, dticks, ioc, target) = r;
    let user = USERS[u];
    match what {
        0 => deposit(user, 200_000.0),
        1 => withdraw(user, 50_000.0),
        2 | 3 => cancel(user, &format!("o{target}")),
        10 => {
            let spec = ex.spec(&ins(INSTRUMENTS[i])).unwrap();
            let price = spec.price_of(spec.ticks_of(spec.pre_settlement).unwrap() + dticks);
            settle(&[(INSTRUMENTS[i], price)])
        }
        _ => {
            let spec = ex.spec(&ins(INSTRUMENTS[i])).unwrap();
            let price = spec.price_of(spec.ticks_of(spec.pre_settlement).unwrap() + dticks);
            let offset = [Open, Close, CloseToday][off as usize];
            let dir = if buy { Buy } else { Sell };
            let tc = if ioc { Ioc } else { Gfd };
            order(user, &format!("o{n}"), INSTRUMENTS[i], dir, offset, vol, price, tc)
        }
    }
}

/// `deposits`: net money in since the start; `fees_today`: commission since the last
/// settlement; `fees`: all commission since the start.
fn check_invariants(ex: &Exchange, deposits: f64, fees_today: f64, fees: f64) {
    for id in INSTRUMENTS {
        let id = ins(id);
        let (mut long, mut short) = (0, 0);
        for u in ex.account_ids() {
            for p in ex.positions(u).filter(|p| p.instrument_id == id) {
                assert!(
                    p.volume_long_frozen <= p.volume_long
                        && p.volume_short_frozen <= p.volume_short,
                    "{p:?}"
                );
                assert!(p.volume_long_frozen_today >= 0 && p.volume_long_frozen_his >= 0);
                assert!(p.volume_short_frozen_today >= 0 && p.volume_short_frozen_his >= 0);
                long += p.volume_long;
                short += p.volume_short;
            }
        }
        assert_eq!(long, short, "long and short open interest of {id} differ");
        assert_eq!(long, ex.open_interest(&id), "open interest of {id}");
    }
    // Futures are zero-sum: with every position marked to the same last price, the
    // money in all accounts plus the commission paid is what was deposited.
    let mut total = 0.0;
    let mut commission = 0.0;
    for u in ex.account_ids() {
        let a = ex.account(u).unwrap();
        assert!(a.frozen_margin >= -1e-6 && a.frozen_commission >= -1e-6, "{a:?}");
        let eq = a.static_balance + a.close_profit - a.commission + a.position_profit;
        assert!((a.balance - eq).abs() < 1e-6 * (1.0 + a.balance.abs()));
        let av = a.balance - a.margin - a.frozen_margin - a.frozen_commission;
        assert!((a.available - av).abs() < 1e-6 * (1.0 + a.balance.abs()));
        total += a.balance;
        commission += a.commission;
    }
    // Commission since the last settlement; all of it left the accounts.
    assert!(
        (commission - fees_today).abs() < 1e-6 * (1.0 + fees_today),
        "commission {commission} vs fees of the trades {fees_today}"
    );
    total += fees;
    assert!(
        (total - deposits).abs() < 1e-6 * (1.0 + deposits.abs()),
        "cash not conserved: {total} vs {deposits}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_and_replay_is_exact(reqs in proptest::collection::vec(request(), 1..300)) {
        let mut ex = Exchange::new(SimConfig::default());
        let mut journal = Vec::new();
        let mut answers = Vec::new();
        let mut deposits = 0.0;
        let mut fees = 0.0;
        let mut fees_today = 0.0;
        for u in USERS {
            let e = deposit(u, 1_000_000.0);
            answers.push(ex.process(&e));
            journal.push(e);
            deposits += 1_000_000.0;
        }
        for (n, r) in reqs.into_iter().enumerate() {
            let e = build(&ex, n, r);
            let out = ex.process(&e);
            // An accepted opening order never leaves its account short of funds.
            if let (Event::OrderRequested(req), Some(Event::OrderAccepted(_))) = (&e, out.first()) {
                if req.offset == Open && !out.iter().any(|x| matches!(x, Event::TradeExecuted(_))) {
                    prop_assert!(ex.account(&req.user_id).unwrap().available >= -1e-6);
                }
            }
            for x in &out {
                match x {
                    Event::AccountUpdated(a) => prop_assert!(a.frozen_margin >= -1e-6),
                    Event::TradeExecuted(t) => {
                        let spec = ex.spec(&t.instrument_id).unwrap();
                        prop_assert_eq!(t.commission, spec.commission * t.volume as f64);
                        fees += t.commission;
                        fees_today += t.commission;
                    }
                    Event::Transfer(t) if t.error_id == 0 => {}
                    Event::OrderAccepted(o) | Event::OrderUpdated(o) => {
                        prop_assert!(o.volume_left >= 0 && o.volume_left <= o.volume_orign);
                        prop_assert_eq!(o.status == OrderStatus::Finished, o.volume_left == 0);
                    }
                    _ => {}
                }
            }
            if let Event::Transfer(t) = &e {
                let ok = out.iter().any(|x| matches!(x, Event::AccountUpdated(_)));
                if ok {
                    deposits += if t.kind == TransferKind::Deposit { t.amount } else { -t.amount };
                }
            }
            if Settlement::from_event(&e).is_some() {
                fees_today = 0.0;
                prop_assert_eq!(ex.live_orders(), 0);
            }
            answers.push(out);
            journal.push(e);
            check_invariants(&ex, deposits, fees_today, fees);
        }
        // The same requests into a fresh exchange give the same events.
        let mut again = Exchange::new(SimConfig::default());
        for (e, expected) in journal.iter().zip(&answers) {
            prop_assert_eq!(&again.process(e), expected);
        }
    }
}
