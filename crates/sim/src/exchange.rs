//! The exchange as a deterministic state machine: requests in, events out.
//!
//! [`Exchange::process`] takes one journaled request — an order, a cancel, a deposit or
//! withdrawal — and returns the events it causes, in the order they are to be journaled.
//! Nothing but the request and the state built by earlier requests decides the result:
//! times come from the request, ids from counters, and every map that is iterated is
//! ordered. Feeding the same requests to a fresh exchange therefore returns the same
//! events, which is how the runner (`crate::runner`) recovers after a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bourse_model::{
    Account, BookDelta, BookSnapshot, CancelRequested, Direction, Event, Extension, InstrumentId,
    Level, LevelChange, Offset, Order, OrderCancelled, OrderRejected, OrderRequested, OrderStatus,
    Position, PriceType, Side, Tick, TimeCondition, Trade, Transfer, TransferKind, VolumeCondition,
};

use serde::{Deserialize, Serialize};

use crate::config::{InstrumentSpec, SimConfig};

/// Why an order was refused. The code is the `error_id` of the `OrderRejected` event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The instrument is not configured.
    UnknownInstrument,
    /// The account has never received a deposit.
    UnknownAccount,
    /// Volume is not in `1..=max_order_volume`.
    Volume {
        /// The largest volume allowed.
        max: i64,
    },
    /// The limit price is not a multiple of the price tick.
    OffTick {
        /// The tick.
        tick: f64,
    },
    /// The limit price is outside the day's limits.
    OutsideLimits {
        /// Lower limit.
        lower: f64,
        /// Upper limit.
        upper: f64,
    },
    /// Not enough available funds for the margin and commission to freeze.
    InsufficientFunds {
        /// What the order needs.
        needed: f64,
        /// What the account has.
        available: f64,
    },
    /// Closing more than the closable position.
    InsufficientPosition {
        /// Lots that can be closed.
        closable: i64,
    },
    /// `CLOSETODAY` on an exchange without today/history positions.
    CloseTodayNotSupported,
    /// A price type, time condition and volume condition this exchange does not take.
    Unsupported(&'static str),
    /// The order arrived outside the instrument's trading sessions.
    OutsideSession,
}

impl RejectReason {
    /// The `error_id` carried by the rejection.
    pub fn code(&self) -> i32 {
        match self {
            RejectReason::UnknownInstrument => 1,
            RejectReason::UnknownAccount => 2,
            RejectReason::Volume { .. } => 3,
            RejectReason::OffTick { .. } => 4,
            RejectReason::OutsideLimits { .. } => 5,
            RejectReason::InsufficientFunds { .. } => 6,
            RejectReason::InsufficientPosition { .. } => 7,
            RejectReason::CloseTodayNotSupported => 8,
            RejectReason::Unsupported(_) => 9,
            RejectReason::OutsideSession => 10,
        }
    }

    /// The human-readable reason (the rejection's `last_msg`).
    pub fn message(&self) -> String {
        match self {
            RejectReason::UnknownInstrument => "unknown instrument".into(),
            RejectReason::UnknownAccount => "unknown account: deposit funds first".into(),
            RejectReason::Volume { max } => format!("volume must be between 1 and {max}"),
            RejectReason::OffTick { tick } => format!("price is not a multiple of the tick {tick}"),
            RejectReason::OutsideLimits { lower, upper } => {
                format!("price is outside the limits [{lower}, {upper}]")
            }
            RejectReason::InsufficientFunds { needed, available } => {
                format!("insufficient funds: needs {needed:.2}, available {available:.2}")
            }
            RejectReason::InsufficientPosition { closable } => {
                format!("insufficient position: {closable} lots can be closed")
            }
            RejectReason::CloseTodayNotSupported => {
                "CLOSETODAY is only for SHFE and INE instruments; use CLOSE".into()
            }
            RejectReason::Unsupported(what) => format!("unsupported order type: {what}"),
            RejectReason::OutsideSession => "outside the trading sessions".into(),
        }
    }
}

/// The `Extension` kind of a settlement request (see [`Settlement`]).
pub const SETTLEMENT_KIND: u16 = 0x5E71;

/// A daily settlement, journaled as `Event::Extension { kind: SETTLEMENT_KIND, data }`
/// with `data` this struct's JSON. It ends the trading day: live orders expire, every
/// position is marked at its instrument's settlement price, today's positions become
/// history, each account's balance becomes the next day's `pre_balance`, and each
/// instrument's settlement price becomes its `pre_settlement` (new price limits and
/// margin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    /// When the day ended (ns since the Unix epoch); the events' time.
    pub datetime: i64,
    /// Settlement prices by instrument (`EXCH.ins`); an instrument not listed settles at
    /// its last price, or at its previous settlement when it did not trade. Prices are
    /// rounded to the tick and kept inside the day's limits.
    #[serde(default)]
    pub prices: BTreeMap<String, f64>,
}

impl Settlement {
    /// The journal event carrying this settlement.
    pub fn to_event(&self) -> Event {
        Event::Extension(Extension {
            kind: SETTLEMENT_KIND,
            data: serde_json::to_vec(self).unwrap_or_default(),
        })
    }

    /// The settlement an event carries, if it is one (and parses).
    pub fn from_event(event: &Event) -> Option<Settlement> {
        match event {
            Event::Extension(e) if e.kind == SETTLEMENT_KIND => {
                serde_json::from_slice(&e.data).ok()
            }
            _ => None,
        }
    }
}

/// (account, order id).
type OrderKey = (String, String);

/// A live order and what it holds frozen.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Live {
    order: Order,
    /// Limit in ticks (the limit price for LIMIT, the price limit for market orders).
    limit: i64,
    /// Margin frozen per unfilled lot (opens).
    margin_per_lot: f64,
    /// Commission frozen per unfilled lot (opens).
    commission_per_lot: f64,
    /// Frozen history lots still to close (closes).
    close_his: i64,
    /// Frozen today lots still to close (closes).
    close_today: i64,
    /// Fills so far (trade ids are `order_id|n`).
    fills: u32,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PriceLevel {
    queue: VecDeque<OrderKey>,
    total: i64,
}

/// One instrument's market: its book and its day statistics.
#[derive(Debug, Serialize, Deserialize)]
struct Market {
    spec: InstrumentSpec,
    /// Bids by price in ticks; the best is the last.
    bids: BTreeMap<i64, PriceLevel>,
    /// Asks by price in ticks; the best is the first.
    asks: BTreeMap<i64, PriceLevel>,
    last: Option<i64>,
    open: Option<i64>,
    high: Option<i64>,
    low: Option<i64>,
    volume: i64,
    amount: f64,
    open_interest: i64,
    pre_open_interest: i64,
    deltas_since_snapshot: u32,
    /// Accounts with a position here, marked to market when the price moves.
    holders: BTreeSet<String>,
}

/// One account: its funds and positions.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountState {
    account: Account,
    positions: BTreeMap<InstrumentId, Position>,
    /// Live orders (frozen funds are reset to exactly 0 when none is left).
    alive: u32,
    /// Sequence of the account's orders and trades.
    seqno: i64,
}

/// What one request changed, turned into trailing events when it is done.
#[derive(Debug, Default)]
struct Effects {
    events: Vec<Event>,
    accounts: BTreeSet<String>,
    positions: BTreeSet<(String, InstrumentId)>,
    /// (0 bid / 1 ask, price in ticks) levels whose volume changed.
    levels: BTreeSet<(u8, i64)>,
    market: Option<InstrumentId>,
    traded: bool,
}

/// A price level as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BookLevel {
    /// Price.
    pub price: f64,
    /// Lots resting at that price.
    pub volume: i64,
    /// Orders resting at that price.
    pub orders: usize,
}

/// The reference exchange. See the module documentation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Exchange {
    cfg: SimConfig,
    markets: BTreeMap<InstrumentId, Market>,
    accounts: BTreeMap<String, AccountState>,
    live: HashMap<OrderKey, Live>,
    /// Every order id seen per account (a repeated id is ignored, as the store keeps
    /// the first), while `track_ids` holds. It grows with every order, so a caller
    /// that can ask the store instead turns it off ([`Exchange::forget_order_ids`]).
    seen: HashSet<OrderKey>,
    /// Whether `seen` is kept: true unless [`Exchange::forget_order_ids`] was called.
    /// Not in snapshots (their format stays as it was): a restored exchange tracks ids
    /// until its owner says otherwise again.
    #[serde(skip, default = "tracking")]
    track_ids: bool,
    orders: u64,
    trades: u64,
}

fn tracking() -> bool {
    true
}

const CURRENCY: &str = "CNY";
const EPS: f64 = 1e-6;

impl Exchange {
    /// An exchange with no accounts and empty books.
    pub fn new(cfg: SimConfig) -> Exchange {
        let markets = cfg
            .instruments
            .iter()
            .map(|spec| {
                let m = Market {
                    spec: spec.clone(),
                    bids: BTreeMap::new(),
                    asks: BTreeMap::new(),
                    last: None,
                    open: None,
                    high: None,
                    low: None,
                    volume: 0,
                    amount: 0.0,
                    open_interest: 0,
                    pre_open_interest: 0,
                    deltas_since_snapshot: 0,
                    holders: BTreeSet::new(),
                };
                (spec.id.clone(), m)
            })
            .collect();
        Exchange {
            cfg,
            markets,
            accounts: BTreeMap::new(),
            live: HashMap::new(),
            seen: HashSet::new(),
            track_ids: true,
            orders: 0,
            trades: 0,
        }
    }

    /// Whether the exchange acts on this event: orders, cancels, and successful
    /// transfers. Everything else (its own output, market data from elsewhere) is not
    /// a request and [`Exchange::process`] returns nothing for it.
    pub fn is_request(event: &Event) -> bool {
        match event {
            Event::OrderRequested(_) | Event::CancelRequested(_) => true,
            Event::Transfer(t) => t.error_id == 0,
            Event::Extension(e) => e.kind == SETTLEMENT_KIND,
            _ => false,
        }
    }

    /// Processes one request and returns the events it causes. A repeated order id, a
    /// cancel of an order that is not live, and anything that is not a request cause
    /// nothing.
    pub fn process(&mut self, event: &Event) -> Vec<Event> {
        let mut fx = Effects::default();
        match event {
            Event::OrderRequested(r) => self.order(r, &mut fx),
            Event::CancelRequested(c) => self.cancel(c, &mut fx),
            Event::Transfer(t) if t.error_id == 0 => self.transfer(t, &mut fx),
            Event::Extension(_) => match Settlement::from_event(event) {
                // A settlement that does not parse changes nothing (the server checks
                // it before journaling).
                Some(st) => return self.settle(&st),
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        }
        let time = event.datetime().unwrap_or(0);
        self.finish(fx, time)
    }

    /// Stops remembering order ids, and forgets those remembered. The caller takes over
    /// the rule that a repeated order id (per account) changes nothing: it must not
    /// pass such a request to [`Exchange::process`]. Without this the exchange keeps
    /// every id it was ever sent, which grows without bound in a long-running server;
    /// the runner ([`crate::runner::SimRunner`]) calls it and asks the store instead.
    pub fn forget_order_ids(&mut self) {
        self.track_ids = false;
        self.seen = HashSet::new();
    }

    /// How many order ids the exchange remembers (0 after
    /// [`Exchange::forget_order_ids`]).
    pub fn remembered_order_ids(&self) -> usize {
        self.seen.len()
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Every instrument's rules as they stand today (`pre_settlement` moves at each
    /// settlement), in id order.
    pub fn instruments(&self) -> impl Iterator<Item = &InstrumentSpec> {
        self.markets.values().map(|m| &m.spec)
    }

    /// The rules of one instrument.
    pub fn spec(&self, id: &InstrumentId) -> Option<&InstrumentSpec> {
        self.markets.get(id).map(|m| &m.spec)
    }

    /// An account's funds.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id).map(|a| &a.account)
    }

    /// Every account id, in order.
    pub fn account_ids(&self) -> impl Iterator<Item = &str> {
        self.accounts.keys().map(String::as_str)
    }

    /// An account's positions.
    pub fn positions(&self, id: &str) -> impl Iterator<Item = &Position> {
        self.accounts.get(id).into_iter().flat_map(|a| a.positions.values())
    }

    /// A live order.
    pub fn live_order(&self, account: &str, order_id: &str) -> Option<&Order> {
        self.live.get(&(account.to_string(), order_id.to_string())).map(|l| &l.order)
    }

    /// Orders accepted and matches (each a trade per side, sharing its
    /// `exchange_trade_id`) since the exchange started.
    pub fn counts(&self) -> (u64, u64) {
        (self.orders, self.trades)
    }

    /// Trading accounts.
    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    /// How many orders are live.
    pub fn live_orders(&self) -> usize {
        self.live.len()
    }

    /// Last traded price, if any trade happened.
    pub fn last_price(&self, id: &InstrumentId) -> Option<f64> {
        let m = self.markets.get(id)?;
        m.last.map(|t| m.spec.price_of(t))
    }

    /// Open interest (long lots, which equal short lots) of an instrument.
    pub fn open_interest(&self, id: &InstrumentId) -> i64 {
        self.markets.get(id).map_or(0, |m| m.open_interest)
    }

    /// Best `depth` levels of each side: (bids best first, asks best first).
    pub fn depth(&self, id: &InstrumentId, depth: usize) -> (Vec<BookLevel>, Vec<BookLevel>) {
        let Some(m) = self.markets.get(id) else { return (Vec::new(), Vec::new()) };
        let view = |(t, l): (&i64, &PriceLevel)| BookLevel {
            price: m.spec.price_of(*t),
            volume: l.total,
            orders: l.queue.len(),
        };
        (
            m.bids.iter().rev().take(depth).map(view).collect(),
            m.asks.iter().take(depth).map(view).collect(),
        )
    }

    // ----- requests ---------------------------------------------------------------

    fn order(&mut self, r: &OrderRequested, fx: &mut Effects) {
        let key = (r.user_id.clone(), r.order_id.clone());
        if self.track_ids && !self.seen.insert(key.clone()) {
            return;
        }
        let (margin_per_lot, commission_per_lot, close_his, close_today, limit) =
            match self.check(r) {
                Ok(v) => v,
                Err(reason) => {
                    fx.events.push(Event::OrderRejected(OrderRejected {
                        user_id: r.user_id.clone(),
                        order_id: r.order_id.clone(),
                        instrument_id: r.instrument_id.clone(),
                        error_id: reason.code(),
                        last_msg: reason.message(),
                        datetime: r.datetime,
                    }));
                    return;
                }
            };
        self.orders += 1;
        let Some(acc) = self.accounts.get_mut(&r.user_id) else { return };
        acc.seqno += 1;
        acc.alive += 1;
        let order = Order {
            seqno: acc.seqno,
            exchange_order_id: self.orders.to_string(),
            frozen_margin: margin_per_lot * r.volume as f64,
            last_msg: "accepted".into(),
            ..r.to_order()
        };
        if r.offset == Offset::Open {
            acc.account.frozen_margin += margin_per_lot * r.volume as f64;
            acc.account.frozen_commission += commission_per_lot * r.volume as f64;
        } else if let Some(p) = acc.positions.get_mut(&r.instrument_id) {
            let (his, today) = match r.direction {
                Direction::Sell => (&mut p.volume_long_frozen_his, &mut p.volume_long_frozen_today),
                Direction::Buy => {
                    (&mut p.volume_short_frozen_his, &mut p.volume_short_frozen_today)
                }
            };
            *his += close_his;
            *today += close_today;
            fx.positions.insert((r.user_id.clone(), r.instrument_id.clone()));
        }
        fx.accounts.insert(r.user_id.clone());
        fx.events.push(Event::OrderAccepted(order.clone()));
        let live = Live {
            order,
            limit,
            margin_per_lot,
            commission_per_lot,
            close_his,
            close_today,
            fills: 0,
        };
        self.live.insert(key.clone(), live);
        fx.market = Some(r.instrument_id.clone());
        self.match_order(&key, fx);
    }

    /// Validates an order; returns (margin per lot, commission per lot, history lots
    /// and today lots to freeze for a close, limit in ticks).
    fn check(&self, r: &OrderRequested) -> Result<(f64, f64, i64, i64, i64), RejectReason> {
        let m = self.markets.get(&r.instrument_id).ok_or(RejectReason::UnknownInstrument)?;
        let spec = &m.spec;
        let acc = self.accounts.get(&r.user_id).ok_or(RejectReason::UnknownAccount)?;
        if r.volume < 1 || r.volume > spec.max_order_volume {
            return Err(RejectReason::Volume { max: spec.max_order_volume });
        }
        match (r.price_type, r.time_condition, r.volume_condition) {
            (PriceType::Limit, TimeCondition::Gfd, VolumeCondition::Any) => {}
            (PriceType::Limit | PriceType::Any, TimeCondition::Ioc, VolumeCondition::Any)
            | (PriceType::Limit | PriceType::Any, TimeCondition::Ioc, VolumeCondition::All) => {}
            (PriceType::Best | PriceType::FiveLevel, _, _) => {
                return Err(RejectReason::Unsupported("BEST and FIVELEVEL prices"))
            }
            (PriceType::Any, _, _) => {
                return Err(RejectReason::Unsupported("a market order must be IOC"))
            }
            (_, _, VolumeCondition::Min) => {
                return Err(RejectReason::Unsupported("volume condition MIN"))
            }
            (_, TimeCondition::Gfd, VolumeCondition::All) => {
                return Err(RejectReason::Unsupported("volume condition ALL needs IOC"))
            }
            _ => return Err(RejectReason::Unsupported("time conditions other than GFD and IOC")),
        }
        if self.cfg.enforce_sessions {
            // Beijing time is UTC+8.
            let secs = (r.datetime.div_euclid(1_000_000_000) + 8 * 3600).rem_euclid(86_400);
            if !spec.in_session(secs as u32) {
                return Err(RejectReason::OutsideSession);
            }
        }
        let (lower, upper) = (spec.lower_ticks(), spec.upper_ticks());
        let limit = if r.price_type == PriceType::Limit {
            let t = spec
                .ticks_of(r.limit_price)
                .ok_or(RejectReason::OffTick { tick: spec.price_tick })?;
            if t < lower || t > upper {
                return Err(RejectReason::OutsideLimits {
                    lower: spec.price_of(lower),
                    upper: spec.price_of(upper),
                });
            }
            t
        } else if r.direction == Direction::Buy {
            upper
        } else {
            lower
        };
        match r.offset {
            Offset::Open => {
                let (mpl, cpl) = (spec.margin_per_lot(), spec.commission);
                let needed = (mpl + cpl) * r.volume as f64;
                if needed > acc.account.available + EPS {
                    return Err(RejectReason::InsufficientFunds {
                        needed,
                        available: acc.account.available,
                    });
                }
                Ok((mpl, cpl, 0, 0, limit))
            }
            offset => {
                if offset == Offset::CloseToday && !spec.splits_today() {
                    return Err(RejectReason::CloseTodayNotSupported);
                }
                let (his, today) = acc
                    .positions
                    .get(&r.instrument_id)
                    .map_or((0, 0), |p| closable(p, r.direction));
                let (his_lots, today_lots, closable) = if spec.splits_today() {
                    if offset == Offset::CloseToday {
                        (0, r.volume, today)
                    } else {
                        (r.volume, 0, his)
                    }
                } else {
                    let from_his = r.volume.min(his);
                    (from_his, r.volume - from_his, his + today)
                };
                if r.volume > closable {
                    return Err(RejectReason::InsufficientPosition { closable });
                }
                Ok((0.0, 0.0, his_lots, today_lots, limit))
            }
        }
    }

    fn cancel(&mut self, c: &CancelRequested, fx: &mut Effects) {
        let key = (c.user_id.clone(), c.order_id.clone());
        let Some(live) = self.live.get(&key) else { return };
        let ins = live.order.instrument_id.clone();
        let (limit, side) = (live.limit, live.order.direction);
        if let Some(m) = self.markets.get_mut(&ins) {
            let book = if side == Direction::Buy { &mut m.bids } else { &mut m.asks };
            if let Some(level) = book.get_mut(&limit) {
                if let Some(pos) = level.queue.iter().position(|k| *k == key) {
                    level.queue.remove(pos);
                    level.total -= live.order.volume_left;
                    fx.levels.insert((side_code(side), limit));
                }
                if level.queue.is_empty() {
                    book.remove(&limit);
                }
            }
        }
        fx.market = Some(ins);
        self.end_order(&key, "cancelled", c.datetime, fx);
    }

    fn transfer(&mut self, t: &Transfer, fx: &mut Effects) {
        if !(t.amount > 0.0 && t.amount.is_finite()) {
            return;
        }
        let fail = |msg: &str| {
            Event::Transfer(Transfer { error_id: 1, error_msg: msg.to_string(), ..t.clone() })
        };
        match t.kind {
            TransferKind::Deposit => {
                let acc = self.accounts.entry(t.user_id.clone()).or_insert_with(|| AccountState {
                    account: Account {
                        user_id: t.user_id.clone(),
                        currency: CURRENCY.into(),
                        ..Account::default()
                    },
                    positions: BTreeMap::new(),
                    alive: 0,
                    seqno: 0,
                });
                acc.account.deposit += t.amount;
                fx.accounts.insert(t.user_id.clone());
            }
            TransferKind::Withdraw => match self.accounts.get_mut(&t.user_id) {
                None => fx.events.push(fail("unknown account")),
                Some(acc) if t.amount > acc.account.available + EPS => {
                    fx.events.push(fail("insufficient available funds"))
                }
                Some(acc) => {
                    acc.account.withdraw += t.amount;
                    fx.accounts.insert(t.user_id.clone());
                }
            },
        }
    }

    /// Ends the trading day; see [`Settlement`].
    fn settle(&mut self, st: &Settlement) -> Vec<Event> {
        let time = st.datetime;
        let mut fx = Effects::default();
        // Day orders expire, in a fixed order.
        let mut live: Vec<OrderKey> = self.live.keys().cloned().collect();
        live.sort();
        for key in &live {
            let Some(l) = self.live.get(key) else { continue };
            let (ins, limit, dir, left) =
                (l.order.instrument_id.clone(), l.limit, l.order.direction, l.order.volume_left);
            if let Some(m) = self.markets.get_mut(&ins) {
                let book = if dir == Direction::Buy { &mut m.bids } else { &mut m.asks };
                if let Some(level) = book.get_mut(&limit) {
                    level.queue.retain(|k| k != key);
                    level.total -= left;
                    if level.queue.is_empty() {
                        book.remove(&limit);
                    }
                }
            }
            self.end_order(key, "expired at the daily settlement", time, &mut fx);
        }
        // New day for every instrument.
        for (id, m) in &mut self.markets {
            let spec = &m.spec;
            let (lower, upper) = (spec.lower_ticks(), spec.upper_ticks());
            let given = st
                .prices
                .get(id.as_str())
                .and_then(|p| p.is_finite().then(|| (p / spec.price_tick).round() as i64));
            let pre = spec.ticks_of(spec.pre_settlement).unwrap_or(lower);
            let settle = given.or(m.last).unwrap_or(pre).clamp(lower, upper);
            m.spec.pre_settlement = m.spec.price_of(settle);
            m.last = None;
            m.open = None;
            m.high = None;
            m.low = None;
            m.volume = 0;
            m.amount = 0.0;
            m.pre_open_interest = m.open_interest;
            m.deltas_since_snapshot = 0;
        }
        // Every position at its settlement price; the day's result (close profit,
        // commission, position profit) goes into the balance, which becomes tomorrow's
        // pre_balance; then today's positions become history at the settlement price.
        for acc in self.accounts.values_mut() {
            for (id, p) in &mut acc.positions {
                if let Some(m) = self.markets.get(id) {
                    refresh_position(p, &m.spec, m.spec.pre_settlement);
                }
            }
            refresh_account(acc);
            let a = &mut acc.account;
            a.pre_balance = a.balance;
            a.deposit = 0.0;
            a.withdraw = 0.0;
            a.close_profit = 0.0;
            a.commission = 0.0;
            for (id, p) in &mut acc.positions {
                let Some(m) = self.markets.get(id) else { continue };
                let price = m.spec.pre_settlement;
                let mult = m.spec.volume_multiple as f64;
                p.volume_long_his += p.volume_long_today;
                p.volume_long_today = 0;
                p.volume_short_his += p.volume_short_today;
                p.volume_short_today = 0;
                p.position_cost_long = price * (p.volume_long_his as f64) * mult;
                p.position_cost_short = price * (p.volume_short_his as f64) * mult;
                refresh_position(p, &m.spec, price);
            }
            refresh_account(acc);
        }
        let mut out = fx.events;
        for acc in self.accounts.values() {
            out.extend(acc.positions.values().cloned().map(Event::PositionUpdated));
        }
        out.extend(self.accounts.values().map(|a| Event::AccountUpdated(a.account.clone())));
        let ids: Vec<InstrumentId> = self.markets.keys().cloned().collect();
        for id in ids {
            self.market_events(&id, &BTreeSet::from([(0, 0)]), time, &mut out);
        }
        out
    }

    // ----- matching ---------------------------------------------------------------

    /// Matches the live order `key` against the book, then rests or ends what is left.
    fn match_order(&mut self, key: &OrderKey, fx: &mut Effects) {
        let Some(taker) = self.live.get(key) else { return };
        let (ins, dir, limit) =
            (taker.order.instrument_id.clone(), taker.order.direction, taker.limit);
        let (tc, vc, time) = (
            taker.order.time_condition,
            taker.order.volume_condition,
            taker.order.insert_date_time,
        );
        let Some(m) = self.markets.get(&ins) else { return };
        let crosses = |p: i64| if dir == Direction::Buy { p <= limit } else { p >= limit };
        if vc == VolumeCondition::All {
            let book = if dir == Direction::Buy { &m.asks } else { &m.bids };
            let mut avail = 0;
            let levels: Box<dyn Iterator<Item = (&i64, &PriceLevel)>> = if dir == Direction::Buy {
                Box::new(book.iter())
            } else {
                Box::new(book.iter().rev())
            };
            for (p, l) in levels {
                if !crosses(*p) {
                    break;
                }
                avail += l.total;
            }
            if avail < taker.order.volume_left {
                self.end_order(key, "not enough volume to fill the whole order (FOK)", time, fx);
                return;
            }
        }
        loop {
            let left = self.live.get(key).map_or(0, |l| l.order.volume_left);
            if left == 0 {
                break;
            }
            let Some(m) = self.markets.get_mut(&ins) else { return };
            let book = if dir == Direction::Buy { &mut m.asks } else { &mut m.bids };
            let best =
                if dir == Direction::Buy { book.keys().next() } else { book.keys().next_back() };
            let Some(&price) = best else { break };
            if !crosses(price) {
                break;
            }
            let Some(level) = book.get_mut(&price) else { break };
            let Some(maker_key) = level.queue.front().cloned() else {
                book.remove(&price);
                continue;
            };
            let maker_left = self.live.get(&maker_key).map_or(0, |l| l.order.volume_left);
            let volume = left.min(maker_left);
            level.total -= volume;
            if volume == maker_left {
                level.queue.pop_front();
            }
            if level.queue.is_empty() {
                book.remove(&price);
            }
            fx.levels.insert((side_code(opposite(dir)), price));
            self.trades += 1;
            let maker_opens = self.fill(&maker_key, &ins, price, volume, time, fx);
            let taker_opens = self.fill(key, &ins, price, volume, time, fx);
            self.record_match(&ins, price, volume, [maker_opens, taker_opens]);
            if let Some(maker) = self.live.get(&maker_key) {
                fx.events.push(Event::OrderUpdated(maker.order.clone()));
            }
            if maker_left == volume {
                self.live.remove(&maker_key);
                self.order_gone(&maker_key.0);
            }
        }
        let Some(taker) = self.live.get(key) else { return };
        let left = taker.order.volume_left;
        if left == 0 {
            let order = taker.order.clone();
            fx.events.push(Event::OrderUpdated(order));
            self.live.remove(key);
            self.order_gone(&key.0);
        } else if tc == TimeCondition::Ioc {
            if taker.fills > 0 {
                fx.events.push(Event::OrderUpdated(taker.order.clone()));
            }
            self.end_order(key, "IOC: the unfilled part is cancelled", time, fx);
        } else {
            if taker.fills > 0 {
                fx.events.push(Event::OrderUpdated(taker.order.clone()));
            }
            if let Some(m) = self.markets.get_mut(&ins) {
                let book = if dir == Direction::Buy { &mut m.bids } else { &mut m.asks };
                let level = book.entry(limit).or_default();
                level.queue.push_back(key.clone());
                level.total += left;
                fx.levels.insert((side_code(dir), limit));
            }
        }
    }

    /// One side of a fill: the order, the account, the position and the trade event.
    /// Returns whether the order opens.
    fn fill(
        &mut self,
        key: &OrderKey,
        ins: &InstrumentId,
        price_ticks: i64,
        volume: i64,
        time: i64,
        fx: &mut Effects,
    ) -> bool {
        let Some(m) = self.markets.get_mut(ins) else { return false };
        let Some(live) = self.live.get_mut(key) else { return false };
        let Some(acc) = self.accounts.get_mut(&key.0) else { return false };
        let spec = &m.spec;
        let mult = spec.volume_multiple as f64;
        let price = spec.price_of(price_ticks);
        let v = volume as f64;
        let value = price * v * mult;
        let commission = spec.commission * v;
        live.fills += 1;
        live.order.volume_left -= volume;
        if live.order.volume_left == 0 {
            live.order.status = OrderStatus::Finished;
            live.order.last_msg = "filled".into();
        } else {
            live.order.last_msg = "partly filled".into();
        }
        live.order.frozen_margin = live.margin_per_lot * live.order.volume_left as f64;
        acc.account.commission += commission;
        let opening = live.order.offset == Offset::Open;
        let pos = acc.positions.entry(ins.clone()).or_insert_with(|| Position {
            user_id: key.0.clone(),
            instrument_id: ins.clone(),
            ..Position::default()
        });
        if opening {
            acc.account.frozen_margin -= live.margin_per_lot * v;
            acc.account.frozen_commission -= live.commission_per_lot * v;
            match live.order.direction {
                Direction::Buy => {
                    pos.volume_long_today += volume;
                    pos.open_cost_long += value;
                    pos.position_cost_long += value;
                }
                Direction::Sell => {
                    pos.volume_short_today += volume;
                    pos.open_cost_short += value;
                    pos.position_cost_short += value;
                }
            }
        } else {
            let from_his = volume.min(live.close_his);
            let from_today = volume - from_his;
            live.close_his -= from_his;
            live.close_today -= from_today;
            let long = live.order.direction == Direction::Sell;
            let (his, today, fhis, ftoday, open_cost, pos_cost) = if long {
                (
                    &mut pos.volume_long_his,
                    &mut pos.volume_long_today,
                    &mut pos.volume_long_frozen_his,
                    &mut pos.volume_long_frozen_today,
                    &mut pos.open_cost_long,
                    &mut pos.position_cost_long,
                )
            } else {
                (
                    &mut pos.volume_short_his,
                    &mut pos.volume_short_today,
                    &mut pos.volume_short_frozen_his,
                    &mut pos.volume_short_frozen_today,
                    &mut pos.open_cost_short,
                    &mut pos.position_cost_short,
                )
            };
            let held = (*his + *today) as f64;
            let open_share = *open_cost * v / held;
            let pos_share = *pos_cost * v / held;
            *his -= from_his;
            *today -= from_today;
            *fhis -= from_his;
            *ftoday -= from_today;
            if *his + *today == 0 {
                *open_cost = 0.0;
                *pos_cost = 0.0;
            } else {
                *open_cost -= open_share;
                *pos_cost -= pos_share;
            }
            acc.account.close_profit += if long { value - pos_share } else { pos_share - value };
        }
        let holds = pos.volume_long_today
            + pos.volume_long_his
            + pos.volume_short_today
            + pos.volume_short_his
            > 0;
        if holds {
            m.holders.insert(key.0.clone());
        } else {
            m.holders.remove(&key.0);
        }
        acc.seqno += 1;
        fx.events.push(Event::TradeExecuted(Trade {
            seqno: acc.seqno,
            user_id: key.0.clone(),
            trade_id: format!("{}|{}", key.1, live.fills),
            order_id: key.1.clone(),
            instrument_id: ins.clone(),
            exchange_trade_id: self.trades.to_string(),
            direction: live.order.direction,
            offset: live.order.offset,
            volume,
            price,
            trade_date_time: time,
            commission,
        }));
        fx.accounts.insert(key.0.clone());
        fx.positions.insert((key.0.clone(), ins.clone()));
        fx.traded = true;
        opening
    }

    /// Day statistics of one match (both sides filled): volume, turnover, open
    /// interest (up when both open, down when both close) and prices.
    fn record_match(&mut self, ins: &InstrumentId, price: i64, volume: i64, opens: [bool; 2]) {
        let Some(m) = self.markets.get_mut(ins) else { return };
        m.volume += volume;
        m.amount += m.spec.price_of(price) * volume as f64 * m.spec.volume_multiple as f64;
        m.open_interest += match opens {
            [true, true] => volume,
            [false, false] => -volume,
            _ => 0,
        };
        m.last = Some(price);
        m.open.get_or_insert(price);
        m.high = Some(m.high.map_or(price, |h| h.max(price)));
        m.low = Some(m.low.map_or(price, |l| l.min(price)));
    }

    /// Ends a live order with volume left: unfreezes, removes it, emits the cancel.
    fn end_order(&mut self, key: &OrderKey, why: &str, time: i64, fx: &mut Effects) {
        let Some(live) = self.live.remove(key) else { return };
        let left = live.order.volume_left;
        if let Some(acc) = self.accounts.get_mut(&key.0) {
            acc.account.frozen_margin -= live.margin_per_lot * left as f64;
            acc.account.frozen_commission -= live.commission_per_lot * left as f64;
            if let Some(p) = acc.positions.get_mut(&live.order.instrument_id) {
                match live.order.direction {
                    Direction::Sell => {
                        p.volume_long_frozen_his -= live.close_his;
                        p.volume_long_frozen_today -= live.close_today;
                    }
                    Direction::Buy => {
                        p.volume_short_frozen_his -= live.close_his;
                        p.volume_short_frozen_today -= live.close_today;
                    }
                }
                if live.close_his + live.close_today > 0 {
                    fx.positions.insert((key.0.clone(), live.order.instrument_id.clone()));
                }
            }
            fx.accounts.insert(key.0.clone());
        }
        self.order_gone(&key.0);
        fx.events.push(Event::OrderCancelled(OrderCancelled {
            user_id: key.0.clone(),
            order_id: key.1.clone(),
            instrument_id: live.order.instrument_id.clone(),
            volume_left: left,
            last_msg: why.to_string(),
            datetime: time,
        }));
    }

    fn order_gone(&mut self, account: &str) {
        if let Some(acc) = self.accounts.get_mut(account) {
            acc.alive = acc.alive.saturating_sub(1);
        }
    }

    // ----- trailing events --------------------------------------------------------

    /// Marks positions to market, refreshes accounts, and appends positions, accounts,
    /// the tick and the book change to the request's events.
    fn finish(&mut self, mut fx: Effects, time: i64) -> Vec<Event> {
        if fx.traded {
            if let Some(ins) = &fx.market {
                if let Some(m) = self.markets.get(ins) {
                    for holder in &m.holders {
                        fx.positions.insert((holder.clone(), ins.clone()));
                        fx.accounts.insert(holder.clone());
                    }
                }
            }
        }
        for (account, ins) in &fx.positions {
            let Some(m) = self.markets.get(ins) else { continue };
            let last = m.last.map_or(m.spec.pre_settlement, |t| m.spec.price_of(t));
            if let Some(p) = self.accounts.get_mut(account).and_then(|a| a.positions.get_mut(ins)) {
                refresh_position(p, &m.spec, last);
                fx.events.push(Event::PositionUpdated(p.clone()));
            }
        }
        for account in &fx.accounts {
            if let Some(a) = self.accounts.get_mut(account) {
                refresh_account(a);
                fx.events.push(Event::AccountUpdated(a.account.clone()));
            }
        }
        if let Some(ins) = fx.market.clone() {
            if fx.traded || !fx.levels.is_empty() {
                self.market_events(&ins, &fx.levels, time, &mut fx.events);
            }
        }
        fx.events
    }

    fn market_events(
        &mut self,
        ins: &InstrumentId,
        levels: &BTreeSet<(u8, i64)>,
        time: i64,
        out: &mut Vec<Event>,
    ) {
        let Some(m) = self.markets.get_mut(ins) else { return };
        let spec = &m.spec;
        let px = |t: Option<i64>| t.map_or(0.0, |t| spec.price_of(t));
        let bid = |i: usize| {
            m.bids.iter().rev().nth(i).map_or((0.0, 0), |(t, l)| (spec.price_of(*t), l.total))
        };
        let ask =
            |i: usize| m.asks.iter().nth(i).map_or((0.0, 0), |(t, l)| (spec.price_of(*t), l.total));
        let mult = spec.volume_multiple as f64;
        let (b1, b2, b3, b4, b5) = (bid(0), bid(1), bid(2), bid(3), bid(4));
        let (a1, a2, a3, a4, a5) = (ask(0), ask(1), ask(2), ask(3), ask(4));
        out.push(Event::Tick(Tick {
            instrument_id: ins.clone(),
            datetime: time,
            last_price: m.last.map_or(spec.pre_settlement, |t| spec.price_of(t)),
            average: if m.volume > 0 { m.amount / (m.volume as f64 * mult) } else { 0.0 },
            highest: px(m.high),
            lowest: px(m.low),
            open: px(m.open),
            close: None,
            settlement: None,
            pre_close: spec.pre_settlement,
            pre_settlement: spec.pre_settlement,
            upper_limit: spec.price_of(spec.upper_ticks()),
            lower_limit: spec.price_of(spec.lower_ticks()),
            volume: m.volume,
            amount: m.amount,
            open_interest: m.open_interest,
            pre_open_interest: m.pre_open_interest,
            bid_price1: b1.0,
            bid_volume1: b1.1,
            ask_price1: a1.0,
            ask_volume1: a1.1,
            bid_price2: b2.0,
            bid_volume2: b2.1,
            ask_price2: a2.0,
            ask_volume2: a2.1,
            bid_price3: b3.0,
            bid_volume3: b3.1,
            ask_price3: a3.0,
            ask_volume3: a3.1,
            bid_price4: b4.0,
            bid_volume4: b4.1,
            ask_price4: a4.0,
            ask_volume4: a4.1,
            bid_price5: b5.0,
            bid_volume5: b5.1,
            ask_price5: a5.0,
            ask_volume5: a5.1,
        }));
        if levels.is_empty() {
            return;
        }
        if m.deltas_since_snapshot == 0 || m.deltas_since_snapshot >= self.cfg.book_snapshot_every {
            let n = self.cfg.book_snapshot_levels;
            let lv =
                |(t, l): (&i64, &PriceLevel)| Level { price: spec.price_of(*t), volume: l.total };
            out.push(Event::BookSnapshot(BookSnapshot {
                instrument_id: ins.clone(),
                datetime: time,
                bids: m.bids.iter().rev().take(n).map(lv).collect(),
                asks: m.asks.iter().take(n).map(lv).collect(),
            }));
            m.deltas_since_snapshot = 1;
            return;
        }
        let changes = levels
            .iter()
            .map(|&(side, t)| {
                let book = if side == 0 { &m.bids } else { &m.asks };
                LevelChange {
                    side: if side == 0 { Side::Bid } else { Side::Ask },
                    price: spec.price_of(t),
                    volume: book.get(&t).map_or(0, |l| l.total),
                }
            })
            .collect();
        out.push(Event::BookDelta(BookDelta {
            instrument_id: ins.clone(),
            datetime: time,
            changes,
        }));
        m.deltas_since_snapshot += 1;
    }
}

/// Lots an order in `direction` can close, (history, today): a sell closes longs, a buy
/// closes shorts, less what live closing orders already hold frozen.
pub fn closable(p: &Position, direction: Direction) -> (i64, i64) {
    match direction {
        Direction::Sell => (
            p.volume_long_his - p.volume_long_frozen_his,
            p.volume_long_today - p.volume_long_frozen_today,
        ),
        Direction::Buy => (
            p.volume_short_his - p.volume_short_frozen_his,
            p.volume_short_today - p.volume_short_frozen_today,
        ),
    }
}

fn side_code(d: Direction) -> u8 {
    match d {
        Direction::Buy => 0,
        Direction::Sell => 1,
    }
}

fn opposite(d: Direction) -> Direction {
    match d {
        Direction::Buy => Direction::Sell,
        Direction::Sell => Direction::Buy,
    }
}

/// Recomputes a position's derived fields at `last`.
fn refresh_position(p: &mut Position, spec: &InstrumentSpec, last: f64) {
    let mult = spec.volume_multiple as f64;
    p.volume_long = p.volume_long_today + p.volume_long_his;
    p.volume_short = p.volume_short_today + p.volume_short_his;
    p.volume_long_frozen = p.volume_long_frozen_today + p.volume_long_frozen_his;
    p.volume_short_frozen = p.volume_short_frozen_today + p.volume_short_frozen_his;
    p.volume_long_yd = p.volume_long_his;
    p.volume_short_yd = p.volume_short_his;
    p.pos_long_today = p.volume_long_today;
    p.pos_long_his = p.volume_long_his;
    p.pos_short_today = p.volume_short_today;
    p.pos_short_his = p.volume_short_his;
    p.pos_long = p.volume_long;
    p.pos_short = p.volume_short;
    p.pos = p.volume_long - p.volume_short;
    let (vl, vs) = (p.volume_long as f64, p.volume_short as f64);
    p.open_price_long = if vl > 0.0 { p.open_cost_long / (vl * mult) } else { 0.0 };
    p.open_price_short = if vs > 0.0 { p.open_cost_short / (vs * mult) } else { 0.0 };
    p.position_price_long = if vl > 0.0 { p.position_cost_long / (vl * mult) } else { 0.0 };
    p.position_price_short = if vs > 0.0 { p.position_cost_short / (vs * mult) } else { 0.0 };
    p.last_price = last;
    p.float_profit_long = last * vl * mult - p.open_cost_long;
    p.float_profit_short = p.open_cost_short - last * vs * mult;
    p.float_profit = p.float_profit_long + p.float_profit_short;
    p.position_profit_long = last * vl * mult - p.position_cost_long;
    p.position_profit_short = p.position_cost_short - last * vs * mult;
    p.position_profit = p.position_profit_long + p.position_profit_short;
    p.margin_long = vl * spec.margin_per_lot();
    p.margin_short = vs * spec.margin_per_lot();
    p.margin = p.margin_long + p.margin_short;
}

/// Recomputes an account's derived fields from its positions.
fn refresh_account(a: &mut AccountState) {
    let acc = &mut a.account;
    if a.alive == 0 {
        acc.frozen_margin = 0.0;
        acc.frozen_commission = 0.0;
    }
    acc.static_balance = acc.pre_balance + acc.deposit - acc.withdraw;
    acc.margin = total(a.positions.values().map(|p| p.margin));
    acc.position_profit = total(a.positions.values().map(|p| p.position_profit));
    acc.float_profit = total(a.positions.values().map(|p| p.float_profit));
    acc.balance =
        acc.static_balance + acc.close_profit - acc.commission + acc.premium + acc.position_profit;
    acc.available =
        acc.balance - acc.margin - acc.frozen_margin - acc.frozen_commission - acc.frozen_premium;
    acc.risk_ratio = if acc.balance > 0.0 { acc.margin / acc.balance } else { 0.0 };
    acc.ctp_balance = acc.balance;
    acc.ctp_available = acc.available;
}

/// A sum that starts from +0.0 (`Iterator::sum` of no floats is -0.0).
fn total(it: impl Iterator<Item = f64>) -> f64 {
    it.fold(0.0, |a, b| a + b)
}
