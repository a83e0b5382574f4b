//! The swarm's event stream: a bounded broadcast that never stalls the swarm. One task
//! turns the ordered record of connections opening and closing into per-peer
//! connectedness changes, so those are never out of order or duplicated.

use std::collections::HashMap;

use strata_core::{Direction, Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// Feeds the event task; cheap, never blocks.
pub(crate) struct Events {
    tx: mpsc::UnboundedSender<SwarmEvent>,
    bcast: broadcast::Sender<SwarmEvent>,
}

impl Events {
    pub(crate) fn start(capacity: usize, tracker: &TaskTracker, stop: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (bcast, _) = broadcast::channel(capacity.max(1));
        tracker.spawn(run(rx, bcast.clone(), stop));
        Events { tx, bcast }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SwarmEvent> {
        self.bcast.subscribe()
    }

    pub(crate) fn emit(&self, event: SwarmEvent) {
        // Fails only once the task has ended at close; events after that go nowhere.
        let _ = self.tx.send(event);
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<SwarmEvent>,
    bcast: broadcast::Sender<SwarmEvent>,
    stop: CancellationToken,
) {
    let mut open: HashMap<PeerId, usize> = HashMap::new();
    let mut handle = |event: SwarmEvent| {
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
        let _ = bcast.send(event);
        if let Some((peer, connectedness)) = change {
            let _ = bcast.send(SwarmEvent::PeerConnectedness {
                peer,
                connectedness,
            });
        }
    };
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(e) => handle(e),
                None => return,
            },
            _ = stop.cancelled() => {
                // Publish what is already queued (the last disconnections), then end.
                while let Ok(e) = rx.try_recv() {
                    handle(e);
                }
                return;
            }
        }
    }
}
