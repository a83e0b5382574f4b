//! The accept discipline every listener shares (upgraded TCP, memory, QUIC): handshakes
//! run in parallel with a bound and a deadline, and at most a threshold of finished
//! connections wait for the consumer.
//!
//! One task takes pending connections from the source. Before each, it waits for a
//! handshake slot and for room in the queue, so a full queue leaves new connections with
//! the kernel or the QUIC endpoint (backpressure); a connection taken just as the queue
//! filled does not start its handshake until there is room (as go-libp2p's threshold).
//! Each handshake runs in its own tracked task under the deadline; a finished connection
//! waits for room in the queue until that same deadline, then is closed. Closing ends
//! every task and closes every connection not yet accepted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use multiaddr::Multiaddr;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::BoxCapableConn;
use crate::error::{TransportError, UpgradeError};

/// The bounds of an accept queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptSettings {
    /// Deadline of one handshake, and of the wait for room in the queue after it.
    pub handshake_timeout: Duration,
    /// Finished connections that may wait for `accept`.
    pub queue_len: usize,
    /// Handshakes that may run at once.
    pub max_inflight: usize,
}

/// Where pending connections come from: a raw listener's sockets, a QUIC endpoint's
/// connection attempts.
#[async_trait]
pub trait IncomingSource: Send + 'static {
    /// A connection not yet authenticated.
    type Pending: Send + 'static;
    /// The next pending connection and its remote address; `None` when the source has
    /// ended; an error ends the listener and is handed to the consumer.
    async fn next(&mut self) -> Option<Result<(Self::Pending, Multiaddr), TransportError>>;
}

/// Turns one pending connection into a capable one (the queue applies the deadline).
pub type Handshake<P> =
    Arc<dyn Fn(P) -> BoxFuture<'static, Result<BoxCapableConn, UpgradeError>> + Send + Sync>;

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

/// A running accept loop and the queue of finished connections it fills.
pub struct AcceptQueue {
    addr: Multiaddr,
    queue: mpsc::Receiver<Queued>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<Mutex<Option<TransportError>>>,
    queued: Arc<watch::Sender<usize>>,
}

impl AcceptQueue {
    /// Starts taking connections from `source` for the listener at `addr`. Cancelling
    /// `cancel` (or closing or dropping the queue) ends every task.
    pub fn start<S: IncomingSource>(
        addr: Multiaddr,
        settings: AcceptSettings,
        source: S,
        handshake: Handshake<S::Pending>,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, queue) = mpsc::channel(settings.queue_len.max(1));
        let tasks = TaskTracker::new();
        let fatal = Arc::new(Mutex::new(None));
        let queued = Arc::new(watch::channel(0).0);
        let queue_tx = QueueTx {
            tx,
            queued: queued.clone(),
        };
        tasks.spawn(accept_loop(
            source,
            handshake,
            settings,
            queue_tx,
            cancel.clone(),
            tasks.clone(),
            fatal.clone(),
        ));
        AcceptQueue {
            addr,
            queue,
            cancel,
            tasks,
            fatal,
            queued,
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
                // Closing may wait on the remote; do not make the caller wait for it.
                self.tasks.spawn(async move { conn.close().await });
                continue;
            }
            return Ok(conn);
        }
    }

    /// Stops taking connections, closes those not yet accepted, and returns when every
    /// task has ended.
    pub async fn close(&mut self) {
        self.cancel.cancel();
        self.queue.close();
        while let Some(Queued { conn, .. }) = self.queue.recv().await {
            conn.close().await;
        }
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

async fn accept_loop<S: IncomingSource>(
    mut source: S,
    handshake: Handshake<S::Pending>,
    settings: AcceptSettings,
    queue: QueueTx,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<Mutex<Option<TransportError>>>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Backpressure: while the queue is full, leave new connections where they are.
        if !wait_for_room(&queue, &cancel).await {
            return;
        }
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = source.next() => next,
        };
        let (pending, remote) = match next {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!("listener ended: {e}");
                *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
            None => return,
        };
        // The queue may have filled while we waited: this handshake waits too.
        if !wait_for_room(&queue, &cancel).await {
            return;
        }
        let handshake = handshake.clone();
        let queue = queue.clone();
        let cancel = cancel.clone();
        let timeout = settings.handshake_timeout;
        tasks.spawn(async move {
            let deadline = Instant::now() + timeout;
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout_at(deadline, handshake(pending)) => r,
            };
            drop(slot);
            let conn = match result {
                Ok(Ok(conn)) => conn,
                Ok(Err(e @ UpgradeError::Gated(_))) => {
                    tracing::debug!(%remote, "inbound connection refused: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%remote, "inbound handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    // Dropping the handshake future dropped its connection.
                    tracing::debug!(%remote, "inbound handshake timed out after {timeout:?}");
                    return;
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => conn.close().await,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%remote, "accept queue stayed full past the deadline; closing");
                    conn.close().await;
                }
                room = queue.tx.reserve() => match room {
                    Ok(room) => {
                        room.send(Queued { conn, deadline });
                        queue.queued.send_modify(|n| *n += 1);
                    }
                    Err(_) => conn.close().await,
                },
            }
        });
    }
}

/// Waits until the queue has room (the permit is released at once: this is a signal, not
/// a reservation); false when cancelled or the consumer is gone.
async fn wait_for_room(queue: &QueueTx, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        room = queue.tx.reserve() => room.is_ok(),
    }
}
