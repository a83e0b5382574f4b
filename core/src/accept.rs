//! The accept discipline every listener shares (upgraded TCP, memory, QUIC): admission
//! before any handshake byte, handshakes in parallel under a deadline, and at most a
//! threshold of finished connections waiting for the consumer.
//!
//! One task takes pending connections from the source, as fast as they come: misbehaving
//! peers never make it stop (only the source itself pauses, on descriptor exhaustion).
//! Each new connection is admitted by the resource manager
//! ([`ResourceManager::open_connection`](crate::rcmgr::ResourceManager::open_connection): per-IP and per-subnet caps, the inbound and
//! pending limits) and checked against the listener's own bound on handshakes in flight;
//! one over a limit is refused at once (a TCP reset, a QUIC refusal) and no handshake
//! starts for it. A pending handshake costs its socket and a small task.
//!
//! Each admitted handshake runs in its own tracked task under the deadline, and ends early
//! if the manager evicts it (an idle one, making way for a newcomer). A finished
//! connection waits for room in the queue until that same deadline, then is closed. While
//! the queue is full the loop takes nothing (backpressure from the consumer, as
//! go-libp2p's threshold), and a connection taken just as the queue filled does not start
//! its handshake until there is room. Closing ends every task and closes every connection
//! not yet accepted.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use multiaddr::Multiaddr;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{BoxCapableConn, Direction};
use crate::error::{TransportError, UpgradeError};
use crate::rcmgr::{ConnScope, SharedResourceManager};

/// The bounds of an accept queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptSettings {
    /// Deadline of one handshake, and of the wait for room in the queue after it.
    pub handshake_timeout: Duration,
    /// Finished connections that may wait for `accept`.
    pub queue_len: usize,
    /// Handshakes that may run at once on this listener; a connection past it is refused.
    pub max_inflight: usize,
}

/// Where pending connections come from: a raw listener's sockets, a QUIC endpoint's
/// connection attempts.
#[async_trait]
pub trait IncomingSource: Send + 'static {
    /// A connection not yet authenticated.
    type Pending: Send + 'static;
    /// The next pending connection and its remote address; `None` when the source has
    /// ended; an error ends the listener and is handed to the consumer. `inflight` is the
    /// number of handshakes running now (QUIC asks for address validation when it is
    /// high).
    async fn next(
        &mut self,
        inflight: usize,
    ) -> Option<Result<(Self::Pending, Multiaddr), TransportError>>;

    /// Refuses a connection before its handshake: TCP resets the socket (dropping it does,
    /// with SO_LINGER 0), QUIC refuses the attempt.
    fn refuse(&mut self, pending: Self::Pending) {
        drop(pending)
    }

    /// Whether each connection holds a file descriptor of its own (TCP: yes; QUIC: no,
    /// they share the endpoint's socket).
    fn uses_fd(&self) -> bool {
        true
    }
}

/// Turns one pending connection into a capable one (the queue applies the deadline). The
/// scope is the connection's from admission on: the handshake moves it into the
/// connection it makes, which releases it when it ends.
pub type Handshake<P> = Arc<
    dyn Fn(P, ConnScope) -> BoxFuture<'static, Result<BoxCapableConn, UpgradeError>> + Send + Sync,
>;

/// Counters of what the accept loop turned away.
#[derive(Debug, Default)]
pub struct AcceptCounters {
    /// Connections refused before their handshake (a limit was reached).
    pub refused: AtomicU64,
    /// Pending handshakes evicted by the resource manager.
    pub evicted: AtomicU64,
    /// Handshakes that failed or timed out.
    pub failed: AtomicU64,
}

struct Queued {
    conn: BoxCapableConn,
    deadline: Instant,
}

/// The sending side, with the queue length it publishes.
#[derive(Clone)]
struct QueueTx {
    tx: mpsc::Sender<Queued>,
    queued: Arc<watch::Sender<usize>>,
}

/// A handle on an accept queue's figures, readable while the queue runs (for metrics).
#[derive(Clone, Debug)]
pub struct AcceptStats {
    queued: watch::Receiver<usize>,
    inflight: Arc<AtomicUsize>,
    counters: Arc<AcceptCounters>,
}

impl AcceptStats {
    /// Finished connections waiting for `accept`.
    pub fn queued(&self) -> usize {
        *self.queued.borrow()
    }

    /// Handshakes running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// What the loop has turned away so far.
    pub fn counters(&self) -> &AcceptCounters {
        &self.counters
    }
}

/// A running accept loop and the queue of finished connections it fills.
pub struct AcceptQueue {
    addr: Multiaddr,
    queue: mpsc::Receiver<Queued>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<Mutex<Option<TransportError>>>,
    queued: Arc<watch::Sender<usize>>,
    inflight: Arc<AtomicUsize>,
    counters: Arc<AcceptCounters>,
}

/// What the accept loop needs besides the source.
struct LoopCtx<P> {
    handshake: Handshake<P>,
    settings: AcceptSettings,
    rcmgr: SharedResourceManager,
    queue: QueueTx,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<Mutex<Option<TransportError>>>,
    inflight: Arc<AtomicUsize>,
    counters: Arc<AcceptCounters>,
}

/// Counts one handshake in flight while it lives.
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AcceptQueue {
    /// Starts taking connections from `source` for the listener at `addr`, admitting each
    /// with `rcmgr`. Cancelling `cancel` (or closing or dropping the queue) ends every
    /// task.
    pub fn start<S: IncomingSource>(
        addr: Multiaddr,
        settings: AcceptSettings,
        source: S,
        handshake: Handshake<S::Pending>,
        rcmgr: SharedResourceManager,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, queue) = mpsc::channel(settings.queue_len.max(1));
        let tasks = TaskTracker::new();
        let fatal = Arc::new(Mutex::new(None));
        let queued = Arc::new(watch::channel(0).0);
        let inflight = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(AcceptCounters::default());
        let ctx = LoopCtx {
            handshake,
            settings,
            rcmgr,
            queue: QueueTx {
                tx,
                queued: queued.clone(),
            },
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            fatal: fatal.clone(),
            inflight: inflight.clone(),
            counters: counters.clone(),
        };
        tasks.spawn(accept_loop(source, ctx));
        AcceptQueue {
            addr,
            queue,
            cancel,
            tasks,
            fatal,
            queued,
            inflight,
            counters,
        }
    }

    /// Handshakes running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// What the loop has turned away so far.
    pub fn counters(&self) -> &AcceptCounters {
        &self.counters
    }

    /// A handle on the queue's figures that outlives borrows of the queue.
    pub fn stats(&self) -> AcceptStats {
        AcceptStats {
            queued: self.queued.subscribe(),
            inflight: self.inflight.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The number of finished connections waiting for `accept`, as it changes.
    pub fn queued(&self) -> watch::Receiver<usize> {
        self.queued.subscribe()
    }

    /// Tasks alive: the accept loop and the handshakes running or waiting for room.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The next finished connection; never one that has already closed or that waited
    /// past its deadline. Cancel safe.
    pub async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
        loop {
            let next = self.queue.recv().await;
            if next.is_some() {
                self.queued.send_modify(|n| *n = n.saturating_sub(1));
            }
            let Some(Queued { conn, deadline }) = next else {
                let fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(fatal.unwrap_or_else(|| TransportError::ListenerClosed {
                    addr: self.addr.clone(),
                }));
            };
            if conn.is_closed() {
                continue;
            }
            if Instant::now() > deadline {
                // Nobody has seen it yet: reset it rather than wait on the remote.
                conn.abort();
                continue;
            }
            return Ok(conn);
        }
    }

    /// Stops taking connections, resets those not yet accepted (nobody has seen them, so
    /// nothing is owed to them but a prompt end), and returns when every task has ended.
    /// Nothing here waits on a remote: it returns promptly whatever the peers do.
    pub async fn close(&mut self) {
        self.cancel.cancel();
        self.queue.close();
        let mut queued = Vec::new();
        while let Some(Queued { conn, .. }) = self.queue.recv().await {
            conn.abort();
            queued.push(conn);
        }
        futures::future::join_all(queued.iter().map(|c| c.closed())).await;
        self.queued.send_replace(0);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for AcceptQueue {
    fn drop(&mut self) {
        // The tasks see the cancellation, close what they hold and end on their own.
        self.cancel.cancel();
    }
}

async fn accept_loop<S: IncomingSource>(mut source: S, ctx: LoopCtx<S::Pending>) {
    let max_inflight = ctx.settings.max_inflight.max(1);
    loop {
        // Backpressure: while the queue is full, leave new connections where they are.
        if !wait_for_room(&ctx.queue, &ctx.cancel).await {
            return;
        }
        let inflight = ctx.inflight.load(Ordering::Acquire);
        let next = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            next = source.next(inflight) => next,
        };
        let (pending, remote) = match next {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!("listener ended: {e}");
                *ctx.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
            None => return,
        };
        if ctx.inflight.load(Ordering::Acquire) >= max_inflight {
            tracing::debug!(%remote, "refusing a connection: {max_inflight} handshakes in flight");
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            source.refuse(pending);
            continue;
        }
        let scope = match ctx
            .rcmgr
            .open_connection(Direction::Inbound, source.uses_fd(), &remote)
        {
            Ok(scope) => scope,
            Err(e) => {
                tracing::debug!(%remote, "refusing a connection before its handshake: {e}");
                ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
                source.refuse(pending);
                continue;
            }
        };
        // The queue may have filled while we waited: this handshake waits too.
        if !wait_for_room(&ctx.queue, &ctx.cancel).await {
            return;
        }
        ctx.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = InflightGuard(ctx.inflight.clone());
        let evicted = scope.eviction();
        let handshake = ctx.handshake.clone();
        let queue = ctx.queue.clone();
        let cancel = ctx.cancel.clone();
        let counters = ctx.counters.clone();
        let timeout = ctx.settings.handshake_timeout;
        ctx.tasks.spawn(async move {
            let deadline = Instant::now() + timeout;
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = evicted.cancelled() => {
                    // Dropping the handshake future drops (resets) its socket.
                    tracing::debug!(%remote, "idle pending handshake evicted for a newcomer");
                    counters.evicted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                r = tokio::time::timeout_at(deadline, handshake(pending, scope)) => r,
            };
            drop(slot);
            let conn = match result {
                Ok(Ok(conn)) => conn,
                Ok(Err(e @ UpgradeError::Gated(_))) => {
                    tracing::debug!(%remote, "inbound connection refused: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "inbound handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "inbound handshake timed out after {timeout:?}");
                    return;
                }
            };
            // A connection nobody has taken yet is reset, not closed gracefully: closing
            // the listener must not wait on remotes.
            tokio::select! {
                _ = cancel.cancelled() => abort(conn).await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%remote, "accept queue stayed full past the deadline; resetting");
                    abort(conn).await;
                }
                room = queue.tx.reserve() => match room {
                    Ok(room) => {
                        room.send(Queued { conn, deadline });
                        queue.queued.send_modify(|n| *n += 1);
                    }
                    Err(_) => abort(conn).await,
                },
            }
        });
    }
}

/// Resets `conn` and waits for it to have let go of its socket.
async fn abort(conn: BoxCapableConn) {
    conn.abort();
    conn.closed().await;
}

/// Waits until the queue has room (the permit is released at once: this is a signal, not
/// a reservation); false when cancelled or the consumer is gone.
async fn wait_for_room(queue: &QueueTx, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        room = queue.tx.reserve() => room.is_ok(),
    }
}
