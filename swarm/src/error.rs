//! The swarm's typed errors. Each names the peer or address it is about.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{ConnError, GateStage, Multiaddr, PeerId, ResourceError, TransportError};

/// Which of the swarm's own limits refused a stream. (Connection limits are the
/// resource manager's: see [`SwarmError::Resource`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_streams_per_connection`.
    StreamsPerConnection,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::StreamsPerConnection => "streams per connection",
        })
    }
}

/// Why dialing one address failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AddrDialError {
    /// The transport failed (connect, handshake, peer ID mismatch...). Shared so that
    /// every caller of a shared dial sees the same error.
    #[error(transparent)]
    Transport(Arc<TransportError>),
    /// The address dial did not finish within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The gater's `intercept_addr_dial` refused the address.
    #[error("refused by the connection gater")]
    Gated,
    /// The address is backing off after earlier failures.
    #[error("backing off after earlier failures")]
    Backoff,
    /// No transport can dial the address.
    #[error("no transport for this address")]
    NoTransport,
    /// The address cannot be dialed (unspecified, multicast, link-local) or the
    /// application's address filter refused it.
    #[error("address filtered out (undialable or refused by the address filter)")]
    Filtered,
    /// The connection was made but the swarm refused it (limit, closing).
    #[error("connection refused by the swarm: {0}")]
    Refused(String),
}

impl AddrDialError {
    /// A short, stable name for the kind of failure ("timeout", "connection_refused",
    /// "security", "backoff", ...), for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AddrDialError::Transport(e) => e.kind(),
            AddrDialError::Timeout(_) => "timeout",
            AddrDialError::Gated => "gated",
            AddrDialError::Backoff => "backoff",
            AddrDialError::NoTransport => "no_transport",
            AddrDialError::Filtered => "filtered",
            AddrDialError::Refused(_) => "refused",
        }
    }
}

/// Lists each address tried and why it failed, one per line.
#[derive(Debug, Clone, Default)]
pub struct AddrErrors(pub Vec<(Multiaddr, AddrDialError)>);

impl fmt::Display for AddrErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (addr, e) in &self.0 {
            write!(f, "\n  * [{addr}] {e}")?;
        }
        Ok(())
    }
}

/// What a swarm operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SwarmError {
    /// The swarm is closed (or shutting down); nothing more can be done with it.
    #[error("swarm closed")]
    Closed,
    /// There is no address to dial this peer on.
    #[error("no addresses to dial peer {0}")]
    NoAddresses(PeerId),
    /// A dial to our own peer ID, or a connection that turned out to be to ourselves.
    #[error("dial to self attempted")]
    DialSelf,
    /// Every address of the peer is backing off after recent failures.
    #[error("all addresses of peer {0} are backing off")]
    DialBackoff(PeerId),
    /// Every address tried failed; each is listed with its cause.
    #[error("failed to dial {peer}:{errors}")]
    Dial {
        /// The peer dialed.
        peer: PeerId,
        /// Each address tried and why it failed.
        errors: AddrErrors,
    },
    /// Dialing one address (with [`crate::Swarm::dial_addr`]) failed.
    #[error("failed to dial {addr}: {error}")]
    DialAddr {
        /// The address dialed.
        addr: Multiaddr,
        /// Why.
        error: AddrDialError,
    },
    /// The whole dial did not finish within the per-call timeout.
    #[error("dial to {peer} timed out after {timeout:?}")]
    DialTimeout {
        /// The peer dialed.
        peer: PeerId,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection gater refused.
    #[error("connection gater refused peer {peer:?} at the {stage} stage")]
    Gated {
        /// The peer, when known.
        peer: Option<PeerId>,
        /// Where it refused.
        stage: GateStage,
    },
    /// The resource manager refused (a stream limit of the peer, the protocol or the
    /// system).
    #[error("resource limit for peer {peer}: {source}")]
    Resource {
        /// The peer concerned.
        peer: PeerId,
        /// The limit that refused.
        source: ResourceError,
    },
    /// A limit of the swarm refused the stream.
    #[error("limit exceeded: {what} (peer {peer})")]
    LimitExceeded {
        /// Which limit.
        what: Limit,
        /// The peer concerned.
        peer: PeerId,
    },
    /// The remote proved another identity than the one expected.
    #[error("peer ID mismatch: expected {expected}, got {actual}")]
    PeerIdMismatch {
        /// The peer we meant to reach.
        expected: PeerId,
        /// The peer the remote proved to be.
        actual: PeerId,
    },
    /// No transport handles this address.
    #[error("no transport for {0}")]
    NoTransport(Multiaddr),
    /// Two transports for the same multiaddr protocol.
    #[error("a transport for protocol {0} is already registered")]
    DuplicateTransport(&'static str),
    /// The address (or the same requested address) is already listened on.
    #[error("already listening on {0}")]
    AlreadyListening(Multiaddr),
    /// No listener on this address.
    #[error("not listening on {0}")]
    NotListening(Multiaddr),
    /// The transport could not listen.
    #[error("listening on {addr} failed: {error}")]
    Listen {
        /// The address asked for.
        addr: Multiaddr,
        /// What the transport said.
        error: Arc<TransportError>,
    },
    /// Not connected and told not to dial ([`crate::StreamOptions::no_dial`]).
    #[error("not connected to {0} and dialing is disabled for this call")]
    NoConn(PeerId),
    /// Opening a stream failed on the connection.
    #[error("opening a stream to {peer} failed: {error}")]
    Stream {
        /// The peer.
        peer: PeerId,
        /// What the connection said.
        error: ConnError,
    },
}
