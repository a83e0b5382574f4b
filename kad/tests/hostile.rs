//! Hostile peers against the DHT, on real hosts over loopback: answers listing 10,000
//! peers or junk addresses, peers that list themselves or the asker, peers that never
//! answer, records and provider lists over the limits, one peer providing thousands of
//! keys, a PUT_VALUE flood, bucket poisoning from one /24, and malformed messages. Each
//! gets a typed error or is ignored; nothing grows past its bound.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{close, config, host_on, network, node_at, node_with, Node, LIMIT};
use strata_core::{Multiaddr, PeerId, Stream};
use strata_host::Host;
use strata_kad::proto::{self, ConnectionType, Message, MessageType, Peer, PeerInfo, Record};
use strata_kad::rpc::{read_message, write_message};
use strata_kad::{DiversityLimits, KadConfig, KadError, StoreLimits, DEFAULT_PROTOCOL};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

fn peer(seed: u64) -> PeerId {
    strata_core::identity::peer_id_from_seed(seed)
}

/// A stream from `attacker` to `victim` on the DHT protocol.
async fn raw_stream(attacker: &Host, victim: &Node) -> Stream {
    attacker.peerstore().add_addrs(
        victim.id(),
        std::slice::from_ref(&victim.addr),
        Duration::from_secs(600),
    );
    timeout(LIMIT, attacker.new_stream(victim.id(), &[DEFAULT_PROTOCOL]))
        .await
        .unwrap()
        .unwrap()
}

/// Sends `msg` and reads the answer (or the error the reset gives).
async fn ask(stream: &mut Stream, msg: &Message) -> Result<Option<Message>, strata_kad::RpcError> {
    write_message(stream, msg).await?;
    timeout(LIMIT, read_message(stream, 4 << 20)).await.unwrap()
}

/// A host that serves the DHT protocol by answering each request with `answer(request)`
/// (`None`: never answers, holding the stream).
async fn malicious_server<F>(seed: u64, ip: &str, answer: F) -> (Host, Multiaddr)
where
    F: Fn(&Message) -> Option<Message> + Send + Sync + 'static,
{
    let (host, addr) = host_on(seed, ip).await;
    let answer = Arc::new(answer);
    host.set_stream_handler(DEFAULT_PROTOCOL, move |mut stream: Stream| {
        let answer = answer.clone();
        async move {
            while let Ok(Some(req)) = read_message(&mut stream, 4 << 20).await {
                match answer(&req) {
                    Some(a) => {
                        if write_message(&mut stream, &a).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        // Holds the stream and never answers.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    });
    (host, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_ten_thousand_peers_junk_addresses_or_ourselves_are_bounded() {
    let honest = network(5000, 5).await;
    let victim = node_at(5100, "127.0.3.1").await;
    let victim_id = victim.id();
    // Lists 10,000 made-up peers with junk addresses, plus itself and the asker.
    let (junk, junk_addr) = malicious_server(5200, "127.0.3.2", move |req| {
        let mut a = Message::request(req.kind().unwrap_or(MessageType::FindNode), req.key.clone());
        for i in 0..10_000u64 {
            a.closer_peers.push(Peer {
                id: peer(1_000_000 + i).to_bytes(),
                addrs: vec![vec![0xff, 0x01], b"junk".to_vec()],
                connection: 9,
            });
        }
        a.closer_peers.insert(
            0,
            PeerInfo {
                id: victim_id,
                addrs: vec!["/ip4/127.0.3.1/tcp/1".parse().unwrap()],
            }
            .to_wire(ConnectionType::Connected),
        );
        Some(a)
    })
    .await;
    let junk_id = junk.id();
    victim.kad.add_address(junk_id, &[junk_addr]);
    victim
        .kad
        .add_address(honest[0].id(), std::slice::from_ref(&honest[0].addr));
    let found = timeout(LIMIT, victim.kad.get_closest_peers(b"anything"))
        .await
        .unwrap()
        .unwrap();
    // The honest nodes and the junk server answered; none of the made-up peers did, and
    // the victim never asked itself.
    let ids: Vec<PeerId> = found.iter().map(|p| p.id).collect();
    assert!(ids.contains(&junk_id));
    for h in &honest {
        assert!(ids.contains(&h.id()), "{} missing", h.id());
    }
    assert!(!ids.contains(&victim_id));
    assert_eq!(found.len(), 6);
    let table = victim.kad.routing_table();
    assert!(
        table.len() <= 6,
        "the table took made-up peers: {}",
        table.len()
    );
    junk.shutdown(Duration::from_secs(2)).await;
    let mut all = honest;
    all.push(victim);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_is_routed_around_and_dropped() {
    let honest = network(5300, 4).await;
    honest[1]
        .kad
        .put_value(b"/test/v", b"value".to_vec())
        .await
        .unwrap();
    let (silent, silent_addr) = malicious_server(5400, "127.0.4.1", |_| None).await;
    let mut cfg = config();
    cfg.request_timeout = Duration::from_millis(500);
    let victim = node_with(5401, cfg).await;
    victim.kad.add_address(silent.id(), &[silent_addr]);
    victim
        .kad
        .add_address(honest[0].id(), std::slice::from_ref(&honest[0].addr));
    // A full lookup waits for the silent peer's request to time out, goes on around it,
    // and drops it from the table.
    let found = timeout(LIMIT, victim.kad.get_closest_peers(b"/test/v"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 4);
    assert!(!found.iter().any(|p| p.id == silent.id()));
    let got = timeout(LIMIT, victim.kad.get_value_quorum(b"/test/v", 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"value");
    assert!(
        !victim
            .kad
            .routing_table()
            .iter()
            .any(|p| p.id == silent.id()),
        "a peer that never answers stays in the table"
    );
    silent.shutdown(Duration::from_secs(2)).await;
    let mut all = honest;
    all.push(victim);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_messages_and_malformed_requests_reset_the_stream() {
    let victim = node_at(5500, "127.0.5.1").await;
    let (attacker, _) = host_on(5501, "127.0.5.2").await;

    // A value past the store's limit: refused with a reset, nothing stored.
    let mut s = raw_stream(&attacker, &victim).await;
    let mut put = Message::request(MessageType::PutValue, b"/test/big".to_vec());
    put.record = Some(Record {
        key: b"/test/big".to_vec(),
        value: vec![7; StoreLimits::default().max_value_bytes + 1],
        time_received: String::new(),
    });
    assert!(ask(&mut s, &put).await.is_err());
    assert_eq!(victim.kad.store_stats().records, 0);

    // A record whose key is not the message's, and one in a namespace nobody validates.
    let mut s = raw_stream(&attacker, &victim).await;
    let mut mismatch = put.clone();
    mismatch.record.as_mut().unwrap().value = b"small".to_vec();
    mismatch.key = b"/test/other".to_vec();
    assert!(ask(&mut s, &mismatch).await.is_err());
    let mut s = raw_stream(&attacker, &victim).await;
    let mut unknown = Message::request(MessageType::PutValue, b"/nobody/x".to_vec());
    unknown.record = Some(Record {
        key: b"/nobody/x".to_vec(),
        value: b"v".to_vec(),
        time_received: String::new(),
    });
    assert!(ask(&mut s, &unknown).await.is_err());
    assert_eq!(victim.kad.store_stats().records, 0);

    // A length prefix past the message limit: reset before anything is read for it.
    let mut s = raw_stream(&attacker, &victim).await;
    let mut prefix = Vec::new();
    let mut n = (strata_kad::DEFAULT_MAX_MESSAGE_SIZE + 1) as u64;
    while n >= 0x80 {
        prefix.push((n as u8) | 0x80);
        n >>= 7;
    }
    prefix.push(n as u8);
    s.write_all(&prefix).await.unwrap();
    s.flush().await.unwrap();
    assert!(timeout(LIMIT, read_message(&mut s, 1 << 20))
        .await
        .unwrap()
        .is_err());

    // Junk that is no protobuf, an unknown type, an empty FIND_NODE key: resets.
    let mut s = raw_stream(&attacker, &victim).await;
    s.write_all(&[5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    s.flush().await.unwrap();
    assert!(timeout(LIMIT, read_message(&mut s, 1 << 20))
        .await
        .unwrap()
        .is_err());
    let mut s = raw_stream(&attacker, &victim).await;
    let mut bad = Message::request(MessageType::FindNode, b"k".to_vec());
    bad.r#type = 42;
    assert!(ask(&mut s, &bad).await.is_err());
    let mut s = raw_stream(&attacker, &victim).await;
    assert!(
        ask(&mut s, &Message::request(MessageType::FindNode, Vec::new()))
            .await
            .is_err()
    );

    // The deprecated PING is echoed, as go-libp2p does, and the stream serves on.
    let mut s = raw_stream(&attacker, &victim).await;
    let ping = Message::request(MessageType::Ping, Vec::new());
    assert_eq!(ask(&mut s, &ping).await.unwrap().unwrap(), ping);
    let find = Message::request(MessageType::FindNode, b"k".to_vec());
    let answer = ask(&mut s, &find).await.unwrap().unwrap();
    assert_eq!(answer.kind(), Some(MessageType::FindNode));

    // The victim still serves honest requests after all of it.
    let mut s = raw_stream(&attacker, &victim).await;
    let mut ok = unknown.clone();
    ok.key = b"/test/fine".to_vec();
    ok.record.as_mut().unwrap().key = b"/test/fine".to_vec();
    assert_eq!(ask(&mut s, &ok).await.unwrap().unwrap().record, ok.record);
    assert_eq!(victim.kad.store_stats().records, 1);
    attacker.shutdown(Duration::from_secs(2)).await;
    close(vec![victim]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_fill_the_stores() {
    let mut cfg = config();
    cfg.store = StoreLimits {
        max_provided_keys_per_peer: 100,
        max_records_per_peer: 16,
        ..StoreLimits::default()
    };
    let (host, addr) = host_on(5600, "127.0.6.1").await;
    let victim = Node {
        kad: strata_kad::Kad::new(host.clone(), cfg),
        host,
        addr,
    };
    let (attacker, attacker_addr) = host_on(5601, "127.0.6.2").await;
    let me = PeerInfo {
        id: attacker.id(),
        addrs: vec![attacker_addr],
    };

    // Provider records for 5,000 keys, each listing 70 other providers after the sender
    // (only the sender's own entry counts), on one stream, no answers.
    let mut s = raw_stream(&attacker, &victim).await;
    let others: Vec<Peer> = (0..70)
        .map(|j| {
            PeerInfo {
                id: peer(2_000_000 + j),
                addrs: vec![],
            }
            .to_wire(ConnectionType::Connected)
        })
        .collect();
    let mut batch = Vec::new();
    for i in 0..5_000u32 {
        let mut m = Message::request(MessageType::AddProvider, i.to_be_bytes().to_vec());
        m.provider_peers.push(me.to_wire(ConnectionType::Connected));
        m.provider_peers.extend(others.iter().cloned());
        batch.extend_from_slice(&proto::encode(&m));
        if batch.len() > 64 << 10 {
            s.write_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    s.write_all(&batch).await.unwrap();
    // A PING after them: its echo says every ADD_PROVIDER before it was handled.
    let ping = Message::request(MessageType::Ping, Vec::new());
    assert_eq!(ask(&mut s, &ping).await.unwrap().unwrap(), ping);
    let stats = victim.kad.store_stats();
    assert_eq!(stats.provider_records, 100, "{stats:?}");

    // A PUT_VALUE flood: 300 records, 16 taken, then every further one refused.
    let mut taken = 0;
    let mut s = raw_stream(&attacker, &victim).await;
    for i in 0..300u32 {
        let key = format!("/test/flood{i}").into_bytes();
        let mut put = Message::request(MessageType::PutValue, key.clone());
        put.record = Some(Record {
            key,
            value: vec![1; 1000],
            time_received: String::new(),
        });
        match ask(&mut s, &put).await {
            Ok(Some(_)) => taken += 1,
            _ => s = raw_stream(&attacker, &victim).await,
        }
    }
    assert_eq!(taken, 16);
    assert_eq!(victim.kad.store_stats().records, 16);

    // Another peer is unaffected.
    let (honest, _) = host_on(5602, "127.0.6.3").await;
    let mut s = raw_stream(&honest, &victim).await;
    let mut put = Message::request(MessageType::PutValue, b"/test/honest".to_vec());
    put.record = Some(Record {
        key: b"/test/honest".to_vec(),
        value: b"v".to_vec(),
        time_received: String::new(),
    });
    assert!(ask(&mut s, &put).await.unwrap().is_some());
    attacker.shutdown(Duration::from_secs(2)).await;
    honest.shutdown(Duration::from_secs(2)).await;
    close(vec![victim]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subnet_cannot_poison_the_buckets() {
    // Loopback counts as any other network here: /24 groups apply.
    let strict = || KadConfig {
        diversity: DiversityLimits {
            exempt_local: false,
            ..DiversityLimits::default()
        },
        ..config()
    };
    let (host, addr) = host_on(5700, "127.0.7.1").await;
    let victim = Node {
        kad: strata_kad::Kad::new(host.clone(), strict()),
        host,
        addr,
    };
    // 30 attacker nodes from one /24 and 8 honest nodes, each from a /24 of its own.
    let mut attackers = Vec::new();
    for i in 0..30u64 {
        attackers.push(node_at(5800 + i, &format!("127.0.8.{}", i + 1)).await);
    }
    let mut honest = Vec::new();
    for i in 0..8u64 {
        honest.push(node_at(5900 + i, &format!("127.0.{}.1", 10 + i)).await);
    }
    for n in attackers.iter().chain(honest.iter()) {
        n.kad
            .add_address(victim.id(), std::slice::from_ref(&victim.addr));
        timeout(LIMIT, n.kad.bootstrap()).await.unwrap().unwrap();
    }
    timeout(LIMIT, victim.kad.bootstrap())
        .await
        .unwrap()
        .unwrap();
    let table = victim.kad.routing_table();
    let from_attackers: Vec<&PeerInfo> = table
        .iter()
        .filter(|p| attackers.iter().any(|a| a.id() == p.id))
        .collect();
    assert!(
        from_attackers.len() <= 10,
        "one /24 holds {} places",
        from_attackers.len()
    );
    let me = strata_kad::KadKey::from_peer(&victim.id());
    let mut per_bucket = std::collections::HashMap::new();
    for p in &from_attackers {
        *per_bucket
            .entry(me.common_prefix_len(&strata_kad::KadKey::from_peer(&p.id)))
            .or_insert(0) += 1;
    }
    assert!(per_bucket.values().all(|&n| n <= 2), "{per_bucket:?}");
    assert!(!from_attackers.is_empty(), "the /24 got no place at all");
    for h in &honest {
        assert!(
            table.iter().any(|p| p.id == h.id()),
            "an honest node was crowded out"
        );
    }
    let mut all = attackers;
    all.extend(honest);
    all.push(victim);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_with_no_live_peer_is_a_typed_error() {
    let lone = node_at(6000, "127.0.12.1").await;
    // A peer that is gone: the lookup fails around it and says so.
    let (gone, gone_addr) = host_on(6001, "127.0.12.2").await;
    let gone_id = gone.id();
    gone.shutdown(Duration::from_secs(2)).await;
    lone.kad.add_address(gone_id, &[gone_addr]);
    assert!(matches!(
        timeout(LIMIT, lone.kad.get_closest_peers(b"x"))
            .await
            .unwrap(),
        Err(KadError::NoPeers)
    ));
    assert!(lone.kad.routing_table().is_empty());
    close(vec![lone]).await;
}
