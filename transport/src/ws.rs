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
//!
//! Memory: the connection's fixed buffers (tungstenite's read buffer, one outgoing
//! message, web TLS if any) are reserved from its resource scope as soon as the upgrader
//! hands it over ([`RawConnection::attach_memory`]), and every data frame's payload is
//! reserved when its header arrives, before tungstenite allocates room for it (it does
//! so for the whole announced length at once), then released as the bytes are read.
//! A frame whose payload cannot be reserved ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use strata_core::rcmgr::priority;
use strata_core::{
    BoxRawConn, BoxRawListener, Multiaddr, Protocol, RawConnection, RawListener, RawTransport,
    Reservation, ScopeMemory, TransportError,
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

/// tungstenite's read buffer: what it reads from the socket at a time.
const READ_BUFFER: usize = 16 * 1024;
/// The largest message we send: each write is one message, and the upper layers (Noise,
/// TLS) write less than this at a time anyway.
const MAX_SEND_MESSAGE: usize = 64 * 1024;
/// What tungstenite may hold of ours unsent: one message, its header, a pong or close.
const MAX_WRITE_BUFFER: usize = MAX_SEND_MESSAGE + 1024;
/// What web TLS (rustls) holds for a secure WebSocket connection: as libp2p TLS does
/// (see the upgrader's `TLS_BUFFERS`, measured).
const WEB_TLS_BUFFERS: usize = 128 * 1024;

impl WsConfig {
    fn tungstenite(&self) -> WebSocketConfig {
        let mut c = WebSocketConfig::default();
        c.max_message_size = Some(self.max_message_size);
        c.max_frame_size = Some(self.max_frame_size);
        c.read_buffer_size = READ_BUFFER;
        // Each message goes out as it is written; what waits is one message at most.
        c.write_buffer_size = 0;
        c.max_write_buffer_size = MAX_WRITE_BUFFER;
        c
    }

    /// The fixed buffers of one connection, reserved while it lives.
    fn fixed_buffers(&self, tls: bool) -> usize {
        let handshake = self.max_handshake_size;
        READ_BUFFER + MAX_WRITE_BUFFER + handshake + if tls { WEB_TLS_BUFFERS } else { 0 }
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
        let secure = ws.tls;
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
        let budget = FrameBudget::new(self.config.max_frame_size);
        let io = Limited {
            inner: io,
            left: None,
            budget: budget.clone(),
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
            budget,
            fixed: self.config.fixed_buffers(secure),
            held: None,
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
        let fixed = self.config.fixed_buffers(tls.is_some());
        let budget = FrameBudget::new(self.config.max_frame_size);
        let frames = budget.clone();
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
                budget: frames,
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
            budget,
            fixed,
            held: None,
        }))
    }
}

/// What a WebSocket runs on: a TCP connection, or TLS over one.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// Follows WebSocket frame boundaries in the raw bytes a peer sends, from the end of the
/// HTTP handshake on, and reports each data frame's payload length as its header goes
/// by: before tungstenite sees it (and allocates room for all of it).
#[derive(Debug, Default)]
struct FrameTracker {
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Inside the HTTP request or response: how much of its closing CRLF CRLF is seen.
    Http { matched: usize },
    /// Inside a frame header: the bytes seen so far.
    Header { bytes: [u8; 14], have: usize },
    /// Inside a payload: bytes still to come.
    Payload { left: u64 },
}

impl Default for Phase {
    fn default() -> Self {
        Phase::Http { matched: 0 }
    }
}

/// The opcodes of data frames (continuation, text, binary); the rest are control frames
/// of at most 125 bytes.
fn is_data_opcode(opcode: u8) -> bool {
    opcode <= 2
}

impl FrameTracker {
    /// Takes `bytes` as they arrive; `data_frame` hears the payload length of each data
    /// frame whose header completes, and may refuse it.
    fn feed(
        &mut self,
        mut bytes: &[u8],
        mut data_frame: impl FnMut(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        const END: &[u8] = b"\r\n\r\n";
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Http { matched } => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    *matched = if b == END[*matched] {
                        *matched + 1
                    } else if b == END[0] {
                        1
                    } else {
                        0
                    };
                    if *matched == END.len() {
                        self.phase = Phase::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
                    }
                }
                Phase::Header {
                    bytes: header,
                    have,
                } => {
                    header[*have] = bytes[0];
                    *have += 1;
                    bytes = &bytes[1..];
                    if *have < 2 {
                        continue;
                    }
                    let len7 = header[1] & 0x7f;
                    let ext = match len7 {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
                    if *have < 2 + ext + mask {
                        continue;
                    }
                    let len = match ext {
                        2 => u64::from(u16::from_be_bytes([header[2], header[3]])),
                        8 => u64::from_be_bytes(header[2..10].try_into().unwrap_or([0xff; 8])),
                        _ => u64::from(len7),
                    };
                    if is_data_opcode(header[0] & 0x0f) && len > 0 {
                        data_frame(len)?;
                    }
                    self.phase = if len == 0 {
                        Phase::Header {
                            bytes: [0; 14],
                            have: 0,
                        }
                    } else {
                        Phase::Payload { left: len }
                    };
                }
                Phase::Payload { left } => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the frames a peer sends may hold: data frames are reserved by the socket layer
/// under tungstenite as their headers go by, and released by the connection above it as
/// their bytes are read. Both run in the connection's task; the lock is never contended.
#[derive(Clone)]
struct FrameBudget(Arc<std::sync::Mutex<BudgetState>>);

struct BudgetState {
    tracker: FrameTracker,
    held: Reservation,
    max_frame: usize,
}

impl FrameBudget {
    fn new(max_frame: usize) -> Self {
        FrameBudget(Arc::new(std::sync::Mutex::new(BudgetState {
            tracker: FrameTracker::default(),
            held: Reservation::default(),
            max_frame,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, frames are reserved from `memory`.
    fn attach(&self, memory: &ScopeMemory) {
        let mut st = self.lock();
        let mut held = memory.empty();
        // Normally nothing is held yet: frames come after the upgrade starts reading.
        let _ = held.grow(st.held.size(), priority::ALWAYS);
        st.held = held;
    }

    /// Bytes read from the socket, in order.
    fn received(&self, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let BudgetState {
            tracker,
            held,
            max_frame,
        } = &mut *st;
        tracker.feed(bytes, |len| {
            if len > *max_frame as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("websocket frame of {len} bytes exceeds the limit of {max_frame}"),
                ));
            }
            // Data the remote sends: HIGH, so the connection's own buffers keep room.
            held.grow(len as usize, priority::HIGH).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("no memory for a websocket frame of {len} bytes: {e}"),
                )
            })
        })
    }

    /// `n` payload bytes were read by the connection's user: no longer held.
    fn released(&self, n: usize) {
        self.lock().held.shrink(n);
    }
}

/// The TCP connection under a WebSocket, with a byte budget for the handshake and the
/// frame budget.
struct Limited<T> {
    inner: T,
    /// Bytes the handshake may still read; `None` once it is done.
    left: Option<usize>,
    budget: FrameBudget,
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(left) = self.left else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            self.budget.received(&buf.filled()[before..])?;
            return Poll::Ready(Ok(()));
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
        self.budget.received(limited.filled())?;
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
    /// Received data frames, reserved as they arrive and released as they are read.
    budget: FrameBudget,
    /// The connection's fixed buffers (see [`WsConfig::fixed_buffers`]).
    fixed: usize,
    /// Their reservation once the connection has its scope; an error if it was refused.
    held: Option<Result<Reservation, String>>,
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
        if let Some(Err(e)) = &self.held {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::OutOfMemory, e.clone())));
        }
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
    fn attach_memory(&mut self, memory: ScopeMemory) {
        self.held = Some(
            memory
                .reserve(self.fixed, priority::ALWAYS)
                .map_err(|e| format!("no memory for the websocket buffers: {e}")),
        );
        self.budget.attach(&memory);
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
                this.budget.released(n);
                if this.pending.is_empty() {
                    // Let go of the message's memory now, not at the next message.
                    this.pending = Bytes::new();
                }
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
        // One message at most MAX_SEND_MESSAGE long: what waits unsent stays bounded.
        let n = buf.len().min(MAX_SEND_MESSAGE);
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
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

    /// A frame header as a client sends it (masked), for a payload of `len` bytes.
    fn client_header(opcode: u8, len: usize) -> Vec<u8> {
        let mut h = vec![0x80 | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn frame_tracker_reports_data_frames_however_the_bytes_are_cut() {
        let mut stream = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut expected = Vec::new();
        for (opcode, len) in [(2u8, 5usize), (9, 4), (2, 300), (0, 70_000), (2, 0), (8, 2)] {
            stream.extend(client_header(opcode, len));
            stream.extend(std::iter::repeat_n(7u8, len));
            if opcode <= 2 && len > 0 {
                expected.push(len as u64);
            }
        }
        for cut in [1usize, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let mut tracker = FrameTracker::default();
            let mut seen = Vec::new();
            for piece in stream.chunks(cut) {
                tracker
                    .feed(piece, |len| {
                        seen.push(len);
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen, expected, "cut every {cut} bytes");
        }
    }

    #[test]
    fn a_frame_over_the_limit_or_the_memory_is_refused_before_it_is_read() {
        let budget = FrameBudget::new(1024);
        let mut bytes = b"HTTP/1.1 101 Switching\r\n\r\n".to_vec();
        bytes.extend(client_header(2, 2048));
        let err = budget.received(&bytes).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        // A scope with room for one 600-byte frame, not two.
        let ops = strata_core::rcmgr::CountedMemory::new(1000, "conn");
        let budget = FrameBudget::new(1 << 20);
        budget.attach(&ops.memory());
        let mut bytes = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        bytes.extend(client_header(2, 600));
        budget.received(&bytes).unwrap();
        assert_eq!(ops.held(), 600);
        let mut next = vec![7u8; 600];
        next.extend(client_header(2, 600));
        let err = budget.received(&next).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        // Reading the first frame's bytes gives them back.
        budget.released(600);
        assert_eq!(ops.held(), 0);
    }

    #[test]
    fn secure_websocket_needs_its_tls_settings() {
        let plain = WsTransport::new(WsConfig::default());
        assert!(plain.can_dial(&ma("/ip4/1.2.3.4/tcp/80/ws")));
        assert!(!plain.can_dial(&ma("/ip4/1.2.3.4/tcp/443/tls/ws")));
        assert!(!plain.can_listen(&ma("/ip4/127.0.0.1/tcp/0/wss")));
    }
}
