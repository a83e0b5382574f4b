//! GossipSub interop: Strata and rust-libp2p 0.57 (libp2p-gossipsub 0.50) nodes in one
//! mesh, in this process, over TCP with Noise and yamux on loopback.

mod gossipnode;

use std::collections::HashMap;
use std::time::Duration;

use gossipnode::{Received, RustGossip};
use strata_core::{Multiaddr, PeerId};
use strata_host::{Host, HostBuilder};
use strata_pubsub::{rust_libp2p_message_id, Gossipsub, GossipsubConfig, Subscription};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "interop";

fn loopback(i: usize) -> String {
    format!("127.0.3.{}", 1 + i)
}

async fn strata_node(seed: u64, ip: &str, config: GossipsubConfig) -> (Host, Gossipsub, Multiaddr) {
    let (host, addr) = HostBuilder::tcp_on(seed, ip)
        .build_listening()
        .await
        .unwrap();
    let pubsub = Gossipsub::new(host.clone(), config);
    (host, pubsub, addr)
}

/// Strata's config for a mesh with rust-libp2p nodes: their message IDs.
fn strata_config() -> GossipsubConfig {
    GossipsubConfig {
        message_id: std::sync::Arc::new(rust_libp2p_message_id),
        ..GossipsubConfig::default()
    }
}

/// Waits until `cond` holds, checking every 20 ms, within `LIMIT`.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message, by data, exactly once; nothing more within a grace period after.
async fn strata_gets(sub: &mut Subscription, want: &[Vec<u8>], me: PeerId) {
    let mut got: HashMap<Vec<u8>, usize> = HashMap::new();
    while got.len() < want.len() {
        let m = tokio::time::timeout(LIMIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{me}: got {} of {}", got.len(), want.len()))
            .unwrap();
        *got.entry(m.data.to_vec()).or_default() += 1;
    }
    for w in want {
        assert_eq!(
            got.get(w),
            Some(&1),
            "{me}: {:?}",
            String::from_utf8_lossy(w)
        );
    }
}

async fn rust_gets(rx: &mut mpsc::UnboundedReceiver<Received>, want: &[Vec<u8>], me: PeerId) {
    let mut got: HashMap<Vec<u8>, usize> = HashMap::new();
    // rust-libp2p does not deliver its own messages; the others come once each.
    while got.values().sum::<usize>() < want.len() {
        let m = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{me}: got {} of {}", got.len(), want.len()))
            .unwrap();
        assert_eq!(m.topic, TOPIC);
        *got.entry(m.data).or_default() += 1;
    }
    for w in want {
        assert_eq!(
            got.get(w),
            Some(&1),
            "{me}: {:?}",
            String::from_utf8_lossy(w)
        );
    }
}

/// Four Strata nodes (one speaking only `/meshsub/1.1.0`) and four rust-libp2p nodes in
/// one mesh: each side publishes, and every node gets every message of the others
/// exactly once, signed (StrictSign) and checked on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_and_rust_libp2p_share_one_mesh() {
    let mut strata = Vec::new();
    for i in 0..4 {
        let mut config = strata_config();
        if i == 3 {
            config.protocols = vec![strata_pubsub::MESHSUB_V11.to_owned()];
        }
        strata.push(strata_node(500 + i as u64, &loopback(i), config).await);
    }
    let mut rust = Vec::new();
    for i in 0..4 {
        rust.push(RustGossip::start(600 + i as u64, &loopback(4 + i), true).await);
    }
    let mut subs: Vec<Subscription> = strata.iter().map(|(_, p, _)| p.subscribe(TOPIC)).collect();
    for (r, _) in &rust {
        r.subscribe(TOPIC);
    }
    // A ring through both kinds, plus chords: every Strata node dials the rust node of
    // its index and the next Strata node; each rust node dials the next rust node.
    for i in 0..4 {
        let (host, _, _) = &strata[i];
        host.connect(rust[i].0.peer, std::slice::from_ref(&rust[i].0.addr))
            .await
            .unwrap();
        let (_, _, next) = &strata[(i + 1) % 4];
        host.connect(strata[(i + 1) % 4].0.id(), std::slice::from_ref(next))
            .await
            .unwrap();
        rust[i].0.dial(rust[(i + 1) % 4].0.addr.clone());
    }
    for (host, pubsub, _) in &strata {
        eventually(
            "a Strata node meshes with its rust-libp2p neighbour",
            || async { pubsub.mesh_peers(TOPIC).len() >= 2 },
        )
        .await;
        let _ = host;
    }
    for (r, _) in &rust {
        eventually("a rust-libp2p node meshes", || async {
            r.mesh(TOPIC).await.len() >= 2
        })
        .await;
    }
    // The 1.1-only node speaks 1.1 with everyone; the others 1.2 with each other.
    let only11 = &strata[3].1;
    let kinds: Vec<_> = only11.snapshot().peers.iter().map(|p| p.kind).collect();
    assert!(
        kinds
            .iter()
            .all(|k| *k == strata_pubsub::PeerKind::Gossipsub11),
        "{kinds:?}"
    );
    let kinds0: HashMap<PeerId, strata_pubsub::PeerKind> = strata[0]
        .1
        .snapshot()
        .peers
        .iter()
        .map(|p| (p.peer, p.kind))
        .collect();
    assert_eq!(
        kinds0.get(&strata[1].0.id()),
        Some(&strata_pubsub::PeerKind::Gossipsub12)
    );
    assert_eq!(
        kinds0.get(&rust[0].0.peer),
        Some(&strata_pubsub::PeerKind::Gossipsub12)
    );

    let mut all: Vec<Vec<u8>> = Vec::new();
    for (i, (_, pubsub, _)) in strata.iter().enumerate() {
        for k in 0..3 {
            let data = format!("strata{i}:{k}").into_bytes();
            pubsub.publish(TOPIC, data.clone()).await.unwrap();
            all.push(data);
        }
    }
    for (i, (r, _)) in rust.iter().enumerate() {
        for k in 0..3 {
            let data = format!("rust{i}:{k}").into_bytes();
            r.publish(TOPIC, data.clone()).await.unwrap();
            all.push(data);
        }
    }
    // Strata delivers its own messages to its own subscription (as go-libp2p does);
    // every node gets every message of the others once.
    for (i, sub) in subs.iter_mut().enumerate() {
        strata_gets(sub, &all, strata[i].0.id()).await;
    }
    for (i, (r, rx)) in rust.iter_mut().enumerate() {
        let others: Vec<Vec<u8>> = all
            .iter()
            .filter(|d| !d.starts_with(format!("rust{i}:").as_bytes()))
            .cloned()
            .collect();
        rust_gets(rx, &others, r.peer).await;
    }
    // The authors are the publishers, signatures checked on both sides.
    for (_, pubsub, _) in &strata {
        let stats = pubsub.stats();
        assert_eq!(stats.router.rejected, 0, "{stats:?}");
    }
    for (host, _, _) in strata {
        host.shutdown(Duration::from_secs(2)).await;
    }
}
