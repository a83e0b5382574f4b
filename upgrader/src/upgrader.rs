//! The upgrader: security negotiation and handshake, then the muxer.

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::rcmgr::{null_resource_manager, priority};
use strata_core::{
    BoxCapableConn, BoxRawConn, CapableConn, CloseReason, ConnError, ConnScope, ConnState,
    ConnectionGater, Direction, GateStage, Multiaddr, PeerId, PublicKey, SecurityError,
    SharedResourceManager, Stream, UpgradeError,
};

use crate::config::{UpgraderConfig, UpgraderConfigError};
use crate::multistream::{dialer_select, listener_select};
use crate::muxer::{MuxedConn, StreamMuxer};
use crate::security::{SecureTransport, Secured};

/// Turns raw connections into capable ones: security protocols and muxers in preference
/// order, an optional gater, and a deadline on each upgrade.
pub struct Upgrader {
    local_peer: PeerId,
    security: Vec<Arc<dyn SecureTransport>>,
    muxers: Vec<Arc<dyn StreamMuxer>>,
    muxer_ids: Vec<String>,
    gater: Option<Arc<dyn ConnectionGater>>,
    rcmgr: SharedResourceManager,
    config: UpgraderConfig,
}

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("local_peer", &self.local_peer)
            .field(
                "security",
                &self
                    .security
                    .iter()
                    .map(|s| s.protocol_id())
                    .collect::<Vec<_>>(),
            )
            .field("muxers", &self.muxer_ids)
            .field("config", &self.config)
            .finish()
    }
}

impl Upgrader {
    /// An upgrader for `local_peer` (which must be the identity the security protocols
    /// hold) with security protocols and muxers in preference order.
    pub fn new(
        local_peer: PeerId,
        security: Vec<Arc<dyn SecureTransport>>,
        muxers: Vec<Arc<dyn StreamMuxer>>,
        config: UpgraderConfig,
    ) -> Result<Self, UpgraderConfigError> {
        config.validate()?;
        if security.is_empty() {
            return Err(UpgraderConfigError::NoSecurity);
        }
        if muxers.is_empty() {
            return Err(UpgraderConfigError::NoMuxer);
        }
        let security_ids: Vec<&str> = security.iter().map(|s| s.protocol_id()).collect();
        let muxer_ids: Vec<String> = muxers.iter().map(|m| m.protocol_id().to_string()).collect();
        for (i, id) in security_ids.iter().enumerate() {
            if security_ids[..i].contains(id) {
                return Err(UpgraderConfigError::Duplicate(id.to_string()));
            }
        }
        for (i, id) in muxer_ids.iter().enumerate() {
            if muxer_ids[..i].contains(id) {
                return Err(UpgraderConfigError::Duplicate(id.clone()));
            }
        }
        Ok(Upgrader {
            local_peer,
            security,
            muxers,
            muxer_ids,
            gater: None,
            rcmgr: null_resource_manager(),
            config,
        })
    }

    /// Consults `gater` at the accept, secured and upgraded stages.
    pub fn with_gater(mut self, gater: Arc<dyn ConnectionGater>) -> Self {
        self.gater = Some(gater);
        self
    }

    /// The gater, if any.
    pub fn gater(&self) -> Option<&Arc<dyn ConnectionGater>> {
        self.gater.as_ref()
    }

    /// Admits connections and accounts their memory with `rcmgr` (the default allows
    /// everything). Listeners admit each inbound connection before its handshake;
    /// dials are admitted before the socket is opened.
    pub fn with_resource_manager(mut self, rcmgr: SharedResourceManager) -> Self {
        self.rcmgr = rcmgr;
        self
    }

    /// The resource manager.
    pub fn resource_manager(&self) -> &SharedResourceManager {
        &self.rcmgr
    }

    /// The settings.
    pub fn config(&self) -> &UpgraderConfig {
        &self.config
    }

    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// Upgrades a connection we dialed, under `scope` (from
    /// [`strata_core::ResourceManager::open_connection`]; [`ConnScope::unlimited`] when
    /// nothing is accounted). With `expected`, a remote proving another peer ID fails
    /// with [`SecurityError::PeerIdMismatch`].
    pub async fn upgrade_outbound(
        &self,
        raw: BoxRawConn,
        expected: Option<PeerId>,
        transport: &'static str,
        scope: ConnScope,
    ) -> Result<BoxCapableConn, UpgradeError> {
        let deadline = self.config.handshake_timeout;
        tokio::time::timeout(
            deadline,
            self.upgrade(raw, Direction::Outbound, expected, transport, scope),
        )
        .await
        .map_err(|_| UpgradeError::Timeout(deadline))?
    }

    /// Upgrades a connection we accepted, under the scope it was admitted with. The
    /// gater's accept hook runs first. The remote must complete its first negotiation
    /// message within `progress_timeout`, and the whole upgrade within
    /// `handshake_timeout`.
    pub async fn upgrade_inbound(
        &self,
        raw: BoxRawConn,
        transport: &'static str,
        scope: ConnScope,
    ) -> Result<BoxCapableConn, UpgradeError> {
        if let Some(gater) = &self.gater {
            if !gater.intercept_accept(raw.local_multiaddr(), raw.remote_multiaddr()) {
                return Err(UpgradeError::Gated(GateStage::Accept));
            }
        }
        let deadline = self.config.handshake_timeout;
        tokio::time::timeout(
            deadline,
            self.upgrade(raw, Direction::Inbound, None, transport, scope),
        )
        .await
        .map_err(|_| UpgradeError::Timeout(deadline))?
    }

    async fn upgrade(
        &self,
        mut raw: BoxRawConn,
        direction: Direction,
        expected: Option<PeerId>,
        transport: &'static str,
        scope: ConnScope,
    ) -> Result<BoxCapableConn, UpgradeError> {
        let started = std::time::Instant::now();
        let local_addr = raw.local_multiaddr().clone();
        let remote_addr = raw.remote_multiaddr().clone();
        let negotiation = |step| {
            move |e: crate::multistream::NegotiationError| UpgradeError::Negotiation {
                step,
                message: e.to_string(),
            }
        };

        let security_ids: Vec<&str> = self.security.iter().map(|s| s.protocol_id()).collect();
        let picked = match direction {
            Direction::Outbound => dialer_select(&mut raw, &security_ids).await,
            Direction::Inbound => {
                // The progress deadline: a socket that has not said its first words by now
                // is a slow or silent attacker, not a peer on a slow link.
                let progress = self.config.progress_timeout;
                let list = || security_ids.iter().map(|s| s.to_string()).collect();
                let select = listener_select(&mut raw, |p| security_ids.contains(&p), list);
                tokio::time::timeout(progress, select)
                    .await
                    .map_err(|_| UpgradeError::NoProgress(progress))?
            }
        }
        .map_err(negotiation("security"))?;
        scope.handshake_progress();
        let security = self
            .security
            .iter()
            .find(|s| s.protocol_id() == picked)
            .ok_or_else(|| UpgradeError::Negotiation {
                step: "security",
                message: format!("negotiated {picked}, which is not configured"),
            })?;
        // The handshake's buffers are held from here on, for the connection's life.
        scope.reserve_memory(security.buffer_size(), priority::ALWAYS)?;
        let Secured {
            mut io,
            remote_peer,
            remote_public_key,
            early_muxer,
        } = match direction {
            Direction::Outbound => {
                security
                    .secure_outbound(raw, expected, &self.muxer_ids)
                    .await?
            }
            Direction::Inbound => security.secure_inbound(raw, &self.muxer_ids).await?,
        };
        if let Some(expected) = expected {
            if expected != remote_peer {
                return Err(SecurityError::PeerIdMismatch {
                    expected,
                    actual: remote_peer,
                }
                .into());
            }
        }
        if let Some(gater) = &self.gater {
            if !gater.intercept_secured(direction, &remote_peer, &local_addr, &remote_addr) {
                return Err(UpgradeError::Gated(GateStage::Secured));
            }
        }
        scope.set_peer(remote_peer)?;

        let early = early_muxer.filter(|m| self.muxer_ids.contains(m));
        let used_early_muxer_negotiation = early.is_some();
        let muxer_id = match early {
            Some(m) => m,
            None => match direction {
                Direction::Outbound => dialer_select(&mut io, &self.muxer_ids).await,
                Direction::Inbound => {
                    let ids = &self.muxer_ids;
                    listener_select(&mut io, |p| ids.iter().any(|m| m == p), || ids.clone()).await
                }
            }
            .map_err(negotiation("muxer"))?,
        };
        let muxer = self
            .muxers
            .iter()
            .find(|m| m.protocol_id() == muxer_id)
            .ok_or_else(|| UpgradeError::Negotiation {
                step: "muxer",
                message: format!("negotiated {muxer_id}, which is not configured"),
            })?;
        scope.established();
        let muxed = muxer.new_conn(io, direction, remote_peer, Arc::new(scope));
        let conn = Arc::new(UpgradedConn {
            muxed,
            local_peer: self.local_peer,
            remote_peer,
            remote_public_key,
            local_addr,
            remote_addr,
            direction,
            state: ConnState {
                transport,
                security: security.protocol_id().to_string(),
                muxer: muxer_id,
                used_early_muxer_negotiation,
                handshake: started.elapsed(),
            },
        });
        if let Some(gater) = &self.gater {
            if !gater.intercept_upgraded(conn.as_ref()) {
                conn.close().await;
                return Err(UpgradeError::Gated(GateStage::Upgraded));
            }
        }
        Ok(conn)
    }
}

/// A raw connection after the upgrade: secured, multiplexed, with its peer and addresses.
pub struct UpgradedConn {
    muxed: Arc<dyn MuxedConn>,
    local_peer: PeerId,
    remote_peer: PeerId,
    remote_public_key: PublicKey,
    local_addr: Multiaddr,
    remote_addr: Multiaddr,
    direction: Direction,
    state: ConnState,
}

#[async_trait]
impl CapableConn for UpgradedConn {
    fn local_peer(&self) -> PeerId {
        self.local_peer
    }
    fn remote_peer(&self) -> PeerId {
        self.remote_peer
    }
    fn remote_public_key(&self) -> &PublicKey {
        &self.remote_public_key
    }
    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local_addr
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote_addr
    }
    fn direction(&self) -> Direction {
        self.direction
    }
    fn state(&self) -> &ConnState {
        &self.state
    }
    async fn open_stream(&self) -> Result<Stream, ConnError> {
        self.muxed.open_stream().await
    }
    async fn accept_stream(&self) -> Result<Stream, ConnError> {
        self.muxed.accept_stream().await
    }
    fn go_away(&self) {
        self.muxed.go_away()
    }
    async fn close(&self) {
        self.muxed.close().await
    }
    fn abort(&self) {
        self.muxed.abort()
    }
    async fn closed(&self) -> CloseReason {
        self.muxed.closed().await
    }
    fn is_closed(&self) -> bool {
        self.muxed.is_closed()
    }
}
