//! Stream muxers: many streams over one secured connection.

pub mod yamux;

pub use self::yamux::{Yamux, YamuxConfig, YamuxConfigError, YAMUX_PROTOCOL_ID};

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{CloseReason, ConnError, ConnScope, Direction, PeerId, Stream};

use crate::security::SecureStream;

/// A multiplexed connection as a muxer provides it, before the upgrader adds the peer and
/// address information that makes it a [`strata_core::CapableConn`]. All methods may be
/// called concurrently from many tasks.
#[async_trait]
pub trait MuxedConn: Send + Sync + 'static {
    /// Opens a new outbound stream.
    async fn open_stream(&self) -> Result<Stream, ConnError>;
    /// Waits for the next inbound stream.
    async fn accept_stream(&self) -> Result<Stream, ConnError>;
    /// Sends Go Away: no new streams either way; open streams go on.
    fn go_away(&self);
    /// Closes the connection (yamux: GoAway), ends its streams, and returns once the
    /// connection's task has ended.
    async fn close(&self);
    /// Drops the connection at once (the socket is reset), without a graceful close;
    /// `closed()` then resolves promptly.
    fn abort(&self);
    /// Waits until the connection has ended and says why.
    async fn closed(&self) -> CloseReason;
    /// True once the connection has ended.
    fn is_closed(&self) -> bool;
}

/// A stream muxer protocol, as go-libp2p's `network.Multiplexer`.
pub trait StreamMuxer: Send + Sync + 'static {
    /// The protocol ID negotiated for it, for example "/yamux/1.0.0".
    fn protocol_id(&self) -> &'static str;
    /// Runs the muxer over a secured connection. `direction` says who dialed (the dialer
    /// is the yamux client); `remote_peer` names the peer in errors. The connection holds
    /// `scope` until it ends, and reserves its windows from it.
    fn new_conn(
        &self,
        io: Box<dyn SecureStream>,
        direction: Direction,
        remote_peer: PeerId,
        scope: Arc<ConnScope>,
    ) -> Arc<dyn MuxedConn>;
}
