//! Strata's DHT against rust-libp2p's (libp2p-kad 0.49, libp2p 0.57) in one mixed DHT in
//! this process, over TCP with Noise and yamux on loopback: records put on one side and
//! got on the other, providers announced and found, and peers found, both ways; each
//! side's routing table holds the other's nodes.

use std::time::Duration;

use strata_core::PeerId;
use tokio::time::timeout;

#[path = "kadnode/mod.rs"]
mod kadnode;
use kadnode::{strata_node, RustKad};

const LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_dht_of_strata_and_rust_libp2p_nodes_works_both_ways() {
    // Six of each; every node on its own loopback address.
    let mut strata = Vec::new();
    for i in 0..6u64 {
        strata.push(strata_node(7000 + i, &format!("127.0.20.{}", i + 1)).await);
    }
    let mut rust = Vec::new();
    for i in 0..6u64 {
        rust.push(RustKad::start(7100 + i, &format!("127.0.21.{}", i + 1)).await);
    }
    // Everyone joins through the first Strata node, then once more to learn of the rest.
    let (boot, boot_addr) = (strata[0].0.id(), strata[0].2.clone());
    for _ in 0..2 {
        for (_, kad, _) in &strata[1..] {
            kad.add_address(boot, std::slice::from_ref(&boot_addr));
            timeout(LIMIT, kad.bootstrap()).await.unwrap().unwrap();
        }
        for r in &rust {
            r.add_address(boot, boot_addr.clone());
            timeout(LIMIT, r.bootstrap()).await.unwrap().unwrap();
        }
    }
    timeout(LIMIT, strata[0].1.bootstrap())
        .await
        .unwrap()
        .unwrap();

    // Each side's tables hold nodes of the other.
    let rust_ids: Vec<PeerId> = rust.iter().map(|r| r.peer).collect();
    let strata_ids: Vec<PeerId> = strata.iter().map(|s| s.0.id()).collect();
    for (host, kad, _) in &strata {
        let table: Vec<PeerId> = kad.routing_table().iter().map(|p| p.id).collect();
        assert!(
            table.iter().any(|p| rust_ids.contains(p)),
            "{} knows no rust-libp2p node: {table:?}",
            host.id()
        );
    }
    for r in &rust {
        let table = r.table().await;
        assert!(
            table.iter().any(|p| strata_ids.contains(p)),
            "{} knows no Strata node",
            r.peer
        );
    }

    // Put on Strata, get on rust-libp2p; and the other way.
    timeout(
        LIMIT,
        strata[2]
            .1
            .put_value(b"/test/from-strata", b"strata value".to_vec()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        rust[4].get(b"/test/from-strata").await.unwrap(),
        b"strata value"
    );
    rust[1]
        .put(b"/test/from-rust", b"rust value")
        .await
        .unwrap();
    assert_eq!(
        timeout(LIMIT, strata[5].1.get_value(b"/test/from-rust"))
            .await
            .unwrap()
            .unwrap(),
        b"rust value"
    );

    // Provide on one side, find the provider on the other, both ways. The keys are CIDs'
    // multihashes, as go and js announce them.
    let k1 =
        strata_kad::provider_key("bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy")
            .unwrap();
    timeout(LIMIT, strata[3].1.provide(&k1))
        .await
        .unwrap()
        .unwrap();
    let found = rust[2].providers(&k1).await.unwrap();
    assert!(found.contains(&strata_ids[3]), "{found:?}");

    let k2 = strata_kad::provider_key("QmWATWQ7fVPP2EFGu71UkfnqhYXDYH566qy47CnJDgvs8u").unwrap();
    rust[5].provide(&k2).await.unwrap();
    let found = timeout(LIMIT, strata[1].1.find_providers(&k2, 3))
        .await
        .unwrap()
        .unwrap();
    let from_rust = found
        .iter()
        .find(|p| p.id == rust_ids[5])
        .expect("the rust-libp2p provider was not found");
    assert!(
        from_rust.addrs.contains(&rust[5].addr),
        "{:?}",
        from_rust.addrs
    );

    // Find a rust-libp2p node from Strata, and a Strata node from rust-libp2p, neither
    // connected to the other first.
    let (asker, _, _) = &strata[4];
    asker.disconnect(rust_ids[3]).await;
    asker.peerstore().clear_addrs(&rust_ids[3]);
    let info = timeout(LIMIT, strata[4].1.find_peer(rust_ids[3]))
        .await
        .unwrap()
        .unwrap();
    assert!(info.addrs.contains(&rust[3].addr), "{:?}", info.addrs);
    let closest = rust[0].closest(&strata_ids[5].to_bytes()).await.unwrap();
    let (_, addrs) = closest
        .iter()
        .find(|(p, _)| *p == strata_ids[5])
        .expect("rust-libp2p did not find the Strata node");
    // rust-libp2p adds /p2p/<id> to the addresses it hands out.
    let expected = strata[5].2.clone().with_p2p(strata_ids[5]).unwrap();
    assert!(addrs.contains(&expected), "{addrs:?}");

    for (host, _, _) in strata {
        host.shutdown(Duration::from_secs(5)).await;
    }
}
