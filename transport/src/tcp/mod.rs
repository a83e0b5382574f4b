//! TCP: listeners with SO_REUSEPORT and dials that leave from the listen port.

mod config;
mod listener;
mod reuse;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use strata_core::addr::{self, tcp_multiaddr, Host, Stack};
use strata_core::{
    BoxRawConn, BoxRawListener, Multiaddr, RawConnection, RawTransport, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use config::{TcpConfig, REUSEPORT_ENV};
pub use listener::TcpListener;
use reuse::ListenRegistry;

/// The TCP transport. Cheap to clone; clones share the listener registry used for port
/// reuse.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    config: TcpConfig,
    listeners: ListenRegistry,
}

impl TcpTransport {
    /// A transport with the given settings.
    pub fn new(config: TcpConfig) -> Self {
        TcpTransport {
            config,
            listeners: ListenRegistry::default(),
        }
    }

    /// The transport's settings.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Listens on a TCP multiaddr and returns the concrete listener.
    pub async fn listen_tcp(&self, addr: &Multiaddr) -> Result<TcpListener, TransportError> {
        let target = *socket_addrs(addr)
            .await?
            .first()
            .ok_or_else(|| unreachable_addr(addr))?;
        let listen_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                TransportError::AddrInUse { addr: addr.clone() }
            } else {
                TransportError::Listen {
                    addr: addr.clone(),
                    source,
                }
            }
        };
        let socket = new_socket(target).map_err(listen_err)?;
        if self.config.reuseport {
            socket.set_reuse_address(true).map_err(listen_err)?;
            set_reuse_port(&socket).map_err(listen_err)?;
        }
        socket.bind(&target.into()).map_err(listen_err)?;
        let backlog = i32::try_from(self.config.backlog).unwrap_or(i32::MAX);
        socket.listen(backlog).map_err(listen_err)?;
        let listener = tokio::net::TcpListener::from_std(socket.into()).map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?;
        let registration = self
            .config
            .reuseport
            .then(|| self.listeners.register(bound));
        let multiaddr = listener::listen_multiaddr(&listener).map_err(listen_err)?;
        tracing::debug!(%multiaddr, "listening");
        Ok(TcpListener::new(
            listener,
            multiaddr,
            self.config.clone(),
            registration,
        ))
    }

    /// Dials a TCP multiaddr and returns the concrete connection.
    pub async fn dial_tcp(&self, addr: &Multiaddr) -> Result<TcpConn, TransportError> {
        let targets = socket_addrs(addr).await?;
        let mut last_err = unreachable_addr(addr);
        for target in targets {
            match self.dial_socket_addr(addr, target).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Dials a TCP multiaddr from an ephemeral port, whatever the port-reuse setting (of
    /// the address a listener is bound to, if one would serve this dial).
    pub async fn dial_tcp_fresh(&self, addr: &Multiaddr) -> Result<TcpConn, TransportError> {
        let targets = socket_addrs(addr).await?;
        let mut last_err = unreachable_addr(addr);
        for target in targets {
            let local = self.listeners.local_for(target).and_then(ephemeral_on);
            match self.connect(addr, target, local).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    async fn dial_socket_addr(
        &self,
        addr: &Multiaddr,
        target: SocketAddr,
    ) -> Result<TcpConn, TransportError> {
        if self.config.reuseport {
            if let Some(local) = self.listeners.local_for(target) {
                match self.connect(addr, target, Some(local)).await {
                    Ok(conn) => return Ok(conn),
                    // The port (or this exact 4-tuple) is taken: leave from an ephemeral
                    // port, of the listener's own address when it listens on one (the
                    // address the user chose to be reached at, and to be seen from).
                    Err(TransportError::Dial { source, .. }) if is_port_conflict(&source) => {
                        tracing::debug!(%addr, %local, "port reuse failed ({source}); dialing from an ephemeral port");
                        return self.connect(addr, target, ephemeral_on(local)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.connect(addr, target, None).await
    }

    async fn connect(
        &self,
        addr: &Multiaddr,
        target: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<TcpConn, TransportError> {
        let dial_err = |source: io::Error| TransportError::Dial {
            addr: addr.clone(),
            source,
        };
        let socket = new_socket(target).map_err(dial_err)?;
        configure_socket(&socket, &self.config).map_err(dial_err)?;
        if let Some(local) = local {
            socket.set_reuse_address(true).map_err(dial_err)?;
            set_reuse_port(&socket).map_err(dial_err)?;
            socket.bind(&local.into()).map_err(dial_err)?;
        }
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = tokio::time::timeout(self.config.connect_timeout, socket.connect(target))
            .await
            .map_err(|_| TransportError::DialTimeout {
                addr: addr.clone(),
                timeout: self.config.connect_timeout,
            })?
            .map_err(dial_err)?;
        TcpConn::new(stream).map_err(dial_err)
    }
}

/// A TCP multiaddr resolved to socket addresses (DNS names through tokio's resolver).
async fn socket_addrs(addr: &Multiaddr) -> Result<Vec<SocketAddr>, TransportError> {
    let parsed = addr::parse(addr)?;
    if parsed.stack != Stack::Tcp {
        return Err(strata_core::AddrError::Unsupported {
            addr: addr.clone(),
            reason: "not a TCP multiaddr",
        }
        .into());
    }
    match parsed.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(ip, parsed.port)]),
        Host::Dns(..) => addr::resolve(addr)
            .await?
            .iter()
            .map(|a| addr::tcp_socket_addr(a).map_err(TransportError::from))
            .collect(),
    }
}

fn unreachable_addr(addr: &Multiaddr) -> TransportError {
    TransportError::Dial {
        addr: addr.clone(),
        source: io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to"),
    }
}

/// An ephemeral port on `local`'s address, when it is a specific one: a host that listens
/// on one address is reached at it and should be seen from it, also when its listen port
/// cannot be used for a dial. `None` (the kernel's pick) for an unspecified address.
fn ephemeral_on(local: SocketAddr) -> Option<SocketAddr> {
    (!local.ip().is_unspecified()).then(|| SocketAddr::new(local.ip(), 0))
}

fn is_port_conflict(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable
    )
}

fn new_socket(target: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if target.is_ipv6() {
        // One listener per family, as the multiaddr says; no dual-stack surprises.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    {
        socket.set_reuse_port(true)
    }
    #[cfg(not(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    )))]
    {
        let _ = socket;
        Ok(())
    }
}

/// TCP_NODELAY, keepalive and SO_LINGER 0 as configured.
fn configure_socket(socket: &Socket, config: &TcpConfig) -> io::Result<()> {
    socket.set_tcp_nodelay(config.nodelay)?;
    if let Some(idle) = config.keepalive {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    if config.linger_zero {
        socket.set_linger(Some(std::time::Duration::ZERO))?;
    }
    Ok(())
}

pub(crate) fn configure_stream(
    stream: &tokio::net::TcpStream,
    config: &TcpConfig,
) -> io::Result<()> {
    configure_socket(&SockRef::from(stream), config)
}

/// A TCP connection with its multiaddrs.
#[derive(Debug)]
pub struct TcpConn {
    stream: tokio::net::TcpStream,
    local: Multiaddr,
    remote: Multiaddr,
}

impl TcpConn {
    fn new(stream: tokio::net::TcpStream) -> io::Result<Self> {
        let local = tcp_multiaddr(stream.local_addr()?);
        let remote = tcp_multiaddr(stream.peer_addr()?);
        Ok(TcpConn {
            stream,
            local,
            remote,
        })
    }

    /// The underlying tokio stream.
    pub fn get_ref(&self) -> &tokio::net::TcpStream {
        &self.stream
    }
}

impl RawConnection for TcpConn {
    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote
    }
}

impl AsyncRead for TcpConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn is_tcp(addr: &Multiaddr) -> bool {
    matches!(addr::parse(addr), Ok(p) if p.stack == Stack::Tcp)
}

#[async_trait]
impl RawTransport for TcpTransport {
    fn protocols(&self) -> &[&'static str] {
        &["tcp"]
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        is_tcp(addr)
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        is_tcp(addr) && addr::peer_id_of(addr).is_none()
    }

    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        Ok(Box::new(self.dial_tcp(addr).await?))
    }

    fn dials_from_listen_port(&self) -> bool {
        self.config.reuseport
    }

    async fn dial_fresh(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        Ok(Box::new(self.dial_tcp_fresh(addr).await?))
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError> {
        Ok(Box::new(self.listen_tcp(addr).await?))
    }
}
