//! WebSocket (`/ip4|ip6|dns*/…/tcp/N/ws`): a byte stream carried in binary WebSocket
//! messages, on tokio-tungstenite, over Strata's TCP transport (so it keeps port reuse
//! and the TCP options). What it hands out is a raw connection; the upgrader then
//! secures and muxes it as over TCP, as go-libp2p and rust-libp2p do.
//!
//! A dial performs the client handshake before it returns. An accepted connection is
//! handed out at once and performs the server handshake on its first read or write, so
//! the listener's accept loop never waits on a client: the handshake runs in the
//! connection's own handshake task, under its progress and handshake deadlines. The
//! handshake request may not exceed `max_handshake_size`, and messages and frames their
//! own limits; a peer that does not speak WebSocket gets a clear error and a closed
//! connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use strata_core::{
    BoxRawConn, BoxRawListener, Multiaddr, Protocol, RawConnection, RawListener, RawTransport,
    TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::tcp::{TcpConfig, TcpConn, TcpListener, TcpTransport};

/// Settings of the WebSocket transport.
///
/// | field | default |
/// |---|---|
/// | `tcp` | [`TcpConfig::default`] |
/// | `max_message_size` | 1 MiB: the largest message accepted |
/// | `max_frame_size` | 1 MiB: the largest frame accepted |
/// | `max_handshake_size` | 8 KiB: the most bytes a client's handshake request may take |
/// | `path` | `/`: the path dials ask for |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The TCP transport underneath.
    pub tcp: TcpConfig,
    /// The largest message accepted from a peer.
    pub max_message_size: usize,
    /// The largest frame accepted from a peer.
    pub max_frame_size: usize,
    /// The most bytes the opening handshake may take.
    pub max_handshake_size: usize,
    /// The HTTP path a dial requests.
    pub path: String,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            tcp: TcpConfig::default(),
            max_message_size: 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_handshake_size: 8 * 1024,
            path: "/".to_owned(),
        }
    }
}

impl WsConfig {
    fn tungstenite(&self) -> WebSocketConfig {
        let mut c = WebSocketConfig::default();
        c.max_message_size = Some(self.max_message_size);
        c.max_frame_size = Some(self.max_frame_size);
        c
    }
}

/// The WebSocket transport.
#[derive(Debug, Clone, Default)]
pub struct WsTransport {
    tcp: TcpTransport,
    config: WsConfig,
}

/// Splits `/…/tcp/N/ws[/p2p/ID]` into the TCP part (with the `/p2p` suffix, if any) or
/// says why it is not a WebSocket address.
fn tcp_part(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut tcp = Multiaddr::empty();
    let mut saw_ws = false;
    for p in addr.iter() {
        match p {
            Protocol::Ws(path) if !saw_ws && path == "/" => saw_ws = true,
            Protocol::Ws(_) | Protocol::Wss(_) | Protocol::Tls => return None,
            Protocol::P2p(_) if saw_ws => tcp.push(p),
            _ if saw_ws => return None,
            p => tcp.push(p),
        }
    }
    let parsed = strata_core::addr::parse(&tcp).ok()?;
    (saw_ws && parsed.stack == strata_core::addr::Stack::Tcp).then_some(tcp)
}

/// `/…/tcp/N` with `/ws` appended.
fn ws_multiaddr(tcp: &Multiaddr) -> Multiaddr {
    tcp.clone().with(Protocol::Ws("/".into()))
}

impl WsTransport {
    /// A transport with the given settings.
    pub fn new(config: WsConfig) -> Self {
        WsTransport {
            tcp: TcpTransport::new(config.tcp.clone()),
            config,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    fn dial_err(addr: &Multiaddr, what: impl Into<String>) -> TransportError {
        TransportError::Dial {
            addr: addr.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, what.into()),
        }
    }
}

#[async_trait]
impl RawTransport for WsTransport {
    fn protocols(&self) -> &[&'static str] {
        &["ws"]
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        tcp_part(addr).is_some()
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        tcp_part(addr).is_some_and(|t| strata_core::addr::peer_id_of(&t).is_none())
    }

    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        let tcp_addr = tcp_part(addr).ok_or_else(|| Self::dial_err(addr, "not a /ws address"))?;
        let tcp_addr = strata_core::addr::without_peer_id(&tcp_addr);
        let tcp = self.tcp.dial_tcp(&tcp_addr).await?;
        let host = match tcp_addr.iter().next() {
            Some(Protocol::Ip4(ip)) => ip.to_string(),
            Some(Protocol::Ip6(ip)) => format!("[{ip}]"),
            Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h.into_owned(),
            _ => return Err(Self::dial_err(addr, "no host in the address")),
        };
        let port = tcp.remote_multiaddr().iter().find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        });
        let url = format!("ws://{host}:{}{}", port.unwrap_or(80), self.config.path);
        let local = ws_multiaddr(tcp.local_multiaddr());
        let remote = ws_multiaddr(tcp.remote_multiaddr());
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, tcp, Some(self.config.tungstenite()))
                .await
                .map_err(|e| Self::dial_err(addr, format!("websocket handshake failed: {e}")))?;
        Ok(Box::new(WsConn {
            state: State::Open(ws),
            local,
            remote,
            pending: Bytes::new(),
            peer_closed: false,
        }))
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError> {
        let tcp_addr = tcp_part(addr).ok_or_else(|| TransportError::Listen {
            addr: addr.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a /ws address"),
        })?;
        let inner = self.tcp.listen_tcp(&tcp_addr).await?;
        let addr = ws_multiaddr(inner_addr(&inner));
        Ok(Box::new(WsListener {
            inner,
            addr,
            config: self.config.clone(),
        }))
    }
}

fn inner_addr(l: &TcpListener) -> &Multiaddr {
    RawListener::multiaddr(l)
}

/// Accepts WebSocket connections on one TCP listener.
pub struct WsListener {
    inner: TcpListener,
    addr: Multiaddr,
    config: WsConfig,
}

#[async_trait]
impl RawListener for WsListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxRawConn, TransportError> {
        let tcp = self.inner.accept_conn().await?;
        let local = ws_multiaddr(tcp.local_multiaddr());
        let remote = ws_multiaddr(tcp.remote_multiaddr());
        let config = self.config.tungstenite();
        let limited = Limited {
            inner: tcp,
            left: Some(self.config.max_handshake_size),
        };
        // The server handshake runs on the connection's first use, in its own task.
        let handshake = async move {
            let ws = tokio_tungstenite::accept_async_with_config(limited, Some(config)).await?;
            Ok::<_, tungstenite::Error>(ws)
        };
        Ok(Box::new(WsConn {
            state: State::Accepting(Box::pin(handshake)),
            local,
            remote,
            pending: Bytes::new(),
            peer_closed: false,
        }))
    }
}

/// The TCP connection under a WebSocket, with a byte budget for the handshake.
struct Limited<T> {
    inner: T,
    /// Bytes the handshake may still read; `None` once it is done.
    left: Option<usize>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(left) = self.left else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "websocket handshake request too large",
            )));
        }
        // Handshake bytes are few: a small copy keeps the limit exact without unsafe.
        let mut tmp = [0u8; 1024];
        let max = left.min(tmp.len()).min(buf.remaining());
        let mut limited = ReadBuf::new(&mut tmp[..max]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.put_slice(limited.filled());
        self.left = Some(left - n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Handshake = Pin<
    Box<dyn Future<Output = Result<WebSocketStream<Limited<TcpConn>>, tungstenite::Error>> + Send>,
>;

enum State {
    /// An accepted connection whose server handshake has not finished.
    Accepting(Handshake),
    /// A dialed connection.
    Open(WebSocketStream<TcpConn>),
    /// An accepted connection after its handshake.
    Accepted(WebSocketStream<Limited<TcpConn>>),
    /// The handshake failed; every operation fails.
    Failed,
}

/// One WebSocket connection as a byte stream: each write is one binary message; reads
/// take the bytes of binary messages in order. Pings are answered by tungstenite;
/// a close reads as the end of the stream.
pub struct WsConn {
    state: State,
    local: Multiaddr,
    remote: Multiaddr,
    /// What is left of the last message read.
    pending: Bytes,
    /// The peer closed: our Close reply (queued by tungstenite) is flushed before the end
    /// of the stream is reported, so the peer's closing handshake completes.
    peer_closed: bool,
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        e => io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {e}")),
    }
}

/// The WebSocket stream of a connection, whichever side made it.
enum Ws<'a> {
    Dialed(&'a mut WebSocketStream<TcpConn>),
    Accepted(&'a mut WebSocketStream<Limited<TcpConn>>),
}

macro_rules! with_ws {
    ($ws:expr, $s:ident => $body:expr) => {
        match $ws {
            Ws::Dialed($s) => $body,
            Ws::Accepted($s) => $body,
        }
    };
}

impl WsConn {
    /// Finishes the server handshake if it is pending, then gives the stream.
    fn poll_ws(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Ws<'_>>> {
        if let State::Accepting(handshake) = &mut self.state {
            match ready!(handshake.as_mut().poll(cx)) {
                Ok(mut ws) => {
                    ws.get_mut().left = None;
                    self.state = State::Accepted(ws);
                }
                Err(e) => {
                    self.state = State::Failed;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a websocket client: {e}"),
                    )));
                }
            }
        }
        match &mut self.state {
            State::Open(ws) => Poll::Ready(Ok(Ws::Dialed(ws))),
            State::Accepted(ws) => Poll::Ready(Ok(Ws::Accepted(ws))),
            State::Accepting(_) | State::Failed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the websocket handshake failed",
            ))),
        }
    }
}

impl RawConnection for WsConn {
    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote
    }
}

impl AsyncRead for WsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            let peer_closed = this.peer_closed;
            let ws = ready!(this.poll_ws(cx))?;
            if peer_closed {
                // Best effort: a reply that cannot be flushed changes nothing for us.
                let _ = with_ws!(ws, s => ready!(Pin::new(s).poll_flush(cx)));
                return Poll::Ready(Ok(()));
            }
            let next = with_ws!(ws, s => ready!(Pin::new(s).poll_next(cx)));
            match next {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "websocket text message on a libp2p connection",
                    )))
                }
                // Pings are answered by tungstenite; pongs and raw frames carry nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) => this.peer_closed = true,
                None => return Poll::Ready(Ok(())),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl AsyncWrite for WsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let ws = ready!(self.poll_ws(cx))?;
        with_ws!(ws, s => {
            ready!(Pin::new(&mut *s).poll_ready(cx)).map_err(ws_error)?;
            Pin::new(&mut *s)
                .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
                .map_err(ws_error)?;
        });
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ws = ready!(self.poll_ws(cx))?;
        with_ws!(ws, s => Pin::new(s).poll_flush(cx).map_err(ws_error))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ws = ready!(self.poll_ws(cx))?;
        match with_ws!(ws, s => ready!(Pin::new(s).poll_close(cx))) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(ws_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn websocket_addresses_are_recognised() {
        assert_eq!(
            tcp_part(&ma("/ip4/1.2.3.4/tcp/80/ws")),
            Some(ma("/ip4/1.2.3.4/tcp/80"))
        );
        assert!(tcp_part(&ma("/dns4/example.com/tcp/443/ws")).is_some());
        let id = strata_core::identity::keypair_from_seed(1)
            .public()
            .to_peer_id();
        let with_id = ma("/ip4/1.2.3.4/tcp/80/ws").with(Protocol::P2p(id));
        assert_eq!(
            tcp_part(&with_id),
            Some(ma("/ip4/1.2.3.4/tcp/80").with(Protocol::P2p(id)))
        );
        for not_ws in [
            "/ip4/1.2.3.4/tcp/80",
            "/ip4/1.2.3.4/tcp/80/wss",
            "/ip4/1.2.3.4/tcp/80/tls/ws",
            "/ip4/1.2.3.4/udp/80/quic-v1",
            "/ip4/1.2.3.4/tcp/80/ws/ws",
        ] {
            assert!(tcp_part(&ma(not_ws)).is_none(), "{not_ws}");
        }
        assert_eq!(
            ws_multiaddr(&ma("/ip4/1.2.3.4/tcp/80")),
            ma("/ip4/1.2.3.4/tcp/80/ws")
        );
    }
}
