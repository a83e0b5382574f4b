//! libp2p TLS (`/tls/1.0.0`) over in-memory connections: authentication both ways, data,
//! early muxer negotiation through ALPN, and refusals of wrong or foreign peers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use strata_core::{BoxRawConn, Keypair, RawListener, SecurityError};
use strata_transport::MemoryTransport;
use strata_upgrader::{SecureTransport, Secured, TlsTransport, TLS_PROTOCOL_ID};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const YAMUX: &str = "/yamux/1.0.0";

/// A connected pair of raw connections: (dialer's end, listener's end).
async fn raw_pair() -> (BoxRawConn, BoxRawConn) {
    let transport = MemoryTransport::new();
    let mut listener = transport
        .listen_memory(&"/memory/0".parse().unwrap())
        .unwrap();
    let dialer = transport.dial_memory(listener.multiaddr()).unwrap();
    let accepted = listener.accept().await.unwrap();
    (Box::new(dialer), accepted)
}

/// Runs both handshakes concurrently: (outbound result, inbound result).
async fn handshake(
    client: &TlsTransport,
    server: &TlsTransport,
    expected: Option<strata_core::PeerId>,
    client_muxers: &[String],
    server_muxers: &[String],
) -> (
    Result<Secured, SecurityError>,
    Result<Secured, SecurityError>,
) {
    let (a, b) = raw_pair().await;
    tokio::join!(
        client.secure_outbound(a, expected, client_muxers),
        server.secure_inbound(b, server_muxers),
    )
}

fn muxers(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Both sides authenticate each other (peer IDs and public keys) and bytes flow both ways
/// through the encrypted stream; no common muxer means no early muxer.
#[tokio::test]
async fn handshake_authenticates_both_sides_and_carries_data() {
    let client_id = Keypair::generate_ed25519();
    let server_id = Keypair::generate_secp256k1();
    let client = TlsTransport::new(client_id.clone()).unwrap();
    let server = TlsTransport::new(server_id.clone()).unwrap();
    assert_eq!(client.protocol_id(), "/tls/1.0.0");
    assert_eq!(TLS_PROTOCOL_ID, "/tls/1.0.0");

    let (out, inb) = handshake(
        &client,
        &server,
        Some(server_id.public().to_peer_id()),
        &[],
        &[],
    )
    .await;
    let mut out = out.unwrap();
    let mut inb = inb.unwrap();
    assert_eq!(out.remote_peer, server_id.public().to_peer_id());
    assert_eq!(out.remote_public_key, server_id.public());
    assert_eq!(inb.remote_peer, client_id.public().to_peer_id());
    assert_eq!(inb.remote_public_key, client_id.public());
    assert_eq!(out.early_muxer, None);
    assert_eq!(inb.early_muxer, None);

    out.io.write_all(b"hello server").await.unwrap();
    out.io.flush().await.unwrap();
    let mut buf = [0u8; 12];
    inb.io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello server");

    // More than one TLS record, to see framing work in the other direction too.
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let writer = tokio::spawn(async move {
        inb.io.write_all(&big).await.unwrap();
        inb.io.shutdown().await.unwrap();
        big
    });
    let mut got = Vec::new();
    out.io.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, writer.await.unwrap());
}

/// The same transport handles many connections with its one certificate, in both roles.
#[tokio::test]
async fn one_transport_serves_many_connections() {
    let a = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let b = TlsTransport::new(Keypair::generate_ecdsa()).unwrap();
    for _ in 0..3 {
        let (out, inb) = handshake(&a, &b, Some(b.local_peer()), &[], &[]).await;
        assert_eq!(out.unwrap().remote_peer, b.local_peer());
        assert_eq!(inb.unwrap().remote_peer, a.local_peer());
        let (out, inb) = handshake(&b, &a, None, &[], &[]).await;
        assert_eq!(out.unwrap().remote_peer, a.local_peer());
        assert_eq!(inb.unwrap().remote_peer, b.local_peer());
    }
}

/// Both offer yamux: ALPN picks it, and both sides report it as the early muxer.
#[tokio::test]
async fn alpn_negotiates_the_early_muxer() {
    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (out, inb) = handshake(&client, &server, None, &muxers(&[YAMUX]), &muxers(&[YAMUX])).await;
    assert_eq!(out.unwrap().early_muxer.as_deref(), Some(YAMUX));
    assert_eq!(inb.unwrap().early_muxer.as_deref(), Some(YAMUX));
}

/// The server's preference wins when both share several muxers.
#[tokio::test]
async fn alpn_follows_server_preference() {
    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (out, inb) = handshake(
        &client,
        &server,
        None,
        &muxers(&["/mplex/6.7.0", YAMUX]),
        &muxers(&[YAMUX, "/mplex/6.7.0"]),
    )
    .await;
    assert_eq!(out.unwrap().early_muxer.as_deref(), Some(YAMUX));
    assert_eq!(inb.unwrap().early_muxer.as_deref(), Some(YAMUX));
}

/// When one side offers no muxer, ALPN settles on "libp2p" and neither side has an early
/// muxer (a multistream-select round picks it later).
#[tokio::test]
async fn no_common_muxer_means_no_early_muxer() {
    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    for (c, s) in [(muxers(&[YAMUX]), vec![]), (vec![], muxers(&[YAMUX]))] {
        let (out, inb) = handshake(&client, &server, None, &c, &s).await;
        assert_eq!(out.unwrap().early_muxer, None);
        assert_eq!(inb.unwrap().early_muxer, None);
    }
}

/// Dialing with the wrong expected peer fails with PeerIdMismatch naming both IDs; the
/// server side fails too (the client aborts the handshake).
#[tokio::test]
async fn wrong_expected_peer_is_a_mismatch() {
    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let wanted = Keypair::generate_ed25519().public().to_peer_id();
    let (out, inb) = handshake(&client, &server, Some(wanted), &[], &[]).await;
    match out {
        Err(SecurityError::PeerIdMismatch { expected, actual }) => {
            assert_eq!(expected, wanted);
            assert_eq!(actual, server.local_peer());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    assert!(inb.is_err(), "the server must not see a finished handshake");
}

/// A plain self-signed certificate without the libp2p extension.
fn plain_cert() -> (
    rustls::pki_types::CertificateDer<'static>,
    PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["example.invalid".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server with an ordinary certificate (no libp2p extension) is refused by our
/// client with a clear InvalidCertificate error, without panicking.
#[tokio::test]
async fn server_without_libp2p_extension_is_refused() {
    let (cert, key) = plain_cert();
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"libp2p".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (a, b) = raw_pair().await;
    let (out, inb) = tokio::join!(client.secure_outbound(a, None, &[]), acceptor.accept(b));
    match out {
        Err(SecurityError::InvalidCertificate(msg)) => {
            assert!(msg.contains("no libp2p public key extension"), "{msg}")
        }
        other => panic!("expected InvalidCertificate, got {other:?}"),
    }
    assert!(inb.is_err());
}

/// Our server refuses a client that presents no certificate (client auth is mandatory)
/// and one whose certificate lacks the libp2p extension.
#[tokio::test]
async fn server_requires_a_libp2p_client_certificate() {
    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let builder = || {
        rustls::ClientConfig::builder_with_provider(ring())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                strata_core::tls::Libp2pServerCertVerifier::new(None),
            ))
    };
    let (cert, key) = plain_cert();
    for (config, want) in [
        (builder().with_no_client_auth(), "no certificate"),
        (
            builder().with_client_auth_cert(vec![cert], key).unwrap(),
            "no libp2p public key extension",
        ),
    ] {
        let mut config = config;
        config.alpn_protocols = vec![b"libp2p".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let (a, b) = raw_pair().await;
        let (out, inb) = tokio::join!(
            async {
                // In TLS 1.3 the client may finish before the server has judged its
                // certificate; the refusal then shows on the first read.
                let mut s = connector.connect(name, a).await?;
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await.map(|_| ())
            },
            server.secure_inbound(b, &[]),
        );
        assert!(out.is_err());
        match inb {
            Err(e @ SecurityError::InvalidCertificate(_))
            | Err(e @ SecurityError::Handshake(_)) => {
                assert!(e.to_string().contains(want), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// The raw side of a handshake closing early gives an error, not a hang or a panic.
#[tokio::test]
async fn peer_hanging_up_mid_handshake_is_an_error() {
    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (a, b) = raw_pair().await;
    drop(b);
    assert!(client.secure_outbound(a, None, &[]).await.is_err());

    let server = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (mut a, b) = raw_pair().await;
    a.write_all(b"\x16\x03\x01\x00\x05hello, not TLS")
        .await
        .unwrap();
    drop(a);
    assert!(server.secure_inbound(b, &[]).await.is_err());
}

/// Serves one fixed certificate chain, whatever the client asks: lets a test present a
/// certificate whose private key it does not hold.
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The spec's INVALID test vector, presented by a TLS peer: our client refuses it while
/// checking the certificate, before any signature by its key would matter.
#[tokio::test]
async fn server_presenting_the_invalid_spec_vector_is_refused() {
    let vectors = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../core/tests/data/tls-certificates.txt"
    ))
    .unwrap();
    let invalid_hex = vectors
        .lines()
        .find_map(|l| l.strip_prefix("INVALID "))
        .unwrap()
        .trim();
    let der: Vec<u8> = (0..invalid_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&invalid_hex[i..i + 2], 16).unwrap())
        .collect();
    let (_, unrelated_key) = plain_cert();
    let signer = rustls::crypto::ring::sign::any_ecdsa_type(&unrelated_key).unwrap();
    let certified =
        rustls::sign::CertifiedKey::new(vec![rustls::pki_types::CertificateDer::from(der)], signer);
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"libp2p".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let client = TlsTransport::new(Keypair::generate_ed25519()).unwrap();
    let (a, b) = raw_pair().await;
    let (out, inb) = tokio::join!(client.secure_outbound(a, None, &[]), acceptor.accept(b));
    match out {
        Err(SecurityError::InvalidCertificate(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected InvalidCertificate, got {other:?}"),
    }
    assert!(inb.is_err(), "the server sees the handshake fail too");
}
