//! The exchange's configuration: instruments with their trading rules, read from TOML.
//!
//! ```toml
//! enforce_sessions = false
//!
//! [[instrument]]
//! id = "SHFE.cu2512"
//! name = "沪铜2512"
//! price_tick = 10.0
//! volume_multiple = 5
//! margin_rate = 0.10
//! commission = 3.0          # per lot, each side
//! pre_settlement = 78000.0
//! limit_rate = 0.07         # price limits: pre_settlement × (1 ± limit_rate)
//! max_order_volume = 500
//! day = [["09:00:00", "10:15:00"], ["10:30:00", "11:30:00"], ["13:30:00", "15:00:00"]]
//! night = [["21:00:00", "25:00:00"]]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use bourse_model::InstrumentId;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The trading rules of one instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentSpec {
    /// `EXCH.ins`.
    pub id: InstrumentId,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Smallest price step; every limit price is a multiple of it.
    pub price_tick: f64,
    /// Units of the underlying per lot.
    pub volume_multiple: i64,
    /// Margin as a fraction of the contract value at the previous settlement price.
    pub margin_rate: f64,
    /// Commission per lot, charged to each side of a fill.
    pub commission: f64,
    /// Previous settlement price: the base of the price limits and of the margin.
    pub pre_settlement: f64,
    /// Price limits are `pre_settlement × (1 ± limit_rate)`, rounded inwards to the tick.
    pub limit_rate: f64,
    /// Largest volume of one order.
    #[serde(default = "default_max_order_volume")]
    pub max_order_volume: i64,
    /// Day trading sessions, `[start, end]` as `HH:MM:SS` Beijing time.
    #[serde(default)]
    pub day: Vec<[String; 2]>,
    /// Night sessions; an end past midnight is written as `25:00:00` (DIFF's convention).
    #[serde(default)]
    pub night: Vec<[String; 2]>,
}

fn default_max_order_volume() -> i64 {
    500
}

impl InstrumentSpec {
    /// Whether closes distinguish today's position from history (`CLOSETODAY`):
    /// SHFE and INE.
    pub fn splits_today(&self) -> bool {
        matches!(self.id.exchange(), "SHFE" | "INE")
    }

    /// The price as a whole number of ticks, if it lies on the tick grid.
    pub fn ticks_of(&self, price: f64) -> Option<i64> {
        if !price.is_finite() {
            return None;
        }
        let t = price / self.price_tick;
        let r = t.round();
        ((t - r).abs() < 1e-6 && r.abs() < 9e15).then_some(r as i64)
    }

    /// The price of `ticks` ticks.
    pub fn price_of(&self, ticks: i64) -> f64 {
        // Round to the tick's decimals so 0.2 × 22501 prints as 4500.2.
        let p = ticks as f64 * self.price_tick;
        let decs = self.price_decimals();
        let m = 10f64.powi(decs as i32);
        (p * m).round() / m
    }

    /// Decimal places of the tick (DIFF's `price_decs`).
    pub fn price_decimals(&self) -> u32 {
        let mut d = 0;
        let mut t = self.price_tick;
        while d < 8 && (t - t.round()).abs() > 1e-9 {
            t *= 10.0;
            d += 1;
        }
        d
    }

    /// Upper price limit, in ticks.
    pub fn upper_ticks(&self) -> i64 {
        ((self.pre_settlement * (1.0 + self.limit_rate)) / self.price_tick + 1e-9).floor() as i64
    }

    /// Lower price limit, in ticks.
    pub fn lower_ticks(&self) -> i64 {
        ((self.pre_settlement * (1.0 - self.limit_rate)) / self.price_tick - 1e-9).ceil() as i64
    }

    /// Margin of one lot (at the previous settlement price, fixed for the day).
    pub fn margin_per_lot(&self) -> f64 {
        self.pre_settlement * self.volume_multiple as f64 * self.margin_rate
    }

    /// Whether `hms` (seconds since midnight, Beijing time) lies in a session. Night
    /// sessions that run past midnight also cover the early morning.
    pub fn in_session(&self, secs: u32) -> bool {
        let parse = |s: &str| -> Option<u32> {
            let mut it = s.split(':').map(|p| p.parse::<u32>().ok());
            let (h, m, sec) = (it.next()??, it.next()??, it.next()??);
            Some(h * 3600 + m * 60 + sec)
        };
        self.day.iter().chain(self.night.iter()).any(|[a, b]| {
            let (Some(a), Some(b)) = (parse(a), parse(b)) else { return false };
            (a <= secs && secs < b) || (b > 86_400 && secs + 86_400 < b && secs + 86_400 >= a)
        })
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Config(format!("instrument {}: {what}", self.id)));
        if !(self.price_tick > 0.0 && self.price_tick.is_finite()) {
            return bad("price_tick must be positive");
        }
        if self.volume_multiple <= 0 {
            return bad("volume_multiple must be positive");
        }
        if !(0.0..=1.0).contains(&self.margin_rate) || self.margin_rate == 0.0 {
            return bad("margin_rate must be in (0, 1]");
        }
        if !(self.commission >= 0.0 && self.commission.is_finite()) {
            return bad("commission must be zero or positive");
        }
        if !(self.pre_settlement > 0.0 && self.pre_settlement.is_finite()) {
            return bad("pre_settlement must be positive");
        }
        if !(0.0..1.0).contains(&self.limit_rate) || self.limit_rate == 0.0 {
            return bad("limit_rate must be in (0, 1)");
        }
        if self.ticks_of(self.pre_settlement).is_none() {
            return bad("pre_settlement must lie on the price tick");
        }
        if self.lower_ticks() > self.upper_ticks() || self.lower_ticks() <= 0 {
            return bad("price limits are empty");
        }
        if self.max_order_volume <= 0 {
            return bad("max_order_volume must be positive");
        }
        Ok(())
    }
}

/// The exchange's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Reject orders outside the instruments' trading sessions (off by default, so the
    /// demo trades at any hour).
    #[serde(default)]
    pub enforce_sessions: bool,
    /// Emit a full book snapshot after this many book deltas of one instrument, so a
    /// reader rebuilding the book replays a bounded tail.
    #[serde(default = "default_snapshot_every")]
    pub book_snapshot_every: u32,
    /// Most price levels per side in a book snapshot.
    #[serde(default = "default_snapshot_levels")]
    pub book_snapshot_levels: usize,
    /// The instruments.
    #[serde(rename = "instrument")]
    pub instruments: Vec<InstrumentSpec>,
}

fn default_snapshot_every() -> u32 {
    200
}

fn default_snapshot_levels() -> usize {
    50
}

impl SimConfig {
    /// Parses and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<SimConfig, Error> {
        let cfg: SimConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<SimConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Checks every instrument and that ids are unique.
    pub fn check(&self) -> Result<(), Error> {
        if self.instruments.is_empty() {
            return Err(Error::Config("no instruments configured".into()));
        }
        if self.book_snapshot_every == 0 || self.book_snapshot_levels == 0 {
            return Err(Error::Config(
                "book_snapshot_every and book_snapshot_levels must be positive".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for i in &self.instruments {
            i.check()?;
            if !seen.insert(i.id.clone()) {
                return Err(Error::Config(format!("instrument {} is configured twice", i.id)));
            }
        }
        Ok(())
    }
}

/// The default instruments: a handful of liquid Chinese futures.
pub const DEFAULT_CONFIG: &str = r#"
[[instrument]]
id = "SHFE.cu2512"
name = "沪铜2512"
price_tick = 10.0
volume_multiple = 5
margin_rate = 0.10
commission = 3.0
pre_settlement = 78000.0
limit_rate = 0.07
day = [["09:00:00", "10:15:00"], ["10:30:00", "11:30:00"], ["13:30:00", "15:00:00"]]
night = [["21:00:00", "25:00:00"]]

[[instrument]]
id = "SHFE.rb2601"
name = "螺纹钢2601"
price_tick = 1.0
volume_multiple = 10
margin_rate = 0.10
commission = 1.0
pre_settlement = 3100.0
limit_rate = 0.06
day = [["09:00:00", "10:15:00"], ["10:30:00", "11:30:00"], ["13:30:00", "15:00:00"]]
night = [["21:00:00", "23:00:00"]]

[[instrument]]
id = "DCE.m2601"
name = "豆粕2601"
price_tick = 1.0
volume_multiple = 10
margin_rate = 0.08
commission = 1.5
pre_settlement = 2900.0
limit_rate = 0.06
day = [["09:00:00", "10:15:00"], ["10:30:00", "11:30:00"], ["13:30:00", "15:00:00"]]
night = [["21:00:00", "23:00:00"]]

[[instrument]]
id = "CZCE.SR601"
name = "白糖601"
price_tick = 1.0
volume_multiple = 10
margin_rate = 0.07
commission = 3.0
pre_settlement = 5600.0
limit_rate = 0.06
day = [["09:00:00", "10:15:00"], ["10:30:00", "11:30:00"], ["13:30:00", "15:00:00"]]
night = [["21:00:00", "23:00:00"]]

[[instrument]]
id = "CFFEX.IF2512"
name = "沪深300指数2512"
price_tick = 0.2
volume_multiple = 300
margin_rate = 0.12
commission = 23.0
pre_settlement = 4500.0
limit_rate = 0.10
max_order_volume = 20
day = [["09:30:00", "11:30:00"], ["13:00:00", "15:00:00"]]
"#;

impl Default for SimConfig {
    fn default() -> Self {
        // The default text is part of the binary and tested; it cannot fail to parse.
        match Self::from_toml(DEFAULT_CONFIG) {
            Ok(c) => c,
            Err(e) => panic!("built-in configuration is invalid: {e}"),
        }
    }
}
