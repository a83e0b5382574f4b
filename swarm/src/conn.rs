//! The swarm's connections: a capable connection plus its ID, open time, stream count and
//! the reason it was closed for; and the wrapper that counts streams and resets the
//! stream of a handler that panicked.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use strata_core::{
    BoxCapableConn, CloseReason, ConnState, Direction, Multiaddr, PeerId, SharedResourceManager,
    Stream, StreamIo, StreamScope,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::error::{Limit, SwarmError};
use crate::notify::{DisconnectReason, Told};

/// A connection's ID, unique within one swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// Counts streams open across the swarm, so a graceful shutdown can wait for zero.
pub(crate) type StreamTotal = Arc<watch::Sender<usize>>;

pub(crate) struct ConnInner {
    id: ConnId,
    conn: BoxCapableConn,
    direction: Direction,
    opened: Instant,
    opened_at: SystemTime,
    streams: AtomicUsize,
    max_streams: usize,
    total: StreamTotal,
    rcmgr: SharedResourceManager,
    // Set by whoever closes the connection on purpose, before closing it, so the
    // disconnected notification says why. Short lock, never held across an await.
    local_reason: Mutex<Option<DisconnectReason>>,
    pub(crate) told: Mutex<Told>,
}

/// One connection held by the swarm. Cheap to clone; all clones are the same connection.
#[derive(Clone)]
pub struct Conn(pub(crate) Arc<ConnInner>);

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        conn: BoxCapableConn,
        max_streams: usize,
        total: StreamTotal,
        rcmgr: SharedResourceManager,
    ) -> Self {
        let direction = conn.direction();
        Conn(Arc::new(ConnInner {
            id,
            conn,
            direction,
            opened: Instant::now(),
            opened_at: SystemTime::now(),
            streams: AtomicUsize::new(0),
            max_streams,
            total,
            rcmgr,
            local_reason: Mutex::new(None),
            told: Mutex::new(Vec::new()),
        }))
    }

    /// The connection's ID.
    pub fn id(&self) -> ConnId {
        self.0.id
    }
    /// The remote peer.
    pub fn remote_peer(&self) -> PeerId {
        self.0.conn.remote_peer()
    }
    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.0.conn.local_peer()
    }
    /// Our end.
    pub fn local_multiaddr(&self) -> &Multiaddr {
        self.0.conn.local_multiaddr()
    }
    /// The remote end.
    pub fn remote_multiaddr(&self) -> &Multiaddr {
        self.0.conn.remote_multiaddr()
    }
    /// Who opened it.
    pub fn direction(&self) -> Direction {
        self.0.direction
    }
    /// Security, muxer and transport.
    pub fn state(&self) -> &ConnState {
        self.0.conn.state()
    }
    /// When it was opened (wall clock).
    pub fn opened_at(&self) -> SystemTime {
        self.0.opened_at
    }
    /// How long it has been open.
    pub fn age(&self) -> std::time::Duration {
        self.0.opened.elapsed()
    }
    pub(crate) fn opened_instant(&self) -> Instant {
        self.0.opened
    }
    /// Streams open on it now, both directions.
    pub fn stream_count(&self) -> usize {
        self.0.streams.load(Ordering::Acquire)
    }
    /// True once it has ended.
    pub fn is_closed(&self) -> bool {
        self.0.conn.is_closed()
    }
    /// The underlying capable connection.
    pub fn capable(&self) -> &BoxCapableConn {
        &self.0.conn
    }

    /// Opens a stream, if the per-connection stream limit and the resource manager allow.
    pub async fn new_stream(&self) -> Result<Stream, SwarmError> {
        let guard = self.reserve_stream().ok_or(SwarmError::LimitExceeded {
            what: Limit::StreamsPerConnection,
            peer: self.remote_peer(),
        })?;
        let scope = self
            .0
            .rcmgr
            .open_stream(self.remote_peer(), Direction::Outbound)
            .map_err(|source| SwarmError::Resource {
                peer: self.remote_peer(),
                source,
            })?;
        let stream = self
            .0
            .conn
            .open_stream()
            .await
            .map_err(|error| SwarmError::Stream {
                peer: self.remote_peer(),
                error,
            })?;
        Ok(wrap(stream, guard, None, scope))
    }

    /// Closes the connection (reason [`DisconnectReason::Local`]); returns once closed.
    pub async fn close(&self) {
        self.close_with(DisconnectReason::Local).await
    }

    /// Closes the connection and reports `reason` to notifiees (a connection manager
    /// closes with [`DisconnectReason::Idle`] or [`DisconnectReason::LimitExceeded`]).
    /// The first reason given wins.
    pub async fn close_with(&self, reason: DisconnectReason) {
        {
            let mut slot = self
                .0
                .local_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if slot.is_none() && !self.0.conn.is_closed() {
                *slot = Some(reason);
            }
        }
        self.0.conn.close().await
    }

    /// Closes the connection gracefully, reporting `reason`, but no longer than
    /// `deadline`: a peer that does not let go by then gets a reset.
    pub async fn close_within(&self, reason: DisconnectReason, deadline: std::time::Duration) {
        if tokio::time::timeout(deadline, self.close_with(reason.clone()))
            .await
            .is_err()
        {
            self.abort_with(reason);
            self.0.conn.closed().await;
        }
    }

    /// Resets the connection at once (the socket goes, nothing more is sent or waited
    /// for), reporting `reason` unless another was given first.
    pub fn abort_with(&self, reason: DisconnectReason) {
        {
            let mut slot = self
                .0
                .local_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if slot.is_none() && !self.0.conn.is_closed() {
                *slot = Some(reason);
            }
        }
        self.0.conn.abort()
    }

    /// Why it ended: the reason given locally, else what the connection reports.
    pub(crate) async fn final_reason(&self) -> DisconnectReason {
        let closed = self.0.conn.closed().await;
        let local = self
            .0
            .local_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        local.unwrap_or(match closed {
            CloseReason::Local => DisconnectReason::Local,
            CloseReason::Remote => DisconnectReason::Remote,
            CloseReason::IdleTimeout => DisconnectReason::Idle,
            CloseReason::Error(e) => DisconnectReason::Error(e),
        })
    }

    /// Takes a stream slot, or `None` at the limit.
    pub(crate) fn reserve_stream(&self) -> Option<StreamGuard> {
        self.0
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0.max_streams).then_some(n + 1)
            })
            .ok()?;
        self.0.total.send_modify(|n| *n += 1);
        Some(StreamGuard(self.0.clone()))
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.0.id)
            .field("peer", &self.remote_peer())
            .field("direction", &self.0.direction)
            .field("remote", self.remote_multiaddr())
            .field("streams", &self.stream_count())
            .finish()
    }
}

/// Holds one stream slot of a connection; gives it back on drop.
pub(crate) struct StreamGuard(Arc<ConnInner>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
        self.0.total.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Wraps a stream so that its slot (and its resource scope) is counted while it lives,
/// and so that it is reset, not closed, when dropped after its handler panicked.
pub(crate) fn wrap(
    stream: Stream,
    guard: StreamGuard,
    reset: Option<Arc<AtomicBool>>,
    scope: StreamScope,
) -> Stream {
    let direction = stream.direction();
    let (peer, addr) = (
        guard.0.conn.remote_peer(),
        guard.0.conn.remote_multiaddr().clone(),
    );
    let mut out = Stream::new(
        Box::new(Tracked {
            inner: stream,
            _guard: guard,
            reset_on_drop: reset,
        }),
        direction,
    );
    out.set_scope(scope);
    out.set_remote(peer, addr);
    out
}

struct Tracked {
    inner: Stream,
    _guard: StreamGuard,
    reset_on_drop: Option<Arc<AtomicBool>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self
            .reset_on_drop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            self.inner.reset();
        }
    }
}

impl StreamIo for Tracked {
    fn reset(&mut self) {
        self.inner.reset()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

/// The best connection among `conns`, by this rule: only connections not closed; the
/// fewest open streams first (spreads load); then outbound over inbound (we chose that
/// address, so it is the one we know to be direct and reachable); then the newest (the
/// least likely to be a stale half-dead connection).
pub(crate) fn best(conns: &[Conn]) -> Option<Conn> {
    conns
        .iter()
        .filter(|c| !c.is_closed())
        .min_by(|a, b| {
            a.stream_count()
                .cmp(&b.stream_count())
                .then_with(|| {
                    let out = |c: &Conn| c.direction() == Direction::Outbound;
                    out(b).cmp(&out(a))
                })
                .then_with(|| b.opened_instant().cmp(&a.opened_instant()))
        })
        .cloned()
}
