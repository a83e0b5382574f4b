//! The iterative lookup as a state machine with no I/O: which peers to ask next, what
//! their answers add, and when the lookup is done. The async layer sends the requests.
//!
//! The lookup keeps the peers it knows of ordered by distance to the target and asks the
//! closest ones it has not asked, `alpha` at a time. It ends when the `k` closest peers
//! it knows of (leaving out those that failed) have all answered, or when no peer is
//! left to ask. What it holds is bounded: at most `max_candidates` peers not yet asked
//! (the farthest are dropped first) however many peers the answers list.

use std::collections::{BTreeMap, HashSet};

use strata_core::PeerId;

use crate::key::{Distance, KadKey};
use crate::proto::PeerInfo;

/// Where a peer of the lookup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotAsked,
    Waiting,
    Answered,
    Failed,
}

#[derive(Debug)]
struct Candidate {
    info: PeerInfo,
    state: State,
}

/// One lookup.
#[derive(Debug)]
pub struct Lookup {
    target: KadKey,
    local: PeerId,
    k: usize,
    alpha: usize,
    max_candidates: usize,
    peers: BTreeMap<Distance, Candidate>,
    /// Peers ever seen (so a peer dropped or failed is not taken again).
    seen: HashSet<PeerId>,
    in_flight: usize,
    asked: usize,
}

impl Lookup {
    /// A lookup for `target` by `local`, starting from `seeds` (the routing table's
    /// closest).
    pub fn new(
        target: KadKey,
        local: PeerId,
        k: usize,
        alpha: usize,
        seeds: Vec<PeerInfo>,
    ) -> Self {
        let k = k.max(1);
        let mut lookup = Lookup {
            target,
            local,
            k,
            alpha: alpha.max(1),
            max_candidates: k * 8,
            peers: BTreeMap::new(),
            seen: HashSet::new(),
            in_flight: 0,
            asked: 0,
        };
        lookup.add(seeds);
        lookup
    }

    /// The target.
    pub fn target(&self) -> &KadKey {
        &self.target
    }

    fn add(&mut self, peers: Vec<PeerInfo>) {
        for info in peers {
            if info.id == self.local || !self.seen.insert(info.id) {
                // Known already: a later answer may add addresses.
                if let Some(c) = self
                    .peers
                    .get_mut(&KadKey::from_peer(&info.id).distance(&self.target))
                {
                    if c.state == State::NotAsked && c.info.addrs.is_empty() {
                        c.info.addrs = info.addrs;
                    }
                }
                continue;
            }
            let d = KadKey::from_peer(&info.id).distance(&self.target);
            self.peers.insert(
                d,
                Candidate {
                    info,
                    state: State::NotAsked,
                },
            );
        }
        // Bound what is held: drop the farthest peers not yet asked.
        let mut not_asked = self
            .peers
            .values()
            .filter(|c| c.state == State::NotAsked)
            .count();
        while not_asked > self.max_candidates {
            let Some(far) = self
                .peers
                .iter()
                .rev()
                .find(|(_, c)| c.state == State::NotAsked)
                .map(|(d, _)| *d)
            else {
                break;
            };
            self.peers.remove(&far);
            not_asked -= 1;
        }
    }

    /// The peers to ask now (each marked as waiting): the closest not yet asked among the
    /// `k` closest that have not failed, while fewer than `alpha` requests are out.
    pub fn next_to_ask(&mut self) -> Vec<PeerInfo> {
        let mut out = Vec::new();
        let mut considered = 0;
        for c in self.peers.values_mut() {
            if self.in_flight >= self.alpha || considered >= self.k {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            considered += 1;
            if c.state == State::NotAsked {
                c.state = State::Waiting;
                self.in_flight += 1;
                self.asked += 1;
                out.push(c.info.clone());
            }
        }
        out
    }

    fn set(&mut self, peer: &PeerId, state: State) -> bool {
        let d = KadKey::from_peer(peer).distance(&self.target);
        match self.peers.get_mut(&d) {
            Some(c) if c.state == State::Waiting => {
                c.state = state;
                self.in_flight -= 1;
                true
            }
            _ => false,
        }
    }

    /// `peer` answered, listing `closer` peers.
    pub fn answered(&mut self, peer: &PeerId, closer: Vec<PeerInfo>) {
        if self.set(peer, State::Answered) {
            self.add(closer);
        }
    }

    /// `peer` failed to answer (an error or a timeout).
    pub fn failed(&mut self, peer: &PeerId) {
        self.set(peer, State::Failed);
    }

    /// Requests out now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests sent so far.
    pub fn asked(&self) -> usize {
        self.asked
    }

    /// Done: the `k` closest peers not failed have all answered, or nobody is left to ask
    /// and nothing is out.
    pub fn is_done(&self) -> bool {
        let mut closest = self
            .peers
            .values()
            .filter(|c| c.state != State::Failed)
            .take(self.k)
            .peekable();
        if closest.peek().is_none() {
            return self.in_flight == 0;
        }
        let all_answered = closest.all(|c| c.state == State::Answered);
        all_answered
            || (self.in_flight == 0 && !self.peers.values().any(|c| c.state == State::NotAsked))
    }

    /// The `n` closest peers that answered, closest first.
    pub fn closest_answered(&self, n: usize) -> Vec<PeerInfo> {
        self.peers
            .values()
            .filter(|c| c.state == State::Answered)
            .take(n)
            .map(|c| c.info.clone())
            .collect()
    }

    /// Whether `peer` answered.
    pub fn has_answered(&self, peer: &PeerId) -> bool {
        let d = KadKey::from_peer(peer).distance(&self.target);
        self.peers
            .get(&d)
            .is_some_and(|c| c.state == State::Answered)
    }

    /// Peers held (for the bound's tests).
    pub fn held(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn peer(seed: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(seed)
    }

    fn info(p: PeerId) -> PeerInfo {
        PeerInfo {
            id: p,
            addrs: vec![],
        }
    }

    /// Runs a lookup over a simulated network where every peer knows everyone: each
    /// answer lists the `k` closest to the target that the answering peer knows.
    #[test]
    fn a_lookup_finds_the_true_closest_and_ends() {
        let all: Vec<PeerId> = (1..300u64).map(peer).collect();
        let target = KadKey::from_bytes(b"target");
        let mut sorted = all.clone();
        sorted.sort_by_key(|p| KadKey::from_peer(p).distance(&target));
        // Each peer knows a random-ish quarter of the network, and its neighbours.
        let knows: HashMap<PeerId, Vec<PeerId>> = all
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let known = all
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| (i * 7 + j) % 4 == 0 || i.abs_diff(*j) < 3)
                    .map(|(_, q)| *q)
                    .collect();
                (*p, known)
            })
            .collect();
        let me = peer(0);
        let seeds = all[..3].iter().map(|p| info(*p)).collect();
        let mut l = Lookup::new(target, me, 20, 3, seeds);
        let mut rounds = 0;
        while !l.is_done() {
            let ask = l.next_to_ask();
            assert!(l.in_flight() <= 3);
            assert!(!ask.is_empty(), "stuck with nothing to ask");
            for p in ask {
                let mut k = knows[&p.id].clone();
                k.sort_by_key(|q| KadKey::from_peer(q).distance(&target));
                l.answered(&p.id, k.into_iter().take(20).map(info).collect());
            }
            rounds += 1;
            assert!(rounds < 500);
        }
        let found: Vec<PeerId> = l.closest_answered(20).iter().map(|p| p.id).collect();
        assert_eq!(found, sorted[..20].to_vec());
    }

    #[test]
    fn failures_are_routed_around_and_junk_is_bounded() {
        let target = KadKey::from_bytes(b"t");
        let me = peer(0);
        let mut l = Lookup::new(target, me, 5, 3, (1..4).map(|s| info(peer(s))).collect());
        let first = l.next_to_ask();
        assert_eq!(first.len(), 3);
        // One fails, one answers with 1,000 peers, us among them.
        l.failed(&first[0].id);
        let mut junk: Vec<PeerInfo> = (100..1100).map(|s| info(peer(s))).collect();
        junk.push(info(me));
        l.answered(&first[1].id, junk);
        assert!(l.held() <= 5 * 8 + 3);
        // We are never asked.
        let mut asked = Vec::new();
        while !l.is_done() {
            let ask = l.next_to_ask();
            if ask.is_empty() {
                // The third is still out: it never answers.
                l.failed(&first[2].id);
                continue;
            }
            for p in ask {
                assert_ne!(p.id, me);
                asked.push(p.id);
                l.answered(&p.id, vec![]);
            }
        }
        assert_eq!(l.closest_answered(5).len(), 5);
        // An answer from a peer not asked changes nothing.
        let before = l.held();
        l.answered(&peer(5000), vec![info(peer(5001))]);
        assert_eq!(l.held(), before);
    }

    #[test]
    fn an_empty_lookup_is_done_at_once() {
        let l = Lookup::new(KadKey::from_bytes(b"x"), peer(0), 20, 3, vec![]);
        assert!(l.is_done());
    }
}
