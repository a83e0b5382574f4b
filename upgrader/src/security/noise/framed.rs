//! Noise framing and the encrypted stream that runs after the handshake.
//!
//! Every Noise message, handshake or transport, travels as a 2-byte big-endian length
//! followed by that many bytes. [`NoiseStream`] seals what is written into frames of at
//! most [`MAX_PLAINTEXT_LEN`] bytes of plaintext and opens frames as they are read. It
//! holds one frame's worth of buffer each way (ciphertext and plaintext), allocated once,
//! so memory per connection is bounded whatever the peer sends.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use strata_core::rcmgr::priority;
use strata_core::{Reservation, ScopeMemory};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest Noise message, and so the largest frame body.
pub const MAX_FRAME_LEN: usize = 65535;
/// The ChaChaPoly authentication tag that every transport message carries.
pub const TAG_LEN: usize = 16;
/// The most plaintext one transport frame carries.
pub const MAX_PLAINTEXT_LEN: usize = MAX_FRAME_LEN - TAG_LEN;
/// The length prefix of every frame.
pub const LEN_PREFIX: usize = 2;

/// Why bytes do not form a valid transport frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces a body shorter than the authentication tag, so it
    /// cannot be a sealed message.
    TooShort(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooShort(len) => write!(
                f,
                "noise frame of {len} bytes is shorter than the {TAG_LEN}-byte tag"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks for a complete transport frame at the start of `buf`.
///
/// Returns `Ok(Some(body_len))` when the prefix and the whole body are present (the
/// frame takes `LEN_PREFIX + body_len` bytes), `Ok(None)` when more bytes are needed, and
/// an error when the prefix cannot start a valid transport frame. The 2-byte prefix
/// bounds every body to [`MAX_FRAME_LEN`] by construction.
pub fn transport_frame(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes(*prefix));
    if len < TAG_LEN {
        return Err(FrameError::TooShort(len));
    }
    Ok((buf.len() - LEN_PREFIX >= len).then_some(len))
}

/// Writes the length prefix for a body of `len` bytes (at most [`MAX_FRAME_LEN`]).
pub fn encode_len(len: usize) -> [u8; LEN_PREFIX] {
    // Callers pass lengths that snow produced, which never exceed a Noise message.
    debug_assert!(len <= MAX_FRAME_LEN);
    (len.min(MAX_FRAME_LEN) as u16).to_be_bytes()
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// An encrypted stream after a completed Noise handshake, over any byte stream `T`.
///
/// Writes are buffered: up to [`MAX_PLAINTEXT_LEN`] bytes gather into one frame, which is
/// sealed when full or on `poll_flush`. A write of a whole frame's worth with nothing
/// buffered is sealed straight from the caller's slice. Reads open whole frames; when the
/// caller's buffer can hold a frame's plaintext it is decrypted straight into it,
/// otherwise into an internal buffer that serves partial reads.
///
/// The frame-sized buffers are allocated when traffic needs them and freed once the
/// stream is idle again (nothing buffered when a read has to wait, nothing left to send
/// after a flush), so a thousand idle connections do not hold a quarter MiB each. Each
/// is reserved from the connection's memory before it is allocated and released when it
/// is freed ([`NoiseStream::with_memory`]); a refused reservation fails the read or write
/// (the connection then ends) rather than allocating.
pub struct NoiseStream<T> {
    inner: T,
    state: snow::TransportState,
    /// Raw bytes read from `inner`: `read_buf[read_start..read_end]` is not yet consumed.
    /// Empty while idle.
    read_buf: Box<[u8]>,
    read_start: usize,
    read_end: usize,
    /// Opened plaintext not yet handed out: `plain[plain_start..plain_end]`. Empty
    /// while idle.
    plain: Box<[u8]>,
    plain_start: usize,
    plain_end: usize,
    /// Set once a read has failed; the cipher state is then out of step for good.
    read_failed: bool,
    /// Plaintext gathered for the next frame.
    write_plain: Vec<u8>,
    /// A sealed frame (prefix included): `write_frame[write_start..write_end]` is unsent.
    /// Empty while idle.
    write_frame: Box<[u8]>,
    write_start: usize,
    write_end: usize,
    /// What the buffers above hold, reserved from the connection's memory.
    held: Reservation,
}

/// A buffer reservation the connection's scope refused.
fn out_of_memory(e: strata_core::ResourceError) -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!("no memory for a noise buffer: {e}"),
    )
}

/// Reserves `len` bytes in `held`, then allocates a zeroed buffer of that size.
fn alloc(held: &mut Reservation, len: usize) -> io::Result<Box<[u8]>> {
    held.grow(len, priority::ALWAYS).map_err(out_of_memory)?;
    Ok(vec![0; len].into_boxed_slice())
}

/// Frees `buf` and gives its bytes back.
fn free(held: &mut Reservation, buf: &mut Box<[u8]>) {
    held.shrink(buf.len());
    *buf = Box::default();
}

impl<T> NoiseStream<T> {
    /// Wraps `inner` with the transport state of a finished handshake. Nothing may have
    /// been read from `inner` past the last handshake message. Its buffers are not
    /// accounted (see [`NoiseStream::with_memory`]).
    pub fn new(inner: T, state: snow::TransportState) -> Self {
        Self::with_memory(inner, state, ScopeMemory::unlimited())
    }

    /// [`NoiseStream::new`], reserving its buffers from `memory` as it allocates them.
    pub fn with_memory(inner: T, state: snow::TransportState, memory: ScopeMemory) -> Self {
        NoiseStream {
            inner,
            state,
            read_buf: Box::default(),
            read_start: 0,
            read_end: 0,
            plain: Box::default(),
            plain_start: 0,
            plain_end: 0,
            read_failed: false,
            write_plain: Vec::new(),
            write_frame: Box::default(),
            write_start: 0,
            write_end: 0,
            held: memory.empty(),
        }
    }

    /// Bytes its buffers hold now.
    pub fn buffered_capacity(&self) -> usize {
        self.held.size()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Seals `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) into the frame buffer,
    /// which must be empty (allocated here if the stream was idle).
    fn seal(
        state: &mut snow::TransportState,
        held: &mut Reservation,
        frame: &mut Box<[u8]>,
        plaintext: &[u8],
    ) -> io::Result<usize> {
        if frame.is_empty() {
            *frame = alloc(held, LEN_PREFIX + MAX_FRAME_LEN)?;
        }
        let len = state
            .write_message(plaintext, &mut frame[LEN_PREFIX..])
            .map_err(|e| io::Error::other(format!("noise encryption failed: {e}")))?;
        frame[..LEN_PREFIX].copy_from_slice(&encode_len(len));
        Ok(LEN_PREFIX + len)
    }

    /// Frees the read-side buffers when they hold nothing: the stream waits for the
    /// peer and may wait long.
    fn release_idle_read_buffers(&mut self) {
        if self.read_start == self.read_end {
            free(&mut self.held, &mut self.read_buf);
            self.read_start = 0;
            self.read_end = 0;
        }
        if self.plain_start == self.plain_end {
            free(&mut self.held, &mut self.plain);
            self.plain_start = 0;
            self.plain_end = 0;
        }
    }

    fn fail_read(&mut self, err: io::Error) -> Poll<io::Result<()>> {
        self.read_failed = true;
        Poll::Ready(Err(err))
    }
}

impl<T: AsyncWrite + Unpin> NoiseStream<T> {
    /// Sends the sealed frame, if any, until it has all gone to `inner`.
    fn poll_send_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.write_start < self.write_end {
            let n = ready!(Pin::new(&mut self.inner)
                .poll_write(cx, &self.write_frame[self.write_start..self.write_end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write_start += n;
        }
        self.write_start = 0;
        self.write_end = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals the gathered plaintext; the frame buffer must be free.
    fn seal_gathered(&mut self) -> io::Result<()> {
        self.write_end = Self::seal(
            &mut self.state,
            &mut self.held,
            &mut self.write_frame,
            &self.write_plain,
        )?;
        self.write_plain.clear();
        Ok(())
    }

    /// Makes room for `n` more bytes of plaintext to gather (at most a frame's worth in
    /// all), reserving what the gathering buffer grows by.
    fn room_to_gather(&mut self, n: usize) -> io::Result<()> {
        let need = self.write_plain.len() + n;
        let old = self.write_plain.capacity();
        if need <= old {
            return Ok(());
        }
        let target = need
            .next_power_of_two()
            .clamp(need, MAX_PLAINTEXT_LEN.max(need));
        self.held
            .grow(target - old, priority::ALWAYS)
            .map_err(out_of_memory)?;
        self.write_plain
            .reserve_exact(target - self.write_plain.len());
        // The allocator may round up; what it really holds is what is charged.
        let actual = self.write_plain.capacity();
        if actual > target {
            self.held
                .grow(actual - target, priority::ALWAYS)
                .map_err(out_of_memory)?;
        }
        Ok(())
    }

    /// Frees the gathering buffer (nothing is gathered).
    fn free_gathering(&mut self) {
        self.held.shrink(self.write_plain.capacity());
        self.write_plain = Vec::new();
    }

    /// Makes room to accept more plaintext: `Ready(Ok(true))` when the frame buffer is
    /// free too, `Ready(Ok(false))` when only the gathering buffer has room.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.write_end > 0 {
                match self.poll_send_frame(cx) {
                    Poll::Ready(result) => result?,
                    // The socket is busy, but small writes can still gather.
                    Poll::Pending if self.write_plain.len() < MAX_PLAINTEXT_LEN => {
                        return Poll::Ready(Ok(false))
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.write_plain.len() < MAX_PLAINTEXT_LEN {
                return Poll::Ready(Ok(true));
            }
            self.seal_gathered()?;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NoiseStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_failed {
            return Poll::Ready(Err(invalid_data("the noise stream failed earlier")));
        }
        if this.plain_start < this.plain_end {
            let n = buf.remaining().min(this.plain_end - this.plain_start);
            buf.put_slice(&this.plain[this.plain_start..this.plain_start + n]);
            this.plain_start += n;
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        loop {
            let pending = &this.read_buf[this.read_start..this.read_end];
            match transport_frame(pending) {
                Err(e) => return this.fail_read(invalid_data(e.to_string())),
                Ok(Some(body_len)) => {
                    let body_start = this.read_start + LEN_PREFIX;
                    let body = &this.read_buf[body_start..body_start + body_len];
                    let plain_len = body_len - TAG_LEN;
                    if buf.remaining() >= plain_len {
                        // Open straight into the caller's buffer: one copy fewer. Only
                        // the bytes needed are initialised, not the whole spare room.
                        match this
                            .state
                            .read_message(body, buf.initialize_unfilled_to(plain_len))
                        {
                            Ok(n) => buf.advance(n),
                            Err(e) => {
                                return this.fail_read(invalid_data(format!(
                                    "noise decryption failed: {e}"
                                )))
                            }
                        }
                        this.read_start = body_start + body_len;
                        continue;
                    }
                    if buf.filled().len() > before {
                        // Hand out what we have; this frame waits for the next read.
                        return Poll::Ready(Ok(()));
                    }
                    if this.plain.is_empty() {
                        this.plain = match alloc(&mut this.held, MAX_PLAINTEXT_LEN) {
                            Ok(buf) => buf,
                            Err(e) => return this.fail_read(e),
                        };
                    }
                    let body = &this.read_buf[body_start..body_start + body_len];
                    match this.state.read_message(body, &mut this.plain) {
                        Ok(n) => {
                            this.plain_start = 0;
                            this.plain_end = n;
                        }
                        Err(e) => {
                            return this
                                .fail_read(invalid_data(format!("noise decryption failed: {e}")))
                        }
                    }
                    this.read_start = body_start + body_len;
                    let n = buf.remaining().min(this.plain_end);
                    buf.put_slice(&this.plain[..n]);
                    this.plain_start = n;
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => {
                    // An empty frame opens to nothing; only report once real bytes came.
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                    if this.read_start == this.read_end {
                        this.read_start = 0;
                        this.read_end = 0;
                    }
                    if this.read_buf.is_empty() {
                        this.read_buf = match alloc(&mut this.held, LEN_PREFIX + MAX_FRAME_LEN) {
                            Ok(buf) => buf,
                            Err(e) => return this.fail_read(e),
                        };
                    }
                    let pending = &this.read_buf[this.read_start..this.read_end];
                    let frame_len = pending
                        .first_chunk::<LEN_PREFIX>()
                        .map(|prefix| LEN_PREFIX + usize::from(u16::from_be_bytes(*prefix)));
                    // Move a partial frame to the front when the rest of it would not fit
                    // behind it. The buffer holds one whole frame, so it then does.
                    if this.read_start + frame_len.unwrap_or(LEN_PREFIX) > this.read_buf.len() {
                        this.read_buf.copy_within(this.read_start..this.read_end, 0);
                        this.read_end -= this.read_start;
                        this.read_start = 0;
                    }
                    // Once a frame's length is known, read no further than its end: the
                    // buffer then empties with it and the next frame starts at offset 0,
                    // so bulk transfers of full frames never need the move above.
                    let limit = match frame_len {
                        Some(len) => this.read_start + len,
                        None => this.read_buf.len(),
                    };
                    let mut raw = ReadBuf::new(&mut this.read_buf[this.read_end..limit]);
                    let polled = Pin::new(&mut this.inner).poll_read(cx, &mut raw);
                    let n = raw.filled().len();
                    if polled.is_pending() {
                        this.release_idle_read_buffers();
                        return Poll::Pending;
                    }
                    if let Poll::Ready(Err(e)) = polled {
                        return Poll::Ready(Err(e));
                    }
                    if n == 0 {
                        if this.read_start == this.read_end {
                            // A clean end of stream between frames.
                            return Poll::Ready(Ok(()));
                        }
                        return this.fail_read(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the noise stream ended inside a frame",
                        ));
                    }
                    this.read_end += n;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoiseStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let frame_free = ready!(this.poll_room(cx))?;
        if frame_free && this.write_plain.is_empty() && buf.len() >= MAX_PLAINTEXT_LEN {
            // A whole frame's worth: seal it from the caller's slice without gathering.
            this.write_end = Self::seal(
                &mut this.state,
                &mut this.held,
                &mut this.write_frame,
                &buf[..MAX_PLAINTEXT_LEN],
            )?;
            return Poll::Ready(Ok(MAX_PLAINTEXT_LEN));
        }
        let n = buf.len().min(MAX_PLAINTEXT_LEN - this.write_plain.len());
        this.room_to_gather(n)?;
        this.write_plain.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if first.len() >= MAX_PLAINTEXT_LEN {
            return Pin::new(this).poll_write(cx, first);
        }
        // Gather several small slices (a muxer header and its body) into one frame.
        ready!(this.poll_room(cx))?;
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        this.room_to_gather(wanted.min(MAX_PLAINTEXT_LEN - this.write_plain.len()))?;
        let mut total = 0;
        for b in bufs {
            let n = b.len().min(MAX_PLAINTEXT_LEN - this.write_plain.len());
            this.write_plain.extend_from_slice(&b[..n]);
            total += n;
            if n < b.len() {
                break;
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_send_frame(cx))?;
            if this.write_plain.is_empty() {
                break;
            }
            this.seal_gathered()?;
        }
        // Everything is out: the write buffers go until the next write needs them.
        free(&mut this.held, &mut this.write_frame);
        this.free_gathering();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_frame_parses_prefix_and_body() {
        assert_eq!(transport_frame(&[]), Ok(None));
        assert_eq!(transport_frame(&[0]), Ok(None));
        assert_eq!(transport_frame(&[0, 16]), Ok(None));
        let mut frame = vec![0, 16];
        frame.extend_from_slice(&[9; 15]);
        assert_eq!(transport_frame(&frame), Ok(None));
        frame.push(9);
        assert_eq!(transport_frame(&frame), Ok(Some(16)));
        frame.extend_from_slice(&[1, 2, 3]);
        assert_eq!(transport_frame(&frame), Ok(Some(16)), "trailing bytes stay");
        assert_eq!(transport_frame(&[0xff, 0xff]), Ok(None));
    }

    #[test]
    fn transport_frame_refuses_bodies_shorter_than_a_tag() {
        assert_eq!(transport_frame(&[0, 0]), Err(FrameError::TooShort(0)));
        assert_eq!(transport_frame(&[0, 15, 1]), Err(FrameError::TooShort(15)));
    }

    /// Two transport states from an in-memory XX handshake.
    fn transport_pair() -> (snow::TransportState, snow::TransportState) {
        let params: snow::params::NoiseParams = "Noise_XX_25519_ChaChaPoly_SHA256".parse().unwrap();
        let key = |_| {
            snow::Builder::new(params.clone())
                .generate_keypair()
                .unwrap()
        };
        let (ki, kr) = (key(0), key(1));
        let mut i = snow::Builder::new(params.clone())
            .local_private_key(&ki.private)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params.clone())
            .local_private_key(&kr.private)
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut msg, mut out) = (vec![0u8; MAX_FRAME_LEN], vec![0u8; MAX_FRAME_LEN]);
        let n = i.write_message(&[], &mut msg).unwrap();
        r.read_message(&msg[..n], &mut out).unwrap();
        let n = r.write_message(&[], &mut msg).unwrap();
        i.read_message(&msg[..n], &mut out).unwrap();
        let n = i.write_message(&[], &mut msg).unwrap();
        r.read_message(&msg[..n], &mut out).unwrap();
        (
            i.into_transport_mode().unwrap(),
            r.into_transport_mode().unwrap(),
        )
    }

    #[tokio::test]
    async fn mixed_frame_sizes_survive_any_read_size() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (si, sr) = transport_pair();
        // A small pipe, so the reader sees frames cut at arbitrary points.
        let (a, b) = tokio::io::duplex(7000);
        let mut writer = NoiseStream::new(a, si);
        let mut reader = NoiseStream::new(b, sr);
        let mut expected = Vec::new();
        let mut pieces = Vec::new();
        for i in 0..300usize {
            pieces.push(vec![i as u8; i % 97 + 1]);
        }
        pieces.push((0..200_000u32).map(|i| (i % 251) as u8).collect());
        pieces.push(vec![7u8; 3]);
        for p in &pieces {
            expected.extend_from_slice(p);
        }
        let send = tokio::spawn(async move {
            for p in pieces {
                writer.write_all(&p).await.unwrap();
                // Flushing each piece makes one frame per piece, of every size.
                writer.flush().await.unwrap();
            }
            writer.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let sizes = [1usize, 5, 100, 70_000, 3, 65_519, 4096];
        let mut buf = vec![0u8; 70_000];
        for k in 0.. {
            let want = sizes[k % sizes.len()];
            let n = reader.read(&mut buf[..want]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        send.await.unwrap();
        assert!(got == expected, "data differs");
    }

    #[tokio::test]
    async fn stream_ending_inside_a_frame_is_unexpected_eof() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_si, sr) = transport_pair();
        let (mut a, b) = tokio::io::duplex(1024);
        let mut reader = NoiseStream::new(b, sr);
        a.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
        drop(a);
        let err = reader.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn encode_len_is_big_endian() {
        assert_eq!(encode_len(0x1234), [0x12, 0x34]);
        assert_eq!(encode_len(MAX_FRAME_LEN), [0xff, 0xff]);
    }
}
