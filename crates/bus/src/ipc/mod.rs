//! Other processes over iceoryx2 shared memory (feature `ipc`, on by default).
//!
//! An [`IpcBridge`] is a subscriber of the bus that republishes every committed event
//! into iceoryx2 services — `bourse/<instance>/all` and one per topic
//! (`bourse/<instance>/orders`, `.../trades`, `.../accounts`, `.../positions`,
//! `.../market`, `.../users`, `.../other`) — and answers requests on
//! `bourse/<instance>/requests`: replay pages from the WAL, and durable cursors
//! (open, acknowledge) that hold the WAL like in-process ones.
//!
//! An [`IpcSubscriber`] in another process reads the frames in place in shared
//! memory (no copy of the payload; decode it when you need the event). iceoryx2
//! drops the oldest sample of a full subscriber queue without telling anyone; every
//! frame therefore carries `prev`, the last LSN of its service's topics before it,
//! so a subscriber that has seen everything up to `last` and receives `prev > last`
//! knows exactly what it missed, and either signals [`crate::Message::Lagged`] or
//! fetches the missing range from the bridge ([`crate::OnLag::Replay`]). The same
//! test covers a late start, a restarted bridge, and a subscriber that was killed.
//!
//! Dead nodes (a killed bridge or subscriber) leave their shared memory behind;
//! the bridge removes them at start and every [`IpcOptions::cleanup_interval`],
//! and [`cleanup_dead_nodes`] does it on demand.

mod bridge;
mod client;
mod frame;

use std::time::{Duration, Instant};

use iceoryx2::prelude::*;

pub use bridge::{IpcBridge, IpcOptions, IpcStats};
pub use client::{IpcStart, IpcSubscribeOptions, IpcSubscriber};

use crate::filter::Topic;
use crate::{Error, Result};

/// The iceoryx2 service carrying the topic `t` (every topic for `None`) of the
/// bridge `instance`.
pub fn service_name(instance: &str, t: Option<Topic>) -> String {
    format!("bourse/{instance}/{}", t.map_or("all", Topic::name))
}

fn requests_name(instance: &str) -> String {
    format!("bourse/{instance}/requests")
}

/// The event service a client signals after sending a request, so the request
/// server can sleep instead of polling.
fn wake_name(instance: &str) -> String {
    format!("bourse/{instance}/requests-wake")
}

fn check_instance(instance: &str) -> Result<()> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && instance.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        let why = format!("{instance:?}: use 1 to 64 of A-Z a-z 0-9 _ . -");
        Err(Error::BadOption { what: "instance", why })
    }
}

pub(crate) fn ipc_err(op: &'static str, e: impl std::fmt::Debug) -> Error {
    Error::Ipc { op, why: format!("{e:?}") }
}

/// A node of this process; our binaries handle signals themselves.
pub(crate) fn node() -> Result<Node<ipc::Service>> {
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| ipc_err("create node", e))
}

pub(crate) fn service(s: &str) -> Result<ServiceName> {
    s.try_into().map_err(|e| ipc_err("service name", e))
}

/// Removes the shared memory of iceoryx2 nodes whose process died (on this
/// machine, for every instance) and returns how many were cleaned up.
pub fn cleanup_dead_nodes() -> Result<usize> {
    let mut removed = 0;
    Node::<ipc::Service>::list(Config::global_config(), |state| {
        if let NodeState::<ipc::Service>::Dead(view) = state {
            match view.try_remove_stale_resources() {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(error = ?e, "could not remove a dead iceoryx2 node"),
            }
        }
        CallbackProgression::Continue
    })
    .map_err(|e| ipc_err("list nodes", e))?;
    Ok(removed)
}

/// How many iceoryx2 nodes on this machine belong to dead processes.
pub fn dead_nodes() -> Result<usize> {
    let mut dead = 0;
    Node::<ipc::Service>::list(Config::global_config(), |state| {
        if matches!(state, NodeState::<ipc::Service>::Dead(_)) {
            dead += 1;
        }
        CallbackProgression::Continue
    })
    .map_err(|e| ipc_err("list nodes", e))?;
    Ok(dead)
}

/// Spins, then sleeps for doubling periods up to 1 ms, until a deadline: the wait of
/// a poller that must not burn a core while idle nor add much latency while busy.
/// While spinning it reads the clock only every [`Backoff::CLOCK_EVERY`] polls, so a
/// poll costs what the poll itself costs and an arriving frame is seen sooner.
pub(crate) struct Backoff {
    polls: u32,
    sleeps: u32,
    spin_until: Instant,
    deadline: Instant,
}

impl Backoff {
    /// Spinning polls between two clock reads (a poll is tens of nanoseconds, so
    /// the spin and the deadline are kept to within a few microseconds).
    const CLOCK_EVERY: u32 = 64;

    /// Starts waiting now: spin for `spin`, give up after `timeout`.
    pub fn new(spin: Duration, timeout: Duration) -> Backoff {
        let now = Instant::now();
        Backoff { polls: 0, sleeps: 0, spin_until: now + spin, deadline: now + timeout }
    }

    /// Waits a little before the next poll; false once the deadline has passed.
    pub fn wait(&mut self) -> bool {
        if self.sleeps == 0 {
            self.polls = self.polls.wrapping_add(1);
            if !self.polls.is_multiple_of(Self::CLOCK_EVERY) {
                std::hint::spin_loop();
                return true;
            }
        }
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        if now < self.spin_until {
            std::hint::spin_loop();
            return true;
        }
        let us = (1u64 << self.sleeps.min(10)).min(1000);
        self.sleeps += 1;
        std::thread::sleep(Duration::from_micros(us).min(self.deadline - now));
        true
    }
}
