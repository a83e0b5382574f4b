//! # strata-upgrader: from a raw connection to a capable one
//!
//! Takes the raw byte streams that transports make and upgrades them: multistream-select
//! picks a security protocol (TLS 1.3 or Noise), the handshake authenticates the remote
//! peer, then a stream muxer (yamux) is picked, inside the handshake when both sides
//! support it (TLS ALPN, Noise extensions) or in a second negotiation. The upgraded
//! listener runs handshakes in parallel under a deadline and holds a bounded queue of
//! finished connections. It hands the swarm [`strata_core::CapableConn`]s, through
//! [`Upgraded`], a capable [`strata_core::Transport`] made of any raw one.

pub mod config;
pub mod listener;
pub mod multistream;
pub mod muxer;
pub mod security;
pub mod transport;
pub mod upgrader;

pub use config::{UpgraderConfig, UpgraderConfigError};
pub use listener::UpgradedListener;
pub use muxer::{MuxedConn, StreamMuxer, Yamux, YamuxConfig, YamuxConfigError, YAMUX_PROTOCOL_ID};
pub use security::{
    NoiseTransport, PlaintextTransport, SecureStream, SecureTransport, Secured, SecurityScope,
    TlsTransport, TLS_PROTOCOL_ID,
};
pub use transport::Upgraded;
pub use upgrader::{UpgradedConn, Upgrader};
