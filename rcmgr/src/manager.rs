//! The resource manager: every count and reservation under one short lock.
//!
//! One lock is enough: connections and streams open and close at most thousands of times
//! a second, memory is reserved when a buffer or window grows (not per frame), and
//! nothing here waits or runs user code under it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use strata_core::rcmgr::{
    priority, ConnScopeOps, MemoryOps, Resource, ResourceStat, ScopeStat, SpanOwner, StreamScopeOps,
};
use strata_core::{
    ConnScope, Direction, Multiaddr, PeerId, Protocol, ResourceError, ResourceManager, ScopeMemory,
    StreamScope,
};
use tokio_util::sync::CancellationToken;

use crate::admission::{AddrCap, AddrKey, Admission};
use crate::limits::{LimitConfig, LimitError, ScopeLimit};

/// Evictions one reservation may cause before it gives up (each frees one pending
/// handshake's memory).
const MAX_MEMORY_EVICTIONS: usize = 4;

/// The resource manager, after go-libp2p's `rcmgr`: scopes system, transient, peer,
/// connection, stream, protocol and service, each with limits on connections, streams,
/// memory and descriptors, plus admission caps per source IP and subnet.
///
/// Admission (in [`ResourceManager::open_connection`], before any handshake byte):
/// an inbound connection over its IP's cap is refused; over its subnet's cap, or over the
/// transient (pending) or system connection limits, the oldest *idle* pending handshake
/// of that subnet (or anywhere, for the global limits) is evicted to make room, and the
/// newcomer is refused only if none is idle. A handshake is idle until the remote has
/// completed its first handshake message ([`ConnScope::handshake_progress`]): a socket
/// that has said nothing is the cheapest thing to drop, and an honest peer says its first
/// words within one round trip.
///
/// Memory: a connection's reservations are charged to the connection, its source address
/// and subnet (inbound), its peer (or the transient scope before the peer is known) and
/// the system; a stream's to the stream, its protocol and service, its peer and the
/// system; a span's to its owners and the system. When a reservation does not fit the
/// transient or system memory (or its subnet's), the oldest unauthenticated pending
/// handshakes are evicted first (idle ones before live ones) to make room.
///
/// A scope that has ended (a closed connection, a finished stream) no longer counts as a
/// connection or stream, but the memory its buffers still hold stays charged until
/// released.
///
/// Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct BasicResourceManager {
    inner: Arc<Inner>,
}

struct Inner {
    limits: LimitConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    system: ScopeStat,
    transient: ScopeStat,
    peers: HashMap<PeerId, ScopeStat>,
    protocols: HashMap<String, ScopeStat>,
    services: HashMap<String, ScopeStat>,
    admission: Admission,
    conns: HashMap<u64, ConnEntry>,
    streams: HashMap<u64, StreamEntry>,
    spans: HashMap<u64, SpanEntry>,
    next_id: u64,
    refused: u64,
    evictions: u64,
}

struct ConnEntry {
    dir: Direction,
    fd: bool,
    peer: Option<PeerId>,
    memory: u64,
    /// An inbound connection still in its handshake.
    pending: bool,
    /// The remote has completed a handshake message: no longer idle.
    progressed: bool,
    /// The connection has ended; the entry stays only while memory is still charged.
    closed: bool,
    addr: Option<AddrKey>,
    evict: CancellationToken,
}

struct StreamEntry {
    dir: Direction,
    peer: PeerId,
    protocol: Option<String>,
    service: Option<String>,
    memory: u64,
    /// The stream has ended; the entry stays only while memory is still charged.
    closed: bool,
}

struct SpanEntry {
    owner: SpanOwner,
    memory: u64,
}

impl std::fmt::Debug for BasicResourceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicResourceManager")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

fn err(scope: impl Into<String>, resource: Resource, limit: u64) -> ResourceError {
    ResourceError {
        scope: scope.into(),
        resource,
        limit,
    }
}

fn as_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Whether one more connection fits `limit` given `usage`.
fn check_conn(
    usage: &ScopeStat,
    limit: &ScopeLimit,
    dir: Direction,
    fd: bool,
    scope: impl Fn() -> String,
) -> Result<(), ResourceError> {
    if usage.conns() >= limit.conns {
        return Err(err(scope(), Resource::Connections, as_u64(limit.conns)));
    }
    match dir {
        Direction::Inbound if usage.conns_inbound >= limit.conns_inbound => Err(err(
            scope(),
            Resource::InboundConnections,
            as_u64(limit.conns_inbound),
        )),
        Direction::Outbound if usage.conns_outbound >= limit.conns_outbound => Err(err(
            scope(),
            Resource::OutboundConnections,
            as_u64(limit.conns_outbound),
        )),
        _ if fd && usage.fds >= limit.fds => {
            Err(err(scope(), Resource::Descriptors, as_u64(limit.fds)))
        }
        _ => Ok(()),
    }
}

fn check_stream(
    usage: &ScopeStat,
    limit: &ScopeLimit,
    dir: Direction,
    scope: impl Fn() -> String,
) -> Result<(), ResourceError> {
    if usage.streams() >= limit.streams {
        return Err(err(scope(), Resource::Streams, as_u64(limit.streams)));
    }
    match dir {
        Direction::Inbound if usage.streams_inbound >= limit.streams_inbound => Err(err(
            scope(),
            Resource::InboundStreams,
            as_u64(limit.streams_inbound),
        )),
        Direction::Outbound if usage.streams_outbound >= limit.streams_outbound => Err(err(
            scope(),
            Resource::OutboundStreams,
            as_u64(limit.streams_outbound),
        )),
        _ => Ok(()),
    }
}

/// A reservation of priority `prio` fits while usage stays within `limit × (prio+1)/256`.
fn check_memory(
    usage: u64,
    size: u64,
    limit: u64,
    prio: u8,
    scope: impl Fn() -> String,
) -> Result<(), ResourceError> {
    if limit == u64::MAX {
        return Ok(());
    }
    let share = (u128::from(limit) * (u128::from(prio) + 1) / 256) as u64;
    if u128::from(usage) + u128::from(size) > u128::from(share) {
        return Err(err(scope(), Resource::Memory, share));
    }
    Ok(())
}

fn add_conn(s: &mut ScopeStat, dir: Direction, fd: bool) {
    match dir {
        Direction::Inbound => s.conns_inbound += 1,
        Direction::Outbound => s.conns_outbound += 1,
    }
    if fd {
        s.fds += 1;
    }
}

fn sub_conn(s: &mut ScopeStat, dir: Direction, fd: bool) {
    match dir {
        Direction::Inbound => s.conns_inbound = s.conns_inbound.saturating_sub(1),
        Direction::Outbound => s.conns_outbound = s.conns_outbound.saturating_sub(1),
    }
    if fd {
        s.fds = s.fds.saturating_sub(1);
    }
}

fn add_stream(s: &mut ScopeStat, dir: Direction) {
    match dir {
        Direction::Inbound => s.streams_inbound += 1,
        Direction::Outbound => s.streams_outbound += 1,
    }
}

fn sub_stream(s: &mut ScopeStat, dir: Direction) {
    match dir {
        Direction::Inbound => s.streams_inbound = s.streams_inbound.saturating_sub(1),
        Direction::Outbound => s.streams_outbound = s.streams_outbound.saturating_sub(1),
    }
}

/// Removes `key` from `map` if its scope holds nothing any more.
fn drop_empty<K: std::hash::Hash + Eq>(map: &mut HashMap<K, ScopeStat>, key: &K) {
    if map.get(key).is_some_and(ScopeStat::is_empty) {
        map.remove(key);
    }
}

/// Subtracts `size` bytes from the scope `key` names in `map` and forgets it when empty.
fn sub_memory_in<K, Q>(map: &mut HashMap<K, ScopeStat>, key: &Q, size: u64)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(s) = map.get_mut(key) {
        s.memory = s.memory.saturating_sub(size);
        if s.is_empty() {
            map.remove(key);
        }
    }
}

/// The IP address a multiaddr starts with, if any.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

fn peer_scope(peer: &PeerId) -> String {
    format!("peer:{peer}")
}

/// What memory of one kind is charged to besides the system: used to check and to book
/// a reservation in one place for connections, streams and spans.
struct Charge<'a> {
    peer: Option<PeerId>,
    transient: bool,
    protocol: Option<&'a str>,
    service: Option<&'a str>,
    addr: Option<AddrKey>,
}

impl State {
    /// Gives back the slot connection `id` holds (its counts; not its memory).
    fn release_conn_slot(&mut self, id: u64, e: &ConnEntry) {
        if e.pending {
            self.admission.end_pending(id, e.addr.as_ref());
        }
        if e.dir == Direction::Inbound {
            self.admission.remove_conn(e.addr.as_ref());
        }
        let owner = match e.peer {
            Some(p) => self.peers.entry(p).or_default(),
            None => &mut self.transient,
        };
        sub_conn(owner, e.dir, e.fd);
        if let Some(p) = e.peer {
            drop_empty(&mut self.peers, &p);
        }
        sub_conn(&mut self.system, e.dir, e.fd);
    }

    /// Gives back `size` bytes charged as `charge` describes.
    fn release_charge(&mut self, charge: &Charge<'_>, size: u64) {
        if size == 0 {
            return;
        }
        if let Some(key) = &charge.addr {
            self.admission.sub_memory(key, size);
        }
        if let Some(p) = &charge.peer {
            sub_memory_in(&mut self.peers, p, size);
        }
        if charge.transient {
            self.transient.memory = self.transient.memory.saturating_sub(size);
        }
        if let Some(proto) = charge.protocol {
            sub_memory_in(&mut self.protocols, proto, size);
        }
        if let Some(svc) = charge.service {
            sub_memory_in(&mut self.services, svc, size);
        }
        self.system.memory = self.system.memory.saturating_sub(size);
    }

    /// Books `size` bytes as `charge` describes (after the checks passed).
    fn add_charge(&mut self, charge: &Charge<'_>, size: u64) {
        if let Some(key) = &charge.addr {
            self.admission.add_memory(key, size);
        }
        if let Some(p) = &charge.peer {
            self.peers.entry(*p).or_default().memory += size;
        }
        if charge.transient {
            self.transient.memory += size;
        }
        if let Some(proto) = charge.protocol {
            self.protocols.entry(proto.to_owned()).or_default().memory += size;
        }
        if let Some(svc) = charge.service {
            self.services.entry(svc.to_owned()).or_default().memory += size;
        }
        self.system.memory += size;
    }

    /// Whether `size` more bytes fit every scope `charge` names, at `prio`.
    fn check_charge(
        &self,
        limits: &LimitConfig,
        charge: &Charge<'_>,
        size: u64,
        prio: u8,
    ) -> Result<(), ResourceError> {
        if let Some(key) = &charge.addr {
            let (ip, net) = self.admission.memory(key);
            check_memory(ip, size, limits.admission.memory_per_ip, prio, || {
                format!("ip:{}", key.ip)
            })?;
            check_memory(net, size, limits.admission.memory_per_subnet, prio, || {
                format!("subnet:{}", key.subnet)
            })?;
        }
        if let Some(p) = &charge.peer {
            let usage = self.peers.get(p).map_or(0, |s| s.memory);
            check_memory(usage, size, limits.peer_limit(p).memory, prio, || {
                peer_scope(p)
            })?;
        }
        if charge.transient {
            check_memory(
                self.transient.memory,
                size,
                limits.transient.memory,
                prio,
                || "transient".to_owned(),
            )?;
        }
        if let Some(proto) = charge.protocol {
            let usage = self.protocols.get(proto).map_or(0, |s| s.memory);
            check_memory(
                usage,
                size,
                limits.protocol_limit(proto).memory,
                prio,
                || format!("protocol:{proto}"),
            )?;
        }
        if let Some(svc) = charge.service {
            let usage = self.services.get(svc).map_or(0, |s| s.memory);
            check_memory(usage, size, limits.service_limit(svc).memory, prio, || {
                format!("service:{svc}")
            })?;
        }
        check_memory(self.system.memory, size, limits.system.memory, prio, || {
            "system".to_owned()
        })
    }

    /// Evicts the oldest pending handshake (of `subnet`, or anywhere) that `pick`
    /// accepts, other than `keep`. False when there is none.
    fn evict_where(
        &mut self,
        subnet: Option<&crate::ipnet::IpNet>,
        keep: Option<u64>,
        pick: impl Fn(&ConnEntry) -> bool,
    ) -> bool {
        let conns = &self.conns;
        let victim = self.admission.oldest(subnet, |id| {
            Some(id) != keep && conns.get(&id).is_some_and(|e| e.pending && pick(e))
        });
        let Some(id) = victim else { return false };
        let Some(e) = self.conns.remove(&id) else {
            return false;
        };
        self.release_conn_slot(id, &e);
        self.release_charge(&conn_charge(&e), e.memory);
        e.evict.cancel();
        self.evictions += 1;
        true
    }

    /// Evicts the oldest idle pending handshake (of `subnet`, or anywhere).
    fn evict_idle(&mut self, subnet: Option<&crate::ipnet::IpNet>) -> bool {
        self.evict_where(subnet, None, |e| !e.progressed)
    }

    /// Makes room in memory: evicts the oldest unauthenticated pending handshake other
    /// than `keep` (idle ones first).
    fn evict_for_memory(&mut self, subnet: Option<&crate::ipnet::IpNet>, keep: u64) -> bool {
        self.evict_where(subnet, Some(keep), |e| !e.progressed)
            || self.evict_where(subnet, Some(keep), |e| e.peer.is_none())
    }
}

/// What a connection's memory is charged to.
fn conn_charge(e: &ConnEntry) -> Charge<'static> {
    Charge {
        peer: e.peer,
        transient: e.peer.is_none(),
        protocol: None,
        service: None,
        addr: if e.dir == Direction::Inbound {
            e.addr
        } else {
            None
        },
    }
}

/// What a stream's memory is charged to.
fn stream_charge(e: &StreamEntry) -> Charge<'_> {
    Charge {
        peer: Some(e.peer),
        transient: false,
        protocol: e.protocol.as_deref(),
        service: e.service.as_deref(),
        addr: None,
    }
}

/// What a span's memory is charged to.
fn span_charge(owner: &SpanOwner) -> Charge<'_> {
    Charge {
        peer: owner.peer,
        transient: false,
        protocol: owner.protocol.as_deref(),
        service: owner.service.as_deref(),
        addr: None,
    }
}

impl BasicResourceManager {
    /// A manager enforcing `limits`, once they pass [`LimitConfig::validate`].
    pub fn new(limits: LimitConfig) -> Result<Self, LimitError> {
        limits.validate()?;
        Ok(BasicResourceManager {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &LimitConfig {
        &self.inner.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters, each change made whole under the lock: a panic elsewhere
        // cannot leave them half-changed.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admission proper: per-address caps, then the transient and system limits, with
    /// eviction of idle pending handshakes where it may make room.
    fn admit(
        &self,
        st: &mut State,
        dir: Direction,
        fd: bool,
        key: Option<&AddrKey>,
    ) -> Result<(), ResourceError> {
        let limits = &self.inner.limits;
        if let Some(key) = key {
            for _ in 0..2 {
                let Some(cap) = st.admission.over_cap(&limits.admission, key) else {
                    break;
                };
                let (scope, resource, limit, may_evict) = match cap {
                    AddrCap::IpHandshakes => (
                        format!("ip:{}", key.ip),
                        Resource::PendingHandshakes,
                        limits.admission.handshakes_per_ip,
                        false,
                    ),
                    AddrCap::IpConns => (
                        format!("ip:{}", key.ip),
                        Resource::Connections,
                        limits.admission.conns_per_ip,
                        false,
                    ),
                    AddrCap::SubnetHandshakes => (
                        format!("subnet:{}", key.subnet),
                        Resource::PendingHandshakes,
                        limits.admission.handshakes_per_subnet,
                        true,
                    ),
                    AddrCap::SubnetConns => (
                        format!("subnet:{}", key.subnet),
                        Resource::Connections,
                        limits.admission.conns_per_subnet,
                        true,
                    ),
                };
                if !(may_evict && st.evict_idle(Some(&key.subnet))) {
                    return Err(err(scope, resource, as_u64(limit)));
                }
            }
        }
        let mut last = None;
        for _ in 0..3 {
            let checked = check_conn(&st.transient, &limits.transient, dir, fd, || {
                "transient".to_owned()
            })
            .and_then(|()| check_conn(&st.system, &limits.system, dir, fd, || "system".to_owned()));
            match checked {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if !st.evict_idle(None) {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| err("system", Resource::Connections, 0)))
    }
}

impl ResourceManager for BasicResourceManager {
    fn open_connection(
        &self,
        direction: Direction,
        use_fd: bool,
        remote: &Multiaddr,
    ) -> Result<ConnScope, ResourceError> {
        let key = match direction {
            Direction::Inbound => {
                ip_of(remote).and_then(|ip| Admission::key(&self.inner.limits.admission, ip))
            }
            Direction::Outbound => None,
        };
        let mut st = self.lock();
        if let Err(e) = self.admit(&mut st, direction, use_fd, key.as_ref()) {
            st.refused += 1;
            return Err(e);
        }
        st.next_id += 1;
        let id = st.next_id;
        let evict = CancellationToken::new();
        let pending = direction == Direction::Inbound;
        if pending {
            st.admission.add_pending(id, key.as_ref());
        }
        add_conn(&mut st.system, direction, use_fd);
        add_conn(&mut st.transient, direction, use_fd);
        st.conns.insert(
            id,
            ConnEntry {
                dir: direction,
                fd: use_fd,
                peer: None,
                memory: 0,
                pending,
                progressed: false,
                closed: false,
                addr: key,
                evict: evict.clone(),
            },
        );
        drop(st);
        Ok(ConnScope::new(
            Arc::new(ConnOps {
                mgr: self.clone(),
                id,
            }),
            evict,
        ))
    }

    fn open_stream(
        &self,
        peer: PeerId,
        direction: Direction,
    ) -> Result<StreamScope, ResourceError> {
        let limits = &self.inner.limits;
        let mut st = self.lock();
        check_stream(&st.system, &limits.system, direction, || {
            "system".to_owned()
        })?;
        check_stream(&st.transient, &limits.transient, direction, || {
            "transient".to_owned()
        })?;
        let usage = st.peers.get(&peer).copied().unwrap_or_default();
        check_stream(&usage, limits.peer_limit(&peer), direction, || {
            peer_scope(&peer)
        })?;
        add_stream(&mut st.system, direction);
        add_stream(&mut st.transient, direction);
        add_stream(st.peers.entry(peer).or_default(), direction);
        st.next_id += 1;
        let id = st.next_id;
        st.streams.insert(
            id,
            StreamEntry {
                dir: direction,
                peer,
                protocol: None,
                service: None,
                memory: 0,
                closed: false,
            },
        );
        drop(st);
        Ok(StreamScope::new(Arc::new(StreamOps {
            mgr: self.clone(),
            id,
        })))
    }

    fn open_span(&self, owner: &SpanOwner) -> ScopeMemory {
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        st.spans.insert(
            id,
            SpanEntry {
                owner: owner.clone(),
                memory: 0,
            },
        );
        drop(st);
        ScopeMemory::new(Arc::new(SpanOps {
            mgr: self.clone(),
            id,
        }))
    }

    fn under_pressure(&self) -> bool {
        let limits = &self.inner.limits;
        let st = self.lock();
        let half = |usage: u64, limit: u64| limit != u64::MAX && usage > limit / 2;
        half(st.transient.memory, limits.transient.memory)
            || half(
                as_u64(st.admission.pending()),
                as_u64(limits.transient.conns),
            )
            || half(st.system.memory, limits.system.memory / 4 * 3)
    }

    fn stat(&self) -> ResourceStat {
        let st = self.lock();
        ResourceStat {
            system: st.system,
            transient: st.transient,
            peers: st.peers.clone(),
            protocols: st.protocols.clone(),
            services: st.services.clone(),
            pending_handshakes: st.admission.pending(),
            tracked_ips: st.admission.tracked_ips(),
            refused_admissions: st.refused,
            evictions: st.evictions,
        }
    }
}

/// The error for an operation on a connection the manager no longer holds (evicted).
fn gone() -> ResourceError {
    err("conn (evicted)", Resource::Connections, 0)
}

struct ConnOps {
    mgr: BasicResourceManager,
    id: u64,
}

impl ConnOps {
    /// One attempt to reserve: the checks, then the booking.
    fn try_reserve(&self, st: &mut State, size: u64, prio: u8) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let (memory, charge) = match st.conns.get(&self.id) {
            Some(e) if !e.closed => (e.memory, conn_charge(e)),
            _ => return Err(gone()),
        };
        check_memory(memory, size, limits.conn.memory, prio, || "conn".to_owned())?;
        st.check_charge(limits, &charge, size, prio)?;
        if let Some(e) = st.conns.get_mut(&self.id) {
            e.memory += size;
        }
        st.add_charge(&charge, size);
        Ok(())
    }
}

impl MemoryOps for ConnOps {
    fn reserve_memory(&self, size: usize, prio: u8) -> Result<(), ResourceError> {
        let size = as_u64(size);
        let mut st = self.mgr.lock();
        let mut evictions = 0;
        loop {
            let e = match self.try_reserve(&mut st, size, prio) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Memory pressure in the scopes that pending handshakes share: the oldest
            // unauthenticated ones make way (never this one, never a live connection).
            let subnet = st
                .conns
                .get(&self.id)
                .and_then(|c| c.addr)
                .map(|k| k.subnet);
            let shared = e.resource == Resource::Memory
                && (e.scope == "transient"
                    || e.scope == "system"
                    || e.scope.starts_with("subnet:"));
            let within = if e.scope.starts_with("subnet:") {
                subnet
            } else {
                None
            };
            if !shared
                || evictions >= MAX_MEMORY_EVICTIONS
                || !st.evict_for_memory(within.as_ref(), self.id)
            {
                return Err(e);
            }
            evictions += 1;
        }
    }

    fn release_memory(&self, size: usize) {
        let mut st = self.mgr.lock();
        let Some(e) = st.conns.get_mut(&self.id) else {
            return;
        };
        let size = as_u64(size).min(e.memory);
        e.memory -= size;
        let (charge, forget) = (conn_charge(e), e.closed && e.memory == 0);
        st.release_charge(&charge, size);
        if forget {
            st.conns.remove(&self.id);
        }
    }
}

impl ConnScopeOps for ConnOps {
    fn set_peer(&self, peer: PeerId) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let (dir, fd, memory, current) = match st.conns.get(&self.id) {
            Some(e) if !e.closed => (e.dir, e.fd, e.memory, e.peer),
            _ => return Err(gone()),
        };
        if current.is_some() {
            return Ok(());
        }
        let usage = st.peers.get(&peer).copied().unwrap_or_default();
        let limit = limits.peer_limit(&peer);
        check_conn(&usage, limit, dir, fd, || peer_scope(&peer))?;
        check_memory(usage.memory, memory, limit.memory, priority::ALWAYS, || {
            peer_scope(&peer)
        })?;
        sub_conn(&mut st.transient, dir, fd);
        st.transient.memory = st.transient.memory.saturating_sub(memory);
        let p = st.peers.entry(peer).or_default();
        add_conn(p, dir, fd);
        p.memory += memory;
        if let Some(e) = st.conns.get_mut(&self.id) {
            e.peer = Some(peer);
        }
        Ok(())
    }

    fn handshake_progress(&self) {
        if let Some(e) = self.mgr.lock().conns.get_mut(&self.id) {
            e.progressed = true;
        }
    }

    fn established(&self) {
        let mut st = self.mgr.lock();
        let key = match st.conns.get_mut(&self.id) {
            Some(e) if e.pending && !e.closed => {
                e.pending = false;
                e.progressed = true;
                e.addr
            }
            _ => return,
        };
        st.admission.end_pending(self.id, key.as_ref());
    }

    fn done(&self) {
        let mut st = self.mgr.lock();
        let Some(mut e) = st.conns.remove(&self.id) else {
            return;
        };
        if e.closed {
            st.conns.insert(self.id, e);
            return;
        }
        st.release_conn_slot(self.id, &e);
        e.pending = false;
        e.closed = true;
        if e.memory > 0 {
            st.conns.insert(self.id, e);
        }
    }
}

struct StreamOps {
    mgr: BasicResourceManager,
    id: u64,
}

impl MemoryOps for StreamOps {
    fn reserve_memory(&self, size: usize, prio: u8) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let size = as_u64(size);
        let mut st = self.mgr.lock();
        let Some(e) = st.streams.get(&self.id).filter(|e| !e.closed) else {
            return Err(gone());
        };
        check_memory(e.memory, size, limits.stream.memory, prio, || {
            "stream".to_owned()
        })?;
        st.check_charge(limits, &stream_charge(e), size, prio)?;
        let Some(e) = st.streams.remove(&self.id) else {
            return Err(gone());
        };
        st.add_charge(&stream_charge(&e), size);
        st.streams.insert(
            self.id,
            StreamEntry {
                memory: e.memory + size,
                ..e
            },
        );
        Ok(())
    }

    fn release_memory(&self, size: usize) {
        let mut st = self.mgr.lock();
        let Some(mut e) = st.streams.remove(&self.id) else {
            return;
        };
        let size = as_u64(size).min(e.memory);
        e.memory -= size;
        st.release_charge(&stream_charge(&e), size);
        if !(e.closed && e.memory == 0) {
            st.streams.insert(self.id, e);
        }
    }
}

impl StreamScopeOps for StreamOps {
    fn set_protocol(&self, protocol: &str) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let (dir, memory) = match st.streams.get(&self.id) {
            Some(e) if e.protocol.as_deref() == Some(protocol) => return Ok(()),
            Some(e) if e.protocol.is_some() => {
                return Err(err(format!("protocol:{protocol}"), Resource::Streams, 0))
            }
            Some(e) if !e.closed => (e.dir, e.memory),
            _ => return Ok(()),
        };
        let usage = st.protocols.get(protocol).copied().unwrap_or_default();
        let limit = limits.protocol_limit(protocol);
        check_stream(&usage, limit, dir, || format!("protocol:{protocol}"))?;
        check_memory(usage.memory, memory, limit.memory, priority::ALWAYS, || {
            format!("protocol:{protocol}")
        })?;
        sub_stream(&mut st.transient, dir);
        let p = st.protocols.entry(protocol.to_owned()).or_default();
        add_stream(p, dir);
        p.memory += memory;
        if let Some(e) = st.streams.get_mut(&self.id) {
            e.protocol = Some(protocol.to_owned());
        }
        Ok(())
    }

    fn set_service(&self, service: &str) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let (dir, memory) = match st.streams.get(&self.id) {
            Some(e) if e.service.is_some() => return Ok(()),
            Some(e) if !e.closed => (e.dir, e.memory),
            _ => return Ok(()),
        };
        let usage = st.services.get(service).copied().unwrap_or_default();
        let limit = limits.service_limit(service);
        check_stream(&usage, limit, dir, || format!("service:{service}"))?;
        check_memory(usage.memory, memory, limit.memory, priority::ALWAYS, || {
            format!("service:{service}")
        })?;
        let s = st.services.entry(service.to_owned()).or_default();
        add_stream(s, dir);
        s.memory += memory;
        if let Some(e) = st.streams.get_mut(&self.id) {
            e.service = Some(service.to_owned());
        }
        Ok(())
    }

    fn done(&self) {
        let mut st = self.mgr.lock();
        let Some(mut e) = st.streams.remove(&self.id) else {
            return;
        };
        if e.closed {
            st.streams.insert(self.id, e);
            return;
        }
        sub_stream(&mut st.system, e.dir);
        if let Some(p) = st.peers.get_mut(&e.peer) {
            sub_stream(p, e.dir);
        }
        drop_empty(&mut st.peers, &e.peer);
        match &e.protocol {
            Some(proto) => {
                if let Some(s) = st.protocols.get_mut(proto) {
                    sub_stream(s, e.dir);
                }
                drop_empty(&mut st.protocols, proto);
            }
            None => sub_stream(&mut st.transient, e.dir),
        }
        if let Some(svc) = &e.service {
            if let Some(s) = st.services.get_mut(svc) {
                sub_stream(s, e.dir);
            }
            drop_empty(&mut st.services, svc);
        }
        e.closed = true;
        if e.memory > 0 {
            st.streams.insert(self.id, e);
        }
    }
}

struct SpanOps {
    mgr: BasicResourceManager,
    id: u64,
}

impl MemoryOps for SpanOps {
    fn reserve_memory(&self, size: usize, prio: u8) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let size = as_u64(size);
        let mut st = self.mgr.lock();
        let Some(span) = st.spans.remove(&self.id) else {
            return Err(gone());
        };
        let checked = st.check_charge(limits, &span_charge(&span.owner), size, prio);
        if checked.is_ok() {
            st.add_charge(&span_charge(&span.owner), size);
        }
        st.spans.insert(
            self.id,
            SpanEntry {
                memory: span.memory + if checked.is_ok() { size } else { 0 },
                owner: span.owner,
            },
        );
        checked
    }

    fn release_memory(&self, size: usize) {
        let mut st = self.mgr.lock();
        let Some(mut span) = st.spans.remove(&self.id) else {
            return;
        };
        let size = as_u64(size).min(span.memory);
        span.memory -= size;
        st.release_charge(&span_charge(&span.owner), size);
        st.spans.insert(self.id, span);
    }
}

impl Drop for SpanOps {
    fn drop(&mut self) {
        // The last handle is gone, and every reservation holds one: nothing should be
        // left, but whatever is goes back.
        let mut st = self.mgr.lock();
        if let Some(span) = st.spans.remove(&self.id) {
            st.release_charge(&span_charge(&span.owner), span.memory);
        }
    }
}
