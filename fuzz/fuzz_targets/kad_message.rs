#![no_main]
use libfuzzer_sys::fuzz_target;

// A Kademlia stream's bytes: length-prefixed messages decoded one after another within
// the message limit, their peer lists bounded as they decode, then turned into peers.
fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((msg, used)) = strata_kad::proto::decode(rest, 1 << 20) {
        assert!(msg.closer_peers.len() <= strata_kad::proto::MAX_PEERS_PER_MESSAGE);
        assert!(msg.provider_peers.len() <= strata_kad::proto::MAX_PEERS_PER_MESSAGE);
        let _ = strata_kad::proto::peers_of(&msg.closer_peers);
        let _ = strata_kad::proto::peers_of(&msg.provider_peers);
        if used == 0 || used > rest.len() {
            break;
        }
        rest = &rest[used..];
    }
});
