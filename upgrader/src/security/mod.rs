//! Security protocols: each authenticates the remote peer and encrypts the connection.

pub mod noise;
pub mod plaintext;
pub mod tls;

pub use noise::NoiseTransport;
pub use plaintext::PlaintextTransport;
pub use tls::{TlsTransport, TLS_PROTOCOL_ID};

use async_trait::async_trait;
use strata_core::{BoxRawConn, PeerId, PublicKey, SecurityError};
use tokio::io::{AsyncRead, AsyncWrite};

/// An encrypted byte stream, as a security protocol hands it to the muxer.
pub trait SecureStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SecureStream for T {}

/// The result of a successful security handshake.
pub struct Secured {
    /// The encrypted stream.
    pub io: Box<dyn SecureStream>,
    /// The remote peer, as proven by its key.
    pub remote_peer: PeerId,
    /// The remote's public key.
    pub remote_public_key: PublicKey,
    /// The muxer both sides agreed on inside the handshake (TLS ALPN or the Noise
    /// extensions), when they share one; `None` means a multistream-select round follows.
    pub early_muxer: Option<String>,
}

impl std::fmt::Debug for Secured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secured")
            .field("remote_peer", &self.remote_peer)
            .field("early_muxer", &self.early_muxer)
            .finish_non_exhaustive()
    }
}

/// A security protocol, as go-libp2p's `sec.SecureTransport`: it holds our identity and
/// secures connections after multistream-select has picked it.
#[async_trait]
pub trait SecureTransport: Send + Sync + 'static {
    /// The protocol ID negotiated with multistream-select, for example "/tls/1.0.0".
    fn protocol_id(&self) -> &'static str;

    /// The memory one secured connection holds in buffers, reserved from the
    /// connection's scope before the handshake starts.
    fn buffer_size(&self) -> usize {
        64 * 1024
    }

    /// Secures a connection we dialed. With `expected`, a remote that proves another peer
    /// ID fails with [`SecurityError::PeerIdMismatch`]. `muxers` are the muxer protocol IDs
    /// we support, in preference order, offered for early negotiation.
    async fn secure_outbound(
        &self,
        io: BoxRawConn,
        expected: Option<PeerId>,
        muxers: &[String],
    ) -> Result<Secured, SecurityError>;

    /// Secures a connection we accepted.
    async fn secure_inbound(
        &self,
        io: BoxRawConn,
        muxers: &[String],
    ) -> Result<Secured, SecurityError>;
}
