//! The `Swarm`: shared state, transports, connections by peer, the stream handler, and
//! `close()` / `shutdown()`.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::FutureExt;
use strata_core::rcmgr::null_resource_manager;
use strata_core::{
    BoxCapableConn, ConnError, ConnectionGater, Direction, Multiaddr, PeerId,
    SharedResourceManager, Stream, Transport,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::SwarmConfig;
use crate::conn::{best, wrap, Conn, ConnId, StreamTotal};
use crate::dial_sync::DialSync;
use crate::error::SwarmError;
use crate::events::{Connectedness, Events, SwarmEvent};
use crate::limiter::DialLimiter;
use crate::listen::Listeners;
use crate::metrics::MetricsTracer;
use crate::notify::{Ack, DisconnectReason, Notifiee, NotifieeStats, Notifier, NotifyHandle};
use crate::peerstore::{Peerstore, ADDRESS_TTL};

/// The application's address filter (go-libp2p's address filters): called with an
/// address before it is stored from identify or dialed; `false` drops it.
pub type AddrFilter = Arc<dyn Fn(&Multiaddr) -> bool + Send + Sync>;

/// Handles one inbound stream. Each call runs in its own tracked task; a panic resets
/// the stream and nothing else.
pub type StreamHandler = Arc<dyn Fn(Stream, Conn) -> BoxFuture<'static, ()> + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) local_peer: PeerId,
    pub(crate) config: SwarmConfig,
    transports: RwLock<Vec<Arc<dyn Transport>>>,
    pub(crate) gater: Option<Arc<dyn ConnectionGater>>,
    conns: DashMap<PeerId, Vec<Conn>>,
    pub(crate) peerstore: Peerstore,
    pub(crate) rcmgr: SharedResourceManager,
    addr_filter: RwLock<Option<AddrFilter>>,
    pub(crate) dial_limiter: DialLimiter,
    pub(crate) backoff: Backoff,
    pub(crate) dial_sync: DialSync,
    pub(crate) listeners: Listeners,
    handler: RwLock<Option<StreamHandler>>,
    pub(crate) notifier: Notifier,
    metrics: OnceLock<Arc<dyn MetricsTracer>>,
    events: Events,
    next_conn: AtomicU64,
    streams: StreamTotal,
    /// Connections, listeners, dials, stream handlers.
    pub(crate) tracker: TaskTracker,
    /// Set when close or shutdown starts: refuse every new operation.
    pub(crate) stopping: AtomicBool,
    /// Cancels every task in `tracker`.
    pub(crate) cancel: CancellationToken,
    /// Stops every listener (before `cancel`, for a graceful shutdown).
    pub(crate) listeners_stop: CancellationToken,
    /// Cancelled when a shutdown reaches its deadline: whatever is still closing
    /// gracefully is reset.
    pub(crate) force: CancellationToken,
    /// Whether a close or shutdown has started, and the deadline it must meet (the
    /// earliest any caller asked for).
    pub(crate) stop_started: Mutex<bool>,
    /// The deadline and its teardown reserve.
    pub(crate) stop_deadline: watch::Sender<Option<(tokio::time::Instant, Duration)>>,
    pub(crate) close_done: CancellationToken,
}

impl Inner {
    /// The count of streams open across the swarm.
    pub(crate) fn streams_total(&self) -> &StreamTotal {
        &self.streams
    }

    /// True when the application's address filter refuses `addr`.
    pub(crate) fn addr_filter_refuses(&self, addr: &Multiaddr) -> bool {
        let filter = self
            .addr_filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        filter.is_some_and(|f| !f(addr))
    }
}

/// The swarm. Cheap to clone: every clone is the same swarm. Call [`Swarm::close`] (or
/// [`Swarm::shutdown`]) to stop it: tasks it started hold it alive until then.
#[derive(Clone)]
pub struct Swarm(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("local_peer", &self.0.local_peer)
            .finish_non_exhaustive()
    }
}

impl Swarm {
    /// A swarm for `local_peer`, with no transports yet. Must be called inside a tokio
    /// runtime (it starts the event task).
    pub fn new(local_peer: PeerId, config: SwarmConfig) -> Self {
        Self::build(local_peer, config, None)
    }

    /// A swarm whose dials are vetted by `gater` (`intercept_peer_dial`,
    /// `intercept_addr_dial`). Give the same gater to the upgrader for the other stages.
    pub fn with_gater(
        local_peer: PeerId,
        config: SwarmConfig,
        gater: Arc<dyn ConnectionGater>,
    ) -> Self {
        Self::build(local_peer, config, Some(gater))
    }

    /// A swarm with every part given: an optional gater, and the resource manager that
    /// admits its streams. Give the same manager to the upgrader and the transports, which
    /// admit connections before their handshakes.
    pub fn with_parts(
        local_peer: PeerId,
        config: SwarmConfig,
        gater: Option<Arc<dyn ConnectionGater>>,
        rcmgr: SharedResourceManager,
    ) -> Self {
        Self::build_with(local_peer, config, gater, rcmgr)
    }

    fn build(
        local_peer: PeerId,
        config: SwarmConfig,
        gater: Option<Arc<dyn ConnectionGater>>,
    ) -> Self {
        Self::build_with(local_peer, config, gater, null_resource_manager())
    }

    fn build_with(
        local_peer: PeerId,
        config: SwarmConfig,
        gater: Option<Arc<dyn ConnectionGater>>,
        rcmgr: SharedResourceManager,
    ) -> Self {
        let events = Events::new(config.events_capacity);
        let cancel = CancellationToken::new();
        let swarm = Swarm(Arc::new(Inner {
            local_peer,
            transports: RwLock::new(Vec::new()),
            gater,
            conns: DashMap::new(),
            peerstore: Peerstore::with_config(config.peerstore.clone()),
            rcmgr,
            addr_filter: RwLock::new(None),
            dial_limiter: DialLimiter::new(&config),
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
            dial_sync: DialSync::new(),
            listeners: Listeners::new(),
            handler: RwLock::new(None),
            notifier: Notifier::new(config.notifiee_queue_len),
            metrics: OnceLock::new(),
            events,
            next_conn: AtomicU64::new(1),
            streams: Arc::new(watch::channel(0).0),
            tracker: TaskTracker::new(),
            stopping: AtomicBool::new(false),
            listeners_stop: cancel.child_token(),
            cancel,
            force: CancellationToken::new(),
            stop_started: Mutex::new(false),
            stop_deadline: watch::channel(None).0,
            close_done: CancellationToken::new(),
            config,
        }));
        if swarm.0.config.run_maintenance {
            swarm.spawn_maintenance();
        }
        swarm
    }

    /// Cleans the peerstore (peers past their grace period, expired addresses) and the
    /// dial back-off every `maintenance_interval`, until the swarm closes.
    fn spawn_maintenance(&self) {
        let weak = Arc::downgrade(&self.0);
        let cancel = self.0.cancel.clone();
        let every = self
            .0
            .config
            .maintenance_interval
            .max(Duration::from_millis(10));
        self.0.tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                Swarm(inner).maintain();
            }
        });
    }

    /// Cleans the peerstore (peers past their grace period, expired addresses, the cap on
    /// peers) and drops expired dial back-off entries. Runs every `maintenance_interval`
    /// on its own unless `run_maintenance` is off.
    pub fn maintain(&self) {
        self.0.peerstore.gc();
        self.0.backoff.gc();
    }

    /// What this node knows about other peers; the swarm dials from its addresses.
    pub fn peerstore(&self) -> &Peerstore {
        &self.0.peerstore
    }

    /// The resource manager that admits this swarm's streams.
    pub fn resource_manager(&self) -> &SharedResourceManager {
        &self.0.rcmgr
    }

    /// Sets the address filter: addresses it refuses are neither dialed nor stored from
    /// identify.
    pub fn set_addr_filter(&self, filter: AddrFilter) {
        *self
            .0
            .addr_filter
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(filter);
    }

    /// Whether `addr` may be stored and dialed: a transport of this swarm can dial it, it
    /// is not an unspecified, multicast, broadcast or link-local address (nothing a peer
    /// can be reached at), and the application's filter allows it.
    pub fn is_dialable(&self, addr: &Multiaddr) -> bool {
        crate::dial::is_reachable_shape(addr)
            && self.transport_for_dial(addr).is_some()
            && !self.0.addr_filter_refuses(addr)
    }

    /// What the notifiees' bounded queues dropped or coalesced, and how often a slow
    /// `connected` was given up on.
    pub fn notifiee_stats(&self) -> NotifieeStats {
        self.0.notifier.stats()
    }

    /// Sends the swarm's connection and dial outcomes to `tracer` from now on. One tracer
    /// per swarm: `false` (and nothing changed) if one is set already.
    pub fn set_metrics_tracer(&self, tracer: Arc<dyn MetricsTracer>) -> bool {
        self.0.metrics.set(tracer).is_ok()
    }

    pub(crate) fn metrics(&self) -> Option<&Arc<dyn MetricsTracer>> {
        self.0.metrics.get()
    }

    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.0.local_peer
    }

    /// The settings.
    pub fn config(&self) -> &SwarmConfig {
        &self.0.config
    }

    /// True once `close()` or `shutdown()` has started.
    pub fn is_closed(&self) -> bool {
        self.0.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn check_open(&self) -> Result<(), SwarmError> {
        if self.is_closed() {
            Err(SwarmError::Closed)
        } else {
            Ok(())
        }
    }

    /// Adds a transport. Refused when another transport already serves one of its
    /// protocols (`Transport::protocols`).
    pub fn add_transport(&self, transport: Arc<dyn Transport>) -> Result<(), SwarmError> {
        self.check_open()?;
        let mut list = self.0.transports.write().unwrap_or_else(|p| p.into_inner());
        for have in list.iter() {
            if let Some(p) = transport
                .protocols()
                .iter()
                .find(|p| have.protocols().contains(p))
            {
                return Err(SwarmError::DuplicateTransport(p));
            }
        }
        list.push(transport);
        Ok(())
    }

    pub(crate) fn transport_for_dial(&self, addr: &Multiaddr) -> Option<Arc<dyn Transport>> {
        let list = self.0.transports.read().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|t| t.can_dial(addr)).cloned()
    }

    pub(crate) fn transport_for_listen(&self, addr: &Multiaddr) -> Option<Arc<dyn Transport>> {
        let list = self.0.transports.read().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|t| t.can_listen(addr)).cloned()
    }

    /// Sets the handler for inbound streams (replacing any earlier one). Without one,
    /// inbound streams are reset.
    pub fn set_stream_handler(&self, handler: StreamHandler) {
        *self.0.handler.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    /// Registers a notifiee. It stays registered while the returned handle lives.
    pub fn notify(&self, notifiee: Arc<dyn Notifiee>) -> NotifyHandle {
        self.0.notifier.register(self.clone(), notifiee)
    }

    /// Subscribes to the event stream.
    pub fn events(&self) -> broadcast::Receiver<SwarmEvent> {
        self.0.events.subscribe()
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.0.notifier
    }

    pub(crate) fn emit(&self, e: SwarmEvent) {
        self.0.events.emit(e)
    }

    /// Adds addresses the swarm may dial `peer` on, to the peerstore with
    /// [`ADDRESS_TTL`] (a `/p2p` suffix is dropped; the peerstore caps them per peer).
    pub fn add_addrs(&self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let addrs: Vec<Multiaddr> = addrs.into_iter().collect();
        self.0.peerstore.add_addrs(peer, &addrs, ADDRESS_TTL);
    }

    /// The addresses known for `peer`.
    pub fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.0.peerstore.addrs(peer)
    }

    /// Forgets every dial back-off of `peer`.
    pub fn clear_backoff(&self, peer: &PeerId) {
        self.0.backoff.clear(peer)
    }

    /// Forgets every dial back-off.
    pub fn clear_all_backoffs(&self) {
        self.0.backoff.clear_all()
    }

    /// The open connections to `peer`.
    pub fn conns_to_peer(&self, peer: &PeerId) -> Vec<Conn> {
        self.0
            .conns
            .get(peer)
            .map(|c| c.iter().filter(|c| !c.is_closed()).cloned().collect())
            .unwrap_or_default()
    }

    /// Every open connection.
    pub fn conns(&self) -> Vec<Conn> {
        self.0
            .conns
            .iter()
            .flat_map(|e| e.value().clone())
            .filter(|c| !c.is_closed())
            .collect()
    }

    /// Peers with at least one open connection.
    pub fn peers(&self) -> Vec<PeerId> {
        self.0.conns.iter().map(|e| *e.key()).collect()
    }

    /// Whether we are connected to `peer`.
    pub fn connectedness(&self, peer: &PeerId) -> Connectedness {
        if self.best_conn(peer).is_some() {
            Connectedness::Connected
        } else {
            Connectedness::NotConnected
        }
    }

    /// The connection new streams to `peer` go on (see the rule on [`crate::conn`]'s
    /// `best`: fewest streams, then outbound, then newest).
    pub fn best_conn(&self, peer: &PeerId) -> Option<Conn> {
        let conns = self.0.conns.get(peer).map(|c| c.clone())?;
        best(&conns)
    }

    /// Closes every connection to `peer` (reason [`DisconnectReason::Local`]).
    pub async fn close_peer(&self, peer: &PeerId) {
        let conns = self.conns_to_peer(peer);
        futures::future::join_all(conns.iter().map(|c| c.close())).await;
    }

    /// Takes in a new capable connection (admitted and counted by the resource manager
    /// before its handshake): checks it, announces it and starts its task. A refused
    /// connection is closed (the remote sees a closed connection) and never announced.
    /// The [`Ack`] resolves when the notifiees have heard of it.
    pub(crate) fn add_conn(&self, capable: BoxCapableConn) -> Result<(Conn, Ack), SwarmError> {
        let refuse = |capable: BoxCapableConn, e: SwarmError| {
            tracing::debug!(peer = %capable.remote_peer(), error = %e, "refusing a connection");
            self.close_untracked_conn(capable);
            Err(e)
        };
        if self.is_closed() {
            return refuse(capable, SwarmError::Closed);
        }
        let peer = capable.remote_peer();
        if peer == self.0.local_peer {
            return refuse(capable, SwarmError::DialSelf);
        }
        let direction = capable.direction();
        let id = ConnId(self.0.next_conn.fetch_add(1, Ordering::Relaxed));
        let conn = Conn::new(
            id,
            capable,
            self.0.config.max_streams_per_connection,
            self.0.streams.clone(),
            self.0.rcmgr.clone(),
        );
        self.0.conns.entry(peer).or_default().push(conn.clone());
        self.0.peerstore.peer_connected(peer);
        if direction == Direction::Outbound {
            // We chose this address and it answered: worth keeping while connected.
            self.0.peerstore.add_addrs(
                peer,
                std::slice::from_ref(conn.remote_multiaddr()),
                crate::peerstore::CONNECTED_ADDR_TTL,
            );
        }
        if let Some(m) = self.metrics() {
            m.opened_connection(&conn);
        }
        self.emit(SwarmEvent::ConnectionOpened {
            peer,
            conn: id,
            direction,
        });
        let (told, ack) = self.0.notifier.connected(&conn);
        *conn.0.told.lock().unwrap_or_else(|p| p.into_inner()) = told;
        // Everything logged on the connection's task carries who and where.
        let span = tracing::info_span!(
            "conn",
            id = %id,
            peer = %peer,
            addr = %conn.remote_multiaddr(),
            direction = ?direction,
        );
        self.0.tracker.spawn(
            self.clone()
                .run_conn(conn.clone(), ack.clone())
                .instrument(span),
        );
        Ok((conn, ack))
    }

    /// Closes a connection the swarm does not keep (refused, or to the wrong peer) on a
    /// tracked task: gracefully, unless a shutdown reaches its deadline first.
    pub(crate) fn close_untracked_conn(&self, capable: BoxCapableConn) {
        let force = self.0.force.clone();
        if self.is_closed() {
            // Shutting down: nothing is owed to a connection we never took.
            capable.abort();
        }
        self.0.tracker.spawn(async move {
            tokio::select! {
                _ = capable.close() => {}
                _ = force.cancelled() => {
                    capable.abort();
                    capable.closed().await;
                }
            }
        });
    }

    /// Every connection the swarm holds, closed or not.
    pub(crate) fn all_conns(&self) -> Vec<Conn> {
        self.0
            .conns
            .iter()
            .flat_map(|e| e.value().clone())
            .collect()
    }

    /// Waits, at most `notifiee_connected_bound`, for the notifiees to return from
    /// `connected` for a connection; past the bound, counts and logs the lateness.
    pub(crate) async fn wait_for_notifiees(&self, conn: &Conn, ack: Ack) {
        let bound = self.0.config.notifiee_connected_bound;
        if !ack.wait(bound).await {
            self.0.notifier.record_late();
            tracing::warn!(
                conn = %conn.id(),
                peer = %conn.remote_peer(),
                "a notifiee did not return from `connected` within {bound:?}; going on without it"
            );
        }
    }

    /// A connection's task: once every notifiee has returned from `connected` (or the
    /// bound has passed), accepts inbound streams; when the connection ends, removes it
    /// and reports why.
    async fn run_conn(self, conn: Conn, ack: Ack) {
        let accept = async {
            self.wait_for_notifiees(&conn, ack).await;
            loop {
                match conn.capable().accept_stream().await {
                    Ok(stream) => self.handle_inbound(&conn, stream),
                    Err(e) => return e,
                }
            }
        };
        tokio::select! {
            _ = self.0.cancel.cancelled() => conn.close_with(DisconnectReason::Shutdown).await,
            e = accept => {
                // `Closed` means the connection has ended and says why itself. Any other
                // accept error leaves a connection that can no longer take inbound
                // streams: close it (as go-libp2p does) rather than keep a half-dead
                // connection that would wait forever here and still be picked for dials.
                if !matches!(e, ConnError::Closed { .. }) {
                    conn.close_with(DisconnectReason::Error(e.to_string())).await;
                }
            }
            _ = conn.capable().closed() => {}
        }
        let reason = conn.final_reason().await;
        let peer = conn.remote_peer();
        let removed = self.0.conns.remove_if_mut(&peer, |_, list| {
            list.retain(|c| c.id() != conn.id());
            list.is_empty()
        });
        drop(removed);
        self.0.peerstore.peer_disconnected(peer);
        if let Some(m) = self.metrics() {
            m.closed_connection(&conn, &reason);
        }
        self.emit(SwarmEvent::ConnectionClosed {
            peer,
            conn: conn.id(),
            reason: reason.clone(),
        });
        let told = std::mem::take(&mut *conn.0.told.lock().unwrap_or_else(|p| p.into_inner()));
        self.0.notifier.disconnected(&conn, &reason, &told);
    }

    fn handle_inbound(&self, conn: &Conn, mut stream: Stream) {
        // During a shutdown no new work is taken; over a limit the remote sees a reset.
        let guard = match conn.reserve_stream() {
            Some(g) if !self.is_closed() => g,
            _ => {
                stream.reset();
                return;
            }
        };
        let scope = match self
            .0
            .rcmgr
            .open_stream(conn.remote_peer(), Direction::Inbound)
        {
            Ok(scope) => scope,
            Err(e) => {
                tracing::debug!(peer = %conn.remote_peer(), "inbound stream refused: {e}");
                stream.reset();
                return;
            }
        };
        let handler = self
            .0
            .handler
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(handler) = handler else {
            stream.reset();
            return;
        };
        let reset = Arc::new(AtomicBool::new(false));
        let stream = wrap(stream, guard, Some(reset.clone()), scope);
        let conn = conn.clone();
        let cancel = self.0.cancel.clone();
        // The protocol is recorded once the host's mux has negotiated it.
        let span = tracing::debug_span!(
            "stream",
            peer = %conn.remote_peer(),
            conn = %conn.id(),
            direction = "inbound",
            protocol = tracing::field::Empty,
        );
        let task = async move {
            let peer = conn.remote_peer();
            // Kept in a local so that it (and the stream inside it) is dropped only after
            // the reset flag is set.
            let mut call = pin!(AssertUnwindSafe(handler(stream, conn)).catch_unwind());
            tokio::select! {
                result = &mut call => if result.is_err() {
                    tracing::error!(%peer, "a stream handler panicked; resetting its stream");
                    reset.store(true, Ordering::Release);
                },
                _ = cancel.cancelled() => reset.store(true, Ordering::Release),
            }
        };
        self.0.tracker.spawn(task.instrument(span));
    }

    /// The number of streams open across the swarm, as it changes.
    pub fn stream_count_watch(&self) -> watch::Receiver<usize> {
        self.0.streams.subscribe()
    }

    /// Streams open across the swarm right now.
    pub fn stream_count(&self) -> usize {
        *self.0.streams.borrow()
    }

    pub(crate) fn gater(&self) -> Option<&Arc<dyn ConnectionGater>> {
        self.0.gater.as_ref()
    }
}
