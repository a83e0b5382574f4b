//! Pubsub nodes on real hosts: TCP on loopback, Noise, yamux.

#![allow(dead_code)]

use std::time::Duration;

use strata_core::{Multiaddr, PeerId};
use strata_host::{Host, HostBuilder};
use strata_pubsub::{Gossipsub, GossipsubConfig, Message, Subscription};

/// Bound on any await that a bug could make hang.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A pubsub node.
pub struct Node {
    pub host: Host,
    pub pubsub: Gossipsub,
    pub addr: Multiaddr,
}

impl Node {
    pub fn id(&self) -> PeerId {
        self.host.id()
    }

    /// Connects to `other`.
    pub async fn connect(&self, other: &Node) {
        self.host
            .connect(other.id(), std::slice::from_ref(&other.addr))
            .await
            .expect("connect");
    }
}

/// The loopback address of the `i`-th node: each its own, as on a real network.
pub fn loopback(i: usize) -> String {
    format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200)
}

/// A host on `ip` with identity `seed`.
pub async fn host_on(seed: u64, ip: &str) -> (Host, Multiaddr) {
    HostBuilder::tcp_on(seed, ip)
        .build_listening()
        .await
        .unwrap()
}

/// A node with `config` on loopback address `ip`.
pub async fn node_at(seed: u64, ip: &str, config: GossipsubConfig) -> Node {
    let (host, addr) = host_on(seed, ip).await;
    let pubsub = Gossipsub::new(host.clone(), config);
    Node { host, pubsub, addr }
}

/// `count` nodes with `config()`, seeds from `first`, each on its own address.
pub async fn nodes(first: u64, count: usize, config: fn() -> GossipsubConfig) -> Vec<Node> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(node_at(first + i as u64, &loopback(i), config()).await);
    }
    out
}

/// Waits until `cond` holds, checking every 10 ms, at most `LIMIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next message of `sub`, within `LIMIT`.
pub async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(LIMIT, sub.next())
        .await
        .expect("no message in time")
        .expect("subscription ended")
}

/// Shuts every node down.
pub async fn close(nodes: Vec<Node>) {
    for n in nodes {
        n.host.shutdown(Duration::from_secs(5)).await;
    }
}
