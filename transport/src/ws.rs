//! WebSocket (`/ip4|ip6|dns*/…/tcp/N/ws`): a byte stream carried in binary WebSocket
//! messages, on tokio-tungstenite, over Strata's TCP transport (so it keeps port reuse
//! and the TCP options). What it hands out is a raw connection; the upgrader then
//! secures and muxes it as over TCP, as go-libp2p and rust-libp2p do.
//!
//! Secure WebSocket (`…/tcp/N/tls/ws`, `…/tcp/N/tls/sni/HOST/ws`, and the older
//! spelling `…/tcp/N/wss`) puts TLS with the user's web certificate (not libp2p's TLS)
//! between TCP and WebSocket, as browsers need: [`WsTlsConfig`] gives the listener's
//! certificate and the roots a dialer trusts. The libp2p upgrade runs inside it as over
//! plain WebSocket.
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
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use strata_core::{
    BoxRawConn, BoxRawListener, Multiaddr, Protocol, RawConnection, RawListener, RawTransport,
    TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::tcp::{TcpConfig, TcpListener, TcpTransport};

/// Settings of the WebSocket transport.
///
/// | field | default |
/// |---|---|
/// | `tcp` | [`TcpConfig::default`] |
/// | `max_message_size` | 1 MiB: the largest message accepted |
/// | `max_frame_size` | 1 MiB: the largest frame accepted |
/// | `max_handshake_size` | 8 KiB: the most bytes a client's handshake request may take |
/// | `path` | `/`: the path dials ask for |
/// | `tls` | none: no `/tls/ws` (`/wss`) listening or dialing |
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
    /// TLS for secure WebSocket addresses.
    pub tls: WsTlsConfig,
}

/// TLS for secure WebSocket (`/tls/ws`, `/wss`): web TLS with the user's certificates,
/// under the libp2p upgrade. Listening on such an address needs `server`; dialing one
/// needs `client`. Either may be absent: the transport then neither listens on nor
/// dials those addresses (`can_listen` and `can_dial` say no).
#[derive(Clone, Default)]
pub struct WsTlsConfig {
    /// The certificate chain and key a `/tls/ws` listener presents (ALPN, if any, is
    /// the config's: `http/1.1` is what browsers offer).
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// The servers a `/tls/ws` dial trusts (its roots), and the rest of the client's
    /// TLS settings. The name checked is the address's `/sni/HOST`, else its DNS name,
    /// else its IP address.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

impl WsTlsConfig {
    /// Listens on secure addresses presenting `chain` (the server's certificate first)
    /// and its private `key`, with ring and rustls' safe defaults.
    pub fn with_certificate(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, rustls::Error> {
        let server = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        self.server = Some(Arc::new(server));
        Ok(self)
    }

    /// Dials secure addresses trusting exactly `roots` (a private CA, or a self-signed
    /// certificate), with ring and rustls' safe defaults.
    pub fn trusting(
        mut self,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root)?;
        }
        let client = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        self.client = Some(Arc::new(client));
        Ok(self)
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl std::fmt::Debug for WsTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTlsConfig")
            .field("server", &self.server.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// Two settings are equal when they hold the very same rustls configs.
impl PartialEq for WsTlsConfig {
    fn eq(&self, other: &Self) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(&self.server, &other.server) && same(&self.client, &other.client)
    }
}

impl Eq for WsTlsConfig {}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            tcp: TcpConfig::default(),
            max_message_size: 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_handshake_size: 8 * 1024,
            path: "/".to_owned(),
            tls: WsTlsConfig::default(),
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

/// A WebSocket address taken apart.
#[derive(Debug, PartialEq)]
struct WsAddr {
    /// The TCP part, with the `/p2p` suffix if the address has one.
    tcp: Multiaddr,
    /// What follows the TCP port (`/ws`, `/wss`, `/tls/ws` or `/tls/sni/HOST/ws`),
    /// kept as written so local and remote addresses read the same way.
    suffix: Vec<Protocol<'static>>,
    /// Secure WebSocket: TLS under the WebSocket.
    tls: bool,
    /// The name in `/tls/sni/HOST`, if given.
    sni: Option<String>,
}

impl WsAddr {
    /// Splits `/…/tcp/N/{ws,wss,tls/ws,tls/sni/HOST/ws}[/p2p/ID]`; `None` for anything
    /// else, a WebSocket path other than `/` included.
    fn parse(addr: &Multiaddr) -> Option<WsAddr> {
        let protocols: Vec<Protocol<'_>> = addr.iter().collect();
        let at = protocols
            .iter()
            .position(|p| matches!(p, Protocol::Ws(_) | Protocol::Wss(_) | Protocol::Tls))?;
        let (head, mut tail) = protocols.split_at(at);
        let mut peer = None;
        if let Some((last @ Protocol::P2p(_), rest)) = tail.split_last() {
            peer = Some(last.clone());
            tail = rest;
        }
        let (tls, sni) = match tail {
            [Protocol::Ws(path)] if path == "/" => (false, None),
            [Protocol::Wss(path)] if path == "/" => (true, None),
            [Protocol::Tls, Protocol::Ws(path)] if path == "/" => (true, None),
            [Protocol::Tls, Protocol::Sni(host), Protocol::Ws(path)] if path == "/" => {
                (true, Some(host.to_string()))
            }
            _ => return None,
        };
        let mut tcp: Multiaddr = head.iter().cloned().collect();
        let parsed = strata_core::addr::parse(&tcp).ok()?;
        if parsed.stack != strata_core::addr::Stack::Tcp {
            return None;
        }
        if let Some(peer) = peer {
            tcp.push(peer);
        }
        Some(WsAddr {
            tcp,
            suffix: tail.iter().map(|p| p.clone().acquire()).collect(),
            tls,
            sni,
        })
    }

    /// A TCP address (`/…/tcp/N`) with this address's WebSocket suffix.
    fn around(&self, tcp: &Multiaddr) -> Multiaddr {
        let mut out = tcp.clone();
        for p in &self.suffix {
            out.push(p.clone());
        }
        out
    }
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

    /// The name a secure dial checks the server's certificate against: the address's
    /// `/sni/HOST`, else its DNS name, else its IP address.
    fn server_name(
        addr: &Multiaddr,
        ws: &WsAddr,
        tcp: &Multiaddr,
    ) -> Result<ServerName<'static>, TransportError> {
        let name = match (&ws.sni, tcp.iter().next()) {
            (Some(sni), _) => ServerName::try_from(sni.clone()),
            (None, Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h))) => {
                ServerName::try_from(h.into_owned())
            }
            (None, Some(Protocol::Ip4(ip))) => Ok(ServerName::from(std::net::IpAddr::V4(ip))),
            (None, Some(Protocol::Ip6(ip))) => Ok(ServerName::from(std::net::IpAddr::V6(ip))),
            _ => return Err(Self::dial_err(addr, "no host in the address")),
        };
        name.map_err(|e| Self::dial_err(addr, format!("not a TLS server name: {e}")))
    }
}

#[async_trait]
impl RawTransport for WsTransport {
    fn protocols(&self) -> &[&'static str] {
        &["ws"]
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        WsAddr::parse(addr).is_some_and(|a| !a.tls || self.config.tls.client.is_some())
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        WsAddr::parse(addr).is_some_and(|a| {
            strata_core::addr::peer_id_of(&a.tcp).is_none()
                && (!a.tls || self.config.tls.server.is_some())
        })
    }

    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        let ws = WsAddr::parse(addr).ok_or_else(|| Self::dial_err(addr, "not a /ws address"))?;
        let tcp_addr = strata_core::addr::without_peer_id(&ws.tcp);
        let client_tls = match (ws.tls, &self.config.tls.client) {
            (false, _) => None,
            (true, Some(client)) => {
                Some((client.clone(), Self::server_name(addr, &ws, &tcp_addr)?))
            }
            (true, None) => {
                return Err(Self::dial_err(
                    addr,
                    "no TLS client settings for secure WebSocket (WsConfig::tls.client)",
                ))
            }
        };
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
        let local = ws.around(tcp.local_multiaddr());
        let remote = ws.around(tcp.remote_multiaddr());
        let (scheme, io): (&str, BoxIo) = match client_tls {
            None => ("ws", Box::new(tcp)),
            Some((client, name)) => {
                let tls = tokio_rustls::TlsConnector::from(client)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        Self::dial_err(addr, format!("secure websocket: TLS handshake failed: {e}"))
                    })?;
                ("wss", Box::new(tls))
            }
        };
        let url = format!(
            "{scheme}://{host}:{}{}",
            port.unwrap_or(if ws.tls { 443 } else { 80 }),
            self.config.path
        );
        let io = Limited {
            inner: io,
            left: None,
        };
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(url, io, Some(self.config.tungstenite()))
                .await
                .map_err(|e| Self::dial_err(addr, format!("websocket handshake failed: {e}")))?;
        Ok(Box::new(WsConn {
            state: State::Open(Box::new(ws)),
            local,
            remote,
            pending: Bytes::new(),
            peer_closed: false,
        }))
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError> {
        let refuse = |why: &str| TransportError::Listen {
            addr: addr.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()),
        };
        let ws = WsAddr::parse(addr).ok_or_else(|| refuse("not a /ws address"))?;
        let tls = match (ws.tls, &self.config.tls.server) {
            (false, _) => None,
            (true, Some(server)) => Some(tokio_rustls::TlsAcceptor::from(server.clone())),
            (true, None) => {
                return Err(refuse(
                    "no TLS server settings for secure WebSocket (WsConfig::tls.server)",
                ))
            }
        };
        let inner = self.tcp.listen_tcp(&ws.tcp).await?;
        let listen_addr = ws.around(inner_addr(&inner));
        Ok(Box::new(WsListener {
            inner,
            addr: listen_addr,
            ws,
            tls,
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
    /// The address asked for, for its suffix.
    ws: WsAddr,
    /// Secure WebSocket: the TLS server side.
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: WsConfig,
}

#[async_trait]
impl RawListener for WsListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxRawConn, TransportError> {
        let tcp = self.inner.accept_conn().await?;
        let local = self.ws.around(tcp.local_multiaddr());
        let remote = self.ws.around(tcp.remote_multiaddr());
        let config = self.config.tungstenite();
        let max_handshake_size = self.config.max_handshake_size;
        let tls = self.tls.clone();
        // The TLS and WebSocket handshakes run on the connection's first use, in its own
        // task (under its deadlines), never in the accept loop.
        let handshake = async move {
            let io: BoxIo = match tls {
                None => Box::new(tcp),
                Some(acceptor) => Box::new(acceptor.accept(tcp).await.map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("secure websocket: TLS handshake failed: {e}"),
                    )
                })?),
            };
            let limited = Limited {
                inner: io,
                left: Some(max_handshake_size),
            };
            tokio_tungstenite::accept_async_with_config(limited, Some(config))
                .await
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a websocket client: {e}"),
                    )
                })
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

/// What a WebSocket runs on: a TCP connection, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

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

type Handshake = Pin<Box<dyn Future<Output = io::Result<WebSocketStream<Limited<BoxIo>>>> + Send>>;

enum State {
    /// An accepted connection whose server handshake has not finished.
    Accepting(Handshake),
    /// A dialed connection, or an accepted one after its handshake (boxed: the
    /// handshake state is small, and every connection starts in one or the other).
    Open(Box<WebSocketStream<Limited<BoxIo>>>),
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

impl WsConn {
    /// Finishes the server handshake if it is pending, then gives the stream.
    fn poll_ws(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut WebSocketStream<Limited<BoxIo>>>> {
        if let State::Accepting(handshake) = &mut self.state {
            match ready!(handshake.as_mut().poll(cx)) {
                Ok(mut ws) => {
                    ws.get_mut().left = None;
                    self.state = State::Open(Box::new(ws));
                }
                Err(e) => {
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match &mut self.state {
            State::Open(ws) => Poll::Ready(Ok(&mut **ws)),
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
                let _ = ready!(Pin::new(ws).poll_flush(cx));
                return Poll::Ready(Ok(()));
            }
            let next = ready!(Pin::new(ws).poll_next(cx));
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
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ws = ready!(self.poll_ws(cx))?;
        Pin::new(ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ws = ready!(self.poll_ws(cx))?;
        match ready!(Pin::new(ws).poll_close(cx)) {
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

    fn tcp_of(addr: &str) -> Option<Multiaddr> {
        WsAddr::parse(&ma(addr)).map(|a| a.tcp)
    }

    #[test]
    fn websocket_addresses_are_recognised() {
        assert_eq!(
            tcp_of("/ip4/1.2.3.4/tcp/80/ws"),
            Some(ma("/ip4/1.2.3.4/tcp/80"))
        );
        assert!(tcp_of("/dns4/example.com/tcp/443/ws").is_some());
        let id = strata_core::identity::keypair_from_seed(1)
            .public()
            .to_peer_id();
        let with_id = ma("/ip4/1.2.3.4/tcp/80/ws").with(Protocol::P2p(id));
        assert_eq!(
            WsAddr::parse(&with_id).map(|a| a.tcp),
            Some(ma("/ip4/1.2.3.4/tcp/80").with(Protocol::P2p(id)))
        );
        for not_ws in [
            "/ip4/1.2.3.4/tcp/80",
            "/ip4/1.2.3.4/udp/80/quic-v1",
            "/ip4/1.2.3.4/tcp/80/ws/ws",
            "/ip4/1.2.3.4/tcp/80/tls",
            "/ip4/1.2.3.4/tcp/80/tls/wss",
            "/ip4/1.2.3.4/tcp/80/wss/ws",
            "/ip4/1.2.3.4/udp/80/ws",
            "/ip4/1.2.3.4/tcp/80/x-parity-ws/%2Fchat",
        ] {
            assert!(tcp_of(not_ws).is_none(), "{not_ws}");
        }
        let plain = WsAddr::parse(&ma("/ip4/1.2.3.4/tcp/80/ws")).unwrap();
        assert!(!plain.tls);
        assert_eq!(
            plain.around(&ma("/ip4/5.6.7.8/tcp/9")),
            ma("/ip4/5.6.7.8/tcp/9/ws")
        );
    }

    #[test]
    fn secure_websocket_addresses_keep_their_spelling() {
        for (addr, sni) in [
            ("/ip4/1.2.3.4/tcp/443/wss", None),
            ("/ip4/1.2.3.4/tcp/443/tls/ws", None),
            (
                "/dns/example.com/tcp/443/tls/sni/example.com/ws",
                Some("example.com"),
            ),
        ] {
            let parsed = WsAddr::parse(&ma(addr)).unwrap_or_else(|| panic!("{addr}"));
            assert!(parsed.tls, "{addr}");
            assert_eq!(parsed.sni.as_deref(), sni);
            let tcp = strata_core::addr::without_peer_id(&parsed.tcp);
            assert_eq!(parsed.around(&tcp), ma(addr));
        }
    }

    #[test]
    fn tls_settings_refuse_what_is_not_a_certificate() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
        assert!(WsTlsConfig::default().trusting([junk.clone()]).is_err());
        let key = PrivateKeyDer::Pkcs8(vec![0x30, 0x00].into());
        assert!(WsTlsConfig::default()
            .with_certificate(vec![junk], key)
            .is_err());
    }

    #[test]
    fn secure_websocket_needs_its_tls_settings() {
        let plain = WsTransport::new(WsConfig::default());
        assert!(plain.can_dial(&ma("/ip4/1.2.3.4/tcp/80/ws")));
        assert!(!plain.can_dial(&ma("/ip4/1.2.3.4/tcp/443/tls/ws")));
        assert!(!plain.can_listen(&ma("/ip4/127.0.0.1/tcp/0/wss")));
    }
}
