//! The dialer and listener sides of multistream-select over any tokio byte stream.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::message::{decode_body, decode_length, encode, Message, MessageError};

/// The most proposals a listener answers before it gives up on the dialer.
pub const MAX_PROPOSALS: usize = 32;

/// Negotiation failed.
#[derive(Debug, thiserror::Error)]
pub enum NegotiationError {
    /// The connection failed or ended.
    #[error("I/O during protocol negotiation: {0}")]
    Io(#[from] io::Error),
    /// The remote sent bytes that are not a valid message.
    #[error("invalid multistream-select message: {0}")]
    Message(#[from] MessageError),
    /// The remote sent a valid message where another was due.
    #[error("unexpected multistream-select message: {0}")]
    Unexpected(String),
    /// The remote refused every protocol we proposed.
    #[error("the remote supports none of {0:?}")]
    Refused(Vec<String>),
    /// The dialer proposed more than [`MAX_PROPOSALS`] protocols.
    #[error("the remote proposed more than {MAX_PROPOSALS} protocols")]
    TooManyProposals,
    /// Negotiation took longer than its deadline.
    #[error("protocol negotiation timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl From<NegotiationError> for io::Error {
    fn from(e: NegotiationError) -> io::Error {
        match e {
            NegotiationError::Io(e) => e,
            NegotiationError::Refused(_) => io::Error::new(io::ErrorKind::Unsupported, e),
            NegotiationError::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Reads one message exactly: the length prefix a byte at a time, then the body, so that
/// no byte past the message is consumed.
#[derive(Debug, Default)]
struct MessageReader {
    buf: Vec<u8>,
    /// (body length, prefix length) once the prefix is complete.
    frame: Option<(usize, usize)>,
}

impl MessageReader {
    fn poll_read<IO: AsyncRead + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        expect_list: bool,
    ) -> Poll<Result<Message, NegotiationError>> {
        loop {
            let (want, done) = match self.frame {
                None => (self.buf.len() + 1, false),
                Some((len, prefix)) => (prefix + len, self.buf.len() == prefix + len),
            };
            if done {
                let (_, prefix) = self.frame.take().unwrap_or_default();
                let msg = decode_body(&self.buf[prefix..], expect_list);
                self.buf.clear();
                return Poll::Ready(msg.map_err(Into::into));
            }
            let start = self.buf.len();
            self.buf.resize(want, 0);
            let mut read_buf = ReadBuf::new(&mut self.buf[start..]);
            let polled = Pin::new(&mut *io).poll_read(cx, &mut read_buf);
            let n = read_buf.filled().len();
            self.buf.truncate(start + n);
            ready!(polled)?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
            }
            if self.frame.is_none() {
                self.frame = decode_length(&self.buf)?;
            }
        }
    }
}

impl MessageReader {
    /// A reader that already holds the first bytes of its message.
    fn with_prefix(prefix: &[u8]) -> Result<Self, NegotiationError> {
        Ok(MessageReader {
            buf: prefix.to_vec(),
            frame: decode_length(prefix)?,
        })
    }
}

async fn read_message<IO: AsyncRead + Unpin>(
    io: &mut IO,
    expect_list: bool,
) -> Result<Message, NegotiationError> {
    let mut reader = MessageReader::default();
    poll_fn(|cx| reader.poll_read(io, cx, expect_list)).await
}

async fn write_messages<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    msgs: &[Message],
) -> Result<(), NegotiationError> {
    io.write_all(&encode_all(msgs)).await?;
    io.flush().await?;
    Ok(())
}

fn encode_all(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for m in msgs {
        encode(m, &mut out);
    }
    out
}

/// Sends a lazy proposal. Only a failed write fails it: once the proposal is written the
/// remote may answer it at any moment, even with a reset before the flush below returns,
/// and that answer belongs to the first read (with the protocol unconfirmed), as any
/// other refusal of a lazy proposal does. The failed state stays on the stream, so no
/// error is lost.
async fn queue_lazy_proposal<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    msgs: &[Message],
) -> Result<(), NegotiationError> {
    io.write_all(&encode_all(msgs)).await?;
    if let Err(e) = io.flush().await {
        tracing::debug!(error = %e, "lazy proposal: flush failed, reported on first read");
    }
    Ok(())
}

/// The dialer side: proposes `protocols` in order until the listener accepts one, and
/// returns it. The header and the first proposal go out in one write.
pub async fn dialer_select<IO, P>(io: &mut IO, protocols: &[P]) -> Result<String, NegotiationError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    P: AsRef<str>,
{
    let Some(first) = protocols.first() else {
        return Err(NegotiationError::Refused(Vec::new()));
    };
    write_messages(
        io,
        &[
            Message::Header,
            Message::Protocol(first.as_ref().to_string()),
        ],
    )
    .await?;
    expect_header(io).await?;
    for (i, proposal) in protocols.iter().enumerate() {
        let proposal = proposal.as_ref();
        if i > 0 {
            write_messages(io, &[Message::Protocol(proposal.to_string())]).await?;
        }
        match read_message(io, false).await? {
            Message::Protocol(p) if p == proposal => return Ok(p),
            Message::NotAvailable => continue,
            other => return Err(NegotiationError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(NegotiationError::Refused(
        protocols.iter().map(|p| p.as_ref().to_string()).collect(),
    ))
}

async fn expect_header<IO: AsyncRead + Unpin>(io: &mut IO) -> Result<(), NegotiationError> {
    match read_message(io, false).await? {
        Message::Header => Ok(()),
        other => Err(NegotiationError::Unexpected(format!(
            "expected the multistream header, got {other:?}"
        ))),
    }
}

/// The listener side: answers proposals until one is `supported`, and returns it.
/// `ls` is answered with `list()`. Unknown protocols get `na`.
pub async fn listener_select<IO, S, L>(
    io: &mut IO,
    supported: S,
    list: L,
) -> Result<String, NegotiationError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Fn(&str) -> bool,
    L: Fn() -> Vec<String>,
{
    listener_select_pipelined(io, supported, list, |_| None).await
}

/// How the first message of a protocol is framed, for a listener that refuses the
/// protocol while a dialer may already have sent that message right behind its proposal
/// (optimistic security negotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMessage {
    /// A TLS record: content type 22 (handshake), version `03 xx`, a 2-byte length.
    TlsRecord,
    /// A libp2p Noise frame: a 2-byte big-endian length (Noise message 1 is 32 bytes).
    NoiseFrame,
}

/// The largest TLS record body (2^14 plus the most expansion TLS allows).
const MAX_TLS_RECORD: usize = (1 << 14) + 2048;

/// [`listener_select`] for a connection's security protocol. When it refuses a protocol
/// that `pipelined` names a framing for, bytes that follow and look like that protocol's
/// first message (an optimistic dialer's handshake) are skipped, so that the dialer's next
/// proposal is read cleanly. Bytes that look like a multistream message are kept: a
/// dialer that waited for the answer is served as before.
pub async fn listener_select_pipelined<IO, S, L, P>(
    io: &mut IO,
    supported: S,
    list: L,
    pipelined: P,
) -> Result<String, NegotiationError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Fn(&str) -> bool,
    L: Fn() -> Vec<String>,
    P: Fn(&str) -> Option<FirstMessage>,
{
    expect_header(io).await?;
    // Our header goes out at once: a dialer may wait for it before proposing.
    write_messages(io, &[Message::Header]).await?;
    let mut reader = MessageReader::default();
    for _ in 0..MAX_PROPOSALS {
        let next = poll_fn(|cx| reader.poll_read(io, cx, false)).await?;
        reader = MessageReader::default();
        match next {
            Message::Protocol(p) if supported(&p) => {
                write_messages(io, &[Message::Protocol(p.clone())]).await?;
                return Ok(p);
            }
            Message::Protocol(p) => {
                write_messages(io, &[Message::NotAvailable]).await?;
                if let Some(framing) = pipelined(&p) {
                    let kept = skip_first_message(io, framing).await?;
                    reader = MessageReader::with_prefix(&kept)?;
                }
            }
            Message::ListProtocols => write_messages(io, &[Message::Protocols(list())]).await?,
            other => return Err(NegotiationError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(NegotiationError::TooManyProposals)
}

/// Reads what follows a refused proposal. If it is the refused protocol's first message,
/// skips it whole and returns nothing; otherwise returns the bytes read, the start of the
/// next multistream message. A multistream message never starts like either framing: its
/// length byte is followed by a `/`, and it is never empty.
async fn skip_first_message<IO: AsyncRead + Unpin>(
    io: &mut IO,
    framing: FirstMessage,
) -> Result<Vec<u8>, NegotiationError> {
    use tokio::io::AsyncReadExt;
    let first = io.read_u8().await?;
    let len = match framing {
        FirstMessage::TlsRecord => {
            if first != 0x16 {
                return Ok(vec![first]);
            }
            let second = io.read_u8().await?;
            if second != 0x03 {
                return Ok(vec![first, second]);
            }
            let mut rest = [0u8; 3];
            io.read_exact(&mut rest).await?;
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            if len > MAX_TLS_RECORD {
                return Err(NegotiationError::Unexpected(format!(
                    "a pipelined TLS record of {len} bytes"
                )));
            }
            len
        }
        FirstMessage::NoiseFrame => {
            if first != 0x00 {
                return Ok(vec![first]);
            }
            let second = io.read_u8().await?;
            usize::from(u16::from_be_bytes([first, second]))
        }
    };
    let skipped = tokio::io::copy(&mut io.take(len as u64), &mut tokio::io::sink()).await?;
    if skipped < len as u64 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Vec::new())
}

/// Proposes a single protocol and returns at once, before the answer. Writes go straight
/// through; the first read checks the listener's answer and fails (with
/// [`io::ErrorKind::Unsupported`]) if it refused.
pub async fn dialer_select_lazy<IO>(
    mut io: IO,
    protocol: &str,
) -> Result<LazyNegotiated<IO>, NegotiationError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    queue_lazy_proposal(
        &mut io,
        &[Message::Header, Message::Protocol(protocol.to_string())],
    )
    .await?;
    Ok(LazyNegotiated {
        io,
        protocol: protocol.to_string(),
        state: LazyState::AwaitHeader(MessageReader::default()),
    })
}

/// Proposes one more protocol on a stream whose header exchange is done (after the
/// listener refused an earlier proposal) and returns at once, like
/// [`dialer_select_lazy`].
pub async fn dialer_propose_lazy<IO>(
    mut io: IO,
    protocol: &str,
) -> Result<LazyNegotiated<IO>, NegotiationError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    queue_lazy_proposal(&mut io, &[Message::Protocol(protocol.to_string())]).await?;
    Ok(LazyNegotiated {
        io,
        protocol: protocol.to_string(),
        state: LazyState::AwaitProtocol(MessageReader::default()),
    })
}

enum LazyState {
    AwaitHeader(MessageReader),
    AwaitProtocol(MessageReader),
    Done,
    Failed(io::ErrorKind, String),
}

/// A stream whose single-protocol negotiation is confirmed on first read.
pub struct LazyNegotiated<IO> {
    io: IO,
    protocol: String,
    state: LazyState,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LazyNegotiated<IO> {
    /// The protocol proposed.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// True once the listener has confirmed the protocol.
    pub fn is_confirmed(&self) -> bool {
        matches!(self.state, LazyState::Done)
    }

    /// True once the listener has answered `na`: the stream is still usable for another
    /// proposal ([`dialer_propose_lazy`]), the header exchange being done.
    pub fn is_refused(&self) -> bool {
        matches!(self.state, LazyState::Failed(io::ErrorKind::Unsupported, _))
    }

    /// Waits for the listener's answer.
    pub async fn confirm(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_confirm(cx)).await
    }

    /// The inner stream. Only meaningful once confirmed.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Gives back the inner stream (unconfirmed negotiation bytes may still be unread).
    pub fn into_inner(self) -> IO {
        self.io
    }

    fn poll_confirm(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (reader, awaiting_header) = match &mut self.state {
                LazyState::Done => return Poll::Ready(Ok(())),
                LazyState::Failed(kind, msg) => {
                    return Poll::Ready(Err(io::Error::new(*kind, msg.clone())))
                }
                LazyState::AwaitHeader(r) => (r, true),
                LazyState::AwaitProtocol(r) => (r, false),
            };
            let result = ready!(reader.poll_read(&mut self.io, cx, false));
            self.state = match (result, awaiting_header) {
                (Ok(Message::Header), true) => LazyState::AwaitProtocol(MessageReader::default()),
                (Ok(Message::Protocol(p)), false) if p == self.protocol => LazyState::Done,
                (Ok(Message::NotAvailable), false) => LazyState::Failed(
                    io::ErrorKind::Unsupported,
                    format!("the remote does not support {}", self.protocol),
                ),
                (Ok(other), _) => LazyState::Failed(
                    io::ErrorKind::InvalidData,
                    format!("unexpected multistream-select message {other:?}"),
                ),
                (Err(e), _) => {
                    let e = io::Error::from(e);
                    LazyState::Failed(e.kind(), e.to_string())
                }
            };
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for LazyNegotiated<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_confirm(cx))?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LazyNegotiated<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    fn supports(list: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |p| list.contains(&p)
    }

    fn listing() -> Vec<String> {
        vec!["/a".into(), "/b".into()]
    }

    #[tokio::test]
    async fn dialer_gets_its_second_choice_after_na() {
        let (mut d, mut l) = duplex(1024);
        let listener = tokio::spawn(async move {
            let got = listener_select(&mut l, supports(&["/b"]), listing).await;
            (got.unwrap(), l)
        });
        let picked = dialer_select(&mut d, &["/a", "/b"]).await.unwrap();
        assert_eq!(picked, "/b");
        let (got, mut l) = listener.await.unwrap();
        assert_eq!(got, "/b");
        // Bytes after negotiation reach the other side untouched.
        d.write_all(b"after").await.unwrap();
        let mut buf = [0u8; 5];
        l.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"after");
    }

    #[tokio::test]
    async fn dialer_pipelines_header_and_first_proposal() {
        let (mut d, mut l) = duplex(1024);
        let dialer = tokio::spawn(async move { dialer_select(&mut d, &["/x"]).await });
        // Without answering anything, both messages are already on the wire.
        let mut expected = Vec::new();
        encode(&Message::Header, &mut expected);
        encode(&Message::Protocol("/x".into()), &mut expected);
        let mut got = vec![0u8; expected.len()];
        l.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        drop(l);
        assert!(dialer.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn every_proposal_refused_is_an_error() {
        let (mut d, mut l) = duplex(1024);
        tokio::spawn(async move { listener_select(&mut l, supports(&["/z"]), listing).await });
        match dialer_select(&mut d, &["/a", "/b"]).await {
            Err(NegotiationError::Refused(p)) => assert_eq!(p, vec!["/a", "/b"]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn ls_is_answered() {
        let (mut d, mut l) = duplex(1024);
        tokio::spawn(async move { listener_select(&mut l, supports(&["/a"]), listing).await });
        write_messages(&mut d, &[Message::Header, Message::ListProtocols])
            .await
            .unwrap();
        assert_eq!(read_message(&mut d, false).await.unwrap(), Message::Header);
        assert_eq!(
            read_message(&mut d, true).await.unwrap(),
            Message::Protocols(listing())
        );
    }

    #[tokio::test]
    async fn lazy_dialer_sends_data_before_the_answer() {
        let (d, mut l) = duplex(1024);
        let mut stream = dialer_select_lazy(d, "/echo").await.unwrap();
        stream.write_all(b"early").await.unwrap();
        assert!(!stream.is_confirmed());
        let picked = listener_select(&mut l, supports(&["/echo"]), listing)
            .await
            .unwrap();
        assert_eq!(picked, "/echo");
        let mut buf = [0u8; 5];
        l.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"early");
        l.write_all(b"reply").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"reply");
        assert!(stream.is_confirmed());
    }

    #[tokio::test]
    async fn lazy_dialer_sees_a_refusal_on_read() {
        let (d, mut l) = duplex(1024);
        let mut stream = dialer_select_lazy(d, "/nope").await.unwrap();
        tokio::spawn(async move {
            let _ = listener_select(&mut l, supports(&["/echo"]), listing).await;
        });
        let err = stream.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// A stream the remote reset right after reading the proposal: writes were taken,
    /// and every later flush and read reports the reset (a yamux stream refused by the
    /// remote's resource manager looks like this).
    struct ResetAfterWrite;

    fn remote_reset() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by the remote")
    }

    impl AsyncWrite for ResetAfterWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(remote_reset()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(remote_reset()))
        }
    }

    impl AsyncRead for ResetAfterWrite {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(remote_reset()))
        }
    }

    #[tokio::test]
    async fn a_reset_racing_the_lazy_proposal_shows_on_the_first_read() {
        let mut stream = dialer_select_lazy(ResetAfterWrite, "/hold")
            .await
            .expect("the proposal was written; its answer belongs to the first read");
        let err = stream.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(!stream.is_confirmed());
    }

    #[tokio::test]
    async fn garbage_instead_of_the_header_is_a_typed_error() {
        let (mut d, mut l) = duplex(1024);
        // 'G' reads as a 71-byte length; the 71 bytes that follow do not end in a newline.
        d.write_all(&b"GET / HTTP/1.1\r\nHost: example\r\n".repeat(4))
            .await
            .unwrap();
        let err = listener_select(&mut l, supports(&["/a"]), listing)
            .await
            .unwrap_err();
        assert!(matches!(err, NegotiationError::Message(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_without_reading_it() {
        let (mut d, mut l) = duplex(1024);
        d.write_all(&[0xff, 0x7f]).await.unwrap(); // 16383 bytes announced
        let err = listener_select(&mut l, supports(&["/a"]), listing)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NegotiationError::Message(MessageError::TooLong(16383))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn endless_proposals_are_cut_off() {
        let (mut d, mut l) = duplex(64 * 1024);
        let mut out = Vec::new();
        encode(&Message::Header, &mut out);
        for i in 0..=MAX_PROPOSALS {
            encode(&Message::Protocol(format!("/p/{i}")), &mut out);
        }
        d.write_all(&out).await.unwrap();
        let err = listener_select(&mut l, supports(&["/a"]), listing)
            .await
            .unwrap_err();
        assert!(matches!(err, NegotiationError::TooManyProposals), "{err:?}");
    }

    #[tokio::test]
    async fn early_eof_is_an_io_error() {
        let (mut d, mut l) = duplex(1024);
        d.write_all(b"\x13/multi").await.unwrap();
        drop(d);
        let err = listener_select(&mut l, supports(&["/a"]), listing)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NegotiationError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
    }

    fn security_framing(p: &str) -> Option<FirstMessage> {
        match p {
            "/tls/1.0.0" => Some(FirstMessage::TlsRecord),
            "/noise" => Some(FirstMessage::NoiseFrame),
            _ => None,
        }
    }

    /// A listener that speaks only `supported` among the security protocols, answering
    /// one negotiation on `l` and handing the stream back.
    fn security_listener(
        mut l: tokio::io::DuplexStream,
        supported: &'static [&'static str],
    ) -> tokio::task::JoinHandle<(Result<String, NegotiationError>, tokio::io::DuplexStream)> {
        tokio::spawn(async move {
            let got =
                listener_select_pipelined(&mut l, supports(supported), listing, security_framing)
                    .await;
            (got, l)
        })
    }

    /// The proposal, a pipelined first message, then the next proposal and its bytes.
    async fn optimistic_refused_then_next(first_message: &[u8], next: &str) -> (String, Vec<u8>) {
        let (d, l) = duplex(1 << 16);
        let listener = security_listener(l, &["/noise"]);
        let mut d = dialer_select_lazy(d, "/tls/1.0.0").await.unwrap();
        d.write_all(first_message).await.unwrap();
        // The refusal reaches the dialer on its first read.
        let err = d.confirm().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(d.is_refused());
        let mut d = dialer_propose_lazy(d.into_inner(), next).await.unwrap();
        d.write_all(b"handshake").await.unwrap();
        d.confirm().await.unwrap();
        let (got, mut l) = listener.await.unwrap();
        let mut rest = vec![0u8; 9];
        l.read_exact(&mut rest).await.unwrap();
        (got.unwrap(), rest)
    }

    #[tokio::test]
    async fn a_refused_pipelined_tls_record_is_skipped() {
        // A ClientHello-shaped record: handshake type, TLS 1.0 record version, 300 bytes.
        let mut record = vec![0x16, 0x03, 0x01, 0x01, 0x2c];
        record.extend(std::iter::repeat_n(0xab, 300));
        let (got, rest) = optimistic_refused_then_next(&record, "/noise").await;
        assert_eq!(got, "/noise");
        assert_eq!(rest, b"handshake");
    }

    #[tokio::test]
    async fn a_refused_pipelined_noise_frame_is_skipped() {
        let (d, l) = duplex(1 << 16);
        let listener = security_listener(l, &["/tls/1.0.0"]);
        let mut d = dialer_select_lazy(d, "/noise").await.unwrap();
        let mut frame = vec![0x00, 0x20];
        frame.extend([7u8; 32]);
        d.write_all(&frame).await.unwrap();
        assert!(d.confirm().await.is_err() && d.is_refused());
        let mut d = dialer_propose_lazy(d.into_inner(), "/tls/1.0.0")
            .await
            .unwrap();
        d.confirm().await.unwrap();
        let (got, _) = listener.await.unwrap();
        assert_eq!(got.unwrap(), "/tls/1.0.0");
    }

    #[tokio::test]
    async fn a_dialer_that_waits_after_a_refusal_is_served_as_before() {
        // Nothing pipelined: the next proposal follows the refusal, and its first bytes
        // are kept, not skipped.
        for (refused, next) in [("/tls/1.0.0", "/noise"), ("/noise", "/tls/1.0.0")] {
            let (mut d, l) = duplex(1024);
            let supported: &'static [&'static str] = if next == "/noise" {
                &["/noise"]
            } else {
                &["/tls/1.0.0"]
            };
            let listener = security_listener(l, supported);
            assert_eq!(dialer_select(&mut d, &[refused, next]).await.unwrap(), next);
            assert_eq!(listener.await.unwrap().0.unwrap(), next);
        }
    }

    #[tokio::test]
    async fn junk_or_a_cut_after_a_refused_proposal_is_a_typed_error() {
        // A record longer than TLS allows.
        let (d, l) = duplex(1 << 16);
        let listener = security_listener(l, &["/noise"]);
        let mut d = dialer_select_lazy(d, "/tls/1.0.0").await.unwrap();
        d.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).await.unwrap();
        let (got, _) = listener.await.unwrap();
        assert!(
            matches!(got, Err(NegotiationError::Unexpected(_))),
            "{got:?}"
        );
        drop(d);

        // A record cut off mid-flight.
        let (d, l) = duplex(1 << 16);
        let listener = security_listener(l, &["/noise"]);
        let mut d = dialer_select_lazy(d, "/tls/1.0.0").await.unwrap();
        d.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 1, 2, 3])
            .await
            .unwrap();
        // Our side ends its writes but stays open, as a TCP peer that sends FIN does.
        d.shutdown().await.unwrap();
        let (got, _) = listener.await.unwrap();
        assert!(
            matches!(got, Err(NegotiationError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{got:?}"
        );

        // Bytes that are neither the refused protocol's message nor a multistream message.
        let (d, l) = duplex(1 << 16);
        let listener = security_listener(l, &["/noise"]);
        let mut d = dialer_select_lazy(d, "/tls/1.0.0").await.unwrap();
        // 0x16 announces a 22-byte message; the 22 bytes end without a newline.
        let mut junk = vec![0x16, 0x17];
        junk.extend([0x18; 21]);
        d.write_all(&junk).await.unwrap();
        let (got, _) = listener.await.unwrap();
        assert!(matches!(got, Err(NegotiationError::Message(_))), "{got:?}");
        drop(d);
    }
}
