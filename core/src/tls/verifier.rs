//! rustls certificate verifiers for libp2p TLS, used by the TLS security protocol and by
//! QUIC.
//!
//! libp2p peers have no certificate authority: each presents one self-signed certificate
//! that proves its host key (see [`super::verify_certificate`]). These verifiers accept
//! exactly that, in TLS 1.3 only, and ignore the server name (libp2p sends no SNI).

use std::sync::Arc;

use libp2p_identity::{PeerId, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};

use super::certificate;
use crate::error::SecurityError;

/// The signature algorithms of the ring provider, the only ones libp2p TLS needs here.
fn ring_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Checks the certificate list a peer presented: exactly one certificate, a valid libp2p
/// one. Returns the host key it proves.
fn verify_presented(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PublicKey, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(to_rustls_error(SecurityError::InvalidCertificate(format!(
            "expected exactly one certificate, got {}",
            intermediates.len() + 1
        ))));
    }
    certificate::verify_certificate(end_entity.as_ref()).map_err(to_rustls_error)
}

/// Verifies the TLS 1.3 CertificateVerify signature with the certificate's own key.
///
/// rustls' usual `verify_tls13_signature` parses the certificate with webpki, which refuses
/// the critical libp2p extension it does not know; checking against the bare
/// SubjectPublicKeyInfo avoids that and still lets webpki match the scheme to the key type
/// (and the curve).
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let parsed = certificate::parse(cert.as_ref()).map_err(to_rustls_error)?;
    let spki = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw);
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

fn tls12_refused() -> rustls::Error {
    // The configs offer TLS 1.3 only, so rustls never gets here; refuse anyway.
    rustls::Error::General("libp2p TLS requires TLS 1.3".into())
}

/// Wraps a [`SecurityError`] so it travels through rustls (and tokio-rustls' `io::Error`)
/// and [`security_error_from_rustls`] can recover it.
pub(crate) fn to_rustls_error(err: SecurityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Turns a rustls error into a [`SecurityError`], recovering the typed error a libp2p
/// verifier raised (a peer ID mismatch stays a [`SecurityError::PeerIdMismatch`]).
pub fn security_error_from_rustls(err: &rustls::Error) -> SecurityError {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<SecurityError>() {
                Some(SecurityError::PeerIdMismatch { expected, actual }) => {
                    SecurityError::PeerIdMismatch {
                        expected: *expected,
                        actual: *actual,
                    }
                }
                Some(SecurityError::InvalidCertificate(m)) => {
                    SecurityError::InvalidCertificate(m.clone())
                }
                Some(e) => SecurityError::Handshake(e.to_string()),
                None => SecurityError::InvalidCertificate(other.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(e) => SecurityError::InvalidCertificate(e.to_string()),
        rustls::Error::AlertReceived(alert) => {
            SecurityError::Handshake(format!("the remote sent the TLS alert {alert:?}"))
        }
        e => SecurityError::Handshake(e.to_string()),
    }
}

/// Turns an I/O error from a TLS handshake (tokio-rustls wraps rustls errors in
/// `io::Error`) into a [`SecurityError`].
pub fn security_error_from_io(err: std::io::Error) -> SecurityError {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(tls) => security_error_from_rustls(tls),
        None => SecurityError::Io(err),
    }
}

/// Verifies the server's certificate on the client side of a libp2p TLS handshake.
///
/// With an expected peer ID, a server proving another one fails the handshake before we
/// send our own certificate, with a [`SecurityError::PeerIdMismatch`] inside the rustls
/// error (see [`security_error_from_rustls`]).
#[derive(Debug)]
pub struct Libp2pServerCertVerifier {
    expected: Option<PeerId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Libp2pServerCertVerifier {
    /// A verifier that accepts any peer proving its key, or only `expected` when given.
    pub fn new(expected: Option<PeerId>) -> Self {
        Libp2pServerCertVerifier {
            expected,
            algorithms: ring_algorithms(),
        }
    }
}

impl ServerCertVerifier for Libp2pServerCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // libp2p dials peers, not names: there is no name to check.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = verify_presented(end_entity, intermediates)?;
        if let Some(expected) = self.expected {
            let actual = key.to_peer_id();
            if actual != expected {
                return Err(to_rustls_error(SecurityError::PeerIdMismatch {
                    expected,
                    actual,
                }));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies the client's certificate on the server side of a libp2p TLS handshake. Client
/// authentication is mandatory: a client without a certificate is refused.
#[derive(Debug)]
pub struct Libp2pClientCertVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl Libp2pClientCertVerifier {
    /// A verifier that accepts any client proving its key.
    pub fn new() -> Self {
        Libp2pClientCertVerifier {
            algorithms: ring_algorithms(),
        }
    }
}

impl Default for Libp2pClientCertVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientCertVerifier for Libp2pClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA, so no hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
