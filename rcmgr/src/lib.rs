//! # strata-rcmgr: the resource manager
//!
//! Implements [`strata_core::ResourceManager`] after go-libp2p's `rcmgr`: every
//! connection and stream belongs to scopes (system, transient, peer, connection, stream,
//! protocol, service), each with limits on connections, streams, memory and descriptors,
//! and every inbound connection is admitted before its handshake by caps per source IP
//! and subnet. The transports, the upgrader and the swarm reserve through the interface
//! in core; the host builder wires this implementation in, with defaults scaled to the
//! machine ([`LimitConfig::autoscaled`]). [`BasicResourceManager`] is the type; its
//! [`ResourceManager::stat`](strata_core::ResourceManager::stat) is a snapshot of usage.
//!
//! Depends on core only.

mod admission;
mod ipnet;
mod limits;
mod manager;

pub use ipnet::{IpNet, IpNetError};
pub use limits::{AdmissionLimits, LimitConfig, LimitError, ScopeLimit};
pub use manager::BasicResourceManager;
