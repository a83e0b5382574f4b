//! # strata-transport: connections from multiaddrs
//!
//! The first layer above the socket. A transport dials and listens on multiaddrs and hands
//! the upgrader raw byte streams ([`strata_core::RawConnection`]) that know their local
//! and remote multiaddrs; QUIC hands the swarm capable connections
//! ([`strata_core::CapableConn`]) directly, as its handshake authenticates and it muxes.
//!
//! * [`tcp`]: TCP on socket2 and tokio, with SO_REUSEPORT listeners and dials that leave
//!   from the listen port, TCP_NODELAY, keepalive, SO_LINGER 0, and an accept loop that
//!   rides out descriptor exhaustion.
//! * [`quic`]: QUIC v1 on quinn with the libp2p TLS certificate; listeners with the same
//!   accept discipline as upgraded TCP, dials that leave from the listen port.
//! * [`ws`]: WebSocket (`/tcp/N/ws`) over the TCP transport, binary messages carrying
//!   the byte stream, for browsers and js-libp2p.
//! * [`memory`]: in-process `/memory/N` connections for tests.

pub mod memory;
pub mod quic;
pub mod tcp;
pub mod ws;

pub use memory::{MemoryListener, MemoryTransport};
pub use quic::{QuicConfig, QuicTransport, QUIC_HANDSHAKE_MEMORY};
pub use tcp::{TcpConfig, TcpConn, TcpListener, TcpTransport};
pub use ws::{WsConfig, WsConn, WsListener, WsTlsConfig, WsTransport};
