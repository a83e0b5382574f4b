//! Strata's QUIC transport against a real rust-libp2p node (libp2p-quic) in this process:
//! both directions, peer IDs checked, multistream-select on a QUIC stream, 1 MiB echoed.

use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{StreamProtocol, Swarm, SwarmBuilder};
use strata_core::{SecurityError, Transport};
use strata_transport::{QuicConfig, QuicTransport};
use tokio::time::timeout;

mod common;
use common::*;

fn libp2p_swarm() -> Swarm<libp2p_stream::Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn strata() -> QuicTransport {
    QuicTransport::new(
        strata_core::identity::generate_ed25519(),
        QuicConfig::default(),
    )
    .unwrap()
}

/// Strata dials a rust-libp2p QUIC listener with its expected peer ID and echoes 1 MiB
/// through rust-libp2p's echo handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_quic() {
    let mut node = start_libp2p(libp2p_swarm(), |s| {
        s.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
    });
    let addr = node.listening().await;
    let t = strata();
    let conn = timeout(LIMIT, t.dial(&addr, Some(node.peer)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.remote_peer(), node.peer);
    assert_eq!(node.connected().await, t.local_peer());
    assert_eq!(conn.state().transport, "quic-v1");
    strata_echo_client(&conn).await;
    conn.close().await;
    t.close().await;
}

/// rust-libp2p dials a Strata QUIC listener (with the /p2p suffix, checked on its side)
/// and opens a stream; Strata answers multistream-select and echoes 1 MiB. Then Strata
/// opens a stream the other way on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_quic() {
    let t = strata();
    let mut listener = t
        .listen(&"/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .await
        .unwrap();
    let target = listener
        .multiaddr()
        .clone()
        .with(strata_core::Protocol::P2p(t.local_peer()));
    let mut node = start_libp2p(libp2p_swarm(), |s| s.dial(target).unwrap());
    let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    assert_eq!(conn.remote_peer(), node.peer);
    assert_eq!(node.connected().await, t.local_peer());

    let server_conn = conn.clone();
    let server = tokio::spawn(strata_echo_server(server_conn));
    let mut stream = timeout(
        LIMIT,
        node.control
            .open_stream(t.local_peer(), StreamProtocol::new(ECHO)),
    )
    .await
    .unwrap()
    .unwrap();
    let data = payload();
    stream.write_all(&data).await.unwrap();
    stream.close().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "the echo must be intact");

    strata_echo_client(&conn).await;
    server.abort();
    listener.close().await;
    t.close().await;
}

/// Dialing rust-libp2p with another expected peer is a typed PeerIdMismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_peer_against_rust_libp2p_quic() {
    let mut node = start_libp2p(libp2p_swarm(), |s| {
        s.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
    });
    let addr = node.listening().await;
    let t = strata();
    let wrong = strata_core::identity::generate_ed25519()
        .public()
        .to_peer_id();
    let err = timeout(LIMIT, t.dial(&addr, Some(wrong)))
        .await
        .unwrap()
        .err()
        .expect("the dial must fail");
    match err.security_error() {
        Some(SecurityError::PeerIdMismatch { expected, actual }) => {
            assert_eq!(*expected, wrong);
            assert_eq!(*actual, node.peer);
        }
        _ => panic!("expected PeerIdMismatch, got {err:?}"),
    }
    t.close().await;
}
