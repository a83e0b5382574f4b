//! Host events.

use strata_core::PeerId;
use strata_swarm::SwarmEvent;

use crate::identify::IdentifyInfo;

/// Something that happened in the host.
#[derive(Debug, Clone)]
pub enum HostEvent {
    /// An event of the swarm (connections, connectedness, listeners).
    Swarm(SwarmEvent),
    /// Identify finished on a connection (or a push arrived): the peerstore is updated.
    Identified {
        /// The peer.
        peer: PeerId,
        /// What it told us.
        info: Box<IdentifyInfo>,
    },
    /// Identify failed on a connection.
    IdentifyFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: String,
    },
    /// A keep-alive ping (see [`crate::HostBuilder::ping_interval`]) came back.
    Pinged {
        /// The peer.
        peer: PeerId,
        /// The round-trip time.
        rtt: std::time::Duration,
    },
    /// A supervised service failed and its policy does not restart it (a `Required`
    /// one shuts the host down).
    ServiceFailed {
        /// The service.
        name: String,
        /// Why.
        error: String,
    },
    /// A supervised service failed and is restarted after `backoff`.
    ServiceRestarted {
        /// The service.
        name: String,
        /// Its restarts so far, this one included.
        restarts: u64,
        /// Why it failed.
        error: String,
        /// How long until it starts again.
        backoff: std::time::Duration,
    },
    /// This many swarm events were dropped because the host fell behind.
    Missed(u64),
}
