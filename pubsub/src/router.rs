//! The GossipSub router as a state machine with no I/O: peers, subscriptions, meshes,
//! fanout, gossip, the message and seen caches, backoffs, promises and scores. The async
//! layer ([`crate::Gossipsub`]) feeds it RPCs, commands and heartbeats and carries out
//! the [`Output`]s it queues (frames to send, messages to deliver or validate, peers to
//! connect to, events).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use bytes::Bytes;
use rand::seq::SliceRandom;
use strata_core::PeerId;
use tokio::time::Instant;

use crate::cache::{MessageCache, SeenCache};
use crate::config::{GossipsubConfig, PeerScoreThresholds, FLOODSUB, MESHSUB_V10, MESHSUB_V11};
use crate::message::{self, Message, MessageId, SignatureError};
use crate::proto::{
    Control, Graft, IDontWant, IHave, IWant, Prune, PxPeer, RawMessage, Rpc, SubOpts,
};
use crate::score::{PeerScore, RejectReason};
use strata_core::rcmgr::priority;
use strata_core::{Reservation, ScopeMemory};

/// Which protocol a peer speaks with us, and so what it understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerKind {
    /// `/floodsub/1.0.0`: messages only, flooded.
    Floodsub,
    /// `/meshsub/1.0.0`: no peer exchange, no backoff.
    Gossipsub10,
    /// `/meshsub/1.1.0`: peer exchange, backoff, scoring.
    Gossipsub11,
    /// `/meshsub/1.2.0`: IDONTWANT.
    Gossipsub12,
}

impl PeerKind {
    /// The kind of a negotiated protocol; a protocol we do not know is treated as the
    /// newest GossipSub (a user-configured protocol name).
    pub fn of(protocol: &str) -> PeerKind {
        match protocol {
            FLOODSUB => PeerKind::Floodsub,
            MESHSUB_V10 => PeerKind::Gossipsub10,
            MESHSUB_V11 => PeerKind::Gossipsub11,
            _ => PeerKind::Gossipsub12,
        }
    }

    fn gossip(self) -> bool {
        self != PeerKind::Floodsub
    }

    fn px(self) -> bool {
        self >= PeerKind::Gossipsub11
    }

    fn idontwant(self) -> bool {
        self >= PeerKind::Gossipsub12
    }
}

/// What the router asks the async layer to do.
#[derive(Debug)]
pub enum Output {
    /// Write `frame` (a framed RPC) to `peer`; control goes before other traffic.
    Send {
        /// The peer.
        peer: PeerId,
        /// The framed RPC.
        frame: Bytes,
        /// Control (subscriptions, GRAFT, PRUNE, IHAVE, IWANT, IDONTWANT) or messages.
        control: bool,
        /// The message's ID, for a message frame.
        id: Option<MessageId>,
    },
    /// `peer` does not want these messages: drop them from its queue if still there.
    Forget {
        /// The peer.
        peer: PeerId,
        /// The IDs.
        ids: Vec<MessageId>,
    },
    /// Deliver a message to the topic's local subscriptions.
    Deliver(Message),
    /// Run the topic's validator on a message, then call [`Router::validation_result`].
    Validate(Message),
    /// Peers offered by peer exchange, to connect to.
    Connect(Vec<PeerId>),
    /// Something applications may want to hear.
    Event(GossipsubEvent),
}

/// Events of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipsubEvent {
    /// A peer joined a topic.
    Subscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
    /// A peer left a topic (or disconnected).
    Unsubscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: String,
    },
    /// A peer that speaks pubsub connected.
    PeerAdded {
        /// The peer.
        peer: PeerId,
        /// The protocol it speaks with us.
        kind: PeerKind,
    },
    /// A peer that spoke pubsub went away.
    PeerRemoved {
        /// The peer.
        peer: PeerId,
    },
}

/// What a validator said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationResult {
    /// Deliver and forward it.
    Accept,
    /// Drop it and penalise the sender.
    Reject,
    /// Drop it without penalty.
    Ignore,
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No peer to send it to.
    #[error("no peers subscribed to the topic")]
    InsufficientPeers,
    /// The same message (by ID) was published or seen already.
    #[error("duplicate message")]
    Duplicate,
    /// The message is larger than `max_transmit_size`.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The topic's validator rejected or ignored it.
    #[error("rejected by the local validator")]
    ValidationFailed,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Gossipsub stopped.
    #[error("gossipsub stopped")]
    Closed,
}

/// Counters of the router (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Messages we published.
    pub published: u64,
    /// Messages delivered to local subscriptions (first copies, accepted).
    pub delivered: u64,
    /// Copies of messages seen before.
    pub duplicates: u64,
    /// Messages rejected (signature or validator).
    pub rejected: u64,
    /// Messages a validator ignored, or that could not be validated in time.
    pub ignored: u64,
    /// Message frames queued to peers (forwards, publishes, IWANT answers).
    pub messages_sent: u64,
    /// RPCs dropped unread because their sender was graylisted.
    pub graylisted_rpcs: u64,
    /// IHAVEs, IWANTs, subscriptions and list entries ignored for being past a limit.
    pub over_limit: u64,
    /// IWANT promises that were not kept.
    pub broken_promises: u64,
    /// Messages for topics we are not subscribed to (dropped).
    pub unsubscribed_topic: u64,
}

/// The most IDONTWANT IDs remembered per peer.
const MAX_DONT_WANT_PER_PEER: usize = 1_000;
/// How long an IDONTWANT is honoured, in heartbeats.
const DONT_WANT_HEARTBEATS: u32 = 3;
/// The most outstanding IWANT promises.
const MAX_PROMISES: usize = 10_000;
/// The most message IDs remembered per peer to recognise a peer that repeats itself.
const MAX_RECENT_PER_PEER: usize = 1_024;
/// Bytes booked per message ID a peer makes us remember (the ID, its hash-set entry).
const ID_COST: usize = 112;
/// Bytes booked per topic a peer subscribes to, besides its name (two set entries and
/// the name's copies).
const TOPIC_COST: usize = 128;
/// Seen IDs remembered at most (at 2 minutes, 800 messages a second).
const MAX_SEEN: usize = 100_000;

struct PeerState {
    kind: PeerKind,
    outbound: bool,
    topics: HashSet<String>,
    /// IHAVEs and IDs taken from it in this heartbeat.
    ihave_count: usize,
    ihave_ids: usize,
    /// Limits exceeded in this heartbeat (penalised once per heartbeat each).
    flooded_ihave: bool,
    flooded_iwant: bool,
    /// IDONTWANTs: ID → the heartbeat it expires at.
    dont_want: HashMap<MessageId, u64>,
    /// IDs it sent us, this heartbeat and the last (a peer never sends one twice).
    recent: HashSet<MessageId>,
    recent_old: HashSet<MessageId>,
    /// What its topics, IDONTWANTs and recent IDs take, reserved from its span.
    held: Reservation,
}

impl PeerState {
    fn charge(&mut self, bytes: usize) -> bool {
        self.held.grow(bytes, priority::HIGH).is_ok()
    }
}

/// A message waiting for its validator.
struct Pending {
    raw: RawMessage,
    from: PeerId,
}

/// The router. See the module docs.
pub struct Router {
    config: GossipsubConfig,
    local: PeerId,
    peers: HashMap<PeerId, PeerState>,
    topic_peers: HashMap<String, HashSet<PeerId>>,
    subscribed: HashSet<String>,
    validated_topics: HashSet<String>,
    mesh: HashMap<String, HashSet<PeerId>>,
    fanout: HashMap<String, HashSet<PeerId>>,
    fanout_last_pub: HashMap<String, Instant>,
    backoff: HashMap<(String, PeerId), Instant>,
    mcache: MessageCache,
    seen: SeenCache,
    score: Option<(PeerScore, PeerScoreThresholds)>,
    promises: HashMap<MessageId, HashMap<PeerId, Instant>>,
    pending: HashMap<MessageId, Pending>,
    control: HashMap<PeerId, Control>,
    out: Vec<Output>,
    heartbeats: u64,
    seqno: u64,
    stats: RouterStats,
}

impl Router {
    /// A router for `local` under `config`.
    /// The message cache is reserved from `memory`.
    pub fn new(
        local: PeerId,
        config: GossipsubConfig,
        memory: &ScopeMemory,
        now: Instant,
    ) -> Router {
        let score = config
            .scoring
            .clone()
            .map(|(params, thresholds)| (PeerScore::new(params, config.seen_ttl, now), thresholds));
        let mcache_bytes = config.peer_queue_bytes.max(config.max_transmit_size) * 16;
        Router {
            mcache: MessageCache::new(
                config.history_length,
                config.history_gossip,
                mcache_bytes,
                memory,
            ),
            seen: SeenCache::new(config.seen_ttl, MAX_SEEN),
            score,
            local,
            peers: HashMap::new(),
            topic_peers: HashMap::new(),
            subscribed: HashSet::new(),
            validated_topics: HashSet::new(),
            mesh: HashMap::new(),
            fanout: HashMap::new(),
            fanout_last_pub: HashMap::new(),
            backoff: HashMap::new(),
            promises: HashMap::new(),
            pending: HashMap::new(),
            control: HashMap::new(),
            out: Vec::new(),
            heartbeats: 0,
            // go starts at the time in nanoseconds, so a restarted node does not reuse
            // its old sequence numbers (and IDs).
            seqno: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            stats: RouterStats::default(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GossipsubConfig {
        &self.config
    }

    /// The outputs queued since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.flush_control();
        std::mem::take(&mut self.out)
    }

    /// The counters.
    pub fn stats(&self) -> RouterStats {
        self.stats.clone()
    }

    /// The score of `peer` (0 with scoring off).
    pub fn score(&self, peer: &PeerId) -> f64 {
        self.score.as_ref().map_or(0.0, |(s, _)| s.score(peer))
    }

    fn thresholds(&self) -> Option<&PeerScoreThresholds> {
        self.score.as_ref().map(|(_, t)| t)
    }

    /// Whether `peer`'s RPCs are dropped unread (its score is below the graylist
    /// threshold). Counts the drop.
    pub fn graylisted(&mut self, peer: &PeerId) -> bool {
        let gray = match self.thresholds() {
            Some(t) => self.score(peer) < t.graylist,
            None => false,
        };
        if gray {
            self.stats.graylisted_rpcs += 1;
        }
        gray
    }

    /// Sets the application's score of `peer` (P5).
    pub fn set_application_score(&mut self, peer: &PeerId, score: f64) -> bool {
        self.score
            .as_mut()
            .is_some_and(|(s, _)| s.set_application_score(peer, score))
    }

    /// Topics with a validator: their messages go through [`Output::Validate`].
    pub fn set_validated(&mut self, topic: &str, validated: bool) {
        if validated {
            self.validated_topics.insert(topic.to_owned());
        } else {
            self.validated_topics.remove(topic);
        }
    }

    // -----------------------------------------------------------------------------------
    // Peers

    /// A peer speaking `kind` is ready (its stream is open); `outbound` if we dialed it.
    /// What the router keeps for the peer is reserved from `memory`.
    pub fn add_peer(
        &mut self,
        peer: PeerId,
        kind: PeerKind,
        outbound: bool,
        ip: Option<IpAddr>,
        memory: &ScopeMemory,
    ) {
        if self.peers.contains_key(&peer) {
            return;
        }
        self.peers.insert(
            peer,
            PeerState {
                kind,
                outbound,
                topics: HashSet::new(),
                ihave_count: 0,
                ihave_ids: 0,
                flooded_ihave: false,
                flooded_iwant: false,
                dont_want: HashMap::new(),
                recent: HashSet::new(),
                recent_old: HashSet::new(),
                held: memory.empty(),
            },
        );
        if let Some((s, _)) = self.score.as_mut() {
            s.add_peer(peer, ip);
        }
        self.out
            .push(Output::Event(GossipsubEvent::PeerAdded { peer, kind }));
        if !self.subscribed.is_empty() {
            let rpc = Rpc {
                subscriptions: self
                    .subscribed
                    .iter()
                    .map(|t| SubOpts {
                        subscribe: true,
                        topic: t.clone(),
                    })
                    .collect(),
                ..Rpc::default()
            };
            self.out.push(Output::Send {
                peer,
                frame: rpc.encode(),
                control: true,
                id: None,
            });
        }
    }

    /// A peer went away (its connection or its stream ended).
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) {
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        for topic in state.topics {
            if let Some(set) = self.topic_peers.get_mut(&topic) {
                set.remove(peer);
                if set.is_empty() {
                    self.topic_peers.remove(&topic);
                }
            }
            self.out.push(Output::Event(GossipsubEvent::Unsubscribed {
                peer: *peer,
                topic,
            }));
        }
        for set in self.mesh.values_mut().chain(self.fanout.values_mut()) {
            set.remove(peer);
        }
        self.control.remove(peer);
        if let Some((s, _)) = self.score.as_mut() {
            s.remove_peer(peer, now);
        }
        self.out
            .push(Output::Event(GossipsubEvent::PeerRemoved { peer: *peer }));
    }

    /// Whether `peer` is a pubsub peer.
    pub fn has_peer(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    // -----------------------------------------------------------------------------------
    // Subscriptions of our own

    /// Joins `topic`: announces it and builds its mesh (from the fanout first).
    pub fn join(&mut self, topic: &str, now: Instant) {
        if !self.subscribed.insert(topic.to_owned()) {
            return;
        }
        self.announce(topic, true);
        let mut mesh: HashSet<PeerId> = self.fanout.remove(topic).unwrap_or_default();
        self.fanout_last_pub.remove(topic);
        mesh.retain(|p| self.score(p) >= 0.0);
        if mesh.len() < self.config.d {
            let more = self.pick_peers(topic, self.config.d - mesh.len(), |r, p| {
                !mesh.contains(p) && !r.in_backoff(topic, p, now) && r.score(p) >= 0.0
            });
            mesh.extend(more);
        }
        for p in &mesh {
            self.graft_peer(p, topic, now);
        }
        self.mesh.insert(topic.to_owned(), mesh);
    }

    /// Leaves `topic`: announces it and prunes the mesh with the unsubscribe backoff.
    pub fn leave(&mut self, topic: &str, now: Instant) {
        if !self.subscribed.remove(topic) {
            return;
        }
        self.announce(topic, false);
        if let Some(mesh) = self.mesh.remove(topic) {
            let backoff = self.config.unsubscribe_backoff;
            for p in mesh {
                if let Some((s, _)) = self.score.as_mut() {
                    s.prune(&p, topic);
                }
                let prune = self.make_prune(&p, topic, backoff, false);
                self.control.entry(p).or_default().prune.push(prune);
                self.backoff.insert((topic.to_owned(), p), now + backoff);
            }
        }
    }

    fn announce(&mut self, topic: &str, subscribe: bool) {
        let frame = Rpc {
            subscriptions: vec![SubOpts {
                subscribe,
                topic: topic.to_owned(),
            }],
            ..Rpc::default()
        }
        .encode();
        for peer in self.peers.keys() {
            self.out.push(Output::Send {
                peer: *peer,
                frame: frame.clone(),
                control: true,
                id: None,
            });
        }
    }

    /// Whether we are subscribed to `topic`.
    pub fn is_subscribed(&self, topic: &str) -> bool {
        self.subscribed.contains(topic)
    }

    // -----------------------------------------------------------------------------------
    // Publishing

    /// The next sequence number of ours.
    pub fn next_seqno(&mut self) -> u64 {
        self.seqno = self.seqno.wrapping_add(1);
        self.seqno
    }

    /// Publishes a message of ours (already built, signed and locally validated).
    pub fn publish(&mut self, raw: RawMessage, now: Instant) -> Result<MessageId, PublishError> {
        let size = raw.encoded_len() + 8;
        if size > self.config.max_transmit_size {
            return Err(PublishError::TooLarge {
                size,
                max: self.config.max_transmit_size,
            });
        }
        let id = (self.config.message_id)(&raw);
        if self.seen.contains(&id) {
            return Err(PublishError::Duplicate);
        }
        let topic = raw.topic.clone();
        let mut targets: HashSet<PeerId> = HashSet::new();
        let publish_threshold = self.thresholds().map(|t| t.publish);
        let topic_peers: Vec<PeerId> = self
            .topic_peers
            .get(&topic)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for p in &topic_peers {
            let kind = self.peers.get(p).map(|s| s.kind);
            let above = publish_threshold.is_none_or(|t| self.score(p) >= t);
            if kind == Some(PeerKind::Floodsub) && above {
                targets.insert(*p);
            }
        }
        if self.config.flood_publish {
            for p in &topic_peers {
                if publish_threshold.is_none_or(|t| self.score(p) >= t) {
                    targets.insert(*p);
                }
            }
        } else if let Some(mesh) = self.mesh.get(&topic) {
            targets.extend(mesh.iter().copied());
        } else {
            if !self.fanout.contains_key(&topic) {
                let d = self.config.d;
                let picked = self.pick_peers(&topic, d, |r, p| {
                    publish_threshold.is_none_or(|t| r.score(p) >= t)
                });
                self.fanout
                    .insert(topic.clone(), picked.into_iter().collect());
            }
            targets.extend(self.fanout.get(&topic).into_iter().flatten().copied());
            self.fanout_last_pub.insert(topic.clone(), now);
        }
        if targets.is_empty() {
            return Err(PublishError::InsufficientPeers);
        }
        self.seen.insert(id.clone(), now);
        let frame = Rpc {
            publish: vec![raw],
            ..Rpc::default()
        }
        .encode();
        self.mcache.put(id.clone(), &topic, frame.clone());
        for peer in targets {
            self.send_message(peer, frame.clone(), &id);
        }
        self.stats.published += 1;
        Ok(id)
    }

    fn send_message(&mut self, peer: PeerId, frame: Bytes, id: &MessageId) {
        self.stats.messages_sent += 1;
        self.out.push(Output::Send {
            peer,
            frame,
            control: false,
            id: Some(id.clone()),
        });
    }

    // -----------------------------------------------------------------------------------
    // RPCs from peers

    /// Handles an RPC from `peer` (already read; graylisting checked by the caller).
    pub fn handle_rpc(&mut self, peer: PeerId, rpc: Rpc, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if rpc.skipped > 0 {
            self.stats.over_limit += rpc.skipped as u64;
        }
        for sub in rpc.subscriptions {
            self.handle_subscription(peer, sub, now);
        }
        for msg in rpc.publish {
            self.handle_message(peer, msg, now);
        }
        if let Some(control) = rpc.control {
            let kind = self.peers.get(&peer).map(|s| s.kind);
            if kind.is_some_and(PeerKind::gossip) {
                self.handle_control(peer, control, now);
            }
        }
    }

    /// A peer joining one of our topics while its mesh is below `d_lo` is grafted at
    /// once (as rust-libp2p does), so that a message published right after it joined
    /// is forwarded to it without waiting for the next heartbeat.
    fn handle_subscription(&mut self, peer: PeerId, sub: SubOpts, now: Instant) {
        let max = self.config.max_topics_per_peer;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if sub.subscribe {
            if state.topics.contains(&sub.topic) {
                return;
            }
            if state.topics.len() >= max || !state.charge(TOPIC_COST + sub.topic.len()) {
                self.stats.over_limit += 1;
                return;
            }
            state.topics.insert(sub.topic.clone());
            self.topic_peers
                .entry(sub.topic.clone())
                .or_default()
                .insert(peer);
            let gossip = state.kind.gossip();
            let short = self
                .mesh
                .get(&sub.topic)
                .is_some_and(|m| m.len() < self.config.d_lo && !m.contains(&peer));
            if gossip
                && short
                && !self.in_backoff(&sub.topic, &peer, now)
                && self.score(&peer) >= 0.0
            {
                if let Some(mesh) = self.mesh.get_mut(&sub.topic) {
                    mesh.insert(peer);
                }
                self.graft_peer(&peer, &sub.topic, now);
            }
            self.out.push(Output::Event(GossipsubEvent::Subscribed {
                peer,
                topic: sub.topic,
            }));
        } else if state.topics.remove(&sub.topic) {
            state.held.shrink(TOPIC_COST + sub.topic.len());
            if let Some(set) = self.topic_peers.get_mut(&sub.topic) {
                set.remove(&peer);
                if set.is_empty() {
                    self.topic_peers.remove(&sub.topic);
                }
            }
            if let Some(mesh) = self.mesh.get_mut(&sub.topic) {
                if mesh.remove(&peer) {
                    if let Some((s, _)) = self.score.as_mut() {
                        s.prune(&peer, &sub.topic);
                    }
                }
            }
            if let Some(f) = self.fanout.get_mut(&sub.topic) {
                f.remove(&peer);
            }
            self.out.push(Output::Event(GossipsubEvent::Unsubscribed {
                peer,
                topic: sub.topic,
            }));
        }
    }

    fn penalise(&mut self, peer: &PeerId, count: f64) {
        if let Some((s, _)) = self.score.as_mut() {
            s.add_penalty(peer, count);
        }
    }

    fn handle_message(&mut self, from: PeerId, raw: RawMessage, now: Instant) {
        let id = (self.config.message_id)(&raw);
        // A peer never sends one message twice: one that does is flooding.
        if let Some(state) = self.peers.get_mut(&from) {
            if state.recent.contains(&id) || state.recent_old.contains(&id) {
                self.stats.duplicates += 1;
                self.penalise(&from, 1.0);
                return;
            }
            if state.recent.len() < MAX_RECENT_PER_PEER && state.charge(ID_COST + id.0.len()) {
                state.recent.insert(id.clone());
            }
        }
        if !self.subscribed.contains(&raw.topic) {
            self.stats.unsubscribed_topic += 1;
            return;
        }
        if self.seen.contains(&id) {
            self.stats.duplicates += 1;
            if let Some((s, _)) = self.score.as_mut() {
                s.duplicate_message(&from, &id, &raw.topic, now);
            }
            return;
        }
        let source = match message::verify(&raw, self.config.signature_policy) {
            Ok(source) => source,
            Err(e) => {
                self.reject_invalid(from, &raw.topic, e, now);
                return;
            }
        };
        self.seen.insert(id.clone(), now);
        if let Some((s, _)) = self.score.as_mut() {
            s.validate_message(&id, now);
        }
        if raw.encoded_len() >= self.config.idontwant_message_threshold {
            self.send_idontwant(&from, &raw.topic, &id);
        }
        let message = Message {
            id: id.clone(),
            source,
            data: raw.data.clone().unwrap_or_default(),
            sequence_number: raw.seqno.as_deref().and_then(message::seqno_of),
            topic: raw.topic.clone(),
            received_from: from,
        };
        if self.validated_topics.contains(&raw.topic) {
            if self.pending.len() >= self.config.validation_concurrency {
                self.stats.ignored += 1;
                if let Some((s, _)) = self.score.as_mut() {
                    s.reject_message(&from, Some(&id), &raw.topic, RejectReason::Throttled, now);
                }
                return;
            }
            self.pending.insert(id, Pending { raw, from });
            self.out.push(Output::Validate(message));
        } else {
            self.accept(from, raw, message, now);
        }
    }

    fn reject_invalid(&mut self, from: PeerId, topic: &str, e: SignatureError, now: Instant) {
        tracing::debug!(%from, "pubsub message refused: {e}");
        self.stats.rejected += 1;
        if let Some((s, _)) = self.score.as_mut() {
            s.reject_message(&from, None, topic, RejectReason::InvalidSignature, now);
        }
    }

    /// A validator's answer for a message handed out with [`Output::Validate`].
    pub fn validation_result(&mut self, message: Message, result: ValidationResult, now: Instant) {
        let Some(pending) = self.pending.remove(&message.id) else {
            return;
        };
        let reason = match result {
            ValidationResult::Accept => {
                self.accept(pending.from, pending.raw, message, now);
                return;
            }
            ValidationResult::Reject => {
                self.stats.rejected += 1;
                RejectReason::ValidationFailed
            }
            ValidationResult::Ignore => {
                self.stats.ignored += 1;
                RejectReason::Ignored
            }
        };
        if let Some((s, _)) = self.score.as_mut() {
            s.reject_message(
                &pending.from,
                Some(&message.id),
                &message.topic,
                reason,
                now,
            );
        }
    }

    /// A valid message, first copy: cache, deliver, forward.
    fn accept(&mut self, from: PeerId, raw: RawMessage, message: Message, now: Instant) {
        let id = message.id.clone();
        let topic = raw.topic.clone();
        if let Some((s, _)) = self.score.as_mut() {
            s.deliver_message(&from, &id, &topic, now);
        }
        self.promises.remove(&id);
        let author = message.source;
        let frame = Rpc {
            publish: vec![raw],
            ..Rpc::default()
        }
        .encode();
        self.mcache.put(id.clone(), &topic, frame.clone());
        self.stats.delivered += 1;
        self.out.push(Output::Deliver(message));
        let mut targets: Vec<PeerId> = Vec::new();
        if let Some(mesh) = self.mesh.get(&topic) {
            targets.extend(mesh.iter().copied());
        }
        if let Some(peers) = self.topic_peers.get(&topic) {
            targets.extend(
                peers
                    .iter()
                    .filter(|p| {
                        self.peers
                            .get(p)
                            .is_some_and(|s| s.kind == PeerKind::Floodsub)
                    })
                    .copied(),
            );
        }
        for peer in targets {
            if peer == from || Some(peer) == author {
                continue;
            }
            if self
                .peers
                .get(&peer)
                .is_some_and(|s| s.dont_want.contains_key(&id))
            {
                continue;
            }
            self.send_message(peer, frame.clone(), &id);
        }
    }

    fn send_idontwant(&mut self, from: &PeerId, topic: &str, id: &MessageId) {
        let Some(mesh) = self.mesh.get(topic) else {
            return;
        };
        let targets: Vec<PeerId> = mesh
            .iter()
            .filter(|p| *p != from && self.peers.get(p).is_some_and(|s| s.kind.idontwant()))
            .copied()
            .collect();
        if targets.is_empty() {
            return;
        }
        let frame = Rpc {
            control: Some(Control {
                idontwant: vec![IDontWant {
                    ids: vec![id.0.clone()],
                }],
                ..Control::default()
            }),
            ..Rpc::default()
        }
        .encode();
        for peer in targets {
            self.out.push(Output::Send {
                peer,
                frame: frame.clone(),
                control: true,
                id: None,
            });
        }
    }

    fn handle_control(&mut self, peer: PeerId, control: Control, now: Instant) {
        let mut iwant = Vec::new();
        for ihave in control.ihave {
            self.handle_ihave(peer, ihave, &mut iwant);
        }
        if !iwant.is_empty() {
            self.ask(peer, iwant, now);
        }
        for w in control.iwant {
            self.handle_iwant(peer, w);
        }
        let mut prune_back = Vec::new();
        let mut px_ok = true;
        for g in control.graft {
            self.handle_graft(peer, g, now, &mut prune_back, &mut px_ok);
        }
        for topic in prune_back {
            let backoff = self.config.prune_backoff;
            let prune = self.make_prune(&peer, &topic, backoff, px_ok);
            self.control.entry(peer).or_default().prune.push(prune);
        }
        for p in control.prune {
            self.handle_prune(peer, p, now);
        }
        let heartbeats = self.heartbeats;
        let mut forget = Vec::new();
        if let Some(state) = self.peers.get_mut(&peer) {
            for d in control.idontwant {
                for id in d.ids {
                    forget.push(MessageId(id.clone()));
                    if state.dont_want.len() >= MAX_DONT_WANT_PER_PEER
                        || !state.charge(ID_COST + id.len())
                    {
                        self.stats.over_limit += 1;
                        break;
                    }
                    let cost = ID_COST + id.len();
                    let until = heartbeats + u64::from(DONT_WANT_HEARTBEATS);
                    if state.dont_want.insert(MessageId(id), until).is_some() {
                        // Already there, and booked then.
                        state.held.shrink(cost);
                    }
                }
            }
        }
        if !forget.is_empty() {
            self.out.push(Output::Forget { peer, ids: forget });
        }
    }

    fn below_gossip_threshold(&self, peer: &PeerId) -> bool {
        self.thresholds()
            .is_some_and(|t| self.score(peer) < t.gossip)
    }

    /// IHAVEs past the limit are counted and penalised before the gossip threshold is
    /// looked at, so a flooder keeps paying until it is graylisted (go ignores them once
    /// the peer is below the threshold, which leaves a flooder just under it).
    fn handle_ihave(&mut self, peer: PeerId, ihave: IHave, iwant: &mut Vec<MessageId>) {
        let max_messages = self.config.max_ihave_messages;
        let max_ids = self.config.max_ihave_length;
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        state.ihave_count += 1;
        if state.ihave_count > max_messages || state.ihave_ids >= max_ids {
            self.stats.over_limit += 1;
            if !state.flooded_ihave {
                state.flooded_ihave = true;
                self.penalise(&peer, 1.0);
            }
            return;
        }
        if self.below_gossip_threshold(&peer) || !self.subscribed.contains(&ihave.topic) {
            return;
        }
        for id in ihave.ids {
            let id = MessageId(id);
            if self.seen.contains(&id) || iwant.contains(&id) {
                continue;
            }
            let Some(state) = self.peers.get_mut(&peer) else {
                return;
            };
            if state.ihave_ids >= max_ids {
                break;
            }
            state.ihave_ids += 1;
            iwant.push(id);
        }
    }

    /// Sends IWANT for `ids` and tracks a promise for one of them, as go does.
    fn ask(&mut self, peer: PeerId, mut ids: Vec<MessageId>, now: Instant) {
        ids.shuffle(&mut rand::thread_rng());
        if let Some(id) = ids.first() {
            if self.promises.len() < MAX_PROMISES || self.promises.contains_key(id) {
                self.promises
                    .entry(id.clone())
                    .or_default()
                    .insert(peer, now + self.config.iwant_followup_time);
            }
        }
        self.control.entry(peer).or_default().iwant.push(IWant {
            ids: ids.into_iter().map(|i| i.0).collect(),
        });
    }

    /// Requests past the retransmission limit are counted and penalised whatever the
    /// peer's score (see [`Router::handle_ihave`]); answers go only to peers above the
    /// gossip threshold.
    fn handle_iwant(&mut self, peer: PeerId, iwant: IWant) {
        let below = self.below_gossip_threshold(&peer);
        let limit = self.config.gossip_retransmission;
        for id in iwant.ids {
            let id = MessageId(id);
            if self.mcache.get(&id).is_none() {
                continue;
            }
            match self.mcache.get_for_peer(&id, &peer, limit) {
                Some(_) if below => {}
                Some(frame) => self.send_message(peer, frame, &id),
                None => {
                    self.stats.over_limit += 1;
                    if let Some(state) = self.peers.get_mut(&peer) {
                        if !state.flooded_iwant {
                            state.flooded_iwant = true;
                            self.penalise(&peer, 1.0);
                        }
                    }
                }
            }
        }
    }

    fn in_backoff(&self, topic: &str, peer: &PeerId, now: Instant) -> bool {
        self.backoff
            .get(&(topic.to_owned(), *peer))
            .is_some_and(|until| *until > now)
    }

    fn handle_graft(
        &mut self,
        peer: PeerId,
        graft: Graft,
        now: Instant,
        prune_back: &mut Vec<String>,
        px_ok: &mut bool,
    ) {
        let topic = graft.topic;
        let Some(mesh) = self.mesh.get(&topic) else {
            // A topic we are not in: no PX, so as not to leak peers to a prober.
            *px_ok = false;
            return;
        };
        if mesh.contains(&peer) {
            return;
        }
        if let Some(until) = self.backoff.get(&(topic.clone(), peer)).copied() {
            if until > now {
                // A GRAFT during its backoff: penalised, twice if right after the PRUNE.
                self.penalise(&peer, 1.0);
                let flood_cutoff =
                    until + self.config.graft_flood_threshold - self.config.prune_backoff;
                if now < flood_cutoff {
                    self.penalise(&peer, 1.0);
                }
                *px_ok = false;
                prune_back.push(topic);
                return;
            }
        }
        if self.score(&peer) < 0.0 {
            *px_ok = false;
            prune_back.push(topic);
            return;
        }
        let outbound = self.peers.get(&peer).is_some_and(|s| s.outbound);
        if mesh.len() >= self.config.d_hi && !outbound {
            prune_back.push(topic);
            return;
        }
        if let Some(mesh) = self.mesh.get_mut(&topic) {
            mesh.insert(peer);
        }
        if let Some((s, _)) = self.score.as_mut() {
            s.graft(&peer, &topic, now);
        }
    }

    fn handle_prune(&mut self, peer: PeerId, prune: Prune, now: Instant) {
        let topic = prune.topic;
        if let Some(mesh) = self.mesh.get_mut(&topic) {
            if mesh.remove(&peer) {
                if let Some((s, _)) = self.score.as_mut() {
                    s.prune(&peer, &topic);
                }
            }
        }
        let backoff = prune
            .backoff
            .map(|b| std::time::Duration::from_secs(b.min(24 * 3600)))
            .unwrap_or(self.config.prune_backoff);
        self.backoff.insert((topic.clone(), peer), now + backoff);
        if prune.peers.is_empty() {
            return;
        }
        let accept = self
            .thresholds()
            .is_none_or(|t| self.score(&peer) >= t.accept_px);
        if !accept {
            return;
        }
        let offered: Vec<PeerId> = prune
            .peers
            .iter()
            .filter_map(|px| px.peer_id.as_deref())
            .filter_map(|b| PeerId::from_bytes(b).ok())
            .filter(|p| *p != self.local && !self.peers.contains_key(p))
            .take(self.config.prune_peers)
            .collect();
        if !offered.is_empty() {
            self.out.push(Output::Connect(offered));
        }
    }

    fn make_prune(
        &mut self,
        peer: &PeerId,
        topic: &str,
        backoff: std::time::Duration,
        px: bool,
    ) -> Prune {
        let kind = self.peers.get(peer).map(|s| s.kind);
        if !kind.is_some_and(PeerKind::px) {
            return Prune {
                topic: topic.to_owned(),
                ..Prune::default()
            };
        }
        let mut peers = Vec::new();
        if px {
            let picked = self.pick_peers(topic, self.config.prune_peers, |r, p| {
                p != peer && r.score(p) >= 0.0
            });
            peers = picked
                .into_iter()
                .map(|p| PxPeer {
                    peer_id: Some(Bytes::from(p.to_bytes())),
                    signed_peer_record: None,
                })
                .collect();
        }
        Prune {
            topic: topic.to_owned(),
            peers,
            backoff: Some(backoff.as_secs()),
        }
    }

    fn graft_peer(&mut self, peer: &PeerId, topic: &str, now: Instant) {
        if let Some((s, _)) = self.score.as_mut() {
            s.graft(peer, topic, now);
        }
        self.control.entry(*peer).or_default().graft.push(Graft {
            topic: topic.to_owned(),
        });
    }

    /// Up to `n` random gossip peers of `topic` that pass `filter`.
    fn pick_peers<F>(&self, topic: &str, n: usize, filter: F) -> Vec<PeerId>
    where
        F: Fn(&Router, &PeerId) -> bool,
    {
        let mut candidates: Vec<PeerId> = self
            .topic_peers
            .get(topic)
            .into_iter()
            .flatten()
            .filter(|p| self.peers.get(p).is_some_and(|s| s.kind.gossip()))
            .filter(|p| filter(self, p))
            .copied()
            .collect();
        candidates.shuffle(&mut rand::thread_rng());
        candidates.truncate(n);
        candidates
    }

    fn flush_control(&mut self) {
        for (peer, control) in self.control.drain() {
            if control.is_empty() || !self.peers.contains_key(&peer) {
                continue;
            }
            let frame = Rpc {
                control: Some(control),
                ..Rpc::default()
            }
            .encode();
            self.out.push(Output::Send {
                peer,
                frame,
                control: true,
                id: None,
            });
        }
    }

    // -----------------------------------------------------------------------------------
    // Heartbeat

    /// The heartbeat: scores, broken promises, mesh upkeep, fanout, gossip, caches.
    pub fn heartbeat(&mut self, now: Instant) {
        self.heartbeats += 1;
        if let Some((s, _)) = self.score.as_mut() {
            s.refresh(now);
        }
        self.apply_broken_promises(now);
        let heartbeats = self.heartbeats;
        for state in self.peers.values_mut() {
            state.ihave_count = 0;
            state.ihave_ids = 0;
            state.flooded_ihave = false;
            state.flooded_iwant = false;
            let mut freed = 0;
            state.dont_want.retain(|id, until| {
                let keep = *until > heartbeats;
                if !keep {
                    freed += ID_COST + id.0.len();
                }
                keep
            });
            freed += state
                .recent_old
                .iter()
                .map(|id| ID_COST + id.0.len())
                .sum::<usize>();
            state.recent_old = std::mem::take(&mut state.recent);
            state.held.shrink(freed);
        }
        self.backoff.retain(|_, until| *until > now);
        let topics: Vec<String> = self.mesh.keys().cloned().collect();
        for topic in &topics {
            self.maintain_mesh(topic, now);
        }
        self.maintain_fanout(now);
        self.emit_gossip();
        self.mcache.shift();
        self.seen.expire(now);
    }

    fn apply_broken_promises(&mut self, now: Instant) {
        let mut broken: HashMap<PeerId, f64> = HashMap::new();
        self.promises.retain(|_, peers| {
            peers.retain(|peer, until| {
                if *until <= now {
                    *broken.entry(*peer).or_default() += 1.0;
                    false
                } else {
                    true
                }
            });
            !peers.is_empty()
        });
        for (peer, count) in broken {
            self.stats.broken_promises += count as u64;
            self.penalise(&peer, count);
        }
    }

    fn maintain_mesh(&mut self, topic: &str, now: Instant) {
        let c = &self.config;
        let (d, d_lo, d_hi, d_score, d_out) = (c.d, c.d_lo, c.d_hi, c.d_score, c.d_out);
        let mut mesh: Vec<PeerId> = self
            .mesh
            .get(topic)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut pruned: Vec<PeerId> = Vec::new();
        // Peers with a negative score leave.
        mesh.retain(|p| {
            let keep = self.score(p) >= 0.0;
            if !keep {
                pruned.push(*p);
            }
            keep
        });
        let mut grafted: Vec<PeerId> = Vec::new();
        if mesh.len() < d_lo {
            let more = self.pick_peers(topic, d - mesh.len(), |r, p| {
                !mesh.contains(p) && !r.in_backoff(topic, p, now) && r.score(p) >= 0.0
            });
            mesh.extend(more.iter().copied());
            grafted.extend(more);
        }
        if mesh.len() > d_hi {
            // Keep the best d_score by score, the rest at random, at least d_out outbound.
            mesh.shuffle(&mut rand::thread_rng());
            mesh.sort_by(|a, b| self.score(b).total_cmp(&self.score(a)));
            let (best, rest) = mesh.split_at(d_score.min(mesh.len()));
            let mut rest = rest.to_vec();
            rest.shuffle(&mut rand::thread_rng());
            let mut keep: Vec<PeerId> = best.to_vec();
            keep.extend(rest.iter().take(d.saturating_sub(keep.len())).copied());
            let outbound = |r: &Router, p: &PeerId| r.peers.get(p).is_some_and(|s| s.outbound);
            let have_out = keep.iter().filter(|p| outbound(self, p)).count();
            if have_out < d_out {
                let extra: Vec<PeerId> = rest
                    .iter()
                    .filter(|p| !keep.contains(p) && outbound(self, p))
                    .take(d_out - have_out)
                    .copied()
                    .collect();
                for e in extra {
                    // Replace a kept inbound peer from the random part.
                    if let Some(pos) = keep
                        .iter()
                        .rposition(|p| !outbound(self, p) && !best.contains(p))
                    {
                        keep[pos] = e;
                    }
                }
            }
            for p in &mesh {
                if !keep.contains(p) {
                    pruned.push(*p);
                }
            }
            mesh = keep;
        }
        if mesh.len() >= d_lo {
            let outbound = |r: &Router, p: &PeerId| r.peers.get(p).is_some_and(|s| s.outbound);
            let have_out = mesh.iter().filter(|p| outbound(self, p)).count();
            if have_out < d_out {
                let more = self.pick_peers(topic, d_out - have_out, |r, p| {
                    !mesh.contains(p)
                        && outbound(r, p)
                        && !r.in_backoff(topic, p, now)
                        && r.score(p) >= 0.0
                });
                mesh.extend(more.iter().copied());
                grafted.extend(more);
            }
        }
        let opportunistic = self.config.opportunistic_graft_ticks;
        if let Some(threshold) = self.thresholds().map(|t| t.opportunistic_graft) {
            if opportunistic > 0 && self.heartbeats % opportunistic == 0 && mesh.len() > 1 {
                let mut scores: Vec<f64> = mesh.iter().map(|p| self.score(p)).collect();
                scores.sort_by(f64::total_cmp);
                let median = scores[scores.len() / 2];
                if median < threshold {
                    let more =
                        self.pick_peers(topic, self.config.opportunistic_graft_peers, |r, p| {
                            !mesh.contains(p) && !r.in_backoff(topic, p, now) && r.score(p) > median
                        });
                    mesh.extend(more.iter().copied());
                    grafted.extend(more);
                }
            }
        }
        for p in &grafted {
            self.graft_peer(p, topic, now);
        }
        let backoff = self.config.prune_backoff;
        for p in pruned {
            if let Some((s, _)) = self.score.as_mut() {
                s.prune(&p, topic);
            }
            let prune = self.make_prune(&p, topic, backoff, true);
            self.control.entry(p).or_default().prune.push(prune);
            self.backoff.insert((topic.to_owned(), p), now + backoff);
        }
        self.mesh
            .insert(topic.to_owned(), mesh.into_iter().collect());
    }

    fn maintain_fanout(&mut self, now: Instant) {
        let ttl = self.config.fanout_ttl;
        let expired: Vec<String> = self
            .fanout_last_pub
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > ttl)
            .map(|(t, _)| t.clone())
            .collect();
        for t in expired {
            self.fanout.remove(&t);
            self.fanout_last_pub.remove(&t);
        }
        let publish = self.thresholds().map(|t| t.publish);
        let topics: Vec<String> = self.fanout.keys().cloned().collect();
        for topic in topics {
            let mut set = self.fanout.remove(&topic).unwrap_or_default();
            set.retain(|p| {
                self.peers.get(p).is_some_and(|s| s.topics.contains(&topic))
                    && publish.is_none_or(|t| self.score(p) >= t)
            });
            if set.len() < self.config.d {
                let more = self.pick_peers(&topic, self.config.d - set.len(), |r, p| {
                    !set.contains(p) && publish.is_none_or(|t| r.score(p) >= t)
                });
                set.extend(more);
            }
            self.fanout.insert(topic, set);
        }
    }

    fn emit_gossip(&mut self) {
        let topics: Vec<String> = self
            .mesh
            .keys()
            .chain(self.fanout.keys())
            .cloned()
            .collect();
        for topic in topics {
            let mut ids = self.mcache.gossip_ids(&topic);
            if ids.is_empty() {
                continue;
            }
            let exclude: HashSet<PeerId> = self
                .mesh
                .get(&topic)
                .into_iter()
                .chain(self.fanout.get(&topic))
                .flatten()
                .copied()
                .collect();
            let eligible = self.pick_peers(&topic, usize::MAX, |r, p| {
                !exclude.contains(p) && !r.below_gossip_threshold(p)
            });
            let n = self
                .config
                .d_lazy
                .max((self.config.gossip_factor * eligible.len() as f64) as usize);
            if ids.len() > self.config.max_ihave_length {
                ids.shuffle(&mut rand::thread_rng());
                ids.truncate(self.config.max_ihave_length);
            }
            let ids: Vec<Bytes> = ids.into_iter().map(|i| i.0).collect();
            for p in eligible.into_iter().take(n) {
                self.control.entry(p).or_default().ihave.push(IHave {
                    topic: topic.clone(),
                    ids: ids.clone(),
                });
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Snapshots

    /// Peers of each kind, with their topics and scores.
    pub fn peers(&self) -> Vec<PeerSnapshot> {
        self.peers
            .iter()
            .map(|(p, s)| PeerSnapshot {
                peer: *p,
                kind: s.kind,
                outbound: s.outbound,
                topics: s.topics.iter().cloned().collect(),
                score: self.score(p),
            })
            .collect()
    }

    /// The mesh of `topic`.
    pub fn mesh_peers(&self, topic: &str) -> Vec<PeerId> {
        self.mesh
            .get(topic)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// The fanout of `topic`.
    pub fn fanout_peers(&self, topic: &str) -> Vec<PeerId> {
        self.fanout
            .get(topic)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Peers subscribed to `topic`.
    pub fn topic_peers(&self, topic: &str) -> Vec<PeerId> {
        self.topic_peers
            .get(topic)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Topics we are subscribed to.
    pub fn topics(&self) -> Vec<String> {
        self.subscribed.iter().cloned().collect()
    }

    /// Sizes of the caches: messages cached, their bytes, IDs seen.
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (self.mcache.len(), self.mcache.bytes(), self.seen.len())
    }
}

/// One peer in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSnapshot {
    /// The peer.
    pub peer: PeerId,
    /// The protocol it speaks with us.
    pub kind: PeerKind,
    /// Whether we dialed it.
    pub outbound: bool,
    /// Its topics.
    pub topics: Vec<String>,
    /// Its score.
    pub score: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{build, SignaturePolicy};
    use crate::proto::decode_rpc;
    use std::time::Duration;
    use strata_core::Keypair;

    const T: &str = "t";

    fn peer(n: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(n)
    }

    fn router_with(config: GossipsubConfig) -> (Router, Instant) {
        let now = Instant::now();
        let memory = ScopeMemory::unlimited();
        (Router::new(peer(0), config, &memory, now), now)
    }

    fn router() -> (Router, Instant) {
        router_with(GossipsubConfig::default())
    }

    /// Adds peers `range` speaking `kind`, every third one outbound, subscribed to T.
    fn add(r: &mut Router, range: std::ops::Range<u64>, kind: PeerKind, now: Instant) {
        for n in range {
            r.add_peer(peer(n), kind, n % 3 == 0, None, &ScopeMemory::unlimited());
            r.handle_rpc(
                peer(n),
                Rpc {
                    subscriptions: vec![SubOpts {
                        subscribe: true,
                        topic: T.into(),
                    }],
                    ..Rpc::default()
                },
                now,
            );
        }
    }

    /// The RPCs sent, per peer, decoded.
    fn sent(r: &mut Router) -> Vec<(PeerId, Rpc)> {
        r.take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { peer, frame, .. } => {
                    let mut body: &[u8] = &frame;
                    prost::encoding::decode_varint(&mut body).unwrap();
                    Some((peer, decode_rpc(body, &Default::default()).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    fn grafts_to(out: &[(PeerId, Rpc)]) -> HashSet<PeerId> {
        out.iter()
            .filter(|(_, r)| r.control.as_ref().is_some_and(|c| !c.graft.is_empty()))
            .map(|(p, _)| *p)
            .collect()
    }

    fn prunes_to(out: &[(PeerId, Rpc)]) -> HashSet<PeerId> {
        out.iter()
            .filter(|(_, r)| r.control.as_ref().is_some_and(|c| !c.prune.is_empty()))
            .map(|(p, _)| *p)
            .collect()
    }

    fn message(author: &Keypair, n: u64, size: usize) -> RawMessage {
        build(
            author,
            SignaturePolicy::StrictSign,
            T,
            Bytes::from(vec![n as u8; size]),
            n,
        )
        .unwrap()
    }

    fn control_rpc(control: Control) -> Rpc {
        Rpc {
            control: Some(control),
            ..Rpc::default()
        }
    }

    #[test]
    fn joining_grafts_d_peers_and_the_heartbeat_prunes_past_d_hi() {
        let (mut r, now) = router();
        add(&mut r, 1..31, PeerKind::Gossipsub12, now);
        sent(&mut r);
        r.join(T, now);
        let out = sent(&mut r);
        assert_eq!(r.mesh_peers(T).len(), 6);
        assert_eq!(grafts_to(&out), r.mesh_peers(T).into_iter().collect());
        // Everyone else grafts us: inbound peers are taken up to d_hi, outbound ones
        // beyond it; the rest are pruned back.
        for n in 1..31 {
            r.handle_rpc(
                peer(n),
                control_rpc(Control {
                    graft: vec![Graft { topic: T.into() }],
                    ..Control::default()
                }),
                now,
            );
        }
        let out = sent(&mut r);
        let mesh = r.mesh_peers(T);
        assert!(mesh.len() > 12, "{}", mesh.len());
        assert!(!prunes_to(&out).is_empty());
        assert!(prunes_to(&out).iter().all(|p| !mesh.contains(p)));
        r.heartbeat(now + Duration::from_secs(1));
        let out = sent(&mut r);
        let mesh = r.mesh_peers(T);
        assert_eq!(mesh.len(), 6);
        let outbound = mesh.iter().filter(|p| r.peers[p].outbound).count();
        assert!(outbound >= 2, "{outbound} outbound");
        // Those pruned are told so, with peer exchange and a backoff.
        let pruned = prunes_to(&out);
        assert!(pruned.len() >= 7);
        for (p, rpc) in &out {
            if let Some(prune) = rpc.control.as_ref().and_then(|c| c.prune.first()) {
                assert!(!mesh.contains(p));
                assert_eq!(prune.backoff, Some(60));
            }
        }
    }

    #[test]
    fn backoff_is_honoured_both_ways() {
        let (mut r, now) = router();
        add(&mut r, 1..4, PeerKind::Gossipsub12, now);
        r.join(T, now);
        assert_eq!(r.mesh_peers(T).len(), 3);
        sent(&mut r);
        // Peer 1 prunes us: it leaves the mesh and is not grafted again in its backoff.
        r.handle_rpc(
            peer(1),
            control_rpc(Control {
                prune: vec![Prune {
                    topic: T.into(),
                    peers: vec![],
                    backoff: Some(30),
                }],
                ..Control::default()
            }),
            now,
        );
        assert!(!r.mesh_peers(T).contains(&peer(1)));
        r.heartbeat(now + Duration::from_secs(1));
        assert!(!grafts_to(&sent(&mut r)).contains(&peer(1)));
        assert!(!r.mesh_peers(T).contains(&peer(1)));
        // After it, the short mesh takes it back.
        r.heartbeat(now + Duration::from_secs(31));
        assert!(grafts_to(&sent(&mut r)).contains(&peer(1)));
        // A GRAFT from peer 2 during a backoff we set is refused and penalised.
        r.leave(T, now + Duration::from_secs(32));
        r.join(T, now + Duration::from_secs(33));
        sent(&mut r);
        r.handle_rpc(
            peer(2),
            control_rpc(Control {
                graft: vec![Graft { topic: T.into() }],
                ..Control::default()
            }),
            now + Duration::from_secs(34),
        );
        assert!(prunes_to(&sent(&mut r)).contains(&peer(2)));
        assert!(r.score(&peer(2)) < 0.0);
    }

    #[test]
    fn idontwant_is_honoured_when_forwarding_and_sent_for_large_messages() {
        let (mut r, now) = router();
        add(&mut r, 1..4, PeerKind::Gossipsub12, now);
        r.join(T, now);
        sent(&mut r);
        let author = Keypair::generate_ed25519();
        let msg = message(&author, 1, 2000);
        let id = (r.config.message_id)(&msg);
        r.handle_rpc(
            peer(2),
            control_rpc(Control {
                idontwant: vec![IDontWant {
                    ids: vec![id.0.clone()],
                }],
                ..Control::default()
            }),
            now,
        );
        r.handle_rpc(
            peer(1),
            Rpc {
                publish: vec![msg],
                ..Rpc::default()
            },
            now,
        );
        let out = sent(&mut r);
        let forwarded: HashSet<PeerId> = out
            .iter()
            .filter(|(_, rpc)| !rpc.publish.is_empty())
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(forwarded, [peer(3)].into_iter().collect());
        // A message over 1 KiB: IDONTWANT to the other mesh peers, not to its sender.
        let idontwant: HashSet<PeerId> = out
            .iter()
            .filter(|(_, rpc)| {
                rpc.control
                    .as_ref()
                    .is_some_and(|c| !c.idontwant.is_empty())
            })
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(idontwant, [peer(2), peer(3)].into_iter().collect());
        // An IDONTWANT also asks for the peer's queued copies to be dropped.
        r.handle_rpc(
            peer(3),
            control_rpc(Control {
                idontwant: vec![IDontWant {
                    ids: vec![id.0.clone()],
                }],
                ..Control::default()
            }),
            now,
        );
        let forget: Vec<(PeerId, Vec<MessageId>)> = r
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Forget { peer, ids } => Some((peer, ids)),
                _ => None,
            })
            .collect();
        assert_eq!(forget, vec![(peer(3), vec![id])]);
    }

    #[test]
    fn gossip_goes_to_non_mesh_peers_and_iwant_is_answered_from_the_cache() {
        let (mut r, now) = router();
        add(&mut r, 1..21, PeerKind::Gossipsub11, now);
        r.join(T, now);
        let author = Keypair::generate_ed25519();
        r.publish(message(&author, 5, 10), now).unwrap();
        sent(&mut r);
        r.heartbeat(now + Duration::from_secs(1));
        let out = sent(&mut r);
        let mesh = r.mesh_peers(T);
        let gossiped: Vec<PeerId> = out
            .iter()
            .filter(|(_, rpc)| rpc.control.as_ref().is_some_and(|c| !c.ihave.is_empty()))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(gossiped.len(), 6, "d_lazy of the 14 outside the mesh");
        assert!(gossiped.iter().all(|p| !mesh.contains(p)));
        // IWANT for it is answered, three times at most per peer.
        let id = default_id(&author, 5);
        for round in 0..5 {
            r.handle_rpc(
                peer(1),
                control_rpc(Control {
                    iwant: vec![IWant {
                        ids: vec![id.clone()],
                    }],
                    ..Control::default()
                }),
                now,
            );
            let answered = sent(&mut r).iter().any(|(_, rpc)| !rpc.publish.is_empty());
            assert_eq!(answered, round < 3, "round {round}");
        }
    }

    fn default_id(author: &Keypair, seqno: u64) -> Bytes {
        let mut id = author.public().to_peer_id().to_bytes();
        id.extend_from_slice(&seqno.to_be_bytes());
        Bytes::from(id)
    }

    #[test]
    fn a_broken_iwant_promise_is_penalised() {
        let (mut r, now) = router();
        add(&mut r, 1..3, PeerKind::Gossipsub12, now);
        r.join(T, now);
        sent(&mut r);
        r.handle_rpc(
            peer(1),
            control_rpc(Control {
                ihave: vec![IHave {
                    topic: T.into(),
                    ids: vec![Bytes::from_static(b"never sent")],
                }],
                ..Control::default()
            }),
            now,
        );
        let out = sent(&mut r);
        assert!(out
            .iter()
            .any(|(p, rpc)| *p == peer(1)
                && rpc.control.as_ref().is_some_and(|c| !c.iwant.is_empty())));
        assert_eq!(r.score(&peer(1)), 0.0);
        r.heartbeat(now + Duration::from_secs(4));
        assert_eq!(r.stats().broken_promises, 1);
        assert!(r.score(&peer(1)) < 0.0);
    }

    #[test]
    fn fanout_serves_a_topic_we_publish_to_until_its_ttl() {
        let config = GossipsubConfig {
            flood_publish: false,
            ..GossipsubConfig::default()
        };
        let (mut r, now) = router_with(config);
        add(&mut r, 1..11, PeerKind::Gossipsub12, now);
        let author = Keypair::generate_ed25519();
        r.publish(message(&author, 1, 10), now).unwrap();
        let out = sent(&mut r);
        assert_eq!(out.len(), 6, "d peers of the fanout");
        assert_eq!(r.fanout_peers(T).len(), 6);
        r.heartbeat(now + Duration::from_secs(30));
        assert_eq!(r.fanout_peers(T).len(), 6);
        r.heartbeat(now + Duration::from_secs(61));
        assert!(r.fanout_peers(T).is_empty());
    }

    #[test]
    fn peer_exchange_is_used_from_peers_above_the_threshold() {
        let (mut r, now) = router();
        add(&mut r, 1..2, PeerKind::Gossipsub11, now);
        let prune = control_rpc(Control {
            prune: vec![Prune {
                topic: T.into(),
                peers: vec![PxPeer {
                    peer_id: Some(Bytes::from(peer(9).to_bytes())),
                    signed_peer_record: None,
                }],
                backoff: None,
            }],
            ..Control::default()
        });
        // A fresh peer scores 0, under accept_px (10): ignored.
        r.handle_rpc(peer(1), prune.clone(), now);
        assert!(!r
            .take_outputs()
            .iter()
            .any(|o| matches!(o, Output::Connect(_))));
        r.set_application_score(&peer(1), 20.0);
        r.handle_rpc(peer(1), prune, now);
        let connect: Vec<Vec<PeerId>> = r
            .take_outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::Connect(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(connect, vec![vec![peer(9)]]);
    }

    #[test]
    fn floodsub_peers_get_messages_and_no_control() {
        let (mut r, now) = router();
        add(&mut r, 1..3, PeerKind::Floodsub, now);
        add(&mut r, 3..5, PeerKind::Gossipsub12, now);
        r.join(T, now);
        let out = sent(&mut r);
        // The mesh is GossipSub peers only; floodsub peers get no GRAFT.
        let mesh: HashSet<PeerId> = r.mesh_peers(T).into_iter().collect();
        assert_eq!(mesh, [peer(3), peer(4)].into_iter().collect());
        assert!(grafts_to(&out).iter().all(|p| mesh.contains(p)));
        let author = Keypair::generate_ed25519();
        r.handle_rpc(
            peer(3),
            Rpc {
                publish: vec![message(&author, 1, 10)],
                ..Rpc::default()
            },
            now,
        );
        let forwarded: HashSet<PeerId> = sent(&mut r)
            .iter()
            .filter(|(_, rpc)| !rpc.publish.is_empty())
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(forwarded, [peer(1), peer(2), peer(4)].into_iter().collect());
    }

    #[test]
    fn a_mesh_with_a_low_median_score_grafts_better_peers() {
        let config = GossipsubConfig {
            opportunistic_graft_ticks: 1,
            ..GossipsubConfig::default()
        };
        let (mut r, now) = router_with(config);
        add(&mut r, 1..7, PeerKind::Gossipsub12, now);
        r.join(T, now);
        assert_eq!(r.mesh_peers(T).len(), 6);
        // Two peers outside the mesh score well above the opportunistic threshold.
        add(&mut r, 7..9, PeerKind::Gossipsub12, now);
        r.set_application_score(&peer(7), 50.0);
        r.set_application_score(&peer(8), 50.0);
        sent(&mut r);
        r.heartbeat(now + Duration::from_secs(1));
        let mesh = r.mesh_peers(T);
        assert!(
            mesh.contains(&peer(7)) && mesh.contains(&peer(8)),
            "{mesh:?}"
        );
        assert!(grafts_to(&sent(&mut r)).contains(&peer(7)));
    }

    #[test]
    fn a_mesh_peer_that_delivers_too_little_loses_score_once_active() {
        let params = crate::config::PeerScoreParams {
            default_topic: Some(crate::config::TopicScoreParams {
                mesh_message_deliveries_weight: -1.0,
                mesh_message_deliveries_threshold: 5.0,
                mesh_message_deliveries_decay: 1.0,
                mesh_message_deliveries_activation: Duration::from_secs(2),
                ..crate::config::TopicScoreParams::default()
            }),
            ..crate::config::PeerScoreParams::default()
        };
        let config = GossipsubConfig {
            scoring: Some((params, PeerScoreThresholds::default())),
            ..GossipsubConfig::default()
        };
        let (mut r, now) = router_with(config);
        add(&mut r, 1..3, PeerKind::Gossipsub12, now);
        r.join(T, now);
        // Peer 1 delivers five messages, peer 2 none.
        let author = Keypair::generate_ed25519();
        for n in 0..5 {
            r.handle_rpc(
                peer(1),
                Rpc {
                    publish: vec![message(&author, n, 10)],
                    ..Rpc::default()
                },
                now,
            );
        }
        // Before activation, no deficit counts.
        r.heartbeat(now + Duration::from_secs(1));
        assert!(r.score(&peer(2)) >= 0.0);
        r.heartbeat(now + Duration::from_millis(2500));
        // Peer 2's deficit is 5 (squared, weight -1); peer 1 decayed but is positive.
        assert!(r.score(&peer(2)) < -20.0, "{}", r.score(&peer(2)));
        assert!(r.score(&peer(1)) > 0.0, "{}", r.score(&peer(1)));
        // A negative score leaves the mesh at the next heartbeat.
        r.heartbeat(now + Duration::from_secs(3));
        assert!(!r.mesh_peers(T).contains(&peer(2)));
    }

    #[test]
    fn validations_past_the_queue_are_ignored_without_penalty() {
        let config = GossipsubConfig {
            validation_concurrency: 1,
            ..GossipsubConfig::default()
        };
        let (mut r, now) = router_with(config);
        add(&mut r, 1..2, PeerKind::Gossipsub12, now);
        r.join(T, now);
        r.set_validated(T, true);
        let author = Keypair::generate_ed25519();
        for n in 0..2 {
            r.handle_rpc(
                peer(1),
                Rpc {
                    publish: vec![message(&author, n, 10)],
                    ..Rpc::default()
                },
                now,
            );
        }
        let validating = r
            .take_outputs()
            .iter()
            .filter(|o| matches!(o, Output::Validate(_)))
            .count();
        assert_eq!(validating, 1);
        assert_eq!(r.stats().ignored, 1);
        assert_eq!(r.score(&peer(1)), 0.0);
    }
}
