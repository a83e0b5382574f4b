//! What strangers feed a host never stays: 10,000 peers with fresh keys connect, identify
//! and leave, and the peerstore shrinks back once their grace period ends; a peer that
//! pushes identify again and again with new addresses gets them capped, and its
//! undialable ones are never stored or dialed.

use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_core::sys::rss_kib;

use strata_core::identity::generate_ed25519;
use strata_core::{CapableConn, Keypair, Multiaddr, PeerId, Transport};
use strata_host::identify::{
    send_identify, IdentifyInfo, IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL,
};
use strata_host::{Host, HostBuilder, HostEvent, PeerstoreConfig};
use strata_swarm::SwarmConfig;
use strata_transport::{TcpConfig, TcpTransport};
use strata_upgrader::multistream::{dialer_select, listener_select};
use strata_upgrader::{NoiseTransport, StreamMuxer, Upgraded, Upgrader, UpgraderConfig, Yamux};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

/// A bare client for one fresh identity: TCP, Noise, yamux, and nothing else.
fn bare_client(key: &Keypair) -> Upgraded<TcpTransport> {
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let up = Upgrader::new(
        key.public().to_peer_id(),
        vec![Arc::new(NoiseTransport::new(key.clone()))],
        vec![muxer],
        UpgraderConfig::default(),
    )
    .unwrap();
    Upgraded::new(TcpTransport::new(TcpConfig::default()), Arc::new(up))
}

fn info_of(key: &Keypair, addrs: Vec<Multiaddr>) -> IdentifyInfo {
    IdentifyInfo {
        public_key: key.public(),
        protocol_version: "ipfs/0.1.0".into(),
        agent_version: "churn/1".into(),
        listen_addrs: addrs,
        observed_addr: None,
        protocols: vec!["/churn/1".into()],
    }
}

/// Answers the host's identify request on `conn` with `info`.
async fn answer_identify(conn: &dyn CapableConn, info: &IdentifyInfo) {
    let mut s = conn.accept_stream().await.unwrap();
    let picked = listener_select(
        &mut s,
        |p| p == IDENTIFY_PROTOCOL,
        || vec![IDENTIFY_PROTOCOL.to_string()],
    )
    .await
    .unwrap();
    assert_eq!(picked, IDENTIFY_PROTOCOL);
    send_identify(&mut s, info).await.unwrap();
}

/// One stranger: connects, is identified, leaves.
async fn stranger(server: &Multiaddr, host: PeerId) {
    let key = generate_ed25519();
    let client = bare_client(&key);
    let conn = client.dial(server, Some(host)).await.unwrap();
    answer_identify(conn.as_ref(), &info_of(&key, Vec::new())).await;
    conn.close().await;
}

async fn churn_host(max_peers: usize, grace: Duration) -> (Host, Multiaddr) {
    let swarm = SwarmConfig {
        peerstore: PeerstoreConfig {
            max_peers,
            disconnect_grace: grace,
        },
        maintenance_interval: Duration::from_millis(100),
        ..SwarmConfig::default()
    };
    // Every stranger comes from 127.0.0.1 here; the per-address caps are the flood
    // tests' business.
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .resource_limits(limits)
        .swarm_config(swarm)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    (host, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_strangers_leave_nothing_behind() {
    let max_peers = 1000;
    let grace = Duration::from_secs(1);
    let (host, addr) = churn_host(max_peers, grace).await;
    let mut events = host.events();
    let identified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = identified.clone();
    let count_task = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if matches!(e, HostEvent::Identified { .. }) {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let host_id = host.id();
    let mut rss_after_warmup = 0;
    let mut peak = 0;
    let start = Instant::now();
    for round in 0..50 {
        let batch = (0..200).map(|_| stranger(&addr, host_id));
        // 16 at a time: a busy but ordinary stream of newcomers.
        let mut batch = futures::stream::iter(batch).buffer_unordered(16);
        use futures::StreamExt;
        while batch.next().await.is_some() {}
        peak = peak.max(host.peerstore().len());
        if round == 9 {
            rss_after_warmup = rss_kib(None);
        }
    }
    let took = start.elapsed();
    let rss_end = rss_kib(None);
    eprintln!(
        "10,000 strangers in {took:?}; peerstore peak {peak}; RSS {rss_after_warmup} KiB after 2,000, {rss_end} KiB after 10,000"
    );
    assert!(peak <= max_peers, "peerstore peaked at {peak}");
    assert!(
        identified.load(std::sync::atomic::Ordering::Relaxed) >= 9_000,
        "most strangers were identified"
    );
    // Memory does not grow with the count: 8,000 more peers after the warm-up may not
    // add more than a few MiB (what a leak of even 1 KiB each would exceed).
    assert!(
        rss_end < rss_after_warmup + 8 * 1024,
        "RSS grew from {rss_after_warmup} KiB to {rss_end} KiB"
    );
    // Once their grace period has passed, the peerstore is empty again.
    timeout(LIMIT, async {
        while !host.peerstore().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} peers left in the peerstore", host.peerstore().len()));
    let stat = host.resource_manager().stat();
    assert!(stat.peers.is_empty(), "{stat:?}");
    count_task.abort();
    host.close().await;
}

/// Waits until the host has recorded one more identify from `peer`.
async fn recorded(events: &mut tokio::sync::broadcast::Receiver<HostEvent>, peer: PeerId) {
    timeout(LIMIT, async {
        loop {
            if let Ok(HostEvent::Identified { peer: p, .. }) = events.recv().await {
                if p == peer {
                    return;
                }
            }
        }
    })
    .await
    .expect("the identify is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_address_floods_are_capped_and_junk_is_never_stored_or_dialed() {
    let (host, addr) = churn_host(4096, Duration::from_secs(60)).await;
    let key = generate_ed25519();
    let peer = key.public().to_peer_id();
    let client = bare_client(&key);
    let conn = client.dial(&addr, Some(host.id())).await.unwrap();
    let junk: Vec<Multiaddr> = [
        "/ip4/0.0.0.0/tcp/4001",
        "/ip6/::/tcp/4001",
        "/ip4/224.0.0.251/udp/5353/quic-v1",
        "/ip4/169.254.1.1/tcp/4001",
        "/ip4/255.255.255.255/tcp/1",
        "/ip6/fe80::1/tcp/4001",
        "/ip6/ff02::1/tcp/4001",
        "/memory/77",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let mut events = host.events();
    answer_identify(conn.as_ref(), &info_of(&key, junk.clone())).await;
    recorded(&mut events, peer).await;
    // 200 pushes of 50 new addresses each: 10,000 addresses in all, each push recorded
    // before the next is sent so that the last one is known.
    for round in 0..200u32 {
        let mut addrs: Vec<Multiaddr> = (0..50u32)
            .map(|i| {
                let n = round * 50 + i;
                format!(
                    "/ip4/10.{}.{}.{}/tcp/4001",
                    n >> 16,
                    (n >> 8) & 0xff,
                    n & 0xff
                )
                .parse()
                .unwrap()
            })
            .collect();
        addrs.extend(junk.iter().cloned());
        let mut s = conn.open_stream().await.unwrap();
        dialer_select(&mut s, &[IDENTIFY_PUSH_PROTOCOL])
            .await
            .unwrap();
        send_identify(&mut s, &info_of(&key, addrs)).await.unwrap();
        recorded(&mut events, peer).await;
    }
    let stored = host.peerstore().addrs(&peer);
    assert!(
        stored.len() <= strata_host::peerstore::MAX_ADDRS_PER_PEER,
        "{} addresses stored",
        stored.len()
    );
    for j in &junk {
        assert!(!stored.contains(j), "{j} was stored");
    }
    // The last push's addresses are among those kept.
    assert!(stored.contains(&"/ip4/10.0.39.15/tcp/4001".parse().unwrap()));
    conn.close().await;
    timeout(LIMIT, async {
        loop {
            if let Ok(HostEvent::Swarm(strata_swarm::SwarmEvent::ConnectionClosed {
                peer: p,
                ..
            })) = events.recv().await
            {
                if p == peer {
                    return;
                }
            }
        }
    })
    .await
    .expect("the host sees the peer leave");
    // Junk put in by hand is refused unsent when the peer is dialed. (The 10.x addresses
    // are cleared first: they are fine, but dialing them here would only time out.)
    host.peerstore().clear_addrs(&peer);
    host.peerstore()
        .add_addrs(peer, &junk, strata_host::TEMP_ADDR_TTL);
    let err = host.connect(peer, &[]).await.unwrap_err().to_string();
    for j in &junk {
        assert!(
            err.contains(&format!("[{j}] address filtered out"))
                || err.contains(&format!("[{j}] no transport")),
            "{j} was dialed: {err}"
        );
    }
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_filter_keeps_refused_addresses_out_of_the_store_and_off_the_wire() {
    let mut limits = strata_rcmgr::LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .resource_limits(limits)
        .addr_filter(|a: &Multiaddr| !a.to_string().starts_with("/ip4/10."))
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    let key = generate_ed25519();
    let peer = key.public().to_peer_id();
    let conn = bare_client(&key)
        .dial(&addr, Some(host.id()))
        .await
        .unwrap();
    let mut events = host.events();
    let announced: Vec<Multiaddr> = vec![
        "/ip4/10.1.2.3/tcp/4001".parse().unwrap(),
        "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
    ];
    answer_identify(conn.as_ref(), &info_of(&key, announced)).await;
    recorded(&mut events, peer).await;
    let stored = host.peerstore().addrs(&peer);
    assert!(stored.contains(&"/ip4/127.0.0.1/tcp/4001".parse().unwrap()));
    assert!(
        !stored.iter().any(|a| a.to_string().starts_with("/ip4/10.")),
        "{stored:?}"
    );
    // An address given to connect by hand is refused unsent, too.
    let other = generate_ed25519().public().to_peer_id();
    let err = host
        .connect(other, &["/ip4/10.9.9.9/tcp/4001".parse().unwrap()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("address filtered out"), "{err}");
    conn.close().await;
    host.close().await;
}
