//! GossipSub on a host: the streams, the per-peer send queues, subscriptions,
//! validators and the heartbeat service around the [`Router`] state machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::conn::Direction;
use strata_core::rcmgr::priority;
use strata_core::{Multiaddr, PeerId, Protocol, Reservation, ScopeMemory, SpanOwner, Stream};
use strata_host::messaging::{read_message_body, read_message_len, FrameError};
use strata_host::{Host, HostEvent, ServicePolicy};
use strata_swarm::{Connectedness, SwarmEvent};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GossipsubConfig;
use crate::message::{self, Message, MessageId};
use crate::proto::decode_rpc;
use crate::router::{
    GossipsubEvent, Output, PeerKind, PeerSnapshot, PublishError, Router, RouterStats,
    ValidationResult,
};

/// The name of the supervised service (and of the resource manager's service scope).
pub const SERVICE_NAME: &str = "libp2p.pubsub";

/// Events kept for a slow reader of [`Gossipsub::events`].
const EVENTS_CAPACITY: usize = 1024;
/// Peer-exchange connections in flight at once.
const MAX_PX_DIALS: usize = 16;
/// Frames up to this size are gathered into one write.
const GATHER: usize = 64 * 1024;
/// Times a peer's stream is opened again after failing, while it stays connected.
const STREAM_RETRIES: u32 = 3;
/// The wait before reopening, times the failures so far.
const STREAM_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// How long the writers may drain their queues at shutdown.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Decides whether a message of a topic is delivered and forwarded.
#[async_trait]
pub trait Validator: Send + Sync + 'static {
    /// The verdict on `message` (called once per message, within the configured
    /// `validation_timeout`; past it the message is ignored).
    async fn validate(&self, message: &Message) -> ValidationResult;
}

#[async_trait]
impl<F> Validator for F
where
    F: Fn(&Message) -> ValidationResult + Send + Sync + 'static,
{
    async fn validate(&self, message: &Message) -> ValidationResult {
        self(message)
    }
}

/// Counters of GossipSub on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipsubStats {
    /// The router's counters.
    pub router: RouterStats,
    /// Message frames not queued because a peer's queue was full (a slow peer).
    pub dropped_messages: u64,
    /// Control frames not queued because a peer's queue was full.
    pub dropped_control: u64,
    /// Messages a slow subscription missed.
    pub missed_by_subscriptions: u64,
    /// Frames refused for being larger than `max_transmit_size`, or not decoding.
    pub bad_frames: u64,
}

/// The state of the router, for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Our topics.
    pub topics: Vec<String>,
    /// The pubsub peers, their topics and scores.
    pub peers: Vec<PeerSnapshot>,
    /// Each of our topics' mesh.
    pub mesh: HashMap<String, Vec<PeerId>>,
}

/// GossipSub on a host, as go-libp2p-pubsub's `NewGossipSub(ctx, host)`. A cheap clone
/// handle; its work runs as the supervised host service `libp2p.pubsub` and stops with
/// the host.
#[derive(Clone)]
pub struct Gossipsub(Arc<Inner>);

struct Inner {
    host: Host,
    local: PeerId,
    config: GossipsubConfig,
    router: Mutex<Router>,
    links: Mutex<HashMap<PeerId, Arc<PeerQueue>>>,
    subs: Mutex<HashMap<String, Vec<SubSender>>>,
    validators: RwLock<HashMap<String, Arc<dyn Validator>>>,
    events: broadcast::Sender<GossipsubEvent>,
    px_dials: Arc<tokio::sync::Semaphore>,
    tasks: TaskTracker,
    /// The writers, apart: at shutdown they drain their queues first.
    writers: TaskTracker,
    cancel: CancellationToken,
    memory: ScopeMemory,
    next_sub: AtomicU64,
    dropped_messages: AtomicU64,
    dropped_control: AtomicU64,
    missed: AtomicU64,
    bad_frames: AtomicU64,
}

impl Gossipsub {
    /// GossipSub on `host`: it serves the configured protocols, opens a stream to every
    /// connected peer that speaks one (identify says which), and runs the heartbeat.
    pub fn new(host: Host, config: GossipsubConfig) -> Gossipsub {
        let memory = host
            .resource_manager()
            .open_span(&SpanOwner::service(SERVICE_NAME));
        let now = Instant::now();
        let inner = Arc::new(Inner {
            local: host.id(),
            router: Mutex::new(Router::new(host.id(), config.clone(), &memory, now)),
            links: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            validators: RwLock::new(HashMap::new()),
            events: broadcast::channel(EVENTS_CAPACITY).0,
            px_dials: Arc::new(tokio::sync::Semaphore::new(MAX_PX_DIALS)),
            tasks: TaskTracker::new(),
            writers: TaskTracker::new(),
            cancel: CancellationToken::new(),
            memory,
            next_sub: AtomicU64::new(0),
            dropped_messages: AtomicU64::new(0),
            dropped_control: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            host: host.clone(),
            config,
        });
        for protocol in &inner.config.protocols {
            host.set_stream_handler_for(protocol, &inner, |inner, stream| inner.serve(stream));
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
            tracing::warn!("pubsub service not started: {e}");
            inner.cancel.cancel();
        }
        Gossipsub(inner)
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.0.host
    }

    /// Subscribes to `topic`: its messages arrive on the returned subscription (ours
    /// included, as in go-libp2p). The topic is left when the last subscription to it
    /// is dropped or [`Gossipsub::unsubscribe`] is called.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.0.config.subscription_buffer.max(1));
        let shared = Arc::new(SubShared::default());
        let id = self.0.next_sub.fetch_add(1, Ordering::Relaxed);
        self.0
            .subs
            .lock()
            .expect("subs lock")
            .entry(topic.to_owned())
            .or_default()
            .push(SubSender {
                id,
                tx,
                shared: shared.clone(),
            });
        let outputs = {
            let mut router = self.0.router.lock().expect("router lock");
            router.join(topic, Instant::now());
            router.take_outputs()
        };
        self.0.carry_out(outputs);
        Subscription {
            topic: topic.to_owned(),
            id,
            rx,
            shared,
            inner: Arc::downgrade(&self.0),
        }
    }

    /// Leaves `topic`: every subscription to it ends.
    pub fn unsubscribe(&self, topic: &str) {
        self.0.subs.lock().expect("subs lock").remove(topic);
        self.0.leave(topic);
    }

    /// Publishes `data` to `topic` (signed under the configured policy, checked by the
    /// topic's validator first) to the topic's peers.
    pub async fn publish(
        &self,
        topic: &str,
        data: impl Into<Bytes>,
    ) -> Result<message::MessageId, PublishError> {
        let data = data.into();
        let (policy, max) = (
            self.0.config.signature_policy,
            self.0.config.max_transmit_size,
        );
        if data.len() > max {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max,
            });
        }
        let seqno = self.0.router.lock().expect("router lock").next_seqno();
        let raw = message::build(self.0.host.keypair(), policy, topic, data, seqno)
            .map_err(|e| PublishError::Signing(e.to_string()))?;
        let id = (self.0.config.message_id)(&raw);
        let msg = Message {
            id,
            source: (policy == message::SignaturePolicy::StrictSign).then_some(self.0.local),
            data: raw.data.clone().unwrap_or_default(),
            sequence_number: (policy == message::SignaturePolicy::StrictSign).then_some(seqno),
            topic: topic.to_owned(),
            received_from: self.0.local,
        };
        let validator = self
            .0
            .validators
            .read()
            .expect("validators lock")
            .get(topic)
            .cloned();
        if let Some(v) = validator {
            let verdict =
                tokio::time::timeout(self.0.config.validation_timeout, v.validate(&msg)).await;
            if verdict != Ok(ValidationResult::Accept) {
                return Err(PublishError::ValidationFailed);
            }
        }
        let outputs = {
            let mut router = self.0.router.lock().expect("router lock");
            let id = router.publish(raw, Instant::now())?;
            debug_assert_eq!(id, msg.id);
            router.take_outputs()
        };
        self.0.carry_out(outputs);
        let id = msg.id.clone();
        if self
            .0
            .router
            .lock()
            .expect("router lock")
            .is_subscribed(topic)
        {
            self.0.deliver(msg);
        }
        Ok(id)
    }

    /// Sets `topic`'s validator (replacing any): every message of the topic, ours and
    /// others', passes it before it is delivered or forwarded.
    pub fn register_validator(&self, topic: &str, validator: impl Validator) {
        self.0
            .validators
            .write()
            .expect("validators lock")
            .insert(topic.to_owned(), Arc::new(validator));
        self.0
            .router
            .lock()
            .expect("router lock")
            .set_validated(topic, true);
    }

    /// Removes `topic`'s validator.
    pub fn unregister_validator(&self, topic: &str) {
        self.0
            .validators
            .write()
            .expect("validators lock")
            .remove(topic);
        self.0
            .router
            .lock()
            .expect("router lock")
            .set_validated(topic, false);
    }

    /// Sets the application's score of `peer` (P5); `false` if the peer is unknown.
    pub fn set_application_score(&self, peer: &PeerId, score: f64) -> bool {
        self.0
            .router
            .lock()
            .expect("router lock")
            .set_application_score(peer, score)
    }

    /// Peers subscribed to `topic`.
    pub fn topic_peers(&self, topic: &str) -> Vec<PeerId> {
        self.0
            .router
            .lock()
            .expect("router lock")
            .topic_peers(topic)
    }

    /// Our mesh of `topic`.
    pub fn mesh_peers(&self, topic: &str) -> Vec<PeerId> {
        self.0.router.lock().expect("router lock").mesh_peers(topic)
    }

    /// The score of `peer`.
    pub fn peer_score(&self, peer: &PeerId) -> f64 {
        self.0.router.lock().expect("router lock").score(peer)
    }

    /// Peers, meshes and scores as they are now.
    pub fn snapshot(&self) -> Snapshot {
        let router = self.0.router.lock().expect("router lock");
        let topics = router.topics();
        let mesh = topics
            .iter()
            .map(|t| (t.clone(), router.mesh_peers(t)))
            .collect();
        Snapshot {
            peers: router.peers(),
            topics,
            mesh,
        }
    }

    /// Counters.
    pub fn stats(&self) -> GossipsubStats {
        GossipsubStats {
            router: self.0.router.lock().expect("router lock").stats(),
            dropped_messages: self.0.dropped_messages.load(Ordering::Relaxed),
            dropped_control: self.0.dropped_control.load(Ordering::Relaxed),
            missed_by_subscriptions: self.0.missed.load(Ordering::Relaxed),
            bad_frames: self.0.bad_frames.load(Ordering::Relaxed),
        }
    }

    /// Sizes of the caches: messages cached, their bytes, IDs seen.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        self.0.router.lock().expect("router lock").cache_sizes()
    }

    /// Peers joining and leaving topics, and pubsub peers coming and going.
    pub fn events(&self) -> broadcast::Receiver<GossipsubEvent> {
        self.0.events.subscribe()
    }
}

// ---------------------------------------------------------------------------------------
// Per-peer send queues

/// A peer's outbound queue: control before messages, both bounded in bytes and count,
/// every queued byte reserved from the peer's span; a full queue drops what does not
/// fit (counted), so a slow peer never holds the router or the others.
struct PeerQueue {
    state: Mutex<QueueState>,
    notify: Notify,
    memory: ScopeMemory,
    max_bytes: usize,
    max_len: usize,
}

#[derive(Default)]
struct QueueState {
    control: VecDeque<(Bytes, Reservation)>,
    messages: VecDeque<(Bytes, Reservation, Option<MessageId>)>,
    bytes: usize,
    closed: bool,
}

impl PeerQueue {
    /// Queues `frame` (a message's, with its `id`); `false` if it was dropped.
    fn push(&self, frame: Bytes, control: bool, id: Option<MessageId>) -> bool {
        let mut st = self.state.lock().expect("queue lock");
        let len = st.control.len() + st.messages.len();
        // Control may use a quarter more than messages, so it gets through a queue that
        // forwards filled.
        let cap = if control {
            self.max_bytes + self.max_bytes / 4
        } else {
            self.max_bytes
        };
        if st.closed
            || st.bytes + frame.len() > cap
            || len >= self.max_len + usize::from(control) * 64
        {
            return false;
        }
        let Ok(held) = self.memory.reserve(frame.len(), priority::HIGH) else {
            return false;
        };
        st.bytes += frame.len();
        if control {
            st.control.push_back((frame, held));
        } else {
            st.messages.push_back((frame, held, id));
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Takes frames to write: control first, small ones gathered up to [`GATHER`].
    fn take(&self, out: &mut Vec<(Bytes, Reservation)>) {
        let mut st = self.state.lock().expect("queue lock");
        let mut total = 0;
        while total < GATHER {
            let next = match st.control.pop_front() {
                Some(f) => f,
                None => match st.messages.pop_front() {
                    Some((frame, held, _)) => (frame, held),
                    None => break,
                },
            };
            total += next.0.len();
            st.bytes -= next.0.len();
            out.push(next);
        }
    }

    /// Drops queued messages the peer said it does not want (IDONTWANT).
    fn forget(&self, ids: &[MessageId]) {
        let mut st = self.state.lock().expect("queue lock");
        let before = st.bytes;
        let mut freed = 0;
        st.messages.retain(|(frame, _, id)| {
            let keep = id.as_ref().is_none_or(|id| !ids.contains(id));
            if !keep {
                freed += frame.len();
            }
            keep
        });
        st.bytes = before - freed;
    }

    fn is_empty(&self) -> bool {
        let st = self.state.lock().expect("queue lock");
        st.control.is_empty() && st.messages.is_empty()
    }

    /// No more frames; the writer sends what is queued, then closes the stream.
    fn finish(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.notify.notify_one();
    }

    /// No more frames, and those queued are dropped.
    fn close(&self) {
        let mut st = self.state.lock().expect("queue lock");
        st.closed = true;
        st.control.clear();
        st.messages.clear();
        st.bytes = 0;
        drop(st);
        self.notify.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.state.lock().expect("queue lock").closed
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions

#[derive(Default)]
struct SubShared {
    missed: AtomicU64,
    bytes: AtomicUsize,
}

struct SubSender {
    id: u64,
    tx: mpsc::Sender<(Message, Reservation)>,
    shared: Arc<SubShared>,
}

/// Messages of one topic, as an async stream ([`Subscription::next`], or
/// `futures::Stream`). Its buffer is bounded (`subscription_buffer` messages and
/// `subscription_buffer_bytes`); what arrives while it is full is missed and counted.
/// Dropping it unsubscribes (the topic is left when no subscription to it remains).
pub struct Subscription {
    topic: String,
    id: u64,
    rx: mpsc::Receiver<(Message, Reservation)>,
    shared: Arc<SubShared>,
    inner: Weak<Inner>,
}

impl Subscription {
    /// The next message; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Message> {
        let (msg, held) = self.rx.recv().await?;
        self.shared
            .bytes
            .fetch_sub(msg.data.len(), Ordering::Relaxed);
        drop(held);
        Some(msg)
    }

    /// Messages missed because the buffer was full.
    pub fn missed(&self) -> u64 {
        self.shared.missed.load(Ordering::Relaxed)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl futures::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((msg, held))) => {
                self.shared
                    .bytes
                    .fetch_sub(msg.data.len(), Ordering::Relaxed);
                drop(held);
                Poll::Ready(Some(msg))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let last = {
            let mut subs = inner.subs.lock().expect("subs lock");
            match subs.get_mut(&self.topic) {
                Some(list) => {
                    list.retain(|s| s.id != self.id);
                    if list.is_empty() {
                        subs.remove(&self.topic);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            inner.leave(&self.topic);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The machinery

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Inner {
    fn spawn<F>(&self, fut: F)
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

    fn leave(self: &Arc<Self>, topic: &str) {
        let outputs = {
            let mut router = self.router.lock().expect("router lock");
            router.leave(topic, Instant::now());
            router.take_outputs()
        };
        self.carry_out(outputs);
    }

    /// Carries out what the router asked for.
    fn carry_out(self: &Arc<Self>, outputs: Vec<Output>) {
        if outputs.is_empty() {
            return;
        }
        let links = self.links.lock().expect("links lock");
        let mut later = Vec::new();
        for out in outputs {
            match out {
                Output::Send {
                    peer,
                    frame,
                    control,
                    id,
                } => {
                    let queued = links.get(&peer).is_some_and(|q| q.push(frame, control, id));
                    if !queued {
                        let counter = if control {
                            &self.dropped_control
                        } else {
                            &self.dropped_messages
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Forget { peer, ids } => {
                    if let Some(q) = links.get(&peer) {
                        q.forget(&ids);
                    }
                }
                other => later.push(other),
            }
        }
        drop(links);
        for out in later {
            match out {
                Output::Deliver(msg) => self.deliver(msg),
                Output::Validate(msg) => self.validate(msg),
                Output::Connect(peers) => self.connect_px(peers),
                Output::Event(ev) => {
                    let _ = self.events.send(ev);
                }
                Output::Send { .. } | Output::Forget { .. } => {}
            }
        }
    }

    fn deliver(&self, msg: Message) {
        let subs = self.subs.lock().expect("subs lock");
        let Some(list) = subs.get(&msg.topic) else {
            return;
        };
        let max_bytes = self.config.subscription_buffer_bytes;
        for sub in list {
            let len = msg.data.len();
            let room = sub.shared.bytes.load(Ordering::Relaxed) + len <= max_bytes;
            let held = if room {
                self.memory.reserve(len, priority::HIGH).ok()
            } else {
                None
            };
            let sent = match held {
                Some(held) => match sub.tx.try_send((msg.clone(), held)) {
                    Ok(()) => {
                        sub.shared.bytes.fetch_add(len, Ordering::Relaxed);
                        true
                    }
                    Err(_) => false,
                },
                None => false,
            };
            if !sent {
                sub.shared.missed.fetch_add(1, Ordering::Relaxed);
                self.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn validate(self: &Arc<Self>, msg: Message) {
        let validator = self
            .validators
            .read()
            .expect("validators lock")
            .get(&msg.topic)
            .cloned();
        let inner = self.clone();
        self.spawn(async move {
            let verdict = match validator {
                Some(v) => tokio::time::timeout(inner.config.validation_timeout, v.validate(&msg))
                    .await
                    .unwrap_or(ValidationResult::Ignore),
                None => ValidationResult::Accept,
            };
            let outputs = {
                let mut router = inner.router.lock().expect("router lock");
                router.validation_result(msg, verdict, Instant::now());
                router.take_outputs()
            };
            inner.carry_out(outputs);
        });
    }

    fn connect_px(self: &Arc<Self>, peers: Vec<PeerId>) {
        for peer in peers {
            if self.host.peerstore().addrs(&peer).is_empty() {
                // Without a signed record we only dial peers whose addresses we know.
                continue;
            }
            let Ok(permit) = self.px_dials.clone().try_acquire_owned() else {
                return;
            };
            let host = self.host.clone();
            self.spawn(async move {
                let _ = host.connect(peer, &[]).await;
                drop(permit);
            });
        }
    }

    /// The pubsub protocol `peer` speaks by what identify told us, ours preferred.
    fn known_protocol(&self, peer: &PeerId) -> Option<String> {
        let ours: Vec<&str> = self.config.protocols.iter().map(String::as_str).collect();
        self.host.peerstore().first_supported_protocol(peer, &ours)
    }

    /// Makes `peer` a pubsub peer (once): its queue, the writer task that opens our
    /// stream to it, and its place in the router.
    fn ensure_peer(self: &Arc<Self>, peer: PeerId, protocol: &str) {
        if peer == self.local || self.cancel.is_cancelled() {
            return;
        }
        let queue = {
            let mut links = self.links.lock().expect("links lock");
            if links.get(&peer).is_some_and(|q| !q.is_closed()) {
                return;
            }
            let queue = Arc::new(PeerQueue {
                state: Mutex::new(QueueState::default()),
                notify: Notify::new(),
                memory: self
                    .host
                    .resource_manager()
                    .open_span(&SpanOwner::peer(peer).with_service(SERVICE_NAME)),
                max_bytes: self
                    .config
                    .peer_queue_bytes
                    .max(self.config.max_transmit_size),
                max_len: self.config.peer_queue_len.max(1),
            });
            links.insert(peer, queue.clone());
            queue
        };
        let conns = self.host.network().conns_to_peer(&peer);
        let outbound = conns.iter().any(|c| c.direction() == Direction::Outbound);
        let ip = conns.first().and_then(|c| ip_of(c.remote_multiaddr()));
        let outputs = {
            let mut router = self.router.lock().expect("router lock");
            router.add_peer(peer, PeerKind::of(protocol), outbound, ip, &queue.memory);
            router.take_outputs()
        };
        self.carry_out(outputs);
        let inner = self.clone();
        let cancel = self.cancel.clone();
        self.writers.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = inner.write_loop(peer, queue.clone()) => {}
            }
            inner.drop_peer(peer, &queue);
        });
    }

    /// Forgets `peer` if `queue` is still its queue.
    fn drop_peer(self: &Arc<Self>, peer: PeerId, queue: &Arc<PeerQueue>) {
        queue.close();
        let removed = {
            let mut links = self.links.lock().expect("links lock");
            match links.get(&peer) {
                Some(q) if Arc::ptr_eq(q, queue) => {
                    links.remove(&peer);
                    true
                }
                _ => false,
            }
        };
        if removed {
            let outputs = {
                let mut router = self.router.lock().expect("router lock");
                router.remove_peer(&peer, Instant::now());
                router.take_outputs()
            };
            self.carry_out(outputs);
        }
    }

    /// Opens our stream to `peer` and writes its queue until the queue is closed. A
    /// stream that cannot be opened or fails is opened again (a few times, backing off)
    /// while the peer is still connected, so that a stream lost on a live connection
    /// does not cost the peer its place (and us what it told us); past that, the peer
    /// is dropped.
    async fn write_loop(&self, peer: PeerId, queue: Arc<PeerQueue>) {
        let protocols: Vec<&str> = self.config.protocols.iter().map(String::as_str).collect();
        let mut failures = 0u32;
        loop {
            match self.host.new_stream(peer, &protocols).await {
                Ok(mut stream) => match self.pump(&queue, &mut stream).await {
                    Ok(()) => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "pubsub stream failed: {e}");
                        stream.reset();
                    }
                },
                Err(e) => tracing::debug!(%peer, "pubsub stream not opened: {e}"),
            }
            failures += 1;
            if failures > STREAM_RETRIES
                || queue.is_closed()
                || !self.host.peerstore().is_connected(&peer)
            {
                return;
            }
            tokio::time::sleep(STREAM_RETRY_BACKOFF * failures).await;
        }
    }

    /// Writes the queue to `stream` until the queue is closed (`Ok`) or a write fails.
    async fn pump(&self, queue: &PeerQueue, stream: &mut Stream) -> std::io::Result<()> {
        let mut batch: Vec<(Bytes, Reservation)> = Vec::new();
        let mut gathered: Vec<u8> = Vec::new();
        loop {
            queue.take(&mut batch);
            if batch.is_empty() {
                if queue.is_closed() {
                    return Ok(());
                }
                queue.notify.notified().await;
                continue;
            }
            let result = if batch.len() == 1 {
                stream.write_all(&batch[0].0).await
            } else {
                gathered.clear();
                for (frame, _) in &batch {
                    gathered.extend_from_slice(frame);
                }
                stream.write_all(&gathered).await
            };
            batch.clear();
            if gathered.capacity() > GATHER * 2 {
                gathered = Vec::new();
            }
            match result {
                Ok(()) if queue.is_empty() => stream.flush().await?,
                other => other?,
            }
        }
    }

    /// An inbound stream: the peer's RPCs, read one by one.
    async fn serve(self: Arc<Self>, mut stream: Stream) {
        let Some(peer) = stream.remote_peer() else {
            stream.reset();
            return;
        };
        let protocol = stream
            .protocol()
            .map(str::to_owned)
            .unwrap_or_else(|| self.config.protocols[0].clone());
        self.ensure_peer(peer, &protocol);
        let max = self.config.max_transmit_size;
        let cancel = self.cancel.clone();
        loop {
            let len = tokio::select! {
                _ = cancel.cancelled() => break,
                len = read_message_len(&mut stream, max) => len,
            };
            let len = match len {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    if matches!(e, FrameError::TooLarge { .. } | FrameError::InvalidLength) {
                        self.bad_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(%peer, "pubsub stream ended: {e}");
                    stream.reset();
                    return;
                }
            };
            let memory = stream.scope().memory().clone();
            let body = tokio::select! {
                _ = cancel.cancelled() => break,
                body = read_message_body(&mut stream, len, &memory) => body,
            };
            let (body, _held) = match body {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(%peer, "pubsub stream ended: {e}");
                    stream.reset();
                    return;
                }
            };
            if self.router.lock().expect("router lock").graylisted(&peer) {
                continue;
            }
            let rpc = match decode_rpc(&body, &self.config.decode_limits) {
                Ok(rpc) => rpc,
                Err(e) => {
                    self.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "pubsub RPC refused: {e}");
                    stream.reset();
                    return;
                }
            };
            drop(body);
            let outputs = {
                let mut router = self.router.lock().expect("router lock");
                router.handle_rpc(peer, rpc, Instant::now());
                router.take_outputs()
            };
            self.carry_out(outputs);
        }
        stream.reset();
    }

    /// The service: pubsub peers from identify and connection events, and the
    /// heartbeat.
    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut events = self.host.events();
        for peer in self.host.network().peers() {
            if let Some(protocol) = self.known_protocol(&peer) {
                self.ensure_peer(peer, &protocol);
            }
        }
        let start = Instant::now() + self.config.heartbeat_initial_delay;
        let mut tick = tokio::time::interval_at(start, self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    let outputs = {
                        let mut router = self.router.lock().expect("router lock");
                        router.heartbeat(Instant::now());
                        router.take_outputs()
                    };
                    self.carry_out(outputs);
                }
            }
        }
        if cancel.is_cancelled() {
            // What is queued goes out first (a little while at most: a peer that does
            // not read is not waited for), then everything stops.
            for q in self.links.lock().expect("links lock").values() {
                q.finish();
            }
            self.writers.close();
            let _ = tokio::time::timeout(SHUTDOWN_DRAIN, self.writers.wait()).await;
            self.cancel.cancel();
            for q in self.links.lock().expect("links lock").values() {
                q.close();
            }
            self.tasks.close();
            self.tasks.wait().await;
        }
    }

    fn on_event(self: &Arc<Self>, ev: HostEvent) {
        match ev {
            HostEvent::Identified { peer, .. } => {
                if let Some(protocol) = self.known_protocol(&peer) {
                    self.ensure_peer(peer, &protocol);
                }
            }
            HostEvent::Swarm(SwarmEvent::PeerConnectedness {
                peer,
                connectedness: Connectedness::NotConnected,
            }) => {
                let queue = self.links.lock().expect("links lock").get(&peer).cloned();
                if let Some(queue) = queue {
                    self.drop_peer(peer, &queue);
                }
            }
            _ => {}
        }
    }

    /// After missed events: every connected pubsub peer has a link, every link a peer.
    fn resync(self: &Arc<Self>) {
        let connected: HashSet<PeerId> = self.host.network().peers().into_iter().collect();
        let gone: Vec<(PeerId, Arc<PeerQueue>)> = self
            .links
            .lock()
            .expect("links lock")
            .iter()
            .filter(|(p, _)| !connected.contains(p))
            .map(|(p, q)| (*p, q.clone()))
            .collect();
        for (peer, queue) in gone {
            self.drop_peer(peer, &queue);
        }
        for peer in connected {
            if let Some(protocol) = self.known_protocol(&peer) {
                self.ensure_peer(peer, &protocol);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_bytes: usize, max_len: usize) -> PeerQueue {
        PeerQueue {
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            memory: ScopeMemory::unlimited(),
            max_bytes,
            max_len,
        }
    }

    fn id(n: u8) -> MessageId {
        MessageId(Bytes::from(vec![n]))
    }

    #[test]
    fn control_goes_first_and_a_full_queue_drops_messages_not_control() {
        let q = queue(100, 10);
        assert!(q.push(Bytes::from(vec![1; 60]), false, Some(id(1))));
        assert!(!q.push(Bytes::from(vec![2; 60]), false, Some(id(2))));
        // Control may use a quarter more.
        assert!(q.push(Bytes::from(vec![3; 60]), true, None));
        let mut out = Vec::new();
        q.take(&mut out);
        let firsts: Vec<u8> = out.iter().map(|(f, _)| f[0]).collect();
        assert_eq!(firsts, vec![3, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn forgetting_drops_queued_copies_and_frees_their_room() {
        let q = queue(100, 10);
        assert!(q.push(Bytes::from(vec![1; 40]), false, Some(id(1))));
        assert!(q.push(Bytes::from(vec![2; 40]), false, Some(id(2))));
        assert!(!q.push(Bytes::from(vec![3; 40]), false, Some(id(3))));
        q.forget(&[id(1)]);
        assert!(q.push(Bytes::from(vec![3; 40]), false, Some(id(3))));
        let mut out = Vec::new();
        q.take(&mut out);
        let firsts: Vec<u8> = out.iter().map(|(f, _)| f[0]).collect();
        assert_eq!(firsts, vec![2, 3]);
    }

    #[test]
    fn a_finished_queue_is_written_out_and_a_closed_one_is_dropped() {
        let q = queue(100, 10);
        q.push(Bytes::from_static(b"a"), false, None);
        q.finish();
        assert!(!q.push(Bytes::from_static(b"b"), true, None));
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(out.len(), 1);
        let q = queue(100, 10);
        q.push(Bytes::from_static(b"a"), false, None);
        q.close();
        assert!(q.is_empty() && q.is_closed());
    }
}
