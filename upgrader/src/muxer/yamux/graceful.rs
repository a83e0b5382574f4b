//! A graceful end for the socket under yamux.
//!
//! TCP sockets close with SO_LINGER 0, so dropping one sends a reset that destroys
//! whatever the peer has not read yet and fails the peer's writes. When we close a
//! connection, yamux sends GoAway and shuts our write side down; this wrapper then keeps
//! the socket until the peer, having read the GoAway, closes its side too (we read EOF),
//! so the reset that follows hits a connection the peer has already let go of. The
//! driver's close timeout bounds the wait on a peer that never closes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::security::SecureStream;

/// The secured stream, closed gracefully.
pub(crate) struct GracefulClose {
    inner: Box<dyn SecureStream>,
    state: CloseState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CloseState {
    Open,
    /// Our write side is shut; draining until the peer's EOF.
    Draining,
    Closed,
}

impl GracefulClose {
    pub(crate) fn new(inner: Box<dyn SecureStream>) -> Self {
        GracefulClose {
            inner,
            state: CloseState::Open,
        }
    }
}

impl AsyncRead for GracefulClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GracefulClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                CloseState::Open => {
                    ready!(Pin::new(&mut *self.inner).poll_shutdown(cx))?;
                    self.state = CloseState::Draining;
                }
                CloseState::Draining => {
                    // Whatever still arrives is for streams that are ending; discard it.
                    let mut scratch = [0u8; 4096];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut *self.inner).poll_read(cx, &mut buf)) {
                        Ok(()) if !buf.filled().is_empty() => continue,
                        // EOF, or the peer reset: either way it has let go.
                        Ok(()) | Err(_) => self.state = CloseState::Closed,
                    }
                }
                CloseState::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn shutdown_waits_for_the_peer_to_let_go() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ours = GracefulClose::new(Box::new(ours));
        let closing = tokio::spawn(async move { ours.shutdown().await });
        // The peer sees our end of stream and may still send: we read and discard it.
        let mut buf = [0u8; 8];
        assert_eq!(theirs.read(&mut buf).await.unwrap(), 0);
        theirs.write_all(b"late data").await.unwrap();
        let mut closing = closing;
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut closing)
                .await
                .is_err(),
            "the socket is kept while the peer holds its side open"
        );
        drop(theirs);
        closing.await.unwrap().unwrap();
    }
}
