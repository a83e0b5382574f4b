//! Plaintext over memory connections.

use std::time::Duration;

use strata_core::{BoxRawConn, Keypair, RawListener, SecurityError};
use strata_transport::MemoryTransport;
use strata_upgrader::security::plaintext::encode_exchange;
use strata_upgrader::{PlaintextTransport, SecureTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn memory_pair() -> (BoxRawConn, BoxRawConn) {
    let t = MemoryTransport::new();
    let mut l = t.listen_memory(&"/memory/0".parse().unwrap()).unwrap();
    let addr = RawListener::multiaddr(&l).clone();
    let dialed = t.dial_memory(&addr).unwrap();
    let accepted = RawListener::accept(&mut l).await.unwrap();
    (Box::new(dialed), accepted)
}

#[tokio::test]
async fn handshake_exchanges_ids_and_keeps_data_behind_the_exchange() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let dialer = PlaintextTransport::insecure_for_tests(a.clone());
    let listener = PlaintextTransport::insecure_for_tests(b.clone());
    assert_eq!(dialer.protocol_id(), "/plaintext/2.0.0");
    let (dialed, accepted) = memory_pair().await;
    let yamux = vec!["/yamux/1.0.0".to_string()];
    let (out, inb) = tokio::join!(
        dialer.secure_outbound(dialed, Some(b.public().to_peer_id()), &yamux),
        listener.secure_inbound(accepted, &yamux),
    );
    let (mut out, mut inb) = (out.unwrap(), inb.unwrap());
    assert_eq!(out.remote_peer, b.public().to_peer_id());
    assert_eq!(out.remote_public_key, b.public());
    assert_eq!(inb.remote_peer, a.public().to_peer_id());
    assert_eq!(inb.remote_public_key, a.public());
    assert_eq!(out.early_muxer, None);
    assert_eq!(inb.early_muxer, None);
    out.io.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    inb.io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
}

#[tokio::test]
async fn application_data_in_the_same_write_as_the_exchange_is_not_lost() {
    let peer = Keypair::generate_ed25519();
    let listener = PlaintextTransport::insecure_for_tests(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    let mut bytes = encode_exchange(&peer.public());
    bytes.extend_from_slice(b"early data");
    dialed.write_all(&bytes).await.unwrap();
    let mut inb = listener.secure_inbound(accepted, &[]).await.unwrap();
    assert_eq!(inb.remote_peer, peer.public().to_peer_id());
    let mut got = [0u8; 10];
    inb.io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early data");
}

#[tokio::test]
async fn wrong_expected_peer_is_a_peer_id_mismatch() {
    let b = Keypair::generate_ed25519();
    let wanted = Keypair::generate_ed25519().public().to_peer_id();
    let dialer = PlaintextTransport::insecure_for_tests(Keypair::generate_ed25519());
    let listener = PlaintextTransport::insecure_for_tests(b.clone());
    let (dialed, accepted) = memory_pair().await;
    let (out, _inb) = tokio::join!(
        dialer.secure_outbound(dialed, Some(wanted), &[]),
        listener.secure_inbound(accepted, &[]),
    );
    match out {
        Err(SecurityError::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, wanted);
            assert_eq!(actual, b.public().to_peer_id());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_length_prefix_is_refused() {
    let listener = PlaintextTransport::insecure_for_tests(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    // uvarint 1_000_000, and nothing behind it: refused without waiting for the body.
    dialed.write_all(&[0xc0, 0x84, 0x3d]).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        listener.secure_inbound(accepted, &[]),
    )
    .await
    .expect("an oversized prefix must be refused at once");
    assert!(
        matches!(result, Err(SecurityError::InvalidPayload(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn truncated_exchange_is_an_io_error() {
    let listener = PlaintextTransport::insecure_for_tests(Keypair::generate_ed25519());
    let (mut dialed, accepted) = memory_pair().await;
    dialed.write_all(&[40, 1, 2, 3]).await.unwrap();
    dialed.shutdown().await.unwrap();
    let result = listener.secure_inbound(accepted, &[]).await;
    assert!(matches!(result, Err(SecurityError::Io(_))), "{result:?}");
}
