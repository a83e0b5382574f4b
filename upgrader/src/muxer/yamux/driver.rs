//! The one task per connection that owns the socket and moves all its bytes.
//!
//! Reading: frames are parsed from a reusable buffer as bytes arrive; a data body is
//! handed to its stream piece by piece, so no frame is ever held whole and a body can be
//! as large as the window the remote was granted. Every body is checked against its
//! stream's window before a byte of it is kept. The rest of a large body is read
//! straight into its stream's own buffer, at its end (the secured stream's copy out of
//! its decryption buffer is then the only one before the application's read); the
//! buffer is the one the stream keeps and reuses anyway, so this costs no memory more.
//!
//! Writing: frames queued by streams and by the parser go out in vectored writes; a frame
//! is header and body in one buffer, so each lands in as few records as the security
//! layer allows.
//!
//! Closing: Go Away is queued, the queue flushed, our side shut down, and what the peer
//! still sends is read (and dropped) until it closes too, so the reset that SO_LINGER 0
//! makes on drop hits a connection the peer has let go of. `close_timeout` bounds that
//! wait; an abort skips it.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use strata_core::rcmgr::priority;
use strata_core::{CloseReason, Reservation};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::frame::{flags, go_away, FrameError, FrameType, Header, HEADER_LEN};
use super::session::{Reset, Session, State, MAX_QUEUED_CONTROL};
use crate::security::SecureStream;

/// The most room a read is given; the buffer starts small and doubles towards this while
/// reads fill it, and is freed when the connection goes quiet.
const READ_CHUNK: usize = 64 * 1024;
/// The room a quiet connection's first read gets.
const READ_START: usize = 4 * 1024;
/// What the read buffer may hold at most (a chunk, and the partial frame before it).
const READ_BOOK: usize = 2 * READ_CHUNK;
/// Reads, then writes, per turn of the driver before it lets other tasks run.
const READS_PER_TURN: usize = 32;
/// Frames handed to one vectored write.
const WRITE_BATCH: usize = 64;
/// A data body with at least this much still to come is read straight into its
/// stream's buffer, once the read buffer holds none of it.
const DIRECT_MIN: usize = 16 * 1024;
/// The most room a direct read is given.
const DIRECT_CHUNK: usize = 64 * 1024;
/// Reads that take only up to the next header's end after a direct body.
const EXACT_READS: u8 = 4;
/// Written frames at least this large have their buffers kept for the next frames.
const RECYCLE_MIN: usize = 16 * 1024;

/// Where the parser is.
enum ReadState {
    Header,
    /// Inside a data body: `remaining` bytes to go, for `stream` (`None`: dropped).
    Body {
        stream: Option<u32>,
        remaining: u32,
        fin: bool,
    },
}

/// Body bytes for a stream: to be copied, or read into the end of its buffer.
enum Received<'a> {
    Copy(&'a [u8]),
    InPlace(BytesMut),
}

/// Hands body bytes to stream `id`, unless it was reset meanwhile, and wakes its reader.
fn deliver(session: &Session, id: u32, data: Received<'_>) {
    let mut st = session.lock();
    if let Received::Copy(bytes) = &data {
        if !room_for_arrival(&mut st, session, id, bytes.len()) {
            return;
        }
    }
    let Some(s) = st.streams.get_mut(&id) else {
        return;
    };
    if s.reset.is_some() {
        return;
    }
    match data {
        Received::Copy(bytes) => {
            s.make_room(bytes.len());
            s.recv.extend_from_slice(bytes)
        }
        // Split from the end of this very buffer, so joined back without a copy.
        Received::InPlace(read) => s.recv.unsplit(read),
    }
    if let Some(w) = s.read_waker.take() {
        w.wake();
    }
}

/// The remote broke the protocol.
#[derive(Debug)]
struct ProtocolError(String);

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError(e.to_string())
    }
}

impl From<&str> for ProtocolError {
    fn from(e: &str) -> Self {
        ProtocolError(e.to_owned())
    }
}

/// The task's state.
pub(crate) struct Driver {
    session: Arc<Session>,
    read_buf: BytesMut,
    /// The room the next read gets.
    read_size: usize,
    /// The current body is being read directly (see [`DIRECT_MIN`]), to its end.
    direct_body: bool,
    /// Buffered reads left that take only what the parser needs to reach the end of
    /// the next header ([`EXACT_READS`] after a direct body), so that when another
    /// large body follows, a few small frames in between, it too is read directly
    /// rather than pulled into the read buffer and copied.
    exact_reads: u8,
    read_state: ReadState,
    read_eof: bool,
    /// Reading waits: the next frame could make us queue an answer, and answers already
    /// pile up unwritten (the remote sends faster than it reads them). Writing the queue
    /// resumes it.
    read_paused: bool,
    /// While reading waits: the deadline by which the remote must take some of our
    /// bytes, or the connection is closed (a peer that never reads).
    stall: Option<Pin<Box<Sleep>>>,
    /// Frames taken from the queue and not yet written.
    writing: VecDeque<Bytes>,
    /// Buffers of data frames just written, to be kept for reuse.
    written_frames: Vec<BytesMut>,
    needs_flush: bool,
    close_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    abort_wait: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set once we close: the deadline after which the socket is dropped.
    closing: Option<Pin<Box<Sleep>>>,
    shut_down: bool,
    /// Memory reserved for the read buffer and the control frames that may wait, for the
    /// connection's life.
    buffers: Option<Reservation>,
}

impl Driver {
    pub(crate) fn new(
        session: Arc<Session>,
        close: CancellationToken,
        abort: CancellationToken,
    ) -> Self {
        Driver {
            session,
            read_buf: BytesMut::new(),
            read_size: READ_START,
            direct_body: false,
            exact_reads: 0,
            read_state: ReadState::Header,
            read_eof: false,
            read_paused: false,
            stall: None,
            writing: VecDeque::new(),
            written_frames: Vec::new(),
            needs_flush: false,
            close_wait: Box::pin(close.cancelled_owned()),
            abort_wait: Box::pin(abort.cancelled_owned()),
            closing: None,
            shut_down: false,
            buffers: None,
        }
    }

    /// Runs the connection until it ends, then tells everyone why. The socket is dropped
    /// before the end is announced, so a `close()` that returns has let go of it.
    pub(crate) async fn run(mut self) {
        let reason = match self.start() {
            Ok(()) => std::future::poll_fn(|cx| self.poll_run(cx)).await,
            Err(reason) => reason,
        };
        tracing::debug!(peer = %self.session.peer, %reason, "yamux connection ended");
        let Driver {
            session,
            buffers,
            read_buf,
            ..
        } = self;
        drop(session.io.take());
        let scope = session.end(reason);
        drop(read_buf);
        drop(buffers);
        drop(scope);
    }

    /// Memory the driver books for the connection's life: the read buffer (at most
    /// [`READ_BOOK`]; a quiet connection frees it, but reading must never wait for memory)
    /// and the control frames that may wait (queued, and being written). The write
    /// queue's data frames are booked as they are queued.
    pub(crate) fn buffer_size(_config: &super::YamuxConfig) -> usize {
        READ_BOOK + 2 * MAX_QUEUED_CONTROL
    }

    /// Reserves the buffers (before the task starts, so that what the connection holds
    /// is accounted from its first moment); on failure the connection cannot run.
    pub(crate) fn reserve_buffers(&mut self) -> Result<(), CloseReason> {
        let buffers = Self::buffer_size(&self.session.config);
        let st = self.session.lock();
        let reserved = st
            .memory()
            .reserve(buffers, priority::ALWAYS)
            .map_err(|e| CloseReason::Error(format!("no memory for the yamux buffers: {e}")))?;
        self.buffers = Some(reserved);
        Ok(())
    }

    /// Sends the ping that measures the round trip.
    fn start(&mut self) -> Result<(), CloseReason> {
        let mut st = self.session.lock();
        let nonce: u32 = rand::random();
        st.ping = Some((nonce, Instant::now()));
        st.queue_control(Header::new(FrameType::Ping, flags::SYN, 0, nonce));
        Ok(())
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if self.abort_wait.as_mut().poll(cx).is_ready() {
            return Poll::Ready(CloseReason::Local);
        }
        if self.closing.is_none() && self.close_wait.as_mut().poll(cx).is_ready() {
            self.start_closing();
        }
        self.session.set_driver_waker(cx.waker());
        match self.poll_read_side(cx) {
            Ok(()) => {}
            Err(ProtocolError(e)) => {
                tracing::debug!(peer = %self.session.peer, "yamux protocol error: {e}");
                // Best effort: tell the peer why before dropping the connection.
                let frame = Header::new(FrameType::GoAway, 0, 0, go_away::PROTOCOL_ERROR);
                if let Some(io) = self.session.io.lock().as_mut() {
                    let _ = Pin::new(&mut **io).poll_write(cx, &frame.encode());
                }
                return Poll::Ready(CloseReason::Error(format!("yamux protocol error: {e}")));
            }
        }
        let wrote = match self.poll_write_side(cx) {
            Ok(wrote) => wrote,
            Err(e) => {
                if self.closing.is_some() {
                    return Poll::Ready(CloseReason::Local);
                }
                return Poll::Ready(CloseReason::Error(format!("yamux write failed: {e}")));
            }
        };
        if let Some(reason) = self.poll_stall(cx, wrote) {
            return Poll::Ready(reason);
        }
        if let Some(deadline) = self.closing.as_mut() {
            if !self.shut_down && self.writing.is_empty() && self.session.lock().queue_is_empty() {
                match with_io(&self.session, |io, cx| io.poll_shutdown(cx), cx) {
                    Poll::Ready(_) => self.shut_down = true,
                    Poll::Pending => {}
                }
            }
            if self.shut_down && self.read_eof {
                return Poll::Ready(CloseReason::Local);
            }
            if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    peer = %self.session.peer,
                    "yamux close took longer than {:?}; dropping the connection",
                    self.session.config.close_timeout
                );
                return Poll::Ready(CloseReason::Local);
            }
        } else if self.read_eof {
            return Poll::Ready(CloseReason::Remote);
        }
        if self.read_paused && self.session.lock().may_read_more() {
            // The queue was written: read on, in the next turn.
            self.read_paused = false;
            self.stall = None;
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// While reading waits for the remote to read our answers: the remote must take some
    /// of our bytes within `close_timeout`, each write starting the wait anew; a remote
    /// that does not is not reading at all, and the connection ends (it would otherwise
    /// hold its memory, and ours, for as long as it likes).
    fn poll_stall(&mut self, cx: &mut Context<'_>, wrote: bool) -> Option<CloseReason> {
        if !self.read_paused {
            self.stall = None;
            return None;
        }
        let timeout = self.session.config.close_timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if wrote {
            stall.as_mut().reset(Instant::now() + timeout);
        }
        if stall.as_mut().poll(cx).is_ready() {
            tracing::debug!(peer = %self.session.peer, "yamux: the remote has read none of our frames for {timeout:?}");
            return Some(CloseReason::Error(format!(
                "yamux: the remote read none of our frames for {timeout:?} while we held its answers"
            )));
        }
        None
    }

    fn start_closing(&mut self) {
        self.closing = Some(Box::pin(tokio::time::sleep(
            self.session.config.close_timeout,
        )));
        self.session.go_away();
    }

    /// Reads and parses until the socket has nothing more, or for a bounded number of
    /// reads (then asks to be polled again, so writes and other tasks get their turn).
    fn poll_read_side(&mut self, cx: &mut Context<'_>) -> Result<(), ProtocolError> {
        for _ in 0..READS_PER_TURN {
            self.parse()?;
            if self.read_eof || self.read_paused {
                return Ok(());
            }
            let mut direct = match self.read_state {
                ReadState::Body {
                    stream: Some(_),
                    remaining,
                    ..
                } => {
                    self.read_buf.is_empty()
                        && (remaining as usize >= DIRECT_MIN || self.direct_body)
                }
                _ => false,
            };
            // For a chunk read, the room it had: a full one doubles the next.
            let (polled, chunk_room) = if direct {
                match self.poll_read_direct(cx) {
                    Some(polled) => (polled, None),
                    None => {
                        // The stream is gone: its body is read and dropped as usual.
                        direct = false;
                        self.poll_read_buffered(cx)
                    }
                }
            } else {
                self.poll_read_buffered(cx)
            };
            match polled {
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    if !matches!(self.read_state, ReadState::Header) || !self.read_buf.is_empty() {
                        if self.closing.is_some() {
                            return Ok(());
                        }
                        return Err("the connection ended inside a frame".into());
                    }
                    return Ok(());
                }
                Poll::Ready(Ok(n)) => {
                    if direct {
                        self.body_advanced(n);
                        match self.read_state {
                            ReadState::Body { .. } => self.direct_body = true,
                            ReadState::Header => self.exact_reads = EXACT_READS,
                        }
                    } else if chunk_room == Some(n) {
                        self.read_size = (self.read_size * 2).min(READ_CHUNK);
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    // A reset or broken socket: the remote is gone.
                    tracing::debug!(peer = %self.session.peer, "yamux read failed: {e}");
                    self.read_eof = true;
                    if self.closing.is_none() {
                        return Err(ProtocolError(format!("read failed: {e}")));
                    }
                    return Ok(());
                }
                Poll::Pending => {
                    if self.read_buf.is_empty() {
                        // Quiet: hold no buffer while waiting, however long that is.
                        self.read_buf = BytesMut::new();
                        self.read_size = READ_START;
                    }
                    return Ok(());
                }
            }
        }
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Reads into the read buffer: a chunk (returned with the room it had), or, shortly
    /// after a direct body, only up to the end of the next header.
    fn poll_read_buffered(
        &mut self,
        cx: &mut Context<'_>,
    ) -> (Poll<std::io::Result<usize>>, Option<usize>) {
        if self.read_buf.capacity() - self.read_buf.len() < self.read_size / 2 {
            self.read_buf.reserve(self.read_size);
        }
        let chunk_room = self.read_buf.capacity() - self.read_buf.len();
        let (room, chunk) = if self.exact_reads > 0 {
            self.exact_reads -= 1;
            let needed = match self.read_state {
                ReadState::Header => HEADER_LEN.saturating_sub(self.read_buf.len()),
                // The parser took every body byte there was: the rest, then a header.
                ReadState::Body { remaining, .. } => remaining as usize + HEADER_LEN,
            };
            (needed.clamp(1, chunk_room), None)
        } else {
            (chunk_room, Some(chunk_room))
        };
        let read_buf = &mut self.read_buf;
        let polled = with_io(
            &self.session,
            |io, cx| tokio_util::io::poll_read_buf(io, cx, &mut read_buf.limit(room)),
            cx,
        );
        (polled, chunk)
    }

    /// Reads the current body's next bytes straight into the end of its stream's
    /// buffer, at most what is left of the body; the bytes are handed over as they come.
    /// `None` when the stream is gone or reset (nothing was read).
    fn poll_read_direct(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<usize>>> {
        let ReadState::Body {
            stream: Some(id),
            remaining,
            ..
        } = self.read_state
        else {
            return None;
        };
        // Never past the body's end: what follows is the next frame's header.
        let room = (remaining as usize).min(DIRECT_CHUNK);
        let mut spare = {
            let mut st = self.session.lock();
            if !room_for_arrival(&mut st, &self.session, id, room) {
                return None;
            }
            let s = st.streams.get_mut(&id).filter(|s| s.reset.is_none())?;
            // Reclaims the room the reader has emptied, or grows as a copy would (never
            // past what is reserved for the stream).
            s.make_room(room);
            let len = s.recv.len();
            s.recv.split_off(len)
        };
        let polled = with_io(
            &self.session,
            |io, cx| tokio_util::io::poll_read_buf(io, cx, &mut (&mut spare).limit(room)),
            cx,
        );
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                deliver(&self.session, id, Received::InPlace(spare));
            }
        }
        Some(polled)
    }

    /// `n` more bytes of the current body are handled: moves on to the next header at
    /// its end.
    fn body_advanced(&mut self, n: usize) {
        let ReadState::Body {
            stream,
            remaining,
            fin,
        } = self.read_state
        else {
            return;
        };
        let remaining = remaining - n as u32;
        if remaining == 0 {
            self.read_state = ReadState::Header;
            self.direct_body = false;
            if let (true, Some(id)) = (fin, stream) {
                self.on_fin(id);
            }
        } else {
            self.read_state = ReadState::Body {
                stream,
                remaining,
                fin,
            };
        }
    }

    /// Parses every whole header and every piece of body in the buffer.
    fn parse(&mut self) -> Result<(), ProtocolError> {
        loop {
            match self.read_state {
                ReadState::Header => {
                    let Some(raw) = self.read_buf.get(..HEADER_LEN) else {
                        return Ok(());
                    };
                    let mut bytes = [0u8; HEADER_LEN];
                    bytes.copy_from_slice(raw);
                    let header = Header::decode(&bytes)?;
                    let hold = {
                        let st = self.session.lock();
                        !st.may_read_more() && may_answer(&header, &st)
                    };
                    if hold {
                        // Leave the frame unread until its answer fits: backpressure
                        // instead of a dropped answer or a growing queue. Frames that
                        // answer nothing (data for open streams) still flow.
                        self.read_paused = true;
                        return Ok(());
                    }
                    self.read_buf.advance(HEADER_LEN);
                    self.on_header(header)?;
                }
                ReadState::Body {
                    stream, remaining, ..
                } => {
                    if self.read_buf.is_empty() {
                        return Ok(());
                    }
                    let n = self.read_buf.len().min(remaining as usize);
                    if let Some(id) = stream {
                        deliver(&self.session, id, Received::Copy(&self.read_buf[..n]));
                    }
                    self.read_buf.advance(n);
                    self.body_advanced(n);
                }
            }
        }
    }

    fn on_header(&mut self, h: Header) -> Result<(), ProtocolError> {
        match h.typ {
            FrameType::Data | FrameType::WindowUpdate => self.on_stream_frame(h),
            FrameType::Ping => {
                let mut st = self.session.lock();
                if h.has(flags::SYN) {
                    // Room was checked before the header was taken (see `parse`).
                    st.ping_answers_queued += 1;
                    st.queue_control(Header::new(FrameType::Ping, flags::ACK, 0, h.length));
                } else if h.has(flags::ACK) {
                    if let Some((nonce, sent)) = st.ping {
                        if nonce == h.length {
                            st.rtt = Some(sent.elapsed());
                            st.ping = None;
                        }
                    }
                }
                Ok(())
            }
            FrameType::GoAway => {
                if h.length != go_away::NORMAL {
                    tracing::debug!(peer = %self.session.peer, code = h.length, "yamux Go Away with an error code");
                }
                self.session.lock().remote_go_away = true;
                Ok(())
            }
        }
    }

    fn on_stream_frame(&mut self, h: Header) -> Result<(), ProtocolError> {
        let id = h.stream;
        if id == 0 {
            return Err("a stream frame for stream 0".into());
        }
        let data_len = if h.typ == FrameType::Data {
            h.length
        } else {
            0
        };
        let mut st = self.session.lock();
        if h.has(flags::SYN) {
            if !self.session.is_remote_id(id) {
                return Err(ProtocolError(format!(
                    "the remote opened stream {id} of our parity"
                )));
            }
            if st.streams.contains_key(&id) {
                return Err(ProtocolError(format!("stream {id} opened twice")));
            }
            let extra = if h.typ == FrameType::WindowUpdate {
                h.length
            } else {
                0
            };
            let accepted = st.accept_new(&self.session.config, id, extra)?;
            if accepted {
                drop(st);
                self.session.accept.notify_one();
                st = self.session.lock();
            } else {
                drop(st);
                self.skip_body(None, data_len);
                return Ok(());
            }
        }
        let Some(s) = st.streams.get_mut(&id) else {
            // A stream we no longer know (we dropped it, or never had it): say so once,
            // unless the frame itself ends the stream; the queue limit bounds the answers
            // a remote can make us queue.
            let ends = h.has(flags::RST) || h.has(flags::FIN);
            if !ends
                && h.typ == FrameType::Data
                && st.out_bytes < self.session.config.write_queue_limit()
            {
                st.queue_control(Header::new(FrameType::WindowUpdate, flags::RST, id, 0));
            }
            drop(st);
            self.skip_body(None, data_len);
            return Ok(());
        };
        if h.has(flags::RST) {
            if s.reset.is_none() {
                s.reset = Some(Reset::Remote);
                s.recv.clear();
            }
            s.wake();
            drop(st);
            self.skip_body(None, data_len);
            return Ok(());
        }
        match h.typ {
            FrameType::WindowUpdate => {
                s.send_credit = s
                    .send_credit
                    .checked_add(h.length)
                    .ok_or("window credit overflows")?;
                if let Some(w) = s.write_waker.take() {
                    w.wake();
                }
                drop(st);
                if h.has(flags::FIN) {
                    self.on_fin(id);
                }
            }
            FrameType::Data => {
                let keep = s.reset.is_none();
                if keep {
                    if h.length > s.recv_credit {
                        return Err(ProtocolError(format!(
                            "stream {id} sent {} bytes with {} bytes of window",
                            h.length, s.recv_credit
                        )));
                    }
                    s.recv_credit -= h.length;
                }
                drop(st);
                let fin = h.has(flags::FIN);
                if h.length == 0 {
                    if fin {
                        self.on_fin(id);
                    }
                } else {
                    self.read_state = ReadState::Body {
                        stream: keep.then_some(id),
                        remaining: h.length,
                        fin,
                    };
                }
            }
            FrameType::Ping | FrameType::GoAway => {}
        }
        Ok(())
    }

    /// Drops the next `len` body bytes.
    fn skip_body(&mut self, stream: Option<u32>, len: u32) {
        if len > 0 {
            self.read_state = ReadState::Body {
                stream,
                remaining: len,
                fin: false,
            };
        }
    }

    fn on_fin(&mut self, id: u32) {
        let mut st = self.session.lock();
        if let Some(s) = st.streams.get_mut(&id) {
            s.remote_fin = true;
            if let Some(w) = s.read_waker.take() {
                w.wake();
            }
        }
    }

    /// Writes queued frames until the socket pushes back, then flushes. Says whether
    /// anything was written.
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> std::io::Result<bool> {
        let limit = self.session.config.write_queue_limit();
        let mut wrote = false;
        loop {
            if self.writing.is_empty() {
                let mut st = self.session.lock();
                if st.writing_through {
                    // A writer is writing a frame through; what it leaves goes first.
                    // It wakes us when it is done.
                    st.io_wanted = true;
                    break;
                }
                if st.queue_is_empty() {
                    if !wrote {
                        // Nothing to write this turn: hold no spare memory while idle.
                        st.drop_spare_frames();
                    }
                    break;
                }
                st.take_queue(&mut self.writing);
            }
            let slices: Vec<IoSlice<'_>> = self
                .writing
                .iter()
                .take(WRITE_BATCH)
                .map(|b| IoSlice::new(b))
                .collect();
            let polled = with_io(
                &self.session,
                |io, cx| io.poll_write_vectored(cx, &slices),
                cx,
            );
            match polled {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.advance_written(n);
                    let mut st = self.session.lock();
                    st.written(n, limit);
                    if !self.written_frames.is_empty() {
                        st.keep_spare_frames(&mut self.written_frames, limit);
                    }
                    if self.writing.is_empty() {
                        // All written and nothing kept: the queue's memory goes back now,
                        // not at the next idle turn (there may be none for long).
                        st.unbook_queue_if_idle();
                    }
                    drop(st);
                    self.needs_flush = true;
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(wrote),
            }
        }
        // A writer that wrote through and could not flush leaves that to us.
        if std::mem::take(&mut self.session.lock().flush_wanted) {
            self.needs_flush = true;
        }
        if self.needs_flush {
            match with_io(&self.session, |io, cx| io.poll_flush(cx), cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(wrote)
    }

    fn advance_written(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.writing.front_mut() else {
                return;
            };
            if n >= front.len() {
                n -= front.len();
                if let Some(Ok(mut buf)) = self.writing.pop_front().map(Bytes::try_into_mut) {
                    // Written, and nobody else holds it: worth keeping if large. What a
                    // frame written in parts shows is only its last part; reclaiming
                    // brings back the whole buffer.
                    buf.clear();
                    if buf.try_reclaim(RECYCLE_MIN) {
                        self.written_frames.push(buf);
                    }
                }
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

/// Whether reading the frame `h` could make us queue an answer: a ping, a new stream (an
/// acknowledgement or a reset), a frame for a stream we do not know (a reset). Data and
/// window updates for open streams answer nothing, so they are read even while answers
/// pile up: the remote's own bulk data never waits behind its unread answers.
fn may_answer(h: &Header, st: &State) -> bool {
    match h.typ {
        FrameType::Ping => h.has(flags::SYN),
        FrameType::GoAway => false,
        FrameType::Data | FrameType::WindowUpdate => {
            h.has(flags::SYN) || (!h.has(flags::RST) && !st.streams.contains_key(&h.stream))
        }
    }
}

/// Makes sure stream `id`'s buffer may take `n` more bytes within its reservation (a
/// stream whose window shrank reserves its first 256 KiB as they arrive). When memory
/// does not allow it, the stream is reset (its bytes are then dropped as they come) and
/// false is returned; true otherwise, also for a stream that is gone or reset.
fn room_for_arrival(st: &mut State, session: &Session, id: u32, n: usize) -> bool {
    match st.reserve_arrival(&session.config, id, n) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(peer = %session.peer, stream = id, "no memory for received data: {e}; resetting the stream");
            reset_locally(st, id);
            false
        }
    }
}

/// Resets stream `id` on our side: its buffer is dropped, its reader and writer fail,
/// and the remote is told.
fn reset_locally(st: &mut State, id: u32) {
    let Some(s) = st.streams.get_mut(&id) else {
        return;
    };
    s.reset = Some(Reset::Local);
    s.recv = BytesMut::new();
    s.wake();
    let open_flag = std::mem::take(&mut s.open_flag);
    st.queue_control(Header::new(
        FrameType::WindowUpdate,
        flags::RST | open_flag,
        id,
        0,
    ));
}

/// Runs one poll call on the connection's secured stream under its lock (never held
/// longer); once the driver has let go of the stream, every call fails. While a writer
/// holds the stream (writing a frame through), the driver does not block its thread on
/// it: it asks to be woken when the writer is done, and waits.
fn with_io<T>(
    session: &Session,
    f: impl FnOnce(Pin<&mut dyn SecureStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<T>> {
    let mut guard = match session.io.try_lock() {
        Some(guard) => guard,
        None => {
            session.lock().io_wanted = true;
            // The writer may have finished in between, before it could see the flag.
            match session.io.try_lock() {
                Some(guard) => guard,
                None => return Poll::Pending,
            }
        }
    };
    match guard.as_mut() {
        Some(io) => f(Pin::new(&mut **io), cx),
        None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
    }
}
