//! Topics and subscription filters.

use bourse_model::{Event, EventKind};

/// What an event is about; a subscriber can ask for some topics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Order requests, acceptances, updates, rejections, cancel requests, cancels.
    Orders,
    /// Executed trades.
    Trades,
    /// Account updates and transfers.
    Accounts,
    /// Position updates.
    Positions,
    /// Ticks, book snapshots and book deltas.
    Market,
    /// Users and account bindings.
    Users,
    /// Extension events.
    Other,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 7] = [
        Topic::Orders,
        Topic::Trades,
        Topic::Accounts,
        Topic::Positions,
        Topic::Market,
        Topic::Users,
        Topic::Other,
    ];

    /// The topic of an event kind.
    pub fn of(kind: EventKind) -> Topic {
        use EventKind as K;
        match kind {
            K::OrderRequested
            | K::OrderAccepted
            | K::OrderUpdated
            | K::OrderRejected
            | K::CancelRequested
            | K::OrderCancelled => Topic::Orders,
            K::TradeExecuted => Topic::Trades,
            K::AccountUpdated | K::Transfer => Topic::Accounts,
            K::PositionUpdated => Topic::Positions,
            K::Tick | K::BookSnapshot | K::BookDelta => Topic::Market,
            K::UserRegistered | K::UserUpdated | K::AccountBound | K::AccountUnbound => {
                Topic::Users
            }
            K::Extension => Topic::Other,
        }
    }

    /// The topic's name (`orders`, `trades`, `accounts`, `positions`, `market`,
    /// `users`, `other`).
    pub fn name(self) -> &'static str {
        match self {
            Topic::Orders => "orders",
            Topic::Trades => "trades",
            Topic::Accounts => "accounts",
            Topic::Positions => "positions",
            Topic::Market => "market",
            Topic::Users => "users",
            Topic::Other => "other",
        }
    }

    /// The topic named `name`.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A 12-bit hash of an instrument or account id, stored in the ring's record header
/// so filters skip most events without decoding them.
pub(crate) fn hash12(s: &str) -> u16 {
    // FNV-1a, folded to 12 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h ^ (h >> 12) ^ (h >> 24)) & 0xfff) as u16
}

/// Which events a subscriber receives: all of the named topics (or every topic), and
/// when instruments or accounts are named, only events about one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    topics: u8,
    instruments: Vec<String>,
    accounts: Vec<String>,
    instrument_bits: [u64; 64],
    account_bits: [u64; 64],
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            topics: 0,
            instruments: Vec::new(),
            accounts: Vec::new(),
            instrument_bits: [0; 64],
            account_bits: [0; 64],
        }
    }
}

impl Filter {
    /// Every event.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Also accept `topic` (a filter with no topic accepts every topic).
    pub fn topic(mut self, topic: Topic) -> Filter {
        self.topics |= topic.bit();
        self
    }

    /// Only events about these instruments (events without an instrument, such as
    /// account updates, are then excluded).
    pub fn instrument(mut self, id: &str) -> Filter {
        let h = hash12(id) as usize;
        self.instrument_bits[h / 64] |= 1 << (h % 64);
        self.instruments.push(id.to_owned());
        self
    }

    /// Only events about these trading accounts.
    pub fn account(mut self, id: &str) -> Filter {
        let h = hash12(id) as usize;
        self.account_bits[h / 64] |= 1 << (h % 64);
        self.accounts.push(id.to_owned());
        self
    }

    /// Whether this filter accepts everything.
    pub fn is_all(&self) -> bool {
        self.topics == 0 && self.instruments.is_empty() && self.accounts.is_empty()
    }

    /// The accepted topics as bits (bit `i` is `Topic::ALL[i]`; 0 means every topic).
    pub(crate) fn topic_bits(&self) -> u8 {
        self.topics
    }

    /// Whether the filter looks at topics only (no instruments, no accounts).
    pub(crate) fn topics_only(&self) -> bool {
        self.instruments.is_empty() && self.accounts.is_empty()
    }

    /// The one topic this filter accepts, if it names exactly one.
    pub(crate) fn single_topic(&self) -> Option<Topic> {
        if self.topics.count_ones() == 1 {
            Topic::ALL.into_iter().find(|t| self.topics & t.bit() != 0)
        } else {
            None
        }
    }

    /// Whether the topic is accepted.
    pub fn accepts_topic(&self, t: Topic) -> bool {
        self.topics == 0 || self.topics & t.bit() != 0
    }

    /// The header test: `Some(false)` rejects, `Some(true)` accepts, `None` means
    /// decode and ask [`Filter::accepts`].
    pub(crate) fn prefilter(&self, kind: u8, ih: u16, ah: u16) -> Option<bool> {
        let Some(kind) = EventKind::from_u16(kind as u16) else { return Some(false) };
        if !self.accepts_topic(Topic::of(kind)) {
            return Some(false);
        }
        let bit = |bits: &[u64; 64], h: u16| bits[h as usize / 64] & (1 << (h % 64)) != 0;
        if !self.instruments.is_empty() && !bit(&self.instrument_bits, ih) {
            return Some(false);
        }
        if !self.accounts.is_empty() && !bit(&self.account_bits, ah) {
            return Some(false);
        }
        if self.instruments.is_empty() && self.accounts.is_empty() {
            Some(true)
        } else {
            None
        }
    }

    /// The exact test on a decoded event.
    pub fn accepts(&self, e: &Event) -> bool {
        if !self.accepts_topic(Topic::of(e.kind())) {
            return false;
        }
        if !self.instruments.is_empty()
            && !e.instrument().is_some_and(|i| self.instruments.iter().any(|x| x == i.as_str()))
        {
            return false;
        }
        if !self.accounts.is_empty()
            && !e.account().is_some_and(|a| self.accounts.iter().any(|x| x == a))
        {
            return false;
        }
        true
    }
}

/// The ring header's hashes of an event's instrument and account (0 when absent).
pub(crate) fn hashes(e: &Event) -> (u16, u16) {
    (e.instrument().map_or(0, |i| hash12(i.as_str())), e.account().map_or(0, hash12))
}
