//! The one task per connection that owns the yamux `Connection` and moves all its bytes.
//!
//! yamux wants its connection polled from a single task, and `poll_next_inbound`
//! polled all the time: it reads frames, writes what streams queued, and answers pings.
//! Handles reach the task through a channel of open requests and a close token; it hands
//! inbound streams out through a bounded queue and announces the connection's end.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use strata_core::{CloseReason, ConnError, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::Compat;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::graceful::GracefulClose;
use super::stream::{ConnShared, YamuxStream};

/// The socket as yamux sees it: futures I/O over the secured tokio stream, closed
/// gracefully.
pub(crate) type Socket = Compat<GracefulClose>;

/// Where the driver answers one `open_stream` call.
pub(crate) type OpenReply = oneshot::Sender<Result<YamuxStream, ConnError>>;

/// Everything the driver task owns.
pub(crate) struct Driver {
    pub(crate) conn: yamux::Connection<Socket>,
    pub(crate) peer: PeerId,
    pub(crate) max_streams: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) open_rx: mpsc::Receiver<OpenReply>,
    pub(crate) inbound_tx: mpsc::Sender<YamuxStream>,
    pub(crate) close_requested: CancellationToken,
    pub(crate) shared: ConnShared,
    pub(crate) reason_tx: watch::Sender<Option<CloseReason>>,
    /// The connection's resource scope, released when the connection has ended.
    pub(crate) scope: std::sync::Arc<strata_core::ConnScope>,
}

/// The state of one run of [`Driver::poll_run`].
struct Run {
    close_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    pending_opens: VecDeque<OpenReply>,
    /// Set once we close: the deadline after which we drop the socket instead.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Driver {
    /// Runs the connection until it ends, then tells everyone why. Dropping the yamux
    /// connection (and with it the socket) happens before the end is announced, so a
    /// `close()` that returns has really let go of the socket.
    pub(crate) async fn run(mut self) {
        let mut run = Run {
            close_wait: Box::pin(self.close_requested.clone().cancelled_owned()),
            pending_opens: VecDeque::new(),
            closing: None,
        };
        let reason = std::future::poll_fn(|cx| self.poll_run(cx, &mut run)).await;
        tracing::debug!(peer = %self.peer, %reason, "yamux connection ended");
        let Driver {
            conn,
            open_rx,
            inbound_tx,
            shared,
            reason_tx,
            scope,
            ..
        } = self;
        drop(conn);
        drop(scope);
        drop(run);
        drop(open_rx);
        drop(inbound_tx);
        // Record the reason before waking streams, so that they can report it.
        reason_tx.send_replace(Some(reason));
        shared.ended.cancel();
    }

    fn poll_run(&mut self, cx: &mut Context<'_>, run: &mut Run) -> Poll<CloseReason> {
        if run.closing.is_none() && run.close_wait.as_mut().poll(cx).is_ready() {
            self.start_closing(run);
        }
        if run.closing.is_none() {
            if let Some(reason) = self.poll_opens(cx, run) {
                return Poll::Ready(reason);
            }
        }
        // `poll_opens` may just have started the close (every handle is gone).
        if let Some(deadline) = run.closing.as_mut() {
            return match self.conn.poll_close(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(CloseReason::Local),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(peer = %self.peer, "yamux close failed: {e}");
                    Poll::Ready(CloseReason::Local)
                }
                Poll::Pending => match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::debug!(
                            peer = %self.peer,
                            "yamux close took longer than {:?}; dropping the connection",
                            self.close_timeout
                        );
                        Poll::Ready(CloseReason::Local)
                    }
                    Poll::Pending => Poll::Pending,
                },
            };
        }
        self.poll_inbound(cx)
    }

    /// Stops taking open requests; the callers still waiting learn the end from the
    /// announcement.
    fn start_closing(&mut self, run: &mut Run) {
        run.closing = Some(Box::pin(tokio::time::sleep(self.close_timeout)));
        run.pending_opens.clear();
        self.open_rx.close();
    }

    /// Takes new open requests and serves as many as yamux allows. Returns the reason
    /// when opening showed that the connection has ended.
    fn poll_opens(&mut self, cx: &mut Context<'_>, run: &mut Run) -> Option<CloseReason> {
        loop {
            match self.open_rx.poll_recv(cx) {
                Poll::Ready(Some(reply)) => run.pending_opens.push_back(reply),
                Poll::Ready(None) => {
                    // Every handle to the connection is gone: nobody can use it again.
                    tracing::debug!(peer = %self.peer, "all yamux handles dropped; closing");
                    self.start_closing(run);
                    return None;
                }
                Poll::Pending => break,
            }
        }
        while let Some(reply) = run.pending_opens.front() {
            if reply.is_closed() {
                // The caller gave up waiting.
                run.pending_opens.pop_front();
                continue;
            }
            if self.shared.live.load(Ordering::Acquire) >= self.max_streams {
                if let Some(reply) = run.pending_opens.pop_front() {
                    let _ = reply.send(Err(ConnError::StreamLimit { peer: self.peer }));
                }
                continue;
            }
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let stream = YamuxStream::new(stream, &self.shared);
                    if let Some(reply) = run.pending_opens.pop_front() {
                        // If the caller left meanwhile, the stream drops here, resetting
                        // it (the remote never heard of it: yamux sends SYN lazily).
                        let _ = reply.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(e)) => {
                    // yamux has torn the connection down.
                    return Some(match e {
                        yamux::ConnectionError::Closed => CloseReason::Remote,
                        e => CloseReason::Error(format!("yamux: {e}")),
                    });
                }
                // Too many streams wait for the remote's ACK; yamux wakes us when one comes.
                Poll::Pending => break,
            }
        }
        None
    }

    /// Drives all I/O and hands out inbound streams.
    fn poll_inbound(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        loop {
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => self.deliver_inbound(stream),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(CloseReason::Error(format!("yamux: {e}")))
                }
                // GoAway from the remote, or EOF on the socket.
                Poll::Ready(None) => return Poll::Ready(CloseReason::Remote),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn deliver_inbound(&mut self, stream: yamux::Stream) {
        if self.shared.live.load(Ordering::Acquire) >= self.max_streams {
            tracing::debug!(
                peer = %self.peer,
                "yamux stream limit ({}) reached; resetting inbound stream",
                self.max_streams
            );
            // Dropping it open resets it.
            drop(stream);
            return;
        }
        let stream = YamuxStream::new(stream, &self.shared);
        match self.inbound_tx.try_send(stream) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(stream)) => {
                tracing::warn!(
                    peer = %self.peer,
                    "yamux inbound backlog full; resetting inbound stream"
                );
                drop(stream);
            }
            // Nobody accepts any more (all handles are gone); the close follows.
            Err(mpsc::error::TrySendError::Closed(stream)) => drop(stream),
        }
    }
}
