//! A host composed from chosen parts instead of the defaults:
//!
//! * Noise as the only security protocol, yamux with settings of our own;
//! * no QUIC; the in-memory transport; and instead of the builtin TCP, a raw transport
//!   written here ([`CountingTcp`]: TCP that counts the bytes it carries), which the host
//!   upgrades with Noise and yamux like its own;
//! * a connection gater written here ([`BlockList`]) that counts inbound connections and
//!   refuses a blocked peer once the security handshake has told who it is.
//!
//! A server, a welcome client (over the counting TCP) and a blocked one (over memory)
//! show each part at work.
//!
//! ```text
//! cargo run --example custom_host
//! ```

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use strata::core::{
    BoxRawConn, BoxRawListener, ConnectionGater, Direction, RawConnection, RawListener,
    RawTransport, TransportError,
};
use strata::host::Security;
use strata::identity::generate_ed25519;
use strata::transport::{TcpConfig, TcpTransport};
use strata::upgrader::YamuxConfig;
use strata::{HostBuilder, Multiaddr, PeerId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let blocked_key = generate_ed25519();
    let blocked = blocked_key.public().to_peer_id();

    // The server: listens on the counting TCP transport and on memory, gated.
    let gater = Arc::new(BlockList::new(vec![blocked]));
    let server_tcp = CountingTcp::new();
    let (server, _) = builder(server_tcp.clone())
        .gater(gater.clone())
        .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
        .listen_on("/memory/0".parse()?)
        .build()
        .await?;
    for addr in server.addrs() {
        println!("server listening on {addr}");
    }
    let tcp_addrs: Vec<Multiaddr> = server.addrs().into_iter().filter(is_tcp).collect();
    let memory_addrs: Vec<Multiaddr> = server.addrs().into_iter().filter(|a| !is_tcp(a)).collect();

    // A welcome client, over the counting TCP transport.
    let client_tcp = CountingTcp::new();
    let (client, _) = builder(client_tcp.clone()).build().await?;
    client.connect(server.id(), &tcp_addrs).await?;
    let rtt = client.ping(server.id()).await?;
    let conn = client
        .network()
        .best_conn(&server.id())
        .ok_or("no connection")?;
    println!(
        "client connected via {} + {} + {}, ping {:.3} ms",
        conn.state().transport,
        conn.state().security,
        conn.state().muxer,
        rtt.as_secs_f64() * 1e3
    );

    // The blocked client, over memory: the server's gater refuses it after the handshake.
    let (intruder, _) = builder(CountingTcp::new())
        .identity(blocked_key)
        .build()
        .await?;
    let result = intruder.connect(server.id(), &memory_addrs).await;
    // The refusal is the server's decision; on the dialer it may show up a moment later.
    for _ in 0..100 {
        if gater.refused.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match result {
        Err(e) => println!("blocked peer could not connect: {e}"),
        Ok(()) => println!("blocked peer's dial completed, then the server dropped it"),
    }
    println!(
        "gater: {} inbound accepted, {} refused at the secured stage",
        gater.accepted.load(Ordering::SeqCst),
        gater.refused.load(Ordering::SeqCst)
    );
    println!(
        "counting tcp: client {} connections {} bytes, server {} connections {} bytes",
        client_tcp.conns.load(Ordering::SeqCst),
        client_tcp.bytes.load(Ordering::SeqCst),
        server_tcp.conns.load(Ordering::SeqCst),
        server_tcp.bytes.load(Ordering::SeqCst),
    );
    intruder.close().await;
    client.close().await;
    server.close().await;
    Ok(())
}

/// The parts every host of this example shares.
fn builder(tcp: CountingTcp) -> HostBuilder {
    let yamux = YamuxConfig {
        max_streams: 64,
        max_connection_receive_window: Some(64 * 256 * 1024),
        split_send_size: 64 * 1024,
        ..YamuxConfig::default()
    };
    HostBuilder::new()
        .security(vec![Security::Noise])
        .yamux(yamux)
        .no_quic()
        .no_tcp() // the swarm takes one transport per protocol: ours serves "tcp"
        .raw_transport(tcp)
        .memory()
}

fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, strata::core::Protocol::Tcp(_)))
}

/// Refuses the listed peers once they are authenticated; counts inbound connections.
struct BlockList {
    blocked: Vec<PeerId>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl BlockList {
    fn new(blocked: Vec<PeerId>) -> Self {
        BlockList {
            blocked,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl ConnectionGater for BlockList {
    fn intercept_accept(&self, _local: &Multiaddr, _remote: &Multiaddr) -> bool {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        true
    }

    fn intercept_secured(
        &self,
        direction: Direction,
        peer: &PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> bool {
        if !self.blocked.contains(peer) {
            return true;
        }
        self.refused.fetch_add(1, Ordering::SeqCst);
        println!("gater: refusing {direction:?} connection from blocked peer {peer} at {remote}");
        false
    }
}

/// A raw transport of our own: TCP that counts connections and the bytes they carry.
#[derive(Clone)]
struct CountingTcp {
    inner: Arc<TcpTransport>,
    conns: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl CountingTcp {
    fn new() -> Self {
        CountingTcp {
            inner: Arc::new(TcpTransport::new(TcpConfig::default())),
            conns: Arc::default(),
            bytes: Arc::default(),
        }
    }

    fn wrap(&self, inner: BoxRawConn) -> BoxRawConn {
        self.conns.fetch_add(1, Ordering::SeqCst);
        Box::new(CountingConn {
            inner,
            bytes: self.bytes.clone(),
        })
    }
}

#[async_trait]
impl RawTransport for CountingTcp {
    fn protocols(&self) -> &[&'static str] {
        self.inner.protocols()
    }
    fn can_dial(&self, addr: &Multiaddr) -> bool {
        self.inner.can_dial(addr)
    }
    fn can_listen(&self, addr: &Multiaddr) -> bool {
        self.inner.can_listen(addr)
    }
    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        Ok(self.wrap(self.inner.dial(addr).await?))
    }
    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError> {
        let inner = self.inner.listen(addr).await?;
        Ok(Box::new(CountingListener {
            inner,
            transport: self.clone(),
        }))
    }
}

struct CountingListener {
    inner: BoxRawListener,
    transport: CountingTcp,
}

#[async_trait]
impl RawListener for CountingListener {
    fn multiaddr(&self) -> &Multiaddr {
        self.inner.multiaddr()
    }
    async fn accept(&mut self) -> Result<BoxRawConn, TransportError> {
        Ok(self.transport.wrap(self.inner.accept().await?))
    }
}

struct CountingConn {
    inner: BoxRawConn,
    bytes: Arc<AtomicU64>,
}

impl RawConnection for CountingConn {
    fn local_multiaddr(&self) -> &Multiaddr {
        self.inner.local_multiaddr()
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        self.inner.remote_multiaddr()
    }
}

impl AsyncRead for CountingConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bytes.fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for CountingConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
