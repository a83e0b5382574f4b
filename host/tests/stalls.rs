//! Nothing a slow notifiee or an unresponsive peer does holds the host up for longer than
//! its stated bound: a trim of 100 frozen peers ends within its deadline; a notifiee that
//! sleeps 5 s in `connected` delays new connections' streams by at most the connected
//! bound; notifiees that open streams to each other from inside `connected` both get
//! through; a host shutdown with frozen peers returns by its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use strata_core::identity::generate_ed25519;
use strata_core::{BoxCapableConn, Multiaddr, PeerId, Transport};
use strata_host::{ConnManagerConfig, Host, HostBuilder, HostEvent, Security};
use strata_swarm::{Conn, Notifiee, Swarm, SwarmConfig};
use strata_transport::{TcpConfig, TcpTransport};
use strata_upgrader::multistream::dialer_select;
use strata_upgrader::{NoiseTransport, StreamMuxer, Upgraded, Upgrader, UpgraderConfig, Yamux};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

mod common;

const ECHO: &str = "/echo/1.0.0";
const LIMIT: Duration = Duration::from_secs(20);

/// One test at a time: each measures how long something takes, and the others would
/// compete for the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn serve_echo(host: &Host) {
    host.set_stream_handler(ECHO, |mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() {
            let _ = stream.write_all(&buf).await;
            let _ = stream.close_write().await;
        }
    });
}

fn allow_loopback() -> strata_rcmgr::LimitConfig {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    limits
}

async fn tcp_host(builder: HostBuilder) -> (Host, Multiaddr) {
    let (host, outcomes) = builder
        .no_quic()
        .security(vec![Security::Noise])
        .resource_limits(allow_loopback())
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    serve_echo(&host);
    (host, addr)
}

/// The host's runtime: two workers, as the machine has two cores.
fn host_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime of its own for peers that will freeze.
fn peer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Blocks `rt`'s only worker until the returned sender is used or dropped.
fn freeze(rt: &tokio::runtime::Runtime) -> std::sync::mpsc::Sender<()> {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<()>();
    rt.spawn(async move {
        frozen_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    frozen_rx.recv().unwrap();
    release_tx
}

/// `n` bare connections, each from a fresh identity, to `addr`.
async fn bare_peers(n: usize, addr: &Multiaddr, host: PeerId) -> Vec<BoxCapableConn> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let key = generate_ed25519();
        let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
        let up = Upgrader::new(
            key.public().to_peer_id(),
            vec![Arc::new(NoiseTransport::new(key.clone()))],
            vec![muxer],
            UpgraderConfig::default(),
        )
        .unwrap();
        let t = Upgraded::new(TcpTransport::new(TcpConfig::default()), Arc::new(up));
        conns.push(t.dial(addr, Some(host)).await.unwrap());
    }
    conns
}

#[test]
fn a_trim_of_a_hundred_unresponsive_peers_ends_within_its_deadline() {
    let _serial = SERIAL.blocking_lock();
    let rt = host_runtime();
    let peers_rt = peer_runtime();
    let trim_deadline = Duration::from_millis(500);
    let cm = ConnManagerConfig {
        low_water: 0,
        high_water: 1000,
        grace_period: Duration::ZERO,
        trim_deadline,
    };
    let (host, addr) = rt.block_on(tcp_host(HostBuilder::new().conn_manager(cm)));
    let peers = peers_rt.block_on(bare_peers(100, &addr, host.id()));
    rt.block_on(async {
        timeout(LIMIT, async {
            while host.network().conns().len() < 100 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    });
    let release = freeze(&peers_rt);
    rt.block_on(async {
        let start = Instant::now();
        host.conn_manager().unwrap().trim(&host).await;
        let took = start.elapsed();
        assert!(
            took <= trim_deadline + Duration::from_millis(100),
            "the trim took {took:?}"
        );
        assert!(host.network().conns().is_empty());
    });
    drop(release);
    drop(peers);
    rt.block_on(host.close());
}

/// Sleeps in `connected`.
struct Sleeper(Duration);

#[async_trait]
impl Notifiee for Sleeper {
    async fn connected(&self, _swarm: &Swarm, _conn: &Conn) {
        tokio::time::sleep(self.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifiee_sleeping_in_connected_delays_streams_by_at_most_the_bound() {
    let _serial = SERIAL.lock().await;
    let bound = SwarmConfig::default().notifiee_connected_bound;
    let (server, addr) =
        tcp_host(HostBuilder::new().notifiee(Arc::new(Sleeper(Duration::from_secs(5))))).await;
    let (client, _) = HostBuilder::new()
        .no_quic()
        .security(vec![Security::Noise])
        .build()
        .await
        .unwrap();
    let mut events = client.events();
    let start = Instant::now();
    client.connect(server.id(), &[addr]).await.unwrap();
    // The server answers identify, ping and a user stream on the new connection.
    timeout(LIMIT, async {
        loop {
            if let Ok(HostEvent::Identified { peer, .. }) = events.recv().await {
                if peer == server.id() {
                    return;
                }
            }
        }
    })
    .await
    .unwrap();
    client.ping(server.id()).await.unwrap();
    let mut s = client.new_stream(server.id(), &[ECHO]).await.unwrap();
    s.write_all(b"not held up").await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"not held up");
    let took = start.elapsed();
    assert!(
        took < bound + Duration::from_millis(900),
        "identify, ping and echo took {took:?}; the notifiee sleeps 5 s"
    );
    assert!(server.network().notifiee_stats().late >= 1);
    client.close().await;
    server.close().await;
}

/// Opens an echo stream to the peer from inside `connected` and waits for the answer.
struct EchoOnConnect(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

#[async_trait]
impl Notifiee for EchoOnConnect {
    async fn connected(&self, _swarm: &Swarm, conn: &Conn) {
        let Ok(mut s) = conn.new_stream().await else {
            return;
        };
        if dialer_select(&mut s, &[ECHO]).await.is_err() {
            return;
        }
        let _ = s.write_all(b"hello from connected").await;
        let _ = s.close_write().await;
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back).await;
        let _ = self.0.send(back);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifiees_opening_streams_to_each_other_in_connected_both_get_through() {
    let _serial = SERIAL.lock().await;
    let (a_tx, mut a_rx) = tokio::sync::mpsc::unbounded_channel();
    let (b_tx, mut b_rx) = tokio::sync::mpsc::unbounded_channel();
    let (a, _) = tcp_host(HostBuilder::new().notifiee(Arc::new(EchoOnConnect(a_tx)))).await;
    let (b, b_addr) = tcp_host(HostBuilder::new().notifiee(Arc::new(EchoOnConnect(b_tx)))).await;
    let start = Instant::now();
    a.connect(b.id(), &[b_addr]).await.unwrap();
    let from_a = timeout(LIMIT, a_rx.recv()).await.unwrap().unwrap();
    let from_b = timeout(LIMIT, b_rx.recv()).await.unwrap().unwrap();
    assert_eq!(from_a, b"hello from connected");
    assert_eq!(from_b, b"hello from connected");
    let took = start.elapsed();
    // Each waits for the other at most the connected bound.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    a.close().await;
    b.close().await;
}

#[test]
fn host_shutdown_with_frozen_peers_mid_transfer_returns_by_its_deadline() {
    let _serial = SERIAL.blocking_lock();
    let rt = host_runtime();
    let peers_rt = peer_runtime();
    let tasks_before = rt.metrics().num_alive_tasks();
    let (host, addr) = rt.block_on(async {
        let (host, addr) = tcp_host(HostBuilder::new()).await;
        // Sends until the peer stops reading, then blocks.
        host.set_stream_handler("/firehose/1.0.0", |mut s| async move {
            let chunk = vec![1u8; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        });
        (host, addr)
    });
    let server = host.id();
    let peers = peers_rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..8 {
            let (client, _) = HostBuilder::new()
                .no_quic()
                .security(vec![Security::Noise])
                .build()
                .await
                .unwrap();
            client
                .connect(server, std::slice::from_ref(&addr))
                .await
                .unwrap();
            let mut s = client
                .new_stream(server, &["/firehose/1.0.0"])
                .await
                .unwrap();
            let mut first = [0u8; 1024];
            s.read_exact(&mut first).await.unwrap();
            held.push((client, s));
        }
        held
    });
    let release = freeze(&peers_rt);
    rt.block_on(async {
        let start = Instant::now();
        host.shutdown(Duration::from_secs(1)).await;
        let took = start.elapsed();
        assert!(
            took <= Duration::from_millis(1100),
            "shutdown(1 s) took {took:?}"
        );
    });
    // Nothing the host started is left running on its runtime.
    common::assert_tasks_back_to(&rt, tasks_before);
    drop(release);
    peers_rt.block_on(async {
        for (client, _) in &peers {
            client.close().await;
        }
    });
}
