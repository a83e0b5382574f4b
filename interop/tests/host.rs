//! Strata's host against a real rust-libp2p node (identify, ping, libp2p-stream) in this
//! process, over TCP+TLS, TCP+Noise, QUIC and WebSocket (TLS and Noise), with either side
//! dialing: identify both
//! ways (agent versions and protocols), ping both ways, and a custom protocol echoed both
//! ways.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, tls, yamux, StreamProtocol, Swarm, SwarmBuilder};
use strata_core::{Multiaddr, PeerId, Protocol};
use strata_host::{Host, HostBuilder, HostEvent, IdentifyInfo, Security};
use strata_transport::WsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::timeout;

mod common;
use common::{echo_both_ways, ECHO};

const IDENTIFY: &str = "/ipfs/id/1.0.0";
const PING: &str = "/ipfs/ping/1.0.0";
const LIBP2P_AGENT: &str = "rust-libp2p-interop/0.57";
const PROTOCOL_VERSION: &str = "ipfs/0.1.0";
use common::LIMIT;

#[derive(Clone, Copy, Debug)]
enum Stack {
    TcpTls,
    TcpNoise,
    Quic,
    WsTls,
    WsNoise,
}

#[derive(Clone, Copy, Debug)]
enum Dialer {
    Strata,
    Libp2p,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

fn behaviour(key: &libp2p::identity::Keypair) -> Behaviour {
    Behaviour {
        identify: identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                .with_agent_version(LIBP2P_AGENT.into()),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        stream: libp2p_stream::Behaviour::new(),
    }
}

/// What the rust-libp2p node reports.
#[derive(Debug)]
enum Event {
    Listening(Multiaddr),
    Connected(PeerId),
    Identified(PeerId, Box<identify::Info>),
    Pinged(PeerId, Duration),
}

struct Libp2pNode {
    peer: PeerId,
    control: libp2p_stream::Control,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Libp2pNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stack {
    fn listen_addr(self) -> Multiaddr {
        match self {
            Stack::TcpTls | Stack::TcpNoise => "/ip4/127.0.0.1/tcp/0",
            Stack::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
            Stack::WsTls | Stack::WsNoise => "/ip4/127.0.0.1/tcp/0/ws",
        }
        .parse()
        .unwrap()
    }

    async fn libp2p_swarm(self) -> Swarm<Behaviour> {
        let builder = SwarmBuilder::with_new_identity().with_tokio();
        // Each arm's builder has a type of its own; the rest of the build is the same.
        macro_rules! finish {
            ($b:expr) => {
                $b.with_behaviour(behaviour)
                    .unwrap()
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                    .build()
            };
        }
        match self {
            Stack::TcpTls => {
                finish!(builder
                    .with_tcp(
                        tcp::Config::default(),
                        tls::Config::new,
                        yamux::Config::default
                    )
                    .unwrap())
            }
            Stack::TcpNoise => {
                finish!(builder
                    .with_tcp(
                        tcp::Config::default(),
                        noise::Config::new,
                        yamux::Config::default
                    )
                    .unwrap())
            }
            Stack::Quic => finish!(builder.with_quic()),
            Stack::WsTls => finish!(builder
                .with_websocket(tls::Config::new, yamux::Config::default)
                .await
                .unwrap()),
            Stack::WsNoise => finish!(builder
                .with_websocket(noise::Config::new, yamux::Config::default)
                .await
                .unwrap()),
        }
    }

    /// A Strata host on this stack only, listening on loopback and serving ECHO.
    async fn strata_host(self) -> Host {
        let builder = match self {
            Stack::TcpTls => HostBuilder::new().no_quic().security(vec![Security::Tls]),
            Stack::TcpNoise => HostBuilder::new().no_quic().security(vec![Security::Noise]),
            Stack::Quic => HostBuilder::new().no_tcp(),
            Stack::WsTls => HostBuilder::new()
                .no_tcp()
                .no_quic()
                .websocket(WsConfig::default())
                .security(vec![Security::Tls]),
            Stack::WsNoise => HostBuilder::new()
                .no_tcp()
                .no_quic()
                .websocket(WsConfig::default())
                .security(vec![Security::Noise]),
        };
        let (host, outcomes) = timeout(LIMIT, builder.listen_on(self.listen_addr()).build())
            .await
            .unwrap()
            .unwrap();
        assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
        host.set_stream_handler(ECHO, |mut stream| async move {
            let mut buf = Vec::new();
            if stream.read_to_end(&mut buf).await.is_ok() {
                let _ = stream.write_all(&buf).await;
                let _ = stream.close_write().await;
            }
        });
        host
    }
}

/// Starts a rust-libp2p node on `stack` that echoes every ECHO stream; `setup` may
/// listen or dial before the swarm runs.
async fn start_libp2p(stack: Stack, setup: impl FnOnce(&mut Swarm<Behaviour>)) -> Libp2pNode {
    let mut swarm = stack.libp2p_swarm().await;
    setup(&mut swarm);
    let peer = *swarm.local_peer_id();
    let mut control = swarm.behaviour().stream.new_control();
    let incoming = control.accept(StreamProtocol::new(ECHO)).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let echo = common::serve_echo(incoming);
        let drive = async move {
            loop {
                let event = match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => Event::Listening(address),
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => Event::Connected(peer_id),
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) => Event::Identified(peer_id, Box::new(info)),
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                        peer,
                        result: Ok(rtt),
                        ..
                    })) => Event::Pinged(peer, rtt),
                    _ => continue,
                };
                // The test may stop listening for events; the swarm must keep running.
                let _ = tx.send(event);
            }
        };
        tokio::join!(echo, drive);
    });
    Libp2pNode {
        peer,
        control,
        events,
        task,
    }
}

impl Libp2pNode {
    async fn next(&mut self) -> Event {
        timeout(LIMIT, self.events.recv())
            .await
            .expect("no event from the rust-libp2p node in time")
            .expect("the rust-libp2p node stopped")
    }

    async fn listening(&mut self) -> Multiaddr {
        loop {
            if let Event::Listening(a) = self.next().await {
                return a;
            }
        }
    }

    /// Waits until rust-libp2p is connected to `peer`, has identified it and has pinged
    /// it successfully (in any order); returns what identify received.
    async fn connected_identified_pinged(&mut self, peer: PeerId) -> (identify::Info, Duration) {
        let (mut connected, mut info, mut rtt) = (false, None, None);
        while !(connected && info.is_some() && rtt.is_some()) {
            match self.next().await {
                Event::Connected(p) if p == peer => connected = true,
                Event::Identified(p, i) if p == peer => info = info.or(Some(*i)),
                Event::Pinged(p, r) if p == peer => rtt = rtt.or(Some(r)),
                _ => {}
            }
        }
        (info.unwrap(), rtt.unwrap())
    }
}

async fn strata_identified(
    events: &mut broadcast::Receiver<HostEvent>,
    peer: PeerId,
) -> IdentifyInfo {
    loop {
        match timeout(LIMIT, events.recv())
            .await
            .expect("Strata did not identify the rust-libp2p node in time")
        {
            Ok(HostEvent::Identified { peer: p, info }) if p == peer => return *info,
            Ok(HostEvent::IdentifyFailed { peer: p, error }) if p == peer => {
                panic!("Strata's identify of rust-libp2p failed: {error}")
            }
            Err(broadcast::error::RecvError::Closed) => panic!("the host's events ended"),
            _ => {}
        }
    }
}

async fn run(stack: Stack, dialer: Dialer) {
    let host = stack.strata_host().await;
    let mut host_events = host.events();
    let mut node = match dialer {
        Dialer::Strata => {
            let mut node = start_libp2p(stack, |s| {
                s.listen_on(stack.listen_addr()).unwrap();
            })
            .await;
            let addr = node.listening().await;
            timeout(LIMIT, host.connect(node.peer, &[addr]))
                .await
                .unwrap()
                .unwrap();
            node
        }
        Dialer::Libp2p => {
            let target = host.addrs()[0].clone().with(Protocol::P2p(host.id()));
            start_libp2p(stack, |s| s.dial(target).unwrap()).await
        }
    };

    // rust-libp2p identifies Strata and pings it.
    let (info, rtt) = node.connected_identified_pinged(host.id()).await;
    assert!(
        info.agent_version.starts_with("strata/"),
        "{:?}",
        info.agent_version
    );
    assert_eq!(info.public_key.to_peer_id(), host.id());
    for p in [ECHO, PING, IDENTIFY] {
        assert!(
            info.protocols.iter().any(|q| q.as_ref() == p),
            "rust-libp2p does not see {p} in {:?}",
            info.protocols
        );
    }
    assert!(rtt > Duration::ZERO);

    // Strata identifies rust-libp2p.
    let info = strata_identified(&mut host_events, node.peer).await;
    assert_eq!(info.agent_version, LIBP2P_AGENT);
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert_eq!(info.peer_id(), node.peer);
    for p in [ECHO, PING, IDENTIFY] {
        assert!(
            info.protocols.iter().any(|q| q == p),
            "Strata does not see {p} in {:?}",
            info.protocols
        );
    }
    assert_eq!(
        host.peerstore().agent_version(&node.peer).as_deref(),
        Some(LIBP2P_AGENT)
    );
    assert!(host
        .peerstore()
        .get_protocols(&node.peer)
        .iter()
        .any(|p| p == ECHO));

    // Strata pings rust-libp2p.
    let rtt = timeout(LIMIT, host.ping(node.peer)).await.unwrap().unwrap();
    assert!(rtt > Duration::ZERO);

    // Strata opens ECHO on rust-libp2p, and rust-libp2p on Strata.
    echo_both_ways(&host, node.peer, &mut node.control).await;

    timeout(LIMIT, host.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_tcp_tls() {
    run(Stack::TcpTls, Dialer::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_tcp_tls() {
    run(Stack::TcpTls, Dialer::Libp2p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_tcp_noise() {
    run(Stack::TcpNoise, Dialer::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_tcp_noise() {
    run(Stack::TcpNoise, Dialer::Libp2p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_quic() {
    run(Stack::Quic, Dialer::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_quic() {
    run(Stack::Quic, Dialer::Libp2p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_websocket_tls() {
    run(Stack::WsTls, Dialer::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_websocket_tls() {
    run(Stack::WsTls, Dialer::Libp2p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_websocket_noise() {
    run(Stack::WsNoise, Dialer::Strata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_websocket_noise() {
    run(Stack::WsNoise, Dialer::Libp2p).await;
}
