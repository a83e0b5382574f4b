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
//! Run: `cargo bench -p strata-interop --bench round_trips` (STACK=tls|noise|quic runs
//! one stack). Targets: connect within 1.2 round trips and the first response within
//! 2.2, over TCP+TLS, TCP+Noise and QUIC.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::ping;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use strata_core::addr::{quic_socket_addr, tcp_socket_addr};
use strata_core::{Multiaddr, Protocol};
use strata_host::Host;
use strata_interop::relay::{TcpDelayRelay, UdpDelayRelay};

mod common;
use common::{libp2p_swarm, strata_builder, Stack};

const ONE_WAY: Duration = Duration::from_millis(25);
const ROUND_TRIP: Duration = Duration::from_millis(50);
const RUNS: usize = 5;

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

fn pinger(_: &libp2p::identity::Keypair) -> Pinger {
    Pinger {
        ping: ping::Behaviour::new(ping::Config::new()),
    }
}

async fn libp2p_once(stack: Stack) -> (f64, f64) {
    let mut server = libp2p_swarm(stack, pinger);
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
    let mut client = libp2p_swarm(stack, pinger);
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
        "{:<16} {:>18} {:>18}",
        "stack", "Strata", "rust-libp2p 0.57"
    );
    for stack in Stack::selected() {
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
            "{:<16} {:>8.2} / {:<7.2} {:>8.2} / {:<7.2}",
            stack.name(),
            median(sc),
            median(sr),
            median(lc),
            median(lr)
        );
    }
}
