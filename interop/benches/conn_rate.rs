//! Connections per second to identify, Strata beside rust-libp2p 0.57 in one run, over
//! TCP+TLS+yamux, TCP+Noise+yamux and QUIC on loopback. Each node dials a listener of
//! its own kind in this process, one connection after another: dial, wait until the
//! listener's identify has arrived, close the connection and wait until it is gone. The
//! rate is the connections done divided by the time they took, the best of three runs.
//!
//! Both sides run identify and ping with their defaults. The Strata listener allowlists
//! 127.0.0.0/8: every dial here comes from 127.0.0.1, and the per-address rate and
//! connection caps would (rightly) slow a single source down.
//!
//! Run: `cargo bench -p strata-interop --bench conn_rate` (CONNS=N sets the connections
//! per run, 300 by default; PHASES=1 prints where Strata's time per connection goes;
//! STACK=tls|noise|quic runs one stack; ONLY=strata runs Strata alone, for a profiler).
//! Target: Strata at twice rust-libp2p's rate, for each stack.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, ping};
use strata_core::PeerId;
use strata_host::{Host, HostBuilder, HostEvent};

mod common;
use common::{libp2p_swarm, strata_builder, Stack};

const RUNS: usize = 3;

fn conns() -> usize {
    std::env::var("CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn strata_allowlisted(stack: Stack) -> HostBuilder {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    strata_builder(stack).resource_limits(limits)
}

async fn identified(events: &mut tokio::sync::broadcast::Receiver<HostEvent>, peer: PeerId) {
    loop {
        match events.recv().await {
            Ok(HostEvent::Identified { peer: p, .. }) if p == peer => return,
            Ok(HostEvent::IdentifyFailed { peer: p, error }) if p == peer => {
                panic!("identify failed: {error}")
            }
            Ok(_) => {}
            // The event may be among those missed: better a clear failure than a hang.
            Err(e) => panic!("host events: {e}"),
        }
    }
}

async fn strata_rate(stack: Stack, count: usize) -> f64 {
    let (server, _) = strata_allowlisted(stack)
        .listen_on(stack.listen_addr())
        .build()
        .await
        .unwrap();
    let (client, _) = strata_allowlisted(stack).build().await.unwrap();
    let addrs = server.addrs();
    let mut events = client.events();
    let started = Instant::now();
    let mut phases = [Duration::ZERO; 3];
    for _ in 0..count {
        let t0 = Instant::now();
        client.connect(server.id(), &addrs).await.unwrap();
        let t1 = Instant::now();
        identified(&mut events, server.id()).await;
        let t2 = Instant::now();
        client.disconnect(server.id()).await;
        phases[0] += t1 - t0;
        phases[1] += t2 - t1;
        phases[2] += t2.elapsed();
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("PHASES").is_some() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / count as f64;
        println!(
            "  strata {}: connect {:.3} ms, then identify {:.3} ms, then close {:.3} ms",
            stack.name(),
            ms(phases[0]),
            ms(phases[1]),
            ms(phases[2])
        );
    }
    close(client, server).await;
    rate
}

async fn close(a: Host, b: Host) {
    a.close().await;
    b.close().await;
}

#[derive(NetworkBehaviour)]
struct Node {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

fn node(key: &libp2p::identity::Keypair) -> Node {
    Node {
        identify: identify::Behaviour::new(identify::Config::new(
            "ipfs/0.1.0".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
    }
}

async fn libp2p_rate(stack: Stack, count: usize) -> f64 {
    let mut server = libp2p_swarm(stack, node);
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
    let mut client = libp2p_swarm(stack, node);
    let started = Instant::now();
    for _ in 0..count {
        client.dial(listening.clone()).unwrap();
        // Identify's answer from the listener, then the connection closed and gone.
        let mut identified = false;
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received {
                    peer_id,
                    ..
                })) if peer_id == server_peer => {
                    identified = true;
                    let _ = client.disconnect_peer_id(server_peer);
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } if peer_id == server_peer => {
                    assert!(identified, "closed before identify: {cause:?}");
                    break;
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    server_task.abort();
    rate
}

fn best(runs: &[f64]) -> f64 {
    runs.iter().copied().fold(0.0, f64::max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: stay quick.
    let bench = std::env::args().any(|a| a == "--bench");
    let (count, runs) = if bench { (conns(), RUNS) } else { (10, 1) };
    println!("connections per second to identify, {count} sequential dials, best of {runs}:");
    println!(
        "{:<16} {:>10} {:>18} {:>7}",
        "stack", "Strata", "rust-libp2p 0.57", "ratio"
    );
    let strata_only = std::env::var("ONLY").is_ok_and(|v| v == "strata");
    for stack in Stack::selected() {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(strata_rate(stack, count).await);
            if !strata_only {
                theirs.push(libp2p_rate(stack, count).await);
            }
        }
        let (ours, theirs) = (best(&ours), best(&theirs));
        println!(
            "{:<16} {:>8.0}/s {:>16.0}/s {:>6.2}x",
            stack.name(),
            ours,
            theirs,
            ours / theirs
        );
    }
}
