#![no_main]
//! Noise transport framing: the bytes after a finished handshake, as a peer would send
//! them, read through the encrypted stream. The first byte picks how they are built:
//! raw (framing and decryption errors), or sealed by the real peer and then corrupted at
//! a position the input chooses (so decryption, not only framing, is reached).

use libfuzzer_sys::fuzz_target;
use strata_upgrader::security::noise::framed::{encode_len, NoiseStream, MAX_PLAINTEXT_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// A finished XX handshake, in memory: (initiator, responder).
fn transport_pair() -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = PARAMS.parse().unwrap();
    let builder = || snow::Builder::new(params.clone());
    let ki = builder().generate_keypair().unwrap();
    let kr = builder().generate_keypair().unwrap();
    let mut i = builder()
        .local_private_key(&ki.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = builder()
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m, mut p) = ([0u8; 1024], [0u8; 1024]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    (i.into_transport_mode().unwrap(), r.into_transport_mode().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut sender, receiver) = transport_pair();
    let wire = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        // Seal the input as plaintext frames, then flip the byte the input names.
        let mut wire = Vec::new();
        let mut frame = vec![0u8; 65535];
        for chunk in rest.chunks(MAX_PLAINTEXT_LEN.min(4096)) {
            let n = sender.write_message(chunk, &mut frame).unwrap();
            wire.extend_from_slice(&encode_len(n));
            wire.extend_from_slice(&frame[..n]);
        }
        if !wire.is_empty() {
            let at = usize::from(mode) * 7 % wire.len();
            wire[at] ^= mode;
        }
        wire
    };
    strata_fuzz::block_on(async move {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let writer = async move {
            let _ = peer.write_all(&wire).await;
            let _ = peer.shutdown().await;
            peer
        };
        let reader = async move {
            let mut stream = NoiseStream::new(ours, receiver);
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
        };
        let _ = tokio::join!(writer, reader);
    });
});
