//! GossipSub on real hosts over TCP on loopback: delivery across a mesh, fanout,
//! validators, unsubscribing, and a network of 100 hosts with churn.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{close, eventually, loopback, next, node_at, nodes, LIMIT};
use strata_pubsub::{GossipsubConfig, PublishError, ValidationResult};

fn config() -> GossipsubConfig {
    GossipsubConfig::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_subscriber_along_a_chain() {
    let ns = nodes(1, 5, config).await;
    // A chain: 0 - 1 - 2 - 3 - 4, so delivery needs forwarding through the mesh.
    for pair in ns.windows(2) {
        pair[0].connect(&pair[1]).await;
    }
    let mut subs: Vec<_> = ns.iter().map(|n| n.pubsub.subscribe("chain")).collect();
    for (i, n) in ns.iter().enumerate() {
        let want = if i == 0 || i == 4 { 1 } else { 2 };
        eventually("meshes along the chain", || {
            n.pubsub.mesh_peers("chain").len() == want
        })
        .await;
    }
    let id = ns[0].pubsub.publish("chain", &b"hello"[..]).await.unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        let msg = next(sub).await;
        assert_eq!(msg.id, id, "node {i}");
        assert_eq!(&msg.data[..], b"hello");
        assert_eq!(msg.source, Some(ns[0].id()));
        assert_eq!(msg.topic, "chain");
    }
    // The same data again is a new message (a new sequence number).
    let again = ns[4].pubsub.publish("chain", &b"hello"[..]).await.unwrap();
    assert_ne!(again, id);
    for sub in subs.iter_mut() {
        assert_eq!(next(sub).await.id, again);
    }
    // Nothing twice.
    for (i, n) in ns.iter().enumerate() {
        let stats = n.pubsub.stats();
        let own = if i == 0 || i == 4 { 1 } else { 0 };
        assert_eq!(stats.router.delivered + own, 2, "node {i}: {stats:?}");
    }
    close(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_is_not_subscribed_uses_its_fanout() {
    let config_nf = GossipsubConfig {
        flood_publish: false,
        ..GossipsubConfig::default()
    };
    let publisher = node_at(20, &loopback(0), config_nf).await;
    let ns = nodes(21, 3, config).await;
    for n in &ns {
        publisher.connect(n).await;
    }
    let mut subs: Vec<_> = ns.iter().map(|n| n.pubsub.subscribe("fan")).collect();
    eventually("the publisher hears the subscriptions", || {
        publisher.pubsub.topic_peers("fan").len() == 3
    })
    .await;
    publisher.pubsub.publish("fan", &b"x"[..]).await.unwrap();
    for sub in subs.iter_mut() {
        assert_eq!(&next(sub).await.data[..], b"x");
    }
    // Nobody subscribed to another topic: a typed error.
    assert_eq!(
        publisher.pubsub.publish("nobody", &b"x"[..]).await,
        Err(PublishError::InsufficientPeers)
    );
    // Too large.
    let big = vec![0u8; 1024 * 1024 + 1];
    assert!(matches!(
        publisher.pubsub.publish("fan", big).await,
        Err(PublishError::TooLarge { .. })
    ));
    let mut all = ns;
    all.push(publisher);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_decide_what_is_delivered_and_forwarded() {
    let ns = nodes(30, 3, config).await;
    ns[0].connect(&ns[1]).await;
    ns[1].connect(&ns[2]).await;
    let mut subs: Vec<_> = ns.iter().map(|n| n.pubsub.subscribe("v")).collect();
    // The middle node rejects anything that says "bad"; it must not forward it.
    ns[1]
        .pubsub
        .register_validator("v", |m: &strata_pubsub::Message| {
            if &m.data[..] == b"bad" {
                ValidationResult::Reject
            } else {
                ValidationResult::Accept
            }
        });
    eventually("mesh", || {
        ns[1].pubsub.mesh_peers("v").len() == 2 && !ns[0].pubsub.topic_peers("v").is_empty()
    })
    .await;
    ns[0].pubsub.publish("v", &b"bad"[..]).await.unwrap();
    ns[0].pubsub.publish("v", &b"good"[..]).await.unwrap();
    assert_eq!(&next(&mut subs[0]).await.data[..], b"bad");
    assert_eq!(&next(&mut subs[0]).await.data[..], b"good");
    assert_eq!(&next(&mut subs[1]).await.data[..], b"good");
    assert_eq!(&next(&mut subs[2]).await.data[..], b"good");
    assert!(ns[1].pubsub.stats().router.rejected >= 1);
    // The sender of the rejected message paid for it.
    let score = ns[1].pubsub.peer_score(&ns[0].id());
    assert!(score < 0.0, "{score}");
    // Our own publish goes through our validator too.
    assert_eq!(
        ns[1].pubsub.publish("v", &b"bad"[..]).await,
        Err(PublishError::ValidationFailed)
    );
    close(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_topic_is_heard_and_ends_delivery() {
    let ns = nodes(40, 2, config).await;
    ns[0].connect(&ns[1]).await;
    let mut events = ns[0].pubsub.events();
    let _sub0 = ns[0].pubsub.subscribe("t");
    let sub1 = ns[1].pubsub.subscribe("t");
    eventually("subscribed", || {
        ns[0].pubsub.topic_peers("t") == vec![ns[1].id()]
    })
    .await;
    drop(sub1);
    eventually("unsubscribed", || ns[0].pubsub.topic_peers("t").is_empty()).await;
    let mut seen = HashSet::new();
    while let Ok(ev) = events.try_recv() {
        seen.insert(
            format!("{ev:?}")
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(seen.contains("Subscribed"), "{seen:?}");
    assert!(seen.contains("Unsubscribed"), "{seen:?}");
    assert_eq!(
        ns[0].pubsub.publish("t", &b"x"[..]).await,
        Err(PublishError::InsufficientPeers)
    );
    close(ns).await;
}

/// 100 hosts, each dialing 4 random others: every message reaches every subscriber,
/// also while a tenth of the hosts leave and come back (the hosts that stay get every
/// message published meanwhile, and afterwards all 100 get everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_hosts_deliver_everything_through_churn() {
    use rand::{Rng, SeedableRng};
    let count = 100;
    let mut ns = nodes(1000, count, config).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut links: Vec<(usize, usize)> = Vec::new();
    for i in 0..count {
        let mut picked = HashSet::new();
        while picked.len() < 4 {
            let j = rng.gen_range(0..count);
            if j != i {
                picked.insert(j);
            }
        }
        for j in picked {
            links.push((i, j));
        }
    }
    for &(i, j) in &links {
        ns[i].connect(&ns[j]).await;
    }
    let mut subs: Vec<_> = ns.iter().map(|n| n.pubsub.subscribe("big")).collect();
    for n in &ns {
        eventually("every node in a mesh", || {
            n.pubsub.mesh_peers("big").len() >= 2
        })
        .await;
    }
    let mut expect: HashMap<usize, HashSet<Vec<u8>>> = HashMap::new();
    for k in 0..20 {
        let from = rng.gen_range(0..count);
        let data = format!("m{k}").into_bytes();
        ns[from].pubsub.publish("big", data.clone()).await.unwrap();
        for i in 0..count {
            expect.entry(i).or_default().insert(data.clone());
        }
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        let want = expect.remove(&i).unwrap();
        let mut got = HashSet::new();
        while got.len() < want.len() {
            got.insert(next(sub).await.data.to_vec());
        }
        assert_eq!(got, want, "node {i}");
    }

    // Churn with messages flowing: ten hosts leave and come back (same identity, same
    // address, a new port) one after another, while the others publish; every host that
    // stays gets every message.
    let leaving: Vec<usize> = (0..10).map(|k| k * 10 + 3).collect();
    let stable: Vec<usize> = (0..count).filter(|i| !leaving.contains(i)).collect();
    let mut during = HashSet::new();
    for (k, &i) in leaving.iter().enumerate() {
        ns[i].host.shutdown(Duration::from_secs(2)).await;
        let from = stable[rng.gen_range(0..stable.len())];
        let data = format!("gone{k}").into_bytes();
        ns[from].pubsub.publish("big", data.clone()).await.unwrap();
        during.insert(data);
        ns[i] = node_at(1000 + i as u64, &loopback(i), config()).await;
        subs[i] = ns[i].pubsub.subscribe("big");
        for &(a, b) in &links {
            if a == i || b == i {
                let _ = ns[a]
                    .host
                    .connect(ns[b].id(), std::slice::from_ref(&ns[b].addr))
                    .await;
            }
        }
        let from = stable[rng.gen_range(0..stable.len())];
        let data = format!("back{k}").into_bytes();
        ns[from].pubsub.publish("big", data.clone()).await.unwrap();
        during.insert(data);
    }
    for &i in &stable {
        let mut got = HashSet::new();
        while got.len() < during.len() {
            let m = tokio::time::timeout(LIMIT, subs[i].next())
                .await
                .unwrap_or_else(|_| panic!("node {i} got {} of {}", got.len(), during.len()))
                .unwrap();
            got.insert(m.data.to_vec());
        }
        assert_eq!(got, during, "node {i}");
    }
    for n in &ns {
        eventually("every node back in a mesh", || {
            n.pubsub.mesh_peers("big").len() >= 2
        })
        .await;
    }
    let mut want = HashSet::new();
    for k in 0..20 {
        let from = rng.gen_range(0..count);
        let data = format!("after{k}").into_bytes();
        ns[from].pubsub.publish("big", data.clone()).await.unwrap();
        want.insert(data);
    }
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = HashSet::new();
        while got.len() < want.len() {
            let m = tokio::time::timeout(LIMIT, sub.next())
                .await
                .unwrap_or_else(|_| panic!("node {i} got {} of {}", got.len(), want.len()))
                .unwrap();
            // A host that came back may also get, by gossip, messages of the churn.
            if m.data.starts_with(b"after") {
                assert!(got.insert(m.data.to_vec()), "node {i}: twice");
            }
        }
        assert_eq!(got, want, "node {i}");
        assert_eq!(sub.missed(), 0);
    }
    close(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_networks_deliver_by_content_and_refuse_signed_messages() {
    fn no_sign() -> GossipsubConfig {
        GossipsubConfig {
            signature_policy: strata_pubsub::SignaturePolicy::StrictNoSign,
            ..GossipsubConfig::default()
        }
    }
    let ns = nodes(50, 2, no_sign).await;
    let signed = node_at(52, &loopback(2), config()).await;
    ns[0].connect(&ns[1]).await;
    signed.connect(&ns[1]).await;
    let _s0 = ns[0].pubsub.subscribe("u");
    let mut s1 = ns[1].pubsub.subscribe("u");
    let _s2 = signed.pubsub.subscribe("u");
    eventually("peers", || {
        ns[1].pubsub.topic_peers("u").len() == 2
            && ns[0].pubsub.topic_peers("u") == vec![ns[1].id()]
            && signed.pubsub.topic_peers("u") == vec![ns[1].id()]
    })
    .await;
    ns[0].pubsub.publish("u", &b"one"[..]).await.unwrap();
    ns[0].pubsub.publish("u", &b"two"[..]).await.unwrap();
    let a = next(&mut s1).await;
    let b = next(&mut s1).await;
    assert_eq!((a.source, a.sequence_number), (None, None));
    assert_eq!([&a.data[..], &b.data[..]], [b"one", b"two"]);
    // The same content again is the same message: a duplicate.
    assert_eq!(
        ns[0].pubsub.publish("u", &b"one"[..]).await,
        Err(PublishError::Duplicate)
    );
    // A signed message is refused by a StrictNoSign node.
    signed.pubsub.publish("u", &b"signed"[..]).await.unwrap();
    eventually("refused", || ns[1].pubsub.stats().router.rejected == 1).await;
    let mut all = ns;
    all.push(signed);
    close(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_misses_what_its_buffer_cannot_hold_and_counts_it() {
    fn small_buffer() -> GossipsubConfig {
        GossipsubConfig {
            subscription_buffer: 4,
            ..GossipsubConfig::default()
        }
    }
    let ns = nodes(60, 2, small_buffer).await;
    ns[0].connect(&ns[1]).await;
    let _s0 = ns[0].pubsub.subscribe("slow");
    let mut s1 = ns[1].pubsub.subscribe("slow");
    eventually("peers", || ns[0].pubsub.topic_peers("slow").len() == 1).await;
    for i in 0..10u8 {
        ns[0].pubsub.publish("slow", vec![i]).await.unwrap();
    }
    // Four are kept, in order; six missed.
    eventually("six missed", || s1.missed() == 6).await;
    assert_eq!(ns[1].pubsub.stats().router.delivered, 10);
    for i in 0..4u8 {
        assert_eq!(&next(&mut s1).await.data[..], &[i]);
    }
    assert_eq!(s1.missed(), 6);
    assert_eq!(ns[1].pubsub.stats().missed_by_subscriptions, 6);
    close(ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_past_its_deadline_means_ignored_without_penalty() {
    fn short_deadline() -> GossipsubConfig {
        GossipsubConfig {
            validation_timeout: Duration::from_millis(200),
            ..GossipsubConfig::default()
        }
    }
    struct Stuck;
    #[async_trait::async_trait]
    impl strata_pubsub::Validator for Stuck {
        async fn validate(&self, m: &strata_pubsub::Message) -> ValidationResult {
            if &m.data[..] == b"stuck" {
                std::future::pending::<()>().await;
            }
            ValidationResult::Accept
        }
    }
    let ns = nodes(70, 2, short_deadline).await;
    ns[0].connect(&ns[1]).await;
    let _s0 = ns[0].pubsub.subscribe("d");
    let mut s1 = ns[1].pubsub.subscribe("d");
    ns[1].pubsub.register_validator("d", Stuck);
    eventually("peers", || ns[0].pubsub.topic_peers("d").len() == 1).await;
    ns[0].pubsub.publish("d", &b"stuck"[..]).await.unwrap();
    ns[0].pubsub.publish("d", &b"fine"[..]).await.unwrap();
    // The stuck one does not hold up the next.
    assert_eq!(&next(&mut s1).await.data[..], b"fine");
    eventually("ignored at the deadline", || {
        ns[1].pubsub.stats().router.ignored == 1
    })
    .await;
    assert!(ns[1].pubsub.peer_score(&ns[0].id()) >= 0.0);
    close(ns).await;
}
