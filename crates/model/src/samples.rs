//! Realistic example events of every kind, for documentation, tests and benchmarks.
//! `sample(kind, n)` varies ids, prices and volumes with `n`, deterministically.

use crate::*;

fn ins(n: u64) -> InstrumentId {
    const SET: [&str; 5] =
        ["SHFE.cu2512", "SHFE.rb2601", "DCE.m2601", "CZCE.SR601", "CFFEX.IF2512"];
    // The set holds valid ids, so `new` cannot fail; fall back to the default anyway.
    InstrumentId::new(SET[(n % 5) as usize]).unwrap_or_default()
}

/// The event mix of a busy futures exchange, by weight: mostly market data, then order
/// flow (used by the demo and the benchmarks).
pub const EXCHANGE_MIX: [(EventKind, u32); 9] = [
    (EventKind::Tick, 40),
    (EventKind::BookDelta, 25),
    (EventKind::OrderRequested, 10),
    (EventKind::OrderAccepted, 8),
    (EventKind::TradeExecuted, 6),
    (EventKind::AccountUpdated, 4),
    (EventKind::PositionUpdated, 4),
    (EventKind::CancelRequested, 2),
    (EventKind::OrderCancelled, 1),
];

/// The kind of event number `n` in [`EXCHANGE_MIX`] (a deterministic hash of `n` picks it).
pub fn mixed_kind(n: u64) -> EventKind {
    let total: u32 = EXCHANGE_MIX.iter().map(|(_, w)| w).sum();
    let mut x = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32 % total;
    for (kind, w) in EXCHANGE_MIX {
        if x < w {
            return kind;
        }
        x -= w;
    }
    EventKind::Tick
}

/// Instruments of the exchange-shaped benchmark workload ([`exchange_event`]).
pub const EXCHANGE_INSTRUMENTS: u64 = 50;

/// Accounts of the exchange-shaped benchmark workload ([`exchange_event`]).
pub const EXCHANGE_ACCOUNTS: u64 = 10_000;

/// Instrument `k` (modulo [`EXCHANGE_INSTRUMENTS`]) of the benchmark workload: `SIM.i07`.
pub fn exchange_instrument(k: u64) -> InstrumentId {
    InstrumentId::new(format!("SIM.i{:02}", k % EXCHANGE_INSTRUMENTS)).unwrap_or_default()
}

/// Account `k` (modulo [`EXCHANGE_ACCOUNTS`]) of the benchmark workload: `acct00042`.
pub fn exchange_account(k: u64) -> String {
    format!("acct{:05}", k % EXCHANGE_ACCOUNTS)
}

/// How far back [`exchange_event`] looks for the event an order event is about.
const ORDER_LOOKBACK: u64 = 1_000;

/// The event number of the order that order event `n` (of `kind`) is about, so that an
/// order's events share its ids, as on a real feed: a request starts an order; an
/// acceptance is about the nearest request before it (a second acceptance of the same
/// request updates that order); a cancel request or a cancellation is about the order
/// of the nearest acceptance before it. An event with no such event within
/// [`ORDER_LOOKBACK`] before it starts an order of its own.
fn order_origin(n: u64, kind: EventKind) -> u64 {
    let nearest = |want: EventKind| {
        (1..=ORDER_LOOKBACK).filter_map(|d| n.checked_sub(d)).find(|&m| mixed_kind(m) == want)
    };
    match kind {
        EventKind::OrderAccepted => nearest(EventKind::OrderRequested).unwrap_or(n),
        EventKind::CancelRequested | EventKind::OrderCancelled => nearest(EventKind::OrderAccepted)
            .map_or(n, |m| order_origin(m, EventKind::OrderAccepted)),
        _ => n,
    }
}

/// Event number `n` of the exchange-shaped workload that the engine benchmark and its
/// profiling examples submit: a [`mixed_kind`] sample moved onto one of
/// [`EXCHANGE_INSTRUMENTS`] instruments and [`EXCHANGE_ACCOUNTS`] accounts (scattered
/// by hashes of `n`), with ticks, book deltas and trades stamped `now` (ns). Order
/// events carry the ids (order, account, instrument) of the order they are about (see
/// [`order_origin`]), so an acceptance or a cancel finds the order its request stored.
pub fn exchange_event(n: u64, now: i64) -> Event {
    let kind = mixed_kind(n);
    let mut e = sample(kind, n);
    let at = |k: u64| {
        let ins = exchange_instrument(k.wrapping_mul(31) >> 3);
        (ins, exchange_account(k.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 17))
    };
    let (ins, acct) = at(n);
    // (instrument, account, order id) of the order an order event is about.
    let order = || {
        let origin = order_origin(n, kind);
        let (ins, acct) = at(origin);
        (ins, acct, format!("ord{origin}"))
    };
    match &mut e {
        Event::Tick(t) => (t.instrument_id, t.datetime) = (ins, now),
        Event::BookDelta(d) => (d.instrument_id, d.datetime) = (ins, now),
        Event::OrderRequested(o) => (o.instrument_id, o.user_id, o.order_id) = order(),
        Event::OrderAccepted(o) => (o.instrument_id, o.user_id, o.order_id) = order(),
        Event::TradeExecuted(t) => {
            (t.instrument_id, t.user_id, t.trade_date_time) = (ins, acct, now);
        }
        Event::AccountUpdated(a) => a.user_id = acct,
        Event::PositionUpdated(p) => (p.instrument_id, p.user_id) = (ins, acct),
        Event::CancelRequested(c) => (_, c.user_id, c.order_id) = order(),
        Event::OrderCancelled(c) => (c.instrument_id, c.user_id, c.order_id) = order(),
        _ => {}
    }
    e
}

fn ts(n: u64) -> i64 {
    1_763_800_000_000_000_000 + (n as i64) * 500_000_000
}

/// An example event of `kind`; `n` varies its ids and numbers.
pub fn sample(kind: EventKind, n: u64) -> Event {
    let n = n % 1_000_000_000;
    let p = 70_000.0 + (n % 400) as f64 * 10.0;
    let v = (n % 50) as i64 + 1;
    let user = format!("acct{:04}", n % 1000);
    let order = format!("ord{n}");
    match kind {
        EventKind::OrderRequested => Event::OrderRequested(OrderRequested {
            user_id: user,
            order_id: order,
            instrument_id: ins(n),
            direction: if n.is_multiple_of(2) { Direction::Buy } else { Direction::Sell },
            offset: Offset::Open,
            volume: v,
            price_type: PriceType::Limit,
            limit_price: p,
            volume_condition: VolumeCondition::Any,
            time_condition: TimeCondition::Gfd,
            hedge_flag: HedgeFlag::Speculation,
            datetime: ts(n),
        }),
        EventKind::OrderAccepted | EventKind::OrderUpdated => {
            let o = Order {
                seqno: n as i64,
                user_id: user,
                order_id: order,
                instrument_id: ins(n),
                volume_orign: v,
                limit_price: p,
                insert_date_time: ts(n),
                exchange_order_id: format!("X{n}"),
                volume_left: v,
                frozen_margin: p * v as f64 * 0.1,
                last_msg: "已报".into(),
                ..Order::default()
            };
            if kind == EventKind::OrderAccepted {
                Event::OrderAccepted(o)
            } else {
                Event::OrderUpdated(o)
            }
        }
        EventKind::OrderRejected => Event::OrderRejected(OrderRejected {
            user_id: user,
            order_id: order,
            instrument_id: ins(n),
            error_id: 30,
            last_msg: "price is not a multiple of the tick".into(),
            datetime: ts(n),
        }),
        EventKind::CancelRequested => Event::CancelRequested(CancelRequested {
            user_id: user,
            order_id: order,
            datetime: ts(n),
        }),
        EventKind::OrderCancelled => Event::OrderCancelled(OrderCancelled {
            user_id: user,
            order_id: order,
            instrument_id: ins(n),
            volume_left: v,
            last_msg: "cancelled".into(),
            datetime: ts(n),
        }),
        EventKind::TradeExecuted => Event::TradeExecuted(Trade {
            seqno: n as i64,
            user_id: user,
            trade_id: format!("{order}|1"),
            order_id: order,
            instrument_id: ins(n),
            exchange_trade_id: format!("T{n}"),
            direction: Direction::Buy,
            offset: Offset::Open,
            volume: v,
            price: p,
            trade_date_time: ts(n),
            commission: 3.2 * v as f64,
        }),
        EventKind::AccountUpdated => Event::AccountUpdated(Account {
            user_id: user,
            currency: "CNY".into(),
            pre_balance: 1e6,
            static_balance: 1e6,
            balance: 1e6 + p,
            margin: p * 0.1,
            available: 1e6 + p * 0.9,
            risk_ratio: 0.007,
            ..Account::default()
        }),
        EventKind::PositionUpdated => Event::PositionUpdated(Position {
            user_id: user,
            instrument_id: ins(n),
            volume_long_today: v,
            volume_long: v,
            pos_long_today: v,
            pos: v,
            pos_long: v,
            open_price_long: p,
            open_cost_long: p * v as f64 * 5.0,
            position_price_long: p,
            position_cost_long: p * v as f64 * 5.0,
            last_price: p + 10.0,
            float_profit_long: 50.0 * v as f64,
            float_profit: 50.0 * v as f64,
            margin_long: p * v as f64 * 0.5,
            margin: p * v as f64 * 0.5,
            ..Position::default()
        }),
        EventKind::Tick => Event::Tick(tick(n, p)),
        EventKind::BookSnapshot => Event::BookSnapshot(BookSnapshot {
            instrument_id: ins(n),
            datetime: ts(n),
            bids: (0..10)
                .map(|i| Level { price: p - 10.0 * f64::from(i), volume: v + i64::from(i) })
                .collect(),
            asks: (0..10)
                .map(|i| Level { price: p + 10.0 * f64::from(i + 1), volume: v + i64::from(i) })
                .collect(),
        }),
        EventKind::BookDelta => Event::BookDelta(BookDelta {
            instrument_id: ins(n),
            datetime: ts(n),
            changes: vec![
                LevelChange { side: Side::Bid, price: p, volume: v },
                LevelChange { side: Side::Ask, price: p + 10.0, volume: 0 },
            ],
        }),
        EventKind::UserRegistered => Event::UserRegistered(UserRegistered {
            user_id: format!("user{n}"),
            user_name: format!("Trader {n}"),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                .into(),
            phone: "13800000000".into(),
            email: format!("user{n}@example.com"),
            datetime: ts(n),
        }),
        EventKind::UserUpdated => Event::UserUpdated(UserUpdated {
            user_id: format!("user{n}"),
            frozen: n.is_multiple_of(2),
            datetime: ts(n),
        }),
        EventKind::AccountBound | EventKind::AccountUnbound => {
            let b =
                AccountBinding { user_id: format!("user{n}"), account_id: user, datetime: ts(n) };
            if kind == EventKind::AccountBound {
                Event::AccountBound(b)
            } else {
                Event::AccountUnbound(b)
            }
        }
        EventKind::Transfer => Event::Transfer(Transfer {
            user_id: user,
            kind: TransferKind::Deposit,
            currency: "CNY".into(),
            amount: 100_000.0,
            datetime: ts(n),
            error_id: 0,
            error_msg: String::new(),
        }),
        EventKind::Extension => Event::Extension(Extension { kind: 7, data: vec![0xAB; 32] }),
    }
}

fn tick(n: u64, p: f64) -> Tick {
    let n = n % 1_000_000_000;
    let v = (n % 50) as i64 + 1;
    Tick {
        instrument_id: ins(n),
        datetime: ts(n),
        last_price: p,
        average: p - 3.0,
        highest: p + 100.0,
        lowest: p - 100.0,
        open: p - 20.0,
        close: None,
        settlement: None,
        pre_close: p - 50.0,
        pre_settlement: p - 40.0,
        upper_limit: p * 1.08,
        lower_limit: p * 0.92,
        volume: 120_000 + n as i64,
        amount: p * 5.0 * 120_000.0,
        open_interest: 300_000,
        pre_open_interest: 299_000,
        bid_price1: p - 10.0,
        bid_volume1: v,
        ask_price1: p,
        ask_volume1: v + 1,
        bid_price2: p - 20.0,
        bid_volume2: v + 2,
        ask_price2: p + 10.0,
        ask_volume2: v + 3,
        bid_price3: p - 30.0,
        bid_volume3: v + 4,
        ask_price3: p + 20.0,
        ask_volume3: v + 5,
        bid_price4: p - 40.0,
        bid_volume4: v + 6,
        ask_price4: p + 30.0,
        ask_volume4: v + 7,
        bid_price5: p - 50.0,
        bid_volume5: v + 8,
        ask_price5: p + 40.0,
        ask_volume5: v + 9,
    }
}

/// The reference latest book of `id` from `events` (each with the order it was stored
/// in, an LSN or any number that grows with it): the newest snapshot in (time, order)
/// order, with every delta after it applied in that order; `None` with neither. Tests
/// compare a store's latest book with it.
pub fn book_in_store_order(events: &[(u64, Event)], id: &InstrumentId) -> Option<BookSnapshot> {
    let mut mine: Vec<(i64, u64, &Event)> = events
        .iter()
        .filter_map(|(n, e)| match e {
            Event::BookSnapshot(b) if b.instrument_id == *id => Some((b.datetime, *n, e)),
            Event::BookDelta(d) if d.instrument_id == *id => Some((d.datetime, *n, e)),
            _ => None,
        })
        .collect();
    mine.sort_by_key(|(t, n, _)| (*t, *n));
    let start = mine.iter().rposition(|(_, _, e)| matches!(e, Event::BookSnapshot(_)));
    let mut book = match start.map(|i| mine[i].2) {
        Some(Event::BookSnapshot(b)) => Some(b.clone()),
        _ => None,
    };
    for (_, _, e) in &mine[start.map_or(0, |i| i + 1)..] {
        if let Event::BookDelta(d) = e {
            book.get_or_insert_with(|| BookSnapshot::empty(id.clone(), d.datetime)).apply(d);
        }
    }
    book
}

/// Event `b` of a book feed for crash tests, as writers stamping their own times would
/// send it: instrument `id` gets every `stride`-th event of the feed (`b / stride` is its
/// round). Every `snapshot_every`-th event is a snapshot; the others are deltas, and
/// every fourth round's delta is stamped 1 to `max_back` rounds early (a late delta)
/// and adds a level no other delta touches, so a book that missed it stays wrong until
/// the next snapshot.
pub fn late_book_event(
    id: InstrumentId,
    b: u64,
    stride: u64,
    snapshot_every: u64,
    max_back: u64,
) -> Event {
    if b.is_multiple_of(snapshot_every) {
        let bids = vec![Level { price: 90.0, volume: b as i64 + 1 }];
        return Event::BookSnapshot(BookSnapshot {
            instrument_id: id,
            datetime: b as i64,
            bids,
            asks: Vec::new(),
        });
    }
    let round = b / stride;
    let (back, change) = if round % 4 == 3 {
        let level = LevelChange { side: Side::Bid, price: 1000.0 + round as f64, volume: 1 };
        (1 + (round / 4) % max_back.max(1), level)
    } else {
        (0, LevelChange { side: Side::Bid, price: (b % 7) as f64, volume: (b % 5) as i64 })
    };
    let datetime = b as i64 - (back * stride) as i64;
    Event::BookDelta(BookDelta { instrument_id: id, datetime, changes: vec![change] })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids of the order an order event is about: (account, order, instrument).
    fn order_ids(e: &Event) -> Option<(String, String, Option<InstrumentId>)> {
        Some(match e {
            Event::OrderRequested(o) => {
                (o.user_id.clone(), o.order_id.clone(), Some(o.instrument_id.clone()))
            }
            Event::OrderAccepted(o) => {
                (o.user_id.clone(), o.order_id.clone(), Some(o.instrument_id.clone()))
            }
            Event::CancelRequested(c) => (c.user_id.clone(), c.order_id.clone(), None),
            Event::OrderCancelled(c) => {
                (c.user_id.clone(), c.order_id.clone(), Some(c.instrument_id.clone()))
            }
            _ => return None,
        })
    }

    /// In the benchmark workload, acceptances and cancels are about orders requested
    /// earlier, with the request's account and instrument: almost every one of them
    /// finds its order (only the first few events of the stream have nothing before
    /// them to refer to).
    #[test]
    fn exchange_order_events_refer_to_earlier_requests() {
        let events: Vec<Event> = (0..20_000).map(|n| exchange_event(n, 0)).collect();
        let mut requested = std::collections::HashMap::new();
        let mut accepted = std::collections::HashSet::new();
        let (mut follow_ups, mut found) = (0, 0);
        for e in &events {
            let Some((user, order, ins)) = order_ids(e) else { continue };
            match e {
                Event::OrderRequested(_) => {
                    assert!(requested.insert(order.clone(), (user, ins)).is_none(), "{order}");
                    continue;
                }
                Event::OrderAccepted(_) => {
                    accepted.insert(order.clone());
                }
                _ => {}
            }
            follow_ups += 1;
            let Some((req_user, req_ins)) = requested.get(&order) else { continue };
            assert_eq!(&user, req_user, "{order}: another account than its request's");
            if let (Some(a), Some(b)) = (&ins, req_ins) {
                assert_eq!(a, b, "{order}: another instrument than its request's");
            }
            if !matches!(e, Event::OrderAccepted(_)) {
                assert!(accepted.contains(&order), "{order}: a cancel of an unaccepted order");
            }
            found += 1;
        }
        assert!(follow_ups > 2_000, "{follow_ups} acceptances and cancels");
        assert!(found + 5 >= follow_ups, "{found} of {follow_ups} found their order");
    }
}
