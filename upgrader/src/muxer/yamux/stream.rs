//! One yamux stream as a [`StreamIo`]: tokio I/O over yamux's futures I/O, a reset that
//! yamux lacks, and reads and writes that end when the connection ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use strata_core::{CloseReason, StreamIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What every stream of a connection shares with the connection's driver.
#[derive(Clone)]
pub(crate) struct ConnShared {
    /// Cancelled by the driver once the connection has ended. yamux does not wake a
    /// stream's pending read or write when its connection is closed gracefully (only on
    /// errors), so streams watch this as well.
    pub(crate) ended: CancellationToken,
    /// Why the connection ended, once it has.
    pub(crate) reason: watch::Receiver<Option<CloseReason>>,
    /// Live stream handles (ours, both directions), for the stream limit.
    pub(crate) live: Arc<AtomicUsize>,
}

/// Counts one live stream for as long as it is held.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A yamux stream, as handed out inside a [`strata_core::Stream`].
///
/// How the remote's actions show here: a clean end of its write side (FIN) reads as EOF; a
/// reset, or the connection ending while our side is still open, reads as an error. yamux
/// reports both FIN and reset as end of stream and keeps no record of which it was, so the
/// error is inferred: the stream is fully closed although we never closed our write side.
/// Once we have closed our write side, a later reset by the remote cannot be told from a
/// FIN and reads as EOF.
pub(crate) struct YamuxStream {
    /// `None` once reset: dropping a yamux stream that is still open sends RST, which is
    /// the only way yamux offers to reset one.
    inner: Option<Compat<yamux::Stream>>,
    guard: Option<LiveGuard>,
    conn: ConnShared,
    /// We shut our write side down (sent FIN).
    write_closed: bool,
    /// A read returned a clean EOF; later reads keep returning it.
    read_eof: bool,
    /// Separate waits for the read and the write side: a split stream polls them from two
    /// tasks, and one wait keeps only the waker that polled it last.
    read_end: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    write_end: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl YamuxStream {
    pub(crate) fn new(stream: yamux::Stream, conn: &ConnShared) -> Self {
        YamuxStream {
            inner: Some(stream.compat()),
            guard: Some(LiveGuard::new(&conn.live)),
            conn: conn.clone(),
            write_closed: false,
            read_eof: false,
            read_end: None,
            write_end: None,
        }
    }

    fn reset_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "stream reset")
    }

    fn conn_ended_error(&self) -> io::Error {
        let reason = self.conn.reason.borrow().clone();
        let text = match reason {
            Some(reason) => format!("yamux connection ended ({reason})"),
            None => "yamux connection ended".to_owned(),
        };
        io::Error::new(io::ErrorKind::ConnectionAborted, text)
    }

    /// After the inner stream returned `Pending`: an error if the connection has ended
    /// (yamux may never wake us then), else `Pending` with the waker registered for the
    /// connection's end too.
    fn poll_conn_end<T>(&mut self, cx: &mut Context<'_>, read_side: bool) -> Poll<io::Result<T>> {
        if self.conn.ended.is_cancelled() {
            return Poll::Ready(Err(self.conn_ended_error()));
        }
        let ended = &self.conn.ended;
        let wait = if read_side {
            &mut self.read_end
        } else {
            &mut self.write_end
        };
        let wait = wait.get_or_insert_with(|| Box::pin(ended.clone().cancelled_owned()));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(self.conn_ended_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl StreamIo for YamuxStream {
    fn reset(&mut self) {
        // Dropping the open yamux stream makes the connection send RST for it. (If we had
        // already sent FIN, yamux sends nothing more: the remote saw our clean end.)
        self.inner = None;
        self.guard = None;
    }
}

impl AsyncRead for YamuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read_eof {
            return Poll::Ready(Ok(()));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Self::reset_error()));
        };
        let before = buf.filled().len();
        match Pin::new(&mut *inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of stream: clean (FIN) unless the stream is fully closed while we
                // never closed our side, which only a reset or the connection's end does.
                if inner.get_ref().is_closed() && !this.write_closed {
                    if this.conn.ended.is_cancelled() {
                        return Poll::Ready(Err(this.conn_ended_error()));
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "stream reset by the remote",
                    )));
                }
                this.read_eof = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.poll_conn_end(cx, true),
        }
    }
}

impl AsyncWrite for YamuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Self::reset_error()));
        };
        match Pin::new(inner).poll_write(cx, buf) {
            Poll::Pending => this.poll_conn_end(cx, false),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Self::reset_error()));
        };
        match Pin::new(inner).poll_flush(cx) {
            Poll::Pending => this.poll_conn_end(cx, false),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Self::reset_error()));
        };
        match Pin::new(inner).poll_shutdown(cx) {
            Poll::Ready(Ok(())) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_conn_end(cx, false),
            ready => ready,
        }
    }
}
