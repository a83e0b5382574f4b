//! Security protocols: each authenticates the remote peer and encrypts the connection.

pub mod noise;
pub mod plaintext;
pub mod tls;

pub use noise::NoiseTransport;
pub use plaintext::PlaintextTransport;
pub use tls::{TlsTransport, TLS_PROTOCOL_ID};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use strata_core::{
    BoxRawConn, HandshakeProgress, PeerId, PublicKey, Reservation, ScopeMemory, SecurityError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// An encrypted byte stream, as a security protocol hands it to the muxer.
pub trait SecureStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> SecureStream for T {}

/// A secured stream with the memory reserved for the buffers it holds inside (rustls'),
/// given back when the stream is dropped.
pub struct WithReservation<S> {
    inner: S,
    _held: Reservation,
}

impl<S> WithReservation<S> {
    /// `inner`, holding `held` while it lives.
    pub fn new(inner: S, held: Reservation) -> Self {
        WithReservation { inner, _held: held }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WithReservation<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WithReservation<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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

/// What a security handshake reserves from and reports to: the connection's memory,
/// for the buffers it allocates during the handshake and afterwards, and its progress,
/// each time the remote completes a handshake message (a connection that has not is an
/// idle socket: the progress deadline cuts it, and a newcomer may evict it).
#[derive(Clone, Debug, Default)]
pub struct SecurityScope {
    /// Where the protocol's buffers are reserved before they are allocated.
    pub memory: ScopeMemory,
    progress: Option<Arc<Progress>>,
}

/// Handshake progress, as the upgrader watches it.
#[derive(Debug)]
struct Progress {
    reporter: HandshakeProgress,
    seen: watch::Sender<bool>,
}

impl SecurityScope {
    /// A scope that counts nothing and reports to nobody (tests, parts used alone).
    pub fn unlimited() -> Self {
        SecurityScope::default()
    }

    /// A scope reserving from `memory` and reporting progress to `reporter`.
    pub fn new(memory: ScopeMemory, reporter: HandshakeProgress) -> Self {
        SecurityScope {
            memory,
            progress: Some(Arc::new(Progress {
                reporter,
                seen: watch::channel(false).0,
            })),
        }
    }

    /// The remote completed a handshake message: no longer an idle socket.
    pub fn progressed(&self) {
        if let Some(p) = &self.progress {
            if !*p.seen.borrow() {
                p.reporter.progressed();
                p.seen.send_replace(true);
            }
        }
    }

    /// Resolves once the remote has completed a handshake message (never, for a scope
    /// that reports to nobody).
    pub async fn progress(&self) {
        match &self.progress {
            Some(p) => {
                let mut seen = p.seen.subscribe();
                let _ = seen.wait_for(|s| *s).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// A security protocol, as go-libp2p's `sec.SecureTransport`: it holds our identity and
/// secures connections after multistream-select has picked it.
///
/// Its buffers, during the handshake and afterwards, are reserved from the connection's
/// memory ([`SecurityScope::memory`]) before they are allocated, and released when freed;
/// a handshake reports each message the remote completes
/// ([`SecurityScope::progressed`]).
#[async_trait]
pub trait SecureTransport: Send + Sync + 'static {
    /// The protocol ID negotiated with multistream-select, for example "/tls/1.0.0".
    fn protocol_id(&self) -> &'static str;

    /// Secures a connection we dialed. With `expected`, a remote that proves another peer
    /// ID fails with [`SecurityError::PeerIdMismatch`]. `muxers` are the muxer protocol IDs
    /// we support, in preference order, offered for early negotiation.
    async fn secure_outbound_scoped(
        &self,
        io: BoxRawConn,
        expected: Option<PeerId>,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError>;

    /// Secures a connection we accepted.
    async fn secure_inbound_scoped(
        &self,
        io: BoxRawConn,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError>;

    /// [`SecureTransport::secure_outbound_scoped`] with nothing accounted.
    async fn secure_outbound(
        &self,
        io: BoxRawConn,
        expected: Option<PeerId>,
        muxers: &[String],
    ) -> Result<Secured, SecurityError> {
        self.secure_outbound_scoped(io, expected, muxers, &SecurityScope::unlimited())
            .await
    }

    /// [`SecureTransport::secure_inbound_scoped`] with nothing accounted.
    async fn secure_inbound(
        &self,
        io: BoxRawConn,
        muxers: &[String],
    ) -> Result<Secured, SecurityError> {
        self.secure_inbound_scoped(io, muxers, &SecurityScope::unlimited())
            .await
    }
}
