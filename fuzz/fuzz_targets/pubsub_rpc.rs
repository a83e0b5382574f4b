#![no_main]
use libfuzzer_sys::fuzz_target;
use strata_pubsub::proto::{decode_rpc, DecodeLimits};
use strata_pubsub::router::{PeerKind, Router};
use strata_pubsub::GossipsubConfig;

// A pubsub RPC body: decoded within the caps, re-encoded and decoded to the same RPC,
// then handed to a router (as a v1.2 peer subscribed to what it names) with a heartbeat
// after it: nothing may panic, and no list may pass its cap.
fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let Ok(rpc) = decode_rpc(data, &limits) else {
        return;
    };
    assert!(rpc.subscriptions.len() <= limits.subscriptions);
    assert!(rpc.publish.len() <= limits.messages);
    if let Some(c) = &rpc.control {
        assert!(c.ihave.iter().map(|h| h.ids.len()).sum::<usize>() <= limits.ihave_ids);
        assert!(c.iwant.iter().map(|w| w.ids.len()).sum::<usize>() <= limits.iwant_ids);
    }
    let framed = rpc.encode();
    let mut body: &[u8] = &framed;
    let _ = prost::encoding::decode_varint(&mut body).unwrap();
    let mut again = decode_rpc(body, &limits).unwrap();
    again.skipped = rpc.skipped;
    assert_eq!(again, rpc);

    let now = tokio::time::Instant::now();
    let local = strata_core::identity::peer_id_from_seed(1);
    let peer = strata_core::identity::peer_id_from_seed(2);
    let memory = strata_core::ScopeMemory::unlimited();
    let mut router = Router::new(local, GossipsubConfig::default(), &memory, now);
    router.add_peer(peer, PeerKind::Gossipsub12, true, None, &memory);
    router.join("a", now);
    for s in &rpc.subscriptions {
        router.join(&s.topic, now);
    }
    router.handle_rpc(peer, rpc, now);
    router.heartbeat(now + std::time::Duration::from_secs(1));
    let _ = router.take_outputs();
});
