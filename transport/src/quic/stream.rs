//! A libp2p stream on QUIC: one bidirectional QUIC stream.
//!
//! Half-close is QUIC's FIN (`finish`); reset aborts both halves: RESET_STREAM on our send
//! side and STOP_SENDING on our receive side, so the remote's reads and writes both fail.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use quinn::{RecvStream, SendStream, VarInt};
use strata_core::StreamIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The application error code sent with a reset; libp2p assigns no meaning to it yet.
const RESET_CODE: VarInt = VarInt::from_u32(0);

/// One libp2p stream: the two halves of a bidirectional QUIC stream.
#[derive(Debug)]
pub struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    // quinn refuses a second `finish`; a second shutdown is a no-op here, as on TCP.
    finished: bool,
}

impl QuicStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream) -> Self {
        QuicStream {
            send,
            recv,
            finished: false,
        }
    }
}

impl StreamIo for QuicStream {
    fn reset(&mut self) {
        // Either half may already be finished or stopped; what is left is aborted.
        let _ = self.send.reset(RESET_CODE);
        let _ = self.recv.stop(RESET_CODE);
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    /// Sends FIN: the remote reads EOF once it has read everything before it. Our read
    /// side stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        let done = AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx);
        if let Poll::Ready(Ok(())) = done {
            self.finished = true;
        }
        done
    }
}
