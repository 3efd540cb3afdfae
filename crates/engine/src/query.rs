//! Queries. Each reads at one snapshot (the LSN applied when it started), so it sees
//! whole batches only; range queries stream from the trees, holding the snapshot so
//! compaction keeps what they read.

use std::ops::Bound;

use bourse_lsm::{prefix_end, Snapshot, Tree};
use bourse_model::{Account, BookSnapshot, Event, InstrumentId, Position, Tick, Trade, Transfer};

use crate::apply::{decode, OrderRecord, UserRecord};
use crate::engine::decode_event;
use crate::layout::{acct, inst, time_bits, users, Key, PartitionId};
use crate::{Engine, Result};

/// Which of a user's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderFilter {
    /// Only orders still alive.
    Open,
    /// Every order.
    All,
}

/// A streamed query result. Holds the snapshot it reads at until dropped.
pub struct Rows<T> {
    iter: Box<dyn Iterator<Item = Result<T>> + Send>,
    _snapshot: Option<Snapshot>,
}

impl<T> std::fmt::Debug for Rows<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").finish_non_exhaustive()
    }
}

impl<T> Iterator for Rows<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        self.iter.next()
    }
}

impl<T: 'static> Rows<T> {
    fn empty() -> Rows<T> {
        Rows { iter: Box::new(std::iter::empty()), _snapshot: None }
    }
}

/// Key-value pairs from a tree scan.
type Pairs = Box<dyn Iterator<Item = bourse_lsm::Result<(Vec<u8>, Vec<u8>)>> + Send>;

/// Streams `[lo, hi)` of `tree` at `snap`, forward or newest first, decoding values.
fn scan<T: 'static>(
    tree: &Tree,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    snap: u64,
    reverse: bool,
    decode: fn(&[u8], &[u8]) -> Result<Option<T>>,
) -> Rows<T> {
    let snapshot = tree.snapshot(snap);
    let end = match &hi {
        Some(h) => Bound::Excluded(h.as_slice()),
        None => Bound::Unbounded,
    };
    let pairs: Pairs = if reverse {
        Box::new(tree.range_rev(Bound::Included(&lo), end, snap))
    } else {
        Box::new(tree.range(Bound::Included(&lo), end, snap))
    };
    let iter = pairs.filter_map(move |pair| match pair {
        Ok((k, v)) => decode(&k, &v).transpose(),
        Err(e) => Some(Err(e.into())),
    });
    Rows { iter: Box::new(iter), _snapshot: Some(snapshot) }
}

fn event_of<T>(pick: fn(Event) -> Option<T>) -> impl Fn(&[u8]) -> Result<Option<T>> {
    move |v| Ok(pick(decode_event(v)?))
}

fn trade(_: &[u8], v: &[u8]) -> Result<Option<Trade>> {
    event_of(|e| match e {
        Event::TradeExecuted(t) => Some(t),
        _ => None,
    })(v)
}

fn tick(_: &[u8], v: &[u8]) -> Result<Option<Tick>> {
    event_of(|e| match e {
        Event::Tick(t) => Some(t),
        _ => None,
    })(v)
}

fn transfer(_: &[u8], v: &[u8]) -> Result<Option<Transfer>> {
    event_of(|e| match e {
        Event::Transfer(t) => Some(t),
        _ => None,
    })(v)
}

impl Engine {
    fn snap(&self) -> u64 {
        self.applied_lsn()
    }

    fn tree_of(&self, id: &PartitionId) -> Option<std::sync::Arc<crate::engine::Partition>> {
        self.inner.partition(id)
    }

    fn get_at(&self, id: &PartitionId, key: &[u8], snap: u64) -> Result<Option<Vec<u8>>> {
        match self.tree_of(id) {
            Some(p) => Ok(p.tree.get(key, snap)?),
            None => Ok(None),
        }
    }

    /// An order's latest state by (trading account, order id).
    pub fn order(&self, user_id: &str, order_id: &str) -> Result<Option<OrderRecord>> {
        let key = Key::order(user_id, order_id);
        self.get_at(&PartitionId::Accounts, key.as_slice(), self.snap())?
            .map(|b| decode(&b, "order record"))
            .transpose()
    }

    /// A trading account's orders, newest first (by when the first event about each
    /// arrived).
    pub fn orders(&self, user_id: &str, filter: OrderFilter) -> Rows<OrderRecord> {
        let Some(p) = self.tree_of(&PartitionId::Accounts) else { return Rows::empty() };
        let tag = match filter {
            OrderFilter::Open => acct::OPEN_ORDER,
            OrderFilter::All => acct::ORDER_BY_TIME,
        };
        let prefix = Key::account(user_id, tag).into_vec();
        let snap = self.snap();
        let index = scan(&p.tree, prefix.clone(), prefix_end(&prefix), snap, false, |_, v| {
            Ok(Some(v.to_vec()))
        });
        let user = user_id.to_string();
        let tree = p.clone();
        let snapshot = index._snapshot;
        let iter = index.iter.filter_map(move |id| {
            let lookup = || -> Result<Option<OrderRecord>> {
                let id = String::from_utf8(id?)
                    .map_err(|_| crate::Error::Corrupt { what: "order id index".into() })?;
                let key = Key::order(&user, &id);
                tree.tree.get(key.as_slice(), snap)?.map(|b| decode(&b, "order record")).transpose()
            };
            lookup().transpose()
        });
        Rows { iter: Box::new(iter), _snapshot: snapshot }
    }

    /// An instrument's trades with `from_ns <= trade time < to_ns`, oldest first.
    pub fn trades(&self, id: &InstrumentId, from_ns: i64, to_ns: i64) -> Rows<Trade> {
        self.time_range(id, inst::TRADE, from_ns, to_ns, trade)
    }

    /// An instrument's ticks with `from_ns <= datetime < to_ns`, oldest first.
    pub fn ticks(&self, id: &InstrumentId, from_ns: i64, to_ns: i64) -> Rows<Tick> {
        self.time_range(id, inst::TICK, from_ns, to_ns, tick)
    }

    fn time_range<T: 'static>(
        &self,
        id: &InstrumentId,
        tag: u8,
        from_ns: i64,
        to_ns: i64,
        decode: fn(&[u8], &[u8]) -> Result<Option<T>>,
    ) -> Rows<T> {
        let Some(p) = self.tree_of(&PartitionId::Instrument(id.clone())) else {
            return Rows::empty();
        };
        if from_ns >= to_ns {
            return Rows::empty();
        }
        let lo = Key::new(tag).time(from_ns).into_vec();
        let hi = Key::new(tag).time(to_ns).into_vec();
        scan(&p.tree, lo, Some(hi), self.snap(), false, decode)
    }

    /// A trading account's trades, newest first.
    pub fn user_trades(&self, user_id: &str) -> Rows<Trade> {
        let Some(p) = self.tree_of(&PartitionId::Accounts) else { return Rows::empty() };
        let prefix = Key::account(user_id, acct::TRADE).into_vec();
        scan(&p.tree, prefix.clone(), prefix_end(&prefix), self.snap(), false, trade)
    }

    /// A trading account's transfers, newest first.
    pub fn transfers(&self, user_id: &str) -> Rows<Transfer> {
        let Some(p) = self.tree_of(&PartitionId::Accounts) else { return Rows::empty() };
        let prefix = Key::account(user_id, acct::TRANSFER).into_vec();
        scan(&p.tree, prefix.clone(), prefix_end(&prefix), self.snap(), false, transfer)
    }

    /// The newest book snapshot at or before `at_ns` (a stored snapshot; deltas are not
    /// applied — see [`Engine::latest_book`] for the live book).
    pub fn book_at(&self, id: &InstrumentId, at_ns: i64) -> Result<Option<BookSnapshot>> {
        let Some(p) = self.tree_of(&PartitionId::Instrument(id.clone())) else {
            return Ok(None);
        };
        let lo = [inst::BOOK];
        let hi = Key::new(inst::BOOK).u64(time_bits(at_ns)).u64(u64::MAX).into_vec();
        let mut it = p.tree.range_rev(Bound::Included(&lo), Bound::Included(&hi), self.snap());
        match it.next().transpose()? {
            Some((_, v)) => match decode_event(&v)? {
                Event::BookSnapshot(b) => Ok(Some(b)),
                _ => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// A trading account's funds, one per currency.
    pub fn accounts(&self, user_id: &str) -> Result<Vec<Account>> {
        let Some(p) = self.tree_of(&PartitionId::Accounts) else { return Ok(Vec::new()) };
        let prefix = Key::account(user_id, acct::ACCOUNT).into_vec();
        scan(&p.tree, prefix.clone(), prefix_end(&prefix), self.snap(), false, |_, v| {
            event_of(|e| match e {
                Event::AccountUpdated(a) => Some(a),
                _ => None,
            })(v)
        })
        .collect()
    }

    /// A trading account's positions.
    pub fn positions(&self, user_id: &str) -> Result<Vec<Position>> {
        let Some(p) = self.tree_of(&PartitionId::Accounts) else { return Ok(Vec::new()) };
        let prefix = Key::account(user_id, acct::POSITION).into_vec();
        scan(&p.tree, prefix.clone(), prefix_end(&prefix), self.snap(), false, |_, v| {
            event_of(|e| match e {
                Event::PositionUpdated(p) => Some(p),
                _ => None,
            })(v)
        })
        .collect()
    }

    /// A user by id.
    pub fn user(&self, user_id: &str) -> Result<Option<UserRecord>> {
        let key = Key::new(users::USER).last_str(user_id);
        self.get_at(&PartitionId::Users, key.as_slice(), self.snap())?
            .map(|b| decode(&b, "user record"))
            .transpose()
    }

    /// Every user, by id.
    pub fn users(&self) -> Rows<UserRecord> {
        let Some(p) = self.tree_of(&PartitionId::Users) else { return Rows::empty() };
        scan(&p.tree, vec![users::USER], Some(vec![users::USER + 1]), self.snap(), false, |_, v| {
            decode(v, "user record").map(Some)
        })
    }

    /// The trading accounts bound to a user, sorted.
    pub fn accounts_of(&self, user_id: &str) -> Result<Vec<String>> {
        let Some(p) = self.tree_of(&PartitionId::Users) else { return Ok(Vec::new()) };
        let prefix = Key::new(users::BINDING).str(user_id).into_vec();
        let n = prefix.len();
        scan(&p.tree, prefix.clone(), prefix_end(&prefix), self.snap(), false, |k, _| {
            // Key: tag, user (length-prefixed), account (length-prefixed).
            Ok(Some(k.to_vec()))
        })
        .map(|k| {
            let k = k?;
            k.get(n + 2..)
                .and_then(|b| String::from_utf8(b.to_vec()).ok())
                .ok_or_else(|| crate::Error::Corrupt { what: "binding key".into() })
        })
        .collect()
    }

    /// The user a trading account is bound to.
    pub fn owner_of(&self, account_id: &str) -> Result<Option<String>> {
        let key = Key::new(users::OWNER).last_str(account_id);
        self.get_at(&PartitionId::Users, key.as_slice(), self.snap())?
            .map(|b| {
                String::from_utf8(b).map_err(|_| crate::Error::Corrupt { what: "owner".into() })
            })
            .transpose()
    }
}
