//! The host: what applications hold.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use strata_core::addr::with_peer_id;
use strata_core::{Direction, Keypair, Multiaddr, PeerId, Stream, StreamIo};
use strata_swarm::{
    Conn, Connectedness, DisconnectReason, Notifiee, NotifyHandle, StreamOptions, Swarm, SwarmError,
};
use strata_upgrader::multistream::{dialer_select, dialer_select_lazy, LazyNegotiated};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::HostError;
use crate::events::HostEvent;
use crate::identify::{
    apply_to_peerstore, recv_identify_reserving, send_identify, IdentifyInfo, IDENTIFY_PROTOCOL,
    IDENTIFY_PUSH_PROTOCOL, IDENTIFY_TIMEOUT,
};
use crate::mux::{ConnHandler, ProtocolMatch, ProtocolMux};
use crate::peerstore::{Peerstore, TEMP_ADDR_TTL};
use crate::perf::{perf_service, PERF_PROTOCOL};
use crate::ping::{ping_once, ping_service, PingError, PING_PROTOCOL};
use crate::services::ServicePolicy;

tokio::task_local! {
    /// Set in the task of [`Host::close_from_closer`].
    static IN_CLOSER: ();
}

/// How long opening a stream may spend negotiating its protocol.
pub const STREAM_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long identify may take on a new connection.
pub const IDENTIFY_DEADLINE: Duration = Duration::from_secs(30);

/// Host settings that are not parts (see [`crate::HostBuilder`] for the table).
#[derive(Debug, Clone)]
pub(crate) struct HostSettings {
    pub agent_version: String,
    pub protocol_version: String,
    pub enable_perf: bool,
    pub ping_interval: Option<Duration>,
}

pub(crate) struct HostInner {
    pub(crate) key: Keypair,
    pub(crate) swarm: Swarm,
    mux: Arc<ProtocolMux>,
    settings: HostSettings,
    pub(crate) events: broadcast::Sender<HostEvent>,
    pub(crate) tasks: TaskTracker,
    /// A close the host started on its own (a required service failed): it cannot be
    /// one of `tasks`, which it waits for; every other close waits for it.
    closer: TaskTracker,
    pub(crate) cancel: CancellationToken,
    /// Cancelled when a shutdown reaches its deadline: services still running are dropped.
    pub(crate) force: CancellationToken,
    pub(crate) services: crate::services::Services,
    /// Wakes the identify push service.
    push_request: tokio::sync::Notify,
    pub(crate) messaging: crate::messaging::Messaging,
    own_notifiee: Mutex<Option<NotifyHandle>>,
    pub(crate) connmgr: Option<Arc<crate::connmgr::ConnManager>>,
    quic: Option<Arc<strata_transport::QuicTransport>>,
    metrics: Option<Arc<crate::metrics::HostMetrics>>,
    /// Our addresses as peers see them (identify's observed address).
    observed: crate::observed::ObservedAddrs,
}

/// A libp2p host: a swarm, a protocol mux, a peerstore, identify, ping (and perf).
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Host(pub(crate) Arc<HostInner>);

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Runs identify on every new connection, lets the connection manager count it, and
/// ends a peer's message sessions when its last connection closes. (The swarm keeps the
/// peerstore in step with connections itself.)
struct HostNotifiee(Weak<HostInner>);

#[async_trait]
impl Notifiee for HostNotifiee {
    async fn connected(&self, _swarm: &Swarm, conn: &Conn) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let host = Host(inner);
        if let Some(cm) = &host.0.connmgr {
            cm.on_connected(&host, conn);
        }
        let conn = conn.clone();
        let h = host.clone();
        host.0.tasks.spawn(async move {
            tokio::select! {
                _ = h.0.cancel.cancelled() => {}
                _ = h.identify_conn(conn) => {}
            }
        });
    }

    async fn disconnected(&self, swarm: &Swarm, conn: &Conn, reason: &DisconnectReason) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let peer = conn.remote_peer();
        if swarm.connectedness(&peer) == Connectedness::NotConnected {
            Host(inner).messaging_disconnected(peer, reason);
        }
    }
}

impl Host {
    pub(crate) fn assemble(
        key: Keypair,
        swarm: Swarm,
        settings: HostSettings,
        connmgr: Option<Arc<crate::connmgr::ConnManager>>,
        events_capacity: usize,
        quic: Option<Arc<strata_transport::QuicTransport>>,
        metrics: Option<Arc<crate::metrics::HostMetrics>>,
    ) -> Host {
        let inner = Arc::new(HostInner {
            key,
            swarm,
            mux: Arc::new(ProtocolMux::new(metrics.clone())),
            settings,
            events: broadcast::channel(events_capacity.max(1)).0,
            tasks: TaskTracker::new(),
            closer: TaskTracker::new(),
            cancel: CancellationToken::new(),
            force: CancellationToken::new(),
            services: crate::services::Services::default(),
            push_request: tokio::sync::Notify::new(),
            messaging: crate::messaging::Messaging::default(),
            own_notifiee: Mutex::new(None),
            connmgr,
            quic,
            metrics,
            observed: crate::observed::ObservedAddrs::default(),
        });
        let host = Host(inner);
        let mux = host.0.mux.clone();
        host.0
            .swarm
            .set_stream_handler(Arc::new(move |stream, conn| {
                let mux = mux.clone();
                Box::pin(async move { mux.handle(stream, conn).await })
            }));
        let handle = host
            .0
            .swarm
            .notify(Arc::new(HostNotifiee(Arc::downgrade(&host.0))));
        *host
            .0
            .own_notifiee
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(handle);
        host.install_services();
        host.spawn_event_forwarder();
        host
    }

    fn install_services(&self) {
        let weak = Arc::downgrade(&self.0);
        self.set_conn_handler(IDENTIFY_PROTOCOL, None, {
            let weak = weak.clone();
            Arc::new(move |mut stream, conn| {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(inner) = weak.upgrade() else { return };
                    if serve_as(&stream, IDENTIFY_SERVICE).is_err() {
                        stream.reset();
                        return;
                    }
                    let info = Host(inner).identify_info(Some(conn.remote_multiaddr().clone()));
                    if let Err(e) = send_identify(&mut stream, &info).await {
                        tracing::debug!(peer = %conn.remote_peer(), "identify answer failed: {e}");
                    }
                })
            })
        });
        self.set_conn_handler(IDENTIFY_PUSH_PROTOCOL, None, {
            let weak = weak.clone();
            Arc::new(move |mut stream, conn| {
                let weak = weak.clone();
                Box::pin(async move {
                    let Some(inner) = weak.upgrade() else { return };
                    let host = Host(inner);
                    let peer = conn.remote_peer();
                    if serve_as(&stream, IDENTIFY_SERVICE).is_err() {
                        stream.reset();
                        return;
                    }
                    // What the push carries is reserved from the stream as it arrives.
                    let memory = stream.scope().memory().clone();
                    match recv_identify_reserving(&mut stream, peer, IDENTIFY_TIMEOUT, &memory)
                        .await
                    {
                        Ok(info) => host.record_identify(peer, info, true),
                        Err(e) => tracing::debug!(%peer, "identify push refused: {e}"),
                    }
                })
            })
        });
        self.set_conn_handler(
            PING_PROTOCOL,
            None,
            Arc::new(|mut stream, _| {
                Box::pin(async move {
                    if serve_as(&stream, PING_SERVICE).is_err() {
                        stream.reset();
                        return;
                    }
                    let _ = ping_service(stream).await;
                })
            }),
        );
        if self.0.settings.enable_perf {
            self.set_conn_handler(
                PERF_PROTOCOL,
                None,
                Arc::new(|mut stream, _| {
                    Box::pin(async move {
                        if serve_as(&stream, PERF_SERVICE).is_err() {
                            stream.reset();
                            return;
                        }
                        let _ = perf_service(stream).await;
                    })
                }),
            );
        }
        // The host's own background work runs as supervised services.
        let restart = ServicePolicy::restart();
        let _ = self.spawn_service("identify push", restart, |ctx| async move {
            ctx.host.run_identify_push(&ctx.cancel).await;
            Ok(())
        });
        if let Some(interval) = self.0.settings.ping_interval {
            let _ = self.spawn_service("keep-alive pings", restart, move |ctx| async move {
                ctx.host.run_keep_alive(interval, &ctx.cancel).await;
                Ok(())
            });
        }
        let every = self.0.swarm.config().maintenance_interval;
        let _ = self.spawn_service("peerstore cleanup", restart, move |ctx| async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    _ = tick.tick() => ctx.host.network().maintain(),
                }
            }
        });
        if self.0.connmgr.is_some() {
            let _ = self.spawn_service("connection manager", restart, |ctx| async move {
                if let Some(cm) = ctx.host.conn_manager() {
                    cm.run(&ctx.host, &ctx.cancel).await;
                }
                Ok(())
            });
        }
    }

    /// Pings every connected peer at `interval`, each on a task of its own.
    async fn run_keep_alive(&self, interval: Duration, cancel: &CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            for peer in self.0.swarm.peers() {
                let h = self.clone();
                let cancel = cancel.clone();
                self.0.tasks.spawn(async move {
                    let ping = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = h.ping(peer) => r,
                    };
                    match ping {
                        Ok(rtt) => {
                            let _ = h.0.events.send(HostEvent::Pinged { peer, rtt });
                        }
                        Err(e) => tracing::debug!(%peer, "keep-alive ping failed: {e}"),
                    }
                });
            }
        }
    }

    fn spawn_event_forwarder(&self) {
        let mut swarm_events = self.0.swarm.events();
        let events = self.0.events.clone();
        let cancel = self.0.cancel.clone();
        self.0.tasks.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = swarm_events.recv() => e,
                };
                match event {
                    Ok(e) => {
                        let _ = events.send(HostEvent::Swarm(e));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = events.send(HostEvent::Missed(n));
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Our peer ID.
    pub fn id(&self) -> PeerId {
        self.0.swarm.local_peer()
    }

    /// Our key pair.
    pub fn keypair(&self) -> &Keypair {
        &self.0.key
    }

    /// The addresses we listen on (unspecified addresses expanded to interfaces), and
    /// those peers in at least four networks observe us at (see
    /// [`crate::observed`]): what identify announces and the DHT advertises.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        let mut addrs = self.0.swarm.interface_listen_addresses();
        let store = self.peerstore();
        for a in self
            .0
            .observed
            .believed(|p| store.is_connected(p), tokio::time::Instant::now())
        {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs
    }

    /// Only the addresses we listen on (unspecified ones expanded to interfaces).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.0.swarm.interface_listen_addresses()
    }

    /// [`Host::addrs`] with our `/p2p/<peer id>` appended: what a remote needs to dial us.
    pub fn addrs_with_peer_id(&self) -> Vec<Multiaddr> {
        let id = self.id();
        self.addrs()
            .iter()
            .filter_map(|a| with_peer_id(a, id).ok())
            .collect()
    }

    /// What we know about other peers.
    pub fn peerstore(&self) -> &Peerstore {
        self.0.swarm.peerstore()
    }

    /// The resource manager: limits, and a snapshot of usage per scope with `stat()`.
    pub fn resource_manager(&self) -> &strata_core::SharedResourceManager {
        self.0.swarm.resource_manager()
    }

    /// The swarm underneath, for what the host does not wrap.
    pub fn network(&self) -> &Swarm {
        &self.0.swarm
    }

    /// Serves `protocol` with `handler`, an async closure run on each inbound stream in
    /// its own task. Replaces an earlier handler of the same protocol; connected peers
    /// hear of the new protocol through identify push.
    pub fn set_stream_handler<F, Fut>(&self, protocol: &str, handler: F)
    where
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set_conn_handler(protocol, None, user_handler(handler));
        self.push_identify();
    }

    /// Serves `protocol` with `serve`, run on each inbound stream with the object behind
    /// `target`, for as long as that object lives: the handler holds it weakly (so a
    /// protocol's state is not kept alive by its own handler), and a stream that arrives
    /// after it is gone is reset. How the protocols above the host (the DHT, pubsub)
    /// serve theirs.
    pub fn set_stream_handler_for<T, F, Fut>(&self, protocol: &str, target: &Arc<T>, serve: F)
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>, Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let weak = Arc::downgrade(target);
        let serve = Arc::new(serve);
        self.set_stream_handler(protocol, move |mut stream: Stream| {
            let target = weak.upgrade();
            let serve = serve.clone();
            async move {
                match target {
                    Some(target) => serve(target, stream).await,
                    None => stream.reset(),
                }
            }
        });
    }

    /// Serves every protocol for which `matches` says yes (and announces `protocol`),
    /// as go-libp2p's `SetStreamHandlerMatch`.
    pub fn set_stream_handler_match<M, F, Fut>(&self, protocol: &str, matches: M, handler: F)
    where
        M: Fn(&str) -> bool + Send + Sync + 'static,
        F: Fn(Stream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let matcher: ProtocolMatch = Arc::new(matches);
        self.set_conn_handler(protocol, Some(matcher), user_handler(handler));
        self.push_identify();
    }

    /// Stops serving `protocol`.
    pub fn remove_stream_handler(&self, protocol: &str) {
        if self.0.mux.remove(protocol) {
            self.push_identify();
        }
    }

    pub(crate) fn set_conn_handler(
        &self,
        protocol: &str,
        matcher: Option<ProtocolMatch>,
        handler: ConnHandler,
    ) {
        self.0.mux.set(protocol, matcher, handler);
    }

    /// The protocols we serve.
    pub fn protocols(&self) -> Vec<String> {
        self.0.mux.protocols()
    }

    /// Connects to `peer` at `addrs` (added to the peerstore and swarm) unless already
    /// connected.
    pub async fn connect(&self, peer: PeerId, addrs: &[Multiaddr]) -> Result<(), HostError> {
        if !addrs.is_empty() {
            self.peerstore().add_addrs(peer, addrs, TEMP_ADDR_TTL);
        }
        self.0.swarm.dial_peer(peer).await?;
        Ok(())
    }

    /// Closes every connection to `peer`.
    pub async fn disconnect(&self, peer: PeerId) {
        self.0.swarm.close_peer(&peer).await
    }

    /// Opens a stream to `peer` speaking the first of `protocols` it accepts, dialing
    /// first if needed. When the peerstore already knows the peer speaks one of them, the
    /// negotiation is lazy: no round trip before the first write.
    pub async fn new_stream(&self, peer: PeerId, protocols: &[&str]) -> Result<Stream, HostError> {
        if protocols.is_empty() {
            return Err(HostError::NoProtocols);
        }
        let mut stream = self
            .0
            .swarm
            .new_stream_with(peer, StreamOptions::default())
            .await?;
        if let Some(known) = self.peerstore().first_supported_protocol(&peer, protocols) {
            return self.lazy_stream(stream, peer, known).await;
        }
        let picked = tokio::time::timeout(
            STREAM_NEGOTIATION_TIMEOUT,
            dialer_select(&mut stream, protocols),
        )
        .await
        .map_err(|_| HostError::Negotiation {
            peer,
            message: format!("no answer within {STREAM_NEGOTIATION_TIMEOUT:?}"),
        })?
        .map_err(|e| HostError::Negotiation {
            peer,
            message: e.to_string(),
        })?;
        let _ = self.peerstore().add_protocols(peer, &[picked.as_str()]);
        charge_protocol(&mut stream, peer, &picked)?;
        self.stream_ready(&mut stream, peer, &picked);
        stream.set_protocol(picked);
        Ok(stream)
    }

    /// Opens a stream to `peer` proposing `protocol` without waiting for the answer
    /// (multistream-select's lazy mode, rust-libp2p's `V1Lazy`), dialing first if needed.
    /// The proposal leaves with the first write, so a request costs no round trip of its
    /// own; a refusal shows on the first read, as [`std::io::ErrorKind::Unsupported`], and
    /// any read error before the confirmation carries a [`ProtocolNotConfirmed`].
    /// For request/response protocols whose first move is the opener's.
    pub async fn new_stream_optimistic(
        &self,
        peer: PeerId,
        protocol: &str,
    ) -> Result<Stream, HostError> {
        let stream = self
            .0
            .swarm
            .new_stream_with(peer, StreamOptions::default())
            .await?;
        self.lazy_stream(stream, peer, protocol.to_string()).await
    }

    async fn lazy_stream(
        &self,
        mut stream: Stream,
        peer: PeerId,
        protocol: String,
    ) -> Result<Stream, HostError> {
        charge_protocol(&mut stream, peer, &protocol)?;
        // The wrapper takes the stream's place, with its scope and remote end.
        let scope = stream.take_scope();
        let remote = stream.remote();
        let lazy =
            dialer_select_lazy(stream, &protocol)
                .await
                .map_err(|e| HostError::Negotiation {
                    peer,
                    message: e.to_string(),
                })?;
        let mut out = Stream::new(Box::new(LazyStream(lazy)), Direction::Outbound);
        out.set_scope(scope);
        if let Some((peer, addr)) = remote {
            out.set_remote(peer, addr);
        }
        self.stream_ready(&mut out, peer, &protocol);
        out.set_protocol(protocol);
        Ok(out)
    }

    /// An outbound stream has its protocol (one the caller asked for): counted and logged.
    fn stream_ready(&self, stream: &mut Stream, peer: PeerId, protocol: &str) {
        tracing::debug!(%peer, protocol, direction = "outbound", "stream opened");
        if let Some(m) = &self.0.metrics {
            m.stream_opened(stream, protocol);
        }
    }

    /// Measures the round-trip time to `peer` with one `/ipfs/ping/1.0.0` exchange and
    /// records it in the peerstore.
    pub async fn ping(&self, peer: PeerId) -> Result<Duration, HostError> {
        // The proposal and the first ping leave together: one round trip on a new stream.
        let mut stream = self.new_stream_optimistic(peer, PING_PROTOCOL).await?;
        if let Err(source) = serve_as(&stream, PING_SERVICE) {
            stream.reset();
            return Err(HostError::Resource {
                peer,
                protocol: PING_PROTOCOL.to_owned(),
                source,
            });
        }
        let rtt = match ping_once(&mut stream).await {
            Ok(rtt) => rtt,
            // The lazy proposal was refused, or the stream failed before the remote
            // confirmed it: a negotiation failure, as with `new_stream`.
            Err(PingError::Io(e)) if ProtocolNotConfirmed::is(&e) => {
                return Err(HostError::Negotiation {
                    peer,
                    message: e.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let _ = stream.close_write().await;
        let _ = self.peerstore().add_protocols(peer, &[PING_PROTOCOL]);
        self.peerstore().record_latency(peer, rtt);
        Ok(rtt)
    }

    /// Registers a notifiee on the swarm (see [`strata_swarm::Notifiee`]).
    pub fn notify(&self, notifiee: Arc<dyn Notifiee>) -> NotifyHandle {
        self.0.swarm.notify(notifiee)
    }

    /// The host's events: the swarm's, and identify's. Bounded: a receiver that falls
    /// behind is told how many it missed.
    pub fn events(&self) -> broadcast::Receiver<HostEvent> {
        self.0.events.subscribe()
    }

    /// The connection manager, when one was configured.
    pub fn conn_manager(&self) -> Option<&Arc<crate::connmgr::ConnManager>> {
        self.0.connmgr.as_ref()
    }

    /// Closes the host now: its services, then the swarm (every listener, connection and
    /// task; see [`Swarm::close`]) and the QUIC endpoints, within the swarm's
    /// `close_deadline` (1 s by default); what is still closing then is reset.
    /// Idempotent; returns when everything has ended.
    pub async fn close(&self) {
        let deadline = self.0.swarm.config().close_deadline;
        self.stop(deadline, false).await
    }

    /// Graceful shutdown within `deadline`: stops listening and taking new work, lets open
    /// streams finish, then closes everything; what is left at the deadline is forced
    /// (connections reset, tasks cancelled). Returns by the deadline plus a small margin,
    /// however the peers behave, with every task and socket of the host gone.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stop(deadline, true).await
    }

    async fn stop(&self, deadline: Duration, let_streams_finish: bool) {
        let hard = tokio::time::Instant::now() + deadline;
        self.0.cancel.cancel();
        if let_streams_finish {
            self.0.swarm.shutdown(deadline).await;
        } else {
            self.0.swarm.close().await;
        }
        if let Some(q) = &self.0.quic {
            let left = hard.saturating_duration_since(tokio::time::Instant::now());
            q.close_within(left).await;
        }
        // Every host task watches the cancellation and none waits on a remote once the
        // swarm is closed; a service that ignores its token is dropped at the deadline.
        self.0.tasks.close();
        if tokio::time::timeout_at(hard, self.0.tasks.wait())
            .await
            .is_err()
        {
            self.0.force.cancel();
            self.0.tasks.wait().await;
        }
        self.0
            .own_notifiee
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // A close the host started on its own finishes before any other returns (the
        // closer itself does not wait for itself).
        if IN_CLOSER.try_with(|_| ()).is_err() {
            self.0.closer.close();
            self.0.closer.wait().await;
        }
    }

    /// Closes the host from a task of its own (the one close that is not among the
    /// host's tasks, since it waits for them), tracked so that other closes wait for it.
    pub(crate) fn close_from_closer(&self) {
        let host = self.clone();
        self.0
            .closer
            .spawn(IN_CLOSER.scope((), async move { host.close().await }));
    }

    pub(crate) fn identify_info(&self, observed: Option<Multiaddr>) -> IdentifyInfo {
        IdentifyInfo {
            public_key: self.0.key.public(),
            protocol_version: self.0.settings.protocol_version.clone(),
            agent_version: self.0.settings.agent_version.clone(),
            listen_addrs: self.addrs(),
            observed_addr: observed,
            protocols: self.protocols(),
        }
    }

    async fn identify_conn(&self, conn: Conn) {
        let peer = conn.remote_peer();
        let started = Instant::now();
        let result = tokio::time::timeout(IDENTIFY_DEADLINE, async {
            let mut stream = conn.new_stream().await.map_err(|e| e.to_string())?;
            dialer_select(&mut stream, &[IDENTIFY_PROTOCOL])
                .await
                .map_err(|e| e.to_string())?;
            serve_as(&stream, IDENTIFY_SERVICE).map_err(|e| e.to_string())?;
            let memory = stream.scope().memory().clone();
            recv_identify_reserving(&mut stream, peer, IDENTIFY_TIMEOUT, &memory)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no identify within {IDENTIFY_DEADLINE:?}")));
        match result {
            Ok(info) => {
                tracing::debug!(%peer, took = ?started.elapsed(), "identified");
                if let Some(observed) = &info.observed_addr {
                    self.0.observed.record(
                        &self.listen_addrs(),
                        conn.local_multiaddr(),
                        conn.remote_multiaddr(),
                        observed,
                        peer,
                        tokio::time::Instant::now(),
                    );
                }
                self.record_identify(peer, info, !conn.is_closed());
            }
            Err(error) => {
                tracing::debug!(%peer, "identify failed: {error}");
                let _ = self
                    .0
                    .events
                    .send(HostEvent::IdentifyFailed { peer, error });
            }
        }
    }

    fn record_identify(&self, peer: PeerId, info: IdentifyInfo, connected: bool) {
        // Only addresses that could ever be dialed are kept: none unspecified, multicast
        // or link-local, none for a transport we lack, none the address filter refuses.
        let mut info = info;
        info.listen_addrs.retain(|a| self.0.swarm.is_dialable(a));
        if let Err(e) = apply_to_peerstore(self.peerstore(), peer, &info, connected) {
            let _ = self.0.events.send(HostEvent::IdentifyFailed {
                peer,
                error: e.to_string(),
            });
            return;
        }
        let _ = self.0.events.send(HostEvent::Identified {
            peer,
            info: Box::new(info),
        });
        self.messaging_identified(peer);
    }

    /// Asks the identify push service to tell every connected peer our current protocols
    /// and addresses (several requests before it runs make one push).
    pub(crate) fn push_identify(&self) {
        self.0.push_request.notify_one();
    }

    /// The identify push service: on each request, pushes to every connected peer, each
    /// on a task of its own.
    async fn run_identify_push(&self, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.0.push_request.notified() => {}
            }
            for peer in self.0.swarm.peers() {
                let Some(conn) = self.0.swarm.best_conn(&peer) else {
                    continue;
                };
                let host = self.clone();
                let cancel = cancel.clone();
                self.0.tasks.spawn(async move {
                    let push = async {
                        let mut stream = conn.new_stream().await.map_err(|e| e.to_string())?;
                        dialer_select(&mut stream, &[IDENTIFY_PUSH_PROTOCOL])
                            .await
                            .map_err(|e| e.to_string())?;
                        serve_as(&stream, IDENTIFY_SERVICE).map_err(|e| e.to_string())?;
                        let info = host.identify_info(Some(conn.remote_multiaddr().clone()));
                        send_identify(&mut stream, &info)
                            .await
                            .map_err(|e| e.to_string())
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        r = push => if let Err(e) = r {
                            tracing::debug!(%peer, "identify push failed: {e}");
                        }
                    }
                });
            }
        }
    }
}

/// The resource-manager service of identify (go-libp2p's name).
pub const IDENTIFY_SERVICE: &str = "libp2p.identify";
/// The resource-manager service of ping (go-libp2p's name).
pub const PING_SERVICE: &str = "libp2p.ping";
/// The resource-manager service of perf.
pub const PERF_SERVICE: &str = "libp2p.perf";
/// The resource-manager service of message protocols.
pub const MESSAGING_SERVICE: &str = "strata.messaging";

/// Charges `stream` to `service`'s resource scope (its streams and what it buffers).
pub(crate) fn serve_as(stream: &Stream, service: &str) -> Result<(), strata_core::ResourceError> {
    stream.scope().set_service(service).inspect_err(|e| {
        tracing::debug!(service, "stream refused by its service's limits: {e}");
    })
}

/// Charges `stream` to `protocol`'s resource scope; over that protocol's limit the stream
/// is reset and the caller gets a typed error.
fn charge_protocol(stream: &mut Stream, peer: PeerId, protocol: &str) -> Result<(), HostError> {
    stream.scope().set_protocol(protocol).map_err(|source| {
        stream.reset();
        HostError::Resource {
            peer,
            protocol: protocol.to_owned(),
            source,
        }
    })
}

fn user_handler<F, Fut>(handler: F) -> ConnHandler
where
    F: Fn(Stream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |stream, _conn| {
        let handler = handler.clone();
        Box::pin(async move { handler(stream).await })
    })
}

/// A stream whose protocol is confirmed on first read (see [`Host::new_stream`]).
struct LazyStream(LazyNegotiated<Stream>);

/// The error inside an [`std::io::Error`] read from a lazily negotiated stream (see
/// [`Host::new_stream_optimistic`]) before the remote confirmed its protocol: the remote
/// refused it (kind [`std::io::ErrorKind::Unsupported`]), or the stream failed first, for
/// example reset by a remote that could not read the bytes sent behind the proposal. The
/// error keeps the underlying kind.
#[derive(Debug, thiserror::Error)]
#[error("{protocol} was not confirmed by the remote: {source}")]
pub struct ProtocolNotConfirmed {
    /// The protocol proposed.
    pub protocol: String,
    /// What happened instead of a confirmation.
    pub source: std::io::Error,
}

impl ProtocolNotConfirmed {
    /// Whether `e` reports a protocol the remote never confirmed.
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Self>())
    }
}

impl AsyncRead for LazyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let result = ready!(Pin::new(&mut self.0).poll_read(cx, buf));
        Poll::Ready(result.map_err(|source| {
            if self.0.is_confirmed() {
                return source;
            }
            std::io::Error::new(
                source.kind(),
                ProtocolNotConfirmed {
                    protocol: self.0.protocol().to_string(),
                    source,
                },
            )
        }))
    }
}

impl AsyncWrite for LazyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl StreamIo for LazyStream {
    fn reset(&mut self) {
        self.0.get_mut().reset();
    }
}

impl From<SwarmError> for HostError {
    fn from(e: SwarmError) -> Self {
        HostError::Swarm(e)
    }
}
