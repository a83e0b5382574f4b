//! The QUIC listener: the same accept discipline as the upgraded TCP listener.
//!
//! One task takes `Incoming` connection attempts from the endpoint. Before each, it waits
//! for a handshake slot and for room in the accept queue, so while the queue is full it
//! takes nothing and quinn buffers, then refuses, new attempts under its own limit
//! (`max_incoming`, set to the handshake bound). The gater's accept hook runs before the
//! handshake (a refusal is a QUIC refusal, before any crypto); each handshake runs in its
//! own task under the handshake deadline, then the gater's secured hook runs; a finished
//! connection waits for room in the queue until that same deadline, then is closed.
//! Closing the listener ends every task and closes every connection not yet accepted.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use quinn::{Endpoint, Incoming};
use strata_core::addr::quic_multiaddr;
use strata_core::{
    BoxCapableConn, CapableConn, ConnectionGater, Direction, GateStage, Listener, Multiaddr,
    TransportError, UpgradeError,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{remote_public_key, QuicConn, CLOSE_NORMAL};
use super::{handshake_error, local_multiaddr, Shared};

struct Queued {
    conn: Arc<QuicConn>,
    deadline: Instant,
}

/// Accepts authenticated QUIC connections on one UDP endpoint.
pub struct QuicListener {
    addr: Multiaddr,
    id: u64,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Queued>,
    cancel: CancellationToken,
    tasks: TaskTracker,
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
        id: u64,
        endpoint: Endpoint,
        bound: SocketAddr,
    ) -> Self {
        let addr = quic_multiaddr(bound);
        let (tx, queue) = mpsc::channel(shared.config.accept_queue_len);
        // A child of the transport's token: closing the transport ends this listener too.
        let cancel = shared.cancel.child_token();
        let tasks = TaskTracker::new();
        let ctx = Arc::new(Ctx {
            shared: shared.clone(),
            gater,
            bound,
            listen_addr: addr.clone(),
        });
        tasks.spawn(accept_loop(
            endpoint,
            ctx,
            tx,
            cancel.clone(),
            tasks.clone(),
        ));
        QuicListener {
            addr,
            id,
            shared,
            queue,
            cancel,
            tasks,
        }
    }

    /// Handshakes running or waiting for room in the queue, plus the accept loop itself.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // The tasks see the cancellation, close what they hold and end on their own.
        self.cancel.cancel();
        if let Some(endpoint) = self.shared.endpoints.unlisten(self.id) {
            endpoint.close(CLOSE_NORMAL, b"");
        }
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    ctx: Arc<Ctx>,
    tx: mpsc::Sender<Queued>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(ctx.shared.config.max_inflight_handshakes));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Backpressure: while the queue is full, take no new connection from quinn.
        tokio::select! {
            _ = cancel.cancelled() => return,
            room = tx.reserve() => if room.is_err() { return },
        }
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else {
            // The endpoint was closed (by the transport); the listener ends with it.
            tracing::debug!(listener = %ctx.listen_addr, "endpoint closed; listener ends");
            return;
        };
        let remote = quic_multiaddr(incoming.remote_address());
        let local = local_multiaddr(ctx.bound, incoming.local_ip());
        if !ctx.gater.intercept_accept(&local, &remote) {
            tracing::debug!(%remote, "inbound QUIC connection refused by the gater");
            incoming.refuse();
            continue;
        }
        let ctx = ctx.clone();
        let tx = tx.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let deadline = Instant::now() + ctx.shared.config.handshake_timeout;
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout_at(deadline, handshake(&ctx, incoming, local, remote.clone())) => r,
            };
            drop(slot);
            let conn = match result {
                Ok(Ok(conn)) => Arc::new(conn),
                Ok(Err(e)) => {
                    match e {
                        UpgradeError::Gated(_) => {
                            tracing::debug!(%remote, "inbound QUIC connection refused: {e}")
                        }
                        _ => tracing::debug!(%remote, "inbound QUIC handshake failed: {e}"),
                    }
                    return;
                }
                Err(_) => {
                    // Dropping the handshake future dropped its connection, which closes it.
                    tracing::debug!(%remote, "inbound QUIC handshake timed out");
                    return;
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => conn.close().await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%remote, "accept queue stayed full past the deadline; closing");
                    conn.close().await;
                }
                room = tx.reserve() => match room {
                    Ok(room) => room.send(Queued { conn, deadline }),
                    Err(_) => conn.close().await,
                },
            }
        });
    }
}

/// The TLS handshake of one inbound connection, then the gater's secured hook.
async fn handshake(
    ctx: &Ctx,
    incoming: Incoming,
    local: Multiaddr,
    remote: Multiaddr,
) -> Result<QuicConn, UpgradeError> {
    let connecting = incoming.accept().map_err(handshake_error)?;
    let conn = connecting.await.map_err(handshake_error)?;
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
    let conn = QuicConn::new(
        conn,
        ctx.shared.local_peer,
        key,
        local,
        remote,
        Direction::Inbound,
    );
    // QUIC has no separate muxer step: the connection is as upgraded as it will be.
    if !ctx.gater.intercept_upgraded(&conn) {
        conn.quinn().close(CLOSE_NORMAL, b"gated");
        return Err(UpgradeError::Gated(GateStage::Upgraded));
    }
    Ok(conn)
}

#[async_trait]
impl Listener for QuicListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
        loop {
            let Some(Queued { conn, deadline }) = self.queue.recv().await else {
                return Err(TransportError::ListenerClosed {
                    addr: self.addr.clone(),
                });
            };
            if conn.is_closed() {
                continue;
            }
            if Instant::now() > deadline {
                conn.close().await;
                continue;
            }
            return Ok(conn);
        }
    }

    async fn close(&mut self) {
        self.cancel.cancel();
        self.queue.close();
        while let Some(Queued { conn, .. }) = self.queue.recv().await {
            conn.close().await;
        }
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(endpoint) = self.shared.endpoints.unlisten(self.id) {
            endpoint.close(CLOSE_NORMAL, b"");
            // Bounded: a closed endpoint with no connections is idle at once; the bound
            // guards against a connection that slipped in meanwhile and drains slowly.
            let _ =
                tokio::time::timeout(self.shared.config.close_timeout, endpoint.wait_idle()).await;
        }
    }
}
