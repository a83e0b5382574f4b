//! The message cache (recent messages, for IWANT and for gossip) and the seen cache
//! (message IDs remembered for a time, so a message is handled once). Both are bounded:
//! the message cache by its windows and a byte budget, the seen cache by its TTL and a
//! count.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use strata_core::PeerId;
use tokio::time::{Duration, Instant};

use crate::message::MessageId;
use strata_core::rcmgr::priority;
use strata_core::{Reservation, ScopeMemory};

/// Bytes booked per cached message besides its frame (its ID twice, the topic, the
/// map entry).
const ENTRY_COST: usize = 256;

/// A cached message: its encoded RPC frame (one message, ready to write), its topic,
/// and how often each peer asked for it.
#[derive(Debug, Clone)]
pub struct CachedMessage {
    /// The message as a framed RPC.
    pub frame: Bytes,
    /// Its topic.
    pub topic: String,
    /// IWANT transmissions per peer.
    pub iwant: HashMap<PeerId, u32>,
}

/// Recent messages in `history_length` windows; gossip announces the newest
/// `history_gossip` of them.
pub struct MessageCache {
    messages: HashMap<MessageId, CachedMessage>,
    windows: VecDeque<Vec<MessageId>>,
    gossip: usize,
    bytes: usize,
    max_bytes: usize,
    held: Reservation,
}

impl MessageCache {
    /// A cache of `history` windows gossiping over `gossip`, holding at most `max_bytes`
    /// of frames, each reserved from `memory` (past either, new messages are forwarded
    /// but not kept for IWANT).
    pub fn new(history: usize, gossip: usize, max_bytes: usize, memory: &ScopeMemory) -> Self {
        let history = history.max(1);
        let mut windows = VecDeque::with_capacity(history);
        windows.resize_with(history, Vec::new);
        MessageCache {
            messages: HashMap::new(),
            windows,
            gossip: gossip.min(history),
            bytes: 0,
            max_bytes,
            held: memory.empty(),
        }
    }

    /// Keeps a message; `false` if it was there already or the cache is full.
    pub fn put(&mut self, id: MessageId, topic: &str, frame: Bytes) -> bool {
        if self.messages.contains_key(&id)
            || self.bytes + frame.len() > self.max_bytes
            || self
                .held
                .grow(frame.len() + ENTRY_COST, priority::HIGH)
                .is_err()
        {
            return false;
        }
        self.bytes += frame.len();
        self.messages.insert(
            id.clone(),
            CachedMessage {
                frame,
                topic: topic.to_owned(),
                iwant: HashMap::new(),
            },
        );
        if let Some(w) = self.windows.front_mut() {
            w.push(id);
        }
        true
    }

    /// The message, if cached.
    pub fn get(&self, id: &MessageId) -> Option<&CachedMessage> {
        self.messages.get(id)
    }

    /// The message for an IWANT of `peer`, counting the transmission: `None` when it is
    /// not cached or `peer` had it `limit` times already.
    pub fn get_for_peer(&mut self, id: &MessageId, peer: &PeerId, limit: u32) -> Option<Bytes> {
        let m = self.messages.get_mut(id)?;
        let count = m.iwant.entry(*peer).or_insert(0);
        *count += 1;
        (*count <= limit).then(|| m.frame.clone())
    }

    /// IDs of the gossip windows' messages in `topic`.
    pub fn gossip_ids(&self, topic: &str) -> Vec<MessageId> {
        self.windows
            .iter()
            .take(self.gossip)
            .flatten()
            .filter(|id| self.messages.get(*id).is_some_and(|m| m.topic == topic))
            .cloned()
            .collect()
    }

    /// Starts a new window, dropping the oldest.
    pub fn shift(&mut self) {
        if let Some(old) = self.windows.pop_back() {
            for id in old {
                if let Some(m) = self.messages.remove(&id) {
                    self.bytes -= m.frame.len();
                    self.held.shrink(m.frame.len() + ENTRY_COST);
                }
            }
        }
        self.windows.push_front(Vec::new());
    }

    /// Messages cached.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Bytes of frames cached.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Message IDs seen, each remembered for `ttl`, at most `max` of them (the oldest
/// forgotten first past it).
pub struct SeenCache {
    ttl: Duration,
    max: usize,
    ids: HashMap<MessageId, Instant>,
    order: VecDeque<(Instant, MessageId)>,
}

impl SeenCache {
    /// A cache of `ttl` holding at most `max` IDs.
    pub fn new(ttl: Duration, max: usize) -> Self {
        SeenCache {
            ttl,
            max: max.max(1),
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `id`; `false` if it was seen already.
    pub fn insert(&mut self, id: MessageId, now: Instant) -> bool {
        if self.ids.contains_key(&id) {
            return false;
        }
        while self.ids.len() >= self.max {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.ids.remove(&old);
                }
                None => break,
            }
        }
        self.ids.insert(id.clone(), now);
        self.order.push_back((now, id));
        true
    }

    /// Whether `id` was seen.
    pub fn contains(&self, id: &MessageId) -> bool {
        self.ids.contains_key(id)
    }

    /// Forgets IDs older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }

    /// IDs remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> MessageId {
        MessageId(Bytes::from(n.to_be_bytes().to_vec()))
    }

    #[test]
    fn messages_leave_after_their_windows_and_gossip_covers_the_newest() {
        let mut c = MessageCache::new(3, 2, 1 << 20, &ScopeMemory::unlimited());
        assert!(c.put(id(1), "a", Bytes::from_static(b"one")));
        assert!(!c.put(id(1), "a", Bytes::from_static(b"one")));
        c.shift();
        c.put(id(2), "a", Bytes::from_static(b"two"));
        c.put(id(3), "b", Bytes::from_static(b"three"));
        assert_eq!(c.gossip_ids("a").len(), 2);
        c.shift();
        assert_eq!(c.gossip_ids("a"), vec![id(2)]);
        assert!(c.get(&id(1)).is_some());
        c.shift();
        assert!(c.get(&id(1)).is_none());
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 8);
    }

    #[test]
    fn iwant_transmissions_are_limited_per_peer() {
        let mut c = MessageCache::new(3, 2, 1 << 20, &ScopeMemory::unlimited());
        c.put(id(1), "a", Bytes::from_static(b"m"));
        let p = strata_core::identity::peer_id_from_seed(1);
        for _ in 0..3 {
            assert!(c.get_for_peer(&id(1), &p, 3).is_some());
        }
        assert!(c.get_for_peer(&id(1), &p, 3).is_none());
        let q = strata_core::identity::peer_id_from_seed(2);
        assert!(c.get_for_peer(&id(1), &q, 3).is_some());
    }

    #[test]
    fn the_byte_budget_bounds_the_cache() {
        let mut c = MessageCache::new(3, 2, 10, &ScopeMemory::unlimited());
        assert!(c.put(id(1), "a", Bytes::from(vec![0; 6])));
        assert!(!c.put(id(2), "a", Bytes::from(vec![0; 6])));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn seen_ids_expire_and_are_capped() {
        let now = Instant::now();
        let mut s = SeenCache::new(Duration::from_secs(10), 3);
        assert!(s.insert(id(1), now));
        assert!(!s.insert(id(1), now));
        s.insert(id(2), now + Duration::from_secs(5));
        s.insert(id(3), now + Duration::from_secs(6));
        s.insert(id(4), now + Duration::from_secs(7));
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&id(1)));
        s.expire(now + Duration::from_secs(15));
        assert_eq!(s.len(), 2);
        assert!(s.contains(&id(3)));
    }
}
