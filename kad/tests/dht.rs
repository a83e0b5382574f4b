//! The DHT on real hosts over TCP on loopback: lookups, records, providers, modes,
//! validators, and a network of 50 nodes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{close, config, join, network, network_with, node, node_with, LIMIT};
use strata_core::PeerId;
use strata_kad::proto::{Message, MessageType, Record};
use strata_kad::rpc::{read_message, write_message};
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

/// Values are versions: the greatest is the best.
struct Newest;

impl strata_kad::Validator for Newest {
    fn validate(&self, _key: &[u8], value: &[u8]) -> Result<(), String> {
        if value.is_empty() {
            return Err("empty".into());
        }
        Ok(())
    }
    fn select(&self, _key: &[u8], values: &[&[u8]]) -> usize {
        (0..values.len()).max_by_key(|&i| values[i]).unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_value_selects_the_best_record_and_fixes_up_outdated_peers() {
    let versioned = || {
        let mut c = config();
        c.validators.insert("v", Newest);
        c
    };
    let nodes = network_with(2000, 8, versioned).await;
    // Version 1 everywhere, then version 2 at two nodes only (stored directly, as a
    // partial update would leave it).
    timeout(LIMIT, nodes[0].kad.put_value(b"/v/doc", b"1".to_vec()))
        .await
        .unwrap()
        .unwrap();
    let holders_of_1: Vec<usize> = (0..8)
        .filter(|&i| nodes[i].kad.local_value(b"/v/doc").as_deref() == Some(&b"1"[..]))
        .collect();
    assert!(holders_of_1.len() >= 6);
    let (writer, _) = common::host_on(2050, "127.0.40.1").await;
    for &i in &holders_of_1[..2] {
        writer.peerstore().add_addrs(
            nodes[i].id(),
            std::slice::from_ref(&nodes[i].addr),
            Duration::from_secs(60),
        );
        let mut s = writer
            .new_stream(nodes[i].id(), &[strata_kad::DEFAULT_PROTOCOL])
            .await
            .unwrap();
        let mut put = Message::request(MessageType::PutValue, b"/v/doc".to_vec());
        put.record = Some(Record {
            key: b"/v/doc".to_vec(),
            value: b"2".to_vec(),
            time_received: String::new(),
        });
        write_message(&mut s, &put).await.unwrap();
        assert!(read_message(&mut s, 1 << 20).await.unwrap().is_some());
        assert_eq!(nodes[i].kad.local_value(b"/v/doc").unwrap(), b"2");
    }
    let still_1 = (0..8)
        .filter(|&i| nodes[i].kad.local_value(b"/v/doc").as_deref() == Some(&b"1"[..]))
        .count();
    assert!(still_1 >= 4);
    // A lower version is refused where a higher one is stored.
    let newer = holders_of_1[0];
    assert!(matches!(
        nodes[newer].kad.put_value(b"/v/doc", b"0".to_vec()).await,
        Err(KadError::Record(RecordError::Outdated))
    ));
    // Asking for every answer: the best wins, and the peers that answered with version
    // 1 are sent version 2.
    let asker = (0..8).find(|i| !holders_of_1[..2].contains(i)).unwrap();
    let got = timeout(LIMIT, nodes[asker].kad.get_value_quorum(b"/v/doc", 8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"2");
    timeout(LIMIT, async {
        loop {
            let outdated = holders_of_1
                .iter()
                .filter(|&&i| i != asker)
                .filter(|&&i| nodes[i].kad.local_value(b"/v/doc").as_deref() != Some(&b"2"[..]))
                .count();
            if outdated == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("outdated peers were not fixed up");
    writer.close().await;
    close(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_filter_decides_what_is_kept_and_announced() {
    // Addresses on 127.0.99.0/24 stand for private ones here: dropped.
    let filtered = || {
        let mut c = config();
        c.address_filter = std::sync::Arc::new(|a: &strata_core::Multiaddr| {
            !a.to_string().starts_with("/ip4/127.0.99.")
        });
        c
    };
    let nodes = network_with(2100, 5, filtered).await;
    let hidden = common::node_at_with(2150, "127.0.99.1", filtered()).await;
    hidden
        .kad
        .add_address(nodes[0].id(), std::slice::from_ref(&nodes[0].addr));
    timeout(LIMIT, hidden.kad.bootstrap())
        .await
        .unwrap()
        .unwrap();
    timeout(LIMIT, hidden.kad.provide(b"filtered"))
        .await
        .unwrap()
        .unwrap();
    // The others keep each other's addresses, and the hidden node's none.
    for n in &nodes {
        for p in n.kad.routing_table() {
            if p.id == hidden.id() {
                assert!(p.addrs.is_empty(), "{:?}", p.addrs);
            } else {
                assert!(!p.addrs.is_empty());
            }
        }
    }
    assert!(nodes
        .iter()
        .any(|n| n.kad.routing_table().iter().any(|p| p.id == hidden.id())));
    // Its provider record announces none (it filters its own too).
    let found = timeout(LIMIT, nodes[3].kad.find_providers(b"filtered", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found[0].id, hidden.id());
    assert!(found[0].addrs.is_empty(), "{:?}", found[0].addrs);
    let mut all = nodes;
    all.push(hidden);
    close(all).await;
}
