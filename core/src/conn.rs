//! The traits the layers meet on: raw connections and listeners (what a transport makes),
//! capable connections and their streams (what the upgrader, or QUIC, hands the swarm).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use multiaddr::Multiaddr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{CloseReason, ConnError, TransportError};
use crate::identity::{PeerId, PublicKey};
use crate::rcmgr::{ScopeMemory, StreamScope};

/// Who opened a connection or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The remote opened it.
    Inbound,
    /// We opened it.
    Outbound,
}

/// A byte stream from a transport, before any security or muxing: TCP, memory, and so on.
pub trait RawConnection: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Our end of the connection.
    fn local_multiaddr(&self) -> &Multiaddr;
    /// The remote end of the connection.
    fn remote_multiaddr(&self) -> &Multiaddr;
    /// Hands the connection its resource scope's memory before the upgrade reads a byte:
    /// a transport that buffers what the remote sends (WebSocket frames) reserves those
    /// buffers there. Transports that buffer nothing of their own ignore it.
    fn attach_memory(&mut self, memory: ScopeMemory) {
        let _ = memory;
    }
}

/// A boxed raw connection, as transports hand them out.
pub type BoxRawConn = Box<dyn RawConnection>;

/// Accepts raw connections on one address.
///
/// `accept` is cancel safe: dropping its future loses no connection. Dropping the listener
/// closes its socket.
#[async_trait]
pub trait RawListener: Send + 'static {
    /// The address actually listened on (port 0 replaced by the bound port).
    fn multiaddr(&self) -> &Multiaddr;
    /// Waits for the next connection. An error ends the listener: every later call
    /// returns [`TransportError::ListenerClosed`].
    async fn accept(&mut self) -> Result<BoxRawConn, TransportError>;
}

/// A boxed raw listener.
pub type BoxRawListener = Box<dyn RawListener>;

/// Makes raw connections: dials and listens on multiaddrs it understands.
#[async_trait]
pub trait RawTransport: Send + Sync + 'static {
    /// The multiaddr protocol names this transport serves, for example `["tcp"]`.
    fn protocols(&self) -> &[&'static str];
    /// True when `dial` could handle the address.
    fn can_dial(&self, addr: &Multiaddr) -> bool;
    /// True when `listen` could handle the address.
    fn can_listen(&self, addr: &Multiaddr) -> bool;
    /// Opens a connection to the address.
    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError>;
    /// Whether `dial` may leave from a listening port, so that two peers dialing each
    /// other at once can meet in one TCP connection (simultaneous open) where both act as
    /// the dialer and the upgrade fails. The upgrader then retries once with
    /// [`RawTransport::dial_fresh`].
    fn dials_from_listen_port(&self) -> bool {
        false
    }
    /// Opens a connection from a port of its own (not a listening one).
    async fn dial_fresh(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        self.dial(addr).await
    }
    /// Listens on the address.
    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError>;
}

/// Byte-level operations of one muxed stream, implemented by each muxer (yamux, QUIC).
///
/// `poll_shutdown` half-closes: it ends our write side and leaves the read side open.
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Aborts both directions at once; the remote sees a reset, not a clean end.
    fn reset(&mut self);
}

/// A stream on a capable connection, with the protocol negotiated on it, the resource
/// scope it is counted in, and the connection's remote end (as go-libp2p's
/// `s.Conn().RemotePeer()`).
pub struct Stream {
    io: Box<dyn StreamIo>,
    protocol: Option<String>,
    direction: Direction,
    scope: StreamScope,
    remote: Option<(PeerId, Multiaddr)>,
}

impl Stream {
    /// Wraps a muxer's stream.
    pub fn new(io: Box<dyn StreamIo>, direction: Direction) -> Self {
        Stream {
            io,
            protocol: None,
            direction,
            scope: StreamScope::unlimited(),
            remote: None,
        }
    }

    /// The peer at the other end (set by the swarm for every stream it hands out).
    pub fn remote_peer(&self) -> Option<PeerId> {
        self.remote.as_ref().map(|(p, _)| *p)
    }

    /// The remote address of the stream's connection (set by the swarm).
    pub fn remote_multiaddr(&self) -> Option<&Multiaddr> {
        self.remote.as_ref().map(|(_, a)| a)
    }

    /// Records the connection's remote peer and address.
    pub fn set_remote(&mut self, peer: PeerId, addr: Multiaddr) {
        self.remote = Some((peer, addr));
    }

    /// The remote peer and address, for a wrapper that takes the stream's place.
    pub fn remote(&self) -> Option<(PeerId, Multiaddr)> {
        self.remote.clone()
    }

    /// The resource scope the stream is counted in (unlimited until the swarm sets one).
    pub fn scope(&self) -> &StreamScope {
        &self.scope
    }

    /// Counts the stream in `scope` (released when the stream is dropped).
    pub fn set_scope(&mut self, scope: StreamScope) {
        self.scope = scope;
    }

    /// Takes the stream's scope out (leaving an unlimited one), for a wrapper that takes
    /// the stream's place and should carry its scope.
    pub fn take_scope(&mut self) -> StreamScope {
        std::mem::replace(&mut self.scope, StreamScope::unlimited())
    }

    /// The protocol negotiated on this stream, once negotiation has picked one.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Records the negotiated protocol.
    pub fn set_protocol(&mut self, protocol: impl Into<String>) {
        self.protocol = Some(protocol.into());
    }

    /// Who opened the stream.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Wraps the stream's byte-level operations, for example to count the bytes of a
    /// protocol for metrics. Protocol, direction and scope are kept.
    pub fn map_io(&mut self, wrap: impl FnOnce(Box<dyn StreamIo>) -> Box<dyn StreamIo>) {
        // A stand-in for the moment of the swap; it is never read or written.
        let io = std::mem::replace(&mut self.io, Box::new(ClosedIo));
        self.io = wrap(io);
    }

    /// Aborts the stream in both directions.
    pub fn reset(&mut self) {
        self.io.reset();
    }

    /// Ends our write side (the remote reads EOF) and keeps reading possible.
    pub async fn close_write(&mut self) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::shutdown(self).await
    }
}

/// A stream that is already closed: reads end, writes fail.
struct ClosedIo;

impl AsyncRead for ClosedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClosedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl StreamIo for ClosedIo {
    fn reset(&mut self) {}
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("protocol", &self.protocol)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a connection negotiated, as go-libp2p's `ConnectionState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    /// The transport, for example "tcp", "quic-v1" or "memory".
    pub transport: &'static str,
    /// The security protocol, for example "/tls/1.0.0" or "/noise".
    pub security: String,
    /// The stream muxer, for example "/yamux/1.0.0" (QUIC muxes natively: "quic").
    pub muxer: String,
    /// True when the muxer was picked inside the security handshake (TLS ALPN or the
    /// Noise extensions) rather than in a separate multistream-select round.
    pub used_early_muxer_negotiation: bool,
    /// How long the upgrade took: from the raw connection (or QUIC's first packet) to
    /// the secured, multiplexed connection.
    pub handshake: std::time::Duration,
}

/// An authenticated, multiplexed connection to one peer: an upgraded TCP connection or a
/// QUIC connection. All methods may be called concurrently from many tasks.
#[async_trait]
pub trait CapableConn: Send + Sync + 'static {
    /// Our peer ID.
    fn local_peer(&self) -> PeerId;
    /// The authenticated remote peer ID.
    fn remote_peer(&self) -> PeerId;
    /// The remote's public key, as proven in the security handshake.
    fn remote_public_key(&self) -> &PublicKey;
    /// Our end of the connection.
    fn local_multiaddr(&self) -> &Multiaddr;
    /// The remote end of the connection.
    fn remote_multiaddr(&self) -> &Multiaddr;
    /// Who opened the connection.
    fn direction(&self) -> Direction;
    /// The negotiated security, muxer and transport.
    fn state(&self) -> &ConnState;
    /// Opens a new outbound stream.
    async fn open_stream(&self) -> Result<Stream, ConnError>;
    /// Waits for the next inbound stream.
    async fn accept_stream(&self) -> Result<Stream, ConnError>;
    /// Tells the remote that no new streams will be accepted or opened (yamux Go Away),
    /// while the streams already open go on. A graceful shutdown starts with this.
    fn go_away(&self);
    /// Closes the connection and all its streams gracefully; returns once it is closed.
    /// How long that may take is bounded by the muxer's own close timeout.
    async fn close(&self);
    /// Drops the connection at once: the socket is reset, nothing more is sent or waited
    /// for. [`CapableConn::closed`] resolves promptly afterwards. This is the forced
    /// phase of a shutdown.
    fn abort(&self);
    /// Waits until the connection has ended, for whatever reason, and says why.
    async fn closed(&self) -> CloseReason;
    /// True once the connection has ended.
    fn is_closed(&self) -> bool;
}

/// A shared capable connection.
pub type BoxCapableConn = Arc<dyn CapableConn>;

/// Accepts capable connections on one address.
#[async_trait]
pub trait Listener: Send + 'static {
    /// The address actually listened on.
    fn multiaddr(&self) -> &Multiaddr;
    /// Waits for the next authenticated, multiplexed connection. Cancel safe. An error
    /// ends the listener.
    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError>;
    /// Stops listening and closes whatever connections it holds that were not yet accepted.
    async fn close(&mut self);
    /// The figures of the listener's accept queue, for metrics; `None` when it has none.
    fn accept_stats(&self) -> Option<crate::accept::AcceptStats> {
        None
    }
}

/// A boxed capable listener.
pub type BoxListener = Box<dyn Listener>;

/// Makes capable connections: an upgraded raw transport, or QUIC.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The multiaddr protocol names this transport serves ("tcp", "quic-v1", "memory"); a
    /// swarm refuses two transports that serve the same one.
    fn protocols(&self) -> &[&'static str];
    /// True when `dial` could handle the address.
    fn can_dial(&self, addr: &Multiaddr) -> bool;
    /// True when `listen` could handle the address.
    fn can_listen(&self, addr: &Multiaddr) -> bool;
    /// Dials the address; with `expected_peer`, a remote that proves another identity is
    /// refused.
    async fn dial(
        &self,
        addr: &Multiaddr,
        expected_peer: Option<PeerId>,
    ) -> Result<BoxCapableConn, TransportError>;
    /// Listens on the address.
    async fn listen(&self, addr: &Multiaddr) -> Result<BoxListener, TransportError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    // The swarm holds transports and connections as trait objects; this fails to compile
    // if any of the traits stops being object safe.
    #[allow(dead_code)]
    fn traits_are_object_safe(
        _: Arc<dyn Transport>,
        _: BoxListener,
        _: BoxCapableConn,
        _: Arc<dyn RawTransport>,
        _: BoxRawListener,
        _: BoxRawConn,
        _: Box<dyn StreamIo>,
    ) {
    }

    #[tokio::test]
    async fn stream_forwards_io_and_half_close() {
        struct Duplex(tokio::io::DuplexStream, bool);
        impl AsyncRead for Duplex {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_read(cx, buf)
            }
        }
        impl AsyncWrite for Duplex {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
        impl StreamIo for Duplex {
            fn reset(&mut self) {
                self.1 = true;
            }
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(64);
        let mut stream = Stream::new(Box::new(Duplex(a, false)), Direction::Outbound);
        assert_eq!(stream.protocol(), None);
        stream.set_protocol("/echo/1.0.0");
        assert_eq!(stream.protocol(), Some("/echo/1.0.0"));
        stream.write_all(b"hi").await.unwrap();
        stream.close_write().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        b.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
