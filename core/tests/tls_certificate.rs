//! The libp2p TLS certificate against the spec's test vectors, our own certificates, and
//! forged or malformed ones.

use strata_core::tls::{generate_certificate, verify_certificate, LIBP2P_EXTENSION_OID};
use strata_core::{Keypair, PeerId, SecurityError};

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// (expected peer ID or None for INVALID, certificate DER) for every record in the file.
fn vectors() -> Vec<(Option<PeerId>, Vec<u8>)> {
    let text = include_str!("data/tls-certificates.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (expected, hex) = l.split_once(' ').unwrap();
            let expected = (expected != "INVALID").then(|| expected.parse::<PeerId>().unwrap());
            (expected, hex_decode(hex.trim()))
        })
        .collect()
}

fn assert_invalid(result: Result<strata_core::PublicKey, SecurityError>, needle: &str) {
    match result {
        Err(SecurityError::InvalidCertificate(msg)) => {
            assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}")
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(key) => panic!("accepted, proving {}", key.to_peer_id()),
    }
}

/// The three valid vectors (Ed25519, ECDSA, secp256k1 host keys) prove exactly the listed
/// peer IDs, and the invalid one (its extension signature is bad) is refused.
#[test]
fn spec_vectors() {
    let vectors = vectors();
    assert_eq!(
        vectors.len(),
        4,
        "the file should hold 3 valid and 1 invalid record"
    );
    let mut valid = 0;
    for (expected, der) in vectors {
        match expected {
            Some(peer) => {
                let key = verify_certificate(&der).unwrap();
                assert_eq!(key.to_peer_id(), peer);
                valid += 1;
            }
            None => assert_invalid(verify_certificate(&der), "signature"),
        }
    }
    assert_eq!(valid, 3);
}

/// Certificates we generate verify and prove our own peer ID, for every host key type.
#[test]
fn generated_certificates_verify() {
    for identity in [
        Keypair::generate_ed25519(),
        Keypair::generate_ecdsa(),
        Keypair::generate_secp256k1(),
    ] {
        let (cert, _key) = generate_certificate(&identity).unwrap();
        let key = verify_certificate(cert.as_ref()).unwrap();
        assert_eq!(key, identity.public());
        assert_eq!(key.to_peer_id(), identity.public().to_peer_id());
    }
}

/// Each certificate has its own fresh key, so two certificates for one identity differ.
#[test]
fn certificate_key_is_fresh() {
    let identity = Keypair::generate_ed25519();
    let (a, _) = generate_certificate(&identity).unwrap();
    let (b, _) = generate_certificate(&identity).unwrap();
    assert_ne!(a, b);
}

/// DER `SEQUENCE { OCTET STRING key, OCTET STRING sig }` for short contents.
fn signed_key(key: &[u8], sig: &[u8]) -> Vec<u8> {
    assert!(key.len() < 128 && sig.len() < 128);
    let mut body = vec![0x04, key.len() as u8];
    body.extend_from_slice(key);
    body.extend_from_slice(&[0x04, sig.len() as u8]);
    body.extend_from_slice(sig);
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// A self-signed rcgen certificate with the given extensions, valid now.
fn rcgen_cert(key: &rcgen::KeyPair, extensions: Vec<rcgen::CustomExtension>) -> rcgen::Certificate {
    let mut params = rcgen::CertificateParams::default();
    params.custom_extensions = extensions;
    params.self_signed(key).unwrap()
}

/// An extension carrying one host key but signed by another: the extension signature is
/// checked against the embedded key, so this is refused.
#[test]
fn extension_signed_by_another_key_is_refused() {
    let claimed = Keypair::generate_ed25519();
    let signer = Keypair::generate_ed25519();
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut msg = b"libp2p-tls-handshake:".to_vec();
    msg.extend(cert_key.public_key_der());
    let sig = signer.sign(&msg).unwrap();
    let ext = rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key(&claimed.public().encode_protobuf(), &sig),
    );
    let cert = rcgen_cert(&cert_key, vec![ext]);
    assert_invalid(verify_certificate(cert.der()), "signature does not verify");

    // The same construction signed by the claimed key passes: the test above fails for
    // the reason it says.
    let sig = claimed.sign(&msg).unwrap();
    let ext = rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key(&claimed.public().encode_protobuf(), &sig),
    );
    let cert = rcgen_cert(&cert_key, vec![ext]);
    assert_eq!(verify_certificate(cert.der()).unwrap(), claimed.public());
}

/// An extension signed over another certificate key's SPKI does not fit this certificate.
#[test]
fn extension_for_another_certificate_key_is_refused() {
    let identity = Keypair::generate_ed25519();
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut msg = b"libp2p-tls-handshake:".to_vec();
    msg.extend(other_key.public_key_der());
    let ext = rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key(
            &identity.public().encode_protobuf(),
            &identity.sign(&msg).unwrap(),
        ),
    );
    let cert = rcgen_cert(&cert_key, vec![ext]);
    assert_invalid(verify_certificate(cert.der()), "signature does not verify");
}

/// A plain self-signed certificate without the libp2p extension is refused.
#[test]
fn certificate_without_extension_is_refused() {
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen_cert(&cert_key, vec![]);
    assert_invalid(
        verify_certificate(cert.der()),
        "no libp2p public key extension",
    );
}

/// Two libp2p extensions, and unknown critical extensions, are refused; an unknown
/// non-critical extension is ignored.
#[test]
fn extension_rules() {
    let identity = Keypair::generate_ed25519();
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut msg = b"libp2p-tls-handshake:".to_vec();
    msg.extend(cert_key.public_key_der());
    let content = signed_key(
        &identity.public().encode_protobuf(),
        &identity.sign(&msg).unwrap(),
    );
    let libp2p =
        || rcgen::CustomExtension::from_oid_content(&LIBP2P_EXTENSION_OID, content.clone());
    let unknown = |critical: bool| {
        let mut e = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
        e.set_criticality(critical);
        e
    };

    let cert = rcgen_cert(&cert_key, vec![libp2p(), unknown(false)]);
    assert_eq!(verify_certificate(cert.der()).unwrap(), identity.public());

    let cert = rcgen_cert(&cert_key, vec![libp2p(), unknown(true)]);
    assert_invalid(verify_certificate(cert.der()), "critical extension");

    // x509-parser itself may refuse the duplicate; either way it is an invalid certificate.
    let cert = rcgen_cert(&cert_key, vec![libp2p(), libp2p()]);
    assert!(matches!(
        verify_certificate(cert.der()),
        Err(SecurityError::InvalidCertificate(_))
    ));
}

/// A certificate whose validity period has ended is refused.
#[test]
fn expired_certificate_is_refused() {
    let identity = Keypair::generate_ed25519();
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut msg = b"libp2p-tls-handshake:".to_vec();
    msg.extend(cert_key.public_key_der());
    let ext = rcgen::CustomExtension::from_oid_content(
        &LIBP2P_EXTENSION_OID,
        signed_key(
            &identity.public().encode_protobuf(),
            &identity.sign(&msg).unwrap(),
        ),
    );
    let mut params = rcgen::CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    params.custom_extensions = vec![ext];
    let cert = params.self_signed(&cert_key).unwrap();
    assert_invalid(verify_certificate(cert.der()), "not valid now");
}

/// A flipped bit anywhere in the signed part breaks the self-signature (or the parse).
#[test]
fn tampered_certificate_is_refused() {
    let identity = Keypair::generate_ed25519();
    let (cert, _) = generate_certificate(&identity).unwrap();
    let der = cert.as_ref();
    // Every byte of the certificate, each with one flipped bit.
    for i in 0..der.len() {
        let mut bad = der.to_vec();
        bad[i] ^= 0x01;
        if let Ok(key) = verify_certificate(&bad) {
            panic!(
                "byte {i} flipped and still accepted as {}: {:02x?} / {:02x?}",
                key.to_peer_id(),
                &der[i.saturating_sub(12)..(i + 4).min(der.len())],
                der.len()
            );
        }
    }
}

/// Garbage, truncations and trailing bytes never panic and are refused as invalid.
#[test]
fn garbage_is_refused_without_panic() {
    let identity = Keypair::generate_ed25519();
    let (cert, _) = generate_certificate(&identity).unwrap();
    let der = cert.as_ref();
    for cut in 0..der.len() {
        assert!(matches!(
            verify_certificate(&der[..cut]),
            Err(SecurityError::InvalidCertificate(_))
        ));
    }
    let mut trailing = der.to_vec();
    trailing.push(0);
    assert!(verify_certificate(&trailing).is_err());
    for garbage in [
        &[][..],
        &[0x30][..],
        &[0x30, 0x80][..],
        &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..],
        &[0xff; 64][..],
        b"not a certificate at all",
    ] {
        assert!(matches!(
            verify_certificate(garbage),
            Err(SecurityError::InvalidCertificate(_))
        ));
    }
    // A simple deterministic generator, so the test needs no extra crates.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for len in 0..512 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert!(verify_certificate(&bytes).is_err());
    }
}
