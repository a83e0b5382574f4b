//! Providing many keys at once by sweeping the keyspace (go-libp2p-kad-dht's "reprovide
//! sweep"): instead of one lookup and `k` sends per key, the keys are sorted along the
//! keyspace and handled region by region.
//!
//! A region is a prefix of the keyspace that holds at least `k` DHT servers, all of them
//! known. For any key inside it, its `k` closest peers are inside it too (a peer sharing
//! the prefix is closer to the key than any peer that does not), so they are worked out
//! locally, with no lookup per key. A region is found from its first key: one lookup of
//! that key gives its `k` closest peers; the `k`-th of them shares `b` leading bits with
//! the key, so the prefix of length `b` holds at least `k` peers, and every peer sharing
//! `b + 1` bits is among those found. The other half of the region (the keys sharing
//! exactly `b` bits) is explored with lookups of keys inside it, split further where one
//! lookup does not cover it. With `N` peers a region holds about `k` to `2k` of them and
//! costs about two lookups, for every key in it.
//!
//! Then each peer gets all the announcements due to it on one stream, instead of one
//! stream (and, on a busy node, one connection) per key.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use strata_core::PeerId;

use crate::dht::{by_peer, lock, Flow, Inner};
use crate::error::KadError;
use crate::key::{try_random_key_with_cpl, KadKey};
use crate::proto::{Message, MessageType, PeerInfo};
use crate::rpc::KadStats;

/// Lookups one region may take before its peers are taken as they are.
const MAX_LOOKUPS_PER_REGION: usize = 16;
/// Regions deeper than this are not split further (finding a key inside one takes
/// about 2^(depth+1) hashes).
const MAX_REGION_DEPTH: usize = 20;
/// Peers sent to at once.
const SEND_CONCURRENCY: usize = 16;

/// What [`crate::Kad::provide_many`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvideManyReport {
    /// Distinct keys announced.
    pub keys: usize,
    /// Keyspace regions swept.
    pub regions: usize,
    /// Lookups made.
    pub lookups: usize,
    /// Peers sent announcements.
    pub peers: usize,
    /// Peers that could not be sent theirs.
    pub failed_peers: usize,
    /// Regions whose peers could not all be found within the lookup budget (their keys
    /// went to the closest peers found).
    pub incomplete_regions: usize,
    /// What was sent, in all.
    pub stats: KadStats,
}

/// A region: every known peer sharing `depth` leading bits with `anchor`.
struct Region {
    anchor: KadKey,
    depth: usize,
    peers: Vec<PeerInfo>,
    lookups: usize,
    complete: bool,
}

impl Inner {
    pub(crate) async fn provide_many(
        self: &Arc<Self>,
        keys: Vec<Vec<u8>>,
    ) -> Result<ProvideManyReport, KadError> {
        let before = self.client.stats();
        let mut keyed: Vec<(KadKey, Vec<u8>)> = keys
            .into_iter()
            .map(|k| (KadKey::from_bytes(&k), k))
            .collect();
        keyed.sort();
        keyed.dedup();
        for (_, k) in &keyed {
            self.note_provided(k);
        }
        let mut report = ProvideManyReport {
            keys: keyed.len(),
            ..ProvideManyReport::default()
        };
        let k = self.config.k;
        let mut assignments: Vec<(PeerInfo, Vec<u8>)> = Vec::new();
        let mut i = 0;
        while i < keyed.len() {
            let region = self.explore(&keyed[i].1).await?;
            report.regions += 1;
            report.lookups += region.lookups;
            if !region.complete {
                report.incomplete_regions += 1;
            }
            let mut j = i;
            while j < keyed.len() && keyed[j].0.common_prefix_len(&region.anchor) >= region.depth {
                let (at, key) = &keyed[j];
                let mut closest = region.peers.clone();
                closest.sort_by_key(|p| KadKey::from_peer(&p.id).distance(at));
                for p in closest.into_iter().take(k) {
                    assignments.push((p, key.clone()));
                }
                j += 1;
            }
            // The anchor is always inside its own region.
            i = j.max(i + 1);
        }
        let mut msg_of = |key: Vec<u8>| {
            let mut msg = Message::request(MessageType::AddProvider, key);
            msg.provider_peers.push(self.self_provider());
            msg
        };
        let batches: Vec<(PeerInfo, Vec<Message>)> = by_peer(assignments)
            .into_iter()
            .map(|(p, keys)| (p, keys.into_iter().map(&mut msg_of).collect()))
            .collect();
        report.peers = batches.len();
        let failed = futures::stream::iter(batches)
            .map(|(peer, msgs)| async move { self.client.send(&peer, &msgs).await.is_err() })
            .buffer_unordered(SEND_CONCURRENCY)
            .filter(|failed| futures::future::ready(*failed))
            .count()
            .await;
        report.failed_peers = failed;
        report.stats = self.client.stats().since(&before);
        if report.peers > 0 && failed == report.peers {
            return Err(KadError::QuorumFailed { needed: 1, got: 0 });
        }
        Ok(report)
    }

    /// The peers that answered a lookup of `key`.
    async fn answered(self: &Arc<Self>, key: &[u8]) -> Result<Vec<PeerInfo>, KadError> {
        Ok(self
            .lookup(key, MessageType::FindNode, |_, _| Flow::Continue)
            .await?
            .answered)
    }

    /// The region around `anchor_key` (see the module docs).
    async fn explore(self: &Arc<Self>, anchor_key: &[u8]) -> Result<Region, KadError> {
        let k = self.config.k;
        let anchor = KadKey::from_bytes(anchor_key);
        let mut known: HashMap<PeerId, PeerInfo> = HashMap::new();
        let add = |known: &mut HashMap<PeerId, PeerInfo>, found: Vec<PeerInfo>| {
            for p in found {
                known.entry(p.id).or_insert(p);
            }
        };
        add(&mut known, self.answered(anchor_key).await?);
        // What the routing table knows counts too (live peers it has seen).
        add(&mut known, lock(&self.table).closest(&anchor, k * 2));
        let kth = |known: &HashMap<PeerId, PeerInfo>, at: &KadKey| -> Option<usize> {
            let mut d: Vec<_> = known
                .values()
                .map(|p| KadKey::from_peer(&p.id).distance(at))
                .collect();
            if d.len() < k {
                return None;
            }
            d.sort();
            Some(d[k - 1].leading_zeros())
        };
        let mut region = Region {
            anchor,
            depth: 0,
            peers: Vec::new(),
            lookups: 1,
            complete: true,
        };
        let Some(depth) = kth(&known, &anchor) else {
            // Fewer than k peers in all: one region, the whole keyspace.
            region.peers = known.into_values().collect();
            return Ok(region);
        };
        region.depth = depth;
        // Keys sharing depth + 1 bits with the anchor are covered; explore the rest: the
        // keys sharing exactly `level` bits with `around`.
        let mut todo: Vec<(KadKey, usize)> = vec![(anchor, depth)];
        while let Some((around, level)) = todo.pop() {
            if region.lookups >= MAX_LOOKUPS_PER_REGION || level > MAX_REGION_DEPTH {
                region.complete = false;
                break;
            }
            let Some(target) = try_random_key_with_cpl(&around, level, 1 << (MAX_REGION_DEPTH + 2))
            else {
                region.complete = false;
                break;
            };
            let at = KadKey::from_bytes(&target);
            add(&mut known, self.answered(&target).await?);
            region.lookups += 1;
            if let Some(bt) = kth(&known, &at) {
                // Covered: the keys sharing bt + 1 bits with `at`; the sub-halves between
                // level + 1 and bt are still open.
                for l in (level + 1)..=bt {
                    todo.push((at, l));
                }
            }
        }
        region.peers = known
            .into_values()
            .filter(|p| KadKey::from_peer(&p.id).common_prefix_len(&anchor) >= depth)
            .collect();
        Ok(region)
    }
}
