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
    /// For an inbound stream: counted open until dropped (see [`StreamBudget`]).
    _open: Option<OpenStream>,
}

impl QuicStream {
    pub(crate) fn new(send: SendStream, recv: RecvStream) -> Self {
        QuicStream {
            send,
            recv,
            finished: false,
            _open: None,
        }
    }

    pub(crate) fn inbound(send: SendStream, recv: RecvStream, open: OpenStream) -> Self {
        QuicStream {
            _open: Some(open),
            ..QuicStream::new(send, recv)
        }
    }
}

/// How many streams a peer may open at once on a connection, grown with use: quinn
/// keeps a slot in two maps for every stream the peer may open, so a limit of 256 costs
/// an idle connection about 18 KiB. A connection starts with [`START_STREAMS`] and the
/// limit grows fourfold, up to the configured one, each time the peer has half of it
/// open.
#[derive(Debug)]
pub(crate) struct StreamBudget {
    open: std::sync::atomic::AtomicU64,
    limit: std::sync::atomic::AtomicU64,
    max: u64,
}

/// The limit of concurrent inbound streams a connection starts with.
pub(crate) const START_STREAMS: u64 = 16;

impl StreamBudget {
    pub(crate) fn new(max: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(StreamBudget {
            open: 0.into(),
            limit: START_STREAMS.min(max).into(),
            max,
        })
    }

    /// An inbound stream was accepted: counts it, and returns a larger limit for the
    /// connection when the peer has half of the current one open.
    pub(crate) fn opened(self: &std::sync::Arc<Self>) -> (OpenStream, Option<u64>) {
        use std::sync::atomic::Ordering;
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let limit = self.limit.load(Ordering::Acquire);
        let raise = (open * 2 >= limit && limit < self.max).then(|| {
            let new = (limit * 4).min(self.max);
            self.limit.store(new, Ordering::Release);
            new
        });
        (OpenStream(self.clone()), raise)
    }
}

/// One open inbound stream of a [`StreamBudget`]; dropping it closes the count.
#[derive(Debug)]
pub(crate) struct OpenStream(std::sync::Arc<StreamBudget>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
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
