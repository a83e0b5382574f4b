//! In-process `/memory/N` connections, for tests.
//!
//! Listeners live in one registry per process (as in rust-libp2p), so any
//! [`MemoryTransport`] can dial any memory listener of the process. A connection is a pair
//! of tokio duplex pipes.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_trait::async_trait;
use rand::Rng;
use strata_core::{
    AddrError, BoxRawConn, BoxRawListener, Multiaddr, Protocol, RawConnection, RawListener,
    RawTransport, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

/// Bytes buffered in each direction of a memory connection.
const PIPE_CAPACITY: usize = 256 * 1024;
/// Connections a memory listener holds before dials are refused.
const BACKLOG: usize = 128;

static LISTENERS: LazyLock<Mutex<HashMap<u64, mpsc::Sender<MemoryConn>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn listeners() -> MutexGuard<'static, HashMap<u64, mpsc::Sender<MemoryConn>>> {
    // Each operation is one insert, lookup or remove: the map cannot be left half-changed.
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memory transport.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryTransport;

impl MemoryTransport {
    /// A memory transport.
    pub fn new() -> Self {
        MemoryTransport
    }

    /// Listens on `/memory/N`; `/memory/0` picks a free port.
    pub fn listen_memory(&self, addr: &Multiaddr) -> Result<MemoryListener, TransportError> {
        let wanted = memory_port(addr)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let mut map = listeners();
        let port = if wanted == 0 {
            let mut rng = rand::thread_rng();
            loop {
                let candidate: u64 = rng.gen_range(1..u64::MAX);
                if !map.contains_key(&candidate) {
                    break candidate;
                }
            }
        } else if map.contains_key(&wanted) {
            return Err(TransportError::AddrInUse { addr: addr.clone() });
        } else {
            wanted
        };
        map.insert(port, tx);
        Ok(MemoryListener {
            port,
            addr: memory_multiaddr(port),
            incoming: rx,
            open: true,
        })
    }

    /// Dials `/memory/N`.
    pub fn dial_memory(&self, addr: &Multiaddr) -> Result<MemoryConn, TransportError> {
        let port = memory_port(addr)?;
        let refused = |why: &str| TransportError::Dial {
            addr: addr.clone(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, why.to_string()),
        };
        let sender = listeners()
            .get(&port)
            .cloned()
            .ok_or_else(|| refused("no memory listener on that port"))?;
        let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
        let dialer_addr = memory_multiaddr(rand::thread_rng().gen_range(1..u64::MAX));
        let listener_addr = memory_multiaddr(port);
        let inbound = MemoryConn {
            pipe: theirs,
            local: listener_addr.clone(),
            remote: dialer_addr.clone(),
        };
        sender.try_send(inbound).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => refused("the memory listener's backlog is full"),
            mpsc::error::TrySendError::Closed(_) => refused("the memory listener is closed"),
        })?;
        Ok(MemoryConn {
            pipe: ours,
            local: dialer_addr,
            remote: listener_addr,
        })
    }
}

fn memory_multiaddr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

fn memory_port(addr: &Multiaddr) -> Result<u64, TransportError> {
    let mut iter = addr.iter();
    let port = match iter.next() {
        Some(Protocol::Memory(port)) => port,
        _ => {
            return Err(AddrError::Unsupported {
                addr: addr.clone(),
                reason: "not a /memory/N multiaddr",
            }
            .into())
        }
    };
    match iter.next() {
        None | Some(Protocol::P2p(_)) if iter.next().is_none() => Ok(port),
        _ => Err(AddrError::Unsupported {
            addr: addr.clone(),
            reason: "only /p2p/<peer id> may follow /memory/N",
        }
        .into()),
    }
}

/// A memory listener; dropping or closing it frees its port and refuses later dials.
#[derive(Debug)]
pub struct MemoryListener {
    port: u64,
    addr: Multiaddr,
    incoming: mpsc::Receiver<MemoryConn>,
    open: bool,
}

impl MemoryListener {
    /// Stops listening: the port is freed and connections not yet accepted are dropped.
    pub fn close(&mut self) {
        if self.open {
            self.open = false;
            listeners().remove(&self.port);
            self.incoming.close();
            while self.incoming.try_recv().is_ok() {}
        }
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl RawListener for MemoryListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxRawConn, TransportError> {
        match self.incoming.recv().await {
            Some(conn) if self.open => Ok(Box::new(conn)),
            _ => Err(TransportError::ListenerClosed {
                addr: self.addr.clone(),
            }),
        }
    }
}

/// One end of a memory connection.
#[derive(Debug)]
pub struct MemoryConn {
    pipe: DuplexStream,
    local: Multiaddr,
    remote: Multiaddr,
}

impl RawConnection for MemoryConn {
    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote
    }
}

impl AsyncRead for MemoryConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_read(cx, buf)
    }
}

impl AsyncWrite for MemoryConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.pipe).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.pipe).poll_shutdown(cx)
    }
}

fn is_memory(addr: &Multiaddr) -> bool {
    memory_port(addr).is_ok()
}

#[async_trait]
impl RawTransport for MemoryTransport {
    fn protocols(&self) -> &[&'static str] {
        &["memory"]
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        is_memory(addr)
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        is_memory(addr)
    }

    async fn dial(&self, addr: &Multiaddr) -> Result<BoxRawConn, TransportError> {
        Ok(Box::new(self.dial_memory(addr)?))
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxRawListener, TransportError> {
        Ok(Box::new(self.listen_memory(addr)?))
    }
}
