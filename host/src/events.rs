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
    /// This many swarm events were dropped because the host fell behind.
    Missed(u64),
}
