//! Strata's upgrader against a real rust-libp2p node in this process: TCP with TLS or
//! Noise, yamux, multistream-select on streams; both directions.

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{noise, tcp, tls, yamux, StreamProtocol, Swarm, SwarmBuilder};
use strata_core::{Keypair, SecurityError, Transport};
use strata_transport::{TcpConfig, TcpTransport};
use strata_upgrader::muxer::yamux::Yamux;
use strata_upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
};
use tokio::time::timeout;

mod common;
use common::*;

#[derive(Clone, Copy, Debug)]
enum Sec {
    Tls,
    Noise,
}

fn libp2p_swarm(sec: Sec) -> Swarm<libp2p_stream::Behaviour> {
    let builder = SwarmBuilder::with_new_identity().with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    match sec {
        Sec::Tls => builder
            .with_tcp(
                tcp::Config::default(),
                tls::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Sec::Noise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(idle)
            .build(),
    }
}

fn strata(sec: Sec) -> (Keypair, Upgraded<TcpTransport>) {
    strata_offering(&[sec])
}

/// A Strata upgrader offering `secs` in this order (optimistic security negotiation on).
fn strata_offering(secs: &[Sec]) -> (Keypair, Upgraded<TcpTransport>) {
    let key = strata_core::identity::generate_ed25519();
    let security: Vec<Arc<dyn SecureTransport>> = secs
        .iter()
        .map(|sec| -> Arc<dyn SecureTransport> {
            match sec {
                Sec::Tls => Arc::new(TlsTransport::new(key.clone()).unwrap()),
                Sec::Noise => Arc::new(NoiseTransport::new(key.clone())),
            }
        })
        .collect();
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let up = Upgrader::new(
        key.public().to_peer_id(),
        security,
        vec![muxer],
        UpgraderConfig::default(),
    )
    .unwrap();
    (
        key,
        Upgraded::new(TcpTransport::new(TcpConfig::default()), Arc::new(up)),
    )
}

#[tokio::test]
async fn strata_dials_rust_libp2p() {
    for sec in [Sec::Tls, Sec::Noise] {
        let mut node = start_libp2p(libp2p_swarm(sec), |s| {
            s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
        });
        let addr = node.listening().await;
        let (key, t) = strata(sec);
        let conn = timeout(LIMIT, t.dial(&addr, Some(node.peer)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.remote_peer(), node.peer, "{sec:?}");
        assert_eq!(node.connected().await, key.public().to_peer_id(), "{sec:?}");
        // rust-libp2p 0.57 offers no muxer in TLS ALPN or the Noise extensions, so this
        // exercises the fallback: a multistream-select round for the muxer.
        assert!(!conn.state().used_early_muxer_negotiation, "{sec:?}");
        assert_eq!(conn.state().muxer, "/yamux/1.0.0");
        strata_echo_client(&conn).await;
        conn.close().await;
    }
}

/// rust-libp2p cannot skip a handshake pipelined behind a proposal it refuses: the
/// optimistic dial breaks that connection, and the retry leads with the protocol it
/// speaks. The next dial to the same address leads with it at once.
#[tokio::test]
async fn strata_offering_both_reaches_rust_libp2p_speaking_only_the_second() {
    for (offered, spoken, id) in [
        ([Sec::Tls, Sec::Noise], Sec::Noise, "/noise"),
        ([Sec::Noise, Sec::Tls], Sec::Tls, "/tls/1.0.0"),
    ] {
        let mut node = start_libp2p(libp2p_swarm(spoken), |s| {
            s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
        });
        let addr = node.listening().await;
        let (_, t) = strata_offering(&offered);
        for _ in 0..2 {
            let conn = timeout(LIMIT, t.dial(&addr, Some(node.peer)))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{offered:?} to {spoken:?}: {e}"));
            assert_eq!(conn.state().security, id);
            strata_echo_client(&conn).await;
            conn.close().await;
        }
    }
}

#[tokio::test]
async fn rust_libp2p_dials_strata() {
    for sec in [Sec::Tls, Sec::Noise] {
        let (key, t) = strata(sec);
        let mut listener = t
            .listen(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
        let target = listener
            .multiaddr()
            .clone()
            .with(strata_core::Protocol::P2p(key.public().to_peer_id()));
        let mut node = start_libp2p(libp2p_swarm(sec), |s| s.dial(target).unwrap());
        let conn = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        assert_eq!(conn.remote_peer(), node.peer, "{sec:?}");
        assert_eq!(node.connected().await, key.public().to_peer_id(), "{sec:?}");

        // Strata serves the echo protocol; rust-libp2p opens the stream.
        let server = tokio::spawn(strata_echo_server(conn));
        let mut stream = timeout(
            LIMIT,
            node.control
                .open_stream(key.public().to_peer_id(), StreamProtocol::new(ECHO)),
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
        assert!(back == data, "{sec:?}: the echo must be intact");
        server.abort();
    }
}

#[tokio::test]
async fn wrong_expected_peer_against_rust_libp2p_is_a_mismatch() {
    for sec in [Sec::Tls, Sec::Noise] {
        let mut node = start_libp2p(libp2p_swarm(sec), |s| {
            s.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
        });
        let addr = node.listening().await;
        let (_, t) = strata(sec);
        let wrong = strata_core::identity::generate_ed25519()
            .public()
            .to_peer_id();
        let err = t
            .dial(&addr, Some(wrong))
            .await
            .err()
            .expect("the dial must fail");
        match err.security_error() {
            Some(SecurityError::PeerIdMismatch { expected, actual }) => {
                assert_eq!(*expected, wrong);
                assert_eq!(*actual, node.peer);
            }
            _ => panic!("{sec:?}: expected PeerIdMismatch, got {err:?}"),
        }
    }
}
