//! The routing table: k-buckets by common prefix length with our own position, as a
//! state machine with no I/O (the async layer pings and dials; tests drive it directly).
//!
//! * A bucket holds at most `k` peers, least recently seen first.
//! * A peer seen again moves to the end. A new peer for a full bucket waits (one per
//!   bucket) while the least recently seen one is checked ([`Update::CheckOldest`]): if it
//!   answers it stays and the newcomer is dropped, if not the newcomer takes its place.
//! * Diversity: peers are grouped by their IP addresses' subnets (IPv4 /24, IPv6 /48);
//!   one group may hold at most `per_bucket` places in a bucket and `per_table` in the
//!   table, so one network cannot fill a bucket or poison the table (go-libp2p's
//!   peer-diversity filter is the model). Loopback and private addresses are exempt by
//!   default (a LAN or a test has nothing else).
//! * Each bucket remembers when a lookup last went through it, for refreshes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use strata_core::{Multiaddr, PeerId, Protocol};

use crate::key::{Distance, KadKey};
use crate::proto::{PeerInfo, MAX_ADDRS_PER_PEER};

/// Limits per group of addresses (IPv4 /24, IPv6 /48).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiversityLimits {
    /// Places one group may hold in one bucket.
    pub per_bucket: usize,
    /// Places one group may hold in the whole table.
    pub per_table: usize,
    /// Whether loopback and private (RFC 1918, ULA, link-local) addresses are exempt.
    pub exempt_local: bool,
}

impl Default for DiversityLimits {
    fn default() -> Self {
        DiversityLimits {
            per_bucket: 2,
            per_table: 10,
            exempt_local: true,
        }
    }
}

/// One peer in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The peer.
    pub peer: PeerId,
    /// Its position.
    pub key: KadKey,
    /// Its addresses (at most [`MAX_ADDRS_PER_PEER`]).
    pub addrs: Vec<Multiaddr>,
    /// When it was last seen alive (an answer, a connection, identify).
    pub last_seen: Instant,
    /// The address groups it counts in.
    groups: Vec<Group>,
}

impl Entry {
    /// The peer and its addresses.
    pub fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.peer,
            addrs: self.addrs.clone(),
        }
    }
}

/// A subnet group (IPv4 /24 or IPv6 /48), its network address as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    V4([u8; 3]),
    V6([u8; 6]),
}

/// The groups of a set of addresses (local ones left out when exempt).
fn groups_of(addrs: &[Multiaddr], limits: &DiversityLimits) -> Vec<Group> {
    let mut groups = Vec::new();
    for a in addrs {
        let ip = match a.iter().next() {
            Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
            Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
            _ => continue,
        };
        if limits.exempt_local && is_local(&ip) {
            continue;
        }
        let g = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Group::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Group::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        };
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// Whether a multiaddr's IP (its first component) is loopback, private, link-local or
/// unique-local; addresses without an IP (DNS names) are not local.
pub fn is_local_addr(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => is_local(&IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_local(&IpAddr::V6(ip)),
        _ => false,
    }
}

/// Loopback, private, link-local and unique-local addresses.
pub fn is_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Least recently seen first.
    entries: Vec<Entry>,
    /// A newcomer waiting for the check of the least recently seen entry.
    pending: Option<Entry>,
    /// When a lookup last went through this bucket.
    last_lookup: Option<Instant>,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The peer is new in the table.
    Added,
    /// The peer was there: it is now the most recently seen.
    Refreshed,
    /// The bucket is full: check whether this peer (its least recently seen) is alive,
    /// then report with [`RoutingTable::oldest_checked`]. The newcomer waits meanwhile.
    CheckOldest(PeerInfo),
    /// Not taken.
    Refused(Refusal),
}

/// Why a peer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It is us.
    Local,
    /// Its bucket is full and another newcomer is already waiting.
    BucketFull,
    /// Its address group already holds its share of the bucket or the table.
    Diversity,
    /// No address to reach it, and no connection to it.
    NoAddresses,
}

/// The routing table.
#[derive(Debug)]
pub struct RoutingTable {
    local: PeerId,
    local_key: KadKey,
    k: usize,
    diversity: DiversityLimits,
    buckets: Vec<Bucket>,
    created: Instant,
}

impl RoutingTable {
    /// An empty table around `local`, `k` peers a bucket.
    pub fn new(local: PeerId, k: usize, diversity: DiversityLimits) -> Self {
        RoutingTable {
            local,
            local_key: KadKey::from_peer(&local),
            k: k.max(1),
            diversity,
            buckets: (0..256).map(|_| Bucket::default()).collect(),
            created: Instant::now(),
        }
    }

    /// Our own position.
    pub fn local_key(&self) -> &KadKey {
        &self.local_key
    }

    fn bucket_of(&self, key: &KadKey) -> usize {
        self.local_key.common_prefix_len(key).min(255)
    }

    /// How many places `group` holds in bucket `b` and in the table, leaving `except` out.
    fn group_counts(&self, b: usize, group: &Group, except: Option<&PeerId>) -> (usize, usize) {
        let counts = |e: &&Entry| e.groups.contains(group) && Some(&e.peer) != except;
        let in_bucket = self.buckets[b].entries.iter().filter(counts).count();
        let in_table = self
            .buckets
            .iter()
            .flat_map(|bk| bk.entries.iter())
            .filter(counts)
            .count();
        (in_bucket, in_table)
    }

    fn diversity_allows(&self, b: usize, groups: &[Group], except: Option<&PeerId>) -> bool {
        groups.iter().all(|g| {
            let (bucket, table) = self.group_counts(b, g, except);
            bucket < self.diversity.per_bucket && table < self.diversity.per_table
        })
    }

    /// A peer speaking the DHT in server mode was seen alive at `addrs` (merged into
    /// what is known). Its address groups come from `addrs`; see
    /// [`RoutingTable::update_seen`] to group it by the address it is connected from.
    pub fn update(&mut self, peer: PeerId, addrs: &[Multiaddr], now: Instant) -> Update {
        self.update_seen(peer, addrs, None, now)
    }

    /// As [`RoutingTable::update`], the peer's diversity group taken from `seen_at`, the
    /// remote address of a live connection to it, when there is one (as go-libp2p does:
    /// the addresses a peer announces are its own say, the one it connects from is not).
    /// A peer with no address at all, and no connection, is not taken.
    pub fn update_seen(
        &mut self,
        peer: PeerId,
        addrs: &[Multiaddr],
        seen_at: Option<&Multiaddr>,
        now: Instant,
    ) -> Update {
        if peer == self.local {
            return Update::Refused(Refusal::Local);
        }
        let key = KadKey::from_peer(&peer);
        let b = self.bucket_of(&key);
        let limits = self.diversity.clone();
        let seen_groups = seen_at.map(|a| groups_of(std::slice::from_ref(a), &limits));
        if let Some(i) = self.buckets[b].entries.iter().position(|e| e.peer == peer) {
            let mut e = self.buckets[b].entries.remove(i);
            let mut merged = e.addrs.clone();
            merge_addrs(&mut merged, addrs);
            let groups = seen_groups.unwrap_or_else(|| {
                let mut g = e.groups.clone();
                for n in groups_of(&merged, &limits) {
                    if !g.contains(&n) {
                        g.push(n);
                    }
                }
                g
            });
            // New addresses (or a new group) only within the diversity limits.
            if groups == e.groups || self.diversity_allows(b, &groups, Some(&peer)) {
                e.groups = groups;
                e.addrs = merged;
            }
            e.last_seen = now;
            self.buckets[b].entries.push(e);
            return Update::Refreshed;
        }
        let mut fresh_addrs = Vec::new();
        merge_addrs(&mut fresh_addrs, addrs);
        if fresh_addrs.is_empty() && seen_at.is_none() {
            return Update::Refused(Refusal::NoAddresses);
        }
        let groups = seen_groups.unwrap_or_else(|| groups_of(&fresh_addrs, &limits));
        if !self.diversity_allows(b, &groups, None) {
            return Update::Refused(Refusal::Diversity);
        }
        let entry = Entry {
            peer,
            key,
            addrs: fresh_addrs,
            last_seen: now,
            groups,
        };
        let bucket = &mut self.buckets[b];
        if bucket.entries.len() < self.k {
            bucket.entries.push(entry);
            return Update::Added;
        }
        if let Some(p) = &mut bucket.pending {
            if p.peer == peer {
                merge_addrs(&mut p.addrs, addrs);
                p.last_seen = now;
            }
            return Update::Refused(Refusal::BucketFull);
        }
        bucket.pending = Some(entry);
        Update::CheckOldest(bucket.entries[0].info())
    }

    /// The least recently seen peer of a full bucket was checked: alive, it stays (and
    /// the newcomer is dropped); dead, it goes and the newcomer takes its place (if the
    /// diversity limits still allow). Returns the newcomer if it was taken.
    pub fn oldest_checked(&mut self, oldest: &PeerId, alive: bool, now: Instant) -> Option<PeerId> {
        let b = self.bucket_of(&KadKey::from_peer(oldest));
        let Some(i) = self.buckets[b]
            .entries
            .iter()
            .position(|e| &e.peer == oldest)
        else {
            // Gone meanwhile: the newcomer may have room now.
            return self.admit_pending(b);
        };
        if alive {
            let mut e = self.buckets[b].entries.remove(i);
            e.last_seen = now;
            self.buckets[b].entries.push(e);
            self.buckets[b].pending = None;
            None
        } else {
            self.buckets[b].entries.remove(i);
            self.admit_pending(b)
        }
    }

    fn admit_pending(&mut self, b: usize) -> Option<PeerId> {
        let p = self.buckets[b].pending.take()?;
        if self.buckets[b].entries.len() < self.k && self.diversity_allows(b, &p.groups, None) {
            let peer = p.peer;
            self.buckets[b].entries.push(p);
            return Some(peer);
        }
        None
    }

    /// Removes `peer` (it left the DHT, or failed us); a newcomer waiting for its bucket
    /// takes the place. Returns whether it was there, and the newcomer taken.
    pub fn remove(&mut self, peer: &PeerId) -> (bool, Option<PeerId>) {
        let b = self.bucket_of(&KadKey::from_peer(peer));
        let Some(i) = self.buckets[b].entries.iter().position(|e| &e.peer == peer) else {
            if self.buckets[b]
                .pending
                .as_ref()
                .is_some_and(|p| &p.peer == peer)
            {
                self.buckets[b].pending = None;
            }
            return (false, None);
        };
        self.buckets[b].entries.remove(i);
        (true, self.admit_pending(b))
    }

    /// Whether `peer` is in the table.
    pub fn contains(&self, peer: &PeerId) -> bool {
        let b = self.bucket_of(&KadKey::from_peer(peer));
        self.buckets[b].entries.iter().any(|e| &e.peer == peer)
    }

    /// The entry of `peer`, if it is in the table.
    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        let b = self.bucket_of(&KadKey::from_peer(peer));
        self.buckets[b].entries.iter().find(|e| &e.peer == peer)
    }

    /// The `n` peers closest to `target`, closest first.
    pub fn closest(&self, target: &KadKey, n: usize) -> Vec<PeerInfo> {
        let mut all: Vec<(Distance, &Entry)> = self
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| (e.key.distance(target), e))
            .collect();
        all.sort_by_key(|(d, _)| *d);
        all.into_iter().take(n).map(|(_, e)| e.info()).collect()
    }

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// True when no peer is in the table.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.entries.iter())
    }

    /// Peers per bucket (index: common prefix length), up to the last non-empty bucket.
    pub fn bucket_sizes(&self) -> Vec<usize> {
        let last = self
            .buckets
            .iter()
            .rposition(|b| !b.entries.is_empty())
            .map_or(0, |i| i + 1);
        self.buckets[..last]
            .iter()
            .map(|b| b.entries.len())
            .collect()
    }

    /// A lookup for `target` went through: its bucket counts as refreshed.
    pub fn looked_up(&mut self, target: &KadKey, now: Instant) {
        let b = self.bucket_of(target);
        self.buckets[b].last_lookup = Some(now);
    }

    /// The buckets (common prefix lengths, at most `max_cpl`) not looked up within
    /// `interval`: up to the deepest non-empty bucket (and bucket 0 of an empty table).
    pub fn stale_buckets(&self, now: Instant, interval: Duration, max_cpl: usize) -> Vec<usize> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.entries.is_empty())
            .unwrap_or(0);
        (0..=deepest.min(max_cpl))
            .filter(|&i| {
                let since = self.buckets[i].last_lookup.unwrap_or(self.created);
                now.saturating_duration_since(since) >= interval
            })
            .collect()
    }

    /// The entries last seen alive before `cutoff`.
    pub fn not_seen_since(&self, cutoff: Instant) -> Vec<PeerInfo> {
        self.entries()
            .filter(|e| e.last_seen < cutoff)
            .map(|e| e.info())
            .collect()
    }

    /// The peers of every entry (for tests and snapshots).
    pub fn peers(&self) -> HashSet<PeerId> {
        self.entries().map(|e| e.peer).collect()
    }
}

/// Adds `new` addresses to `into`, without duplicates, up to [`MAX_ADDRS_PER_PEER`].
fn merge_addrs(into: &mut Vec<Multiaddr>, new: &[Multiaddr]) {
    for a in new {
        if into.len() >= MAX_ADDRS_PER_PEER {
            break;
        }
        if !into.contains(a) {
            into.push(a.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(seed)
    }

    fn addr(s: &str) -> Vec<Multiaddr> {
        vec![s.parse().unwrap()]
    }

    /// Peers (from seeds) that fall in bucket `b` of `table`.
    fn peers_in_bucket(table: &RoutingTable, b: usize, n: usize) -> Vec<PeerId> {
        (1000u64..)
            .map(peer)
            .filter(|p| table.bucket_of(&KadKey::from_peer(p)) == b)
            .take(n)
            .collect()
    }

    #[test]
    fn a_full_bucket_checks_its_oldest_before_replacing_it() {
        let now = Instant::now();
        let mut t = RoutingTable::new(peer(0), 3, DiversityLimits::default());
        let ps = peers_in_bucket(&t, 0, 5);
        for p in &ps[..3] {
            assert_eq!(
                t.update(*p, &addr("/ip4/10.0.0.1/tcp/1"), now),
                Update::Added
            );
        }
        // Seen again: moves to the end.
        assert_eq!(t.update(ps[0], &[], now), Update::Refreshed);
        // Full: the oldest (now ps[1]) is to be checked.
        match t.update(ps[3], &addr("/ip4/10.0.0.4/tcp/1"), now) {
            Update::CheckOldest(info) => assert_eq!(info.id, ps[1]),
            other => panic!("{other:?}"),
        }
        // Only one newcomer waits at a time.
        assert_eq!(
            t.update(ps[4], &addr("/ip4/10.0.0.5/tcp/1"), now),
            Update::Refused(Refusal::BucketFull)
        );
        // Alive: it stays, the newcomer goes.
        assert_eq!(t.oldest_checked(&ps[1], true, now), None);
        assert!(t.contains(&ps[1]) && !t.contains(&ps[3]));
        // Dead: the newcomer takes its place.
        assert!(matches!(
            t.update(ps[3], &addr("/ip4/10.0.0.4/tcp/1"), now),
            Update::CheckOldest(_)
        ));
        assert_eq!(t.oldest_checked(&ps[2], false, now), Some(ps[3]));
        assert!(!t.contains(&ps[2]) && t.contains(&ps[3]));
        assert_eq!(t.len(), 3);
        assert_eq!(t.update(peer(0), &[], now), Update::Refused(Refusal::Local));
    }

    #[test]
    fn one_subnet_cannot_fill_a_bucket_or_the_table() {
        let now = Instant::now();
        let mut t = RoutingTable::new(peer(0), 20, DiversityLimits::default());
        let ps = peers_in_bucket(&t, 0, 8);
        // Public addresses of one /24: two per bucket.
        let mut taken = 0;
        for (i, p) in ps.iter().enumerate() {
            let a = addr(&format!("/ip4/93.184.216.{}/tcp/4001", i + 1));
            if t.update(*p, &a, now) == Update::Added {
                taken += 1;
            }
        }
        assert_eq!(taken, 2);
        // Across buckets, ten in the table.
        let mut all = 0;
        for s in 2000u64..2400 {
            let a = addr(&format!("/ip4/198.51.100.{}/tcp/4001", s % 250));
            if t.update(peer(s), &a, now) == Update::Added {
                all += 1;
            }
        }
        assert_eq!(all, 10);
        // Another /24 is unaffected; loopback addresses are exempt.
        assert_eq!(
            t.update(ps[5], &addr("/ip4/203.0.113.9/tcp/1"), now),
            Update::Added
        );
        let local = peers_in_bucket(&t, 1, 5);
        for p in &local {
            assert_eq!(
                t.update(*p, &addr("/ip4/127.0.0.1/tcp/1"), now),
                Update::Added
            );
        }
    }

    #[test]
    fn the_connection_address_decides_the_group_and_no_address_is_no_entry() {
        let now = Instant::now();
        let mut t = RoutingTable::new(peer(0), 20, DiversityLimits::default());
        let ps = peers_in_bucket(&t, 0, 4);
        assert_eq!(
            t.update(ps[0], &[], now),
            Update::Refused(Refusal::NoAddresses)
        );
        // Three peers connected from one /24, each announcing an address elsewhere.
        let from: Multiaddr = "/ip4/93.184.216.7/tcp/50000".parse().unwrap();
        let mut taken = 0;
        for (i, p) in ps.iter().enumerate() {
            let announced = addr(&format!("/ip4/198.51.{i}.1/tcp/4001"));
            if t.update_seen(*p, &announced, Some(&from), now) == Update::Added {
                taken += 1;
            }
        }
        assert_eq!(taken, 2);
        // Announcing more addresses later cannot move a peer out of its group.
        let more = addr("/ip4/203.0.113.1/tcp/4001");
        assert_eq!(t.update(ps[0], &more, now), Update::Refreshed);
        assert_eq!(
            t.update_seen(ps[3], &more, Some(&from), now),
            Update::Refused(Refusal::Diversity)
        );
    }

    #[test]
    fn closest_peers_come_closest_first_and_removal_admits_the_waiting() {
        let now = Instant::now();
        let mut t = RoutingTable::new(peer(0), 20, DiversityLimits::default());
        for s in 1..200u64 {
            let _ = t.update(peer(s), &addr("/ip4/127.0.0.1/tcp/1"), now);
        }
        let target = KadKey::from_bytes(b"some key");
        let closest = t.closest(&target, 20);
        assert_eq!(closest.len(), 20);
        let d: Vec<_> = closest
            .iter()
            .map(|p| KadKey::from_peer(&p.id).distance(&target))
            .collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        // Everything not in the 20 is farther than the 20th.
        for e in t.entries() {
            if !closest.iter().any(|c| c.id == e.peer) {
                assert!(e.key.distance(&target) >= d[19]);
            }
        }
        let first = closest[0].id;
        // Bucket 0 of 199 peers is full and has a newcomer waiting: it takes the place.
        let (removed, admitted) = t.remove(&first);
        assert!(removed && !t.contains(&first));
        let admitted = admitted.expect("the waiting newcomer was not taken");
        assert!(t.contains(&admitted));
        assert_eq!(t.remove(&first), (false, None));
    }

    #[test]
    fn buckets_not_looked_up_are_stale() {
        let start = Instant::now();
        let mut t = RoutingTable::new(peer(0), 20, DiversityLimits::default());
        for s in 1..50u64 {
            let _ = t.update(peer(s), &addr("/ip4/127.0.0.1/tcp/1"), start);
        }
        let later = start + Duration::from_secs(601);
        let stale = t.stale_buckets(later, Duration::from_secs(600), 15);
        assert!(stale.contains(&0));
        let in_zero = KadKey::from_bytes(&crate::key::random_key_with_cpl(t.local_key(), 0));
        t.looked_up(&in_zero, later);
        assert!(!t
            .stale_buckets(later, Duration::from_secs(600), 15)
            .contains(&0));
    }
}
