//! The DHT on a host: the [`Kad`] handle, its server side, its lookups and operations,
//! and the service that keeps the routing table fed and fresh.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use strata_core::{Multiaddr, PeerId, Stream};
use strata_host::{Host, HostEvent, ServicePolicy, ADDRESS_TTL};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{KadConfig, Mode};
use crate::error::{KadError, RpcError};
use crate::key::{random_key_with_cpl, KadKey, MAX_REFRESH_CPL};
use crate::proto::{self, ConnectionType, Message, MessageType, PeerInfo, Record};
use crate::record::{RecordError, Validator, Validators};
use crate::routing::{RoutingTable, Update};
use crate::rpc::{read_message, write_message, Client, KadStats, SERVICE_NAME};
use crate::store::{ProviderStore, RecordStore, StoreError};

/// How often the service looks at the stores, the buckets and the keys to republish.
const MAINTENANCE_TICK: Duration = Duration::from_secs(60);
/// Liveness checks (of a full bucket's oldest peer, of a peer that disconnected) in
/// flight at once; past it, a full bucket keeps its oldest peer.
const MAX_CHECKS: usize = 16;
/// Most providers one `get_providers` stream yields.
pub const MAX_PROVIDERS_PER_QUERY: usize = 1000;

/// Locks a mutex whose state is edited whole under the lock, so a panic elsewhere
/// cannot have left it torn.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The DHT: a cheap clone handle (as go-libp2p's `*dht.IpfsDHT`). Made with
/// [`Kad::new`] on a host; its work runs as the host's supervised service
/// `libp2p.dht` and stops with the host.
#[derive(Clone)]
pub struct Kad(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) host: Host,
    pub(crate) config: KadConfig,
    pub(crate) local: PeerId,
    pub(crate) table: Mutex<RoutingTable>,
    records: Mutex<RecordStore>,
    providers: Mutex<ProviderStore>,
    validators: RwLock<Validators>,
    /// Keys this node provides, announced again every republish interval.
    provided: Mutex<HashSet<Vec<u8>>>,
    mode: Mutex<Mode>,
    pub(crate) client: Client,
    tasks: TaskTracker,
    cancel: CancellationToken,
    checks: Arc<Semaphore>,
    refreshing: AtomicBool,
    republishing: AtomicBool,
    last_republish: Mutex<Instant>,
    routing_events: tokio::sync::broadcast::Sender<RoutingEvent>,
}

/// A change in the routing table (go-libp2p's `PeerAdded` / `PeerRemoved` callbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingEvent {
    /// The peer entered the table.
    PeerAdded(PeerId),
    /// The peer left it.
    PeerRemoved(PeerId),
}

/// Routing events kept for a subscriber that falls behind.
const ROUTING_EVENTS: usize = 1024;

/// Whether a lookup goes on after an answer.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// How a lookup ended.
pub(crate) struct LookupOutcome {
    /// The peers that answered, closest first.
    pub answered: Vec<PeerInfo>,
    /// The query timeout cut it short.
    pub timed_out: bool,
}

/// What the stores hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records.
    pub records: usize,
    /// Bytes of records' keys and values.
    pub record_bytes: usize,
    /// Provider records (a key and a provider each).
    pub provider_records: usize,
    /// Keys with providers.
    pub provider_keys: usize,
}

impl Kad {
    /// The DHT on `host`, as `dht.New(ctx, host)`: in server mode it serves
    /// `config.protocol` (and identify announces it); either way it starts the service
    /// that feeds the routing table from identify and refreshes it. Join a network with
    /// [`Kad::add_address`] and [`Kad::bootstrap`].
    pub fn new(host: Host, config: KadConfig) -> Kad {
        let local = host.id();
        let memory = host
            .resource_manager()
            .open_span(&strata_core::SpanOwner::service(SERVICE_NAME));
        let inner = Arc::new(Inner {
            table: Mutex::new(RoutingTable::new(local, config.k, config.diversity.clone())),
            records: Mutex::new(RecordStore::new(config.store.clone(), memory.clone())),
            providers: Mutex::new(ProviderStore::new(local, config.store.clone(), memory)),
            validators: RwLock::new(config.validators.clone()),
            provided: Mutex::new(HashSet::new()),
            mode: Mutex::new(config.mode),
            client: Client::new(
                host.clone(),
                config.protocol.clone(),
                config.max_message_size,
                config.request_timeout,
            ),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            checks: Arc::new(Semaphore::new(MAX_CHECKS)),
            refreshing: AtomicBool::new(false),
            republishing: AtomicBool::new(false),
            last_republish: Mutex::new(Instant::now()),
            routing_events: tokio::sync::broadcast::channel(ROUTING_EVENTS).0,
            local,
            host: host.clone(),
            config,
        });
        if inner.config.mode == Mode::Server {
            inner.serve_protocol();
        }
        let service = inner.clone();
        let spawned = host.spawn_service(SERVICE_NAME, ServicePolicy::restart(), move |ctx| {
            let inner = service.clone();
            async move {
                inner.run(ctx.cancel).await;
                Ok(())
            }
        });
        if let Err(e) = spawned {
            // The host is shutting down (or a DHT already runs on it): nothing will run.
            tracing::warn!("DHT service not started: {e}");
            inner.cancel.cancel();
        }
        Kad(inner)
    }

    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.0.local
    }

    /// The host underneath.
    pub fn host(&self) -> &Host {
        &self.0.host
    }

    /// The settings.
    pub fn config(&self) -> &KadConfig {
        &self.0.config
    }

    /// Server or client.
    pub fn mode(&self) -> Mode {
        *lock(&self.0.mode)
    }

    /// Switches between server and client mode: a server serves the protocol and
    /// identify announces it (connected peers hear at once through identify push); a
    /// client removes the handler.
    pub fn set_mode(&self, mode: Mode) {
        let mut current = lock(&self.0.mode);
        if *current == mode {
            return;
        }
        *current = mode;
        drop(current);
        match mode {
            Mode::Server => self.0.serve_protocol(),
            Mode::Client => self.0.host.remove_stream_handler(&self.0.config.protocol),
        }
    }

    /// Registers (or replaces) the validator of records under `/namespace/...`.
    pub fn register_validator(&self, namespace: &str, validator: impl Validator) {
        self.0
            .validators
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(namespace, validator);
    }

    /// Adds a peer known to run a DHT server at `addrs` (a bootstrap peer) to the
    /// peerstore and the routing table, the addresses as given (the address filter is
    /// for what the network tells us); false if the table did not take it.
    pub fn add_address(&self, peer: PeerId, addrs: &[Multiaddr]) -> bool {
        self.0.host.peerstore().add_addrs(peer, addrs, ADDRESS_TTL);
        self.0.insert_peer(peer, addrs)
    }

    /// The peers in the routing table.
    pub fn routing_table(&self) -> Vec<PeerInfo> {
        lock(&self.0.table).entries().map(|e| e.info()).collect()
    }

    /// Changes in the routing table from now on (a subscriber more than 1,024 events
    /// behind misses the oldest).
    pub fn routing_events(&self) -> tokio::sync::broadcast::Receiver<RoutingEvent> {
        self.0.routing_events.subscribe()
    }

    /// Peers per bucket (index: common prefix length with our ID).
    pub fn bucket_sizes(&self) -> Vec<usize> {
        lock(&self.0.table).bucket_sizes()
    }

    /// What the client side has sent so far.
    pub fn stats(&self) -> KadStats {
        self.0.client.stats()
    }

    /// What the stores hold.
    pub fn store_stats(&self) -> StoreStats {
        let records = lock(&self.0.records);
        let providers = lock(&self.0.providers);
        StoreStats {
            records: records.len(),
            record_bytes: records.bytes(),
            provider_records: providers.len(),
            provider_keys: providers.keys(),
        }
    }

    /// The record under `key` in this node's own store (what it answers with).
    pub fn local_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.0.records)
            .get(key, Instant::now())
            .map(|r| r.value)
    }

    /// The providers of `key` this node's own store holds (what it answers with).
    pub fn local_providers(&self, key: &[u8]) -> Vec<PeerInfo> {
        lock(&self.0.providers).get(key, Instant::now())
    }

    /// Joins the network: a lookup of our own ID (which fills the buckets near us), then
    /// a refresh of every bucket up to the deepest one in use. Fails with
    /// [`KadError::NoPeers`] when the routing table is empty.
    pub async fn bootstrap(&self) -> Result<(), KadError> {
        self.0.bootstrap().await
    }

    /// Refreshes the routing table now (go-libp2p's `RefreshRoutingTable`): peers not
    /// seen alive within [`KadConfig::liveness_interval`] are asked whether they are still
    /// there and leave if not, then a bootstrap.
    pub async fn refresh_routing_table(&self) -> Result<(), KadError> {
        self.0.check_liveness().await;
        self.0.bootstrap().await
    }

    /// The `k` closest peers to `key` that answered, closest first (a FIND_NODE lookup
    /// of the key's bytes).
    pub async fn get_closest_peers(&self, key: &[u8]) -> Result<Vec<PeerInfo>, KadError> {
        self.0.get_closest_peers(key).await
    }

    /// The addresses of `peer`: those of a connected peer at once, otherwise from a
    /// lookup that stops at the first answer listing it.
    pub async fn find_peer(&self, peer: PeerId) -> Result<PeerInfo, KadError> {
        self.0.find_peer(peer).await
    }

    /// Stores `value` under `key` here and at the `k` closest peers; succeeds when
    /// [`KadConfig::put_quorum`] of them took it. The key's namespace must have a
    /// validator that accepts the value.
    pub async fn put_value(&self, key: &[u8], value: Vec<u8>) -> Result<(), KadError> {
        self.0.put_value(key, value).await
    }

    /// The best record under `key`, once [`KadConfig::get_quorum`] valid ones are in
    /// (our own store counts). Peers among the closest that answered with another record
    /// or none are sent the best one afterwards, as go-libp2p does.
    pub async fn get_value(&self, key: &[u8]) -> Result<Vec<u8>, KadError> {
        self.0
            .clone()
            .get_value(key, self.0.config.get_quorum)
            .await
    }

    /// As [`Kad::get_value`], with a quorum of `quorum` valid records.
    pub async fn get_value_quorum(&self, key: &[u8], quorum: usize) -> Result<Vec<u8>, KadError> {
        self.0.clone().get_value(key, quorum).await
    }

    /// Announces that this node provides `key` (a CID's multihash bytes, see
    /// [`crate::provider_key`]) to the `k` closest peers; republished every
    /// [`KadConfig::republish_interval`] until the host stops.
    pub async fn provide(&self, key: &[u8]) -> Result<(), KadError> {
        self.0.provide(key).await
    }

    /// Announces many keys at once, sweeping the keyspace: see
    /// [`crate::sweep`]. Returns what it did.
    pub async fn provide_many(
        &self,
        keys: Vec<Vec<u8>>,
    ) -> Result<crate::sweep::ProvideManyReport, KadError> {
        self.0.provide_many(keys).await
    }

    /// The providers of `key` as they are found (ours first), ending after `count` of
    /// them (at most [`MAX_PROVIDERS_PER_QUERY`]) or when the lookup ends. Dropping the
    /// stream stops the lookup.
    pub fn get_providers(&self, key: &[u8], count: usize) -> ProviderStream {
        self.0.clone().get_providers(key.to_vec(), count)
    }

    /// As [`Kad::get_providers`], collected: an error when none is found.
    pub async fn find_providers(
        &self,
        key: &[u8],
        count: usize,
    ) -> Result<Vec<PeerInfo>, KadError> {
        let mut stream = self.get_providers(key, count);
        let mut out = Vec::new();
        while let Some(p) = stream.next().await {
            out.push(p);
        }
        match stream.end() {
            _ if !out.is_empty() => Ok(out),
            Some(e) => Err(e),
            None => Err(KadError::NotFound),
        }
    }
}

/// Providers as a lookup finds them: a [`futures::Stream`], or call
/// [`ProviderStream::next`].
pub struct ProviderStream {
    rx: mpsc::Receiver<Result<PeerInfo, KadError>>,
    end: Option<KadError>,
}

impl ProviderStream {
    /// The next provider; `None` when the lookup is over.
    pub async fn next(&mut self) -> Option<PeerInfo> {
        futures::StreamExt::next(self).await
    }

    /// Why the lookup ended, if it failed (no peers, a timeout).
    pub fn end(&self) -> Option<KadError> {
        match &self.end {
            Some(KadError::NoPeers) => Some(KadError::NoPeers),
            Some(KadError::Timeout) => Some(KadError::Timeout),
            Some(KadError::Closed) => Some(KadError::Closed),
            _ => None,
        }
    }
}

impl futures::Stream for ProviderStream {
    type Item = PeerInfo;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerInfo>> {
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(p))) => Poll::Ready(Some(p)),
                Poll::Ready(Some(Err(e))) => {
                    self.end = Some(e);
                    continue;
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// Why a request was refused (the stream is reset, as go-libp2p does).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    #[error("empty key")]
    EmptyKey,
    #[error("no record in a PUT_VALUE")]
    NoRecord,
    #[error("the message key and the record key differ")]
    KeyMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no provider record from the sender")]
    NoProvider,
}

impl Inner {
    fn serve_protocol(self: &Arc<Self>) {
        self.host
            .set_stream_handler_for(&self.config.protocol, self, |inner, stream| async move {
                inner.serve(stream).await
            });
    }

    /// Runs `fut` as a tracked task that ends with the DHT.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    fn filter_addrs(&self, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        addrs
            .iter()
            .filter(|a| (self.config.address_filter)(a))
            .cloned()
            .collect()
    }

    /// Addresses we know for `peer`: those given, else the peerstore's (filtered).
    fn addrs_for(&self, peer: &PeerId, given: &[Multiaddr]) -> Vec<Multiaddr> {
        let given = self.filter_addrs(given);
        if !given.is_empty() {
            return given;
        }
        self.filter_addrs(&self.host.peerstore().addrs(peer))
    }

    /// A DHT server was seen alive: into the routing table (a full bucket's oldest peer
    /// is checked first).
    pub(crate) fn add_peer(self: &Arc<Self>, peer: PeerId, addrs: &[Multiaddr]) -> bool {
        let addrs = self.addrs_for(&peer, addrs);
        self.insert_peer(peer, &addrs)
    }

    /// Into the routing table at `addrs` as they are (not filtered).
    fn insert_peer(self: &Arc<Self>, peer: PeerId, addrs: &[Multiaddr]) -> bool {
        // Grouped for diversity by where it connects from, when it is connected.
        let seen_at = self
            .host
            .network()
            .best_conn(&peer)
            .map(|c| c.remote_multiaddr().clone());
        let update = lock(&self.table).update_seen(peer, addrs, seen_at.as_ref(), Instant::now());
        match update {
            Update::Added => {
                self.peer_added(peer);
                true
            }
            Update::Refreshed => true,
            Update::CheckOldest(oldest) => {
                self.check_oldest(oldest);
                false
            }
            Update::Refused(_) => false,
        }
    }

    fn peer_added(&self, peer: PeerId) {
        if let Some(cm) = self.host.conn_manager() {
            cm.tag_peer(peer, "kbucket", 5);
        }
        let _ = self.routing_events.send(RoutingEvent::PeerAdded(peer));
    }

    fn peer_removed(&self, peer: PeerId) {
        if let Some(cm) = self.host.conn_manager() {
            cm.untag_peer(peer, "kbucket");
        }
        self.client.forget(&peer);
        let _ = self.routing_events.send(RoutingEvent::PeerRemoved(peer));
    }

    fn remove_peer(&self, peer: &PeerId) {
        let (removed, admitted) = lock(&self.table).remove(peer);
        if removed {
            self.peer_removed(*peer);
        }
        if let Some(p) = admitted {
            self.peer_added(p);
        }
    }

    /// A full bucket's oldest peer was checked.
    fn oldest_checked(&self, oldest: &PeerId, alive: bool) {
        let mut table = lock(&self.table);
        let was_there = table.contains(oldest);
        let admitted = table.oldest_checked(oldest, alive, Instant::now());
        let gone = was_there && !table.contains(oldest);
        drop(table);
        if gone {
            self.peer_removed(*oldest);
        }
        if let Some(p) = admitted {
            self.peer_added(p);
        }
    }

    /// Whether `peer` answers a request now.
    async fn is_alive(&self, peer: &PeerInfo) -> bool {
        let msg = Message::request(MessageType::FindNode, self.local.to_bytes());
        self.client.request(peer, &msg).await.is_ok()
    }

    fn check_oldest(self: &Arc<Self>, oldest: PeerInfo) {
        let Ok(permit) = self.checks.clone().try_acquire_owned() else {
            // Too many checks out: the oldest stays, the newcomer goes.
            self.oldest_checked(&oldest.id, true);
            return;
        };
        let inner = self.clone();
        self.spawn(async move {
            let alive = inner.is_alive(&oldest).await;
            inner.oldest_checked(&oldest.id, alive);
            drop(permit);
        });
    }

    /// Asks every table peer not seen alive within the liveness interval whether it is
    /// still there (eight at a time); those that do not answer leave the table, and a
    /// waiting newcomer takes the place (go-libp2p checks the same way at its refreshes).
    async fn check_liveness(self: &Arc<Self>) {
        let cutoff = Instant::now()
            .checked_sub(self.config.liveness_interval)
            .unwrap_or_else(Instant::now);
        let stale = lock(&self.table).not_seen_since(cutoff);
        futures::stream::iter(stale)
            .for_each_concurrent(8, |peer| async move {
                if !self.is_alive(&peer).await {
                    tracing::debug!(peer = %peer.id, "routing table peer gone");
                    self.remove_peer(&peer.id);
                }
            })
            .await;
    }

    /// The service: feeds the routing table from identify, and every minute expires
    /// store entries, refreshes stale buckets (checking the liveness of peers not seen
    /// for a while first) and republishes what we provide when it is due.
    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut events = self.host.events();
        self.seed_from_peerstore();
        let start = tokio::time::Instant::now() + MAINTENANCE_TICK;
        let mut tick = tokio::time::interval_at(start, MAINTENANCE_TICK);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => self.maintain(),
            }
        }
        if cancel.is_cancelled() {
            // Kept streams would hold a graceful shutdown until its deadline.
            self.cancel.cancel();
            self.client.clear_idle();
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    /// Peers the peerstore already knows as DHT servers go into the table.
    fn seed_from_peerstore(self: &Arc<Self>) {
        let store = self.host.peerstore();
        for peer in store.peers() {
            if peer != self.local
                && !store
                    .supports_protocols(&peer, &[self.config.protocol.as_str()])
                    .is_empty()
            {
                self.add_peer(peer, &[]);
            }
        }
    }

    fn on_event(self: &Arc<Self>, ev: HostEvent) {
        if let HostEvent::Identified { peer, info } = ev {
            if info.protocols.iter().any(|p| p == &self.config.protocol) {
                self.add_peer(peer, &info.listen_addrs);
            } else if lock(&self.table).contains(&peer) {
                // It went client: out of the table.
                self.remove_peer(&peer);
            }
        }
    }

    fn maintain(self: &Arc<Self>) {
        let now = Instant::now();
        lock(&self.records).gc(now);
        lock(&self.providers).gc(now);
        self.client.prune_idle();
        let stale =
            lock(&self.table).stale_buckets(now, self.config.refresh_interval, MAX_REFRESH_CPL);
        if !stale.is_empty() && !lock(&self.table).is_empty() {
            self.refresh_in_background(stale);
        }

        let due = lock(&self.last_republish).elapsed() >= self.config.republish_interval;
        if due && !self.republishing.swap(true, Ordering::SeqCst) {
            *lock(&self.last_republish) = Instant::now();
            let inner = self.clone();
            self.spawn(async move {
                let keys: Vec<Vec<u8>> = lock(&inner.provided).iter().cloned().collect();
                if !keys.is_empty() {
                    if let Err(e) = inner.provide_many(keys).await {
                        tracing::debug!("republish failed: {e}");
                    }
                }
                inner.republishing.store(false, Ordering::SeqCst);
            });
        }
    }

    fn refresh_in_background(self: &Arc<Self>, cpls: Vec<usize>) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        self.spawn(async move {
            inner.check_liveness().await;
            inner.refresh(cpls).await;
            inner.refreshing.store(false, Ordering::SeqCst);
        });
    }

    /// Lookups of a random key in each bucket of `cpls`, four at a time.
    async fn refresh(self: &Arc<Self>, cpls: Vec<usize>) {
        let local_key = KadKey::from_peer(&self.local);
        futures::stream::iter(cpls)
            .for_each_concurrent(4, |cpl| {
                let key = random_key_with_cpl(&local_key, cpl);
                async move {
                    let _ = self
                        .lookup(&key, MessageType::FindNode, |_, _| Flow::Continue)
                        .await;
                }
            })
            .await;
    }

    async fn bootstrap(self: &Arc<Self>) -> Result<(), KadError> {
        let own = self.local.to_bytes();
        let outcome = self
            .lookup(&own, MessageType::FindNode, |_, _| Flow::Continue)
            .await?;
        if outcome.answered.is_empty() {
            return Err(if outcome.timed_out {
                KadError::Timeout
            } else {
                KadError::NoPeers
            });
        }
        let deepest = lock(&self.table)
            .bucket_sizes()
            .len()
            .min(MAX_REFRESH_CPL + 1);
        self.refresh((0..deepest).collect()).await;
        Ok(())
    }

    /// The iterative lookup for `key`: asks `alpha` peers at a time with a `kind`
    /// request, feeds every answering peer to the routing table and drops failing ones
    /// from it, and calls `on_answer` with each answer.
    pub(crate) async fn lookup<F>(
        self: &Arc<Self>,
        key: &[u8],
        kind: MessageType,
        mut on_answer: F,
    ) -> Result<LookupOutcome, KadError>
    where
        F: FnMut(&PeerInfo, &Message) -> Flow,
    {
        if self.cancel.is_cancelled() {
            return Err(KadError::Closed);
        }
        let target = KadKey::from_bytes(key);
        let k = self.config.k;
        let seeds = lock(&self.table).closest(&target, k);
        if seeds.is_empty() {
            return Err(KadError::NoPeers);
        }
        let mut lookup = crate::query::Lookup::new(target, self.local, k, self.config.alpha, seeds);
        let request = Message::request(kind, key.to_vec());
        let mut pending = FuturesUnordered::new();
        let deadline = tokio::time::sleep(self.config.query_timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        loop {
            for peer in lookup.next_to_ask() {
                let request = &request;
                pending.push(async move {
                    let answer = self.client.request(&peer, request).await;
                    (peer, answer)
                });
            }
            if lookup.is_done() || pending.is_empty() {
                break;
            }
            let (peer, answer) = tokio::select! {
                Some(done) = pending.next() => done,
                _ = &mut deadline => {
                    timed_out = true;
                    break;
                }
            };
            match answer {
                Ok(answer) => {
                    let closer: Vec<PeerInfo> = proto::peers_of(&answer.closer_peers)
                        .into_iter()
                        .map(|mut p| {
                            p.addrs = self.filter_addrs(&p.addrs);
                            p
                        })
                        .collect();
                    self.add_peer(peer.id, &peer.addrs);
                    lookup.answered(&peer.id, closer);
                    if let Flow::Stop = on_answer(&peer, &answer) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.id, "DHT request failed: {e}");
                    lookup.failed(&peer.id);
                    if !matches!(e, RpcError::Resource(_)) {
                        self.remove_peer(&peer.id);
                    }
                }
            }
        }
        lock(&self.table).looked_up(&target, Instant::now());
        Ok(LookupOutcome {
            answered: lookup.closest_answered(usize::MAX),
            timed_out,
        })
    }

    async fn get_closest_peers(self: &Arc<Self>, key: &[u8]) -> Result<Vec<PeerInfo>, KadError> {
        let outcome = self
            .lookup(key, MessageType::FindNode, |_, _| Flow::Continue)
            .await?;
        let mut closest = outcome.answered;
        closest.truncate(self.config.k);
        if closest.is_empty() {
            return Err(if outcome.timed_out {
                KadError::Timeout
            } else {
                KadError::NoPeers
            });
        }
        Ok(closest)
    }

    async fn find_peer(self: &Arc<Self>, target: PeerId) -> Result<PeerInfo, KadError> {
        if self.host.peerstore().is_connected(&target) {
            let addrs = self.host.peerstore().addrs(&target);
            if !addrs.is_empty() {
                return Ok(PeerInfo { id: target, addrs });
            }
        }
        let mut found: Option<PeerInfo> = None;
        let outcome = self
            .lookup(&target.to_bytes(), MessageType::FindNode, |from, answer| {
                if from.id == target {
                    found = Some(from.clone());
                    return Flow::Stop;
                }
                for p in proto::peers_of(&answer.closer_peers) {
                    if p.id == target {
                        let addrs = self.filter_addrs(&p.addrs);
                        if !addrs.is_empty() {
                            found = Some(PeerInfo { id: target, addrs });
                            return Flow::Stop;
                        }
                    }
                }
                Flow::Continue
            })
            .await?;
        match found {
            Some(info) => {
                self.host
                    .peerstore()
                    .add_addrs(target, &info.addrs, ADDRESS_TTL);
                Ok(info)
            }
            None if outcome.timed_out => Err(KadError::Timeout),
            None => Err(KadError::NotFound),
        }
    }

    fn validators(&self) -> std::sync::RwLockReadGuard<'_, Validators> {
        self.validators.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates a record and stores it if it is better than what is stored.
    fn store_record(
        &self,
        key: &[u8],
        value: Vec<u8>,
        from: Option<PeerId>,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut records = lock(&self.records);
        records.check_size(key, &value)?;
        let validators = self.validators();
        validators.validate(key, &value)?;
        if let Some(old) = records.get(key, now) {
            if old.value == value {
                // Same record: renewed.
            } else if validators.validate(key, &old.value).is_ok()
                && validators.select(key, &[&old.value, &value]) == 0
            {
                return Err(RecordError::Outdated.into());
            }
        }
        drop(validators);
        records.put(key, value, from, now)
    }

    async fn put_value(self: &Arc<Self>, key: &[u8], value: Vec<u8>) -> Result<(), KadError> {
        match self.store_record(key, value.clone(), None) {
            Ok(()) | Err(StoreError::Full | StoreError::PeerFull(_) | StoreError::Memory(_)) => {}
            Err(StoreError::Record(e)) => return Err(e.into()),
            Err(StoreError::KeyTooLarge { len, max }) => {
                return Err(RecordError::Invalid(format!(
                    "key of {len} bytes exceeds the limit of {max}"
                ))
                .into())
            }
        }
        let closest = self.get_closest_peers(key).await?;
        let mut msg = Message::request(MessageType::PutValue, key.to_vec());
        msg.record = Some(Record {
            key: key.to_vec(),
            value,
            time_received: rfc3339(SystemTime::now()),
        });
        let got = self.put_to(&closest, &msg).await;
        let needed = self.config.put_quorum;
        if got >= needed {
            Ok(())
        } else {
            Err(KadError::QuorumFailed { needed, got })
        }
    }

    /// Sends a PUT_VALUE to each of `peers` at once; how many took it.
    async fn put_to(&self, peers: &[PeerInfo], msg: &Message) -> usize {
        let mut sends: FuturesUnordered<_> =
            peers.iter().map(|p| self.client.request(p, msg)).collect();
        let mut got = 0;
        while let Some(r) = sends.next().await {
            if r.is_ok() {
                got += 1;
            }
        }
        got
    }

    async fn get_value(self: Arc<Self>, key: &[u8], quorum: usize) -> Result<Vec<u8>, KadError> {
        let quorum = quorum.max(1);
        let now = Instant::now();
        let mut values: Vec<(Option<PeerId>, Vec<u8>)> = Vec::new();
        if let Some(local) = lock(&self.records).get(key, now) {
            if self.validators().validate(key, &local.value).is_ok() {
                values.push((None, local.value));
            }
        }
        let mut without: Vec<PeerInfo> = Vec::new();
        let outcome = if values.len() >= quorum {
            None
        } else {
            let result = self
                .lookup(key, MessageType::GetValue, |from, answer| {
                    let record = answer.record.as_ref().filter(|r| r.key == key);
                    match record {
                        Some(r) if self.validators().validate(key, &r.value).is_ok() => {
                            values.push((Some(from.id), r.value.clone()));
                        }
                        _ => without.push(from.clone()),
                    }
                    if values.len() >= quorum {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                })
                .await;
            match result {
                Ok(o) => Some(o),
                Err(KadError::NoPeers) if !values.is_empty() => None,
                Err(e) => return Err(e),
            }
        };
        if values.is_empty() {
            return Err(match outcome {
                Some(o) if o.timed_out => KadError::Timeout,
                _ => KadError::NotFound,
            });
        }
        let best = {
            let refs: Vec<&[u8]> = values.iter().map(|(_, v)| v.as_slice()).collect();
            self.validators().select(key, &refs)
        };
        let best_value = values[best].1.clone();
        // Fix-up: the closest peers that answered without the best record get it.
        let mut outdated: Vec<PeerInfo> = without;
        if let Some(o) = &outcome {
            let holding: HashSet<PeerId> = values
                .iter()
                .filter(|(_, v)| v == &best_value)
                .filter_map(|(p, _)| *p)
                .collect();
            for (p, v) in &values {
                if let Some(p) = p {
                    if v != &best_value {
                        if let Some(info) = o.answered.iter().find(|a| &a.id == p) {
                            outdated.push(info.clone());
                        }
                    }
                }
            }
            let closest: HashSet<PeerId> = o
                .answered
                .iter()
                .take(self.config.k)
                .map(|p| p.id)
                .collect();
            outdated.retain(|p| closest.contains(&p.id) && !holding.contains(&p.id));
        }
        if !outdated.is_empty() {
            let mut msg = Message::request(MessageType::PutValue, key.to_vec());
            msg.record = Some(Record {
                key: key.to_vec(),
                value: best_value.clone(),
                time_received: rfc3339(SystemTime::now()),
            });
            let inner = self.clone();
            self.spawn(async move {
                inner.put_to(&outdated, &msg).await;
            });
        }
        Ok(best_value)
    }

    /// Our provider record: our ID and the addresses we announce.
    pub(crate) fn self_provider(&self) -> proto::Peer {
        PeerInfo {
            id: self.local,
            addrs: self.filter_addrs(&self.host.addrs()),
        }
        .to_wire(ConnectionType::Connected)
    }

    pub(crate) fn note_provided(&self, key: &[u8]) {
        let addrs = self.filter_addrs(&self.host.addrs());
        let _ = lock(&self.providers).add(key, self.local, &addrs, Instant::now());
        lock(&self.provided).insert(key.to_vec());
    }

    async fn provide(self: &Arc<Self>, key: &[u8]) -> Result<(), KadError> {
        self.note_provided(key);
        let closest = self.get_closest_peers(key).await?;
        let mut msg = Message::request(MessageType::AddProvider, key.to_vec());
        msg.provider_peers.push(self.self_provider());
        let msgs = [msg];
        let mut sends: FuturesUnordered<_> =
            closest.iter().map(|p| self.client.send(p, &msgs)).collect();
        let mut sent = 0;
        while let Some(r) = sends.next().await {
            if r.is_ok() {
                sent += 1;
            }
        }
        if sent == 0 {
            return Err(KadError::QuorumFailed { needed: 1, got: 0 });
        }
        Ok(())
    }

    fn get_providers(self: Arc<Self>, key: Vec<u8>, count: usize) -> ProviderStream {
        let count = count.clamp(1, MAX_PROVIDERS_PER_QUERY);
        // Room for every provider it may yield and the end: sends never wait.
        let (tx, rx) = mpsc::channel(count + 1);
        let inner = self.clone();
        self.spawn(async move {
            let mut seen: HashSet<PeerId> = HashSet::new();
            let local = lock(&inner.providers).get(&key, Instant::now());
            for p in local {
                if seen.len() < count && seen.insert(p.id) {
                    let _ = tx.try_send(Ok(p));
                }
            }
            if seen.len() >= count {
                return;
            }
            let peerstore = inner.host.peerstore().clone();
            let result = inner
                .lookup(&key, MessageType::GetProviders, |_, answer| {
                    for p in proto::peers_of(&answer.provider_peers) {
                        if seen.len() >= count || !seen.insert(p.id) {
                            continue;
                        }
                        let addrs = inner.filter_addrs(&p.addrs);
                        if !addrs.is_empty() {
                            peerstore.add_addrs(p.id, &addrs, ADDRESS_TTL);
                        }
                        let _ = tx.try_send(Ok(PeerInfo { id: p.id, addrs }));
                    }
                    if seen.len() >= count || tx.is_closed() {
                        Flow::Stop
                    } else {
                        Flow::Continue
                    }
                })
                .await;
            match result {
                Err(e) => {
                    let _ = tx.try_send(Err(e));
                }
                Ok(o) if o.timed_out => {
                    let _ = tx.try_send(Err(KadError::Timeout));
                }
                Ok(_) => {}
            }
        });
        ProviderStream { rx, end: None }
    }

    /// Serves one inbound stream: requests one after another until the peer ends the
    /// stream or is idle too long; a bad message resets it.
    async fn serve(self: Arc<Self>, mut stream: Stream) {
        let Some(peer) = stream.remote_peer() else {
            stream.reset();
            return;
        };
        if stream.scope().set_service(SERVICE_NAME).is_err() {
            stream.reset();
            return;
        }
        // A peer asking on the protocol that also serves it belongs in our table.
        let store = self.host.peerstore();
        if !store
            .supports_protocols(&peer, &[self.config.protocol.as_str()])
            .is_empty()
        {
            self.add_peer(peer, &[]);
        }
        loop {
            let next = tokio::select! {
                // The host is shutting down: no more requests on this stream.
                _ = self.cancel.cancelled() => return,
                next = tokio::time::timeout(
                    self.config.stream_idle_timeout,
                    read_message(&mut stream, self.config.max_message_size),
                ) => next,
            };
            let msg = match next {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "bad DHT message: {e}");
                    stream.reset();
                    return;
                }
                Err(_) => {
                    stream.reset();
                    return;
                }
            };
            match self.handle(peer, msg) {
                Ok(Some(answer)) => {
                    if write_message(&mut stream, &answer).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%peer, "DHT request refused: {e}");
                    stream.reset();
                    return;
                }
            }
        }
    }

    /// The peers we list as closer to `target`: the routing table's closest, without us
    /// and the asker, with their (filtered) addresses.
    fn closer_peers(&self, target: &KadKey, asker: &PeerId) -> Vec<proto::Peer> {
        let closest = lock(&self.table).closest(target, self.config.k + 1);
        closest
            .into_iter()
            .filter(|p| &p.id != asker && p.id != self.local)
            .take(self.config.k)
            .map(|mut p| {
                p.addrs = self.addrs_for(&p.id, &p.addrs);
                let conn = if self.host.peerstore().is_connected(&p.id) {
                    ConnectionType::Connected
                } else {
                    ConnectionType::NotConnected
                };
                p.to_wire(conn)
            })
            .collect()
    }

    /// Answers one request (`None`: nothing to answer).
    pub(crate) fn handle(
        &self,
        peer: PeerId,
        msg: Message,
    ) -> Result<Option<Message>, HandleError> {
        let Some(kind) = msg.kind() else {
            return Ok(None);
        };
        let now = Instant::now();
        match kind {
            MessageType::Ping => Ok(Some(msg)),
            MessageType::FindNode => {
                if msg.key.is_empty() {
                    return Err(HandleError::EmptyKey);
                }
                let target = KadKey::from_bytes(&msg.key);
                let mut answer = Message::request(MessageType::FindNode, Vec::new());
                answer.cluster_level_raw = msg.cluster_level_raw;
                // The target itself first when we know where it is, as go does.
                if let Ok(id) = PeerId::from_bytes(&msg.key) {
                    let addrs = if id == self.local {
                        self.filter_addrs(&self.host.addrs())
                    } else {
                        self.filter_addrs(&self.host.peerstore().addrs(&id))
                    };
                    if !addrs.is_empty() {
                        answer
                            .closer_peers
                            .push(PeerInfo { id, addrs }.to_wire(ConnectionType::Connected));
                    }
                }
                for p in self.closer_peers(&target, &peer) {
                    if answer.closer_peers.len() < self.config.k
                        && !answer.closer_peers.iter().any(|q| q.id == p.id)
                    {
                        answer.closer_peers.push(p);
                    }
                }
                Ok(Some(answer))
            }
            MessageType::GetValue => {
                if msg.key.is_empty() {
                    return Err(HandleError::EmptyKey);
                }
                let target = KadKey::from_bytes(&msg.key);
                let mut answer = Message::request(MessageType::GetValue, msg.key.clone());
                answer.cluster_level_raw = msg.cluster_level_raw;
                if let Some(r) = lock(&self.records).get(&msg.key, now) {
                    answer.record = Some(Record {
                        key: msg.key.clone(),
                        value: r.value,
                        time_received: rfc3339(r.received),
                    });
                }
                answer.closer_peers = self.closer_peers(&target, &peer);
                Ok(Some(answer))
            }
            MessageType::PutValue => {
                let record = msg.record.as_ref().ok_or(HandleError::NoRecord)?;
                if msg.key.is_empty() {
                    return Err(HandleError::EmptyKey);
                }
                if record.key != msg.key {
                    return Err(HandleError::KeyMismatch);
                }
                self.store_record(&record.key, record.value.clone(), Some(peer))?;
                let mut echo = msg;
                echo.closer_peers.clear();
                echo.provider_peers.clear();
                Ok(Some(echo))
            }
            MessageType::GetProviders => {
                if msg.key.is_empty() || msg.key.len() > self.config.store.max_key_bytes {
                    return Err(HandleError::EmptyKey);
                }
                let target = KadKey::from_bytes(&msg.key);
                let mut answer = Message::request(MessageType::GetProviders, msg.key.clone());
                answer.cluster_level_raw = msg.cluster_level_raw;
                let providers = lock(&self.providers).get(&msg.key, now);
                for mut p in providers {
                    p.addrs = self.addrs_for(&p.id, &p.addrs);
                    answer
                        .provider_peers
                        .push(p.to_wire(ConnectionType::NotConnected));
                }
                answer.closer_peers = self.closer_peers(&target, &peer);
                Ok(Some(answer))
            }
            MessageType::AddProvider => {
                if msg.key.is_empty() {
                    return Err(HandleError::EmptyKey);
                }
                // Only the sender may announce itself (as go checks); the other entries
                // are not even parsed.
                let sender = peer.to_bytes();
                let entries: Vec<proto::Peer> = msg
                    .provider_peers
                    .into_iter()
                    .filter(|p| p.id == sender)
                    .collect();
                let own = proto::peers_of(&entries);
                if own.is_empty() {
                    return Err(HandleError::NoProvider);
                }
                for p in own {
                    let addrs = self.filter_addrs(&p.addrs);
                    if !addrs.is_empty() {
                        self.host.peerstore().add_addrs(peer, &addrs, ADDRESS_TTL);
                    }
                    match lock(&self.providers).add(&msg.key, peer, &addrs, now) {
                        Ok(()) => {}
                        // Full: dropped quietly, as rust-libp2p's store does.
                        Err(StoreError::KeyTooLarge { .. }) => return Err(HandleError::EmptyKey),
                        Err(e) => tracing::debug!(%peer, "provider record dropped: {e}"),
                    }
                }
                Ok(None)
            }
        }
    }
}

/// `time` as RFC 3339 in UTC with seconds (what go's `timeReceived` holds).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Groups `assignments` (peer, key) by peer.
pub(crate) fn by_peer(assignments: Vec<(PeerInfo, Vec<u8>)>) -> Vec<(PeerInfo, Vec<Vec<u8>>)> {
    let mut map: HashMap<PeerId, (PeerInfo, Vec<Vec<u8>>)> = HashMap::new();
    for (p, k) in assignments {
        map.entry(p.id).or_insert_with(|| (p, Vec::new())).1.push(k);
    }
    map.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_received_is_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_428_800 + 3661);
        assert_eq!(rfc3339(t), "2026-12-05T01:01:01Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
