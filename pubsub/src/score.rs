//! Peer scoring (GossipSub v1.1): P1 time in mesh, P2 first deliveries, P3 mesh delivery
//! deficit, P3b mesh failure penalty, P4 invalid messages, P5 the application's score,
//! P6 IP colocation and P7 the behaviour penalty, with decay. A state machine with no
//! I/O: the router tells it what happened and asks for scores.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use strata_core::PeerId;
use tokio::time::Instant;

use crate::config::{PeerScoreParams, TopicScoreParams};
use crate::message::MessageId;

#[derive(Debug, Default, Clone)]
struct TopicStats {
    in_mesh: bool,
    graft_time: Option<Instant>,
    mesh_time_secs: f64,
    first_message_deliveries: f64,
    mesh_message_deliveries: f64,
    mesh_message_deliveries_active: bool,
    mesh_failure_penalty: f64,
    invalid_message_deliveries: f64,
}

#[derive(Debug, Default, Clone)]
struct PeerStats {
    connected: bool,
    expire: Option<Instant>,
    topics: HashMap<String, TopicStats>,
    ip: Option<IpAddr>,
    behaviour_penalty: f64,
    app_score: f64,
}

/// What became of a message ID we saw.
#[derive(Debug, Clone)]
struct DeliveryRecord {
    first_seen: Instant,
    validated: Option<Instant>,
    status: Delivery,
    /// Peers that sent it to us after the first (bounded by the peers there are).
    peers: HashSet<PeerId>,
    expire: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Unknown,
    Valid,
    Invalid,
    Ignored,
}

/// Why a message was rejected, for scoring: only what the sender could have known to
/// be wrong counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A bad signature, author or sequence number.
    InvalidSignature,
    /// The validator rejected it.
    ValidationFailed,
    /// The validator ignored it (no penalty).
    Ignored,
    /// The validator did not answer in time, or was too busy (no penalty).
    Throttled,
}

/// Peer scores.
pub struct PeerScore {
    params: PeerScoreParams,
    peers: HashMap<PeerId, PeerStats>,
    ips: HashMap<IpAddr, HashSet<PeerId>>,
    deliveries: HashMap<MessageId, DeliveryRecord>,
    delivery_ttl: std::time::Duration,
    last_decay: Instant,
}

impl PeerScore {
    /// Scores under `params`; delivery records are kept for `delivery_ttl` (the seen
    /// cache's time).
    pub fn new(params: PeerScoreParams, delivery_ttl: std::time::Duration, now: Instant) -> Self {
        PeerScore {
            params,
            peers: HashMap::new(),
            ips: HashMap::new(),
            deliveries: HashMap::new(),
            delivery_ttl,
            last_decay: now,
        }
    }

    fn topic_params(&self, topic: &str) -> Option<&TopicScoreParams> {
        self.params
            .topics
            .get(topic)
            .or(self.params.default_topic.as_ref())
    }

    /// The score of `peer` (0 for a peer we know nothing of).
    pub fn score(&self, peer: &PeerId) -> f64 {
        let Some(stats) = self.peers.get(peer) else {
            return 0.0;
        };
        let mut topics = 0.0;
        for (topic, t) in &stats.topics {
            let Some(p) = self.topic_params(topic) else {
                continue;
            };
            let mut s = 0.0;
            if t.in_mesh {
                let quanta = t.mesh_time_secs / p.time_in_mesh_quantum.as_secs_f64().max(1e-9);
                s += quanta.min(p.time_in_mesh_cap) * p.time_in_mesh_weight;
            }
            s += t.first_message_deliveries * p.first_message_deliveries_weight;
            if t.mesh_message_deliveries_active
                && t.mesh_message_deliveries < p.mesh_message_deliveries_threshold
            {
                let deficit = p.mesh_message_deliveries_threshold - t.mesh_message_deliveries;
                s += deficit * deficit * p.mesh_message_deliveries_weight;
            }
            s += t.mesh_failure_penalty * p.mesh_failure_penalty_weight;
            s += t.invalid_message_deliveries
                * t.invalid_message_deliveries
                * p.invalid_message_deliveries_weight;
            topics += s * p.topic_weight;
        }
        if self.params.topic_score_cap > 0.0 && topics > self.params.topic_score_cap {
            topics = self.params.topic_score_cap;
        }
        let mut score = topics + stats.app_score * self.params.app_specific_weight;
        if let Some(ip) = stats.ip {
            let n = self.ips.get(&ip).map_or(0, HashSet::len) as f64;
            if n > self.params.ip_colocation_factor_threshold {
                let surplus = n - self.params.ip_colocation_factor_threshold;
                score += surplus * surplus * self.params.ip_colocation_factor_weight;
            }
        }
        if stats.behaviour_penalty > self.params.behaviour_penalty_threshold {
            let excess = stats.behaviour_penalty - self.params.behaviour_penalty_threshold;
            score += excess * excess * self.params.behaviour_penalty_weight;
        }
        score
    }

    /// A peer connected (from `ip`, if known). A peer whose score was retained gets it
    /// back.
    pub fn add_peer(&mut self, peer: PeerId, ip: Option<IpAddr>) {
        let stats = self.peers.entry(peer).or_default();
        stats.connected = true;
        stats.expire = None;
        if let Some(old) = stats.ip.take() {
            if let Some(set) = self.ips.get_mut(&old) {
                set.remove(&peer);
            }
        }
        stats.ip = ip;
        if let Some(ip) = ip {
            self.ips.entry(ip).or_default().insert(peer);
        }
    }

    /// A peer disconnected: its score is kept for `retain_score` (so leaving does not
    /// wash a bad score), its mesh membership ends with the failure penalty it earned.
    pub fn remove_peer(&mut self, peer: &PeerId, now: Instant) {
        let Some(stats) = self.peers.get_mut(peer) else {
            return;
        };
        let params = &self.params;
        for (topic, t) in stats.topics.iter_mut() {
            if t.in_mesh {
                if let Some(p) = params.topics.get(topic).or(params.default_topic.as_ref()) {
                    apply_mesh_failure(t, p);
                }
            }
            t.in_mesh = false;
            t.first_message_deliveries = 0.0;
        }
        stats.connected = false;
        stats.expire = Some(now + params.retain_score);
    }

    /// The application's score of `peer` (P5).
    pub fn set_application_score(&mut self, peer: &PeerId, score: f64) -> bool {
        match self.peers.get_mut(peer) {
            Some(s) => {
                s.app_score = score;
                true
            }
            None => false,
        }
    }

    /// P7: the peer misbehaved `count` times.
    pub fn add_penalty(&mut self, peer: &PeerId, count: f64) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.behaviour_penalty += count;
        }
    }

    /// The peer joined our mesh of `topic`.
    pub fn graft(&mut self, peer: &PeerId, topic: &str, now: Instant) {
        if let Some(s) = self.peers.get_mut(peer) {
            let t = s.topics.entry(topic.to_owned()).or_default();
            t.in_mesh = true;
            t.graft_time = Some(now);
            t.mesh_time_secs = 0.0;
            t.mesh_message_deliveries_active = false;
        }
    }

    /// The peer left our mesh of `topic`.
    pub fn prune(&mut self, peer: &PeerId, topic: &str) {
        let p = self.topic_params(topic).cloned();
        if let Some(t) = self
            .peers
            .get_mut(peer)
            .and_then(|s| s.topics.get_mut(topic))
        {
            if let Some(p) = p {
                apply_mesh_failure(t, &p);
            }
            t.in_mesh = false;
        }
    }

    /// A message arrived for the first time (before validation).
    pub fn validate_message(&mut self, id: &MessageId, now: Instant) {
        self.deliveries
            .entry(id.clone())
            .or_insert_with(|| DeliveryRecord {
                first_seen: now,
                validated: None,
                status: Delivery::Unknown,
                peers: HashSet::new(),
                expire: now + self.delivery_ttl,
            });
    }

    /// The first copy of a message, from `from`, was valid: P2 for the first sender,
    /// P3 for it and for mesh peers that sent a copy while it was being validated.
    pub fn deliver_message(&mut self, from: &PeerId, id: &MessageId, topic: &str, now: Instant) {
        self.validate_message(id, now);
        let Some(record) = self.deliveries.get_mut(id) else {
            return;
        };
        if record.status != Delivery::Unknown {
            return;
        }
        record.status = Delivery::Valid;
        record.validated = Some(now);
        let others: Vec<PeerId> = record.peers.iter().copied().collect();
        let Some(p) = self.topic_params(topic).cloned() else {
            return;
        };
        if let Some(t) = self.topic_of(from, topic) {
            t.first_message_deliveries =
                (t.first_message_deliveries + 1.0).min(p.first_message_deliveries_cap);
            if t.in_mesh {
                t.mesh_message_deliveries =
                    (t.mesh_message_deliveries + 1.0).min(p.mesh_message_deliveries_cap);
            }
        }
        for other in others {
            self.mark_duplicate_in_mesh(&other, topic, &p);
        }
    }

    /// A message was rejected: P4 for the sender (and for peers that sent copies while
    /// it was validated), unless the reason is not the sender's fault.
    pub fn reject_message(
        &mut self,
        from: &PeerId,
        id: Option<&MessageId>,
        topic: &str,
        reason: RejectReason,
        now: Instant,
    ) {
        match reason {
            RejectReason::InvalidSignature => {
                // No ID can be trusted: only the sender pays.
                self.mark_invalid(from, topic);
                return;
            }
            RejectReason::Ignored | RejectReason::Throttled => {
                if let Some(id) = id {
                    self.validate_message(id, now);
                    if let Some(r) = self.deliveries.get_mut(id) {
                        r.status = Delivery::Ignored;
                        r.peers.clear();
                    }
                }
                return;
            }
            RejectReason::ValidationFailed => {}
        }
        let Some(id) = id else {
            self.mark_invalid(from, topic);
            return;
        };
        self.validate_message(id, now);
        let others: Vec<PeerId> = match self.deliveries.get_mut(id) {
            Some(r) if r.status == Delivery::Unknown => {
                r.status = Delivery::Invalid;
                r.peers.drain().collect()
            }
            _ => Vec::new(),
        };
        self.mark_invalid(from, topic);
        for other in others {
            self.mark_invalid(&other, topic);
        }
    }

    /// A copy of a message we had already seen, from `from`.
    pub fn duplicate_message(&mut self, from: &PeerId, id: &MessageId, topic: &str, now: Instant) {
        let Some(record) = self.deliveries.get_mut(id) else {
            return;
        };
        match record.status {
            Delivery::Unknown => {
                // Still being validated: judged with the first copy.
                if record.peers.len() < 64 {
                    record.peers.insert(*from);
                }
            }
            Delivery::Valid => {
                let in_window = record.validated.is_some_and(|v| {
                    self.topic_params(topic).is_some_and(|p| {
                        now.saturating_duration_since(v) <= p.mesh_message_deliveries_window
                    })
                });
                if in_window {
                    if let Some(p) = self.topic_params(topic).cloned() {
                        self.mark_duplicate_in_mesh(from, topic, &p);
                    }
                }
            }
            Delivery::Invalid => self.mark_invalid(from, topic),
            Delivery::Ignored => {}
        }
    }

    fn topic_of(&mut self, peer: &PeerId, topic: &str) -> Option<&mut TopicStats> {
        let stats = self.peers.get_mut(peer)?;
        if !stats.connected {
            return None;
        }
        Some(stats.topics.entry(topic.to_owned()).or_default())
    }

    fn mark_invalid(&mut self, peer: &PeerId, topic: &str) {
        if self.topic_params(topic).is_none() {
            return;
        }
        if let Some(t) = self.topic_of(peer, topic) {
            t.invalid_message_deliveries += 1.0;
        }
    }

    fn mark_duplicate_in_mesh(&mut self, peer: &PeerId, topic: &str, p: &TopicScoreParams) {
        if let Some(t) = self.topic_of(peer, topic) {
            if t.in_mesh {
                t.mesh_message_deliveries =
                    (t.mesh_message_deliveries + 1.0).min(p.mesh_message_deliveries_cap);
            }
        }
    }

    /// Decays the counters once per decay interval elapsed, updates time in the mesh and
    /// P3's activation, and forgets expired peers and delivery records.
    pub fn refresh(&mut self, now: Instant) {
        let interval = self
            .params
            .decay_interval
            .max(std::time::Duration::from_millis(1));
        let mut steps = 0u32;
        while self.last_decay + interval <= now && steps < 1_000 {
            self.last_decay += interval;
            steps += 1;
        }
        if steps == 1_000 {
            self.last_decay = now;
        }
        let params = &self.params;
        let zero = params.decay_to_zero;
        let decay = |v: &mut f64, d: f64| {
            for _ in 0..steps {
                *v *= d;
            }
            if *v < zero {
                *v = 0.0;
            }
        };
        let mut expired = Vec::new();
        for (peer, stats) in self.peers.iter_mut() {
            if stats.expire.is_some_and(|e| e <= now) {
                expired.push(*peer);
                continue;
            }
            for (topic, t) in stats.topics.iter_mut() {
                let Some(p) = params.topics.get(topic).or(params.default_topic.as_ref()) else {
                    continue;
                };
                decay(
                    &mut t.first_message_deliveries,
                    p.first_message_deliveries_decay,
                );
                decay(
                    &mut t.mesh_message_deliveries,
                    p.mesh_message_deliveries_decay,
                );
                decay(&mut t.mesh_failure_penalty, p.mesh_failure_penalty_decay);
                decay(
                    &mut t.invalid_message_deliveries,
                    p.invalid_message_deliveries_decay,
                );
                if t.in_mesh {
                    if let Some(g) = t.graft_time {
                        let in_mesh = now.saturating_duration_since(g);
                        t.mesh_time_secs = in_mesh.as_secs_f64();
                        if in_mesh > p.mesh_message_deliveries_activation {
                            t.mesh_message_deliveries_active = true;
                        }
                    }
                }
            }
            stats.topics.retain(|_, t| {
                t.in_mesh
                    || t.first_message_deliveries > 0.0
                    || t.mesh_failure_penalty > 0.0
                    || t.invalid_message_deliveries > 0.0
            });
            decay(&mut stats.behaviour_penalty, params.behaviour_penalty_decay);
        }
        for peer in expired {
            if let Some(stats) = self.peers.remove(&peer) {
                if let Some(ip) = stats.ip {
                    if let Some(set) = self.ips.get_mut(&ip) {
                        set.remove(&peer);
                        if set.is_empty() {
                            self.ips.remove(&ip);
                        }
                    }
                }
            }
        }
        self.deliveries.retain(|_, r| r.expire > now);
    }

    /// Peers known (connected, or retained after leaving).
    pub fn known_peers(&self) -> usize {
        self.peers.len()
    }

    /// When the first copy of a message arrived, if it is remembered.
    pub fn first_seen(&self, id: &MessageId) -> Option<Instant> {
        self.deliveries.get(id).map(|r| r.first_seen)
    }
}

fn apply_mesh_failure(t: &mut TopicStats, p: &TopicScoreParams) {
    if t.mesh_message_deliveries_active
        && t.mesh_message_deliveries < p.mesh_message_deliveries_threshold
    {
        let deficit = p.mesh_message_deliveries_threshold - t.mesh_message_deliveries;
        t.mesh_failure_penalty += deficit * deficit;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn peer(n: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(n)
    }

    fn id(n: u8) -> MessageId {
        MessageId(Bytes::from(vec![n]))
    }

    #[test]
    fn behaviour_penalties_graylist_and_decay() {
        let now = Instant::now();
        let mut s = PeerScore::new(
            PeerScoreParams::default(),
            std::time::Duration::from_secs(120),
            now,
        );
        let p = peer(1);
        s.add_peer(p, None);
        assert_eq!(s.score(&p), 0.0);
        s.add_penalty(&p, 3.0);
        assert_eq!(s.score(&p), -90.0);
        s.refresh(now + std::time::Duration::from_secs(10));
        let later = s.score(&p);
        assert!(later > -90.0 && later < 0.0, "{later}");
        s.refresh(now + std::time::Duration::from_secs(200));
        assert_eq!(s.score(&p), 0.0);
    }

    #[test]
    fn invalid_messages_cost_and_first_deliveries_earn() {
        let now = Instant::now();
        let mut s = PeerScore::new(
            PeerScoreParams::default(),
            std::time::Duration::from_secs(120),
            now,
        );
        let (good, bad, dup) = (peer(1), peer(2), peer(3));
        for p in [good, bad, dup] {
            s.add_peer(p, None);
        }
        s.validate_message(&id(1), now);
        s.duplicate_message(&dup, &id(1), "t", now);
        s.deliver_message(&good, &id(1), "t", now);
        assert_eq!(s.score(&good), 1.0);
        s.reject_message(&bad, Some(&id(2)), "t", RejectReason::ValidationFailed, now);
        s.reject_message(&bad, None, "t", RejectReason::InvalidSignature, now);
        assert_eq!(s.score(&bad), -40.0);
        // Ignored messages cost nothing.
        s.reject_message(&dup, Some(&id(3)), "t", RejectReason::Ignored, now);
        assert_eq!(s.score(&dup), 0.0);
    }

    #[test]
    fn a_retained_score_comes_back_and_expires() {
        let now = Instant::now();
        let params = PeerScoreParams {
            retain_score: std::time::Duration::from_secs(30),
            ..PeerScoreParams::default()
        };
        let mut s = PeerScore::new(params, std::time::Duration::from_secs(120), now);
        let p = peer(1);
        s.add_peer(p, None);
        s.add_penalty(&p, 2.0);
        s.remove_peer(&p, now);
        s.add_peer(p, None);
        assert!(s.score(&p) < 0.0);
        s.remove_peer(&p, now);
        s.refresh(now + std::time::Duration::from_secs(31));
        assert_eq!(s.known_peers(), 0);
    }

    #[test]
    fn colocated_peers_pay_past_the_threshold() {
        let now = Instant::now();
        let mut s = PeerScore::new(
            PeerScoreParams::default(),
            std::time::Duration::from_secs(120),
            now,
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for n in 0..12 {
            s.add_peer(peer(n), Some(ip));
        }
        assert_eq!(s.score(&peer(0)), -20.0);
    }
}
