//! A QUIC connection as a [`CapableConn`]: authenticated by its TLS handshake and
//! multiplexed by QUIC itself, so no upgrader runs.

use async_trait::async_trait;
use quinn::{ConnectionError, VarInt};
use rustls::pki_types::CertificateDer;
use strata_core::tls::verify_certificate;
use strata_core::{
    CapableConn, CloseReason, ConnError, ConnState, Direction, Multiaddr, PeerId, PublicKey,
    SecurityError, Stream,
};

use super::stream::QuicStream;

/// The application close code of a normal close (libp2p defines no others for QUIC yet).
pub(crate) const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);

/// An authenticated QUIC connection to one peer.
pub struct QuicConn {
    conn: quinn::Connection,
    local_peer: PeerId,
    remote_peer: PeerId,
    remote_key: PublicKey,
    local_addr: Multiaddr,
    remote_addr: Multiaddr,
    direction: Direction,
    state: ConnState,
    /// The peer's concurrent-stream limit, grown with use.
    streams: std::sync::Arc<super::stream::StreamBudget>,
}

/// What Strata reports for every QUIC connection. Security and muxing are QUIC's own, so
/// like go-libp2p (which reports only the transport) no security protocol ID is named;
/// the muxer is "quic", as the core docs say.
fn quic_state(handshake: std::time::Duration) -> ConnState {
    ConnState {
        transport: "quic-v1",
        security: String::new(),
        muxer: "quic".into(),
        used_early_muxer_negotiation: false,
        handshake,
    }
}

impl QuicConn {
    pub(crate) fn new(
        conn: quinn::Connection,
        local_peer: PeerId,
        remote_key: PublicKey,
        local_addr: Multiaddr,
        remote_addr: Multiaddr,
        direction: Direction,
        handshake: std::time::Duration,
    ) -> Self {
        QuicConn {
            conn,
            local_peer,
            remote_peer: remote_key.to_peer_id(),
            remote_key,
            local_addr,
            remote_addr,
            direction,
            state: quic_state(handshake),
            streams: super::stream::StreamBudget::new(256),
        }
    }

    /// Sets the most streams the peer may have open at once (the limit grows to it).
    pub(crate) fn with_max_streams(mut self, max: u64) -> Self {
        self.streams = super::stream::StreamBudget::new(max);
        self
    }

    /// The underlying quinn connection (statistics, RTT, path MTU).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }

    fn closed_error(&self, err: ConnectionError) -> ConnError {
        ConnError::Closed {
            peer: self.remote_peer,
            reason: close_reason(&err),
        }
    }
}

impl std::fmt::Debug for QuicConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicConn")
            .field("remote_peer", &self.remote_peer)
            .field("local_addr", &self.local_addr)
            .field("remote_addr", &self.remote_addr)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// The remote's host key, from the one certificate it presented. The verifier already
/// checked it during the handshake; checking again here costs one signature verification
/// per connection and keeps this independent of how the config was built.
pub(crate) fn remote_public_key(conn: &quinn::Connection) -> Result<PublicKey, SecurityError> {
    let identity = conn.peer_identity().ok_or_else(|| {
        SecurityError::InvalidCertificate("the remote presented no certificate".into())
    })?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| SecurityError::Handshake("unexpected QUIC peer identity type".into()))?;
    match certs.as_slice() {
        [cert] => verify_certificate(cert.as_ref()),
        certs => Err(SecurityError::InvalidCertificate(format!(
            "expected exactly one certificate, got {}",
            certs.len()
        ))),
    }
}

/// Why a quinn connection ended, in core's terms.
pub(crate) fn close_reason(err: &ConnectionError) -> CloseReason {
    match err {
        ConnectionError::LocallyClosed => CloseReason::Local,
        ConnectionError::TimedOut => CloseReason::IdleTimeout,
        ConnectionError::ApplicationClosed(_) => CloseReason::Remote,
        // APPLICATION_ERROR is how an application close travels while the handshake is
        // not yet confirmed (RFC 9000, 10.2.3): still the remote closing on purpose.
        ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::NO_ERROR
                || c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
        {
            CloseReason::Remote
        }
        e => CloseReason::Error(e.to_string()),
    }
}

#[async_trait]
impl CapableConn for QuicConn {
    fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    fn remote_peer(&self) -> PeerId {
        self.remote_peer
    }

    fn remote_public_key(&self) -> &PublicKey {
        &self.remote_key
    }

    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local_addr
    }

    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote_addr
    }

    fn direction(&self) -> Direction {
        self.direction
    }

    fn state(&self) -> &ConnState {
        &self.state
    }

    /// Opens a bidirectional stream; waits while the remote's stream limit is reached.
    /// The remote learns of the stream when its first bytes arrive.
    async fn open_stream(&self) -> Result<Stream, ConnError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| self.closed_error(e))?;
        Ok(Stream::new(
            Box::new(QuicStream::new(send, recv)),
            Direction::Outbound,
        ))
    }

    async fn accept_stream(&self) -> Result<Stream, ConnError> {
        let (send, recv) = self
            .conn
            .accept_bi()
            .await
            .map_err(|e| self.closed_error(e))?;
        let (open, raise) = self.streams.opened();
        if let Some(limit) = raise.and_then(|l| VarInt::from_u64(l).ok()) {
            self.conn.set_max_concurrent_bi_streams(limit);
        }
        Ok(Stream::new(
            Box::new(QuicStream::inbound(send, recv, open)),
            Direction::Inbound,
        ))
    }

    /// QUIC has no Go Away short of closing: the streams already open go on, and the
    /// swarm refuses new ones itself while it shuts down.
    fn go_away(&self) {}

    async fn close(&self) {
        self.conn.close(CLOSE_NORMAL, b"");
        // Resolves at once after a local close; the endpoint sends CONNECTION_CLOSE.
        self.conn.closed().await;
    }

    /// A QUIC close is already immediate: CONNECTION_CLOSE goes out and the connection
    /// state is dropped; the endpoint merely remembers it for a few round trips.
    fn abort(&self) {
        self.conn.close(CLOSE_NORMAL, b"");
    }

    async fn closed(&self) -> CloseReason {
        close_reason(&self.conn.closed().await)
    }

    fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}
