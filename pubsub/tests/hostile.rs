//! Hostile peers against a GossipSub node on real hosts: oversized RPCs, forged and
//! unsigned messages, floods of duplicates, IHAVE, IWANT and GRAFTs during backoff,
//! 100,000 subscriptions, and a peer that never reads. Each attacker is a bare Strata
//! host writing crafted RPCs on its own stream; through every attack an honest peer's
//! messages must still arrive within a second.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{close, eventually, host_on, loopback, next, node_at, Node, LIMIT};
use strata_core::{PeerId, Stream};
use strata_host::Host;
use strata_pubsub::message::{build, SignaturePolicy};
use strata_pubsub::proto::{Control, Graft, IHave, IWant, Prune, RawMessage, Rpc, SubOpts};
use strata_pubsub::{GossipsubConfig, Subscription, MESHSUB_V12};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPIC: &str = "target";

/// The victim's config: heartbeats ten times a second, so penalties add up quickly.
fn victim_config() -> GossipsubConfig {
    GossipsubConfig {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_initial_delay: Duration::from_millis(10),
        ..GossipsubConfig::default()
    }
}

/// A victim, an honest publisher connected to it, and the victim's subscription.
async fn victim_and_honest(seed: u64) -> (Node, Node, Subscription) {
    let victim = node_at(seed, &loopback(0), victim_config()).await;
    let honest = node_at(seed + 1, &loopback(1), victim_config()).await;
    honest.connect(&victim).await;
    let sub = victim.pubsub.subscribe(TOPIC);
    let _honest_sub = honest.pubsub.subscribe(TOPIC);
    std::mem::forget(_honest_sub);
    eventually("the honest peer is in the victim's mesh", || {
        victim.pubsub.mesh_peers(TOPIC).contains(&honest.id())
    })
    .await;
    (victim, honest, sub)
}

/// An attacker: a bare host on its own loopback address that announces the protocol
/// (and drains, or with `read: false` never reads, the victim's stream to it), with
/// its own stream to the victim.
struct Attacker {
    host: Host,
    stream: Stream,
    seqno: u64,
}

impl Attacker {
    async fn connect(seed: u64, ip: &str, victim: &Node, read: bool) -> Attacker {
        let (host, _addr) = host_on(seed, ip).await;
        host.set_stream_handler(MESHSUB_V12, move |mut stream: Stream| async move {
            if read {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            } else {
                // Hold the stream and never read it.
                futures::future::pending::<()>().await;
                drop(stream);
            }
        });
        host.connect(victim.id(), std::slice::from_ref(&victim.addr))
            .await
            .unwrap();
        let stream = host.new_stream(victim.id(), &[MESHSUB_V12]).await.unwrap();
        let mut a = Attacker {
            host,
            stream,
            seqno: 0,
        };
        a.send(&Rpc {
            subscriptions: vec![SubOpts {
                subscribe: true,
                topic: TOPIC.into(),
            }],
            ..Rpc::default()
        })
        .await;
        a
    }

    fn id(&self) -> PeerId {
        self.host.id()
    }

    /// Writes one RPC; `false` once the victim has closed the stream.
    async fn send(&mut self, rpc: &Rpc) -> bool {
        self.stream.write_all(&rpc.encode()).await.is_ok() && self.stream.flush().await.is_ok()
    }

    fn message(&mut self, data: &[u8]) -> RawMessage {
        self.seqno += 1;
        build(
            self.host.keypair(),
            SignaturePolicy::StrictSign,
            TOPIC,
            Bytes::copy_from_slice(data),
            self.seqno,
        )
        .unwrap()
    }
}

fn publish(msgs: Vec<RawMessage>) -> Rpc {
    Rpc {
        publish: msgs,
        ..Rpc::default()
    }
}

fn control(control: Control) -> Rpc {
    Rpc {
        control: Some(control),
        ..Rpc::default()
    }
}

/// The honest peer publishes; the victim must have it within a second.
async fn honest_gets_through(honest: &Node, sub: &mut Subscription, tag: &str) {
    let started = tokio::time::Instant::now();
    let id = honest
        .pubsub
        .publish(TOPIC, tag.as_bytes().to_vec())
        .await
        .unwrap();
    loop {
        let m = next(sub).await;
        if m.id == id {
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{tag}: the honest message took {took:?}"
    );
}

/// Waits until the victim graylists `peer`.
async fn graylisted(victim: &Node, peer: &PeerId) {
    eventually("graylisted", || victim.pubsub.peer_score(peer) < -80.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_over_the_size_limit_resets_the_stream_and_nothing_else() {
    let (victim, honest, mut sub) = victim_and_honest(100).await;
    let mut attacker = Attacker::connect(102, &loopback(2), &victim, true).await;
    // A length prefix announcing 1 MiB + 1 (the limit is 1 MiB), then a few bytes.
    let mut frame = Vec::new();
    let mut len = 1024 * 1024 + 1u64;
    while len >= 0x80 {
        frame.push((len as u8) | 0x80);
        len >>= 7;
    }
    frame.push(len as u8);
    frame.extend_from_slice(&[0u8; 64]);
    let _ = attacker.stream.write_all(&frame).await;
    let _ = attacker.stream.flush().await;
    // The victim resets the stream: a read ends.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, attacker.stream.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    eventually("the bad frame is counted", || {
        victim.pubsub.stats().bad_frames == 1
    })
    .await;
    honest_gets_through(&honest, &mut sub, "after oversize").await;
    // A frame that is not protobuf is refused the same way.
    let mut again = Attacker::connect(103, &loopback(3), &victim, true).await;
    let _ = again.stream.write_all(&[3, 0xff, 0xff, 0xff]).await;
    let _ = again.stream.flush().await;
    eventually("the junk frame is counted", || {
        victim.pubsub.stats().bad_frames == 2
    })
    .await;
    honest_gets_through(&honest, &mut sub, "after junk").await;
    attacker.host.shutdown(Duration::from_secs(1)).await;
    again.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unsigned_messages_are_rejected_and_scored() {
    let (victim, honest, mut sub) = victim_and_honest(110).await;
    let mut attacker = Attacker::connect(112, &loopback(2), &victim, true).await;
    eventually("the victim knows the attacker", || {
        victim.pubsub.topic_peers(TOPIC).contains(&attacker.id())
    })
    .await;
    // A message whose author is the honest peer, signed by the attacker.
    let mut forged = attacker.message(b"forged");
    forged.from = Some(Bytes::from(honest.id().to_bytes()));
    // A message with its data changed after signing.
    let mut tampered = attacker.message(b"original");
    tampered.data = Some(Bytes::from_static(b"tampered"));
    // A message with no signature at all.
    let mut unsigned = attacker.message(b"unsigned");
    unsigned.signature = None;
    // A message with a key that is not the author's.
    let mut wrong_key = attacker.message(b"wrong key");
    wrong_key.key = Some(Bytes::from(
        strata_core::Keypair::generate_ed25519()
            .public()
            .encode_protobuf(),
    ));
    assert!(
        attacker
            .send(&publish(vec![forged, tampered, unsigned, wrong_key]))
            .await
    );
    eventually("four rejections", || {
        victim.pubsub.stats().router.rejected == 4
    })
    .await;
    // Four invalid messages: P4 = -10 × 4² = -160, below the graylist threshold.
    graylisted(&victim, &attacker.id()).await;
    honest_gets_through(&honest, &mut sub, "after forgeries").await;
    // None of them was delivered: the next message is the honest one above (checked),
    // and a valid message from the graylisted attacker is dropped unread.
    let valid = attacker.message(b"valid but graylisted");
    attacker.send(&publish(vec![valid])).await;
    eventually("dropped unread", || {
        victim.pubsub.stats().router.graylisted_rpcs >= 1
    })
    .await;
    honest_gets_through(&honest, &mut sub, "after graylisting").await;
    attacker.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_duplicates_is_graylisted() {
    let (victim, honest, mut sub) = victim_and_honest(120).await;
    let mut attacker = Attacker::connect(122, &loopback(2), &victim, true).await;
    let msg = attacker.message(b"again and again");
    assert!(attacker.send(&publish(vec![msg.clone()])).await);
    let first = next(&mut sub).await;
    assert_eq!(&first.data[..], b"again and again");
    // The same message, from the same peer, 2,000 times.
    for _ in 0..20 {
        if !attacker.send(&publish(vec![msg.clone(); 100])).await {
            break;
        }
    }
    graylisted(&victim, &attacker.id()).await;
    assert!(victim.pubsub.stats().router.duplicates >= 3);
    honest_gets_through(&honest, &mut sub, "during the duplicate flood").await;
    // Delivered once.
    assert_eq!(victim.pubsub.stats().router.delivered, 2);
    attacker.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ihave_and_iwant_floods_are_capped_and_graylisted() {
    let (victim, honest, mut sub) = victim_and_honest(130).await;
    let mut ihaver = Attacker::connect(132, &loopback(2), &victim, true).await;
    let mut iwanter = Attacker::connect(133, &loopback(3), &victim, true).await;
    // IHAVE: 50 per RPC (the limit is 10 a heartbeat), each listing 5,000 IDs.
    let ids: Vec<Bytes> = (0..5000u32)
        .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
        .collect();
    let ihave = control(Control {
        ihave: (0..50)
            .map(|_| IHave {
                topic: TOPIC.into(),
                ids: ids[..100].to_vec(),
            })
            .collect(),
        ..Control::default()
    });
    // IWANT: a message the victim has, asked for 100 times per RPC (it may be sent 3).
    let id = honest.pubsub.publish(TOPIC, &b"wanted"[..]).await.unwrap();
    assert_eq!(next(&mut sub).await.id, id);
    let iwant = control(Control {
        iwant: vec![IWant {
            ids: vec![id.0.clone(); 100],
        }],
        ..Control::default()
    });
    let (ihaver_id, iwanter_id) = (ihaver.id(), iwanter.id());
    let flood = async {
        for _ in 0..100 {
            let a = ihaver.send(&ihave).await;
            let b = iwanter.send(&iwant).await;
            if !a && !b {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let check = async {
        graylisted(&victim, &ihaver_id).await;
        graylisted(&victim, &iwanter_id).await;
        honest_gets_through(&honest, &mut sub, "during IHAVE and IWANT floods").await;
    };
    tokio::join!(flood, check);
    let stats = victim.pubsub.stats();
    assert!(stats.router.over_limit > 100, "{stats:?}");
    // At most three copies went to the IWANT flooder (the message is not re-sent more),
    // and nothing asked for by IHAVE flood beyond the cap.
    assert!(stats.router.messages_sent < 50, "{stats:?}");
    ihaver.host.shutdown(Duration::from_secs(1)).await;
    iwanter.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafts_during_backoff_are_penalised_until_graylisted() {
    let (victim, honest, mut sub) = victim_and_honest(140).await;
    let mut attacker = Attacker::connect(142, &loopback(2), &victim, true).await;
    let graft = control(Control {
        graft: vec![Graft {
            topic: TOPIC.into(),
        }],
        ..Control::default()
    });
    let prune = control(Control {
        prune: vec![Prune {
            topic: TOPIC.into(),
            peers: vec![],
            backoff: Some(60),
        }],
        ..Control::default()
    });
    attacker.send(&graft).await;
    eventually("grafted", || {
        victim.pubsub.mesh_peers(TOPIC).contains(&attacker.id())
    })
    .await;
    // PRUNE starts a 60 s backoff; every GRAFT inside it costs two penalties.
    attacker.send(&prune).await;
    eventually("pruned", || {
        !victim.pubsub.mesh_peers(TOPIC).contains(&attacker.id())
    })
    .await;
    for _ in 0..3 {
        attacker.send(&graft).await;
    }
    graylisted(&victim, &attacker.id()).await;
    assert!(!victim.pubsub.mesh_peers(TOPIC).contains(&attacker.id()));
    honest_gets_through(&honest, &mut sub, "after graft flood").await;
    attacker.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_subscriptions_are_capped() {
    let (victim, honest, mut sub) = victim_and_honest(150).await;
    let mut attacker = Attacker::connect(152, &loopback(2), &victim, true).await;
    for chunk in 0..100 {
        let rpc = Rpc {
            subscriptions: (0..1000)
                .map(|i| SubOpts {
                    subscribe: true,
                    topic: format!("spam/{chunk}/{i}/{}", "x".repeat(40)),
                })
                .collect(),
            ..Rpc::default()
        };
        if !attacker.send(&rpc).await {
            break;
        }
    }
    eventually("the flood is counted", || {
        victim.pubsub.stats().router.over_limit >= 99_000
    })
    .await;
    let snap = victim.pubsub.snapshot();
    let theirs = snap
        .peers
        .iter()
        .find(|p| p.peer == attacker.id())
        .map_or(0, |p| p.topics.len());
    assert_eq!(theirs, 1000, "capped at max_topics_per_peer");
    // What the victim keeps for them is booked to the attacker's span.
    let stat = victim.host.resource_manager().stat();
    let booked = stat.peers.get(&attacker.id()).map_or(0, |s| s.memory);
    assert!(booked >= 1000 * 128, "booked {booked}");
    honest_gets_through(&honest, &mut sub, "after the subscription flood").await;
    attacker.host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_loses_messages_and_holds_up_nobody() {
    let (victim, honest, mut sub) = victim_and_honest(160).await;
    let mut honest_sub = honest.pubsub.subscribe(TOPIC);
    let attacker = Attacker::connect(162, &loopback(2), &victim, false).await;
    eventually("the victim knows the attacker", || {
        victim.pubsub.topic_peers(TOPIC).contains(&attacker.id())
    })
    .await;
    // 64 messages of 512 KiB: 32 MiB toward a peer that reads nothing (its queue holds
    // 4 MiB, its stream window a few hundred KiB).
    let data = vec![7u8; 512 * 1024];
    for _ in 0..64 {
        victim.pubsub.publish(TOPIC, data.clone()).await.unwrap();
        let m = next(&mut honest_sub).await;
        assert_eq!(m.data.len(), data.len());
    }
    let stats = victim.pubsub.stats();
    assert!(stats.dropped_messages > 0, "{stats:?}");
    honest_gets_through(&honest, &mut sub, "while a peer never reads").await;
    drop(attacker);
    close(vec![victim, honest]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_on_a_live_connection_is_opened_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (victim, honest, _sub) = victim_and_honest(170).await;
    // A peer that resets the first stream the victim opens to it and reads the next,
    // reporting the data of every message on it.
    let (host, _addr) = host_on(172, &loopback(2)).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let count = opened.clone();
    host.set_stream_handler(MESHSUB_V12, move |mut stream: Stream| {
        let count = count.clone();
        let tx = tx.clone();
        async move {
            if count.fetch_add(1, Ordering::SeqCst) == 0 {
                stream.reset();
                return;
            }
            while let Ok(Some(frame)) =
                strata_host::messaging::read_message(&mut stream, 1 << 20).await
            {
                let rpc = strata_pubsub::proto::decode_rpc(&frame, &Default::default()).unwrap();
                for m in rpc.publish {
                    let _ = tx.send(m.data.unwrap_or_default().to_vec());
                }
            }
        }
    });
    host.connect(victim.id(), std::slice::from_ref(&victim.addr))
        .await
        .unwrap();
    let mut stream = host.new_stream(victim.id(), &[MESHSUB_V12]).await.unwrap();
    let sub = Rpc {
        subscriptions: vec![SubOpts {
            subscribe: true,
            topic: TOPIC.into(),
        }],
        ..Rpc::default()
    };
    stream.write_all(&sub.encode()).await.unwrap();
    stream.flush().await.unwrap();
    eventually("a second stream", || opened.load(Ordering::SeqCst) >= 2).await;
    // The victim still knows the peer's subscription, and reaches it on the new stream.
    assert!(victim.pubsub.topic_peers(TOPIC).contains(&host.id()));
    victim
        .pubsub
        .publish(TOPIC, &b"after the reset"[..])
        .await
        .unwrap();
    let got = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"after the reset");
    host.shutdown(Duration::from_secs(1)).await;
    close(vec![victim, honest]).await;
}
