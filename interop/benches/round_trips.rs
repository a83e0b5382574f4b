//! Round trips to connect and to the first response on a new stream, Strata beside
//! rust-libp2p 0.57 in one run, through the same relays: each direction of every TCP
//! chunk or UDP datagram is delayed by 25 ms (a 50 ms round trip; TCP's own handshake is
//! not delayed). Each figure is the time divided by the round trip, the median of five
//! dials.
//!
//! * connect: from the start of the dial to a usable connection (Strata: `connect`
//!   returns; rust-libp2p: `ConnectionEstablished` on the dialer);
//! * first response: from the start of the dial to the answer of the first ping on a new
//!   stream (Strata: `Host::ping` right after `connect`; rust-libp2p: the ping behaviour's
//!   first success, which it starts by itself on a new connection).
//!
//! Run: `cargo bench -p strata-interop --bench round_trips`. Targets: connect within 1.2
//! round trips and the first response within 2.2, over TCP+TLS, TCP+Noise and QUIC.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, ping, tcp, tls, yamux, Swarm, SwarmBuilder};
use strata_core::addr::{quic_socket_addr, tcp_socket_addr};
use strata_core::{Multiaddr, Protocol};
use strata_host::{Host, HostBuilder, Security};
use strata_interop::relay::{TcpDelayRelay, UdpDelayRelay};

const ONE_WAY: Duration = Duration::from_millis(25);
const ROUND_TRIP: Duration = Duration::from_millis(50);
const RUNS: usize = 5;

#[derive(Clone, Copy, Debug)]
enum Stack {
    Tls,
    Noise,
    Quic,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Tls => "TCP + TLS",
            Stack::Noise => "TCP + Noise",
            Stack::Quic => "QUIC",
        }
    }

    fn listen_addr(self) -> Multiaddr {
        match self {
            Stack::Tls | Stack::Noise => "/ip4/127.0.0.1/tcp/0",
            Stack::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .unwrap()
    }
}

/// A relay in front of `target`, and the address to dial instead.
async fn relay(target: &Multiaddr) -> (Box<dyn std::any::Any + Send>, Multiaddr) {
    if let Ok(sa) = tcp_socket_addr(target) {
        let r = TcpDelayRelay::start(sa, ONE_WAY).await.unwrap();
        let addr = relayed(r.addr(), "tcp", "");
        (Box::new(r), addr)
    } else {
        let sa = quic_socket_addr(target).unwrap();
        let r = UdpDelayRelay::start(sa, ONE_WAY).await.unwrap();
        let addr = relayed(r.addr(), "udp", "/quic-v1");
        (Box::new(r), addr)
    }
}

fn relayed(at: SocketAddr, proto: &str, suffix: &str) -> Multiaddr {
    format!("/ip4/127.0.0.1/{proto}/{}{suffix}", at.port())
        .parse()
        .unwrap()
}

fn round_trips(d: Duration) -> f64 {
    d.as_secs_f64() / ROUND_TRIP.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn strata_builder(stack: Stack) -> HostBuilder {
    match stack {
        Stack::Tls => HostBuilder::new().no_quic().security(vec![Security::Tls]),
        Stack::Noise => HostBuilder::new().no_quic().security(vec![Security::Noise]),
        Stack::Quic => HostBuilder::new().no_tcp(),
    }
}

async fn strata_once(stack: Stack) -> (f64, f64) {
    let (server, _) = strata_builder(stack)
        .listen_on(stack.listen_addr())
        .build()
        .await
        .unwrap();
    let (client, _) = strata_builder(stack).build().await.unwrap();
    let (_relay, addr) = relay(&server.addrs()[0]).await;
    let addr = addr.with(Protocol::P2p(server.id()));
    let start = Instant::now();
    client.connect(server.id(), &[addr]).await.unwrap();
    let connected = start.elapsed();
    client.ping(server.id()).await.unwrap();
    let answered = start.elapsed();
    close(client, server).await;
    (round_trips(connected), round_trips(answered))
}

async fn close(a: Host, b: Host) {
    a.close().await;
    b.close().await;
}

#[derive(NetworkBehaviour)]
struct Pinger {
    ping: ping::Behaviour,
}

fn libp2p_swarm(stack: Stack) -> Swarm<Pinger> {
    let builder = SwarmBuilder::with_new_identity().with_tokio();
    let behaviour = |_: &libp2p::identity::Keypair| Pinger {
        ping: ping::Behaviour::new(ping::Config::new()),
    };
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    match stack {
        Stack::Tls => builder
            .with_tcp(
                tcp::Config::default(),
                tls::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Stack::Noise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Stack::Quic => builder
            .with_quic()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
    }
}

async fn libp2p_once(stack: Stack) -> (f64, f64) {
    let mut server = libp2p_swarm(stack);
    server.listen_on(stack.listen_addr()).unwrap();
    let listening = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_peer = *server.local_peer_id();
    let server_task = tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    let (_relay, addr) = relay(&listening).await;
    let mut client = libp2p_swarm(stack);
    let start = Instant::now();
    client.dial(addr.with(Protocol::P2p(server_peer))).unwrap();
    let mut connected = None;
    let answered = loop {
        match client.select_next_some().await {
            SwarmEvent::ConnectionEstablished { .. } => connected = Some(start.elapsed()),
            SwarmEvent::Behaviour(PingerEvent::Ping(ping::Event { result: Ok(_), .. })) => {
                break start.elapsed()
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
            _ => {}
        }
    };
    server_task.abort();
    (
        round_trips(connected.unwrap_or(answered)),
        round_trips(answered),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "round trips through a {} ms relay (median of {RUNS}): connect / first response",
        ROUND_TRIP.as_millis()
    );
    println!(
        "{:<12} {:>18} {:>18}",
        "stack", "Strata", "rust-libp2p 0.57"
    );
    for stack in [Stack::Tls, Stack::Noise, Stack::Quic] {
        let (mut sc, mut sr, mut lc, mut lr) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let (c, r) = strata_once(stack).await;
            sc.push(c);
            sr.push(r);
            let (c, r) = libp2p_once(stack).await;
            lc.push(c);
            lr.push(r);
        }
        println!(
            "{:<12} {:>8.2} / {:<7.2} {:>8.2} / {:<7.2}",
            stack.name(),
            median(sc),
            median(sr),
            median(lc),
            median(lr)
        );
    }
}
