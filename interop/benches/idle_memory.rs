//! Idle connection memory, side by side in one run: the RSS a listener adds per idle
//! connection, for 1,000 connections, Strata against rust-libp2p 0.57. Each listener runs
//! in its own child process (this binary, re-run with STRATA_BENCH_ROLE) so that its RSS
//! is its own; both speak TCP+Noise+yamux and serve identify and ping. The dialers are
//! 1,000 Strata hosts in this process, each with its own identity, which identify with
//! the listener and then stay idle.
//!
//! The Strata listener runs its default limits, except that 127.0.0.0/8 is allowlisted:
//! every dialer here comes from 127.0.0.1, and the per-address caps would (rightly)
//! refuse most of them.
//!
//! Run: `cargo bench -p strata-interop --bench idle_memory`. Target: Strata's RSS per
//! connection at most half of rust-libp2p's.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;
use strata_core::sys::{raise_fd_limit, rss_kib};

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, SwarmBuilder};
use strata_core::{Multiaddr, PeerId};
use strata_host::{Host, HostBuilder, Security};

const CONNS: usize = 1000;

async fn wait_for_stdin_close() {
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
}

async fn strata_listener() {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .security(vec![Security::Noise])
        .resource_limits(limits)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap();
    println!("{addr}/p2p/{}", host.id());
    wait_for_stdin_close().await;
    host.close().await;
}

#[derive(NetworkBehaviour)]
struct Node {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

async fn libp2p_listener() {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| Node {
            identify: identify::Behaviour::new(identify::Config::new(
                "ipfs/0.1.0".into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let peer = *swarm.local_peer_id();
    let stdin_closed = wait_for_stdin_close();
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            _ = &mut stdin_closed => return,
            event = swarm.select_next_some() => {
                if let SwarmEvent::NewListenAddr { address, .. } = event {
                    println!("{address}/p2p/{peer}");
                }
            }
        }
    }
}

async fn dialer() -> Host {
    HostBuilder::new()
        .no_quic()
        .security(vec![Security::Noise])
        .build()
        .await
        .unwrap()
        .0
}

/// Connects `n` fresh hosts to the listener and waits for the connections to settle.
async fn connect(n: usize, server: PeerId, addr: &Multiaddr) -> Vec<Host> {
    let mut hosts = Vec::with_capacity(n);
    for _ in 0..n {
        hosts.push(dialer().await);
    }
    let connects = hosts.iter().map(|h| {
        let addr = addr.clone();
        async move { h.connect(server, &[addr]).await.is_ok() }
    });
    let ok = futures::stream::iter(connects)
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, n, "every dialer connects");
    // Identify and the first pings run, then the connections are idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hosts
}

/// The listener's RSS growth per connection, in KiB.
async fn measure(role: &str) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env("STRATA_BENCH_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let full: Multiaddr = line.trim().parse().unwrap();
    let server = strata_core::addr::peer_id_of(&full).unwrap();
    let addr = strata_core::addr::without_peer_id(&full);
    // A warm-up, so that what both allocate once is in the baseline.
    let warm = connect(10, server, &addr).await;
    let before = rss_kib(Some(pid));
    let hosts = connect(CONNS, server, &addr).await;
    let after = rss_kib(Some(pid));
    for h in hosts.iter().chain(warm.iter()) {
        h.close().await;
    }
    drop(child.stdin.take());
    let _ = child.wait();
    println!("  {role}: {before} KiB before, {after} KiB with {CONNS} more idle connections");
    (after.saturating_sub(before)) as f64 / CONNS as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_fd_limit();
    match std::env::var("STRATA_BENCH_ROLE").as_deref() {
        Ok("strata") => return strata_listener().await,
        Ok("libp2p") => return libp2p_listener().await,
        _ => {}
    }
    println!("idle connection memory: {CONNS} connections, TCP+Noise+yamux, identify and ping");
    let strata = measure("strata").await;
    let libp2p = measure("libp2p").await;
    println!("| listener | RSS per idle connection |");
    println!("|---|---|");
    println!("| Strata | {strata:.1} KiB |");
    println!("| rust-libp2p 0.57 | {libp2p:.1} KiB |");
    println!(
        "Strata / rust-libp2p: {:.2} (target: at most 0.50)",
        strata / libp2p
    );
}
