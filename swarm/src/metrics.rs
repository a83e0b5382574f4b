//! Hooks a metrics backend implements to hear what the swarm does, as go-libp2p's
//! `swarm.MetricsTracer`. The swarm calls them inline on its own tasks, so an
//! implementation must only count and return.

use strata_core::Multiaddr;

use crate::conn::Conn;
use crate::error::AddrDialError;
use crate::notify::DisconnectReason;

/// Receives the swarm's connection and dial outcomes. Every method has an empty default.
pub trait MetricsTracer: Send + Sync + 'static {
    /// A connection was taken in: upgraded, checked and about to be announced.
    fn opened_connection(&self, _conn: &Conn) {}
    /// A connection the swarm held has ended.
    fn closed_connection(&self, _conn: &Conn, _reason: &DisconnectReason) {}
    /// One address could not be dialed (or was not tried, with the reason).
    fn failed_dialing(&self, _addr: &Multiaddr, _error: &AddrDialError) {}
    /// A dial to a peer or to one address has finished.
    fn dial_completed(&self, _success: bool) {}
}
