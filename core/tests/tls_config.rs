//! The libp2p TLS rustls configs and verifiers from core, driven by hand (no sockets): the
//! two rustls connections pass their bytes to each other until both finish.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use strata_core::tls::{
    client_config, client_config_with_cert, peer_public_key, security_error_from_rustls,
    server_config, Libp2pCertificate,
};
use strata_core::{Keypair, SecurityError};

/// Moves TLS bytes both ways until both handshakes end; the first error either side
/// raises is returned.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    fn transfer(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    ) -> Result<(), rustls::Error> {
        let mut bytes = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut bytes).unwrap();
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }
    for _ in 0..16 {
        transfer(client, server)?;
        transfer(server, client)?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// A handshake with the ready-made configs: TLS 1.3, both sides learn the other's host
/// key from its certificate, and ALPN picks the shared muxer.
#[test]
fn configs_handshake_and_expose_peer_keys() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_secp256k1();
    let alpn = vec![b"/yamux/1.0.0".to_vec(), b"libp2p".to_vec()];
    let mut client =
        ClientConnection::new(Arc::new(client_config(&a, alpn.clone()).unwrap()), name()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_config(&b, alpn).unwrap())).unwrap();

    // Before the handshake there is no certificate to read.
    assert!(matches!(
        peer_public_key(&client),
        Err(SecurityError::InvalidCertificate(_))
    ));

    pump(&mut client, &mut server).unwrap();
    assert_eq!(peer_public_key(&client).unwrap(), b.public());
    assert_eq!(peer_public_key(&server).unwrap(), a.public());
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.alpn_protocol(), Some(&b"/yamux/1.0.0"[..]));
    assert_eq!(server.alpn_protocol(), Some(&b"/yamux/1.0.0"[..]));
    // No SNI went out.
    assert_eq!(server.server_name(), None);
}

/// A client config with an expected peer finishes with that peer and fails, with a
/// recoverable PeerIdMismatch, against any other.
#[test]
fn expected_peer_is_checked_in_the_handshake() {
    let a = Keypair::generate_ed25519();
    let b = Keypair::generate_ed25519();
    let a_cert = Libp2pCertificate::generate(&a).unwrap();
    let alpn = || vec![b"libp2p".to_vec()];
    let server_cfg = Arc::new(server_config(&b, alpn()).unwrap());

    let right = b.public().to_peer_id();
    let cfg = client_config_with_cert(&a_cert, Some(right), alpn()).unwrap();
    let mut client = ClientConnection::new(Arc::new(cfg), name()).unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    pump(&mut client, &mut server).unwrap();

    let wrong = Keypair::generate_ed25519().public().to_peer_id();
    let cfg = client_config_with_cert(&a_cert, Some(wrong), alpn()).unwrap();
    let mut client = ClientConnection::new(Arc::new(cfg), name()).unwrap();
    let mut server = ServerConnection::new(server_cfg).unwrap();
    let err = pump(&mut client, &mut server).unwrap_err();
    match security_error_from_rustls(&err) {
        SecurityError::PeerIdMismatch { expected, actual } => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, right);
        }
        other => panic!("expected PeerIdMismatch, got {other}"),
    }
}

/// The certificate wrapper keeps the generated certificate, and it proves the identity.
#[test]
fn libp2p_certificate_holds_a_valid_certificate() {
    let id = Keypair::generate_ecdsa();
    let cert = Libp2pCertificate::generate(&id).unwrap();
    let key = strata_core::tls::verify_certificate(cert.certificate()).unwrap();
    assert_eq!(key, id.public());
}
