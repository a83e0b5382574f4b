//! The QUIC listener, under the accept discipline every listener shares
//! ([`strata_core::accept`]).
//!
//! Its source takes `Incoming` connection attempts from the endpoint; while the queue is
//! full it takes nothing and quinn buffers, then refuses, new attempts under its own
//! limit (`max_incoming`, set to the handshake bound). The gater's accept hook runs
//! before the handshake (a refusal is a QUIC refusal, before any crypto); the handshake
//! is the TLS handshake followed by the gater's secured and upgraded hooks.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use quinn::{Endpoint, Incoming};
use strata_core::accept::{AcceptQueue, AcceptSettings, IncomingSource};
use strata_core::addr::quic_multiaddr;
use strata_core::{
    BoxCapableConn, ConnScope, ConnectionGater, Direction, GateStage, Listener, Multiaddr,
    SharedResourceManager, TransportError, UpgradeError,
};

use super::conn::{remote_public_key, QuicConn, CLOSE_NORMAL};
use super::{handshake_error, local_multiaddr, Shared, QUIC_HANDSHAKE_MEMORY};
use strata_core::rcmgr::priority;

/// Accepts authenticated QUIC connections on one UDP endpoint.
pub struct QuicListener {
    addr: Multiaddr,
    id: u64,
    shared: Arc<Shared>,
    queue: AcceptQueue,
}

impl std::fmt::Debug for QuicListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What the accept loop and the handshake tasks share.
struct Ctx {
    shared: Arc<Shared>,
    gater: Arc<dyn ConnectionGater>,
    bound: SocketAddr,
    listen_addr: Multiaddr,
}

impl QuicListener {
    pub(crate) fn new(
        shared: Arc<Shared>,
        gater: Arc<dyn ConnectionGater>,
        rcmgr: SharedResourceManager,
        id: u64,
        endpoint: Endpoint,
        bound: SocketAddr,
    ) -> Self {
        let addr = quic_multiaddr(bound);
        let ctx = Arc::new(Ctx {
            shared: shared.clone(),
            gater,
            bound,
            listen_addr: addr.clone(),
        });
        let config = &shared.config;
        let settings = AcceptSettings {
            handshake_timeout: config.handshake_timeout,
            queue_len: config.accept_queue_len,
            max_inflight: config.max_inflight_handshakes,
        };
        let source = QuicSource {
            endpoint,
            ctx: ctx.clone(),
            retry_above: config.retry_above,
            rcmgr: rcmgr.clone(),
        };
        let queue = AcceptQueue::start(
            addr.clone(),
            settings,
            source,
            Arc::new(move |(incoming, local, remote), scope| {
                let ctx = ctx.clone();
                Box::pin(async move {
                    let conn = handshake(&ctx, incoming, local, remote, scope).await?;
                    Ok(Arc::new(conn) as BoxCapableConn)
                })
            }),
            rcmgr,
            // A child of the transport's token: closing the transport ends this listener too.
            shared.cancel.child_token(),
        );
        QuicListener {
            addr,
            id,
            shared,
            queue,
        }
    }

    /// Handshakes running or waiting for room in the queue, plus the accept loop itself.
    pub fn task_count(&self) -> usize {
        self.queue.task_count()
    }

    /// The number of authenticated connections waiting for `accept`, as it changes.
    pub fn queued(&self) -> tokio::sync::watch::Receiver<usize> {
        self.queue.queued()
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // Dropping the queue cancels its tasks; they close what they hold on their own.
        if let Some(endpoint) = self.shared.endpoints.unlisten(self.id) {
            endpoint.close(CLOSE_NORMAL, b"");
        }
    }
}

/// Connection attempts from the endpoint, with the gater's accept hook applied, and
/// address validation when many handshakes are in flight or memory runs short.
struct QuicSource {
    endpoint: Endpoint,
    ctx: Arc<Ctx>,
    retry_above: usize,
    rcmgr: SharedResourceManager,
}

#[async_trait]
impl IncomingSource for QuicSource {
    type Pending = (Incoming, Multiaddr, Multiaddr);

    async fn next(
        &mut self,
        inflight: usize,
    ) -> Option<Result<(Self::Pending, Multiaddr), TransportError>> {
        loop {
            let Some(incoming) = self.endpoint.accept().await else {
                // The endpoint was closed (by the transport); the listener ends with it.
                tracing::debug!(listener = %self.ctx.listen_addr, "endpoint closed; listener ends");
                return None;
            };
            let remote = quic_multiaddr(incoming.remote_address());
            let local = local_multiaddr(self.ctx.bound, incoming.local_ip());
            if !self.ctx.gater.intercept_accept(&local, &remote) {
                tracing::debug!(%remote, "inbound QUIC connection refused by the gater");
                incoming.refuse();
                continue;
            }
            // Under load, make an unproven source address prove itself with a Retry
            // round trip before any per-connection state is kept: a spoofed flood never
            // answers, and the Retry costs us nothing but one packet. Memory pressure
            // counts as load, however few handshakes are in flight.
            let loaded = inflight > self.retry_above || self.rcmgr.under_pressure();
            if loaded && !incoming.remote_address_validated() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            return Some(Ok(((incoming, local, remote.clone()), remote)));
        }
    }

    fn refuse(&mut self, (incoming, _, _): Self::Pending) {
        incoming.refuse();
    }

    fn uses_fd(&self) -> bool {
        false
    }
}

/// The TLS handshake of one inbound connection, then the gater's secured hook.
async fn handshake(
    ctx: &Ctx,
    incoming: Incoming,
    local: Multiaddr,
    remote: Multiaddr,
    scope: ConnScope,
) -> Result<QuicConn, UpgradeError> {
    let started = std::time::Instant::now();
    // The handshake holds its real cost only; the windows come once it is done.
    let mut held = match scope
        .memory()
        .reserve(QUIC_HANDSHAKE_MEMORY, priority::ALWAYS)
    {
        Ok(held) => held,
        Err(e) => {
            incoming.refuse();
            return Err(UpgradeError::Resource(e));
        }
    };
    let connecting = incoming
        .accept_with(ctx.shared.handshake_server.clone())
        .map_err(handshake_error)?;
    // The client's first flight carried its ClientHello; what completes the handshake is
    // its Finished, one round trip later. A client that goes silent in between is cut at
    // the progress deadline (until then it is an idle handshake, evictable).
    let progress = ctx.shared.config.progress_timeout;
    let conn = tokio::time::timeout(progress, connecting)
        .await
        .map_err(|_| UpgradeError::NoProgress(progress))?
        .map_err(handshake_error)?;
    scope.handshake_progress();
    let tier = match ctx.shared.open_windows(&conn, &mut held) {
        Ok(tier) => tier,
        Err(e) => {
            conn.close(CLOSE_NORMAL, b"resource limit");
            return Err(UpgradeError::Resource(e));
        }
    };
    let key = match remote_public_key(&conn) {
        Ok(key) => key,
        Err(e) => {
            conn.close(CLOSE_NORMAL, b"bad certificate");
            return Err(UpgradeError::Security(e));
        }
    };
    let peer = key.to_peer_id();
    // The packet info may name the local IP more precisely now than at accept time.
    let local = match conn.local_ip() {
        Some(ip) => local_multiaddr(ctx.bound, Some(ip)),
        None => local,
    };
    if !ctx
        .gater
        .intercept_secured(Direction::Inbound, &peer, &local, &remote)
    {
        conn.close(CLOSE_NORMAL, b"gated");
        return Err(UpgradeError::Gated(GateStage::Secured));
    }
    if let Err(e) = scope.set_peer(peer) {
        conn.close(CLOSE_NORMAL, b"resource limit");
        return Err(UpgradeError::Resource(e));
    }
    scope.established();
    let conn = QuicConn::new(
        conn,
        ctx.shared.local_peer,
        key,
        local,
        remote,
        Direction::Inbound,
        started.elapsed(),
    )
    .with_max_streams(ctx.shared.config.max_concurrent_bidi_streams);
    // QUIC has no separate muxer step: the connection is as upgraded as it will be.
    if !ctx.gater.intercept_upgraded(&conn) {
        conn.quinn().close(CLOSE_NORMAL, b"gated");
        return Err(UpgradeError::Gated(GateStage::Upgraded));
    }
    ctx.shared
        .hold_until_closed(conn.quinn().clone(), scope, held, tier);
    Ok(conn)
}

#[async_trait]
impl Listener for QuicListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
        self.queue.accept().await
    }

    fn accept_stats(&self) -> Option<strata_core::accept::AcceptStats> {
        Some(self.queue.stats())
    }

    async fn close(&mut self) {
        self.queue.close().await;
        if let Some(endpoint) = self.shared.endpoints.unlisten(self.id) {
            endpoint.close(CLOSE_NORMAL, b"");
            // Bounded: a closed endpoint with no connections is idle at once; the bound
            // guards against a connection that slipped in meanwhile and drains slowly.
            let _ =
                tokio::time::timeout(self.shared.config.close_timeout, endpoint.wait_idle()).await;
        }
    }
}
