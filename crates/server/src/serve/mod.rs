//! `bourse serve` and `bourse demo`: the engine, the bus and (for the demo) the
//! simulated exchange behind HTTP and WebSocket (axum).
//!
//! The server wires crates together and holds no business logic: events are validated
//! by the model, written by the engine, matched by the simulator, and streamed by the
//! bus. Endpoints are listed in `docs/server.md`.

mod config;
mod http;
mod metrics;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bourse_bus::{Bus, BusOptions};
use bourse_engine::{Engine, EngineOptions, NewUser};
use bourse_sim::participants::{ParticipantOptions, Participants};
use bourse_sim::runner::{SimOptions, SimRunner};
use bourse_sim::SimConfig;
use parking_lot::Mutex;
use rand::RngCore;

pub use config::ServerConfig;

/// What runs besides the server.
#[derive(Debug, Clone)]
pub struct Mode {
    /// Run the simulated exchange.
    pub sim: bool,
    /// Create the demo users (with the exchange).
    pub demo: bool,
    /// Run simulated traders (with the exchange).
    pub traders: bool,
    /// Orders per second of the simulated traders.
    pub demo_rate: u32,
}

/// Logged-in sessions: token → (user, login time); the oldest dropped past the bound,
/// any older than the time to live refused.
pub(crate) struct Sessions {
    max: usize,
    ttl: Duration,
    inner: Mutex<(HashMap<String, Session>, VecDeque<String>)>,
}

/// Who logged in, and when.
type Session = (String, std::time::Instant);

impl Sessions {
    fn new(max: usize, ttl: Duration) -> Sessions {
        Sessions { max, ttl, inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    pub(crate) fn create(&self, user: &str) -> String {
        let token = random_token();
        let mut g = self.inner.lock();
        g.0.insert(token.clone(), (user.to_string(), std::time::Instant::now()));
        g.1.push_back(token.clone());
        while g.1.len() > self.max {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        token
    }

    pub(crate) fn user(&self, token: &str) -> Option<String> {
        let g = self.inner.lock();
        let (user, at) = g.0.get(token)?;
        (at.elapsed() < self.ttl).then(|| user.clone())
    }
}

/// Everything a handler needs.
pub(crate) struct App {
    pub(crate) engine: Arc<Engine>,
    pub(crate) bus: Bus,
    pub(crate) sim: Option<Arc<SimRunner>>,
    pub(crate) cfg: ServerConfig,
    pub(crate) admin_token: String,
    pub(crate) sessions: Sessions,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) ws_connections: AtomicUsize,
    pub(crate) sim_config: SimConfig,
}

fn random_token() -> String {
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The demo's users: (login, password, trading account).
pub const DEMO_USERS: [(&str, &str, &str); 2] =
    [("demo1", "bourse-demo-1", "demo1"), ("demo2", "bourse-demo-2", "demo2")];

/// Runs the server until SIGINT/SIGTERM, then drains and closes the store cleanly.
pub fn run(cfg: ServerConfig, mode: Mode) -> anyhow::Result<()> {
    cfg.check()?;
    let sim_config = match &cfg.sim_config {
        Some(p) => SimConfig::load(p)?,
        None => SimConfig::default(),
    };
    // (The engine's open syncs the new directory into its parent.)
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create {}", cfg.data.display()))?;
    let mut opts = EngineOptions {
        wal_hold_at_open: bourse_bus::cursor_floor(&cfg.data)?,
        argon2_memory_kib: cfg.argon2_memory_kib,
        ..EngineOptions::default()
    };
    opts.wal.segment_bytes = cfg.wal_segment_bytes;
    opts.sync_interval = (cfg.wal_sync_ms > 0).then(|| Duration::from_millis(cfg.wal_sync_ms));
    eprintln!("opening {} ...", cfg.data.display());
    let engine = Arc::new(
        Engine::open_with(bourse_fs::RealFs::shared(), &cfg.data, opts, &mut |p| {
            if p.done && p.records > 0 {
                eprintln!(
                    "  replayed {} records ({:.1} MB) in {:.2?}",
                    p.records,
                    p.bytes as f64 / 1e6,
                    p.elapsed
                );
            }
        })
        .map_err(|e| {
            // A demo directory left by a build of another key layout holds only
            // simulated data: say how to start afresh.
            let hint = match (&e, mode.demo) {
                (bourse_engine::Error::Layout { .. }, true) => format!(
                    " (the demo's data is simulated: remove {} to start afresh)",
                    cfg.data.display()
                ),
                _ => String::new(),
            };
            anyhow::Error::new(e)
                .context(format!("cannot open the store in {}{hint}", cfg.data.display()))
        })?,
    );
    let bus = Bus::attach(engine.clone(), BusOptions::default())?;
    let sim = if mode.sim {
        let runner = SimRunner::start(engine.clone(), sim_config.clone(), SimOptions::default())?;
        let r = runner.recovery();
        eprintln!(
            "exchange rebuilt from {} ({} requests replayed) in {:.2?}{}",
            if r.snapshot_lsn > 0 {
                format!("its snapshot at LSN {}", r.snapshot_lsn)
            } else {
                "the journal".to_string()
            },
            r.requests,
            r.elapsed,
            if r.answered_now > 0 {
                format!(" ({} answers a crash had lost journaled now)", r.answered_now)
            } else {
                String::new()
            }
        );
        Some(Arc::new(runner))
    } else {
        None
    };
    let admin_token = match &cfg.admin_token {
        Some(t) => t.clone(),
        None => match std::env::var("BOURSE_ADMIN_TOKEN") {
            Ok(t) if t.len() >= 16 => t,
            Ok(_) => anyhow::bail!("BOURSE_ADMIN_TOKEN must be at least 16 characters"),
            Err(_) => random_token(),
        },
    };
    if mode.demo {
        if let Some(sim) = &sim {
            demo_users(&engine, sim)?;
        }
    }
    let participants = match (&sim, mode.traders) {
        (Some(sim), true) => Some(Participants::start(
            engine.clone(),
            sim.clone(),
            ParticipantOptions {
                orders_per_second: mode.demo_rate.max(1),
                ..ParticipantOptions::default()
            },
        )?),
        _ => None,
    };
    let app = Arc::new(App {
        engine: engine.clone(),
        bus,
        sim: sim.clone(),
        sessions: Sessions::new(cfg.sessions_max, Duration::from_secs(cfg.session_ttl_secs)),
        admin_token: admin_token.clone(),
        metrics: metrics::Metrics::default(),
        ws_connections: AtomicUsize::new(0),
        sim_config,
        cfg: cfg.clone(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bourse-http")
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        println!("bourse listening on http://{addr}");
        println!("  admin token: {admin_token}");
        if mode.demo {
            for (user, password, account) in DEMO_USERS {
                println!("  demo user: {user} / {password} (account {account})");
            }
            println!("  try: curl -s http://{addr}/api/v1/ticks?instrument=SHFE.rb2601\\&limit=3 -H 'authorization: Bearer {admin_token}'");
        }
        println!("ready");
        // Small frames (events, order answers) must leave at once: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, http::router(app.clone()))
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })?;
    eprintln!("shutting down: stopping intake, draining the exchange, checkpointing");
    drop(participants);
    drop(rt);
    // Reader threads of closed /ws/events connections notice within one heartbeat.
    let drain = Duration::from_millis(cfg.heartbeat_ms.saturating_mul(3).max(2000));
    let app = unwrap_within(app, drain, "connections still hold the store")?;
    let App { engine: app_engine, bus, sim: app_sim, .. } = app;
    drop(app_engine);
    drop(sim);
    if let Some(sim) = app_sim {
        unwrap_within(sim, drain, "the exchange is still in use")?.stop()?;
    }
    drop(bus);
    engine.checkpoint()?;
    let engine = unwrap_within(engine, drain, "the store is still in use")?;
    engine.close()?;
    eprintln!("closed cleanly");
    Ok(())
}

/// Takes `arc` back once every other reference is gone, waiting up to `timeout`.
fn unwrap_within<T>(mut arc: Arc<T>, timeout: Duration, what: &str) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match Arc::try_unwrap(arc) {
            Ok(v) => return Ok(v),
            Err(a) if std::time::Instant::now() < deadline => {
                arc = a;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => anyhow::bail!("{what} after {timeout:?}; closing without a checkpoint"),
        }
    }
}

/// Registers the demo users, binds their accounts and funds them (once).
fn demo_users(engine: &Engine, sim: &SimRunner) -> anyhow::Result<()> {
    for (user, password, account) in DEMO_USERS {
        if engine.user(user)?.is_none() {
            engine.register_user(&NewUser {
                user_id: user.into(),
                user_name: format!("Demo user {user}"),
                password: password.into(),
                ..NewUser::default()
            })?;
            engine.bind_account(user, account)?;
        }
        if sim.with_exchange(|x| x.account(account).is_none()) {
            let r = engine.submit(
                &[bourse_model::Event::Transfer(bourse_model::Transfer {
                    user_id: account.into(),
                    kind: bourse_model::TransferKind::Deposit,
                    currency: "CNY".into(),
                    amount: 1_000_000.0,
                    datetime: http::now_ns(),
                    error_id: 0,
                    error_msg: String::new(),
                })],
                bourse_engine::Durability::Durable,
            )?;
            sim.wait_processed(r.last.0, Duration::from_secs(10));
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

impl App {
    pub(crate) fn ws_slot(self: &Arc<Self>) -> Option<WsSlot> {
        let n = self.ws_connections.fetch_add(1, Ordering::AcqRel);
        if n >= self.cfg.ws_connections_max {
            self.ws_connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WsSlot(self.clone()))
    }
}

/// A counted `/ws/events` connection; released when dropped.
pub(crate) struct WsSlot(Arc<App>);

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.0.ws_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sessions_are_bounded_and_expire() {
        let s = Sessions::new(2, Duration::from_secs(3600));
        let (a, b, c) = (s.create("a"), s.create("b"), s.create("c"));
        assert_eq!(s.user(&a), None, "the oldest is dropped past the bound");
        assert_eq!((s.user(&b).as_deref(), s.user(&c).as_deref()), (Some("b"), Some("c")));
        assert_eq!(s.user("not a token"), None);
        let short = Sessions::new(2, Duration::from_millis(30));
        let t = short.create("a");
        assert_eq!(short.user(&t).as_deref(), Some("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(short.user(&t), None, "an expired login is refused");
    }
}
