//! The upgraded listener: parallel handshakes with a bound, and a threshold-bounded accept
//! queue that stops taking sockets from the kernel while it is full.
//!
//! One task takes raw connections: it first waits for a handshake slot and for room in the
//! queue, so a full queue leaves new connections in the kernel's backlog (backpressure);
//! a socket taken just as the queue filled does not start its handshake until there is room.
//! Each handshake runs in its own task under the upgrade deadline; a finished connection
//! waits for room in the queue until that same deadline, then is closed. Closing the
//! listener ends every task and closes every connection not yet accepted.

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{
    BoxCapableConn, BoxRawListener, Listener, Multiaddr, TransportError, UpgradeError,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::upgrader::Upgrader;

struct Queued {
    conn: BoxCapableConn,
    deadline: Instant,
}

/// A raw listener whose connections come out upgraded.
pub struct UpgradedListener {
    addr: Multiaddr,
    queue: mpsc::Receiver<Queued>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<std::sync::Mutex<Option<TransportError>>>,
    queued: Arc<watch::Sender<usize>>,
}

impl UpgradedListener {
    /// Starts accepting on `raw` and upgrading with `upgrader`.
    pub fn new(raw: BoxRawListener, upgrader: Arc<Upgrader>, transport: &'static str) -> Self {
        let addr = raw.multiaddr().clone();
        let (tx, queue) = mpsc::channel(upgrader.config().accept_queue_len);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let fatal = Arc::new(std::sync::Mutex::new(None));
        let queued = Arc::new(watch::channel(0).0);
        tasks.spawn(accept_loop(
            raw,
            upgrader,
            transport,
            Queue {
                tx,
                queued: queued.clone(),
            },
            cancel.clone(),
            tasks.clone(),
            fatal.clone(),
        ));
        UpgradedListener {
            addr,
            queue,
            cancel,
            tasks,
            fatal,
            queued,
        }
    }

    /// The number of upgraded connections waiting for `accept`, as it changes.
    pub fn queued(&self) -> watch::Receiver<usize> {
        self.queued.subscribe()
    }

    /// Handshakes running or waiting for room in the queue, plus the accept loop itself.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for UpgradedListener {
    fn drop(&mut self) {
        // The tasks see the cancellation, close what they hold and end on their own.
        self.cancel.cancel();
    }
}

/// The sending side of the accept queue, with its published length.
#[derive(Clone)]
struct Queue {
    tx: mpsc::Sender<Queued>,
    queued: Arc<watch::Sender<usize>>,
}

async fn accept_loop(
    mut raw: BoxRawListener,
    upgrader: Arc<Upgrader>,
    transport: &'static str,
    queue: Queue,
    cancel: CancellationToken,
    tasks: TaskTracker,
    fatal: Arc<std::sync::Mutex<Option<TransportError>>>,
) {
    let slots = Arc::new(Semaphore::new(upgrader.config().max_inflight_handshakes));
    loop {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Backpressure: while the queue is full, leave new connections in the kernel.
        tokio::select! {
            _ = cancel.cancelled() => return,
            room = queue.tx.reserve() => if room.is_err() { return },
        }
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            conn = raw.accept() => conn,
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(listener = %raw.multiaddr(), "listener ended: {e}");
                *fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        };
        // The queue may have filled while we waited in accept: then this socket's
        // handshake waits too (as go-libp2p's threshold does), and no further socket is
        // taken until the consumer makes room.
        tokio::select! {
            _ = cancel.cancelled() => return,
            room = queue.tx.reserve() => if room.is_err() { return },
        }
        let upgrader = upgrader.clone();
        let queue = queue.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let deadline = Instant::now() + upgrader.config().handshake_timeout;
            let remote = conn.remote_multiaddr().clone();
            let upgraded = tokio::select! {
                _ = cancel.cancelled() => return,
                r = upgrader.upgrade_inbound(conn, transport) => r,
            };
            drop(slot);
            let conn = match upgraded {
                Ok(conn) => conn,
                Err(e) => {
                    log_refused(&remote, &e);
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

fn log_refused(remote: &Multiaddr, e: &UpgradeError) {
    match e {
        UpgradeError::Gated(_) => tracing::debug!(%remote, "inbound connection refused: {e}"),
        _ => tracing::debug!(%remote, "inbound upgrade failed: {e}"),
    }
}

#[async_trait]
impl Listener for UpgradedListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
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

    async fn close(&mut self) {
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
