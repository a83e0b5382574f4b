//! Secure WebSocket (`/tls/ws`, `/wss`) over real loopback sockets, with a certificate
//! made for the test and trusted by the dialer: bytes both ways, the addresses it
//! reports, and clear errors when the dialer does not trust the server, speaks plain
//! WebSocket to it, or has no TLS settings.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strata_core::{Multiaddr, RawTransport, TransportError};
use strata_transport::{TcpConfig, WsConfig, WsTlsConfig, WsTransport};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

mod common;
use common::echo_once;

const LIMIT: Duration = Duration::from_secs(10);

/// A self-signed web certificate for `localhost` and 127.0.0.1: (the settings of a
/// listener presenting it, the settings of a dialer trusting it).
fn web_tls() -> (WsTlsConfig, WsTlsConfig) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    (
        WsTlsConfig::default()
            .with_certificate(vec![der.clone()], key)
            .unwrap(),
        WsTlsConfig::default().trusting([der]).unwrap(),
    )
}

fn transport(tls: WsTlsConfig) -> WsTransport {
    WsTransport::new(WsConfig {
        tcp: TcpConfig::default().reuseport(false),
        tls,
        ..WsConfig::default()
    })
}

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn bytes_cross_secure_websocket_in_every_spelling() {
    let (server, client) = web_tls();
    let t = transport(WsTlsConfig {
        server: server.server,
        client: client.client,
    });
    // The certificate names the IP address, checked when dialing by IP.
    echo_once(&t, "/ip4/127.0.0.1/tcp/0/tls/ws", Multiaddr::clone).await;
    echo_once(&t, "/ip4/127.0.0.1/tcp/0/wss", Multiaddr::clone).await;
    // The name in /sni/ is the one checked: the certificate also names localhost.
    echo_once(&t, "/ip4/127.0.0.1/tcp/0/tls/ws", |addr| {
        let port = addr.to_string().split('/').nth(4).unwrap().to_owned();
        ma(&format!("/ip4/127.0.0.1/tcp/{port}/tls/sni/localhost/ws"))
    })
    .await;
}

/// A `/tls/ws` listener with a fresh certificate: its address, and the outcome of the
/// first read on the first connection it accepts.
async fn secure_listener_reading_once(
) -> (Multiaddr, tokio::task::JoinHandle<std::io::Result<usize>>) {
    let (server, _) = web_tls();
    let mut l = transport(server)
        .listen(&ma("/ip4/127.0.0.1/tcp/0/tls/ws"))
        .await
        .unwrap();
    let addr = l.multiaddr().clone();
    let accepted = tokio::spawn(async move {
        let mut c = l.accept().await.unwrap();
        c.read(&mut [0u8; 16]).await
    });
    (addr, accepted)
}

/// The listener's first read failed in the TLS handshake.
async fn listener_saw_tls_fail(accepted: tokio::task::JoinHandle<std::io::Result<usize>>) {
    let err = timeout(LIMIT, accepted)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}

#[tokio::test]
async fn a_dialer_that_does_not_trust_the_certificate_is_refused_on_both_sides() {
    let (_, other_client) = web_tls();
    let (addr, accepted) = secure_listener_reading_once().await;
    let dialer = transport(other_client);
    match timeout(LIMIT, dialer.dial(&addr)).await.unwrap() {
        Err(TransportError::Dial { source, .. }) => {
            assert!(
                source.to_string().contains("TLS handshake failed"),
                "{source}"
            )
        }
        other => panic!("expected a dial error, got {:?}", other.err()),
    }
    listener_saw_tls_fail(accepted).await;
}

#[tokio::test]
async fn plain_websocket_to_a_secure_listener_fails_cleanly() {
    let (addr, accepted) = secure_listener_reading_once().await;
    let plain = transport(WsTlsConfig::default());
    let as_plain = ma(&addr.to_string().replace("/tls/ws", "/ws"));
    let dialed = timeout(LIMIT, plain.dial(&as_plain)).await.unwrap();
    assert!(
        matches!(dialed, Err(TransportError::Dial { .. })),
        "{:?}",
        dialed.err()
    );
    listener_saw_tls_fail(accepted).await;
}

#[tokio::test]
async fn without_tls_settings_secure_addresses_are_neither_dialed_nor_listened_on() {
    let plain = transport(WsTlsConfig::default());
    let secure = ma("/ip4/127.0.0.1/tcp/0/tls/ws");
    assert!(!plain.can_listen(&secure));
    assert!(!plain.can_dial(&ma("/ip4/127.0.0.1/tcp/443/wss")));
    match plain.listen(&secure).await {
        Err(TransportError::Listen { source, .. }) => {
            assert!(
                source.to_string().contains("WsConfig::tls.server"),
                "{source}"
            )
        }
        other => panic!(
            "expected a listen error, got {:?}",
            other.err().map(|e| e.to_string())
        ),
    }
    match plain.dial(&ma("/ip4/127.0.0.1/tcp/443/tls/ws")).await {
        Err(TransportError::Dial { source, .. }) => {
            assert!(
                source.to_string().contains("WsConfig::tls.client"),
                "{source}"
            )
        }
        other => panic!("expected a dial error, got {:?}", other.err()),
    }
}
