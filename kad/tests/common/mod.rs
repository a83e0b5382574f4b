//! DHT nodes on real hosts: TCP on loopback, Noise or TLS, yamux.

#![allow(dead_code)]

use std::time::Duration;

use strata_core::{Multiaddr, PeerId};
use strata_host::{Host, HostBuilder};
use strata_kad::{AcceptAnyValidator, Kad, KadConfig};

/// Bound on any await that a bug could make hang.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A DHT node.
pub struct Node {
    pub host: Host,
    pub kad: Kad,
    pub addr: Multiaddr,
}

impl Node {
    pub fn id(&self) -> PeerId {
        self.host.id()
    }
}

/// The config the tests use: the `test` namespace accepts anything.
pub fn config() -> KadConfig {
    let mut c = KadConfig::default();
    c.validators.insert("test", AcceptAnyValidator);
    c
}

/// A host on `ip` (a loopback address) with identity `seed`.
pub async fn host_on(seed: u64, ip: &str) -> (Host, Multiaddr) {
    HostBuilder::tcp_on(seed, ip)
        .build_listening()
        .await
        .unwrap()
}

/// A DHT node with identity `seed` and `config`.
pub async fn node_with(seed: u64, config: KadConfig) -> Node {
    let (host, addr) = host_on(seed, "127.0.0.1").await;
    let kad = Kad::new(host.clone(), config);
    Node { host, kad, addr }
}

/// A server-mode DHT node with the tests' config.
pub async fn node(seed: u64) -> Node {
    node_with(seed, config()).await
}

/// A server-mode DHT node on loopback address `ip`.
pub async fn node_at(seed: u64, ip: &str) -> Node {
    node_at_with(seed, ip, config()).await
}

/// A DHT node on loopback address `ip` with `config`.
pub async fn node_at_with(seed: u64, ip: &str, config: KadConfig) -> Node {
    let (host, addr) = host_on(seed, ip).await;
    let kad = Kad::new(host.clone(), config);
    Node { host, kad, addr }
}

/// The loopback address of the `i`-th node of a network: each node has its own, as on a
/// real network (and the hosts' per-address admission limits see many sources).
pub fn loopback(i: usize) -> String {
    format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200)
}

/// `count` nodes (seeds from `first`), each on its own loopback address, each told about
/// the first one and bootstrapped in turn, then bootstrapped once more so that early
/// nodes learn of later ones.
pub async fn network(first: u64, count: usize) -> Vec<Node> {
    network_with(first, count, config).await
}

/// As [`network`], each node with `config()`.
pub async fn network_with(first: u64, count: usize, config: fn() -> KadConfig) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        nodes.push(node_at_with(first + i as u64, &loopback(i), config()).await);
    }
    join(&nodes).await;
    nodes
}

/// Bootstraps every node of `nodes` through the first.
pub async fn join(nodes: &[Node]) {
    let (boot_id, boot_addr) = (nodes[0].id(), nodes[0].addr.clone());
    for n in &nodes[1..] {
        n.kad.add_address(boot_id, std::slice::from_ref(&boot_addr));
        tokio::time::timeout(LIMIT, n.kad.bootstrap())
            .await
            .expect("bootstrap hung")
            .expect("bootstrap failed");
    }
    for n in nodes {
        let _ = tokio::time::timeout(LIMIT, n.kad.bootstrap()).await;
    }
}

/// Shuts every node down.
pub async fn close(nodes: Vec<Node>) {
    for n in nodes {
        n.host.shutdown(Duration::from_secs(5)).await;
    }
}
