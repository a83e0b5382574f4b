//! The swarm's event stream: a bounded broadcast that never stalls the swarm, and per-peer
//! connectedness changes worked out as connections open and close, never out of order
//! or duplicated.

use std::collections::HashMap;
use std::sync::Mutex;

use strata_core::{Direction, Multiaddr, PeerId};
use tokio::sync::broadcast;

use crate::conn::ConnId;
use crate::notify::DisconnectReason;

/// Whether we have at least one connection to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectedness {
    /// At least one open connection.
    Connected,
    /// No open connection.
    NotConnected,
}

/// Something that happened in the swarm. Receive with [`crate::Swarm::events`]; a
/// receiver that falls more than `events_capacity` behind gets
/// `RecvError::Lagged(missed)` and then the newest events.
#[derive(Debug, Clone)]
pub enum SwarmEvent {
    /// A connection was opened.
    ConnectionOpened {
        /// The remote peer.
        peer: PeerId,
        /// The connection.
        conn: ConnId,
        /// Who opened it.
        direction: Direction,
    },
    /// A connection ended.
    ConnectionClosed {
        /// The remote peer.
        peer: PeerId,
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: DisconnectReason,
    },
    /// The peer went from no connection to one, or from one to none.
    PeerConnectedness {
        /// The peer.
        peer: PeerId,
        /// Its new state.
        connectedness: Connectedness,
    },
    /// A listener started on this address.
    ListenAddr(Multiaddr),
    /// A listener ended; `error` says why when it was not closed on request.
    ListenClosed {
        /// The listener's address.
        addr: Multiaddr,
        /// The error that ended it, if any.
        error: Option<String>,
    },
}

/// Publishes events: cheap, never blocks, holds nothing unbounded. Connectedness changes
/// are worked out as events are published, under one short lock, so they are never out
/// of order or duplicated.
pub(crate) struct Events {
    bcast: broadcast::Sender<SwarmEvent>,
    /// Open connections per peer (bounded by the connections there are).
    open: Mutex<HashMap<PeerId, usize>>,
}

impl Events {
    pub(crate) fn new(capacity: usize) -> Self {
        let (bcast, _) = broadcast::channel(capacity.max(1));
        Events {
            bcast,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SwarmEvent> {
        self.bcast.subscribe()
    }

    pub(crate) fn emit(&self, event: SwarmEvent) {
        // The lock is held while publishing so that a peer's changes reach receivers in
        // the order they happened; sending to a broadcast channel never waits.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let change = match &event {
            SwarmEvent::ConnectionOpened { peer, .. } => {
                let n = open.entry(*peer).or_insert(0);
                *n += 1;
                (*n == 1).then_some((*peer, Connectedness::Connected))
            }
            SwarmEvent::ConnectionClosed { peer, .. } => match open.get_mut(peer) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => {
                    open.remove(peer);
                    Some((*peer, Connectedness::NotConnected))
                }
                None => None,
            },
            _ => None,
        };
        // A send error only means nobody is subscribed right now.
        let _ = self.bcast.send(event);
        if let Some((peer, connectedness)) = change {
            let _ = self.bcast.send(SwarmEvent::PeerConnectedness {
                peer,
                connectedness,
            });
        }
    }
}
