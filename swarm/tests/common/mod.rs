//! Shared test helpers: swarms over real transports, listening, an echo handler, and a
//! recording notifiee.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use strata_core::identity::keypair_from_seed;
use strata_core::{Multiaddr, PeerId, Transport};
use strata_swarm::{Conn, DisconnectReason, Notifiee, StreamHandler, Swarm, SwarmConfig};
use strata_transport::{MemoryTransport, TcpConfig, TcpTransport};
use strata_upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
    Yamux,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test rather than hanging if it takes more than 10 s.
pub async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("timed out: the awaited event never came")
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// TCP + TLS + yamux.
    Tcp,
    /// memory + Noise + yamux.
    Mem,
}

pub fn peer(seed: u64) -> PeerId {
    keypair_from_seed(seed).public().to_peer_id()
}

pub fn transport(seed: u64, kind: Kind) -> Arc<dyn Transport> {
    transport_with(seed, kind, strata_core::rcmgr::null_resource_manager())
}

/// A transport whose connections `rcmgr` admits before their handshakes.
pub fn transport_with(
    seed: u64,
    kind: Kind,
    rcmgr: strata_core::SharedResourceManager,
) -> Arc<dyn Transport> {
    let key = keypair_from_seed(seed);
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let sec: Arc<dyn SecureTransport> = match kind {
        Kind::Tcp => Arc::new(TlsTransport::new(key.clone()).unwrap()),
        Kind::Mem => Arc::new(NoiseTransport::new(key.clone())),
    };
    let up = Arc::new(
        Upgrader::new(
            key.public().to_peer_id(),
            vec![sec],
            vec![muxer],
            UpgraderConfig::default(),
        )
        .unwrap()
        .with_resource_manager(rcmgr),
    );
    match kind {
        Kind::Tcp => Arc::new(Upgraded::new(
            TcpTransport::new(TcpConfig::default().reuseport(false)),
            up,
        )),
        Kind::Mem => Arc::new(Upgraded::new(MemoryTransport::new(), up)),
    }
}

pub fn swarm_with(seed: u64, kind: Kind, config: SwarmConfig) -> Swarm {
    let s = Swarm::new(peer(seed), config);
    s.add_transport(transport(seed, kind)).unwrap();
    s
}

/// A swarm whose connections and streams `limits` govern.
pub fn swarm_limited(
    seed: u64,
    kind: Kind,
    config: SwarmConfig,
    limits: strata_rcmgr::LimitConfig,
) -> Swarm {
    let rcmgr: strata_core::SharedResourceManager =
        Arc::new(strata_rcmgr::BasicResourceManager::new(limits).unwrap());
    let s = Swarm::with_parts(peer(seed), config, None, rcmgr.clone());
    s.add_transport(transport_with(seed, kind, rcmgr)).unwrap();
    s
}

pub fn swarm(seed: u64, kind: Kind) -> Swarm {
    swarm_with(seed, kind, SwarmConfig::default())
}

pub fn any_addr(kind: Kind) -> Multiaddr {
    match kind {
        Kind::Tcp => "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        Kind::Mem => "/memory/0".parse().unwrap(),
    }
}

/// Listens on a fresh local address and returns the real one.
pub async fn listen(s: &Swarm, kind: Kind) -> Multiaddr {
    s.listen([any_addr(kind)]).await.remove(0).unwrap()
}

/// `a` learns `b`'s address.
pub async fn introduce(a: &Swarm, b: &Swarm, kind: Kind) -> Multiaddr {
    let addr = listen(b, kind).await;
    a.add_addrs(b.local_peer(), [addr.clone()]);
    addr
}

/// Echoes each stream back until EOF.
pub fn echo() -> StreamHandler {
    Arc::new(|mut s, _conn| {
        async move {
            let mut buf = vec![0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.close_write().await;
        }
        .boxed()
    })
}

/// Writes `msg` on a new stream to `peer` and checks it comes back.
pub async fn ping(a: &Swarm, peer: PeerId, msg: &[u8]) {
    let mut s = t(a.new_stream(peer)).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    t(s.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, msg);
}

/// What a [`Recorder`] saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Listen(Multiaddr),
    ListenClose(Multiaddr),
    /// Pushed when `connected` returns.
    Connected(u64),
    Disconnected(u64, DisconnectReason),
}

/// Records every notification; `delay` makes `connected` and `listen` slow.
#[derive(Default, Clone)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub delay: Duration,
    pub changed: Arc<tokio::sync::Notify>,
}

impl Recorder {
    pub fn slow(delay: Duration) -> Self {
        Recorder {
            delay,
            ..Default::default()
        }
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn push(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
        self.changed.notify_waiters();
    }
    /// Waits until `pred` holds on what was seen.
    pub async fn wait_for(&self, pred: impl Fn(&[Seen]) -> bool) {
        t(async {
            loop {
                let notified = self.changed.notified();
                if pred(&self.seen()) {
                    return;
                }
                notified.await;
            }
        })
        .await
    }
}

#[async_trait::async_trait]
impl Notifiee for Recorder {
    async fn listen(&self, _s: &Swarm, a: &Multiaddr) {
        tokio::time::sleep(self.delay).await;
        self.push(Seen::Listen(a.clone()));
    }
    async fn listen_close(&self, _s: &Swarm, a: &Multiaddr) {
        self.push(Seen::ListenClose(a.clone()));
    }
    async fn connected(&self, _s: &Swarm, c: &Conn) {
        tokio::time::sleep(self.delay).await;
        self.push(Seen::Connected(c.id().0));
    }
    async fn disconnected(&self, _s: &Swarm, c: &Conn, r: &DisconnectReason) {
        self.push(Seen::Disconnected(c.id().0, r.clone()));
    }
}

pub fn disconnects(seen: &[Seen]) -> Vec<DisconnectReason> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Disconnected(_, r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}
