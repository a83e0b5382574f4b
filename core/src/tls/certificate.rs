//! The libp2p TLS certificate: a self-signed X.509 certificate whose key is unrelated to
//! the host key, carrying the host's public key and a signature by the host key in the
//! libp2p Public Key Extension (OID 1.3.6.1.4.1.53594.1.1).
//!
//! The extension binds the certificate key to the libp2p identity, which lets any key type
//! (secp256k1 included, which no TLS stack knows) authenticate a TLS connection.

use libp2p_identity::{Keypair, PublicKey};
use ring::signature::{self, VerificationAlgorithm};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::asn1_rs::Any;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_HASH_SHA1, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384,
    OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::TlsSetupError;
use crate::error::SecurityError;
use crate::verified::VerifiedCache;

/// The libp2p Public Key Extension's OID, 1.3.6.1.4.1.53594.1.1 (the libp2p project's IANA
/// private enterprise number).
pub const LIBP2P_EXTENSION_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 53594, 1, 1];

/// What the host key signs, followed by the certificate key's DER SubjectPublicKeyInfo.
pub const SIGNING_PREFIX: &[u8] = b"libp2p-tls-handshake:";

/// The OID in x509-parser's form, for comparing with parsed extensions.
fn libp2p_extension_oid() -> Oid<'static> {
    // Built from the constant arcs, so this only fails if the constant is broken, which
    // the tests would catch; an empty OID then simply matches no extension.
    Oid::from(&LIBP2P_EXTENSION_OID).unwrap_or_else(|_| Oid::new(std::borrow::Cow::Borrowed(&[])))
}

/// Generates a fresh libp2p TLS certificate for `identity`.
///
/// The certificate key is a new ECDSA P-256 key (the spec asks for one unrelated to the
/// host key; P-256 is small, fast and understood by every libp2p implementation). The
/// certificate is self-signed, valid from 1975 to 4096 so that clock skew never matters,
/// and carries the libp2p Public Key Extension marked critical, as go-libp2p and
/// rust-libp2p mark it: a TLS stack that does not know libp2p must refuse it.
///
/// Returns the certificate and the certificate key (PKCS#8), ready for rustls.
pub fn generate_certificate(
    identity: &Keypair,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsSetupError> {
    let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsSetupError::Certificate(format!("generating the P-256 key: {e}")))?;

    let mut message = SIGNING_PREFIX.to_vec();
    message.extend_from_slice(&cert_key.public_key_der());
    let signature = identity
        .sign(&message)
        .map_err(|e| TlsSetupError::Certificate(format!("signing with the host key: {e}")))?;
    let content = encode_signed_key(&identity.public().encode_protobuf(), &signature);

    let mut extension = rcgen::CustomExtension::from_oid_content(&LIBP2P_EXTENSION_OID, content);
    extension.set_criticality(true);

    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.not_before = rcgen::date_time_ymd(1975, 1, 1);
    params.not_after = rcgen::date_time_ymd(4096, 1, 1);
    params.custom_extensions.push(extension);
    let cert = params
        .self_signed(&cert_key)
        .map_err(|e| TlsSetupError::Certificate(format!("self-signing: {e}")))?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert_key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// Verifies a libp2p TLS certificate and returns the host public key it proves.
///
/// Checks, per the libp2p TLS spec: the DER parses completely; the certificate is valid
/// now; it has no issuer or subject unique IDs; it carries exactly one libp2p Public Key
/// Extension and no other critical extension; its self-signature verifies with its own
/// key (ECDSA P-256/P-384, Ed25519, RSA PKCS#1 or PSS, hashes of 256 bits or more); and the
/// extension's signature verifies with the embedded host key over
/// `"libp2p-tls-handshake:" ‖ SubjectPublicKeyInfo`.
///
/// Every failure is a [`SecurityError::InvalidCertificate`]; garbage input never panics.
/// A certificate that passes is remembered by its exact bytes (a few hundred at most), so
/// the same certificate seen again, later in the same handshake or on a reconnection, is
/// not checked twice; its validity period is.
pub fn verify_certificate(der: &[u8]) -> Result<PublicKey, SecurityError> {
    if let Some(key) = VERIFIED.lookup(der) {
        return Ok(key);
    }
    let cert = parse(der)?;
    let key = check(der, &cert)?;
    let validity = cert.validity();
    VERIFIED.insert(
        der,
        &key,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    Ok(key)
}

/// Certificates verified lately, by their exact bytes. A TLS handshake checks the peer's
/// certificate in the verifier and again when the transport asks for the peer's key
/// (`peer_public_key`), and a peer that reconnects presents the same certificate again:
/// the signatures (an ECDSA and an Ed25519 verification, most of a handshake's CPU) are
/// checked once. Its validity period is checked again on every hit. The largest
/// certificate remembered is 2 KiB: ours and those of go-libp2p, rust-libp2p and
/// js-libp2p are a few hundred bytes.
static VERIFIED: VerifiedCache = VerifiedCache::new(512, 2048);

/// Parses a whole certificate, refusing trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SecurityError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| invalid(format!("cannot parse the certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes after the certificate"));
    }
    Ok(cert)
}

fn check(der: &[u8], cert: &X509Certificate<'_>) -> Result<PublicKey, SecurityError> {
    let tbs = &cert.tbs_certificate;

    if !cert.validity().is_valid() {
        return Err(invalid(format!(
            "not valid now (valid from {} to {})",
            cert.validity().not_before,
            cert.validity().not_after
        )));
    }
    // The spec says certificates must omit these deprecated fields and lets endpoints
    // refuse them; nobody legitimate sends them.
    if tbs.issuer_uid.is_some() || tbs.subject_uid.is_some() {
        return Err(invalid("issuer or subject unique ID present"));
    }

    let oid = libp2p_extension_oid();
    let mut signed_key = None;
    for ext in tbs.extensions() {
        if ext.oid == oid {
            if signed_key.is_some() {
                return Err(invalid("more than one libp2p public key extension"));
            }
            signed_key = Some(ext.value);
        } else if ext.critical {
            // Unknown non-critical extensions are ignored, unknown critical ones refused.
            return Err(invalid(format!(
                "unsupported critical extension {}",
                ext.oid
            )));
        }
    }
    let signed_key = signed_key.ok_or_else(|| invalid("no libp2p public key extension"))?;

    // Self-signature first: it proves the TBS (and so the extension) came with the key.
    let sig_alg = certificate_signature_algorithm(&cert.signature_algorithm, &tbs.subject_pki)?;
    if !outer_algorithm_matches_inner(der) {
        return Err(invalid("outer and inner signature algorithms differ"));
    }
    // Signatures and keys are whole bytes; a BIT STRING claiming unused bits is not one
    // of ours and would let the same signature be encoded two ways.
    if cert.signature_value.unused_bits != 0 || tbs.subject_pki.subject_public_key.unused_bits != 0
    {
        return Err(invalid("signature or key bit string with unused bits"));
    }
    signature::UnparsedPublicKey::new(sig_alg, tbs.subject_pki.subject_public_key.data.as_ref())
        .verify(tbs.as_ref(), cert.signature_value.data.as_ref())
        .map_err(|_| invalid("the self-signature does not verify"))?;

    let (key_bytes, signature) = decode_signed_key(signed_key)
        .ok_or_else(|| invalid("malformed libp2p public key extension"))?;
    let host_key = PublicKey::try_decode_protobuf(&key_bytes)
        .map_err(|e| invalid(format!("bad host key in the libp2p extension: {e}")))?;
    let mut message = SIGNING_PREFIX.to_vec();
    message.extend_from_slice(tbs.subject_pki.raw);
    if !host_key.verify(&message, &signature) {
        return Err(invalid(
            "the libp2p extension's signature does not verify with its host key",
        ));
    }
    Ok(host_key)
}

fn invalid(message: impl Into<String>) -> SecurityError {
    SecurityError::InvalidCertificate(message.into())
}

/// RFC 5280 requires the certificate's outer signatureAlgorithm to equal the TBS's
/// `signature` field. Only the inner one is signed, so they are compared as encoded bytes:
/// any difference means the unsigned part was altered.
fn outer_algorithm_matches_inner(der: &[u8]) -> bool {
    let Some(cert) = sequence_elements(der) else {
        return false;
    };
    let [tbs, outer, _signature] = cert.as_slice() else {
        return false;
    };
    let Some(tbs) = sequence_elements(tbs) else {
        return false;
    };
    // TBSCertificate ::= SEQUENCE { version [0] EXPLICIT (optional), serialNumber,
    // signature AlgorithmIdentifier, ... }
    let version_present = tbs.first().and_then(|e| e.first()) == Some(&TAG_VERSION);
    let inner = tbs.get(if version_present { 2 } else { 1 });
    inner == Some(outer)
}

/// The TBS certificate's `[0] EXPLICIT Version` tag.
const TAG_VERSION: u8 = 0xa0;

/// The elements of the DER SEQUENCE `der`, each as its encoded bytes; `None` unless `der`
/// is exactly one strict-DER SEQUENCE.
fn sequence_elements(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    yasna::parse_der(der, |r| {
        let mut elements = Vec::new();
        r.read_sequence_of(|r| {
            elements.push(r.read_der()?);
            Ok(())
        })?;
        Ok(elements)
    })
    .ok()
}

/// Picks ring's algorithm for the certificate's self-signature from the signature
/// algorithm and the key's algorithm.
///
/// Curves must be named (the spec forbids explicit parameters, which enable curve
/// substitution attacks), and hashes shorter than 256 bits are refused.
fn certificate_signature_algorithm(
    sig: &AlgorithmIdentifier<'_>,
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<&'static dyn VerificationAlgorithm, SecurityError> {
    let key_alg = &spki.algorithm.algorithm;
    let s = &sig.algorithm;

    if *key_alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| invalid("EC key without a named curve"))?;
        let p256 = curve == OID_EC_P256;
        let p384 = curve == OID_NIST_EC_P384;
        return match (p256, p384) {
            (true, _) if *s == OID_SIG_ECDSA_WITH_SHA256 => Ok(&signature::ECDSA_P256_SHA256_ASN1),
            (true, _) if *s == OID_SIG_ECDSA_WITH_SHA384 => Ok(&signature::ECDSA_P256_SHA384_ASN1),
            (_, true) if *s == OID_SIG_ECDSA_WITH_SHA256 => Ok(&signature::ECDSA_P384_SHA256_ASN1),
            (_, true) if *s == OID_SIG_ECDSA_WITH_SHA384 => Ok(&signature::ECDSA_P384_SHA384_ASN1),
            (false, false) => Err(invalid(format!("unsupported EC curve {curve}"))),
            _ => Err(invalid(format!(
                "unsupported ECDSA signature algorithm {s}"
            ))),
        };
    }
    if *key_alg == OID_SIG_ED25519 {
        return if *s == OID_SIG_ED25519 {
            Ok(&signature::ED25519)
        } else {
            Err(invalid(format!(
                "signature algorithm {s} does not fit an Ed25519 key"
            )))
        };
    }
    if *key_alg == OID_PKCS1_RSAENCRYPTION {
        if *s == OID_PKCS1_SHA256WITHRSA {
            return Ok(&signature::RSA_PKCS1_2048_8192_SHA256);
        }
        if *s == OID_PKCS1_SHA384WITHRSA {
            return Ok(&signature::RSA_PKCS1_2048_8192_SHA384);
        }
        if *s == OID_PKCS1_SHA512WITHRSA {
            return Ok(&signature::RSA_PKCS1_2048_8192_SHA512);
        }
        if *s == OID_PKCS1_RSASSAPSS {
            return rsa_pss_algorithm(sig.parameters.as_ref());
        }
        return Err(invalid(format!("unsupported RSA signature algorithm {s}")));
    }
    Err(invalid(format!(
        "unsupported certificate key type {key_alg}"
    )))
}

/// RSA-PSS as ring verifies it: the same SHA-2 hash for the message and MGF1, and a salt
/// as long as the hash.
fn rsa_pss_algorithm(
    params: Option<&Any<'_>>,
) -> Result<&'static dyn VerificationAlgorithm, SecurityError> {
    let params = params.ok_or_else(|| invalid("RSA-PSS without parameters"))?;
    let params =
        RsaSsaPssParams::try_from(params).map_err(|_| invalid("malformed RSA-PSS parameters"))?;
    let hash = params.hash_algorithm_oid();
    let mgf = params
        .mask_gen_algorithm()
        .map_err(|_| invalid("malformed RSA-PSS mask generation parameters"))?;
    if *hash == OID_HASH_SHA1 || mgf.hash != *hash {
        return Err(invalid("unsupported RSA-PSS hash parameters"));
    }
    let (alg, hash_len): (&'static dyn VerificationAlgorithm, u32) =
        if *hash == OID_NIST_HASH_SHA256 {
            (&signature::RSA_PSS_2048_8192_SHA256, 32)
        } else if *hash == OID_NIST_HASH_SHA384 {
            (&signature::RSA_PSS_2048_8192_SHA384, 48)
        } else if *hash == OID_NIST_HASH_SHA512 {
            (&signature::RSA_PSS_2048_8192_SHA512, 64)
        } else {
            return Err(invalid(format!("unsupported RSA-PSS hash {hash}")));
        };
    if params.salt_length() != hash_len || params.trailer_field() != 1 {
        return Err(invalid("unsupported RSA-PSS salt length or trailer"));
    }
    Ok(alg)
}

// The extension's value is `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature
// OCTET STRING }`, written and read with yasna in strict DER (minimal lengths, primitive
// strings, nothing trailing).

fn encode_signed_key(public_key: &[u8], signature: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_bytes(public_key);
            w.next().write_bytes(signature);
        })
    })
}

/// Decodes `SignedKey` strictly; `None` if it is anything else.
pub(crate) fn decode_signed_key(input: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    yasna::parse_der(input, |r| {
        r.read_sequence(|r| Ok((r.next().read_bytes()?, r.next().read_bytes()?)))
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_certificate_is_remembered_only_as_its_exact_bytes() {
        let identity = Keypair::generate_ed25519();
        let (cert, _) = generate_certificate(&identity).unwrap();
        let der = cert.as_ref().to_vec();
        assert_eq!(verify_certificate(&der).unwrap(), identity.public());
        assert_eq!(VERIFIED.lookup(&der), Some(identity.public()));
        // Its last byte (inside the self-signature) changed: not served from the cache,
        // and refused.
        let mut altered = der.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(VERIFIED.lookup(&altered), None);
        assert!(verify_certificate(&altered).is_err());
        assert_eq!(verify_certificate(&der).unwrap(), identity.public());
    }

    #[test]
    fn signed_key_round_trips_short_and_long() {
        for (k, s) in [
            (vec![1u8; 3], vec![2u8; 5]),
            (vec![3u8; 200], vec![4u8; 70000]),
        ] {
            let enc = encode_signed_key(&k, &s);
            assert_eq!(decode_signed_key(&enc), Some((k, s)));
        }
    }

    #[test]
    fn signed_key_decoder_refuses_non_der() {
        let good = encode_signed_key(b"key", b"sig");
        // Truncations, trailing bytes, wrong tags, indefinite and non-minimal lengths.
        for cut in 0..good.len() {
            assert!(decode_signed_key(&good[..cut]).is_none());
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_signed_key(&trailing).is_none());
        assert!(decode_signed_key(&[0x31, 0x00]).is_none());
        assert!(decode_signed_key(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(decode_signed_key(&[0x30, 0x81, 0x04, 0x04, 0x00, 0x04, 0x00]).is_none());
        assert!(decode_signed_key(&[0x30, 0x04, 0x04, 0x00, 0x03, 0x00]).is_none());
    }

    #[test]
    fn oid_constant_is_valid() {
        assert_eq!(
            libp2p_extension_oid().to_id_string(),
            "1.3.6.1.4.1.53594.1.1"
        );
    }
}
