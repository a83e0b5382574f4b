//! The peerstore: what this node knows about other peers.
//!
//! Modelled on go-libp2p's `peerstore.Peerstore` (the in-memory `pstoremem`): an address
//! book whose entries expire after a TTL, a key book, a protocol book, a little metadata
//! (agent and protocol version) and observed latency. Names follow go-libp2p so that a
//! user looks for them where they expect them.
//!
//! Everything here can come from a remote peer (identify fills it), so every per-peer
//! collection is capped: a peer cannot make us hold more than [`MAX_ADDRS_PER_PEER`]
//! addresses or [`MAX_PROTOCOLS_PER_PEER`] protocols for it.
//!
//! The store itself is bounded too, as go-libp2p's `pstoremanager` bounds it: the swarm
//! tells it when a peer's first connection opens and its last one closes; a
//! [`PeerstoreConfig::disconnect_grace`] after that (or after the record was made, for a
//! peer never connected), [`Peerstore::gc`] forgets what its connections taught us: its
//! key, protocols, versions, latency and the addresses learned while connected. Addresses
//! the application added keep their own TTL. Past
//! [`PeerstoreConfig::max_peers`], the least recently seen peers without a connection or a
//! permanent address are forgotten at once. The swarm runs `gc` periodically.
//!
//! Expiry is measured with [`tokio::time::Instant`], so tests can drive it with tokio's
//! paused clock. Expired addresses are dropped lazily when a peer is read, and all at once
//! by [`Peerstore::gc`].

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use strata_core::{Multiaddr, PeerId, Protocol, PublicKey};
use tokio::time::Instant;

/// TTL of an address we are not sure of, for example one a peer told us about another.
pub const TEMP_ADDR_TTL: Duration = Duration::from_secs(2 * 60);
/// TTL of a general-purpose address, from a trusted source such as a routing record.
pub const ADDRESS_TTL: Duration = Duration::from_secs(60 * 60);
/// TTL of the addresses of a peer we were connected to recently: we are fairly sure of
/// them. go-libp2p raised this from 10 to 15 minutes; we follow the current value.
pub const RECENTLY_CONNECTED_ADDR_TTL: Duration = Duration::from_secs(15 * 60);
/// TTL of addresses we know a peer by for good (bootstrap nodes). Never expires.
///
/// As in go-libp2p the permanent TTLs are distinct values (`i64::MAX` and `i64::MAX - 1`
/// nanoseconds), so that [`Peerstore::update_addrs`] can tell them apart.
pub const PERMANENT_ADDR_TTL: Duration = Duration::from_nanos(i64::MAX as u64);
/// TTL of the addresses of a peer we are connected to. Effectively permanent: when the
/// last connection closes, the host moves them to [`RECENTLY_CONNECTED_ADDR_TTL`] with
/// [`Peerstore::update_addrs`].
pub const CONNECTED_ADDR_TTL: Duration = Duration::from_nanos(i64::MAX as u64 - 1);

/// Most addresses kept for one peer. A Kubo node advertises a few dozen at most; 64 leaves
/// room and stops a peer from growing our memory with made-up ones.
pub const MAX_ADDRS_PER_PEER: usize = 64;
/// Most protocols kept for one peer, as go-libp2p's protobook (`MaxProtocols = 128`).
pub const MAX_PROTOCOLS_PER_PEER: usize = 128;
/// Weight of a new sample in the latency EWMA, as go-libp2p's `LatencyEWMASmoothing`.
pub const LATENCY_EWMA_SMOOTHING: f64 = 0.1;

/// Why the peerstore refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerstoreError {
    /// The public key does not hash to the peer ID it was offered for.
    #[error("public key of peer {actual} offered for peer {peer}")]
    KeyMismatch {
        /// The peer the key was offered for.
        peer: PeerId,
        /// The peer ID the key actually belongs to.
        actual: PeerId,
    },
    /// Storing the protocols would exceed [`MAX_PROTOCOLS_PER_PEER`].
    #[error("peer {peer}: {count} protocols exceed the limit of {max}")]
    TooManyProtocols {
        /// The peer.
        peer: PeerId,
        /// How many distinct protocols the change would leave.
        count: usize,
        /// The limit.
        max: usize,
    },
}

#[derive(Debug, Clone)]
struct AddrEntry {
    addr: Multiaddr,
    /// The TTL it was last given, kept so `update_addrs` can select by TTL.
    ttl: Duration,
    /// `None`: never expires (the TTL overflows the clock).
    expires: Option<Instant>,
}

impl AddrEntry {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// How big the peerstore may grow and how long it remembers a peer that left.
///
/// | field | default |
/// |---|---|
/// | `max_peers` | 4096 |
/// | `disconnect_grace` | 60 s |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerstoreConfig {
    /// Most peers kept. Past it, the least recently seen peers without a connection or a
    /// permanent address are forgotten.
    pub max_peers: usize,
    /// How long a peer's non-permanent data outlives its last connection.
    pub disconnect_grace: Duration,
}

impl Default for PeerstoreConfig {
    fn default() -> Self {
        PeerstoreConfig {
            max_peers: 4096,
            disconnect_grace: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct PeerRecord {
    addrs: Vec<AddrEntry>,
    key: Option<PublicKey>,
    protocols: Vec<String>,
    agent_version: Option<String>,
    protocol_version: Option<String>,
    latency: Option<Duration>,
    /// Open connections, as the swarm reports them.
    connections: usize,
    /// When the record was made or its peer last connected or disconnected.
    last_seen: Instant,
    /// Since when the peer has had no connection (its creation, for a peer never
    /// connected: what identify records after a connection closed must age out too).
    disconnected_at: Option<Instant>,
}

impl Default for PeerRecord {
    fn default() -> Self {
        PeerRecord {
            addrs: Vec::new(),
            key: None,
            protocols: Vec::new(),
            agent_version: None,
            protocol_version: None,
            latency: None,
            connections: 0,
            last_seen: Instant::now(),
            disconnected_at: Some(Instant::now()),
        }
    }
}

impl PeerRecord {
    fn prune(&mut self, now: Instant) {
        self.addrs.retain(|a| !a.expired(now));
    }

    fn is_empty(&self) -> bool {
        self.addrs.is_empty()
            && self.key.is_none()
            && self.protocols.is_empty()
            && self.agent_version.is_none()
            && self.protocol_version.is_none()
            && self.latency.is_none()
            && self.connections == 0
    }

    fn has_permanent_addr(&self) -> bool {
        self.addrs.iter().any(|a| a.ttl == PERMANENT_ADDR_TTL)
    }

    /// Forgets what the peer's connections taught us: its key, protocols, versions,
    /// latency, and the addresses learned while connected. Addresses given with another
    /// TTL (by the application, or fading ones) keep it.
    fn forget(&mut self) {
        self.addrs
            .retain(|a| a.ttl != CONNECTED_ADDR_TTL && a.ttl != RECENTLY_CONNECTED_ADDR_TTL);
        self.key = None;
        self.protocols = Vec::new();
        self.agent_version = None;
        self.protocol_version = None;
        self.latency = None;
    }
}

/// What this node knows about other peers: addresses with TTLs, public keys, protocols,
/// agent and protocol versions, latency.
///
/// Cheap to clone (an `Arc` inside); all clones share one store. Safe to use from many
/// tasks at once: each call locks one shard of a concurrent map for a few instructions and
/// never across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct Peerstore {
    peers: Arc<DashMap<PeerId, PeerRecord>>,
    config: Arc<PeerstoreConfig>,
}

fn expiry(now: Instant, ttl: Duration) -> Option<Instant> {
    now.checked_add(ttl)
}

/// Removes a trailing `/p2p/<peer>` from an address. `None` when it names another peer:
/// such an address cannot reach `peer`.
fn strip_p2p(peer: &PeerId, addr: &Multiaddr) -> Option<Multiaddr> {
    let mut addr = addr.clone();
    match addr.iter().last() {
        Some(Protocol::P2p(id)) if id == *peer => {
            addr.pop();
            Some(addr)
        }
        Some(Protocol::P2p(_)) => None,
        _ => Some(addr),
    }
}

impl Peerstore {
    /// An empty peerstore with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty peerstore with these bounds.
    pub fn with_config(config: PeerstoreConfig) -> Self {
        Peerstore {
            peers: Arc::new(DashMap::new()),
            config: Arc::new(config),
        }
    }

    /// Its bounds.
    pub fn config(&self) -> &PeerstoreConfig {
        &self.config
    }

    /// How many peers it holds anything about (connected ones included).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Keeps the store within `max_peers` after an insertion: forgets the least recently
    /// seen peers that have no connection and no permanent address, down to 15/16 of the
    /// bound so that a stream of new peers pays for the scan only now and then.
    fn enforce_cap(&self) {
        let max = self.config.max_peers;
        if self.peers.len() <= max {
            return;
        }
        let mut idle: Vec<(Instant, PeerId)> = self
            .peers
            .iter()
            .filter(|r| r.connections == 0 && !r.has_permanent_addr())
            .map(|r| (r.last_seen, *r.key()))
            .collect();
        idle.sort_unstable_by_key(|(seen, _)| *seen);
        let target = max - max / 16;
        let excess = self.peers.len().saturating_sub(target);
        for (_, peer) in idle.into_iter().take(excess) {
            self.peers
                .remove_if(&peer, |_, r| r.connections == 0 && !r.has_permanent_addr());
        }
    }

    // ---- connections (the swarm reports them) ----

    /// A connection to `peer` opened.
    pub fn peer_connected(&self, peer: PeerId) {
        let now = Instant::now();
        let mut rec = self.peers.entry(peer).or_default();
        rec.connections += 1;
        rec.last_seen = now;
        rec.disconnected_at = None;
        drop(rec);
        self.enforce_cap();
    }

    /// A connection to `peer` closed. When it was the last, the peer's connected
    /// addresses fade to [`RECENTLY_CONNECTED_ADDR_TTL`] and its grace period starts.
    pub fn peer_disconnected(&self, peer: PeerId) {
        let Some(mut rec) = self.peers.get_mut(&peer) else {
            return;
        };
        let now = Instant::now();
        rec.connections = rec.connections.saturating_sub(1);
        rec.last_seen = now;
        if rec.connections == 0 {
            rec.disconnected_at = Some(now);
            let exp = expiry(now, RECENTLY_CONNECTED_ADDR_TTL);
            for e in rec.addrs.iter_mut().filter(|e| e.ttl == CONNECTED_ADDR_TTL) {
                e.ttl = RECENTLY_CONNECTED_ADDR_TTL;
                e.expires = exp;
            }
        }
        drop_if_empty(&self.peers, peer, rec);
    }

    /// True while the swarm reports a connection to `peer`.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|r| r.connections > 0)
    }

    // ---- address book ----

    /// Adds addresses for `peer` valid for `ttl`. An address already known keeps the later
    /// of its expiry and the new one (as go-libp2p's `AddAddrs`: adding never shortens).
    /// A zero TTL adds nothing. A trailing `/p2p/<peer>` is stripped; an address naming
    /// another peer is skipped. Past [`MAX_ADDRS_PER_PEER`] a new address replaces the one
    /// that expires soonest, if it expires sooner than the new one; else it is dropped.
    pub fn add_addrs(&self, peer: PeerId, addrs: &[Multiaddr], ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let exp = expiry(now, ttl);
        let mut rec = self.peers.entry(peer).or_default();
        rec.prune(now);
        for addr in addrs {
            let Some(addr) = strip_p2p(&peer, addr) else {
                continue;
            };
            if let Some(e) = rec.addrs.iter_mut().find(|e| e.addr == addr) {
                if later(exp, e.expires) {
                    e.expires = exp;
                    e.ttl = ttl;
                }
                continue;
            }
            insert_capped(
                &mut rec.addrs,
                AddrEntry {
                    addr,
                    ttl,
                    expires: exp,
                },
            );
        }
        drop_if_empty(&self.peers, peer, rec);
        self.enforce_cap();
    }

    /// Sets the TTL of each address, replacing whatever it had (as go-libp2p's `SetAddrs`):
    /// it may shorten. A zero TTL removes the addresses. Other addresses are untouched.
    pub fn set_addrs(&self, peer: PeerId, addrs: &[Multiaddr], ttl: Duration) {
        let now = Instant::now();
        let exp = expiry(now, ttl);
        let mut rec = self.peers.entry(peer).or_default();
        rec.prune(now);
        for addr in addrs {
            let Some(addr) = strip_p2p(&peer, addr) else {
                continue;
            };
            let pos = rec.addrs.iter().position(|e| e.addr == addr);
            match (pos, ttl.is_zero()) {
                (Some(i), true) => {
                    rec.addrs.swap_remove(i);
                }
                (Some(i), false) => {
                    rec.addrs[i].ttl = ttl;
                    rec.addrs[i].expires = exp;
                }
                (None, true) => {}
                (None, false) => insert_capped(
                    &mut rec.addrs,
                    AddrEntry {
                        addr,
                        ttl,
                        expires: exp,
                    },
                ),
            }
        }
        drop_if_empty(&self.peers, peer, rec);
    }

    /// Gives every address of `peer` whose TTL is `old_ttl` the TTL `new_ttl`, counted from
    /// now (as go-libp2p's `UpdateAddrs`). A zero `new_ttl` removes them. Used when the last
    /// connection to a peer closes: [`CONNECTED_ADDR_TTL`] → [`RECENTLY_CONNECTED_ADDR_TTL`].
    pub fn update_addrs(&self, peer: PeerId, old_ttl: Duration, new_ttl: Duration) {
        let Some(mut rec) = self.peers.get_mut(&peer) else {
            return;
        };
        let now = Instant::now();
        rec.prune(now);
        if new_ttl.is_zero() {
            rec.addrs.retain(|e| e.ttl != old_ttl);
        } else {
            let exp = expiry(now, new_ttl);
            for e in rec.addrs.iter_mut().filter(|e| e.ttl == old_ttl) {
                e.ttl = new_ttl;
                e.expires = exp;
            }
        }
        drop_if_empty(&self.peers, peer, rec);
    }

    /// The unexpired addresses of `peer`, in the order they were first added.
    pub fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let now = Instant::now();
        match self.peers.get(peer) {
            Some(rec) => rec
                .addrs
                .iter()
                .filter(|e| !e.expired(now))
                .map(|e| e.addr.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    /// Forgets every address of `peer`.
    pub fn clear_addrs(&self, peer: &PeerId) {
        if let Some(mut rec) = self.peers.get_mut(peer) {
            rec.addrs.clear();
            drop_if_empty(&self.peers, *peer, rec);
        }
    }

    /// The peers that have at least one unexpired address.
    pub fn peers_with_addrs(&self) -> Vec<PeerId> {
        let now = Instant::now();
        self.peers
            .iter()
            .filter(|r| r.addrs.iter().any(|e| !e.expired(now)))
            .map(|r| *r.key())
            .collect()
    }

    // ---- key book ----

    /// Records the public key of `peer`, after checking that it hashes to `peer`: a key
    /// that does not is refused with [`PeerstoreError::KeyMismatch`].
    pub fn add_pub_key(&self, peer: PeerId, key: PublicKey) -> Result<(), PeerstoreError> {
        let actual = key.to_peer_id();
        if actual != peer {
            return Err(PeerstoreError::KeyMismatch { peer, actual });
        }
        self.peers.entry(peer).or_default().key = Some(key);
        self.enforce_cap();
        Ok(())
    }

    /// The public key of `peer`: the one recorded, or else the one inlined in the peer ID
    /// itself (Ed25519 and other short keys are, as an identity multihash).
    pub fn pub_key(&self, peer: &PeerId) -> Option<PublicKey> {
        if let Some(key) = self.peers.get(peer).and_then(|r| r.key.clone()) {
            return Some(key);
        }
        let mh = peer.as_ref();
        // 0x00 is the identity multihash: the digest is the protobuf-encoded key.
        if mh.code() == 0 {
            PublicKey::try_decode_protobuf(mh.digest()).ok()
        } else {
            None
        }
    }

    // ---- protocol book ----

    /// Replaces the protocols `peer` supports. Duplicates count once. More than
    /// [`MAX_PROTOCOLS_PER_PEER`] distinct ones is refused and changes nothing.
    pub fn set_protocols<S: AsRef<str>>(
        &self,
        peer: PeerId,
        protocols: &[S],
    ) -> Result<(), PeerstoreError> {
        let mut list: Vec<String> = Vec::with_capacity(protocols.len().min(MAX_PROTOCOLS_PER_PEER));
        for p in protocols {
            let p = p.as_ref();
            if !list.iter().any(|q| q == p) {
                if list.len() == MAX_PROTOCOLS_PER_PEER {
                    return Err(too_many(peer, protocols.len()));
                }
                list.push(p.to_owned());
            }
        }
        let mut rec = self.peers.entry(peer).or_default();
        rec.protocols = list;
        drop_if_empty(&self.peers, peer, rec);
        self.enforce_cap();
        Ok(())
    }

    /// Adds protocols to those `peer` supports. Refused, changing nothing, when the result
    /// would exceed [`MAX_PROTOCOLS_PER_PEER`].
    pub fn add_protocols<S: AsRef<str>>(
        &self,
        peer: PeerId,
        protocols: &[S],
    ) -> Result<(), PeerstoreError> {
        let mut rec = self.peers.entry(peer).or_default();
        let mut new: Vec<&str> = Vec::new();
        for p in protocols {
            let p = p.as_ref();
            if !rec.protocols.iter().any(|q| q == p) && !new.contains(&p) {
                if rec.protocols.len() + new.len() == MAX_PROTOCOLS_PER_PEER {
                    let count = rec.protocols.len() + protocols.len();
                    drop_if_empty(&self.peers, peer, rec);
                    return Err(too_many(peer, count));
                }
                new.push(p);
            }
        }
        rec.protocols.extend(new.into_iter().map(str::to_owned));
        drop_if_empty(&self.peers, peer, rec);
        self.enforce_cap();
        Ok(())
    }

    /// Removes protocols from those `peer` supports.
    pub fn remove_protocols<S: AsRef<str>>(&self, peer: &PeerId, protocols: &[S]) {
        if let Some(mut rec) = self.peers.get_mut(peer) {
            rec.protocols
                .retain(|q| !protocols.iter().any(|p| p.as_ref() == q));
            drop_if_empty(&self.peers, *peer, rec);
        }
    }

    /// The protocols `peer` supports, in the order they were recorded.
    pub fn get_protocols(&self, peer: &PeerId) -> Vec<String> {
        self.peers
            .get(peer)
            .map(|r| r.protocols.clone())
            .unwrap_or_default()
    }

    /// Those of `protocols` that `peer` supports, in the order asked.
    pub fn supports_protocols<S: AsRef<str>>(&self, peer: &PeerId, protocols: &[S]) -> Vec<String> {
        let Some(rec) = self.peers.get(peer) else {
            return Vec::new();
        };
        protocols
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| rec.protocols.iter().any(|q| q == p))
            .map(str::to_owned)
            .collect()
    }

    /// The first of `protocols` that `peer` supports.
    pub fn first_supported_protocol<S: AsRef<str>>(
        &self,
        peer: &PeerId,
        protocols: &[S],
    ) -> Option<String> {
        let rec = self.peers.get(peer)?;
        protocols
            .iter()
            .map(AsRef::as_ref)
            .find(|p| rec.protocols.iter().any(|q| q == p))
            .map(str::to_owned)
    }

    // ---- metadata ----

    /// Records the agent version `peer` announced (identify's `agentVersion`).
    pub fn set_agent_version(&self, peer: PeerId, version: impl Into<String>) {
        self.peers.entry(peer).or_default().agent_version = Some(version.into());
        self.enforce_cap();
    }

    /// The agent version `peer` announced.
    pub fn agent_version(&self, peer: &PeerId) -> Option<String> {
        self.peers.get(peer).and_then(|r| r.agent_version.clone())
    }

    /// Records the protocol version `peer` announced (identify's `protocolVersion`).
    pub fn set_protocol_version(&self, peer: PeerId, version: impl Into<String>) {
        self.peers.entry(peer).or_default().protocol_version = Some(version.into());
        self.enforce_cap();
    }

    /// The protocol version `peer` announced.
    pub fn protocol_version(&self, peer: &PeerId) -> Option<String> {
        self.peers
            .get(peer)
            .and_then(|r| r.protocol_version.clone())
    }

    // ---- metrics ----

    /// Folds a round-trip sample into the latency average of `peer`: the first sample is
    /// taken as is, later ones with weight [`LATENCY_EWMA_SMOOTHING`] (go's `RecordLatency`).
    pub fn record_latency(&self, peer: PeerId, sample: Duration) {
        let mut rec = self.peers.entry(peer).or_default();
        rec.latency = Some(match rec.latency {
            None => sample,
            Some(prev) => Duration::from_secs_f64(
                LATENCY_EWMA_SMOOTHING * sample.as_secs_f64()
                    + (1.0 - LATENCY_EWMA_SMOOTHING) * prev.as_secs_f64(),
            ),
        });
        drop(rec);
        self.enforce_cap();
    }

    /// The latency average of `peer` (go's `LatencyEWMA`); `None` before any sample.
    pub fn latency_ewma(&self, peer: &PeerId) -> Option<Duration> {
        self.peers.get(peer).and_then(|r| r.latency)
    }

    // ---- peers ----

    /// Every peer the store holds anything about (unexpired addresses, key, protocols,
    /// metadata or latency).
    pub fn peers(&self) -> Vec<PeerId> {
        let now = Instant::now();
        self.peers
            .iter()
            .filter(|r| {
                r.addrs.iter().any(|e| !e.expired(now))
                    || r.connections > 0
                    || r.key.is_some()
                    || !r.protocols.is_empty()
                    || r.agent_version.is_some()
                    || r.protocol_version.is_some()
                    || r.latency.is_some()
            })
            .map(|r| *r.key())
            .collect()
    }

    /// Forgets everything about `peer` except its addresses, as go-libp2p's `RemovePeer`:
    /// addresses have TTLs of their own and may still serve a later dial. Use
    /// [`clear_addrs`](Self::clear_addrs) to drop those too.
    pub fn remove_peer(&self, peer: &PeerId) {
        if let Some(mut rec) = self.peers.get_mut(peer) {
            rec.key = None;
            rec.protocols = Vec::new();
            rec.agent_version = None;
            rec.protocol_version = None;
            rec.latency = None;
            drop_if_empty(&self.peers, *peer, rec);
        }
    }

    /// Drops expired addresses of every peer; forgets what is not permanent about peers
    /// whose last connection closed more than `disconnect_grace` ago; drops peers left
    /// with nothing. Reads prune lazily; the swarm calls this periodically so that peers
    /// never read again go too.
    pub fn gc(&self) {
        let now = Instant::now();
        let grace = self.config.disconnect_grace;
        self.peers.retain(|_, rec| {
            rec.prune(now);
            if rec.connections == 0
                && rec
                    .disconnected_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= grace)
            {
                rec.forget();
            }
            !rec.is_empty()
        });
    }
}

/// True when `new` expires after `old` (`None` = never).
fn later(new: Option<Instant>, old: Option<Instant>) -> bool {
    match (new, old) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(n), Some(o)) => n > o,
    }
}

fn insert_capped(addrs: &mut Vec<AddrEntry>, entry: AddrEntry) {
    if addrs.len() < MAX_ADDRS_PER_PEER {
        addrs.push(entry);
        return;
    }
    // Full: the address that expires soonest gives way, unless the new one expires sooner
    // still. Connected and permanent addresses thus survive a flood of temporary ones.
    let soonest = addrs
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.expires.map(|x| (i, x)))
        .min_by_key(|&(_, x)| x);
    if let Some((i, x)) = soonest {
        if later(entry.expires, Some(x)) {
            addrs[i] = entry;
        }
    }
}

fn too_many(peer: PeerId, count: usize) -> PeerstoreError {
    PeerstoreError::TooManyProtocols {
        peer,
        count,
        max: MAX_PROTOCOLS_PER_PEER,
    }
}

/// Releases the entry guard, then removes the record if nothing is left in it, so that
/// operations that empty a peer do not leave a husk behind.
fn drop_if_empty(
    map: &DashMap<PeerId, PeerRecord>,
    peer: PeerId,
    guard: dashmap::mapref::one::RefMut<'_, PeerId, PeerRecord>,
) {
    let empty = guard.is_empty();
    drop(guard);
    if empty {
        map.remove_if(&peer, |_, r| r.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::identity::keypair_from_seed;

    fn peer(seed: u64) -> PeerId {
        keypair_from_seed(seed).public().to_peer_id()
    }

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn permanent_ttls_are_distinct_and_never_expire() {
        assert_ne!(PERMANENT_ADDR_TTL, CONNECTED_ADDR_TTL);
        let now = Instant::now();
        // Either never (overflow) or far beyond any test.
        if let Some(e) = expiry(now, CONNECTED_ADDR_TTL) {
            assert!(e > now + Duration::from_secs(100 * 365 * 24 * 3600));
        }
    }

    #[test]
    fn p2p_suffix_is_stripped_or_refused() {
        let p = peer(1);
        let with_own = ma("/ip4/1.2.3.4/tcp/1").with(Protocol::P2p(p));
        assert_eq!(strip_p2p(&p, &with_own), Some(ma("/ip4/1.2.3.4/tcp/1")));
        let with_other = ma("/ip4/1.2.3.4/tcp/1").with(Protocol::P2p(peer(2)));
        assert_eq!(strip_p2p(&p, &with_other), None);
    }

    #[test]
    fn ewma_follows_go() {
        let ps = Peerstore::new();
        let p = peer(1);
        ps.record_latency(p, Duration::from_millis(100));
        assert_eq!(ps.latency_ewma(&p), Some(Duration::from_millis(100)));
        ps.record_latency(p, Duration::from_millis(200));
        let got = ps.latency_ewma(&p).unwrap().as_secs_f64();
        assert!((got - 0.110).abs() < 1e-9, "{got}");
    }
}
