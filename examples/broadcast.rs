//! A small room: N hosts in one process connect in a mesh and broadcast to each other over
//! a message protocol (one long-lived stream per peer, framed messages, bounded queues).
//!
//! ```text
//! cargo run --example broadcast            # 5 hosts, 100 messages each
//! cargo run --example broadcast -- 8 500   # 8 hosts, 500 messages each
//! ```
//!
//! Each host prints what it received; the last line is exactly `delivered D of S`, where S
//! is how many messages should have arrived and D how many did. Scripts read that line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata::host::{MessageConfig, MessageHandler};
use strata::{Host, HostBuilder, PeerId};

type Error = Box<dyn std::error::Error + Send + Sync>;

const ROOM: &str = "/strata/example/room/1.0.0";

/// Counts what one host receives.
struct Inbox {
    received: Arc<AtomicU64>,
}

#[async_trait]
impl MessageHandler for Inbox {
    async fn received(&self, _peer: PeerId, _message: Bytes) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hosts: usize = args.first().map_or(Ok(5), |s| s.parse())?;
    let messages: u64 = args.get(1).map_or(Ok(100), |s| s.parse())?;
    if hosts < 2 {
        return Err("a room needs at least two hosts".into());
    }

    // The room: every host listens on loopback and serves the room's protocol.
    let mut room: Vec<(Host, Arc<AtomicU64>)> = Vec::new();
    for _ in 0..hosts {
        let (host, _) = HostBuilder::new()
            .no_quic()
            .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
            .build()
            .await?;
        let received = Arc::new(AtomicU64::new(0));
        let inbox = Inbox {
            received: received.clone(),
        };
        host.add_message_protocol(ROOM, MessageConfig::default(), Arc::new(inbox))?;
        room.push((host, received));
    }
    // A mesh: each host dials every host after it.
    for i in 0..hosts {
        for j in i + 1..hosts {
            let (a, b) = (&room[i].0, &room[j].0);
            a.connect(b.id(), &b.addrs()).await?;
        }
    }
    // Wait until every host has a stream to every other.
    for (host, _) in &room {
        while host.message_peers(ROOM).len() < hosts - 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Everyone broadcasts at once; send_to waits for room in each queue, so nothing is
    // dropped.
    let sends = room.iter().enumerate().map(|(i, (host, _))| async move {
        let peers = host.message_peers(ROOM);
        for k in 0..messages {
            let message = format!("message {k} from host {i}");
            for (peer, result) in host.send_to(&peers, ROOM, message.into_bytes()).await {
                if let Err(e) = result {
                    eprintln!("host {i}: sending to {peer} failed: {e}");
                }
            }
        }
    });
    futures::future::join_all(sends).await;

    let should = (hosts as u64) * (hosts as u64 - 1) * messages;
    let delivered = || {
        room.iter()
            .map(|(_, r)| r.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered() < should && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (i, (host, received)) in room.iter().enumerate() {
        println!(
            "host {i} ({}) received {} messages",
            host.id(),
            received.load(Ordering::Relaxed)
        );
    }
    for (host, _) in &room {
        host.close().await;
    }
    println!("delivered {} of {should}", delivered());
    Ok(())
}
