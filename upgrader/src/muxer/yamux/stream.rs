//! One yamux stream as a [`StreamIo`].
//!
//! How the remote's actions show here: a FIN reads as EOF once everything sent before it
//! has been read; a reset reads as an error at once (what was buffered is dropped, as the
//! remote asked); the connection ending reads as an error once the buffer is drained, so
//! nothing that arrived before a graceful close is lost.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use strata_core::{CloseReason, StreamIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{flags, FrameType, Header};
use super::session::{Reset, Session};

/// A yamux stream, as handed out inside a [`strata_core::Stream`]. Dropping it resets
/// the stream if neither side finished it, and finishes it if only the remote did.
pub(crate) struct YamuxStream {
    session: Arc<Session>,
    id: u32,
}

impl YamuxStream {
    pub(crate) fn new(session: Arc<Session>, id: u32) -> Self {
        YamuxStream { session, id }
    }
}

fn reset_error(by: Reset) -> io::Error {
    let text = match by {
        Reset::Local => "stream reset",
        Reset::Remote => "stream reset by the remote",
    };
    io::Error::new(io::ErrorKind::ConnectionReset, text)
}

fn ended_error(reason: &CloseReason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("yamux connection ended ({reason})"),
    )
}

fn gone_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "yamux stream no longer exists")
}

impl Drop for YamuxStream {
    fn drop(&mut self) {
        self.session.drop_stream(self.id);
    }
}

impl StreamIo for YamuxStream {
    fn reset(&mut self) {
        let mut st = self.session.lock();
        let ended = st.ended.is_some();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        s.reset = Some(Reset::Local);
        s.recv.clear();
        s.wake();
        let announce = !ended && s.open_flag != flags::SYN && !(s.local_fin && s.remote_fin);
        let open_flag = std::mem::take(&mut s.open_flag);
        if announce {
            st.queue_control(Header::new(
                FrameType::WindowUpdate,
                flags::RST | open_flag,
                self.id,
                0,
            ));
        }
    }
}

impl AsyncRead for YamuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let session = &this.session;
        let mut st = session.lock();
        let ended = st.ended.clone();
        let Some(s) = st.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(gone_error()));
        };
        if let Some(by) = s.reset {
            return Poll::Ready(Err(reset_error(by)));
        }
        if !s.recv.is_empty() {
            let n = buf.remaining().min(s.recv.len());
            buf.put_slice(&s.recv[..n]);
            s.recv.advance(n);
            if ended.is_some() {
                // The connection is gone: what was read is no longer held.
                st.trim_reservation(this.id);
            } else {
                st.maybe_grant(&session.config, this.id);
            }
            return Poll::Ready(Ok(()));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = ended {
            return Poll::Ready(Err(ended_error(&reason)));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for YamuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let session = &this.session;
        let limit = session.config.write_queue_limit();
        let mut st = session.lock();
        if let Some(reason) = st.ended.clone() {
            return Poll::Ready(Err(ended_error(&reason)));
        }
        let Some(s) = st.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(gone_error()));
        };
        if let Some(by) = s.reset {
            return Poll::Ready(Err(reset_error(by)));
        }
        if s.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the stream was closed for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if s.send_credit == 0 {
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf
            .len()
            .min(s.send_credit as usize)
            .min(session.config.split_send_size);
        if !st.has_room(limit, this.id, cx.waker(), n) {
            return Poll::Pending;
        }
        let Some(s) = st.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(gone_error()));
        };
        s.send_credit -= n as u32;
        let open_flag = std::mem::take(&mut s.open_flag);
        let header = Header::new(FrameType::Data, open_flag, this.id, n as u32);
        let (written, mut st) = session.write_through(st, header, &buf[..n], cx);
        if !written {
            if let Err(e) = st.queue_data(header, &buf[..n]) {
                // No memory for the write queue: nothing was sent; the stream stays as
                // it was, and the writer hears why.
                if let Some(s) = st.streams.get_mut(&this.id) {
                    s.send_credit += n as u32;
                    s.open_flag = open_flag;
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("no memory for the yamux write queue: {e}"),
                )));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are queued for the connection's driver, which writes and flushes them
        // as soon as it can; there is nothing more to push from here.
        let this = self.get_mut();
        let st = this.session.lock();
        match st.streams.get(&this.id).and_then(|s| s.reset) {
            Some(by) => Poll::Ready(Err(reset_error(by))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.session.lock();
        let ended = st.ended.clone();
        let Some(s) = st.streams.get_mut(&this.id) else {
            return Poll::Ready(Err(gone_error()));
        };
        if let Some(by) = s.reset {
            return Poll::Ready(Err(reset_error(by)));
        }
        if s.local_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = ended {
            return Poll::Ready(Err(ended_error(&reason)));
        }
        s.local_fin = true;
        let open_flag = std::mem::take(&mut s.open_flag);
        st.queue_control(Header::new(
            FrameType::WindowUpdate,
            flags::FIN | open_flag,
            this.id,
            0,
        ));
        Poll::Ready(Ok(()))
    }
}
