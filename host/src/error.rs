//! Host errors.

use strata_core::PeerId;
use strata_swarm::SwarmError;

/// What a host operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The swarm refused or failed (dial, limits, closed...).
    #[error(transparent)]
    Swarm(SwarmError),
    /// `new_stream` was given no protocol.
    #[error("new_stream needs at least one protocol")]
    NoProtocols,
    /// The remote accepted none of the protocols, or negotiation failed.
    #[error("negotiating a protocol with {peer} failed: {message}")]
    Negotiation {
        /// The remote peer.
        peer: PeerId,
        /// What went wrong.
        message: String,
    },
    /// The resource manager refused the stream for its protocol (that protocol's
    /// stream limit); the stream was reset.
    #[error("stream to {peer} for {protocol} refused by the resource manager: {source}")]
    Resource {
        /// The remote peer.
        peer: PeerId,
        /// The protocol negotiated.
        protocol: String,
        /// The limit that refused it.
        source: strata_core::ResourceError,
    },
    /// A message protocol of this name is registered already.
    #[error("message protocol {0} is registered already")]
    ProtocolExists(String),
    /// A service of this name is already running.
    #[error("a service named {0:?} exists already")]
    ServiceExists(String),
    /// A ping failed.
    #[error(transparent)]
    Ping(#[from] crate::ping::PingError),
    /// A perf run failed.
    #[error(transparent)]
    Perf(#[from] crate::perf::PerfError),
}
