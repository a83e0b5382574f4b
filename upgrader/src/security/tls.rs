//! libp2p TLS (`/tls/1.0.0`): TLS 1.3 with the libp2p certificate on both sides, ALPN
//! carrying the muxer choice.
//!
//! The certificate is generated once per transport; a rustls config is built per
//! connection (it is cheap, and the outbound one carries the expected peer ID so that a
//! wrong server is refused before we show it our certificate).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use strata_core::rcmgr::priority;
use strata_core::tls::{self, Libp2pCertificate, TlsSetupError, LIBP2P_ALPN};
use strata_core::{BoxRawConn, Keypair, PeerId, Reservation, SecurityError};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use super::{SecureTransport, Secured, SecurityScope, WithReservation};

/// What rustls holds for one connection at most, reserved for the connection's life
/// (rustls keeps its buffers inside, where they cannot be watched): the deframing
/// buffer (a handshake message of up to 64 KiB, then records of up to 16 KiB), received
/// plaintext (16 KiB), and sealed records waiting for the socket (64 KiB). The counting
/// allocator in `upgrader/tests/security_memory.rs` measures 10 KiB per side during a
/// handshake and 86 KiB in bulk transfers both ways.
pub const TLS_BUFFERS: usize = 128 * 1024;

fn reserve_buffers(scope: &SecurityScope) -> Result<Reservation, SecurityError> {
    scope
        .memory
        .reserve(TLS_BUFFERS, priority::ALWAYS)
        .map_err(|e| SecurityError::Handshake(format!("no memory for the TLS buffers: {e}")))
}

/// The multistream-select protocol ID of libp2p TLS.
pub const TLS_PROTOCOL_ID: &str = "/tls/1.0.0";

/// The libp2p TLS security protocol.
pub struct TlsTransport {
    local_peer: PeerId,
    cert: Libp2pCertificate,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("local_peer", &self.local_peer)
            .finish_non_exhaustive()
    }
}

impl TlsTransport {
    /// A TLS transport for `identity`; generates its certificate now, once.
    pub fn new(identity: Keypair) -> Result<Self, TlsSetupError> {
        Ok(TlsTransport {
            local_peer: identity.public().to_peer_id(),
            cert: Libp2pCertificate::generate(&identity)?,
        })
    }

    /// Our peer ID, as our certificate proves it.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }
}

/// Our ALPN list: the muxers in our preference order, then "libp2p" so that two peers
/// without a common muxer still agree (and fall back to multistream-select).
fn alpn_list(muxers: &[String]) -> Vec<Vec<u8>> {
    muxers
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .filter(|m| m.as_slice() != LIBP2P_ALPN)
        .chain(std::iter::once(LIBP2P_ALPN.to_vec()))
        .collect()
}

/// The muxer picked by ALPN, if it picked one rather than plain "libp2p".
fn early_muxer(alpn: Option<&[u8]>) -> Option<String> {
    match alpn {
        Some(p) if p != LIBP2P_ALPN => String::from_utf8(p.to_vec()).ok(),
        _ => None,
    }
}

fn setup_error(e: TlsSetupError) -> SecurityError {
    SecurityError::Handshake(format!("local TLS setup failed: {e}"))
}

#[async_trait]
impl SecureTransport for TlsTransport {
    fn protocol_id(&self) -> &'static str {
        TLS_PROTOCOL_ID
    }

    async fn secure_outbound_scoped(
        &self,
        io: BoxRawConn,
        expected: Option<PeerId>,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        let held = reserve_buffers(scope)?;
        let config = tls::client_config_with_cert(&self.cert, expected, alpn_list(muxers))
            .map_err(setup_error)?;
        // An IP address as server name makes rustls send no SNI, as the spec requires;
        // our verifier ignores the name.
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, io)
            .await
            .map_err(tls::security_error_from_io)?;

        let conn = stream.get_ref().1;
        let remote_public_key = tls::peer_public_key(conn)?;
        let remote_peer = remote_public_key.to_peer_id();
        // The verifier already refused a wrong peer; checking again keeps this correct
        // even if the config were built without the expected ID.
        if let Some(expected) = expected {
            if expected != remote_peer {
                return Err(SecurityError::PeerIdMismatch {
                    expected,
                    actual: remote_peer,
                });
            }
        }
        let early_muxer = early_muxer(conn.alpn_protocol());
        Ok(Secured {
            io: Box::new(WithReservation::new(stream, held)),
            remote_peer,
            remote_public_key,
            early_muxer,
        })
    }

    async fn secure_inbound_scoped(
        &self,
        io: BoxRawConn,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        let held = reserve_buffers(scope)?;
        let config =
            tls::server_config_with_cert(&self.cert, alpn_list(muxers)).map_err(setup_error)?;
        // The ClientHello first: once it is whole, the remote has made progress.
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(tls::security_error_from_io)?;
        scope.progressed();
        let stream = start
            .into_stream(Arc::new(config))
            .await
            .map_err(tls::security_error_from_io)?;

        let conn = stream.get_ref().1;
        let remote_public_key = tls::peer_public_key(conn)?;
        let early_muxer = early_muxer(conn.alpn_protocol());
        Ok(Secured {
            io: Box::new(WithReservation::new(stream, held)),
            remote_peer: remote_public_key.to_peer_id(),
            remote_public_key,
            early_muxer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_lists_muxers_then_libp2p() {
        let muxers = vec!["/yamux/1.0.0".to_string(), "/mplex/6.7.0".to_string()];
        assert_eq!(
            alpn_list(&muxers),
            vec![
                b"/yamux/1.0.0".to_vec(),
                b"/mplex/6.7.0".to_vec(),
                b"libp2p".to_vec()
            ]
        );
        assert_eq!(alpn_list(&[]), vec![b"libp2p".to_vec()]);
    }

    #[test]
    fn early_muxer_is_none_for_libp2p() {
        assert_eq!(early_muxer(None), None);
        assert_eq!(early_muxer(Some(b"libp2p")), None);
        assert_eq!(
            early_muxer(Some(b"/yamux/1.0.0")),
            Some("/yamux/1.0.0".to_string())
        );
    }
}
