//! Notifiees: the application hears about listeners and connections (go-libp2p's
//! `network.Notifiee` and `NotifyBundle`).
//!
//! How delivery works, and why:
//!
//! * Each registered notifiee has its own delivery task and its own FIFO queue. The swarm
//!   only pushes into queues (never blocks, never runs user code, never waits), so a slow
//!   notifiee delays only itself, and no notifiee ever runs under a swarm lock: a
//!   notifiee may call any swarm method, register or unregister notifiees included.
//! * Queues are bounded. At most `notifiee_queue_len` `connected` notifications wait in
//!   one notifiee's queue; past that a new connection is not announced to it (nor, later,
//!   its end), and the drop is counted. A `disconnected` is always queued for a
//!   connection the notifiee was told about, so the queue holds at most
//!   `notifiee_queue_len` plus the connections it was told of, plus listener events. When
//!   a connection ends while its `connected` is still queued, both are dropped together
//!   (coalesced, and counted): a notifiee that falls behind skips connections that came
//!   and went meanwhile, and never sees one end that it did not see begin.
//! * Per notifiee the queue is FIFO, and a connection's `connected` is queued before its
//!   task exists, its `disconnected` only when that task ends: so every notifiee sees
//!   `connected` return before `disconnected` starts. A notifiee registered after a
//!   connection's `connected` was queued does not get that connection's `disconnected`
//!   either (the swarm remembers who was told). Listeners work the same way.
//! * A connection's inbound streams reach the stream handler once every notifiee told
//!   of it has returned from `connected`, or after `notifiee_connected_bound` (1 s by
//!   default), whichever comes first; a dial returns its connection on the same
//!   condition. So a slow `connected` holds up that one connection for at most the
//!   bound, nothing else, and two notifiees that open streams to each other from inside
//!   `connected` are released by it. Each time the bound is reached is counted
//!   ([`crate::Swarm::notifiee_stats`]) and logged.
//! * Each call runs under `catch_unwind`: a panicking notifiee is logged and goes on
//!   receiving later events; the swarm and the other notifiees are not affected.
//! * Methods are async: a notifiee must not block its thread (use `spawn_blocking` for
//!   blocking work). `close()` lets the queues drain for `notifiee_close_grace`, then
//!   cancels the delivery tasks at their next await point.

use std::collections::VecDeque;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use strata_core::Multiaddr;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::Conn;
use crate::swarm::Swarm;

/// Why a connection ended, as told to [`Notifiee::disconnected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// We closed it ([`Conn::close`], [`Swarm::close_peer`]).
    Local,
    /// The remote closed it.
    Remote,
    /// An I/O or protocol error ended it; the text says which.
    Error(String),
    /// Closed because the connection gater (or the application's policy) refused it.
    Gated,
    /// Closed because a limit (a connection manager's or resource manager's) was exceeded.
    LimitExceeded,
    /// Closed for lack of traffic.
    Idle,
    /// The swarm was closed or shut down.
    Shutdown,
    /// A connection manager trimmed it (over its high watermark).
    ConnManager,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Local => f.write_str("closed locally"),
            DisconnectReason::Remote => f.write_str("closed by the remote peer"),
            DisconnectReason::Error(e) => write!(f, "error: {e}"),
            DisconnectReason::Gated => f.write_str("gated"),
            DisconnectReason::LimitExceeded => f.write_str("limit exceeded"),
            DisconnectReason::Idle => f.write_str("idle"),
            DisconnectReason::Shutdown => f.write_str("swarm shut down"),
            DisconnectReason::ConnManager => f.write_str("trimmed by the connection manager"),
        }
    }
}

/// Hears about the swarm's listeners and connections. Every method does nothing by
/// default. See the module documentation for the delivery guarantees.
#[async_trait]
pub trait Notifiee: Send + Sync + 'static {
    /// The swarm started listening on `addr` (the real address, port 0 resolved).
    async fn listen(&self, _swarm: &Swarm, _addr: &Multiaddr) {}
    /// The swarm stopped listening on `addr`.
    async fn listen_close(&self, _swarm: &Swarm, _addr: &Multiaddr) {}
    /// A connection was opened.
    async fn connected(&self, _swarm: &Swarm, _conn: &Conn) {}
    /// A connection ended, for `reason`.
    async fn disconnected(&self, _swarm: &Swarm, _conn: &Conn, _reason: &DisconnectReason) {}
}

type AddrFn = Arc<dyn Fn(&Swarm, &Multiaddr) + Send + Sync>;
type ConnFn = Arc<dyn Fn(&Swarm, &Conn) + Send + Sync>;
type DisconnFn = Arc<dyn Fn(&Swarm, &Conn, &DisconnectReason) + Send + Sync>;

/// A notifiee made of closures, as go-libp2p's `NotifyBundle`: set the ones you need.
#[derive(Default, Clone)]
pub struct NotifyBundle {
    listen: Option<AddrFn>,
    listen_close: Option<AddrFn>,
    connected: Option<ConnFn>,
    disconnected: Option<DisconnFn>,
}

impl NotifyBundle {
    /// An empty bundle: every event ignored.
    pub fn new() -> Self {
        Self::default()
    }
    /// Calls `f` on listen.
    pub fn on_listen(mut self, f: impl Fn(&Swarm, &Multiaddr) + Send + Sync + 'static) -> Self {
        self.listen = Some(Arc::new(f));
        self
    }
    /// Calls `f` on listen close.
    pub fn on_listen_close(
        mut self,
        f: impl Fn(&Swarm, &Multiaddr) + Send + Sync + 'static,
    ) -> Self {
        self.listen_close = Some(Arc::new(f));
        self
    }
    /// Calls `f` on connected.
    pub fn on_connected(mut self, f: impl Fn(&Swarm, &Conn) + Send + Sync + 'static) -> Self {
        self.connected = Some(Arc::new(f));
        self
    }
    /// Calls `f` on disconnected.
    pub fn on_disconnected(
        mut self,
        f: impl Fn(&Swarm, &Conn, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self {
        self.disconnected = Some(Arc::new(f));
        self
    }
}

#[async_trait]
impl Notifiee for NotifyBundle {
    async fn listen(&self, swarm: &Swarm, addr: &Multiaddr) {
        if let Some(f) = &self.listen {
            f(swarm, addr)
        }
    }
    async fn listen_close(&self, swarm: &Swarm, addr: &Multiaddr) {
        if let Some(f) = &self.listen_close {
            f(swarm, addr)
        }
    }
    async fn connected(&self, swarm: &Swarm, conn: &Conn) {
        if let Some(f) = &self.connected {
            f(swarm, conn)
        }
    }
    async fn disconnected(&self, swarm: &Swarm, conn: &Conn, reason: &DisconnectReason) {
        if let Some(f) = &self.disconnected {
            f(swarm, conn, reason)
        }
    }
}

/// One pending notification. `Connected` carries a token whose drop (after the notifiee
/// returned, or when the event is discarded) counts down the connection's barrier.
enum Note {
    Listen(Multiaddr),
    ListenClose(Multiaddr),
    Connected(Conn, AckToken),
    Disconnected(Conn, DisconnectReason),
}

struct AckToken(Arc<watch::Sender<usize>>);

impl Drop for AckToken {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once every notifiee told of a connection has returned from `connected`.
#[derive(Clone)]
pub(crate) struct Ack(watch::Receiver<usize>);

impl Ack {
    /// Waits for the notifiees, at most `bound`; true if they all returned in time.
    pub(crate) async fn wait(mut self, bound: Duration) -> bool {
        // An error means every token is gone, which also means the count reached zero.
        tokio::time::timeout(bound, self.0.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

/// Which notifiees were told that something opened, so only they hear that it closed.
pub(crate) type Told = Vec<u64>;

/// What the notifiees' queues have dropped and how often they held a connection up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifieeStats {
    /// `connected` notifications not queued because a notifiee's queue was full.
    pub dropped: u64,
    /// Connections that ended before a notifiee heard they began: neither was delivered.
    pub coalesced: u64,
    /// Times a connection went on without waiting longer for a slow `connected`.
    pub late: u64,
}

#[derive(Default)]
struct Counters {
    dropped: AtomicU64,
    coalesced: AtomicU64,
    late: AtomicU64,
}

/// One notifiee's queue.
struct Queue {
    state: Mutex<QueueState>,
    wake: Notify,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    notes: VecDeque<Note>,
    /// `Connected` notes queued: the bound applies to these.
    connected: usize,
    /// Unregistered: nothing more is accepted; what is queued is still delivered.
    closed: bool,
}

/// What pushing a note did.
enum Pushed {
    Queued,
    Refused,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // Only pushes and pops happen under this lock: never left half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, note: Note) -> Pushed {
        let mut st = self.lock();
        if st.closed {
            return Pushed::Refused;
        }
        if matches!(note, Note::Connected(..)) {
            if st.connected >= self.capacity {
                return Pushed::Refused;
            }
            st.connected += 1;
        }
        st.notes.push_back(note);
        drop(st);
        self.wake.notify_one();
        Pushed::Queued
    }

    /// Queues the end of `conn`, unless its start is still queued: then both go.
    /// Returns true when they were coalesced.
    fn push_disconnected(&self, conn: &Conn, reason: &DisconnectReason) -> bool {
        let mut st = self.lock();
        let pending = st
            .notes
            .iter()
            .position(|n| matches!(n, Note::Connected(c, _) if c.id() == conn.id()));
        if let Some(i) = pending {
            let removed = st.notes.remove(i);
            st.connected = st.connected.saturating_sub(1);
            drop(st);
            // Dropping the note drops its ack token outside the lock.
            drop(removed);
            return true;
        }
        st.notes
            .push_back(Note::Disconnected(conn.clone(), reason.clone()));
        drop(st);
        self.wake.notify_one();
        false
    }

    /// The next note; `None` once unregistered and drained.
    async fn pop(&self) -> Option<Note> {
        loop {
            {
                let mut st = self.lock();
                if let Some(note) = st.notes.pop_front() {
                    if matches!(note, Note::Connected(..)) {
                        st.connected = st.connected.saturating_sub(1);
                    }
                    return Some(note);
                }
                if st.closed {
                    return None;
                }
            }
            // A single consumer: a wake-up sent while we were not waiting is kept.
            self.wake.notified().await;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

struct Registered {
    id: u64,
    queue: Arc<Queue>,
}

struct Shared {
    list: Mutex<Vec<Registered>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registered>> {
        // Only pushes and removals happen under this lock: never left half-changed.
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn remove(&self, id: u64) {
        let removed = {
            let mut list = self.lock();
            list.iter()
                .position(|r| r.id == id)
                .map(|i| list.swap_remove(i))
        };
        // The task drains what is queued and ends.
        if let Some(r) = removed {
            r.queue.close();
        }
    }
}

/// Registration of a notifiee; dropping it (or calling [`NotifyHandle::unregister`])
/// stops new events. Events already queued are still delivered.
#[must_use = "dropping the handle unregisters the notifiee"]
pub struct NotifyHandle {
    id: u64,
    shared: Weak<Shared>,
}

impl NotifyHandle {
    /// Unregisters the notifiee.
    pub fn unregister(self) {}

    /// Keeps the notifiee registered for the swarm's whole life.
    pub fn forget(mut self) {
        self.shared = Weak::new();
    }
}

impl Drop for NotifyHandle {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.remove(self.id);
        }
    }
}

impl fmt::Debug for NotifyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyHandle")
            .field("id", &self.id)
            .finish()
    }
}

/// The swarm's side: the registry and the delivery tasks.
pub(crate) struct Notifier {
    next_id: AtomicU64,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
    capacity: usize,
    counters: Counters,
}

impl Notifier {
    pub(crate) fn new(capacity: usize) -> Self {
        Notifier {
            next_id: AtomicU64::new(1),
            shared: Arc::new(Shared {
                list: Mutex::new(Vec::new()),
            }),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            capacity: capacity.max(1),
            counters: Counters::default(),
        }
    }

    pub(crate) fn register(&self, swarm: Swarm, notifiee: Arc<dyn Notifiee>) -> NotifyHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !self.hard_stop.is_cancelled() {
            let queue = Arc::new(Queue {
                state: Mutex::new(QueueState::default()),
                wake: Notify::new(),
                capacity: self.capacity,
            });
            self.tracker.spawn(deliver(
                swarm,
                notifiee,
                queue.clone(),
                self.hard_stop.clone(),
            ));
            self.shared.lock().push(Registered { id, queue });
        }
        NotifyHandle {
            id,
            shared: Arc::downgrade(&self.shared),
        }
    }

    fn push(&self, only: Option<&Told>, mut make: impl FnMut() -> Note) -> Told {
        let list = self.shared.lock();
        let mut told = Vec::with_capacity(list.len());
        for r in list.iter() {
            if only.is_some_and(|ids| !ids.contains(&r.id)) {
                continue;
            }
            if matches!(r.queue.push(make()), Pushed::Queued) {
                told.push(r.id);
            }
        }
        told
    }

    pub(crate) fn listen(&self, addr: &Multiaddr) -> Told {
        self.push(None, || Note::Listen(addr.clone()))
    }

    pub(crate) fn listen_close(&self, addr: &Multiaddr, told: &Told) {
        self.push(Some(told), || Note::ListenClose(addr.clone()));
    }

    pub(crate) fn connected(&self, conn: &Conn) -> (Told, Ack) {
        let list = self.shared.lock();
        // One token per notifiee; a token whose note is refused is dropped at once and
        // counts itself down, so the barrier opens when every notifiee told has returned.
        let (tx, rx) = watch::channel(list.len());
        let tx = Arc::new(tx);
        let mut told = Vec::with_capacity(list.len());
        for r in list.iter() {
            let note = Note::Connected(conn.clone(), AckToken(tx.clone()));
            match r.queue.push(note) {
                Pushed::Queued => told.push(r.id),
                Pushed::Refused => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(conn = %conn.id(), "a notifiee's queue is full; it will not hear of this connection");
                }
            }
        }
        (told, Ack(rx))
    }

    pub(crate) fn disconnected(&self, conn: &Conn, reason: &DisconnectReason, told: &Told) {
        let list = self.shared.lock();
        for r in list.iter().filter(|r| told.contains(&r.id)) {
            if r.queue.push_disconnected(conn, reason) {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records that a connection stopped waiting for a slow `connected`.
    pub(crate) fn record_late(&self) {
        self.counters.late.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> NotifieeStats {
        NotifieeStats {
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            coalesced: self.counters.coalesced.load(Ordering::Relaxed),
            late: self.counters.late.load(Ordering::Relaxed),
        }
    }

    /// Stops delivery: queues drain for at most `grace`, then the tasks are cancelled.
    pub(crate) async fn close(&self, grace: Duration) {
        let list = std::mem::take(&mut *self.shared.lock());
        for r in &list {
            r.queue.close();
        }
        drop(list);
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            self.hard_stop.cancel();
            self.tracker.wait().await;
        }
        self.hard_stop.cancel();
    }
}

async fn deliver(
    swarm: Swarm,
    notifiee: Arc<dyn Notifiee>,
    queue: Arc<Queue>,
    hard_stop: CancellationToken,
) {
    loop {
        let note = tokio::select! {
            biased;
            _ = hard_stop.cancelled() => return,
            note = queue.pop() => match note {
                Some(note) => note,
                None => return,
            },
        };
        let n = &*notifiee;
        let swarm = &swarm;
        let call = async move {
            match note {
                Note::Listen(a) => n.listen(swarm, &a).await,
                Note::ListenClose(a) => n.listen_close(swarm, &a).await,
                Note::Connected(c, token) => {
                    n.connected(swarm, &c).await;
                    drop(token);
                }
                Note::Disconnected(c, r) => n.disconnected(swarm, &c, &r).await,
            }
        };
        tokio::select! {
            _ = hard_stop.cancelled() => return,
            result = AssertUnwindSafe(call).catch_unwind() => {
                if let Err(panic) = result {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = %msg, "a notifiee panicked; it stays registered");
                }
            }
        }
    }
}
