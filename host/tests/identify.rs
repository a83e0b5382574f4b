//! Identify and identify push over real yamux streams between upgraded connections.

mod common;

use common::{pair, streams, Sec, LIMIT};
use prost::Message as _;
use strata_core::identity::keypair_from_seed;
use strata_core::{Multiaddr, PeerId};
use strata_host::identify::{
    apply_to_peerstore, recv_identify, send_identify, Identify, IdentifyError, IdentifyInfo,
    IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, MAX_IDENTIFY_MSG_LEN,
};
use strata_host::peerstore::{
    Peerstore, PeerstoreError, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL,
};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

fn info_of(key: &strata_core::Keypair, observed: &Multiaddr) -> IdentifyInfo {
    IdentifyInfo {
        public_key: key.public(),
        protocol_version: "ipfs/0.1.0".into(),
        agent_version: "strata-test/1.2.3".into(),
        listen_addrs: vec![
            "/ip4/192.0.2.7/tcp/4001".parse().unwrap(),
            "/ip6/2001:db8::7/udp/4001/quic-v1".parse().unwrap(),
        ],
        observed_addr: Some(observed.clone()),
        protocols: vec![
            IDENTIFY_PROTOCOL.into(),
            IDENTIFY_PUSH_PROTOCOL.into(),
            "/ipfs/ping/1.0.0".into(),
        ],
    }
}

/// `/ipfs/id/1.0.0`: the peer that accepts the stream answers; every field arrives, over
/// both Noise and TLS.
#[tokio::test]
async fn identify_round_trip_all_fields() {
    for sec in [Sec::Noise, Sec::Tls] {
        let p = pair(1, 2, sec).await;
        let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
        let sent = info_of(&p.kb, p.b.remote_multiaddr());
        let (tx, rx) = tokio::join!(
            timeout(LIMIT, send_identify(&mut answerer, &sent)),
            timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer())),
        );
        tx.unwrap().unwrap();
        let got = rx.unwrap().unwrap();
        assert_eq!(got, sent, "{sec:?}");
        assert_eq!(got.observed_addr.as_ref(), Some(p.a.local_multiaddr()));
    }
}

/// `/ipfs/id/push/1.0.0`: the peer that opens the stream sends.
#[tokio::test]
async fn identify_push_round_trip() {
    let p = pair(3, 4, Sec::Noise).await;
    let (mut pusher, mut receiver) = streams(&p.a, &p.b, IDENTIFY_PUSH_PROTOCOL).await;
    let sent = info_of(&p.ka, p.a.remote_multiaddr());
    let (tx, rx) = tokio::join!(
        timeout(LIMIT, send_identify(&mut pusher, &sent)),
        timeout(LIMIT, recv_identify(&mut receiver, p.b.remote_peer())),
    );
    tx.unwrap().unwrap();
    assert_eq!(rx.unwrap().unwrap(), sent);
}

/// A key that is not the connection's peer's is refused with a typed error naming both.
#[tokio::test]
async fn key_of_another_peer_is_a_typed_mismatch() {
    let p = pair(5, 6, Sec::Noise).await;
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    let impostor = keypair_from_seed(66);
    let lie = info_of(&impostor, p.b.remote_multiaddr());
    let (tx, rx) = tokio::join!(
        timeout(LIMIT, send_identify(&mut answerer, &lie)),
        timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer())),
    );
    tx.unwrap().unwrap();
    match rx.unwrap() {
        Err(IdentifyError::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, p.kb.public().to_peer_id());
            assert_eq!(actual, impostor.public().to_peer_id());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
}

/// A length prefix above the limit (here 4 GiB, with no body behind it) is refused at
/// once: the receiver neither waits for the body nor allocates for it.
#[tokio::test]
async fn oversized_length_prefix_is_refused() {
    let p = pair(7, 8, Sec::Noise).await;
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(4 << 30, &mut prefix);
    answerer.write_all(&prefix).await.unwrap();
    answerer.flush().await.unwrap();
    // The stream stays open: a reader that waited for the body would hit the timeout.
    let got = timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer()))
        .await
        .expect("the oversized prefix must be refused without waiting");
    match got {
        Err(IdentifyError::MessageTooLarge { len, max }) => {
            assert_eq!(len, 4 << 30);
            assert_eq!(max, MAX_IDENTIFY_MSG_LEN);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

/// Bytes that are not an identify protobuf give a typed decode error.
#[tokio::test]
async fn garbage_protobuf_is_a_typed_error() {
    let p = pair(9, 10, Sec::Tls).await;
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    // Length 4, then a field with tag 0 (invalid) and junk.
    answerer
        .write_all(&[4, 0x00, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    answerer.close_write().await.unwrap();
    let got = timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer()))
        .await
        .unwrap();
    assert!(matches!(got, Err(IdentifyError::Decode(_))), "{got:?}");

    // A frame cut short by the end of the stream is typed too.
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    answerer.write_all(&[40, 1, 2, 3]).await.unwrap();
    answerer.close_write().await.unwrap();
    let got = timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer()))
        .await
        .unwrap();
    assert!(matches!(got, Err(IdentifyError::Truncated)), "{got:?}");
}

/// go-libp2p sends a large identify in two frames; both are read and merged.
#[tokio::test]
async fn chunked_message_is_merged() {
    let p = pair(11, 12, Sec::Noise).await;
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    let full = info_of(&p.kb, p.b.remote_multiaddr());
    let mut first = full.to_message();
    let rest = first.protocols.split_off(1);
    let second = Identify {
        protocols: rest,
        ..Default::default()
    };
    let mut bytes = first.encode_length_delimited_to_vec();
    bytes.extend(second.encode_length_delimited_to_vec());
    answerer.write_all(&bytes).await.unwrap();
    answerer.close_write().await.unwrap();
    let got = timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, full);
}

/// What identify received lands in the peerstore: key, addresses (connected TTL),
/// protocols (replaced), versions; and a key for another peer changes nothing.
#[tokio::test(start_paused = true)]
async fn apply_to_peerstore_records_everything() {
    let ps = Peerstore::new();
    let key = keypair_from_seed(21);
    let peer: PeerId = key.public().to_peer_id();
    let observed: Multiaddr = "/ip4/198.51.100.1/tcp/1234".parse().unwrap();
    let info = info_of(&key, &observed);
    ps.set_protocols(peer, &["/old/1.0.0"]).unwrap();
    let stale: Multiaddr = "/ip4/203.0.113.9/tcp/9".parse().unwrap();
    ps.add_addrs(peer, std::slice::from_ref(&stale), CONNECTED_ADDR_TTL);

    apply_to_peerstore(&ps, peer, &info, true).unwrap();
    assert_eq!(ps.pub_key(&peer), Some(key.public()));
    assert_eq!(ps.get_protocols(&peer), info.protocols);
    assert_eq!(
        ps.agent_version(&peer).as_deref(),
        Some("strata-test/1.2.3")
    );
    assert_eq!(ps.protocol_version(&peer).as_deref(), Some("ipfs/0.1.0"));
    let addrs = ps.addrs(&peer);
    for a in &info.listen_addrs {
        assert!(addrs.contains(a), "{a} missing from {addrs:?}");
    }
    // The address no longer announced fades (temp TTL); the announced ones stay.
    assert!(addrs.contains(&stale));
    tokio::time::advance(std::time::Duration::from_secs(3 * 60)).await;
    let addrs = ps.addrs(&peer);
    assert!(!addrs.contains(&stale));
    assert_eq!(addrs, info.listen_addrs);

    // After disconnect the host moves them to the recently-connected TTL; they expire then.
    ps.update_addrs(peer, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL);
    tokio::time::advance(RECENTLY_CONNECTED_ADDR_TTL + std::time::Duration::from_secs(1)).await;
    assert!(ps.addrs(&peer).is_empty());

    // Not connected any more when identify arrives: recently-connected TTL straight away.
    let other = keypair_from_seed(22);
    let other_peer = other.public().to_peer_id();
    apply_to_peerstore(&ps, other_peer, &info_of(&other, &observed), false).unwrap();
    tokio::time::advance(RECENTLY_CONNECTED_ADDR_TTL - std::time::Duration::from_secs(1)).await;
    assert_eq!(ps.addrs(&other_peer).len(), 2);
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert!(ps.addrs(&other_peer).is_empty());

    // A key for another peer is refused and records nothing.
    let third = keypair_from_seed(23).public().to_peer_id();
    let err = apply_to_peerstore(&ps, third, &info, true).unwrap_err();
    assert!(matches!(err, PeerstoreError::KeyMismatch { .. }));
    assert!(ps.get_protocols(&third).is_empty());
    assert!(ps.addrs(&third).is_empty());
    assert!(!ps.peers().contains(&third));
}
