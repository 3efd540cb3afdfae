//! Simulated traders for the demo: a few accounts that quote around a drifting mid
//! price and now and then take liquidity, so the books, ticks and trades look alive.
//!
//! They are ordinary clients: every order and cancel they send is a request journaled
//! through [`Engine::submit`] and answered by the [`SimRunner`] like any other, so the
//! journal (not these threads) decides what happened.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bourse_engine::{Durability, Engine};
use bourse_model::{
    CancelRequested, Direction, Event, HedgeFlag, InstrumentId, Offset, OrderRequested, PriceType,
    TimeCondition, Transfer, TransferKind, VolumeCondition,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::runner::SimRunner;
use crate::Error;

/// How the simulated traders behave.
#[derive(Debug, Clone)]
pub struct ParticipantOptions {
    /// Trading accounts (`sim-1`, `sim-2`, ...).
    pub accounts: usize,
    /// Orders per second across all instruments.
    pub orders_per_second: u32,
    /// Each account's deposit, made once when the account is new.
    pub deposit: f64,
    /// Live orders per account and instrument before the oldest is cancelled.
    pub live_orders_max: usize,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for ParticipantOptions {
    fn default() -> Self {
        ParticipantOptions {
            accounts: 4,
            orders_per_second: 20,
            deposit: 50_000_000.0,
            live_orders_max: 6,
            seed: 7,
        }
    }
}

/// The running traders; dropping them stops the thread.
#[derive(Debug)]
pub struct Participants {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Participants {
    /// Funds the accounts that have no money yet and starts trading.
    pub fn start(
        engine: Arc<Engine>,
        sim: Arc<SimRunner>,
        opts: ParticipantOptions,
    ) -> Result<Participants, Error> {
        let accounts: Vec<String> =
            (1..=opts.accounts.max(1)).map(|i| format!("sim-{i}")).collect();
        let now = now_ns();
        let deposits: Vec<Event> = accounts
            .iter()
            .filter(|a| sim.with_exchange(|x| x.account(a).is_none()))
            .map(|a| {
                Event::Transfer(Transfer {
                    user_id: a.clone(),
                    kind: TransferKind::Deposit,
                    currency: "CNY".into(),
                    amount: opts.deposit,
                    datetime: now,
                    error_id: 0,
                    error_msg: String::new(),
                })
            })
            .collect();
        if !deposits.is_empty() {
            let range = engine.submit(&deposits, Durability::Buffered)?;
            sim.wait_processed(range.last.0, Duration::from_secs(10));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bourse-sim-traders".into())
                .spawn(move || trade(&engine, &sim, &accounts, &opts, &stop))
                .map_err(|e| Error::Recovery(format!("cannot start the traders: {e}")))?
        };
        Ok(Participants { stop, thread: Some(thread) })
    }

    /// Stops trading.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Participants {
    fn drop(&mut self) {
        self.halt();
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn trade(
    engine: &Engine,
    sim: &SimRunner,
    accounts: &[String],
    opts: &ParticipantOptions,
    stop: &AtomicBool,
) {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let instruments: Vec<(InstrumentId, f64, i64)> = sim.with_exchange(|x| {
        x.config()
            .instruments
            .iter()
            .map(|s| (s.id.clone(), s.price_tick, s.ticks_of(s.pre_settlement).unwrap_or(1)))
            .collect()
    });
    // Mid prices in ticks, drifting by a random walk inside the limits.
    let mut mids: Vec<i64> = instruments
        .iter()
        .map(|(id, _, pre)| {
            sim.with_exchange(|x| x.last_price(id))
                .and_then(|p| sim.with_exchange(|x| x.spec(id)?.ticks_of(p)))
                .unwrap_or(*pre)
        })
        .collect();
    // Order ids start from the clock so a restarted demo never repeats one.
    let mut next_id = (now_ns() / 1_000_000) as u64 * 1000;
    let mut mine: Vec<std::collections::VecDeque<(String, String)>> =
        vec![Default::default(); instruments.len() * accounts.len()];
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.orders_per_second.max(1)));
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(period);
        if sim.error().is_some() {
            return;
        }
        let i = rng.gen_range(0..instruments.len());
        let a = rng.gen_range(0..accounts.len());
        let (id, tick, pre) = &instruments[i];
        let (lower, upper) = sim.with_exchange(|x| {
            x.spec(id).map_or((*pre, *pre), |s| (s.lower_ticks(), s.upper_ticks()))
        });
        mids[i] = (mids[i] + rng.gen_range(-2..=2)).clamp(lower + 20, upper - 20);
        let account = &accounts[a];
        let direction = if rng.gen_bool(0.5) { Direction::Buy } else { Direction::Sell };
        let take = rng.gen_bool(0.15);
        let offset_ticks = if take { -rng.gen_range(1..4) } else { rng.gen_range(1..8) };
        let price_ticks = match direction {
            Direction::Buy => mids[i] - offset_ticks,
            Direction::Sell => mids[i] + offset_ticks,
        };
        let volume = rng.gen_range(1..=5);
        // Close what the opposite side holds, when there is enough of it.
        let offset = sim.with_exchange(|x| {
            let p = x.positions(account).find(|p| p.instrument_id == *id)?;
            let (free_his, free_today) = crate::exchange::closable(p, direction);
            let splits = x.spec(id).is_some_and(|s| s.splits_today());
            if free_his >= volume {
                Some(Offset::Close)
            } else if free_today >= volume {
                Some(if splits { Offset::CloseToday } else { Offset::Close })
            } else {
                None
            }
        });
        next_id += 1;
        let order_id = format!("t{next_id}");
        let request = Event::OrderRequested(OrderRequested {
            user_id: account.clone(),
            order_id: order_id.clone(),
            instrument_id: id.clone(),
            direction,
            offset: offset.unwrap_or(Offset::Open),
            volume,
            price_type: PriceType::Limit,
            limit_price: (price_ticks as f64 * tick * 1e6).round() / 1e6,
            volume_condition: VolumeCondition::Any,
            time_condition: if take { TimeCondition::Ioc } else { TimeCondition::Gfd },
            hedge_flag: HedgeFlag::Speculation,
            datetime: now_ns(),
        });
        let mut batch = vec![request];
        let slot = &mut mine[i * accounts.len() + a];
        if !take {
            slot.push_back((account.clone(), order_id));
        }
        while slot.len() > opts.live_orders_max {
            if let Some((user_id, order_id)) = slot.pop_front() {
                let live = sim.with_exchange(|x| x.live_order(&user_id, &order_id).is_some());
                if live {
                    batch.push(Event::CancelRequested(CancelRequested {
                        user_id,
                        order_id,
                        datetime: now_ns(),
                    }));
                }
            }
        }
        if let Err(e) = engine.submit(&batch, Durability::Buffered) {
            tracing::warn!(error = %e, "sim traders: submit failed; stopping");
            return;
        }
    }
}
