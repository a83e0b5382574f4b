//! Limits: address dials in flight (whole swarm and per peer) and open connections
//! (total, by direction, per peer). Checks and counts happen together under one short
//! lock so two connections racing for the last slot cannot both get it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_core::{Direction, PeerId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::SwarmConfig;
use crate::error::Limit;

/// The global bound on address dials in flight; each peer's dial worker adds its own
/// per-peer semaphore on top.
pub(crate) struct DialLimiter {
    global: Arc<Semaphore>,
    per_peer: usize,
}

impl DialLimiter {
    pub(crate) fn new(config: &SwarmConfig) -> Self {
        DialLimiter {
            global: Arc::new(Semaphore::new(config.max_dials_in_flight.max(1))),
            per_peer: config.max_dials_per_peer.max(1),
        }
    }

    /// A fresh per-peer bound, for one dial worker.
    pub(crate) fn peer_semaphore(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.per_peer))
    }

    /// Waits for a global slot. Fails only if the semaphore is closed (never here).
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.global.clone().acquire_owned().await.ok()
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    inbound: usize,
    outbound: usize,
    per_peer: HashMap<PeerId, usize>,
}

/// Counts open connections against the configured limits.
pub(crate) struct ConnLimiter {
    max_total: usize,
    max_inbound: usize,
    max_outbound: usize,
    max_per_peer: usize,
    counts: Mutex<Counts>,
}

impl ConnLimiter {
    pub(crate) fn new(config: &SwarmConfig) -> Self {
        ConnLimiter {
            max_total: config.max_connections,
            max_inbound: config.max_inbound_connections,
            max_outbound: config.max_outbound_connections,
            max_per_peer: config.max_connections_per_peer,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters only: never left half-changed by a panic.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a new connection, or says which limit refuses it.
    pub(crate) fn reserve(&self, peer: PeerId, dir: Direction) -> Result<(), Limit> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Limit::Connections);
        }
        match dir {
            Direction::Inbound if c.inbound >= self.max_inbound => {
                return Err(Limit::InboundConnections)
            }
            Direction::Outbound if c.outbound >= self.max_outbound => {
                return Err(Limit::OutboundConnections)
            }
            _ => {}
        }
        let n = c.per_peer.get(&peer).copied().unwrap_or(0);
        if n >= self.max_per_peer {
            return Err(Limit::ConnectionsPerPeer);
        }
        c.total += 1;
        match dir {
            Direction::Inbound => c.inbound += 1,
            Direction::Outbound => c.outbound += 1,
        }
        c.per_peer.insert(peer, n + 1);
        Ok(())
    }

    /// Gives back the slot of a connection that has ended.
    pub(crate) fn release(&self, peer: PeerId, dir: Direction) {
        let mut c = self.lock();
        c.total = c.total.saturating_sub(1);
        match dir {
            Direction::Inbound => c.inbound = c.inbound.saturating_sub(1),
            Direction::Outbound => c.outbound = c.outbound.saturating_sub(1),
        }
        if let Some(n) = c.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_peer.remove(&peer);
            }
        }
    }
}
