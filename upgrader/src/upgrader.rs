//! The upgrader: security negotiation and handshake, then the muxer.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use strata_core::rcmgr::null_resource_manager;
use strata_core::{
    BoxCapableConn, BoxRawConn, CapableConn, CloseReason, ConnError, ConnScope, ConnState,
    ConnectionGater, Direction, GateStage, Multiaddr, PeerId, PublicKey, SecurityError,
    SharedResourceManager, Stream, UpgradeError,
};

use crate::config::{UpgraderConfig, UpgraderConfigError};
use crate::multistream::{
    dialer_propose_lazy, dialer_select, dialer_select_lazy, listener_select,
    listener_select_pipelined, FirstMessage, LazyNegotiated,
};
use crate::muxer::{MuxedConn, StreamMuxer};
use crate::security::{SecureTransport, Secured, SecurityScope};

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
    /// The security protocol to lead with, by remote address, for listeners that refused
    /// our first choice (bounded: cleared when full).
    security_hints: Mutex<HashMap<Multiaddr, String>>,
}

/// The most remote addresses whose preferred security protocol is remembered.
const MAX_SECURITY_HINTS: usize = 1024;

/// How a security protocol's first handshake message is framed, so that a listener that
/// refuses the protocol can skip the message an optimistic dialer sent behind it.
fn pipelined_first_message(protocol: &str) -> Option<FirstMessage> {
    match protocol {
        crate::security::tls::TLS_PROTOCOL_ID => Some(FirstMessage::TlsRecord),
        crate::security::noise::PROTOCOL_ID => Some(FirstMessage::NoiseFrame),
        _ => None,
    }
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
            security_hints: Mutex::new(HashMap::new()),
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

    fn security_by_id(&self, id: &str) -> Result<&Arc<dyn SecureTransport>, UpgradeError> {
        self.security
            .iter()
            .find(|s| s.protocol_id() == id)
            .ok_or_else(|| UpgradeError::Negotiation {
                step: "security",
                message: format!("negotiated {id}, which is not configured"),
            })
    }

    /// The security protocols in the order to propose them to `remote`: the one it
    /// accepted last time first, if it refused our first choice then.
    fn security_order(&self, remote: &Multiaddr) -> Vec<&Arc<dyn SecureTransport>> {
        let hint = self
            .security_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(remote)
            .cloned();
        let mut order: Vec<_> = self.security.iter().collect();
        if let Some(i) = hint.and_then(|h| order.iter().position(|s| s.protocol_id() == h)) {
            let lead = order.remove(i);
            order.insert(0, lead);
        }
        order
    }

    fn remember_security(&self, remote: &Multiaddr, protocol: &str) {
        let mut hints = self
            .security_hints
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if protocol == self.security[0].protocol_id() {
            hints.remove(remote);
            return;
        }
        if hints.len() >= MAX_SECURITY_HINTS && !hints.contains_key(remote) {
            hints.clear();
        }
        hints.insert(remote.clone(), protocol.to_string());
    }

    /// The dialer's security step without a round trip of its own: each proposal goes
    /// out with the protocol's first handshake message behind it. On `na` the next
    /// protocol is proposed on the same connection (a Strata listener skips the message
    /// it did not want); a listener that cannot skip it breaks the connection, and the
    /// error says so, for a new connection that leads with the next protocol.
    async fn secure_optimistic(
        &self,
        raw: BoxRawConn,
        expected: Option<PeerId>,
        scope: &ConnScope,
    ) -> Result<(&Arc<dyn SecureTransport>, Secured), UpgradeError> {
        let local = raw.local_multiaddr().clone();
        let remote = raw.remote_multiaddr().clone();
        let order = self.security_order(&remote);
        let security_scope = SecurityScope::new(scope.memory().clone(), scope.progress_reporter());
        let negotiation = |e: crate::multistream::NegotiationError| UpgradeError::Negotiation {
            step: "security",
            message: e.to_string(),
        };
        let mut raw = Some(raw);
        let mut refused: Vec<&str> = Vec::new();
        // The first refused proposal whose handshake had gone out behind it.
        let mut refused_pipelined: Option<&str> = None;
        for (i, security) in order.iter().enumerate() {
            let id = security.protocol_id();
            let Some(io) = raw.take() else { break };
            // After a refused pipelined proposal, a failure before this proposal's echo
            // means the listener could not skip our handshake bytes: the next connection
            // leads with the protocol after the refused ones. A failure after the echo is
            // this protocol's own.
            let fail = |e: UpgradeError, confirmed: bool| match refused_pipelined {
                Some(first) if !confirmed => UpgradeError::PipelinedProposalRefused {
                    refused: first.to_string(),
                    message: e.to_string(),
                },
                _ => e,
            };
            let lazy = if i == 0 {
                dialer_select_lazy(io, id).await
            } else {
                dialer_propose_lazy(io, id).await
            }
            .map_err(|e| fail(negotiation(e), false))?;
            let lazy = if pipelined_first_message(id).is_none() {
                // A listener could not tell this protocol's first message from a
                // proposal: wait for the answer before sending it.
                let mut lazy = lazy;
                match lazy.confirm().await {
                    Ok(()) => lazy,
                    Err(_) if lazy.is_refused() => {
                        refused.push(id);
                        raw = Some(lazy.into_inner());
                        continue;
                    }
                    Err(e) => return Err(fail(negotiation(e.into()), false)),
                }
            } else {
                lazy
            };
            let (conn, answer) = lazy_conn(lazy, &local, &remote);
            let result = security
                .secure_outbound_scoped(Box::new(conn), expected, &self.muxer_ids, &security_scope)
                .await;
            let answer = std::mem::take(&mut *answer.lock().unwrap_or_else(|p| p.into_inner()));
            let error = match (result, answer) {
                (Ok(secured), _) => {
                    scope.handshake_progress();
                    self.remember_security(&remote, id);
                    return Ok((security, secured));
                }
                (Err(_), Answer::Refused(io)) => {
                    // `na`: the listener read our proposal and refused it. Remembered at
                    // once, so that whatever happens next, the next dial leads elsewhere.
                    refused.push(id);
                    refused_pipelined.get_or_insert(id);
                    if let Some(next) = order.get(i + 1) {
                        self.remember_security(&remote, next.protocol_id());
                    }
                    raw = Some(io);
                    continue;
                }
                (Err(e), answer) => fail(e.into(), matches!(answer, Answer::Confirmed)),
            };
            return Err(error);
        }
        Err(negotiation(crate::multistream::NegotiationError::Refused(
            refused.iter().map(|s| s.to_string()).collect(),
        )))
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
        // Whatever the transport buffers for this connection is reserved from its scope.
        raw.attach_memory(scope.memory().clone());
        let local_addr = raw.local_multiaddr().clone();
        let remote_addr = raw.remote_multiaddr().clone();
        let negotiation = |step| {
            move |e: crate::multistream::NegotiationError| UpgradeError::Negotiation {
                step,
                message: e.to_string(),
            }
        };

        let security_ids: Vec<&str> = self.security.iter().map(|s| s.protocol_id()).collect();
        let (security, secured) =
            if direction == Direction::Outbound && self.config.optimistic_security {
                self.secure_optimistic(raw, expected, &scope).await?
            } else {
                // The progress deadline: a socket whose remote has not completed its first
                // security handshake message by now (the multistream-select proposal
                // first, then a whole Noise message or TLS ClientHello) is a slow or silent
                // attacker, not a peer on a slow link.
                let progress = self.config.progress_timeout;
                let progress_deadline = tokio::time::Instant::now() + progress;
                let no_progress = |_| UpgradeError::NoProgress(progress);
                let picked = match direction {
                    Direction::Outbound => dialer_select(&mut raw, &security_ids).await,
                    Direction::Inbound => {
                        let list = || security_ids.iter().map(|s| s.to_string()).collect();
                        let select = listener_select_pipelined(
                            &mut raw,
                            |p| security_ids.contains(&p),
                            list,
                            pipelined_first_message,
                        );
                        tokio::time::timeout_at(progress_deadline, select)
                            .await
                            .map_err(no_progress)?
                    }
                }
                .map_err(negotiation("security"))?;
                let security = self.security_by_id(&picked)?;
                let security_scope =
                    SecurityScope::new(scope.memory().clone(), scope.progress_reporter());
                let secured = match direction {
                    Direction::Outbound => {
                        security
                            .secure_outbound_scoped(raw, expected, &self.muxer_ids, &security_scope)
                            .await?
                    }
                    Direction::Inbound => {
                        let handshake =
                            security.secure_inbound_scoped(raw, &self.muxer_ids, &security_scope);
                        let mut handshake = std::pin::pin!(handshake);
                        let early = tokio::time::timeout_at(progress_deadline, async {
                            tokio::select! {
                                done = &mut handshake => Some(done),
                                () = security_scope.progress() => None,
                            }
                        })
                        .await
                        .map_err(no_progress)?;
                        match early {
                            Some(done) => done?,
                            // Progress made: the rest runs under the handshake deadline.
                            None => handshake.await?,
                        }
                    }
                };
                (security, secured)
            };
        let Secured {
            mut io,
            remote_peer,
            remote_public_key,
            early_muxer,
        } = secured;
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

/// What the listener answered to a pipelined proposal, as far as the dialer has read.
#[derive(Default)]
enum Answer {
    /// Nothing read yet.
    #[default]
    Pending,
    /// The listener echoed the proposal.
    Confirmed,
    /// The listener answered `na`; the connection, for the next proposal.
    Refused(BoxRawConn),
}

/// A raw connection whose security proposal is not yet confirmed. The handshake's writes
/// go out behind the proposal at once; its first read checks the listener's answer, which
/// is also published in `answer`. Once confirmed, it forwards to the raw connection
/// directly; on `na` it hands the connection back through `answer` and fails.
struct Unconfirmed {
    io: Proposal,
    local: Multiaddr,
    remote: Multiaddr,
    answer: Arc<Mutex<Answer>>,
}

enum Proposal {
    Waiting(LazyNegotiated<BoxRawConn>),
    Confirmed(BoxRawConn),
    HandedBack,
}

fn lazy_conn(
    lazy: LazyNegotiated<BoxRawConn>,
    local: &Multiaddr,
    remote: &Multiaddr,
) -> (Unconfirmed, Arc<Mutex<Answer>>) {
    let answer = Arc::new(Mutex::new(Answer::Pending));
    let mut conn = Unconfirmed {
        io: Proposal::Waiting(lazy),
        local: local.clone(),
        remote: remote.clone(),
        answer: answer.clone(),
    };
    // A proposal already answered (one that could not be pipelined) starts settled.
    conn.settle();
    (conn, answer)
}

fn handed_back() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the remote refused the security proposal",
    )
}

impl Unconfirmed {
    /// Moves on from the proposal once the listener has answered it.
    fn settle(&mut self) {
        let Proposal::Waiting(lazy) = &self.io else {
            return;
        };
        let (confirmed, refused) = (lazy.is_confirmed(), lazy.is_refused());
        if !confirmed && !refused {
            return;
        }
        let Proposal::Waiting(lazy) = std::mem::replace(&mut self.io, Proposal::HandedBack) else {
            return;
        };
        let mut answer = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        if confirmed {
            // Nothing is buffered in the negotiation: the raw connection carries on alone.
            self.io = Proposal::Confirmed(lazy.into_inner());
            *answer = Answer::Confirmed;
        } else {
            *answer = Answer::Refused(lazy.into_inner());
        }
    }

    fn writer(&mut self) -> std::io::Result<Pin<&mut (dyn tokio::io::AsyncWrite + Unpin)>> {
        match &mut self.io {
            Proposal::Waiting(lazy) => Ok(Pin::new(lazy)),
            Proposal::Confirmed(raw) => Ok(Pin::new(raw)),
            Proposal::HandedBack => Err(handed_back()),
        }
    }
}

impl tokio::io::AsyncRead for Unconfirmed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = match &mut this.io {
            Proposal::Confirmed(raw) => return Pin::new(raw).poll_read(cx, buf),
            Proposal::HandedBack => return Poll::Ready(Err(handed_back())),
            Proposal::Waiting(lazy) => ready!(Pin::new(lazy).poll_read(cx, buf)),
        };
        this.settle();
        Poll::Ready(result)
    }
}

impl tokio::io::AsyncWrite for Unconfirmed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().writer() {
            Ok(w) => w.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().writer() {
            Ok(w) => w.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Proposal::Waiting(lazy) => lazy.is_write_vectored(),
            Proposal::Confirmed(raw) => raw.is_write_vectored(),
            Proposal::HandedBack => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().writer() {
            Ok(w) => w.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().writer() {
            Ok(w) => w.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl strata_core::RawConnection for Unconfirmed {
    fn local_multiaddr(&self) -> &Multiaddr {
        &self.local
    }

    fn remote_multiaddr(&self) -> &Multiaddr {
        &self.remote
    }
}
