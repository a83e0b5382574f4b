//! Idle connection memory, side by side in one run: the RSS a listener adds per idle
//! connection, for 1,000 connections, Strata against rust-libp2p 0.57, over TCP+Noise+
//! yamux, TCP+TLS+yamux and QUIC. Each listener runs in its own child process (this
//! binary, re-run with STRATA_BENCH_ROLE) so that its RSS is its own; both serve
//! identify and ping. The dialers are 1,000 Strata hosts in this process, each with its
//! own identity, which identify with the listener and then stay idle.
//!
//! The Strata listener runs its default limits, except that 127.0.0.0/8 is allowlisted:
//! every dialer here comes from 127.0.0.1, and the per-address caps would (rightly)
//! refuse most of them.
//!
//! Run: `cargo bench -p strata-interop --bench idle_memory` (`STACK=quic` and the like
//! pick stacks). Target: Strata's RSS per connection at most half of rust-libp2p's.

#[allow(dead_code)]
mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;
use strata_core::sys::{raise_fd_limit, rss_kib};

use common::{libp2p_swarm_idle, strata_builder, Stack};
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, ping};
use strata_core::{Multiaddr, PeerId};
use strata_host::Host;

const CONNS: usize = 1000;

async fn wait_for_stdin_close() {
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
}

async fn strata_listener(stack: Stack) {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let (host, addr) = strata_builder(stack)
        .resource_limits(limits)
        .listen_on(stack.listen_addr())
        .build_listening()
        .await
        .unwrap();
    println!("{addr}/p2p/{}", host.id());
    if std::env::var_os("STRATA_BENCH_DEBUG").is_some() {
        let rcmgr = host.resource_manager().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let s = rcmgr.stat();
                eprintln!("STAT system {:?} transient {:?}", s.system, s.transient);
            }
        });
    }
    wait_for_stdin_close().await;
    host.close().await;
}

#[derive(NetworkBehaviour)]
struct Node {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

async fn libp2p_listener(stack: Stack) {
    let mut swarm = libp2p_swarm_idle(stack, Duration::from_secs(600), |key| Node {
        identify: identify::Behaviour::new(identify::Config::new(
            "ipfs/0.1.0".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
    });
    swarm.listen_on(stack.listen_addr()).unwrap();
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

async fn dialer(stack: Stack) -> Host {
    strata_builder(stack).build().await.unwrap().0
}

/// Connects `n` fresh hosts to the listener and waits for the connections to settle.
async fn connect(stack: Stack, n: usize, server: PeerId, addr: &Multiaddr) -> Vec<Host> {
    let mut hosts = Vec::with_capacity(n);
    for _ in 0..n {
        hosts.push(dialer(stack).await);
    }
    let connects = hosts.iter().map(|h| {
        let addr = addr.clone();
        async move {
            match h.connect(server, &[addr]).await {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("  a dial failed: {e}");
                    false
                }
            }
        }
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
async fn measure(stack: Stack, side: &str) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env("STRATA_BENCH_ROLE", format!("{side}-{}", stack.short()))
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
    let warm = connect(stack, 10, server, &addr).await;
    let before = rss_kib(Some(pid));
    let hosts = connect(stack, CONNS, server, &addr).await;
    let after = rss_kib(Some(pid));
    for h in hosts.iter().chain(warm.iter()) {
        h.close().await;
    }
    drop(child.stdin.take());
    let _ = child.wait();
    println!(
        "  {side} {}: {before} KiB before, {after} KiB with {CONNS} more idle connections",
        stack.name()
    );
    (after.saturating_sub(before)) as f64 / CONNS as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    raise_fd_limit();
    if let Ok(role) = std::env::var("STRATA_BENCH_ROLE") {
        let (side, stack) = role.split_once('-').expect("side-stack");
        let stack = Stack::ALL
            .into_iter()
            .find(|s| s.short() == stack)
            .expect("a stack");
        return match side {
            "strata" => strata_listener(stack).await,
            _ => libp2p_listener(stack).await,
        };
    }
    println!("idle connection memory: {CONNS} connections, identify and ping");
    let mut rows = Vec::new();
    for stack in Stack::selected() {
        let strata = measure(stack, "strata").await;
        let libp2p = measure(stack, "libp2p").await;
        rows.push((stack, strata, libp2p));
    }
    println!("| stack | Strata | rust-libp2p 0.57 | Strata / rust-libp2p |");
    println!("|---|---|---|---|");
    for (stack, strata, libp2p) in rows {
        println!(
            "| {} | {strata:.1} KiB | {libp2p:.1} KiB | {:.2} (target: at most 0.50) |",
            stack.name(),
            strata / libp2p
        );
    }
}
