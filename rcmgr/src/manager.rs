//! The resource manager: every count and reservation under one short lock.
//!
//! One lock is enough: connections and streams open and close at most thousands of times
//! a second, memory is reserved when a window grows (not per frame), and nothing here
//! waits or runs user code under it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use strata_core::rcmgr::{
    priority, ConnScopeOps, Resource, ResourceStat, ScopeStat, StreamScopeOps,
};
use strata_core::{
    ConnScope, Direction, Multiaddr, PeerId, Protocol, ResourceError, ResourceManager, StreamScope,
};
use tokio_util::sync::CancellationToken;

use crate::admission::{AddrCap, AddrKey, Admission};
use crate::limits::{LimitConfig, LimitError, ScopeLimit};

/// The resource manager, after go-libp2p's `rcmgr`: scopes system, transient, peer,
/// connection, stream, protocol and service, each with limits on connections, streams,
/// memory and descriptors, plus admission caps per source IP and subnet.
///
/// Admission (in [`ResourceManager::open_connection`], before any handshake byte):
/// an inbound connection over its IP's cap is refused; over its subnet's cap, or over the
/// transient (pending) or system connection limits, the oldest *idle* pending handshake
/// of that subnet (or anywhere, for the global limits) is evicted to make room, and the
/// newcomer is refused only if none is idle. A handshake is idle until the remote has
/// completed its first protocol negotiation ([`ConnScope::handshake_progress`]): a socket
/// that has said nothing is the cheapest thing to drop, and an honest peer says its first
/// words within one round trip.
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
    /// The remote has completed its first negotiation: no longer evictable.
    progressed: bool,
    addr: Option<AddrKey>,
    evict: CancellationToken,
}

struct StreamEntry {
    dir: Direction,
    peer: PeerId,
    protocol: Option<String>,
    service: Option<String>,
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

impl State {
    /// Gives back everything connection `id` holds (its entry is already removed).
    fn release_conn(&mut self, id: u64, e: &ConnEntry) {
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
        owner.memory = owner.memory.saturating_sub(e.memory);
        if let Some(p) = e.peer {
            drop_empty(&mut self.peers, &p);
        }
        sub_conn(&mut self.system, e.dir, e.fd);
        self.system.memory = self.system.memory.saturating_sub(e.memory);
    }

    /// Evicts the oldest idle pending handshake (of `subnet`, or anywhere). False when
    /// none is idle.
    fn evict_one(&mut self, subnet: Option<&crate::ipnet::IpNet>) -> bool {
        let conns = &self.conns;
        let victim = self.admission.oldest(subnet, |id| {
            conns.get(&id).is_some_and(|e| e.pending && !e.progressed)
        });
        let Some(id) = victim else { return false };
        let Some(e) = self.conns.remove(&id) else {
            return false;
        };
        self.release_conn(id, &e);
        e.evict.cancel();
        self.evictions += 1;
        true
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
                if !(may_evict && st.evict_one(Some(&key.subnet))) {
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
                    if !st.evict_one(None) {
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
                addr: key,
                evict: evict.clone(),
            },
        );
        drop(st);
        Ok(ConnScope::new(
            Box::new(ConnOps {
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
            },
        );
        drop(st);
        Ok(StreamScope::new(Box::new(StreamOps {
            mgr: self.clone(),
            id,
        })))
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

impl ConnScopeOps for ConnOps {
    fn set_peer(&self, peer: PeerId) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let (dir, fd, memory, current) = match st.conns.get(&self.id) {
            Some(e) => (e.dir, e.fd, e.memory, e.peer),
            None => return Err(gone()),
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
            Some(e) if e.pending => {
                e.pending = false;
                e.progressed = true;
                e.addr
            }
            _ => return,
        };
        st.admission.end_pending(self.id, key.as_ref());
    }

    fn reserve_memory(&self, size: usize, prio: u8) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let size = as_u64(size);
        let mut st = self.mgr.lock();
        let (memory, peer) = match st.conns.get(&self.id) {
            Some(e) => (e.memory, e.peer),
            None => return Err(gone()),
        };
        check_memory(memory, size, limits.conn.memory, prio, || "conn".to_owned())?;
        match peer {
            Some(p) => {
                let usage = st.peers.get(&p).map_or(0, |s| s.memory);
                check_memory(usage, size, limits.peer_limit(&p).memory, prio, || {
                    peer_scope(&p)
                })?;
            }
            None => check_memory(
                st.transient.memory,
                size,
                limits.transient.memory,
                prio,
                || "transient".to_owned(),
            )?,
        }
        check_memory(st.system.memory, size, limits.system.memory, prio, || {
            "system".to_owned()
        })?;
        if let Some(e) = st.conns.get_mut(&self.id) {
            e.memory += size;
        }
        match peer {
            Some(p) => st.peers.entry(p).or_default().memory += size,
            None => st.transient.memory += size,
        }
        st.system.memory += size;
        Ok(())
    }

    fn release_memory(&self, size: usize) {
        let mut st = self.mgr.lock();
        let Some(e) = st.conns.get_mut(&self.id) else {
            return;
        };
        let size = as_u64(size).min(e.memory);
        e.memory -= size;
        let peer = e.peer;
        match peer {
            Some(p) => {
                if let Some(s) = st.peers.get_mut(&p) {
                    s.memory = s.memory.saturating_sub(size);
                }
            }
            None => st.transient.memory = st.transient.memory.saturating_sub(size),
        }
        st.system.memory = st.system.memory.saturating_sub(size);
    }

    fn done(&self) {
        let mut st = self.mgr.lock();
        if let Some(e) = st.conns.remove(&self.id) {
            st.release_conn(self.id, &e);
        }
    }
}

struct StreamOps {
    mgr: BasicResourceManager,
    id: u64,
}

impl StreamScopeOps for StreamOps {
    fn set_protocol(&self, protocol: &str) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let dir = match st.streams.get(&self.id) {
            Some(e) if e.protocol.as_deref() == Some(protocol) => return Ok(()),
            Some(e) if e.protocol.is_some() => {
                return Err(err(format!("protocol:{protocol}"), Resource::Streams, 0))
            }
            Some(e) => e.dir,
            None => return Ok(()),
        };
        let usage = st.protocols.get(protocol).copied().unwrap_or_default();
        check_stream(&usage, limits.protocol_limit(protocol), dir, || {
            format!("protocol:{protocol}")
        })?;
        sub_stream(&mut st.transient, dir);
        add_stream(st.protocols.entry(protocol.to_owned()).or_default(), dir);
        if let Some(e) = st.streams.get_mut(&self.id) {
            e.protocol = Some(protocol.to_owned());
        }
        Ok(())
    }

    fn set_service(&self, service: &str) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let mut st = self.mgr.lock();
        let dir = match st.streams.get(&self.id) {
            Some(e) if e.service.is_some() => return Ok(()),
            Some(e) => e.dir,
            None => return Ok(()),
        };
        let usage = st.services.get(service).copied().unwrap_or_default();
        check_stream(&usage, limits.service_limit(service), dir, || {
            format!("service:{service}")
        })?;
        add_stream(st.services.entry(service.to_owned()).or_default(), dir);
        if let Some(e) = st.streams.get_mut(&self.id) {
            e.service = Some(service.to_owned());
        }
        Ok(())
    }

    fn reserve_memory(&self, size: usize, prio: u8) -> Result<(), ResourceError> {
        let limits = &self.mgr.inner.limits;
        let size = as_u64(size);
        let mut st = self.mgr.lock();
        let (memory, peer) = match st.streams.get(&self.id) {
            Some(e) => (e.memory, e.peer),
            None => return Err(gone()),
        };
        check_memory(memory, size, limits.stream.memory, prio, || {
            "stream".to_owned()
        })?;
        let usage = st.peers.get(&peer).map_or(0, |s| s.memory);
        check_memory(usage, size, limits.peer_limit(&peer).memory, prio, || {
            peer_scope(&peer)
        })?;
        check_memory(st.system.memory, size, limits.system.memory, prio, || {
            "system".to_owned()
        })?;
        if let Some(e) = st.streams.get_mut(&self.id) {
            e.memory += size;
        }
        st.peers.entry(peer).or_default().memory += size;
        st.system.memory += size;
        Ok(())
    }

    fn release_memory(&self, size: usize) {
        let mut st = self.mgr.lock();
        let Some(e) = st.streams.get_mut(&self.id) else {
            return;
        };
        let size = as_u64(size).min(e.memory);
        e.memory -= size;
        let peer = e.peer;
        if let Some(s) = st.peers.get_mut(&peer) {
            s.memory = s.memory.saturating_sub(size);
        }
        st.system.memory = st.system.memory.saturating_sub(size);
    }

    fn done(&self) {
        let mut st = self.mgr.lock();
        let Some(e) = st.streams.remove(&self.id) else {
            return;
        };
        sub_stream(&mut st.system, e.dir);
        st.system.memory = st.system.memory.saturating_sub(e.memory);
        if let Some(p) = st.peers.get_mut(&e.peer) {
            sub_stream(p, e.dir);
            p.memory = p.memory.saturating_sub(e.memory);
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
    }
}
