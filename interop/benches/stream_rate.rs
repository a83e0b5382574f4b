//! Throughput of one stream between two nodes, Strata beside rust-libp2p 0.57 in one run,
//! over TCP+TLS+yamux, TCP+Noise+yamux and QUIC on loopback, each with its defaults. The
//! dialer opens a stream and writes the bytes in 256 KiB writes; the listener's handler
//! reads them to the end. The rate runs from the first write until the listener has read
//! the last byte; the best of three.
//!
//! Run: `cargo bench -p strata-interop --bench stream_rate` (MIB=N sets the MiB per run,
//! 256 by default; STACK=tls|noise|quic runs one stack).

use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::StreamProtocol;
use strata_core::Protocol;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

mod common;
use common::{libp2p_swarm, strata_builder, Stack};

const PROTOCOL: &str = "/strata/bench/1.0.0";
const CHUNK: usize = 256 * 1024;
const RUNS: usize = 3;

fn total() -> usize {
    let mib: usize = std::env::var("MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    mib << 20
}

fn mib_per_sec(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
}

async fn strata_rate(stack: Stack, total: usize) -> f64 {
    let (server, _) = strata_builder(stack)
        .listen_on(stack.listen_addr())
        .build()
        .await
        .unwrap();
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, Instant)>(1);
    server.set_stream_handler(PROTOCOL, move |mut s| {
        let done = done_tx.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            let _ = done.send((got, Instant::now())).await;
        }
    });
    let (client, _) = strata_builder(stack).build().await.unwrap();
    client.connect(server.id(), &server.addrs()).await.unwrap();
    let mut stream = client.new_stream(server.id(), &[PROTOCOL]).await.unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        stream.write_all(&chunk).await.unwrap();
        sent += CHUNK;
    }
    stream.shutdown().await.unwrap();
    let (got, ended) = done_rx.recv().await.unwrap();
    assert_eq!(got, total);
    client.close().await;
    server.close().await;
    mib_per_sec(total, ended - started)
}

async fn libp2p_rate(stack: Stack, total: usize) -> f64 {
    let protocol = StreamProtocol::new(PROTOCOL);
    let mut server = libp2p_swarm(stack, |_| libp2p_stream::Behaviour::new());
    let mut incoming = server
        .behaviour()
        .new_control()
        .accept(protocol.clone())
        .unwrap();
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
    let (done_tx, done_rx) = oneshot::channel::<(usize, Instant)>();
    let reader = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let _ = done_tx.send((got, Instant::now()));
    });

    let mut client = libp2p_swarm(stack, |_| libp2p_stream::Behaviour::new());
    let mut control = client.behaviour().new_control();
    client
        .dial(listening.with(Protocol::P2p(server_peer)))
        .unwrap();
    let (connected_tx, connected_rx) = oneshot::channel();
    let client_task = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
                if let Some(tx) = connected_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    connected_rx.await.unwrap();
    let mut stream = control.open_stream(server_peer, protocol).await.unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        stream.write_all(&chunk).await.unwrap();
        sent += CHUNK;
    }
    stream.close().await.unwrap();
    let (got, ended) = done_rx.await.unwrap();
    assert_eq!(got, total);
    reader.await.unwrap();
    client_task.abort();
    server_task.abort();
    mib_per_sec(total, ended - started)
}

fn best(runs: &[f64]) -> f64 {
    runs.iter().copied().fold(0.0, f64::max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: stay quick.
    let bench = std::env::args().any(|a| a == "--bench");
    let (total, runs) = if bench { (total(), RUNS) } else { (4 << 20, 1) };
    println!("one stream, {} MiB, best of {runs} (MiB/s):", total >> 20);
    println!(
        "{:<16} {:>10} {:>18} {:>7}",
        "stack", "Strata", "rust-libp2p 0.57", "ratio"
    );
    for stack in Stack::selected() {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ours.push(strata_rate(stack, total).await);
            theirs.push(libp2p_rate(stack, total).await);
        }
        let (ours, theirs) = (best(&ours), best(&theirs));
        println!(
            "{:<16} {:>10.1} {:>18.1} {:>6.2}x",
            stack.name(),
            ours,
            theirs,
            ours / theirs
        );
    }
}
