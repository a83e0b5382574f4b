//! Message protocols between real hosts over TCP: a 20-host mesh where every message
//! arrives once and in order, a peer that never reads, oversized frames, streams that
//! break and come back, simultaneous connects, and disconnects with their reasons.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::{Multiaddr, PeerId};
use strata_host::messaging::write_message;
use strata_host::{Host, HostBuilder, MessageConfig, MessageHandler, SendError};
use strata_swarm::DisconnectReason;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

const CHAT: &str = "/strata/chat/1";
const LIMIT: Duration = Duration::from_secs(60);

/// One test at a time: the mesh alone runs 20 hosts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, PartialEq, Eq)]
enum Heard {
    Connected(PeerId),
    Received(PeerId, Bytes),
    Disconnected(PeerId, DisconnectReason),
}

/// Records everything; optionally stalls forever on the first message (a peer that
/// stops reading).
struct Recorder {
    tx: mpsc::UnboundedSender<Heard>,
    stall: bool,
}

#[async_trait]
impl MessageHandler for Recorder {
    async fn connected(&self, peer: PeerId) {
        let _ = self.tx.send(Heard::Connected(peer));
    }
    async fn received(&self, peer: PeerId, message: Bytes) {
        let _ = self.tx.send(Heard::Received(peer, message));
        if self.stall {
            std::future::pending::<()>().await;
        }
    }
    async fn disconnected(&self, peer: PeerId, reason: DisconnectReason) {
        let _ = self.tx.send(Heard::Disconnected(peer, reason));
    }
}

async fn node(
    stall: bool,
    config: MessageConfig,
) -> (Host, Multiaddr, mpsc::UnboundedReceiver<Heard>) {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .resource_limits(limits)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    let (tx, rx) = mpsc::unbounded_channel();
    host.add_message_protocol(CHAT, config, Arc::new(Recorder { tx, stall }))
        .unwrap();
    (host, addr, rx)
}

/// Waits until `host` has a message stream to each of `peers`.
async fn wait_streams(host: &Host, peers: usize) {
    timeout(LIMIT, async {
        while host.message_peers(CHAT).len() < peers {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {peers} message streams came up",
            host.message_peers(CHAT).len()
        )
    });
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Heard>, pick: impl Fn(&Heard) -> bool) -> Heard {
    timeout(LIMIT, async {
        loop {
            let h = rx.recv().await.expect("the handler is gone");
            if pick(&h) {
                return h;
            }
        }
    })
    .await
    .expect("the handler heard it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_of_twenty_delivers_every_message_once_and_in_order() {
    let _serial = SERIAL.lock().await;
    const HOSTS: usize = 20;
    const MESSAGES: u32 = 1000;
    let mut nodes = Vec::new();
    for _ in 0..HOSTS {
        nodes.push(node(false, MessageConfig::default()).await);
    }
    for i in 0..HOSTS {
        for j in i + 1..HOSTS {
            let (a, b) = (&nodes[i].0, &nodes[j]);
            a.connect(b.0.id(), std::slice::from_ref(&b.1))
                .await
                .unwrap();
        }
    }
    for (host, _, _) in &nodes {
        wait_streams(host, HOSTS - 1).await;
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.0.id()).collect();
    // Every host sends its messages to all the others at once.
    let sends = nodes.iter().map(|(host, _, _)| {
        let others: Vec<PeerId> = ids.iter().copied().filter(|p| *p != host.id()).collect();
        async move {
            for k in 0..MESSAGES {
                for (peer, r) in host.send_to(&others, CHAT, k.to_be_bytes().to_vec()).await {
                    r.unwrap_or_else(|e| panic!("send to {peer}: {e}"));
                }
            }
        }
    });
    timeout(LIMIT, futures::future::join_all(sends))
        .await
        .unwrap();
    // Every receiver gets 1,000 from each of 19 senders, once each and in order.
    for (host, _, rx) in nodes.iter_mut() {
        let mut next_from: HashMap<PeerId, u32> = HashMap::new();
        let want = (HOSTS as u32 - 1) * MESSAGES;
        let mut got = 0;
        timeout(LIMIT, async {
            while got < want {
                if let Some(Heard::Received(from, m)) = rx.recv().await {
                    let k = u32::from_be_bytes(m[..].try_into().unwrap());
                    let expected = next_from.entry(from).or_insert(0);
                    assert_eq!(k, *expected, "from {from}: out of order or repeated");
                    *expected += 1;
                    got += 1;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} got {got} of {want}", host.id()));
        assert_eq!(next_from.len(), HOSTS - 1);
    }
    let stats = nodes[0].0.message_stats(CHAT).unwrap();
    assert_eq!(
        stats.messages_sent,
        u64::from(MESSAGES) * (HOSTS as u64 - 1)
    );
    assert_eq!(
        stats.messages_received,
        u64::from(MESSAGES) * (HOSTS as u64 - 1)
    );
    for (host, _, _) in nodes {
        host.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_fills_its_queue_and_the_others_go_on() {
    let _serial = SERIAL.lock().await;
    let config = MessageConfig {
        queue_len: 16,
        ..MessageConfig::default()
    };
    let (a, _, _a_rx) = node(false, config.clone()).await;
    let (stuck, stuck_addr, _stuck_rx) = node(true, config.clone()).await;
    let (fine, fine_addr, mut fine_rx) = node(false, config).await;
    a.connect(stuck.id(), &[stuck_addr]).await.unwrap();
    a.connect(fine.id(), &[fine_addr]).await.unwrap();
    wait_streams(&a, 2).await;
    // Fill the stuck peer's path: its handler stalls on the first message, its reader
    // fills the handler's queue, flow control fills the stream, then our queue fills.
    // Saturated once Full holds through twenty tries in a row.
    let big = vec![7u8; 64 * 1024];
    let mut full_in_a_row = 0;
    for _ in 0..10_000 {
        match a.try_send(stuck.id(), CHAT, big.clone()) {
            Ok(()) => full_in_a_row = 0,
            Err(SendError::Full(p)) => {
                assert_eq!(p, stuck.id());
                full_in_a_row += 1;
                if full_in_a_row == 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        full_in_a_row, 20,
        "the stuck peer's queue never stayed full"
    );
    // Broadcasting goes on: the stuck peer is told Full at once (a slot may free once,
    // as its writer takes the next message and blocks on it), the other gets all.
    const N: u32 = 2000;
    let mut stuck_ok = 0;
    for k in 0..N {
        let results = a
            .broadcast(CHAT, k.to_be_bytes().to_vec(), |_| true)
            .unwrap();
        for (peer, r) in results {
            if peer == stuck.id() {
                match r {
                    Ok(()) => stuck_ok += 1,
                    Err(e) => assert_eq!(e, SendError::Full(peer)),
                }
            } else if let Err(SendError::Full(_)) = r {
                // The fine peer's queue is momentarily full: wait for room.
                a.send(peer, CHAT, k.to_be_bytes().to_vec()).await.unwrap();
            } else {
                r.unwrap();
            }
        }
    }
    let mut expected = 0u32;
    while expected < N {
        if let Heard::Received(_, m) =
            next(&mut fine_rx, |h| matches!(h, Heard::Received(..))).await
        {
            assert_eq!(u32::from_be_bytes(m[..].try_into().unwrap()), expected);
            expected += 1;
        }
    }
    assert!(
        stuck_ok <= 2,
        "{stuck_ok} messages were queued for the stuck peer"
    );
    assert!(a.message_stats(CHAT).unwrap().queue_full >= u64::from(N) - 2);
    for h in [a, stuck, fine] {
        h.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_resets_the_stream_and_it_comes_back() {
    let _serial = SERIAL.lock().await;
    let config = MessageConfig {
        max_message_size: 1024,
        reopen_backoff: Duration::from_millis(20),
        ..MessageConfig::default()
    };
    let (a, a_addr, mut a_rx) = node(false, config.clone()).await;
    let (b, _, mut b_rx) = node(false, config).await;
    b.connect(a.id(), &[a_addr]).await.unwrap();
    wait_streams(&a, 1).await;
    wait_streams(&b, 1).await;
    // b sends a frame past the limit on a stream of its own: a resets that stream.
    let mut raw = b.new_stream(a.id(), &[CHAT]).await.unwrap();
    write_message(&mut raw, &vec![1u8; 4096]).await.unwrap();
    let mut buf = [0u8; 1];
    let read = timeout(LIMIT, raw.read(&mut buf)).await.unwrap();
    assert!(read.is_err() || read.unwrap() == 0, "the stream is reset");
    assert_eq!(a.message_stats(CHAT).unwrap().oversize, 1);
    // The connection stays; the message stream comes back, and messages go on both ways.
    assert!(a.network().best_conn(&b.id()).is_some());
    let mut delivered = false;
    for _ in 0..200 {
        if b.send(a.id(), CHAT, b"after".to_vec()).await.is_ok() {
            if let Ok(Heard::Received(_, m)) = timeout(Duration::from_millis(200), async {
                next(&mut a_rx, |h| matches!(h, Heard::Received(..))).await
            })
            .await
            {
                assert_eq!(&m[..], b"after");
                delivered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered, "messages go on after the reset");
    a.send(b.id(), CHAT, b"back".to_vec()).await.unwrap();
    let heard = next(&mut b_rx, |h| matches!(h, Heard::Received(..))).await;
    assert_eq!(heard, Heard::Received(a.id(), Bytes::from_static(b"back")));
    // Sending an oversized message is a typed error.
    assert_eq!(
        a.send(b.id(), CHAT, vec![0u8; 2048]).await,
        Err(SendError::TooLarge {
            len: 2048,
            max: 1024
        })
    );
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_dial_each_other_at_once_keep_one_stream() {
    let _serial = SERIAL.lock().await;
    for _ in 0..5 {
        let (a, a_addr, _a_rx) = node(false, MessageConfig::default()).await;
        let (b, b_addr, _b_rx) = node(false, MessageConfig::default()).await;
        let (ra, rb) = tokio::join!(
            a.connect(b.id(), std::slice::from_ref(&b_addr)),
            b.connect(a.id(), std::slice::from_ref(&a_addr))
        );
        ra.unwrap();
        rb.unwrap();
        wait_streams(&a, 1).await;
        wait_streams(&b, 1).await;
        // Let any second stream show up if one were opened.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for h in [&a, &b] {
            let stat = h.resource_manager().stat();
            let chat = stat.protocols.get(CHAT).copied().unwrap_or_default();
            assert_eq!(chat.streams(), 1, "{chat:?}");
        }
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_reaches_disconnected_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let (a, a_addr, mut a_rx) = node(false, MessageConfig::default()).await;
    let (b, _, mut b_rx) = node(false, MessageConfig::default()).await;
    b.connect(a.id(), &[a_addr]).await.unwrap();
    assert_eq!(
        next(&mut a_rx, |h| matches!(h, Heard::Connected(_))).await,
        Heard::Connected(b.id())
    );
    assert_eq!(
        next(&mut b_rx, |h| matches!(h, Heard::Connected(_))).await,
        Heard::Connected(a.id())
    );
    a.disconnect(b.id()).await;
    assert_eq!(
        next(&mut a_rx, |h| matches!(h, Heard::Disconnected(..))).await,
        Heard::Disconnected(b.id(), DisconnectReason::Local)
    );
    assert_eq!(
        next(&mut b_rx, |h| matches!(h, Heard::Disconnected(..))).await,
        Heard::Disconnected(a.id(), DisconnectReason::Remote)
    );
    assert!(matches!(
        a.send(b.id(), CHAT, b"gone".to_vec()).await,
        Err(SendError::NotConnected { .. })
    ));
    a.close().await;
    b.close().await;
}
