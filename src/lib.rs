//! # Strata
//!
//! A go-libp2p-style, libp2p-compatible peer-to-peer networking framework for Rust on
//! tokio. This facade re-exports the layers:
//!
//! * [`core`]: identity, multiaddr helpers, the traits the layers meet on, errors;
//! * [`rcmgr`]: the resource manager (limits per scope, admission per source address);
//! * [`transport`]: TCP (with SO_REUSEPORT), QUIC and in-memory transports;
//! * [`upgrader`]: multistream-select, TLS and Noise, yamux, the accept queue;
//! * [`swarm`]: listeners, connections, dialing, notifiees;
//! * [`host`]: the API applications hold ([`Host`], [`HostBuilder`]);
//! * [`kad`]: the Kademlia DHT on a host;
//! * [`pubsub`]: GossipSub on a host;
//! * [`metrics`]: an HTTP endpoint serving a Prometheus registry.

pub mod metrics;

pub use strata_core as core;
pub use strata_host as host;
pub use strata_kad as kad;
pub use strata_pubsub as pubsub;
pub use strata_rcmgr as rcmgr;
pub use strata_swarm as swarm;
pub use strata_transport as transport;
pub use strata_upgrader as upgrader;

pub use strata_core::{identity, Multiaddr, PeerId, Stream};
pub use strata_host::{Host, HostBuilder};
