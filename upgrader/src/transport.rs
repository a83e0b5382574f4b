//! `Upgraded<T>`: any raw transport composed with an upgrader is a capable transport.

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::addr::peer_id_of;
use strata_core::{
    BoxCapableConn, BoxListener, Multiaddr, PeerId, RawTransport, SecurityError, Transport,
    TransportError, UpgradeError,
};

use crate::listener::UpgradedListener;
use crate::upgrader::Upgrader;

/// A raw transport whose connections are upgraded: TCP or memory, made capable.
pub struct Upgraded<T> {
    raw: T,
    upgrader: Arc<Upgrader>,
}

impl<T: RawTransport> Upgraded<T> {
    /// Composes `raw` with `upgrader`.
    pub fn new(raw: T, upgrader: Arc<Upgrader>) -> Self {
        Upgraded { raw, upgrader }
    }

    /// The raw transport.
    pub fn raw(&self) -> &T {
        &self.raw
    }

    /// The upgrader.
    pub fn upgrader(&self) -> &Arc<Upgrader> {
        &self.upgrader
    }

    fn name(&self) -> &'static str {
        self.raw.protocols().first().copied().unwrap_or("unknown")
    }
}

/// The failures two dialers meeting in one connection produce: a negotiation or security
/// handshake that breaks down (not a peer ID mismatch, a refusal, or a timeout).
fn may_be_simultaneous_open(e: &UpgradeError) -> bool {
    matches!(
        e,
        UpgradeError::Negotiation { .. }
            | UpgradeError::Security(
                SecurityError::Handshake(_) | SecurityError::InvalidPayload(_)
            )
    )
}

#[async_trait]
impl<T: RawTransport> Transport for Upgraded<T> {
    fn protocols(&self) -> &[&'static str] {
        self.raw.protocols()
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        self.raw.can_dial(addr)
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        self.raw.can_listen(addr)
    }

    async fn dial(
        &self,
        addr: &Multiaddr,
        expected_peer: Option<PeerId>,
    ) -> Result<BoxCapableConn, TransportError> {
        let expected = match (expected_peer, peer_id_of(addr)) {
            (Some(wanted), Some(in_addr)) if wanted != in_addr => {
                return Err(strata_core::AddrError::PeerIdConflict {
                    addr: addr.clone(),
                    existing: in_addr,
                    wanted,
                }
                .into())
            }
            (wanted, in_addr) => wanted.or(in_addr),
        };
        let scope = self
            .upgrader
            .resource_manager()
            .open_connection(strata_core::Direction::Outbound, true, addr)
            .map_err(|source| TransportError::Resource {
                addr: addr.clone(),
                source,
            })?;
        let raw = self.raw.dial(addr).await?;
        let upgraded = self
            .upgrader
            .upgrade_outbound(raw, expected, self.name(), scope)
            .await;
        let source = match upgraded {
            Ok(conn) => return Ok(conn),
            Err(source) => source,
        };
        // A listener that refused our optimistic first proposal and could not skip the
        // handshake bytes behind it: a new connection leads with the next protocol (the
        // upgrader remembers it for this address).
        // Two peers that dialed each other from their listen ports at the same moment
        // can meet in one TCP connection where both speak first as dialers; the upgrade
        // then fails at once. One more try from a port of our own cannot meet theirs.
        let refused = matches!(source, UpgradeError::PipelinedProposalRefused { .. });
        if refused || (self.raw.dials_from_listen_port() && may_be_simultaneous_open(&source)) {
            tracing::debug!(%addr, "upgrade failed ({source}); retrying on a new connection");
            let scope = self
                .upgrader
                .resource_manager()
                .open_connection(strata_core::Direction::Outbound, true, addr)
                .map_err(|source| TransportError::Resource {
                    addr: addr.clone(),
                    source,
                })?;
            let raw = self.raw.dial_fresh(addr).await?;
            return self
                .upgrader
                .upgrade_outbound(raw, expected, self.name(), scope)
                .await
                .map_err(|source| TransportError::Upgrade {
                    addr: addr.clone(),
                    source,
                });
        }
        Err(TransportError::Upgrade {
            addr: addr.clone(),
            source,
        })
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxListener, TransportError> {
        let raw = self.raw.listen(addr).await?;
        Ok(Box::new(UpgradedListener::new(
            raw,
            self.upgrader.clone(),
            self.name(),
        )))
    }
}
