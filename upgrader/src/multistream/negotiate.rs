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
    let mut out = Vec::with_capacity(64);
    for m in msgs {
        encode(m, &mut out);
    }
    io.write_all(&out).await?;
    io.flush().await?;
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
    expect_header(io).await?;
    // Our header goes out at once: a dialer may wait for it before proposing.
    write_messages(io, &[Message::Header]).await?;
    for _ in 0..MAX_PROPOSALS {
        match read_message(io, false).await? {
            Message::Protocol(p) if supported(&p) => {
                write_messages(io, &[Message::Protocol(p.clone())]).await?;
                return Ok(p);
            }
            Message::Protocol(_) => write_messages(io, &[Message::NotAvailable]).await?,
            Message::ListProtocols => write_messages(io, &[Message::Protocols(list())]).await?,
            other => return Err(NegotiationError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(NegotiationError::TooManyProposals)
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
    write_messages(
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
}
