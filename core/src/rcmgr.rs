//! The resource manager's interface, after go-libp2p's `network.ResourceManager`.
//!
//! Every layer accounts what it holds to a scope: a connection is opened (and admitted)
//! with [`ResourceManager::open_connection`] before any handshake byte, becomes its peer's
//! once the security handshake names the peer ([`ConnScope::set_peer`]), and reserves the
//! memory of its buffers and muxer windows from its scope. A stream is opened with
//! [`ResourceManager::open_stream`] and later charged to its protocol and service. Memory
//! that belongs to no one connection or stream (a queue per peer, a store that strangers
//! fill) comes from a span ([`ResourceManager::open_span`]).
//!
//! # The rule: every byte a remote can make us hold is reserved first
//!
//! 1. **Reserve before you allocate.** A buffer or queue whose size a remote influences
//!    (by sending, by not reading, by announcing a length) is backed by a
//!    [`Reservation`] from the narrowest scope it belongs to: the connection's for
//!    transport, security and muxer buffers, the stream's for what a protocol reads or
//!    queues for one stream, a span's for what outlives streams. The reservation grows
//!    *before* the buffer does and shrinks when the buffer is freed or shrinks.
//! 2. **Bound queues in bytes.** A count bound alone is not a bound: a queue of 256
//!    messages of 1 MiB is 256 MiB. Every queue has a byte limit, and each entry carries
//!    its reservation (dropped with the entry).
//! 3. **Check a length prefix before anything is allocated for it**: against the
//!    protocol's limit, then against the reservation. Allocate as the bytes arrive, not
//!    what the prefix announced.
//! 4. **A failed reservation is backpressure or a reset, never an allocation.** Stop
//!    reading (the remote's flow control then holds it back), or reset the stream (close
//!    the connection) with a typed error that names the scope.
//! 5. **Release what is freed, and only then.** Memory outlives slots: a closed stream or
//!    connection stops counting as one at once, but what its buffers still hold stays
//!    charged until those buffers are dropped.
//!
//! Attacks are tested by the memory they really cost (RSS or a counting allocator), not
//! by these books; `ResourceManager::stat` is expected to agree with reality.
//!
//! The interface lives here, at the bottom, so that transports, the upgrader and the swarm
//! can reserve without knowing the implementation; `strata-rcmgr` implements it and the
//! host builder wires it in. [`NullResourceManager`] allows everything.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use multiaddr::Multiaddr;
use tokio_util::sync::CancellationToken;

use crate::conn::Direction;
use crate::identity::PeerId;

/// Priorities of memory reservations, as go-libp2p's: a reservation of priority `p`
/// succeeds only while the scope's usage after it stays within `limit × (p + 1) / 256`.
/// Growth that is nice to have asks with a low priority, so it fails long before what
/// a connection needs to work at all.
///
/// The convention: what a remote fills with data (stream windows, frames it announces)
/// asks with [`priority::HIGH`], so that the last fifth of a scope stays for what lets a
/// connection go on at all (its security and muxer buffers, [`priority::ALWAYS`]): a
/// connection whose streams filled its budget gets its new streams refused, and keeps
/// working.
pub mod priority {
    /// Optional growth (a larger muxer window): up to about 40% of the limit.
    pub const LOW: u8 = 101;
    /// Up to about 60% of the limit.
    pub const MEDIUM: u8 = 152;
    /// Data a remote sends us (stream windows, frames): up to about 80% of the limit.
    pub const HIGH: u8 = 203;
    /// What a connection or stream cannot work without: the whole limit.
    pub const ALWAYS: u8 = 255;
}

/// A kind of resource a scope counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Connections, both directions.
    Connections,
    /// Inbound connections.
    InboundConnections,
    /// Outbound connections.
    OutboundConnections,
    /// Inbound connections still in their handshake.
    PendingHandshakes,
    /// Streams, both directions.
    Streams,
    /// Inbound streams.
    InboundStreams,
    /// Outbound streams.
    OutboundStreams,
    /// Bytes of memory.
    Memory,
    /// File descriptors.
    Descriptors,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Connections => "connections",
            Resource::InboundConnections => "inbound connections",
            Resource::OutboundConnections => "outbound connections",
            Resource::PendingHandshakes => "pending handshakes",
            Resource::Streams => "streams",
            Resource::InboundStreams => "inbound streams",
            Resource::OutboundStreams => "outbound streams",
            Resource::Memory => "memory",
            Resource::Descriptors => "file descriptors",
        })
    }
}

/// A reservation was refused: which scope, which resource, and its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource limit reached in scope {scope}: {resource} (limit {limit})")]
pub struct ResourceError {
    /// The scope that refused, for example `system`, `peer:12D3…`, `ip:1.2.3.4`,
    /// `subnet:1.2.3.0/24` or `protocol:/ipfs/ping/1.0.0`.
    pub scope: String,
    /// The resource that ran out.
    pub resource: Resource,
    /// The limit that applies (for memory, after the priority's share).
    pub limit: u64,
}

/// Memory a scope can hand out: the part of a scope that buffers reserve from. Each
/// resource manager's connection, stream and span scopes implement it.
pub trait MemoryOps: Send + Sync + 'static {
    /// Reserves `size` bytes at `priority` (see [`priority`]).
    fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError>;
    /// Gives back `size` bytes reserved earlier.
    fn release_memory(&self, size: usize);
}

/// Memory that allows up to a limit and counts what is held: a stand-in for a resource
/// manager's scope, for tests of code that reserves (and for code run without one that
/// still wants the count).
#[derive(Debug)]
pub struct CountedMemory {
    held: std::sync::atomic::AtomicUsize,
    limit: usize,
    scope: &'static str,
}

impl CountedMemory {
    /// Room for `limit` bytes, refused in the name of `scope` past it.
    pub fn new(limit: usize, scope: &'static str) -> Arc<Self> {
        Arc::new(CountedMemory {
            held: std::sync::atomic::AtomicUsize::new(0),
            limit,
            scope,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A handle to reserve from it.
    pub fn memory(self: &Arc<Self>) -> ScopeMemory {
        ScopeMemory::new(self.clone())
    }
}

impl MemoryOps for CountedMemory {
    fn reserve_memory(&self, size: usize, _priority: u8) -> Result<(), ResourceError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut held = self.held.load(SeqCst);
        loop {
            if held.saturating_add(size) > self.limit {
                return Err(ResourceError {
                    scope: self.scope.into(),
                    resource: Resource::Memory,
                    limit: self.limit as u64,
                });
            }
            match self
                .held
                .compare_exchange(held, held + size, SeqCst, SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => held = now,
            }
        }
    }

    fn release_memory(&self, size: usize) {
        self.held
            .fetch_sub(size, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A handle on one scope's memory: what a buffer or queue reserves from before it grows.
///
/// Cheap to clone, and it may outlive the scope's slot: a connection that has ended no
/// longer counts as a connection, but the receive buffers its streams still hold stay
/// charged until they are freed. [`ScopeMemory::unlimited`] counts nothing (parts used
/// without a resource manager).
#[derive(Clone, Default)]
pub struct ScopeMemory {
    ops: Option<Arc<dyn MemoryOps>>,
}

impl ScopeMemory {
    /// A handle run by `ops`.
    pub fn new(ops: Arc<dyn MemoryOps>) -> Self {
        ScopeMemory { ops: Some(ops) }
    }

    /// A handle that allows everything and counts nothing.
    pub fn unlimited() -> Self {
        ScopeMemory { ops: None }
    }

    /// True when reservations are counted (a resource manager stands behind it).
    pub fn is_limited(&self) -> bool {
        self.ops.is_some()
    }

    /// Reserves `size` bytes at `priority`, held until the reservation is dropped.
    pub fn reserve(&self, size: usize, priority: u8) -> Result<Reservation, ResourceError> {
        self.reserve_raw(size, priority)?;
        Ok(Reservation {
            memory: self.clone(),
            size,
        })
    }

    /// An empty reservation, to grow as a buffer grows.
    pub fn empty(&self) -> Reservation {
        Reservation {
            memory: self.clone(),
            size: 0,
        }
    }

    /// Reserves `size` bytes that the caller gives back with
    /// [`ScopeMemory::release_raw`] (prefer [`ScopeMemory::reserve`], which cannot leak).
    pub fn reserve_raw(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        match &self.ops {
            Some(o) if size > 0 => o.reserve_memory(size, priority),
            _ => Ok(()),
        }
    }

    /// Gives back `size` bytes taken with [`ScopeMemory::reserve_raw`].
    pub fn release_raw(&self, size: usize) {
        if let Some(o) = &self.ops {
            if size > 0 {
                o.release_memory(size)
            }
        }
    }
}

impl fmt::Debug for ScopeMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeMemory")
            .field("limited", &self.is_limited())
            .finish()
    }
}

/// Bytes reserved from a scope, given back when dropped. It grows before the memory it
/// stands for is allocated and shrinks when that memory is freed, so the books follow
/// the buffer.
#[derive(Debug, Default)]
pub struct Reservation {
    memory: ScopeMemory,
    size: usize,
}

impl Reservation {
    /// The bytes held.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The scope the bytes come from.
    pub fn memory(&self) -> &ScopeMemory {
        &self.memory
    }

    /// Reserves `by` more bytes at `priority`; on failure nothing changes.
    pub fn grow(&mut self, by: usize, priority: u8) -> Result<(), ResourceError> {
        self.memory.reserve_raw(by, priority)?;
        self.size += by;
        Ok(())
    }

    /// Gives back `by` bytes (at most what is held).
    pub fn shrink(&mut self, by: usize) {
        let by = by.min(self.size);
        self.memory.release_raw(by);
        self.size -= by;
    }

    /// Grows or shrinks to exactly `size` bytes; a failed growth changes nothing.
    pub fn resize(&mut self, size: usize, priority: u8) -> Result<(), ResourceError> {
        match size.cmp(&self.size) {
            std::cmp::Ordering::Greater => self.grow(size - self.size, priority),
            std::cmp::Ordering::Less => {
                self.shrink(self.size - size);
                Ok(())
            }
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Moves `size` bytes (at most what is held) into a reservation of their own, on the
    /// same scope: for a buffer handed on with the bytes it holds.
    pub fn split(&mut self, size: usize) -> Reservation {
        let size = size.min(self.size);
        self.size -= size;
        Reservation {
            memory: self.memory.clone(),
            size,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.release_raw(self.size)
    }
}

/// What a connection's scope does, implemented by a resource manager.
pub trait ConnScopeOps: MemoryOps {
    /// The security handshake named the peer: the connection moves from the transient
    /// scope to the peer's, which may refuse it (too many connections to that peer).
    fn set_peer(&self, peer: PeerId) -> Result<(), ResourceError>;
    /// The remote completed its first handshake message (a whole Noise message, the TLS
    /// ClientHello, the QUIC handshake): it is a live handshake now, no longer an idle
    /// socket that may be evicted for a newcomer.
    fn handshake_progress(&self);
    /// The handshake has finished: the connection no longer counts as pending.
    fn established(&self);
    /// The connection has ended: its slot (connection counts, descriptor, admission) is
    /// released. Memory still reserved stays charged until it is released. Called once,
    /// on drop.
    fn done(&self);
}

/// Adapts a connection scope to the memory interface (no trait upcasting needed).
struct ConnMemory(Arc<dyn ConnScopeOps>);

impl MemoryOps for ConnMemory {
    fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.0.reserve_memory(size, priority)
    }
    fn release_memory(&self, size: usize) {
        self.0.release_memory(size)
    }
}

/// The scope of one connection. Dropping it releases the connection's slot; memory
/// reserved through [`ConnScope::memory`] is released as those reservations drop.
pub struct ConnScope {
    ops: Option<Arc<dyn ConnScopeOps>>,
    memory: ScopeMemory,
    evicted: CancellationToken,
}

impl ConnScope {
    /// A scope run by `ops`. The manager cancels `evicted` to ask the holder to drop a
    /// pending handshake in favour of a newcomer (or under memory pressure).
    pub fn new(ops: Arc<dyn ConnScopeOps>, evicted: CancellationToken) -> Self {
        ConnScope {
            memory: ScopeMemory::new(Arc::new(ConnMemory(ops.clone()))),
            ops: Some(ops),
            evicted,
        }
    }

    /// A scope that allows everything and counts nothing.
    pub fn unlimited() -> Self {
        ConnScope {
            ops: None,
            memory: ScopeMemory::unlimited(),
            evicted: CancellationToken::new(),
        }
    }

    /// The connection's memory, for buffers that reserve as they grow.
    pub fn memory(&self) -> &ScopeMemory {
        &self.memory
    }

    /// See [`ConnScopeOps::set_peer`].
    pub fn set_peer(&self, peer: PeerId) -> Result<(), ResourceError> {
        self.ops.as_ref().map_or(Ok(()), |o| o.set_peer(peer))
    }

    /// See [`ConnScopeOps::handshake_progress`].
    pub fn handshake_progress(&self) {
        if let Some(o) = &self.ops {
            o.handshake_progress()
        }
    }

    /// A handle that reports handshake progress, for a security protocol that runs with
    /// the connection's raw stream but not its scope.
    pub fn progress_reporter(&self) -> HandshakeProgress {
        HandshakeProgress {
            ops: self.ops.clone(),
        }
    }

    /// See [`ConnScopeOps::established`].
    pub fn established(&self) {
        if let Some(o) = &self.ops {
            o.established()
        }
    }

    /// Reserves `size` bytes at `priority`, for the caller to release with
    /// [`ConnScope::release_memory`] (see [`ScopeMemory::reserve`] for one that cannot
    /// leak).
    pub fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.memory.reserve_raw(size, priority)
    }

    /// Gives back `size` bytes reserved with [`ConnScope::reserve_memory`].
    pub fn release_memory(&self, size: usize) {
        self.memory.release_raw(size)
    }

    /// Resolves when the manager evicts this connection (a pending handshake made way
    /// for a newcomer). The holder then drops the connection.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// The token the manager cancels to evict this connection, for a holder that must
    /// watch it while the scope itself is elsewhere.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// True once evicted.
    pub fn is_evicted(&self) -> bool {
        self.evicted.is_cancelled()
    }
}

impl Drop for ConnScope {
    fn drop(&mut self) {
        if let Some(o) = &self.ops {
            o.done()
        }
    }
}

impl fmt::Debug for ConnScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnScope")
            .field("limited", &self.ops.is_some())
            .field("evicted", &self.is_evicted())
            .finish()
    }
}

/// Reports a connection's handshake progress to its scope (see
/// [`ConnScopeOps::handshake_progress`]); a no-op for unlimited scopes.
#[derive(Clone, Default)]
pub struct HandshakeProgress {
    ops: Option<Arc<dyn ConnScopeOps>>,
}

impl HandshakeProgress {
    /// A reporter that reports to nobody.
    pub fn none() -> Self {
        HandshakeProgress { ops: None }
    }

    /// The remote completed a handshake message.
    pub fn progressed(&self) {
        if let Some(o) = &self.ops {
            o.handshake_progress()
        }
    }
}

impl fmt::Debug for HandshakeProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeProgress").finish_non_exhaustive()
    }
}

/// What a stream's scope does, implemented by a resource manager.
pub trait StreamScopeOps: MemoryOps {
    /// The stream's protocol is known: it is charged to that protocol's scope, which may
    /// refuse it.
    fn set_protocol(&self, protocol: &str) -> Result<(), ResourceError>;
    /// The stream serves `service`: charged to that service's scope, which may refuse it.
    fn set_service(&self, service: &str) -> Result<(), ResourceError>;
    /// The stream has ended: its slot is released; memory still reserved stays charged
    /// until released. Called once, on drop.
    fn done(&self);
}

/// Adapts a stream scope to the memory interface.
struct StreamMemory(Arc<dyn StreamScopeOps>);

impl MemoryOps for StreamMemory {
    fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.0.reserve_memory(size, priority)
    }
    fn release_memory(&self, size: usize) {
        self.0.release_memory(size)
    }
}

/// The scope of one stream. Dropping it releases the stream's slot; memory reserved
/// through [`StreamScope::memory`] is released as those reservations drop.
///
/// Memory reserved here is charged to the stream, its protocol and service (once set),
/// its peer and the system: what a protocol buffers for a stream (a message being read,
/// a queue of received messages) is reserved here before it is allocated.
pub struct StreamScope {
    ops: Option<Arc<dyn StreamScopeOps>>,
    memory: ScopeMemory,
}

impl StreamScope {
    /// A scope run by `ops`.
    pub fn new(ops: Arc<dyn StreamScopeOps>) -> Self {
        StreamScope {
            memory: ScopeMemory::new(Arc::new(StreamMemory(ops.clone()))),
            ops: Some(ops),
        }
    }

    /// A scope that allows everything.
    pub fn unlimited() -> Self {
        StreamScope {
            ops: None,
            memory: ScopeMemory::unlimited(),
        }
    }

    /// The stream's memory, for buffers that reserve as they grow.
    pub fn memory(&self) -> &ScopeMemory {
        &self.memory
    }

    /// See [`StreamScopeOps::set_protocol`].
    pub fn set_protocol(&self, protocol: &str) -> Result<(), ResourceError> {
        self.ops
            .as_ref()
            .map_or(Ok(()), |o| o.set_protocol(protocol))
    }

    /// See [`StreamScopeOps::set_service`].
    pub fn set_service(&self, service: &str) -> Result<(), ResourceError> {
        self.ops.as_ref().map_or(Ok(()), |o| o.set_service(service))
    }

    /// Reserves `size` bytes at `priority`, for the caller to release with
    /// [`StreamScope::release_memory`] (see [`ScopeMemory::reserve`] for one that cannot
    /// leak).
    pub fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.memory.reserve_raw(size, priority)
    }

    /// Gives back `size` bytes.
    pub fn release_memory(&self, size: usize) {
        self.memory.release_raw(size)
    }
}

impl Drop for StreamScope {
    fn drop(&mut self) {
        if let Some(o) = &self.ops {
            o.done()
        }
    }
}

impl fmt::Debug for StreamScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamScope")
            .field("limited", &self.ops.is_some())
            .finish()
    }
}

/// Whose budget a memory span is charged to: a peer, a protocol, a service, or several
/// of them (always the system too). For memory that belongs to no one connection or
/// stream: a queue per peer that outlives its streams, a record store that strangers
/// fill, a relay's circuits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanOwner {
    /// The peer the memory is held for.
    pub peer: Option<PeerId>,
    /// The protocol it serves.
    pub protocol: Option<String>,
    /// The service it belongs to.
    pub service: Option<String>,
}

impl SpanOwner {
    /// Memory held for `peer`.
    pub fn peer(peer: PeerId) -> Self {
        SpanOwner {
            peer: Some(peer),
            ..SpanOwner::default()
        }
    }

    /// Memory of `service`.
    pub fn service(service: impl Into<String>) -> Self {
        SpanOwner {
            service: Some(service.into()),
            ..SpanOwner::default()
        }
    }

    /// Also charged to `protocol`.
    pub fn with_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = Some(protocol.into());
        self
    }

    /// Also charged to `service`.
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }
}

/// Usage of one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeStat {
    /// Inbound connections.
    pub conns_inbound: usize,
    /// Outbound connections.
    pub conns_outbound: usize,
    /// Inbound streams.
    pub streams_inbound: usize,
    /// Outbound streams.
    pub streams_outbound: usize,
    /// Bytes reserved.
    pub memory: u64,
    /// File descriptors.
    pub fds: usize,
}

impl ScopeStat {
    /// Connections, both directions.
    pub fn conns(&self) -> usize {
        self.conns_inbound + self.conns_outbound
    }
    /// Streams, both directions.
    pub fn streams(&self) -> usize {
        self.streams_inbound + self.streams_outbound
    }
    /// True when the scope holds nothing.
    pub fn is_empty(&self) -> bool {
        *self == ScopeStat::default()
    }
}

/// A snapshot of a resource manager's usage, for tests and metrics.
#[derive(Debug, Clone, Default)]
pub struct ResourceStat {
    /// Everything.
    pub system: ScopeStat,
    /// Connections and streams not yet attributed to a peer or protocol.
    pub transient: ScopeStat,
    /// Each peer that holds something.
    pub peers: HashMap<PeerId, ScopeStat>,
    /// Each protocol that holds something.
    pub protocols: HashMap<String, ScopeStat>,
    /// Each service that holds something.
    pub services: HashMap<String, ScopeStat>,
    /// Inbound connections still in their handshake.
    pub pending_handshakes: usize,
    /// Source addresses (IPs) with connections or handshakes counted against them.
    pub tracked_ips: usize,
    /// Inbound connections refused at admission, since the start.
    pub refused_admissions: u64,
    /// Idle pending handshakes dropped to make way for a newcomer, since the start.
    pub evictions: u64,
}

/// Decides which connections and streams may open and how much memory they may hold.
pub trait ResourceManager: Send + Sync + 'static {
    /// Admits a new connection, before any handshake byte. For an inbound connection from
    /// an IP address this is where per-address limits apply. `use_fd` says whether it
    /// holds a file descriptor of its own (TCP does; QUIC shares its endpoint's).
    fn open_connection(
        &self,
        direction: Direction,
        use_fd: bool,
        remote: &Multiaddr,
    ) -> Result<ConnScope, ResourceError>;

    /// Admits a new stream on a connection to `peer`.
    fn open_stream(&self, peer: PeerId, direction: Direction)
        -> Result<StreamScope, ResourceError>;

    /// A memory span charged to `owner` (see [`SpanOwner`]) and the system; the span
    /// ends when its last handle and reservation are dropped.
    fn open_span(&self, owner: &SpanOwner) -> ScopeMemory {
        let _ = owner;
        ScopeMemory::unlimited()
    }

    /// True while unauthenticated handshakes hold most of what they may (memory or
    /// count): listeners then make new sources prove their address first (QUIC Retry).
    fn under_pressure(&self) -> bool {
        false
    }

    /// A snapshot of usage (empty for managers that count nothing).
    fn stat(&self) -> ResourceStat {
        ResourceStat::default()
    }
}

/// A resource manager that allows everything and counts nothing, for tests and for
/// parts used on their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullResourceManager;

impl ResourceManager for NullResourceManager {
    fn open_connection(
        &self,
        _direction: Direction,
        _use_fd: bool,
        _remote: &Multiaddr,
    ) -> Result<ConnScope, ResourceError> {
        Ok(ConnScope::unlimited())
    }

    fn open_stream(
        &self,
        _peer: PeerId,
        _direction: Direction,
    ) -> Result<StreamScope, ResourceError> {
        Ok(StreamScope::unlimited())
    }
}

/// A shared resource manager.
pub type SharedResourceManager = Arc<dyn ResourceManager>;

/// The null manager, shared.
pub fn null_resource_manager() -> SharedResourceManager {
    Arc::new(NullResourceManager)
}
