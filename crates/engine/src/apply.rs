//! The apply step: one committed event at one LSN becomes writes to partitions.
//!
//! Apply is deterministic: its writes depend only on the LSN, the event and the state
//! of the partitions it writes, as left by the events before it. Replaying the journal
//! from any checkpoint therefore rebuilds exactly the same state, which is what WAL
//! recovery relies on today and what replication will rely on as a Raft state machine.
//! Each partition's writes read only that partition, so a partition that already holds
//! an LSN (its tables are past it) can be skipped during replay without changing what
//! the others compute. The engine adds one kind of write to these: a book event's book
//! checkpoint (see `cache`), computed from the market cache, which is itself a function
//! of the instrument partition's state; so it is deterministic too.

use std::borrow::Cow;

use bourse_model::codec::HEADER_BYTES;
use bourse_model::{
    Direction, Event, HedgeFlag, InstrumentId, Offset, Order, OrderStatus, PriceType,
    TimeCondition, VolumeCondition,
};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::layout::{acct, inst, market, users, Key, PartitionId};
use crate::Result;

/// A write the apply step produces. Values that are the event's encoded form (most of
/// them) borrow it rather than copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write<'a> {
    /// The partition written.
    pub part: PartitionId,
    /// The key (see `docs/storage-layout.md`).
    pub key: Vec<u8>,
    /// The value; `None` deletes.
    pub value: Option<Cow<'a, [u8]>>,
}

/// The writes of one event: inline for the few that most events make (one to four), so
/// that applying an event allocates no list.
pub type Writes<'a> = SmallVec<[Write<'a>; 4]>;

/// An order's latest state, as stored in the accounts partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// LSN of the first event about this order (its request, or its acceptance when the
    /// producer sends no requests).
    pub created_lsn: u64,
    /// LSN of the latest event about this order.
    pub updated_lsn: u64,
    /// The order as of `updated_lsn`. A requested order not yet accepted is `ALIVE` with
    /// `last_msg` "requested"; a rejected or cancelled one is `FINISHED` with the reason.
    pub order: Order,
}

/// A user as stored in the users partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login id.
    pub user_id: String,
    /// Display name.
    pub user_name: String,
    /// Argon2 hash in PHC string form.
    pub password_hash: String,
    /// Phone.
    pub phone: String,
    /// E-mail.
    pub email: String,
    /// Whether logins are refused.
    pub frozen: bool,
    /// Registration time (ns).
    pub registered_at: i64,
    /// LSN of the registration.
    pub registered_lsn: u64,
}

/// Reads a partition's current state during apply.
pub trait StateRead {
    /// The latest value of `key` in `part`.
    fn get(&self, part: &PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Whether the instrument is in the market catalogue.
    fn catalogued(&self, id: &bourse_model::InstrumentId) -> bool;
}

fn put<'a>(out: &mut Writes<'a>, part: PartitionId, key: Key, value: impl Into<Cow<'a, [u8]>>) {
    out.push(Write { part, key: key.into_vec(), value: Some(value.into()) });
}

fn delete(out: &mut Writes<'_>, part: PartitionId, key: Key) {
    out.push(Write { part, key: key.into_vec(), value: None });
}

/// Room an encoded record starts with: an order record fits, so that it is encoded
/// without the reallocations of a vector growing from empty.
const RECORD_BYTES: usize = 256;

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_extend(v, Vec::with_capacity(RECORD_BYTES))
        .map_err(|e| crate::Error::Corrupt { what: format!("encode: {e}") })
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(b: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(b).map_err(|e| crate::Error::Corrupt { what: format!("{what}: {e}") })
}

/// Computes the writes of `event` (whose encoded form is `encoded`) at `lsn`, appending
/// them to `out`. Public so that other stores (a benchmark peer, a replica's state
/// machine) can perform exactly the engine's writes.
pub fn apply<'a>(
    lsn: u64,
    event: &Event,
    encoded: &'a [u8],
    state: &dyn StateRead,
    out: &mut Writes<'a>,
) -> Result<()> {
    if let Some(ins) = event.instrument() {
        if !state.catalogued(ins) {
            let key = Key::new(market::INSTRUMENT).last_str(ins.as_str());
            put(out, PartitionId::Market, key, lsn.to_be_bytes().to_vec());
        }
    }
    instrument_writes(lsn, event, encoded, out);
    match event {
        Event::OrderRequested(r) => {
            if stored_order(state, &r.user_id, &r.order_id)?.is_some() {
                // A repeated order id changes nothing but the flow log.
                return Ok(());
            }
            let order = Order { last_msg: "requested".into(), ..r.to_order() };
            store_order(out, lsn, None, &order, None)?;
        }
        Event::OrderAccepted(o) | Event::OrderUpdated(o) => {
            let prev = stored_order(state, &o.user_id, &o.order_id)?;
            // The event's own form after its header is the order's postcard form (in this
            // codec version: `Event::decode` takes no other, so a replayed record's
            // payload is in it too).
            store_order(out, lsn, prev, o, encoded.get(HEADER_BYTES..))?;
        }
        Event::OrderRejected(r) => {
            let ids = (&r.user_id, &r.order_id, &r.instrument_id, r.datetime);
            finish_order(out, state, lsn, ids, None, &r.last_msg)?;
        }
        Event::OrderCancelled(c) => {
            let ids = (&c.user_id, &c.order_id, &c.instrument_id, c.datetime);
            finish_order(out, state, lsn, ids, Some(c.volume_left), &c.last_msg)?;
        }
        Event::CancelRequested(c) => {
            let key = Key::account(&c.user_id, acct::CANCEL).str(&c.order_id).u64(lsn);
            put(out, PartitionId::Accounts, key, encoded);
        }
        Event::TradeExecuted(t) => {
            let key = Key::account(&t.user_id, acct::TRADE).u64(!lsn);
            put(out, PartitionId::Accounts, key, encoded);
        }
        Event::AccountUpdated(a) => {
            let key = Key::account(&a.user_id, acct::ACCOUNT).str(&a.currency);
            put(out, PartitionId::Accounts, key, encoded);
        }
        Event::PositionUpdated(p) => {
            let key = Key::account(&p.user_id, acct::POSITION)
                .str(p.instrument_id.as_str())
                .u8(p.hedge_flag as u8);
            put(out, PartitionId::Accounts, key, encoded);
        }
        // Their only writes are to the instrument partition (above).
        Event::Tick(_) | Event::BookSnapshot(_) | Event::BookDelta(_) => {}
        Event::UserRegistered(u) => {
            let key = Key::new(users::USER).last_str(&u.user_id);
            // The first registration of an id wins; a repeat changes nothing.
            if state.get(&PartitionId::Users, key.as_slice())?.is_none() {
                let rec = UserRecord {
                    user_id: u.user_id.clone(),
                    user_name: u.user_name.clone(),
                    password_hash: u.password_hash.clone(),
                    phone: u.phone.clone(),
                    email: u.email.clone(),
                    frozen: false,
                    registered_at: u.datetime,
                    registered_lsn: lsn,
                };
                put(out, PartitionId::Users, key, encode(&rec)?);
            }
        }
        Event::UserUpdated(u) => {
            let key = Key::new(users::USER).last_str(&u.user_id);
            if let Some(bytes) = state.get(&PartitionId::Users, key.as_slice())? {
                let mut rec: UserRecord = decode(&bytes, "user record")?;
                rec.frozen = u.frozen;
                put(out, PartitionId::Users, key, encode(&rec)?);
            }
        }
        Event::AccountBound(b) => {
            let user = Key::new(users::USER).last_str(&b.user_id);
            let owner = Key::new(users::OWNER).last_str(&b.account_id);
            // An account belongs to at most one user; binding to an unknown user or an
            // account owned by someone else changes nothing.
            if state.get(&PartitionId::Users, user.as_slice())?.is_some()
                && state.get(&PartitionId::Users, owner.as_slice())?.is_none()
            {
                let key = Key::new(users::BINDING).str(&b.user_id).str(&b.account_id);
                put(out, PartitionId::Users, key, lsn.to_be_bytes().to_vec());
                put(out, PartitionId::Users, owner, b.user_id.as_bytes().to_vec());
            }
        }
        Event::AccountUnbound(b) => {
            let owner = Key::new(users::OWNER).last_str(&b.account_id);
            let current = state.get(&PartitionId::Users, owner.as_slice())?;
            if current.as_deref() == Some(b.user_id.as_bytes()) {
                delete(out, PartitionId::Users, owner);
                let key = Key::new(users::BINDING).str(&b.user_id).str(&b.account_id);
                delete(out, PartitionId::Users, key);
            }
        }
        Event::Transfer(t) => {
            let key = Key::account(&t.user_id, acct::TRANSFER).u64(!lsn);
            put(out, PartitionId::Accounts, key, encoded);
        }
        Event::Extension(_) => {
            put(out, PartitionId::Market, Key::new(market::EXTENSION).u64(lsn), encoded);
        }
    }
    Ok(())
}

/// The writes `apply` makes to instrument partitions for `event`, appended to `out`:
/// an order event's entry in the order flow, a trade, a tick, a book snapshot or delta.
/// They read no state, so the apply lane thread computes them alone.
pub(crate) fn instrument_writes<'a>(
    lsn: u64,
    event: &Event,
    encoded: &'a [u8],
    out: &mut Writes<'a>,
) {
    let Some((tag, ins, time)) = instrument_target(event) else { return };
    let key = match time {
        Some(t) => Key::new(tag).time(t).u64(lsn),
        None => Key::new(tag).u64(lsn),
    };
    put(out, PartitionId::Instrument(ins.clone()), key, encoded);
}

/// Where `event` goes in its instrument partition: the key tag, the instrument and the
/// time in the key (`None`: the order flow, keyed by LSN alone).
fn instrument_target(event: &Event) -> Option<(u8, &InstrumentId, Option<i64>)> {
    Some(match event {
        Event::OrderRequested(r) => (inst::ORDER_FLOW, &r.instrument_id, None),
        Event::OrderAccepted(o) | Event::OrderUpdated(o) => {
            (inst::ORDER_FLOW, &o.instrument_id, None)
        }
        Event::OrderRejected(r) => (inst::ORDER_FLOW, &r.instrument_id, None),
        Event::OrderCancelled(c) => (inst::ORDER_FLOW, &c.instrument_id, None),
        Event::TradeExecuted(t) => (inst::TRADE, &t.instrument_id, Some(t.trade_date_time)),
        Event::Tick(t) => (inst::TICK, &t.instrument_id, Some(t.datetime)),
        Event::BookSnapshot(b) => (inst::BOOK, &b.instrument_id, Some(b.datetime)),
        Event::BookDelta(d) => (inst::DELTA, &d.instrument_id, Some(d.datetime)),
        _ => return None,
    })
}

/// The instrument whose partition `apply` writes for `event`, if any.
pub(crate) fn instrument_written(event: &Event) -> Option<&InstrumentId> {
    instrument_target(event).map(|(_, ins, _)| ins)
}

/// Whether `apply` can write an instrument partition for `event` (a replay lane that
/// writes only instrument partitions skips the other events).
pub(crate) fn writes_instrument(event: &Event) -> bool {
    instrument_target(event).is_some()
}

/// Whether `apply` can write accounts, users or market for `event`, beyond the one
/// catalogue entry any event with a new instrument writes.
pub(crate) fn writes_others(event: &Event) -> bool {
    !matches!(event, Event::Tick(_) | Event::BookSnapshot(_) | Event::BookDelta(_))
}

/// What [`store_order`] needs of an order's stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    /// The record's `created_lsn`.
    created_lsn: u64,
    /// Whether the order is `ALIVE` (in the open index).
    open: bool,
}

/// The leading fields of a stored [`OrderRecord`], up to its order's status, with the
/// texts borrowed. Postcard writes a struct's fields one after the other with nothing
/// between them, so a struct of the leading fields, of the same types in the same order,
/// reads exactly those and leaves the rest unread: no text is copied, nothing is
/// allocated. (`order_heads_read_what_full_records_hold` keeps it in step with
/// [`Order`].)
#[derive(Deserialize)]
struct RecordHead<'a> {
    created_lsn: u64,
    _updated_lsn: u64,
    #[serde(borrow)]
    order: OrderHead<'a>,
}

/// [`Order`]'s fields up to `status`, in its order (see [`RecordHead`]).
#[derive(Deserialize)]
struct OrderHead<'a> {
    _seqno: i64,
    _user_id: &'a str,
    _order_id: &'a str,
    _instrument_id: &'a str,
    _direction: Direction,
    _offset: Offset,
    _volume_orign: i64,
    _price_type: PriceType,
    _limit_price: f64,
    _volume_condition: VolumeCondition,
    _time_condition: TimeCondition,
    _hedge_flag: HedgeFlag,
    _insert_date_time: i64,
    _exchange_order_id: &'a str,
    status: OrderStatus,
}

/// Reads the head of a stored order record.
fn stored_head(bytes: &[u8]) -> Result<Stored> {
    let (head, _) = postcard::take_from_bytes::<RecordHead<'_>>(bytes)
        .map_err(|e| crate::Error::Corrupt { what: format!("order record: {e}") })?;
    Ok(Stored { created_lsn: head.created_lsn, open: head.order.status == OrderStatus::Alive })
}

/// The stored record of an order, as far as [`store_order`] needs it.
fn stored_order(state: &dyn StateRead, user_id: &str, order_id: &str) -> Result<Option<Stored>> {
    let key = Key::order(user_id, order_id);
    state.get(&PartitionId::Accounts, key.as_slice())?.map(|b| stored_head(&b)).transpose()
}

fn existing_order(
    state: &dyn StateRead,
    user_id: &str,
    order_id: &str,
) -> Result<Option<OrderRecord>> {
    let key = Key::order(user_id, order_id);
    state
        .get(&PartitionId::Accounts, key.as_slice())?
        .map(|b| decode(&b, "order record"))
        .transpose()
}

/// Marks an order `FINISHED` (rejected or cancelled) with its message and, for a cancel,
/// the volume left; an order never seen before is created from the event's ids.
fn finish_order(
    out: &mut Writes<'_>,
    state: &dyn StateRead,
    lsn: u64,
    (user_id, order_id, instrument_id, datetime): (&String, &String, &InstrumentId, i64),
    volume_left: Option<i64>,
    last_msg: &str,
) -> Result<()> {
    let prev = existing_order(state, user_id, order_id)?;
    let mut order = prev.as_ref().map(|rec| rec.order.clone()).unwrap_or_else(|| Order {
        user_id: user_id.clone(),
        order_id: order_id.clone(),
        instrument_id: instrument_id.clone(),
        insert_date_time: datetime,
        ..Order::default()
    });
    order.status = OrderStatus::Finished;
    // A finished order holds nothing frozen.
    order.frozen_margin = 0.0;
    if let Some(v) = volume_left {
        order.volume_left = v;
    }
    order.last_msg = last_msg.to_string();
    let prev = prev.map(|rec| Stored {
        created_lsn: rec.created_lsn,
        open: rec.order.status == OrderStatus::Alive,
    });
    store_order(out, lsn, prev, &order, None)
}

/// An [`OrderRecord`] to encode, borrowing its order: the same form.
#[derive(Serialize)]
struct RecordRef<'a> {
    created_lsn: u64,
    updated_lsn: u64,
    order: &'a Order,
}

/// The encoded [`OrderRecord`] of `order` at `lsn`. `body`, if given, is `order`'s own
/// postcard form (an accepted or updated order's event after its header): the record's
/// form is then its two LSNs followed by those bytes, since postcard writes a struct's
/// fields one after the other, and the order is not encoded again.
fn order_record(created_lsn: u64, lsn: u64, order: &Order, body: Option<&[u8]>) -> Result<Vec<u8>> {
    let err = |e: postcard::Error| crate::Error::Corrupt { what: format!("encode: {e}") };
    match body {
        Some(body) => {
            let mut out = Vec::with_capacity(20 + body.len());
            out = postcard::to_extend(&(created_lsn, lsn), out).map_err(err)?;
            out.extend_from_slice(body);
            Ok(out)
        }
        None => encode(&RecordRef { created_lsn, updated_lsn: lsn, order }),
    }
}

/// Writes an order's new state (`prev`: what its stored record says, if there is one)
/// and keeps the by-time and open indexes in step. `body`: see [`order_record`].
fn store_order(
    out: &mut Writes<'_>,
    lsn: u64,
    prev: Option<Stored>,
    order: &Order,
    body: Option<&[u8]>,
) -> Result<()> {
    let created = prev.map_or(lsn, |p| p.created_lsn);
    let by_time = Key::account(&order.user_id, acct::ORDER_BY_TIME).u64(!created);
    let open = Key::account(&order.user_id, acct::OPEN_ORDER).u64(!created);
    let id = order.order_id.as_bytes().to_vec();
    if prev.is_none() {
        put(out, PartitionId::Accounts, by_time, id.clone());
    }
    let was_open = prev.is_some_and(|p| p.open);
    match (order.status, was_open) {
        (OrderStatus::Alive, false) => put(out, PartitionId::Accounts, open, id),
        (OrderStatus::Finished, true) => delete(out, PartitionId::Accounts, open),
        _ => {}
    }
    let key = Key::order(&order.user_id, &order.order_id);
    put(out, PartitionId::Accounts, key, order_record(created, lsn, order, body)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use bourse_model::samples::sample;
    use bourse_model::EventKind;

    use super::*;

    type Cells = HashMap<(PartitionId, Vec<u8>), Vec<u8>>;

    /// State kept in a map: the writes of earlier events.
    #[derive(Default)]
    struct MapState {
        map: Mutex<Cells>,
        catalogue: Mutex<std::collections::HashSet<InstrumentId>>,
    }

    impl StateRead for MapState {
        fn get(&self, part: &PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self.map.lock().unwrap().get(&(part.clone(), key.to_vec())).cloned())
        }
        fn catalogued(&self, id: &InstrumentId) -> bool {
            self.catalogue.lock().unwrap().contains(id)
        }
    }

    /// The replay lanes skip events by `writes_instrument` and `writes_others`: every
    /// write apply makes must be allowed by them, in a fresh state and after the same
    /// ids were seen (repeated orders, known users, bound accounts).
    #[test]
    fn lane_declarations_cover_every_write() {
        let state = MapState::default();
        let mut lsn = 0;
        for round in 0..3 {
            for n in [1u64, 2, 7] {
                for kind in EventKind::ALL {
                    let event = sample(kind, n);
                    let encoded = event.encode().unwrap();
                    lsn += 1;
                    let mut out = Writes::new();
                    apply(lsn, &event, &encoded, &state, &mut out).unwrap();
                    for w in &out {
                        let catalogue = w.part == PartitionId::Market
                            && w.key.first() == Some(&market::INSTRUMENT);
                        let allowed = match &w.part {
                            PartitionId::Instrument(_) => writes_instrument(&event),
                            _ => catalogue || writes_others(&event),
                        };
                        assert!(allowed, "{kind:?} (round {round}) writes {:?}", w.part);
                        let key = (w.part.clone(), w.key.clone());
                        let mut map = state.map.lock().unwrap();
                        match &w.value {
                            Some(v) => map.insert(key, v.to_vec()),
                            None => map.remove(&key),
                        };
                    }
                    if let Some(ins) = event.instrument() {
                        state.catalogue.lock().unwrap().insert(ins.clone());
                    }
                }
            }
        }
    }

    /// Every key apply writes to the accounts partition begins with the scope tag and
    /// the event's own trading account (layout 2), so one account's records lie
    /// together; every kind that writes there is seen writing.
    #[test]
    fn accounts_keys_begin_with_their_account() {
        let state = MapState::default();
        let mut kinds_seen = std::collections::HashSet::new();
        for (lsn, kind) in EventKind::ALL.into_iter().enumerate() {
            let event = sample(kind, 5);
            let encoded = event.encode().unwrap();
            let mut out = Writes::new();
            apply(lsn as u64 + 1, &event, &encoded, &state, &mut out).unwrap();
            for w in out.iter().filter(|w| w.part == PartitionId::Accounts) {
                let user = event.account().expect("an accounts write has an account");
                let scope = Key::new(acct::SCOPE).str(user).into_vec();
                assert!(w.key.starts_with(&scope), "{kind:?} writes {:?}", w.key);
                let tag = w.key[scope.len()];
                let tags = [
                    acct::ACCOUNT,
                    acct::POSITION,
                    acct::ORDER,
                    acct::ORDER_BY_TIME,
                    acct::OPEN_ORDER,
                    acct::TRADE,
                    acct::TRANSFER,
                    acct::CANCEL,
                ];
                assert!(tags.contains(&tag), "{kind:?} writes tag {tag}");
                kinds_seen.insert(kind);
            }
        }
        // The kinds that keep an account's state (an order request writes three keys).
        assert_eq!(kinds_seen.len(), 10, "{kinds_seen:?}");
    }

    /// Orders of every status, with texts of many lengths (empty, one byte, past a
    /// one-byte varint length) and numbers of many varint lengths.
    fn orders() -> Vec<Order> {
        let mut v = Vec::new();
        for n in 0..200u64 {
            let Event::OrderAccepted(mut o) = sample(EventKind::OrderAccepted, n) else {
                panic!("not an order")
            };
            let text = |k: u64| "x".repeat(((n * 7 + k) % 140) as usize);
            o.status = if n % 2 == 0 { OrderStatus::Alive } else { OrderStatus::Finished };
            o.exchange_order_id = text(1);
            o.last_msg = text(2);
            o.seqno = (n as i64).wrapping_mul(0x1234_5678_9abc) - 77;
            o.volume_left = -(n as i64);
            o.limit_price = n as f64 * 0.1;
            if n % 3 == 0 {
                o.user_id = text(3);
                o.order_id = text(4);
            }
            v.push(o);
        }
        v
    }

    #[test]
    fn order_heads_read_what_full_records_hold() {
        for (n, order) in orders().into_iter().enumerate() {
            let (created_lsn, updated_lsn) = (n as u64 * 1_000_003, u64::MAX - n as u64);
            let open = order.status == OrderStatus::Alive;
            let rec = OrderRecord { created_lsn, updated_lsn, order };
            let bytes = encode(&rec).unwrap();
            assert_eq!(stored_head(&bytes).unwrap(), Stored { created_lsn, open }, "{rec:?}");
        }
        assert!(stored_head(&[1, 2]).is_err(), "a truncated record is an error");
    }

    #[test]
    fn an_order_record_from_the_event_body_is_the_encoded_record() {
        for (n, order) in orders().into_iter().enumerate() {
            let (created_lsn, lsn) = (n as u64 * 977, 1 << (n % 64));
            let event = Event::OrderAccepted(order.clone());
            let encoded = event.encode().unwrap();
            let body = encoded.get(HEADER_BYTES..);
            let rec = OrderRecord { created_lsn, updated_lsn: lsn, order };
            let want = encode(&rec).unwrap();
            assert_eq!(order_record(created_lsn, lsn, &rec.order, body).unwrap(), want);
            assert_eq!(order_record(created_lsn, lsn, &rec.order, None).unwrap(), want);
            assert_eq!(decode::<OrderRecord>(&want, "record").unwrap(), rec);
        }
    }
}
