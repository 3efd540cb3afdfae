//! The server's configuration (TOML; command-line flags override it).
//!
//! ```toml
//! listen = "127.0.0.1:7070"
//! data = "./bourse-data"
//! admin_token = "change-me"          # bearer token for ingest and admin endpoints
//! body_bytes_max = 16777216          # largest request body
//! batch_events_max = 4096            # events in one POST /api/v1/events
//! page_rows_max = 10000              # rows in one query page
//! sessions_max = 10000               # logged-in sessions kept
//! session_ttl_secs = 86400           # a login is valid this long
//! ws_connections_max = 256           # /ws/events connections at once
//! ws_queue_events = 4096             # events queued per connection before it lags
//! heartbeat_ms = 1000                # idle /ws/events heartbeat
//! answer_timeout_ms = 5000           # how long order entry waits for the exchange
//! wal_segment_bytes = 1073741824     # WAL segment size (pre-written ahead of use)
//! wal_sync_ms = 100                  # sync the WAL this often when Buffered writes wait (0: never)
//! argon2_memory_kib = 19456          # password hashing cost
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every limit of the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data: PathBuf,
    /// Bearer token of the ingest and admin endpoints; generated and printed when unset.
    pub admin_token: Option<String>,
    /// Largest request body in bytes.
    pub body_bytes_max: usize,
    /// Most events in one ingest batch.
    pub batch_events_max: usize,
    /// Most rows in one query page.
    pub page_rows_max: usize,
    /// Most logged-in sessions (the oldest is dropped past it).
    pub sessions_max: usize,
    /// How long a login stays valid, in seconds.
    pub session_ttl_secs: u64,
    /// Most `/ws/events` connections at once.
    pub ws_connections_max: usize,
    /// Events queued per `/ws/events` connection.
    pub ws_queue_events: usize,
    /// Heartbeat period of an idle `/ws/events` connection, in milliseconds.
    pub heartbeat_ms: u64,
    /// How long order entry waits for the exchange's answer, in milliseconds.
    pub answer_timeout_ms: u64,
    /// The simulated exchange's instruments (TOML, see `bourse_sim::config`); the
    /// built-in set when unset.
    pub sim_config: Option<PathBuf>,
    /// WAL segment size in bytes.
    pub wal_segment_bytes: u64,
    /// Sync the WAL this often when records were appended since the last sync, so that
    /// `Buffered` writes (the simulator's, and ingest asking for `buffered`) survive a
    /// power loss older than about this; 0 turns the timer off
    /// (`EngineOptions::sync_interval`).
    pub wal_sync_ms: u64,
    /// Argon2 memory cost of password hashes, in KiB.
    pub argon2_memory_kib: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data: PathBuf::from("./bourse-data"),
            admin_token: None,
            body_bytes_max: 16 << 20,
            batch_events_max: 4096,
            page_rows_max: 10_000,
            sessions_max: 10_000,
            session_ttl_secs: 86_400,
            ws_connections_max: 256,
            ws_queue_events: 4096,
            heartbeat_ms: 1000,
            answer_timeout_ms: 5000,
            sim_config: None,
            wal_segment_bytes: 1 << 30,
            wal_sync_ms: 100,
            argon2_memory_kib: 19 * 1024,
        }
    }
}

impl ServerConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let cfg: ServerConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks that every limit is usable.
    pub fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("body_bytes_max", self.body_bytes_max),
            ("batch_events_max", self.batch_events_max),
            ("page_rows_max", self.page_rows_max),
            ("sessions_max", self.sessions_max),
            ("ws_connections_max", self.ws_connections_max),
            ("ws_queue_events", self.ws_queue_events),
        ];
        for (name, v) in positive {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        anyhow::ensure!(
            self.wal_segment_bytes >= 1 << 20,
            "wal_segment_bytes must be at least 1 MiB"
        );
        anyhow::ensure!(self.argon2_memory_kib >= 8, "argon2_memory_kib must be at least 8");
        anyhow::ensure!(self.session_ttl_secs > 0, "session_ttl_secs must be positive");
        anyhow::ensure!(self.heartbeat_ms > 0, "heartbeat_ms must be positive");
        if let Some(t) = &self.admin_token {
            anyhow::ensure!(t.len() >= 16, "admin_token must be at least 16 characters");
        }
        Ok(())
    }
}
