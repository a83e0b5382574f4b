//! The peerstore: TTL expiry on tokio's paused clock, go-libp2p's add/set/update
//! semantics, the key check, per-peer caps, and concurrent use.

use std::time::Duration;

use strata_core::identity::keypair_from_seed;
use strata_core::{Multiaddr, PeerId, Protocol};
use strata_host::peerstore::{
    Peerstore, PeerstoreConfig, PeerstoreError, CONNECTED_ADDR_TTL, MAX_ADDRS_PER_PEER,
    MAX_PROTOCOLS_PER_PEER, PERMANENT_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, TEMP_ADDR_TTL,
};
use tokio::time::advance;

fn peer(seed: u64) -> PeerId {
    keypair_from_seed(seed).public().to_peer_id()
}

fn addr(i: u32) -> Multiaddr {
    format!("/ip4/10.0.{}.{}/tcp/4001", i / 256, i % 256)
        .parse()
        .unwrap()
}

const SEC: Duration = Duration::from_secs(1);

/// Addresses expire at their TTL; permanent ones never do.
#[tokio::test(start_paused = true)]
async fn addresses_expire_at_their_ttl() {
    let ps = Peerstore::new();
    let p = peer(1);
    ps.add_addrs(p, &[addr(1)], TEMP_ADDR_TTL);
    ps.add_addrs(p, &[addr(2)], RECENTLY_CONNECTED_ADDR_TTL);
    ps.add_addrs(p, &[addr(3)], PERMANENT_ADDR_TTL);
    assert_eq!(ps.addrs(&p), vec![addr(1), addr(2), addr(3)]);
    advance(TEMP_ADDR_TTL - SEC).await;
    assert_eq!(ps.addrs(&p).len(), 3);
    advance(2 * SEC).await;
    assert_eq!(ps.addrs(&p), vec![addr(2), addr(3)]);
    advance(RECENTLY_CONNECTED_ADDR_TTL).await;
    assert_eq!(ps.addrs(&p), vec![addr(3)]);
    advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert_eq!(ps.addrs(&p), vec![addr(3)]);
    assert_eq!(ps.peers_with_addrs(), vec![p]);
}

/// add never shortens a TTL; set replaces it (and zero removes); update moves the
/// addresses of one TTL to another, counted from now; clear forgets them.
#[tokio::test(start_paused = true)]
async fn add_set_update_clear_follow_go() {
    let ps = Peerstore::new();
    let p = peer(2);
    ps.add_addrs(p, &[addr(1)], RECENTLY_CONNECTED_ADDR_TTL);
    ps.add_addrs(p, &[addr(1)], TEMP_ADDR_TTL);
    advance(TEMP_ADDR_TTL + SEC).await;
    assert_eq!(ps.addrs(&p), vec![addr(1)], "add must not shorten");

    ps.set_addrs(p, &[addr(1)], TEMP_ADDR_TTL);
    advance(TEMP_ADDR_TTL + SEC).await;
    assert!(ps.addrs(&p).is_empty(), "set shortens");

    ps.add_addrs(p, &[addr(1), addr(2)], CONNECTED_ADDR_TTL);
    ps.add_addrs(p, &[addr(3)], PERMANENT_ADDR_TTL);
    ps.set_addrs(p, &[addr(2)], Duration::ZERO);
    assert_eq!(
        ps.addrs(&p),
        vec![addr(1), addr(3)],
        "set with zero removes"
    );

    // Disconnect: connected addresses become recently-connected, permanent ones stay.
    ps.update_addrs(p, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL);
    advance(RECENTLY_CONNECTED_ADDR_TTL + SEC).await;
    assert_eq!(ps.addrs(&p), vec![addr(3)]);

    ps.clear_addrs(&p);
    assert!(ps.addrs(&p).is_empty());
    assert!(ps.peers().is_empty());

    // A zero TTL adds nothing; a /p2p suffix of the peer itself is stripped; one naming
    // another peer is skipped.
    ps.add_addrs(p, &[addr(9)], Duration::ZERO);
    ps.add_addrs(
        p,
        &[
            addr(4).with(Protocol::P2p(p)),
            addr(5).with(Protocol::P2p(peer(3))),
        ],
        TEMP_ADDR_TTL,
    );
    assert_eq!(ps.addrs(&p), vec![addr(4)]);
}

/// Expired addresses go with gc, and so does what a peer's connections taught us, a grace
/// period after its last connection closed (or after its record was made, for a peer
/// never connected). A connected peer keeps everything.
#[tokio::test(start_paused = true)]
async fn gc_drops_expired_and_forgotten_peers() {
    let ps = Peerstore::new();
    let grace = ps.config().disconnect_grace;
    ps.add_addrs(peer(1), &[addr(1)], TEMP_ADDR_TTL);
    ps.peer_connected(peer(2));
    ps.set_agent_version(peer(2), "x/1");
    ps.add_addrs(peer(2), &[addr(2)], CONNECTED_ADDR_TTL);
    ps.set_agent_version(peer(3), "never/1");
    advance(grace + SEC).await;
    ps.gc();
    let mut peers = ps.peers();
    peers.sort();
    let mut want = vec![peer(1), peer(2)];
    want.sort();
    assert_eq!(
        peers, want,
        "the never-connected peer's version is forgotten"
    );
    advance(TEMP_ADDR_TTL).await;
    ps.gc();
    assert_eq!(
        ps.peers(),
        vec![peer(2)],
        "a connected peer keeps everything"
    );
    assert_eq!(ps.agent_version(&peer(2)).as_deref(), Some("x/1"));
    ps.peer_disconnected(peer(2));
    advance(grace - SEC).await;
    ps.gc();
    assert_eq!(ps.addrs(&peer(2)), vec![addr(2)], "within its grace period");
    advance(2 * SEC).await;
    ps.gc();
    assert!(ps.peers().is_empty() && ps.is_empty());
}

/// Past its bound, the store forgets the least recently seen peers without a
/// connection or a permanent address.
#[tokio::test(start_paused = true)]
async fn the_store_is_capped_by_evicting_idle_peers() {
    let ps = Peerstore::with_config(PeerstoreConfig {
        max_peers: 32,
        ..PeerstoreConfig::default()
    });
    ps.peer_connected(peer(1000));
    ps.add_addrs(peer(1001), &[addr(1)], PERMANENT_ADDR_TTL);
    for i in 0..200u64 {
        advance(Duration::from_millis(1)).await;
        ps.set_agent_version(peer(i), "x/1");
        assert!(ps.len() <= 32, "{} peers at {i}", ps.len());
    }
    assert!(ps.is_connected(&peer(1000)), "connected peers stay");
    assert_eq!(ps.addrs(&peer(1001)), vec![addr(1)], "permanent ones too");
    assert!(ps.agent_version(&peer(199)).is_some(), "the newest stay");
    assert!(ps.agent_version(&peer(0)).is_none(), "the oldest go");
}

/// A key that is not the peer's is refused; the right one is stored; an Ed25519 peer's
/// key is known from its ID alone.
#[test]
fn key_must_match_peer() {
    let ps = Peerstore::new();
    let k1 = keypair_from_seed(1).public();
    let k2 = keypair_from_seed(2).public();
    let p1 = k1.to_peer_id();
    match ps.add_pub_key(p1, k2.clone()) {
        Err(PeerstoreError::KeyMismatch { peer, actual }) => {
            assert_eq!(peer, p1);
            assert_eq!(actual, k2.to_peer_id());
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert!(ps.peers().is_empty(), "a refused key records nothing");
    ps.add_pub_key(p1, k1.clone()).unwrap();
    assert_eq!(ps.pub_key(&p1), Some(k1));
    // Never added, but inlined in the (identity-multihash) peer ID.
    assert_eq!(ps.pub_key(&k2.to_peer_id()), Some(k2));
}

/// Protocol book: set replaces, add extends, supports / first-supported answer in the
/// order asked, remove forgets; remove_peer forgets all but addresses (as go).
#[test]
fn protocols_and_metadata() {
    let ps = Peerstore::new();
    let p = peer(1);
    ps.set_protocols(p, &["/a", "/b", "/a"]).unwrap();
    assert_eq!(ps.get_protocols(&p), vec!["/a", "/b"]);
    ps.add_protocols(p, &["/c", "/b"]).unwrap();
    assert_eq!(ps.get_protocols(&p), vec!["/a", "/b", "/c"]);
    assert_eq!(
        ps.supports_protocols(&p, &["/c", "/x", "/a"]),
        vec!["/c", "/a"]
    );
    assert_eq!(
        ps.first_supported_protocol(&p, &["/x", "/b", "/a"])
            .as_deref(),
        Some("/b")
    );
    assert_eq!(ps.first_supported_protocol(&p, &["/x"]), None);
    ps.remove_protocols(&p, &["/a"]);
    assert_eq!(ps.get_protocols(&p), vec!["/b", "/c"]);
    ps.set_protocols(p, &["/z"]).unwrap();
    assert_eq!(ps.get_protocols(&p), vec!["/z"]);

    ps.set_agent_version(p, "go-libp2p/0.40");
    ps.set_protocol_version(p, "ipfs/0.1.0");
    ps.record_latency(p, Duration::from_millis(10));
    ps.add_addrs(p, &[addr(1)], PERMANENT_ADDR_TTL);
    assert_eq!(ps.agent_version(&p).as_deref(), Some("go-libp2p/0.40"));
    assert_eq!(ps.protocol_version(&p).as_deref(), Some("ipfs/0.1.0"));
    assert_eq!(ps.latency_ewma(&p), Some(Duration::from_millis(10)));

    ps.remove_peer(&p);
    assert!(ps.get_protocols(&p).is_empty());
    assert_eq!(ps.agent_version(&p), None);
    assert_eq!(ps.latency_ewma(&p), None);
    assert_eq!(ps.addrs(&p), vec![addr(1)]);
}

/// A peer cannot make us hold more than the caps: protocols past the cap are refused
/// (changing nothing), addresses past the cap replace only shorter-lived ones.
#[tokio::test(start_paused = true)]
async fn caps_are_enforced() {
    let ps = Peerstore::new();
    let p = peer(1);
    let many: Vec<String> = (0..=MAX_PROTOCOLS_PER_PEER)
        .map(|i| format!("/p/{i}"))
        .collect();
    assert!(matches!(
        ps.set_protocols(p, &many),
        Err(PeerstoreError::TooManyProtocols { .. })
    ));
    assert!(ps.get_protocols(&p).is_empty());
    ps.set_protocols(p, &many[..MAX_PROTOCOLS_PER_PEER])
        .unwrap();
    assert!(ps.add_protocols(p, &["/one-more"]).is_err());
    assert_eq!(ps.get_protocols(&p).len(), MAX_PROTOCOLS_PER_PEER);
    ps.add_protocols(p, &["/p/0"]).unwrap(); // already known: fine

    // Fill with connected addresses, then flood with temporary ones: none gets in.
    let connected: Vec<Multiaddr> = (0..MAX_ADDRS_PER_PEER as u32).map(addr).collect();
    ps.add_addrs(p, &connected, CONNECTED_ADDR_TTL);
    let flood: Vec<Multiaddr> = (1000..3000).map(addr).collect();
    ps.add_addrs(p, &flood, TEMP_ADDR_TTL);
    assert_eq!(ps.addrs(&p), connected);

    // Temporary ones are displaced by longer-lived ones, and never exceed the cap.
    let q = peer(2);
    ps.add_addrs(q, &flood, TEMP_ADDR_TTL);
    assert_eq!(ps.addrs(&q).len(), MAX_ADDRS_PER_PEER);
    ps.add_addrs(q, &[addr(5000)], PERMANENT_ADDR_TTL);
    let got = ps.addrs(&q);
    assert_eq!(got.len(), MAX_ADDRS_PER_PEER);
    assert!(got.contains(&addr(5000)));
}

/// 16 tasks on a multi-threaded runtime read and write the same and different peers at
/// once; every write lands and nothing deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_use_from_16_tasks() {
    let ps = Peerstore::new();
    let shared = peer(999);
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let ps = ps.clone();
        tasks.push(tokio::spawn(async move {
            let own = peer(u64::from(t) + 1);
            for i in 0..200u32 {
                ps.add_addrs(own, &[addr(i % 32)], RECENTLY_CONNECTED_ADDR_TTL);
                ps.add_addrs(shared, &[addr(t)], RECENTLY_CONNECTED_ADDR_TTL);
                let _ = ps.add_protocols(shared, &[format!("/t/{t}")]);
                ps.set_protocols(own, &[format!("/own/{i}")]).unwrap();
                ps.record_latency(own, Duration::from_micros(u64::from(i) + 1));
                let _ = ps.addrs(&shared);
                let _ = ps.supports_protocols(&shared, &["/t/0"]);
                let _ = ps.peers();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            own
        }));
    }
    let mut owns = Vec::new();
    for t in tasks {
        owns.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for own in &owns {
        assert_eq!(ps.addrs(own).len(), 32);
        assert_eq!(ps.get_protocols(own), vec!["/own/199".to_string()]);
        assert!(ps.latency_ewma(own).is_some());
    }
    assert_eq!(ps.addrs(&shared).len(), 16);
    assert_eq!(ps.get_protocols(&shared).len(), 16);
    assert_eq!(ps.peers().len(), 17);
}
