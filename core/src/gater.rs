//! The connection gater: the application's veto at each stage of a connection's life, as
//! go-libp2p's `ConnectionGater`. It lives in core because QUIC (a transport) and the
//! upgrader both consult it.

use multiaddr::Multiaddr;

use crate::conn::{CapableConn, Direction};
use crate::identity::PeerId;

/// Where a gater refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStage {
    /// Before dialing a peer.
    PeerDial,
    /// Before dialing an address.
    AddrDial,
    /// An inbound connection, before any handshake.
    Accept,
    /// After the security handshake, with the remote peer known.
    Secured,
    /// After the muxer is set up.
    Upgraded,
}

impl std::fmt::Display for GateStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateStage::PeerDial => "peer dial",
            GateStage::AddrDial => "address dial",
            GateStage::Accept => "accept",
            GateStage::Secured => "secured",
            GateStage::Upgraded => "upgraded",
        })
    }
}

/// Decides, at each stage, whether a connection may go on. Every method allows by default;
/// returning `false` refuses, and the connection is closed with a typed error.
///
/// The methods are called on the connection's own task and must not block.
pub trait ConnectionGater: Send + Sync + 'static {
    /// May we dial this peer at all?
    fn intercept_peer_dial(&self, _peer: &PeerId) -> bool {
        true
    }
    /// May we dial this address (of this peer, when known)?
    fn intercept_addr_dial(&self, _peer: Option<&PeerId>, _addr: &Multiaddr) -> bool {
        true
    }
    /// May this inbound connection go on to the handshake?
    fn intercept_accept(&self, _local: &Multiaddr, _remote: &Multiaddr) -> bool {
        true
    }
    /// May this connection, now authenticated, go on?
    fn intercept_secured(
        &self,
        _direction: Direction,
        _peer: &PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> bool {
        true
    }
    /// May this fully upgraded connection be handed to the swarm?
    fn intercept_upgraded(&self, _conn: &dyn CapableConn) -> bool {
        true
    }
}

/// A gater that allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl ConnectionGater for AllowAll {}
