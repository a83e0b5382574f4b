//! # strata-core: what every layer of Strata shares
//!
//! The bottom of the stack. It holds peer identity (keys and peer IDs from
//! `libp2p-identity`), multiaddr helpers, the typed errors, the libp2p TLS certificate
//! and its rustls verifiers (shared by TLS and QUIC), a bounded cache of verified
//! credentials (TLS and Noise), and the traits the layers meet on:
//! a transport makes [`RawConnection`]s; the upgrader turns them into [`CapableConn`]s
//! (authenticated and multiplexed, as QUIC connections are born); the swarm and the host
//! above only ever see [`Transport`], [`Listener`], [`CapableConn`] and [`Stream`].

pub mod accept;
pub mod addr;
pub mod conn;
pub mod error;
pub mod gater;
pub mod identity;
pub mod rcmgr;
pub mod sys;
pub mod tls;
pub mod verified;

pub use conn::{
    BoxCapableConn, BoxListener, BoxRawConn, BoxRawListener, CapableConn, ConnState, Direction,
    Listener, RawConnection, RawListener, RawTransport, Stream, StreamIo, Transport,
};
pub use error::{AddrError, CloseReason, ConnError, SecurityError, TransportError, UpgradeError};
pub use gater::{AllowAll, ConnectionGater, GateStage};
pub use identity::{Keypair, PeerId, PublicKey};
pub use multiaddr::{self, Multiaddr, Protocol};
pub use rcmgr::{
    ConnScope, HandshakeProgress, NullResourceManager, Reservation, ResourceError, ResourceManager,
    ScopeMemory, SharedResourceManager, SpanOwner, StreamScope,
};
