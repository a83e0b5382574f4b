//! The DHT on real hosts over TCP on loopback: lookups, records, providers, modes,
//! validators, and a network of 50 nodes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{close, config, join, network, network_with, node, node_with, LIMIT};
use strata_core::PeerId;
use strata_kad::{public_key_record, KadError, KadKey, Mode, RecordError, RoutingEvent};
use tokio::time::timeout;

/// The `n` peers of `all` closest to `key`'s position, closest first.
fn true_closest(all: &[PeerId], key: &[u8], n: usize) -> Vec<PeerId> {
    let target = KadKey::from_bytes(key);
    let mut sorted = all.to_vec();
    sorted.sort_by_key(|p| KadKey::from_peer(p).distance(&target));
    sorted.truncate(n);
    sorted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_providers_and_peers_are_found_across_a_small_network() {
    let nodes = network(100, 12).await;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.id()).collect();

    // The closest peers found are the true closest (everyone but the asker is a server).
    let key = b"closest please";
    let found: Vec<PeerId> = timeout(LIMIT, nodes[3].kad.get_closest_peers(key))
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != ids[3]).collect();
    assert_eq!(found, true_closest(&others, key, 11));

    // A value put on one node is got on another.
    timeout(LIMIT, nodes[2].kad.put_value(b"/test/a", b"hello".to_vec()))
        .await
        .unwrap()
        .unwrap();
    let got = timeout(LIMIT, nodes[9].kad.get_value(b"/test/a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"hello");
    // It is stored at the closest peers, not only at the putter.
    let holders = nodes
        .iter()
        .filter(|n| n.kad.store_stats().records == 1)
        .count();
    assert!(holders >= 5, "stored at {holders} nodes");

    // Providers.
    let cid_key =
        strata_kad::provider_key("QmWATWQ7fVPP2EFGu71UkfnqhYXDYH566qy47CnJDgvs8u").unwrap();
    timeout(LIMIT, nodes[5].kad.provide(&cid_key))
        .await
        .unwrap()
        .unwrap();
    let providers = timeout(LIMIT, nodes[11].kad.find_providers(&cid_key, 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].id, ids[5]);
    assert!(providers[0].addrs.contains(&nodes[5].addr));

    // A peer's addresses, found through others (not connected to it first).
    nodes[8].host.disconnect(ids[1]).await;
    nodes[8].host.peerstore().clear_addrs(&ids[1]);
    let info = timeout(LIMIT, nodes[8].kad.find_peer(ids[1]))
        .await
        .unwrap()
        .unwrap();
    assert!(info.addrs.contains(&nodes[1].addr), "{:?}", info.addrs);

    // What is not there is a typed error.
    assert!(matches!(
        timeout(LIMIT, nodes[4].kad.get_value(b"/test/missing"))
            .await
            .unwrap(),
        Err(KadError::NotFound)
    ));
    let nobody = strata_core::identity::keypair_from_seed(999)
        .public()
        .to_peer_id();
    assert!(matches!(
        timeout(LIMIT, nodes[4].kad.find_peer(nobody))
            .await
            .unwrap(),
        Err(KadError::NotFound)
    ));
    assert!(matches!(
        timeout(LIMIT, nodes[4].kad.find_providers(b"no such key", 5))
            .await
            .unwrap(),
        Err(KadError::NotFound)
    ));
    close(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_validated_by_namespace() {
    let nodes = network(200, 6).await;
    // A namespace with no validator is refused before anything is sent.
    assert!(matches!(
        nodes[1].kad.put_value(b"/other/x", b"v".to_vec()).await,
        Err(KadError::Record(RecordError::UnknownNamespace(_)))
    ));
    assert!(matches!(
        nodes[1].kad.put_value(b"plain", b"v".to_vec()).await,
        Err(KadError::Record(RecordError::NoNamespace))
    ));
    // A /pk/ record must hash to its key.
    let key = nodes[2].host.keypair().public();
    let (pk_key, pk_value) = public_key_record(&key);
    timeout(LIMIT, nodes[2].kad.put_value(&pk_key, pk_value.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        timeout(LIMIT, nodes[4].kad.get_value(&pk_key))
            .await
            .unwrap()
            .unwrap(),
        pk_value
    );
    let (_, wrong) = public_key_record(&nodes[3].host.keypair().public());
    assert!(matches!(
        nodes[2].kad.put_value(&pk_key, wrong).await,
        Err(KadError::Record(RecordError::Invalid(_)))
    ));
    close(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_table_has_no_peers_to_ask() {
    let lonely = node(300).await;
    assert!(matches!(
        lonely.kad.bootstrap().await,
        Err(KadError::NoPeers)
    ));
    assert!(matches!(
        lonely.kad.get_closest_peers(b"x").await,
        Err(KadError::NoPeers)
    ));
    // Its own record is found locally, with no peers at all.
    lonely.kad.put_value(b"/test/own", b"v".to_vec()).await.ok();
    assert_eq!(lonely.kad.get_value(b"/test/own").await.unwrap(), b"v");
    close(vec![lonely]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_not_announced_and_a_server_switch_is_heard() {
    let nodes = network(400, 4).await;
    let mut cfg = config();
    cfg.mode = Mode::Client;
    let client = node_with(410, cfg).await;
    assert!(!client
        .host
        .protocols()
        .contains(&strata_kad::DEFAULT_PROTOCOL.to_string()));
    client
        .kad
        .add_address(nodes[0].id(), std::slice::from_ref(&nodes[0].addr));
    timeout(LIMIT, client.kad.bootstrap())
        .await
        .unwrap()
        .unwrap();
    // The client knows the network; the network does not keep the client.
    assert_eq!(client.kad.routing_table().len(), 4);
    for n in &nodes {
        assert!(!n.kad.routing_table().iter().any(|p| p.id == client.id()));
    }
    // Switched to server, it is announced through identify push and taken in.
    let mut added = nodes[0].kad.routing_events();
    client.kad.set_mode(Mode::Server);
    timeout(LIMIT, async {
        loop {
            if let Ok(RoutingEvent::PeerAdded(p)) = added.recv().await {
                if p == client.id() {
                    break;
                }
            }
        }
    })
    .await
    .expect("the new server never entered the table");
    let mut all = nodes;
    all.push(client);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_fill_their_tables_find_everything_and_replace_a_node_that_leaves() {
    // Every table peer is checked for liveness at each refresh.
    let eager = || {
        let mut c = config();
        c.liveness_interval = Duration::ZERO;
        c
    };
    let mut nodes = network_with(1000, 50, eager).await;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.id()).collect();
    // Every table fills: with k = 20 a node of 50 holds about 40.
    let mut in_some_table = HashSet::new();
    for n in &nodes {
        let table = n.kad.routing_table();
        assert!(table.len() >= 25, "{} holds {}", n.id(), table.len());
        in_some_table.extend(table.iter().map(|p| p.id));
    }
    assert_eq!(in_some_table.len(), 50);

    // Every query succeeds, from every tenth node.
    for i in 0..10usize {
        let (from, to) = (&nodes[(i * 7) % 50], &nodes[(i * 13 + 5) % 50]);
        let key = format!("/test/k{i}");
        timeout(LIMIT, from.kad.put_value(key.as_bytes(), vec![i as u8]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            timeout(LIMIT, to.kad.get_value(key.as_bytes()))
                .await
                .unwrap()
                .unwrap(),
            vec![i as u8]
        );
        let pkey = format!("content {i}");
        timeout(LIMIT, from.kad.provide(pkey.as_bytes()))
            .await
            .unwrap()
            .unwrap();
        let providers = timeout(LIMIT, to.kad.find_providers(pkey.as_bytes(), 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(providers[0].id, from.id());
        let target = ids[(i * 31 + 17) % 50];
        if target != to.id() {
            let info = timeout(LIMIT, to.kad.find_peer(target))
                .await
                .unwrap()
                .unwrap();
            assert!(!info.addrs.is_empty());
        }
    }

    // A node leaves: every table that held it drops it at its next refresh.
    let leaving = nodes.remove(17);
    let gone = leaving.id();
    let holders: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].kad.routing_table().iter().any(|p| p.id == gone))
        .collect();
    assert!(!holders.is_empty());
    let mut watchers: Vec<_> = holders
        .iter()
        .map(|&i| nodes[i].kad.routing_events())
        .collect();
    leaving.host.shutdown(Duration::from_secs(5)).await;
    for &i in &holders {
        let _ = timeout(LIMIT, nodes[i].kad.refresh_routing_table()).await;
    }
    for w in &mut watchers {
        timeout(LIMIT, async {
            loop {
                if let Ok(RoutingEvent::PeerRemoved(p)) = w.recv().await {
                    if p == gone {
                        break;
                    }
                }
            }
        })
        .await
        .expect("the departed node stayed in a table");
    }
    // Its place in full buckets is taken again once the holders look around.
    join(&nodes).await;
    for &i in &holders {
        let n = &nodes[i];
        assert!(!n.kad.routing_table().iter().any(|p| p.id == gone));
        let b = KadKey::from_peer(&n.id()).common_prefix_len(&KadKey::from_peer(&gone));
        let candidates = ids
            .iter()
            .filter(|p| **p != gone && **p != n.id())
            .filter(|p| KadKey::from_peer(&n.id()).common_prefix_len(&KadKey::from_peer(p)) == b)
            .count();
        let size = n.kad.bucket_sizes().get(b).copied().unwrap_or(0);
        assert_eq!(size, candidates.min(20), "bucket {b} of {}", n.id());
    }
    close(nodes).await;
}
