//! Partitions and key layouts (the full table is in `docs/storage-layout.md`).
//!
//! Every key starts with a one-byte tag naming the record type (in the accounts
//! partition, the tag follows the trading account: see [`acct`]). Strings inside keys are
//! length-prefixed (`u16` big-endian length, then the bytes), so ids may hold any byte
//! and a prefix scan over one user's records can never run into another user's.
//! Integers are big-endian so byte order is numeric order; signed times are stored with
//! the sign bit flipped so negative times sort first. "Newest first" indexes store
//! `!lsn`.

use bourse_model::InstrumentId;

/// The partitions of the store: one LSM tree each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartitionId {
    /// Everything about one instrument: its trades, ticks, book snapshots and deltas,
    /// and its order flow.
    Instrument(InstrumentId),
    /// Trading accounts: funds, positions, each order's latest state, a user's order
    /// and trade indexes, transfers.
    Accounts,
    /// Users and the trading accounts bound to them.
    Users,
    /// Extension events and the catalogue of instruments seen.
    Market,
}

impl PartitionId {
    /// The partition's directory, relative to the engine's `parts/` directory.
    pub fn dir_name(&self) -> String {
        match self {
            PartitionId::Instrument(id) => format!("instruments/{}", id.as_str()),
            PartitionId::Accounts => "accounts".into(),
            PartitionId::Users => "users".into(),
            PartitionId::Market => "market".into(),
        }
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.dir_name())
    }
}

/// Record tags of instrument partitions.
pub mod inst {
    /// `T ts lsn` → trade event.
    pub const TRADE: u8 = b'T';
    /// `K ts lsn` → tick event.
    pub const TICK: u8 = b'K';
    /// `B ts lsn` → book snapshot event.
    pub const BOOK: u8 = b'B';
    /// `D ts lsn` → book delta event.
    pub const DELTA: u8 = b'D';
    /// `O lsn` → order event (requested, accepted, updated, rejected, cancelled).
    pub const ORDER_FLOW: u8 = b'O';
    /// `C ts lsn` → book checkpoint: the book after the delta at (ts, lsn), written by
    /// the apply step every `book_checkpoint_every` deltas (at most one per instrument).
    pub const BOOK_CHECKPOINT: u8 = b'C';
}

/// The key layout this build writes and reads, kept in the data directory's
/// [`LAYOUT_FILE`]. Layout 1 (no such file) began accounts keys with the record's tag;
/// layout 2 begins them with the trading account ([`Key::account`]).
pub const KEY_LAYOUT: u32 = 2;

/// The file in the data directory that names its key layout: `bourse key layout N` and
/// a newline.
pub const LAYOUT_FILE: &str = "LAYOUT";

/// Record tags of the accounts partition. Every key there is [`acct::SCOPE`], the
/// trading account (a length-prefixed string), then one of these tags and the rest
/// ([`Key::account`]): one account's records lie together, so an order request's three
/// keys (its record, its by-time and open index entries) land in one memtable leaf.
/// The shapes below leave out the common `A user`.
pub mod acct {
    /// The first byte of every key of the accounts partition.
    pub const SCOPE: u8 = b'A';
    /// `a currency` → account event.
    pub const ACCOUNT: u8 = b'a';
    /// `p instrument hedge` → position event.
    pub const POSITION: u8 = b'p';
    /// `o order_id` → [`crate::OrderRecord`].
    pub const ORDER: u8 = b'o';
    /// `r !created_lsn` → order id (all of a user's orders, newest first).
    pub const ORDER_BY_TIME: u8 = b'r';
    /// `q !created_lsn` → order id (open orders only, newest first).
    pub const OPEN_ORDER: u8 = b'q';
    /// `t !lsn` → trade event (a user's trades, newest first).
    pub const TRADE: u8 = b't';
    /// `x !lsn` → transfer event.
    pub const TRANSFER: u8 = b'x';
    /// `c order_id lsn` → cancel request event.
    pub const CANCEL: u8 = b'c';
}

/// Record tags of the users partition.
pub mod users {
    /// `u user` (unprefixed) → [`crate::UserRecord`].
    pub const USER: u8 = b'u';
    /// `b user account` → empty (the accounts bound to a user).
    pub const BINDING: u8 = b'b';
    /// `w account` (unprefixed) → user id (who owns a trading account).
    pub const OWNER: u8 = b'w';
}

/// Record tags of the market partition.
pub mod market {
    /// `e lsn` → extension event.
    pub const EXTENSION: u8 = b'e';
    /// `i instrument` (unprefixed) → LSN of the instrument's first event.
    pub const INSTRUMENT: u8 = b'i';
}

/// Builds keys.
#[derive(Debug, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key starting with `tag`.
    pub fn new(tag: u8) -> Key {
        let mut v = Vec::with_capacity(48);
        v.push(tag);
        Key(v)
    }

    /// A key of the accounts partition: [`acct::SCOPE`], the trading account `user`,
    /// then the record's `tag` (one of [`acct`]'s).
    pub fn account(user: &str, tag: u8) -> Key {
        Key::new(acct::SCOPE).str(user).u8(tag)
    }

    /// The key of an order's record in the accounts partition (`A user o order_id`):
    /// the one builder apply, the queries and the benchmark peer share.
    pub fn order(user: &str, order_id: &str) -> Key {
        Key::account(user, acct::ORDER).str(order_id)
    }

    /// Appends a length-prefixed string.
    pub fn str(mut self, s: &str) -> Key {
        let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&n.to_be_bytes());
        self.0.extend_from_slice(&s.as_bytes()[..usize::from(n)]);
        self
    }

    /// Appends a string as the key's last component, without a length (so keys with
    /// one string sort by it).
    pub fn last_str(mut self, s: &str) -> Key {
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// Appends a big-endian `u64`.
    pub fn u64(mut self, v: u64) -> Key {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// Appends a time (nanoseconds) so that byte order is time order.
    pub fn time(self, ns: i64) -> Key {
        self.u64(time_bits(ns))
    }

    /// Appends a byte.
    pub fn u8(mut self, v: u8) -> Key {
        self.0.push(v);
        self
    }

    /// The bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The bytes, borrowed.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// A signed time as an order-preserving unsigned integer.
pub fn time_bits(ns: i64) -> u64 {
    (ns as u64) ^ (1 << 63)
}

/// The (time, LSN) of a `tag ts lsn` key (17 bytes); `None` for any other shape.
pub fn time_and_lsn(key: &[u8]) -> Option<(i64, u64)> {
    if key.len() != 17 {
        return None;
    }
    let bits = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    Some(((bits ^ (1 << 63)) as i64, trailing_u64(key)?))
}

/// The trailing big-endian `u64` of a key (its LSN in every LSN-suffixed layout).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).and_then(|i| key.get(i..))?;
    tail.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sort_numerically_including_negative_ones() {
        let ts = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<Vec<u8>> = ts.iter().map(|t| Key::new(1).time(*t).into_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn length_prefixes_keep_users_apart() {
        // "ab" + "c..." must not share a prefix with "abc".
        let a = Key::new(b'o').str("ab").str("c").into_vec();
        let b = Key::new(b'o').str("abc").into_vec();
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        assert_eq!(trailing_u64(&Key::new(1).u64(42).into_vec()), Some(42));
        for t in [i64::MIN, -5, 0, 7, i64::MAX] {
            assert_eq!(time_and_lsn(&Key::new(b'D').time(t).u64(9).into_vec()), Some((t, 9)));
        }
        assert_eq!(time_and_lsn(&Key::new(b'O').u64(9).into_vec()), None);
    }
}
