//! Typed errors shared by the layers. Each names the address or peer it concerns.

use std::io;
use std::time::Duration;

use multiaddr::Multiaddr;

use crate::identity::PeerId;

/// A multiaddr that cannot be used, or a name that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// The multiaddr is well formed but not of a shape this code handles.
    #[error("unsupported multiaddr {addr}: {reason}")]
    Unsupported {
        /// The address in question.
        addr: Multiaddr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address already names another peer in its `/p2p` suffix.
    #[error("multiaddr {addr} names peer {existing}, not {wanted}")]
    PeerIdConflict {
        /// The address in question.
        addr: Multiaddr,
        /// The peer it names.
        existing: PeerId,
        /// The peer the caller wanted to append.
        wanted: PeerId,
    },
    /// DNS resolution of a `/dns*` multiaddr failed.
    #[error("resolving {addr} failed: {source}")]
    Resolve {
        /// The address in question.
        addr: Multiaddr,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
}

/// A transport could not dial, listen or accept.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is not one this transport handles.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// Connecting to the address failed.
    #[error("dial to {addr} failed: {source}")]
    Dial {
        /// The address dialed.
        addr: Multiaddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Connecting took longer than the transport's connect timeout.
    #[error("dial to {addr} timed out after {timeout:?}")]
    DialTimeout {
        /// The address dialed.
        addr: Multiaddr,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The address to listen on is taken (and port reuse is off or not possible).
    #[error("cannot listen on {addr}: address already in use")]
    AddrInUse {
        /// The address asked for.
        addr: Multiaddr,
    },
    /// Setting up a listener failed for another reason.
    #[error("listen on {addr} failed: {source}")]
    Listen {
        /// The address asked for.
        addr: Multiaddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// Accepting failed with an error that ends the listener.
    #[error("accept on {addr} failed: {source}")]
    Accept {
        /// The listener's address.
        addr: Multiaddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The listener has been closed (by its owner, or after a fatal accept error).
    #[error("listener on {addr} is closed")]
    ListenerClosed {
        /// The listener's address.
        addr: Multiaddr,
    },
    /// The raw connection was made but upgrading it (security, muxer) failed.
    #[error("upgrading the connection with {addr} failed: {source}")]
    Upgrade {
        /// The remote address.
        addr: Multiaddr,
        /// What failed.
        #[source]
        source: UpgradeError,
    },
    /// The transport itself has been closed.
    #[error("the transport is closed")]
    TransportClosed,
    /// The resource manager refused the connection before it was made.
    #[error("connection to {addr} refused by the resource manager: {source}")]
    Resource {
        /// The address.
        addr: Multiaddr,
        /// The limit that refused it.
        #[source]
        source: crate::rcmgr::ResourceError,
    },
}

impl TransportError {
    /// A short, stable name for the kind of failure ("connection_refused", "timeout",
    /// "security", "peer_id_mismatch", ...), for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Addr(_) => "bad_address",
            TransportError::Dial { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "connection_refused",
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                    "connection_reset"
                }
                io::ErrorKind::TimedOut => "timeout",
                io::ErrorKind::AddrNotAvailable | io::ErrorKind::NetworkUnreachable => {
                    "unreachable"
                }
                _ => "io",
            },
            TransportError::DialTimeout { .. } => "timeout",
            TransportError::AddrInUse { .. } | TransportError::Listen { .. } => "listen",
            TransportError::Accept { .. } => "accept",
            TransportError::ListenerClosed { .. } | TransportError::TransportClosed => "closed",
            TransportError::Upgrade { source, .. } => source.kind(),
            TransportError::Resource { .. } => "resource_limit",
        }
    }

    /// The security error behind this one, if the failure was in the security handshake
    /// (for example [`SecurityError::PeerIdMismatch`]).
    pub fn security_error(&self) -> Option<&SecurityError> {
        match self {
            TransportError::Upgrade {
                source: UpgradeError::Security(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

/// Turning a raw connection into a capable one failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// multistream-select could not agree on a protocol for this step.
    #[error("negotiating the {step} protocol failed: {message}")]
    Negotiation {
        /// "security" or "muxer".
        step: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The security handshake failed.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The connection gater refused the connection.
    #[error("the connection gater refused the connection at the {0} stage")]
    Gated(crate::gater::GateStage),
    /// The whole upgrade took longer than its deadline.
    #[error("the upgrade did not finish within {0:?}")]
    Timeout(Duration),
    /// The remote sent no complete first negotiation message within the progress deadline.
    #[error("no protocol negotiation within the progress deadline of {0:?}")]
    NoProgress(Duration),
    /// The resource manager refused the connection (for example too many connections to
    /// this peer, or no memory left for its buffers).
    #[error(transparent)]
    Resource(#[from] crate::rcmgr::ResourceError),
    /// The listener refused our first security proposal after we had sent its handshake
    /// right behind it, and the connection then failed: a listener that cannot skip such
    /// bytes. A new connection that leads with the next protocol gets through.
    #[error(
        "the remote refused {refused} with its handshake already sent, then failed: {message}"
    )]
    PipelinedProposalRefused {
        /// The refused security protocol.
        refused: String,
        /// How the connection failed afterwards.
        message: String,
    },
}

impl UpgradeError {
    /// A short, stable name for the kind of failure, for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpgradeError::Negotiation { .. } | UpgradeError::PipelinedProposalRefused { .. } => {
                "negotiation"
            }
            UpgradeError::Security(SecurityError::PeerIdMismatch { .. }) => "peer_id_mismatch",
            UpgradeError::Security(_) => "security",
            UpgradeError::Gated(_) => "gated",
            UpgradeError::Timeout(_) | UpgradeError::NoProgress(_) => "handshake_timeout",
            UpgradeError::Resource(_) => "resource_limit",
        }
    }
}

/// Why a capable connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// This side closed it.
    Local,
    /// The remote side closed it cleanly.
    Remote,
    /// No traffic for longer than the idle timeout.
    IdleTimeout,
    /// An I/O or protocol error ended it; the text says which.
    Error(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Remote => f.write_str("closed by the remote peer"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Opening or accepting a stream on a capable connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The connection has ended; no stream can be opened or accepted on it.
    #[error("connection to {peer} is closed ({reason})")]
    Closed {
        /// The remote peer.
        peer: PeerId,
        /// Why the connection ended.
        reason: CloseReason,
    },
    /// The muxer refused to open another stream (the stream limit is reached).
    #[error("connection to {peer} has reached its stream limit")]
    StreamLimit {
        /// The remote peer.
        peer: PeerId,
    },
    /// The resource manager refused the stream (a stream limit, or no memory for its
    /// window).
    #[error("stream to {peer} refused by the resource manager: {source}")]
    Resource {
        /// The remote peer.
        peer: PeerId,
        /// The limit that refused it.
        #[source]
        source: crate::rcmgr::ResourceError,
    },
    /// The muxer failed.
    #[error("muxer error on the connection to {peer}: {message}")]
    Muxer {
        /// The remote peer.
        peer: PeerId,
        /// What the muxer said.
        message: String,
    },
}

/// A security handshake failed (TLS, Noise, plaintext, or QUIC's TLS).
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The remote authenticated as another peer than the one we dialed.
    #[error("peer ID mismatch: expected {expected}, the remote proved {actual}")]
    PeerIdMismatch {
        /// The peer we meant to reach.
        expected: PeerId,
        /// The peer the remote proved to be.
        actual: PeerId,
    },
    /// The remote's certificate breaks the libp2p TLS rules (or cannot be parsed).
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The remote's handshake payload is malformed or its signature does not verify.
    #[error("invalid handshake payload: {0}")]
    InvalidPayload(String),
    /// The handshake protocol itself failed (TLS alert, Noise decryption, bad framing).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The connection failed during the handshake.
    #[error("I/O during the handshake: {0}")]
    Io(#[from] io::Error),
}
