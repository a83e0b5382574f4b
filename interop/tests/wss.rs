//! Secure WebSocket (`/tls/ws`) between Strata's host and a real rust-libp2p 0.57 node in
//! this process, each dialing the other: web TLS with a certificate for 127.0.0.1 that
//! both trust, Noise and yamux inside, and a 1 MiB echo each way.

use libp2p::core::upgrade::Version;
use libp2p::{noise, tcp, websocket, yamux, SwarmBuilder, Transport as _};
use strata_core::{Multiaddr, Protocol};
use strata_host::{Host, HostBuilder, Security};
use strata_transport::{WsConfig, WsTlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

mod common;
use common::{echo_both_ways, start_libp2p, Libp2pNode, ECHO, LIMIT};

/// A self-signed web certificate for 127.0.0.1: (certificate DER, PKCS#8 key DER).
fn certificate() -> (Vec<u8>, Vec<u8>) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    (cert.cert.der().to_vec(), cert.key_pair.serialize_der())
}

/// A rust-libp2p node on secure WebSocket only, presenting and trusting `cert`.
fn libp2p_node(
    cert: &[u8],
    key: &[u8],
    setup: impl FnOnce(&mut libp2p::Swarm<libp2p_stream::Behaviour>),
) -> Libp2pNode {
    let (cert, key) = (cert.to_vec(), key.to_vec());
    let swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(move |identity| {
            let mut ws = websocket::Config::new(tcp::tokio::Transport::new(tcp::Config::default()));
            let mut tls = websocket::tls::Config::builder();
            tls.server(
                websocket::tls::PrivateKey::new(key.clone()),
                [websocket::tls::Certificate::new(cert.clone())],
            )
            .unwrap();
            tls.add_trust(&websocket::tls::Certificate::new(cert.clone()))
                .unwrap();
            ws.set_tls_config(tls.finish());
            ws.upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(identity).unwrap())
                .multiplex(yamux::Config::default())
                .boxed()
        })
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .build();
    start_libp2p(swarm, setup)
}

/// A Strata host on secure WebSocket only, presenting and trusting `cert`, echoing ECHO.
async fn strata_host(cert: &[u8], key: &[u8], listen: bool) -> Host {
    let der = rustls::pki_types::CertificateDer::from(cert.to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_vec().into());
    let tls = WsTlsConfig::default()
        .with_certificate(vec![der.clone()], key)
        .unwrap()
        .trusting([der])
        .unwrap();
    let mut builder = HostBuilder::new()
        .no_tcp()
        .no_quic()
        .security(vec![Security::Noise])
        .websocket(WsConfig {
            tls,
            ..WsConfig::default()
        });
    if listen {
        builder = builder.listen_on("/ip4/127.0.0.1/tcp/0/tls/ws".parse().unwrap());
    }
    let (host, outcomes) = timeout(LIMIT, builder.build()).await.unwrap().unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    host.set_stream_handler(ECHO, |mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() {
            let _ = stream.write_all(&buf).await;
            let _ = stream.close_write().await;
        }
    });
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strata_dials_rust_libp2p_over_secure_websocket() {
    let (cert, key) = certificate();
    let mut node = libp2p_node(&cert, &key, |swarm| {
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0/tls/ws".parse().unwrap())
            .unwrap();
    });
    let addr = node.listening().await;
    assert!(addr.to_string().ends_with("/tls/ws"), "{addr}");
    let host = strata_host(&cert, &key, false).await;
    timeout(LIMIT, host.connect(node.peer, &[addr]))
        .await
        .unwrap()
        .unwrap();
    echo_both_ways(&host, node.peer, &mut node.control).await;
    timeout(LIMIT, host.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_libp2p_dials_strata_over_secure_websocket() {
    let (cert, key) = certificate();
    let host = strata_host(&cert, &key, true).await;
    let addr: Multiaddr = host
        .addrs()
        .into_iter()
        .find(|a| a.to_string().ends_with("/tls/ws"))
        .expect("a /tls/ws listen address")
        .with(Protocol::P2p(host.id()));
    let mut node = libp2p_node(&cert, &key, |swarm| {
        swarm.dial(addr).unwrap();
    });
    assert_eq!(node.connected().await, host.id());
    echo_both_ways(&host, node.peer, &mut node.control).await;
    timeout(LIMIT, host.close()).await.unwrap();
}
