//! # strata-host: the API applications hold
//!
//! The top layer. A [`Host`] composes a swarm (connections, streams) with a protocol mux,
//! a peerstore and the standard services, and gives the application go-libp2p's plain
//! API: its peer ID and addresses, a [`Peerstore`] of what it knows about other peers,
//! handlers by protocol ID, `new_stream(peer, protocols)`, `connect`, `ping`, events, and
//! identify, ping and perf served for it. [`HostBuilder`] composes a host from the parts
//! you choose.
//!
//! The services also work on any [`strata_core::Stream`] on their own:
//!
//! * [`peerstore`]: addresses with TTLs, keys, protocols, agent versions, latency;
//!   bounded per peer and safe to share among tasks.
//! * [`identify`]: `/ipfs/id/1.0.0` and `/ipfs/id/push/1.0.0`, a pure codec plus
//!   send / receive (with the key checked against the connection's peer) and
//!   [`identify::apply_to_peerstore`].
//! * [`ping`]: `/ipfs/ping/1.0.0`, client and echo service.
//! * [`perf`]: `/perf/1.0.0`, client and service, streamed through a fixed buffer.
//!
//! Every read of remote input has a size limit and a deadline; errors are typed.
//!
//! With [`HostBuilder::metrics`] the host counts connections, handshakes, dials, streams
//! and bytes by protocol into a `prometheus-client` registry (re-exported as
//! [`prometheus_client`]).

pub mod builder;
pub mod connmgr;
pub mod error;
pub mod events;
pub mod framing;
pub mod host;
pub mod identify;
pub mod messaging;
mod metrics;
mod mux;
pub mod observed;
pub mod perf;
pub mod ping;
pub mod services;
mod varint;

pub use builder::{BuildError, HostBuilder, ListenOutcome, Security, DEFAULT_AGENT_VERSION};
pub use connmgr::{ConnManager, ConnManagerConfig};
pub use error::HostError;
pub use events::HostEvent;
pub use host::{Host, ProtocolNotConfirmed};
pub use identify::{
    apply_to_peerstore, recv_identify, send_identify, IdentifyError, IdentifyInfo,
    IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL, MAX_IDENTIFY_MSG_LEN,
};
pub use messaging::{MessageConfig, MessageHandler, MessageStats, SendError};
pub use mux::{ProtocolMatch, NEGOTIATION_TIMEOUT};
pub use perf::{perf_client, perf_service, PerfError, PerfResult, PerfServed, PERF_PROTOCOL};
pub use ping::{ping_once, ping_service, PingError, PING_PROTOCOL};
/// The metrics crate [`HostBuilder::metrics`] registers into.
pub use prometheus_client;
pub use services::{ServiceContext, ServiceError, ServiceInfo, ServicePolicy, ServiceState};
/// The peerstore lives with the swarm, which dials from it; the host re-exports it.
pub use strata_swarm::peerstore;
pub use strata_swarm::peerstore::{
    Peerstore, PeerstoreConfig, PeerstoreError, ADDRESS_TTL, CONNECTED_ADDR_TTL,
    PERMANENT_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, TEMP_ADDR_TTL,
};
