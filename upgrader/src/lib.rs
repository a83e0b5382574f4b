//! # strata-upgrader: from a raw connection to a capable one
//!
//! Takes the raw byte streams that transports make and upgrades them: multistream-select
//! picks a security protocol, the handshake authenticates the remote peer, then a stream
//! muxer is negotiated. It hands the swarm [`strata_core::CapableConn`]s.

pub mod multistream;
pub mod muxer;
pub mod security;

pub use muxer::{MuxedConn, StreamMuxer, Yamux, YamuxConfig, YamuxConfigError, YAMUX_PROTOCOL_ID};
pub use security::{
    NoiseTransport, PlaintextTransport, SecureStream, SecureTransport, Secured, TlsTransport,
    TLS_PROTOCOL_ID,
};
