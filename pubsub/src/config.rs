//! Settings: the router's parameters (the spec's defaults), limits, and peer scoring.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::message::{default_message_id, MessageIdFn, SignaturePolicy};
use crate::proto::DecodeLimits;

/// GossipSub v1.2.
pub const MESHSUB_V12: &str = "/meshsub/1.2.0";
/// GossipSub v1.1.
pub const MESHSUB_V11: &str = "/meshsub/1.1.0";
/// GossipSub v1.0.
pub const MESHSUB_V10: &str = "/meshsub/1.0.0";
/// Floodsub.
pub const FLOODSUB: &str = "/floodsub/1.0.0";

/// The router's settings. Defaults are the spec's and go-libp2p-pubsub's:
///
/// | field | default |
/// |---|---|
/// | `protocols` | `/meshsub/1.2.0`, `/meshsub/1.1.0`, `/meshsub/1.0.0`, `/floodsub/1.0.0` |
/// | `d` / `d_lo` / `d_hi` / `d_lazy` / `d_score` / `d_out` | 6 / 4 / 12 / 6 / 4 / 2 |
/// | `heartbeat_interval` | 1 s (first after 100 ms) |
/// | `fanout_ttl` | 60 s |
/// | `history_length` / `history_gossip` | 5 / 3 heartbeats |
/// | `gossip_factor` | 0.25 |
/// | `seen_ttl` | 2 min |
/// | `prune_backoff` / `unsubscribe_backoff` | 60 s / 10 s |
/// | `graft_flood_threshold` | 10 s |
/// | `opportunistic_graft_ticks` / `opportunistic_graft_peers` | 60 / 2 |
/// | `prune_peers` | 16 (peer exchange) |
/// | `max_ihave_length` / `max_ihave_messages` | 5,000 IDs / 10 IHAVEs per peer and heartbeat |
/// | `gossip_retransmission` | 3 IWANTs per peer and message |
/// | `iwant_followup_time` | 3 s |
/// | `idontwant_message_threshold` | 1 KiB |
/// | `max_transmit_size` | 1 MiB |
/// | `flood_publish` | on |
/// | `signature_policy` | `StrictSign` |
/// | `message_id` | author bytes ‖ sequence number (go-libp2p's) |
/// | `max_topics_per_peer` | 1,000 |
/// | `peer_queue_bytes` / `peer_queue_len` | 4 MiB / 512 RPCs per peer |
/// | `subscription_buffer` / `subscription_buffer_bytes` | 256 messages / 16 MiB |
/// | `validation_concurrency` / `validation_timeout` | 1,024 / 5 s |
/// | `scoring` | on, with [`PeerScoreParams::default`] and [`PeerScoreThresholds::default`] |
#[derive(Clone)]
pub struct GossipsubConfig {
    /// The protocols spoken, the preferred first.
    pub protocols: Vec<String>,
    /// The mesh degree: peers kept in each topic's mesh.
    pub d: usize,
    /// Below this, the heartbeat grafts up to `d`.
    pub d_lo: usize,
    /// Above this, the heartbeat prunes down to `d`.
    pub d_hi: usize,
    /// Peers gossiped to per topic and heartbeat, at least.
    pub d_lazy: usize,
    /// Peers kept by score when the mesh is pruned.
    pub d_score: usize,
    /// Outbound peers the mesh keeps, at least (an attacker cannot fill it by dialing).
    pub d_out: usize,
    /// The time between heartbeats.
    pub heartbeat_interval: Duration,
    /// The delay of the first heartbeat.
    pub heartbeat_initial_delay: Duration,
    /// A topic we published to without subscribing loses its fanout after this.
    pub fanout_ttl: Duration,
    /// Heartbeats a message stays in the message cache (for IWANT).
    pub history_length: usize,
    /// Heartbeats of the message cache that gossip announces.
    pub history_gossip: usize,
    /// Share of eligible non-mesh peers gossiped to, when more than `d_lazy`.
    pub gossip_factor: f64,
    /// How long a message ID is remembered as seen.
    pub seen_ttl: Duration,
    /// The backoff after a PRUNE.
    pub prune_backoff: Duration,
    /// The backoff sent with the PRUNEs of leaving a topic.
    pub unsubscribe_backoff: Duration,
    /// A GRAFT this soon after a PRUNE is penalised twice.
    pub graft_flood_threshold: Duration,
    /// Every this many heartbeats, a mesh whose median score is low takes better peers.
    pub opportunistic_graft_ticks: u64,
    /// Peers grafted opportunistically at a time.
    pub opportunistic_graft_peers: usize,
    /// Peers offered in a PRUNE's peer exchange.
    pub prune_peers: usize,
    /// The most message IDs taken from one peer's IHAVEs in a heartbeat.
    pub max_ihave_length: usize,
    /// The most IHAVEs taken from one peer in a heartbeat.
    pub max_ihave_messages: usize,
    /// The most times one peer gets a message through IWANT.
    pub gossip_retransmission: u32,
    /// How long a peer has to deliver a message it announced and we asked for.
    pub iwant_followup_time: Duration,
    /// Messages this large or larger make us send IDONTWANT to our mesh peers.
    pub idontwant_message_threshold: usize,
    /// The largest RPC sent or read; larger frames are an error and the stream is reset.
    pub max_transmit_size: usize,
    /// Publish to every subscribed peer above the publish threshold, not only the mesh.
    pub flood_publish: bool,
    /// How our messages are signed and others' checked.
    pub signature_policy: SignaturePolicy,
    /// How a message's ID is computed.
    pub message_id: MessageIdFn,
    /// The most topics a peer may be subscribed to; further subscriptions are ignored.
    pub max_topics_per_peer: usize,
    /// The most of each kind of entry one RPC may make us hold.
    pub decode_limits: DecodeLimits,
    /// Bytes of RPCs waiting to be written to one peer.
    pub peer_queue_bytes: usize,
    /// RPCs waiting to be written to one peer.
    pub peer_queue_len: usize,
    /// Messages a subscription holds for a slow reader; past it, new ones are missed.
    pub subscription_buffer: usize,
    /// Bytes a subscription holds for a slow reader.
    pub subscription_buffer_bytes: usize,
    /// Validations running at once; a message past it is dropped (go: throttled).
    pub validation_concurrency: usize,
    /// How long an asynchronous validator may take before the message is ignored.
    pub validation_timeout: Duration,
    /// Peer scoring, or `None` to turn it off.
    pub scoring: Option<(PeerScoreParams, PeerScoreThresholds)>,
}

impl Default for GossipsubConfig {
    fn default() -> Self {
        GossipsubConfig {
            protocols: [MESHSUB_V12, MESHSUB_V11, MESHSUB_V10, FLOODSUB]
                .map(String::from)
                .to_vec(),
            d: 6,
            d_lo: 4,
            d_hi: 12,
            d_lazy: 6,
            d_score: 4,
            d_out: 2,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_initial_delay: Duration::from_millis(100),
            fanout_ttl: Duration::from_secs(60),
            history_length: 5,
            history_gossip: 3,
            gossip_factor: 0.25,
            seen_ttl: Duration::from_secs(120),
            prune_backoff: Duration::from_secs(60),
            unsubscribe_backoff: Duration::from_secs(10),
            graft_flood_threshold: Duration::from_secs(10),
            opportunistic_graft_ticks: 60,
            opportunistic_graft_peers: 2,
            prune_peers: 16,
            max_ihave_length: 5_000,
            max_ihave_messages: 10,
            gossip_retransmission: 3,
            iwant_followup_time: Duration::from_secs(3),
            idontwant_message_threshold: 1024,
            max_transmit_size: 1024 * 1024,
            flood_publish: true,
            signature_policy: SignaturePolicy::StrictSign,
            message_id: Arc::new(default_message_id),
            max_topics_per_peer: 1_000,
            decode_limits: DecodeLimits::default(),
            peer_queue_bytes: 4 * 1024 * 1024,
            peer_queue_len: 512,
            subscription_buffer: 256,
            subscription_buffer_bytes: 16 * 1024 * 1024,
            validation_concurrency: 1_024,
            validation_timeout: Duration::from_secs(5),
            scoring: Some((PeerScoreParams::default(), PeerScoreThresholds::default())),
        }
    }
}

impl std::fmt::Debug for GossipsubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipsubConfig")
            .field("protocols", &self.protocols)
            .field("d", &self.d)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("signature_policy", &self.signature_policy)
            .field("max_transmit_size", &self.max_transmit_size)
            .finish_non_exhaustive()
    }
}

/// The score thresholds (all but `accept_px` and `opportunistic_graft` are at most 0).
///
/// | field | default | below it |
/// |---|---|---|
/// | `gossip` | -10 | no gossip to or from the peer |
/// | `publish` | -50 | our messages are not flood-published to it |
/// | `graylist` | -80 | its RPCs are dropped unread |
/// | `accept_px` | 10 | its peer exchange is ignored (at or above: used) |
/// | `opportunistic_graft` | 20 | a mesh with this median score takes better peers |
#[derive(Debug, Clone, PartialEq)]
pub struct PeerScoreThresholds {
    /// See the table.
    pub gossip: f64,
    /// See the table.
    pub publish: f64,
    /// See the table.
    pub graylist: f64,
    /// See the table.
    pub accept_px: f64,
    /// See the table.
    pub opportunistic_graft: f64,
}

impl Default for PeerScoreThresholds {
    fn default() -> Self {
        PeerScoreThresholds {
            gossip: -10.0,
            publish: -50.0,
            graylist: -80.0,
            accept_px: 10.0,
            opportunistic_graft: 20.0,
        }
    }
}

/// Peer score parameters (v1.1), as go-libp2p-pubsub's `PeerScoreParams`.
///
/// The defaults turn on what needs no knowledge of the application: the behaviour
/// penalty P7 (weight -10 past a threshold of 0, decaying 0.9 a second, so a third
/// broken promise or flood graylists), IP colocation P6 (weight -5 past 10 peers on one
/// address; loopback is not exempt) and, for every topic, `default_topic` (first
/// deliveries and invalid messages; the mesh delivery rate P3 is off, since it needs a
/// topic's expected rate).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerScoreParams {
    /// Per-topic parameters.
    pub topics: HashMap<String, TopicScoreParams>,
    /// Parameters of topics not in `topics`, if any.
    pub default_topic: Option<TopicScoreParams>,
    /// The cap of the positive part of the topics' sum (0: none).
    pub topic_score_cap: f64,
    /// P5: the weight of the application's score.
    pub app_specific_weight: f64,
    /// P6: the weight of the IP colocation factor (at most 0).
    pub ip_colocation_factor_weight: f64,
    /// P6: peers one IP may have before it counts.
    pub ip_colocation_factor_threshold: f64,
    /// P7: the weight of the behaviour penalty (at most 0).
    pub behaviour_penalty_weight: f64,
    /// P7: the penalty counts past this.
    pub behaviour_penalty_threshold: f64,
    /// P7: the penalty's decay per decay interval.
    pub behaviour_penalty_decay: f64,
    /// How often counters decay.
    pub decay_interval: Duration,
    /// A counter decayed below this is zero.
    pub decay_to_zero: f64,
    /// How long a disconnected peer's score is remembered.
    pub retain_score: Duration,
}

impl Default for PeerScoreParams {
    fn default() -> Self {
        PeerScoreParams {
            topics: HashMap::new(),
            default_topic: Some(TopicScoreParams::default()),
            topic_score_cap: 100.0,
            app_specific_weight: 1.0,
            ip_colocation_factor_weight: -5.0,
            ip_colocation_factor_threshold: 10.0,
            behaviour_penalty_weight: -10.0,
            behaviour_penalty_threshold: 0.0,
            behaviour_penalty_decay: 0.9,
            decay_interval: Duration::from_secs(1),
            decay_to_zero: 0.01,
            retain_score: Duration::from_secs(3600),
        }
    }
}

/// Per-topic score parameters (P1 to P4), as go-libp2p-pubsub's `TopicScoreParams`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicScoreParams {
    /// The topic's weight in the score.
    pub topic_weight: f64,
    /// P1: weight of time in the mesh.
    pub time_in_mesh_weight: f64,
    /// P1: the unit of time in the mesh.
    pub time_in_mesh_quantum: Duration,
    /// P1: cap, in quanta.
    pub time_in_mesh_cap: f64,
    /// P2: weight of first deliveries.
    pub first_message_deliveries_weight: f64,
    /// P2: decay.
    pub first_message_deliveries_decay: f64,
    /// P2: cap.
    pub first_message_deliveries_cap: f64,
    /// P3: weight of the mesh delivery deficit, squared (at most 0; 0 turns P3 off).
    pub mesh_message_deliveries_weight: f64,
    /// P3: decay.
    pub mesh_message_deliveries_decay: f64,
    /// P3: cap.
    pub mesh_message_deliveries_cap: f64,
    /// P3: the deliveries expected; fewer is a deficit.
    pub mesh_message_deliveries_threshold: f64,
    /// P3: a duplicate this soon after the first delivery still counts.
    pub mesh_message_deliveries_window: Duration,
    /// P3: time in the mesh before the deficit counts.
    pub mesh_message_deliveries_activation: Duration,
    /// P3b: weight of the deficit a peer left the mesh with (at most 0).
    pub mesh_failure_penalty_weight: f64,
    /// P3b: decay.
    pub mesh_failure_penalty_decay: f64,
    /// P4: weight of invalid messages, squared (at most 0).
    pub invalid_message_deliveries_weight: f64,
    /// P4: decay.
    pub invalid_message_deliveries_decay: f64,
}

impl Default for TopicScoreParams {
    fn default() -> Self {
        TopicScoreParams {
            topic_weight: 1.0,
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 3600.0,
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.5,
            first_message_deliveries_cap: 50.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_message_deliveries_decay: 0.5,
            mesh_message_deliveries_cap: 100.0,
            mesh_message_deliveries_threshold: 1.0,
            mesh_message_deliveries_window: Duration::from_millis(10),
            mesh_message_deliveries_activation: Duration::from_secs(5),
            mesh_failure_penalty_weight: 0.0,
            mesh_failure_penalty_decay: 0.5,
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.9,
        }
    }
}
