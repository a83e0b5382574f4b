//! The resource manager's interface, after go-libp2p's `network.ResourceManager`.
//!
//! Every layer accounts what it holds to a scope: a connection is opened (and admitted)
//! with [`ResourceManager::open_connection`] before any handshake byte, becomes its peer's
//! once the security handshake names the peer ([`ConnScope::set_peer`]), and reserves the
//! memory of its buffers and muxer windows from its scope. A stream is opened with
//! [`ResourceManager::open_stream`] and later charged to its protocol and service. Scopes
//! release everything they hold when dropped.
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
pub mod priority {
    /// Optional growth (a larger muxer window): up to about 40% of the limit.
    pub const LOW: u8 = 101;
    /// Up to about 60% of the limit.
    pub const MEDIUM: u8 = 152;
    /// Up to about 80% of the limit.
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

/// What a connection's scope does, implemented by a resource manager. Every method may be
/// called from any task; none blocks.
pub trait ConnScopeOps: Send + Sync + 'static {
    /// The security handshake named the peer: the connection moves from the transient
    /// scope to the peer's, which may refuse it (too many connections to that peer).
    fn set_peer(&self, peer: PeerId) -> Result<(), ResourceError>;
    /// The remote completed its first protocol negotiation: it is a live handshake now,
    /// no longer an idle socket that may be evicted for a newcomer.
    fn handshake_progress(&self);
    /// The handshake has finished: the connection no longer counts as pending.
    fn established(&self);
    /// Reserves `size` bytes at `priority` (see [`priority`]).
    fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError>;
    /// Gives back `size` bytes reserved earlier.
    fn release_memory(&self, size: usize);
    /// The connection has ended: release everything it holds. Called once, on drop.
    fn done(&self);
}

/// The scope of one connection. Dropping it releases the connection's slot and every byte
/// it reserved.
pub struct ConnScope {
    ops: Option<Box<dyn ConnScopeOps>>,
    evicted: CancellationToken,
}

impl ConnScope {
    /// A scope run by `ops`. The manager cancels `evicted` to ask the holder to drop an
    /// idle pending handshake in favour of a newcomer.
    pub fn new(ops: Box<dyn ConnScopeOps>, evicted: CancellationToken) -> Self {
        ConnScope {
            ops: Some(ops),
            evicted,
        }
    }

    /// A scope that allows everything and counts nothing.
    pub fn unlimited() -> Self {
        ConnScope {
            ops: None,
            evicted: CancellationToken::new(),
        }
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

    /// See [`ConnScopeOps::established`].
    pub fn established(&self) {
        if let Some(o) = &self.ops {
            o.established()
        }
    }

    /// See [`ConnScopeOps::reserve_memory`].
    pub fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.ops
            .as_ref()
            .map_or(Ok(()), |o| o.reserve_memory(size, priority))
    }

    /// See [`ConnScopeOps::release_memory`].
    pub fn release_memory(&self, size: usize) {
        if let Some(o) = &self.ops {
            o.release_memory(size)
        }
    }

    /// Resolves when the manager evicts this connection (an idle pending handshake made
    /// way for a newcomer). The holder then drops the connection.
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

/// Memory reserved from a connection's scope, given back when dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    scope: Arc<ConnScope>,
    size: usize,
}

impl MemoryReservation {
    /// Reserves `size` bytes from `scope` at `priority`.
    pub fn new(scope: &Arc<ConnScope>, size: usize, priority: u8) -> Result<Self, ResourceError> {
        scope.reserve_memory(size, priority)?;
        Ok(MemoryReservation {
            scope: scope.clone(),
            size,
        })
    }

    /// The bytes held.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.scope.release_memory(self.size)
    }
}

/// What a stream's scope does, implemented by a resource manager.
pub trait StreamScopeOps: Send + Sync + 'static {
    /// The stream's protocol is known: it is charged to that protocol's scope, which may
    /// refuse it.
    fn set_protocol(&self, protocol: &str) -> Result<(), ResourceError>;
    /// The stream serves `service`: charged to that service's scope, which may refuse it.
    fn set_service(&self, service: &str) -> Result<(), ResourceError>;
    /// Reserves `size` bytes at `priority`.
    fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError>;
    /// Gives back `size` bytes.
    fn release_memory(&self, size: usize);
    /// The stream has ended. Called once, on drop.
    fn done(&self);
}

/// The scope of one stream. Dropping it releases the stream's slot.
pub struct StreamScope {
    ops: Option<Box<dyn StreamScopeOps>>,
}

impl StreamScope {
    /// A scope run by `ops`.
    pub fn new(ops: Box<dyn StreamScopeOps>) -> Self {
        StreamScope { ops: Some(ops) }
    }

    /// A scope that allows everything.
    pub fn unlimited() -> Self {
        StreamScope { ops: None }
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

    /// See [`StreamScopeOps::reserve_memory`].
    pub fn reserve_memory(&self, size: usize, priority: u8) -> Result<(), ResourceError> {
        self.ops
            .as_ref()
            .map_or(Ok(()), |o| o.reserve_memory(size, priority))
    }

    /// See [`StreamScopeOps::release_memory`].
    pub fn release_memory(&self, size: usize) {
        if let Some(o) = &self.ops {
            o.release_memory(size)
        }
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
