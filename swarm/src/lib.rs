//! # strata-swarm: listeners, connections, dialing and notifiees
//!
//! The swarm sits on top of capable transports (an upgraded TCP or memory transport, or
//! QUIC). It listens on addresses, accepting connections on one tracked task per
//! listener; it keeps a bounded peerstore and dials peers from its addresses (one dial per peer at a time, addresses ranked QUIC first and
//! started with a stagger, per-address and per-call timeouts, back-off after failures, a
//! global and a per-peer bound on dials in flight, the connection gater consulted); it
//! keeps the connections by peer, admits streams through the resource manager under a
//! per-connection stream limit, and picks the best connection for new streams; it hands every inbound stream to the stream handler in its
//! own task; and it tells notifiees and event subscribers about listeners and
//! connections without ever letting a slow or panicking one hold it up. `close()` ends
//! every task it started. It hands the host connections and streams.
//!
//! Names follow go-libp2p's `p2p/net/swarm`: `Swarm`, `listen`, `dial_peer`,
//! `new_stream`, `Notifiee`, `NotifyBundle`, `DialBackoff`, `DialSync`.

mod backoff;
pub mod config;
pub mod conn;
pub mod dial;
mod dial_sync;
pub mod error;
pub mod events;
mod limiter;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod peerstore;
mod shutdown;
pub mod swarm;

pub use config::SwarmConfig;
pub use conn::{Conn, ConnId};
pub use dial::{DialOptions, StreamOptions};
pub use error::{AddrDialError, AddrErrors, Limit, SwarmError};
pub use events::{Connectedness, SwarmEvent};
pub use metrics::MetricsTracer;
pub use notify::{DisconnectReason, Notifiee, NotifieeStats, NotifyBundle, NotifyHandle};
pub use peerstore::{Peerstore, PeerstoreConfig, PeerstoreError};
pub use swarm::{AddrFilter, StreamHandler, Swarm};
