//! The DHT's errors: what a query ends with, and what one request to one peer ends with.

use strata_core::PeerId;
use strata_host::HostError;

use crate::proto::DecodeError;
use crate::record::RecordError;

/// What a DHT operation fails with.
#[derive(Debug, thiserror::Error)]
pub enum KadError {
    /// The lookup ended without finding what it looked for.
    #[error("not found")]
    NotFound,
    /// The lookup ran out of time (see [`crate::KadConfig::query_timeout`]).
    #[error("the query timed out")]
    Timeout,
    /// The routing table is empty, or no peer answered: nobody to ask.
    #[error("no peers to query")]
    NoPeers,
    /// Fewer peers than the quorum took the record.
    #[error("quorum not reached: {got} of {needed} peers")]
    QuorumFailed {
        /// The quorum.
        needed: usize,
        /// Peers that took it.
        got: usize,
    },
    /// The record is refused by its validator (or is too large).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The host has shut down.
    #[error("the host is shut down")]
    Closed,
}

/// What one request to one peer fails with.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The stream could not be opened (dial, negotiation, resource limits).
    #[error("{peer}: {source}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// Why.
        source: Box<HostError>,
    },
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not a valid message, or is too large.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The stream's scope had no memory for the answer.
    #[error("no memory for the message: {0}")]
    Resource(String),
    /// The stream ended before an answer.
    #[error("the stream ended before the answer")]
    Closed,
    /// The answer is of another type than the request.
    #[error("answer of type {got:?} to a {sent:?} request")]
    UnexpectedType {
        /// The request's type.
        sent: i32,
        /// The answer's type.
        got: i32,
    },
    /// The answer does not match the request (a PUT_VALUE not echoed).
    #[error("the answer does not match the request")]
    Mismatch,
    /// No answer within [`crate::KadConfig::request_timeout`].
    #[error("no answer in time")]
    Timeout,
}
