//! `shutdown(2 s)` with 1,000 connections carrying 10,000 streams, a third of them to
//! peers that froze with data in flight, returns within 2.1 s and leaves no task and no
//! socket of the swarm behind. The peers run on runtimes of their own (one of which is
//! frozen: its thread stops), so that the swarm's runtime holds nothing but the swarm,
//! and the swarm's sockets are told from the peers' by their local port.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use strata_core::{Multiaddr, Stream};
use strata_swarm::{Conn, Swarm, SwarmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNS: usize = 1000;
const FROZEN: usize = CONNS / 3;
const STREAMS_PER_CONN: usize = 10;
/// What a stream may carry before its window is used up: a frozen peer never grants more.
const WINDOW: u64 = 256 * 1024;

/// The inodes of this process's open sockets.
fn open_socket_inodes() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Of this process's open sockets, those whose local port is `port`: the swarm's own
/// (its listener and every connection it accepted).
fn sockets_on_port(port: u16) -> usize {
    let ours = open_socket_inodes();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode = cols.get(9).and_then(|i| i.parse::<u64>().ok());
            local_port == Some(port) && inode.is_some_and(|i| ours.contains(&i))
        })
        .count()
}

/// A runtime of its own on its own thread, for the peers.
fn peer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens `STREAMS_PER_CONN` streams on `conn`; on a frozen connection the first asks the
/// server to send until its window is full.
async fn open_streams(conn: &Conn, frozen: bool) -> Vec<Stream> {
    let mut streams = Vec::new();
    for i in 0..STREAMS_PER_CONN {
        let mut s = conn.new_stream().await.unwrap();
        let ask = if frozen && i == 0 { b"F" } else { b"I" };
        s.write_all(ask).await.unwrap();
        streams.push(s);
    }
    streams
}

#[test]
fn shutdown_with_frozen_peers_returns_by_its_deadline_and_leaves_nothing() {
    let live_rt = peer_runtime();
    let frozen_rt = peer_runtime();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let metrics = server_rt.metrics();
    let tasks_before = metrics.num_alive_tasks();

    // The server: handlers that read, or (asked with "F") write until they block.
    let (server, addr): (Swarm, Multiaddr) = server_rt.block_on(async {
        let server = swarm_with(700, Kind::Tcp, SwarmConfig::default());
        let written = written.clone();
        server.set_stream_handler(Arc::new(move |mut s, _c| {
            let written = written.clone();
            async move {
                let mut ask = [0u8; 1];
                if s.read_exact(&mut ask).await.is_err() {
                    return;
                }
                if &ask == b"F" {
                    let chunk = vec![7u8; 64 * 1024];
                    while s.write_all(&chunk).await.is_ok() {
                        written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                } else {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
            .boxed()
        }));
        let addr = listen(&server, Kind::Tcp).await;
        (server, addr)
    });
    let port = strata_core::addr::tcp_socket_addr(&addr).unwrap().port();

    // The peers: a frozen third, and the rest live. Each side opens its connections and
    // streams on its own runtime.
    let connect = |rt: &tokio::runtime::Runtime, seed: u64, count: usize, frozen: bool| {
        let addr = addr.clone();
        rt.block_on(async move {
            let client = swarm(seed, Kind::Tcp);
            let mut held = Vec::new();
            for _ in 0..count {
                let conn = t(client.dial_addr(addr.clone())).await.unwrap();
                held.push((conn.clone(), open_streams(&conn, frozen).await));
            }
            (client, held)
        })
    };
    let (frozen_client, frozen_held) = connect(&frozen_rt, 701, FROZEN, true);
    let (live_client, live_held) = connect(&live_rt, 702, CONNS - FROZEN, false);

    // Freeze the frozen peers' runtime: its only worker blocks until released.
    let (freeze_tx, freeze_rx) = std::sync::mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<()>();
    frozen_rt.spawn(async move {
        frozen_tx.send(()).unwrap();
        let _ = freeze_rx.recv();
    });
    frozen_rx.recv().unwrap();

    server_rt.block_on(async {
        // Every stream is open, and every frozen stream has filled its window.
        t(async {
            let mut total = server.stream_count_watch();
            let _ = total.wait_for(|n| *n >= CONNS * STREAMS_PER_CONN).await;
        })
        .await;
        t(async {
            while written.load(Ordering::Relaxed) < FROZEN as u64 * WINDOW {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(server.conns().len(), CONNS);
        assert!(sockets_on_port(port) > CONNS);

        let start = Instant::now();
        server.shutdown(Duration::from_secs(2)).await;
        let took = start.elapsed();
        eprintln!("shutdown(2 s) with {CONNS} connections returned after {took:?}");
        assert!(
            took <= Duration::from_millis(2100),
            "shutdown(2 s) took {took:?}"
        );
        // The streams never finish: the graceful phase lasts until the forced one, which
        // starts at most 50 ms before the deadline.
        assert!(took >= Duration::from_millis(1950), "ended early: {took:?}");
    });
    // Nothing of the swarm is left: no task on its runtime, no socket on its port. A task
    // leaves the runtime's count a moment after its future is dropped (which is what the
    // shutdown waits for); a leaked one never does.
    let settle = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() != tasks_before && Instant::now() < settle {
        std::thread::yield_now();
    }
    assert_eq!(metrics.num_alive_tasks(), tasks_before);
    assert_eq!(sockets_on_port(port), 0);

    freeze_tx.send(()).unwrap();
    drop((frozen_held, live_held));
    frozen_rt.block_on(frozen_client.close());
    live_rt.block_on(live_client.close());
}
