//! `close()` with 200 connections and 2,000 open streams returns promptly and leaves no
//! task running and no socket open. In its own test binary so that no other test opens
//! descriptors or spawns tasks while this one counts them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use strata_swarm::SwarmConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_200_connections_and_2000_streams() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let fds_before = open_fds();
    let tasks_before = metrics.num_alive_tasks();

    let cfg = SwarmConfig::default();
    let server = swarm_with(300, Kind::Tcp, cfg.clone());
    // Handlers hold their streams open until the swarm closes them.
    server.set_stream_handler(Arc::new(|mut s, _c| {
        async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        .boxed()
    }));
    let addr = listen(&server, Kind::Tcp).await;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for seed in 0..20 {
        let c = swarm_with(301 + seed, Kind::Tcp, cfg.clone());
        for _ in 0..10 {
            let conn = t(c.dial_addr(addr.clone())).await.unwrap();
            for _ in 0..10 {
                let mut s = t(conn.new_stream()).await.unwrap();
                s.write_all(b"x").await.unwrap();
                streams.push(s);
            }
        }
        clients.push(c);
    }
    assert_eq!(streams.len(), 2000);
    t(async {
        while server.stream_count() < 2000 || server.conns().len() < 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(open_fds() >= fds_before + 400);

    let start = Instant::now();
    t(server.close()).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "server close took {took:?}");
    assert!(server.conns().is_empty());
    for c in &clients {
        t(c.close()).await;
    }
    drop(streams);
    drop(clients);
    drop(server);

    // The yamux driver of each connection is the muxer's own task (not the swarm's): it
    // has announced the close before close() returned and exits right after. Wait for
    // the count to settle, bounded.
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if open_fds() <= fds_before && metrics.num_alive_tasks() <= tasks_before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "fds {} (before {fds_before}), tasks {} (before {tasks_before})",
        open_fds(),
        metrics.num_alive_tasks()
    );
}
