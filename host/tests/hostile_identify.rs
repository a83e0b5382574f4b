//! Identify frames from a valid message, mutated: the decoder refuses them or yields a
//! message within its bounds; it never panics and never keeps more than the caps.

use proptest::prelude::*;
use strata_core::identity::keypair_from_seed;
use strata_core::Multiaddr;
use strata_host::identify::{decode_frames, encode_frame, IdentifyInfo};
use strata_host::peerstore::{MAX_ADDRS_PER_PEER, MAX_PROTOCOLS_PER_PEER};

fn valid_frames() -> Vec<u8> {
    let info = IdentifyInfo {
        public_key: keypair_from_seed(3).public(),
        protocol_version: "ipfs/0.1.0".into(),
        agent_version: "strata/test".into(),
        listen_addrs: vec![
            "/ip4/10.0.0.1/tcp/4001".parse::<Multiaddr>().unwrap(),
            "/ip6/2001:db8::1/udp/4001/quic-v1".parse().unwrap(),
        ],
        observed_addr: Some("/ip4/10.0.0.2/tcp/5555".parse().unwrap()),
        protocols: vec!["/ipfs/id/1.0.0".into(), "/ipfs/ping/1.0.0".into()],
    };
    let mut frames = encode_frame(&info).unwrap();
    // A second frame, as go-libp2p splits large messages.
    frames.extend(encode_frame(&info).unwrap());
    frames
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn mutated_identify_frames_are_refused_or_bounded(
        flips in proptest::collection::vec((any::<usize>(), 1..=255u8), 1..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut frames = valid_frames();
        prop_assert!(decode_frames(&frames).is_ok());
        for (i, b) in flips {
            let i = i % frames.len();
            frames[i] ^= b;
        }
        if let Some(cut) = cut {
            frames.truncate(cut % (frames.len() + 1));
        }
        if let Ok(info) = decode_frames(&frames) {
            prop_assert!(info.listen_addrs.len() <= MAX_ADDRS_PER_PEER);
            prop_assert!(info.protocols.len() <= MAX_PROTOCOLS_PER_PEER);
        }
    }
}
