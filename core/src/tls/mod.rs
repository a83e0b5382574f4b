//! libp2p TLS: the certificate that proves a host key, the rustls verifiers that check
//! it, and ready-made rustls configs. The TLS security protocol (`/tls/1.0.0`) and QUIC
//! both build on this.
//!
//! The rules, from the libp2p TLS spec: TLS 1.3 only; both sides present exactly one
//! self-signed certificate carrying the libp2p Public Key Extension; client authentication
//! is mandatory; no SNI and no name checks; ALPN "libp2p" (muxer IDs may come first).

mod certificate;
mod verifier;

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId, PublicKey};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::SecurityError;

pub use certificate::{
    generate_certificate, verify_certificate, LIBP2P_EXTENSION_OID, SIGNING_PREFIX,
};
pub use verifier::{
    security_error_from_io, security_error_from_rustls, Libp2pClientCertVerifier,
    Libp2pServerCertVerifier,
};

/// The ALPN protocol every libp2p TLS endpoint offers (last, after any muxer IDs).
pub const LIBP2P_ALPN: &[u8] = b"libp2p";

/// Setting up libp2p TLS failed on our side (not the remote's fault).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// Generating or signing the certificate failed.
    #[error("cannot generate the libp2p TLS certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration (for example the key).
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider: ring, given explicitly so that nothing depends on (or sets) a
/// process-wide default provider. TLS 1.3 suites in the order go's crypto/tls (and so
/// go-libp2p) prefers on AES hardware: AES-128-GCM with SHA-256 first. Its key schedule
/// runs on the CPU's SHA-256 instructions where SHA-384 has none, and its record cipher
/// does 10 AES rounds where AES-256 does 14; the other suites stay for peers that want
/// them.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Our libp2p certificate with its signing key loaded, ready to go into rustls configs.
///
/// Generate it once per identity and share it (it is an `Arc` inside): every config built
/// from it presents the same certificate, and no key is parsed again per connection.
#[derive(Debug, Clone)]
pub struct Libp2pCertificate {
    certified: Arc<CertifiedKey>,
}

impl Libp2pCertificate {
    /// Generates a fresh certificate for `identity` (see [`generate_certificate`]).
    pub fn generate(identity: &Keypair) -> Result<Self, TlsSetupError> {
        let (cert, key) = generate_certificate(identity)?;
        Self::from_der(cert, key)
    }

    /// Wraps an existing certificate and its key (normally from [`generate_certificate`]).
    pub fn from_der(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsSetupError> {
        let signing_key = provider().key_provider.load_private_key(key)?;
        // rustls' own `with_single_cert` would check that key and certificate match by
        // parsing the certificate with webpki, which refuses the critical libp2p
        // extension; building the CertifiedKey directly skips that check.
        Ok(Libp2pCertificate {
            certified: Arc::new(CertifiedKey::new(vec![cert], signing_key)),
        })
    }

    /// The certificate, as sent to peers.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        // `from_der` always stores exactly one certificate.
        &self.certified.cert[0]
    }
}

/// Hands rustls our one certificate, whatever the peer asks for: libp2p has no CAs or
/// names to choose by.
#[derive(Debug)]
struct AlwaysOurCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for AlwaysOurCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for AlwaysOurCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A client config for libp2p TLS with a fresh certificate for `identity`, accepting any
/// server that proves its peer ID. `alpn` is the ALPN list to offer, in preference order
/// (normally muxer IDs, then [`LIBP2P_ALPN`]).
pub fn client_config(
    identity: &Keypair,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    client_config_with_cert(&Libp2pCertificate::generate(identity)?, None, alpn)
}

/// A server config for libp2p TLS with a fresh certificate for `identity`. The server
/// picks the first of `alpn` that the client also offers (server preference).
pub fn server_config(
    identity: &Keypair,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    server_config_with_cert(&Libp2pCertificate::generate(identity)?, alpn)
}

/// A client config presenting `cert`. With `expected`, the handshake fails when the
/// server proves another peer ID (see [`Libp2pServerCertVerifier`]).
pub fn client_config_with_cert(
    cert: &Libp2pCertificate,
    expected: Option<PeerId>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Libp2pServerCertVerifier::new(expected)))
        .with_client_cert_resolver(Arc::new(AlwaysOurCertificate(cert.certified.clone())));
    config.alpn_protocols = alpn;
    // The spec reserves SNI for future versions: clients must send none.
    config.enable_sni = false;
    // Resumption would skip certificate verification, and all peers share one fake server
    // name; every connection does a full handshake instead.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server config presenting `cert` and requiring a libp2p client certificate.
pub fn server_config_with_cert(
    cert: &Libp2pCertificate,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(Libp2pClientCertVerifier::new()))
        .with_cert_resolver(Arc::new(AlwaysOurCertificate(cert.certified.clone())));
    config.alpn_protocols = alpn;
    // No resumption (see the client config): no session cache, no tickets.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The remote's host public key, from the certificate it presented in a finished
/// handshake (client or server side). The certificate is verified again, so this is safe
/// to call on any connection state.
pub fn peer_public_key(conn: &rustls::CommonState) -> Result<PublicKey, SecurityError> {
    match conn.peer_certificates() {
        Some([cert]) => verify_certificate(cert.as_ref()),
        Some(certs) => Err(SecurityError::InvalidCertificate(format!(
            "expected exactly one certificate, got {}",
            certs.len()
        ))),
        None => Err(SecurityError::InvalidCertificate(
            "the remote presented no certificate".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::CipherSuite;

    /// Runs a whole handshake between `client` and `server` in memory and returns the
    /// suite each side settled on.
    fn negotiated(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> (CipherSuite, CipherSuite) {
        let name = ServerName::try_from("libp2p").expect("a valid name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut wire = Vec::new();
        for _ in 0..8 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            wire.clear();
            c.write_tls(&mut wire).expect("client writes");
            s.read_tls(&mut &wire[..]).expect("server reads");
            s.process_new_packets().expect("server accepts");
            wire.clear();
            s.write_tls(&mut wire).expect("server writes");
            c.read_tls(&mut &wire[..]).expect("client reads");
            c.process_new_packets().expect("client accepts");
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake done");
        let suite =
            |conn: &rustls::CommonState| conn.negotiated_cipher_suite().expect("a suite").suite();
        (suite(&c), suite(&s))
    }

    #[test]
    fn our_peers_agree_on_aes_128_gcm_with_sha_256() {
        let client = client_config(&Keypair::generate_ed25519(), Vec::new()).unwrap();
        let server = server_config(&Keypair::generate_ed25519(), Vec::new()).unwrap();
        let suites = negotiated(client, server);
        assert_eq!(
            suites,
            (
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_128_GCM_SHA256
            )
        );
    }

    #[test]
    fn a_client_that_prefers_aes_256_gets_it() {
        // rustls' own default order, which rust-libp2p uses: AES-256-GCM first.
        let cert = Libp2pCertificate::generate(&Keypair::generate_ed25519()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Libp2pServerCertVerifier::new(None)))
        .with_client_cert_resolver(Arc::new(AlwaysOurCertificate(cert.certified.clone())));
        let server = server_config(&Keypair::generate_ed25519(), Vec::new()).unwrap();
        let suites = negotiated(client, server);
        assert_eq!(suites.1, CipherSuite::TLS13_AES_256_GCM_SHA384);
    }
}
