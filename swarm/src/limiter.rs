//! Limits on address dials in flight, for the whole swarm and per peer. (Connection
//! limits are the resource manager's, checked before each handshake.)

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::SwarmConfig;

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
