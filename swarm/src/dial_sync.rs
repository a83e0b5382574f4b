//! One dial per peer at a time (go-libp2p's `DialSync`): concurrent callers for the same
//! peer wait on the one attempt in flight and all get its result.

use std::collections::HashMap;
use std::sync::Mutex;

use strata_core::PeerId;
use tokio::sync::watch;

use crate::conn::Conn;
use crate::error::SwarmError;

/// A dial's outcome, shared by every caller that waited on it.
pub(crate) type DialResult = Result<Conn, SwarmError>;

type Slot = watch::Receiver<Option<DialResult>>;

/// The dials in flight, by peer.
pub(crate) struct DialSync {
    // Short map edits only; never held across an await.
    active: Mutex<HashMap<PeerId, Slot>>,
}

/// Either a dial to wait on, or the right (and duty) to run one and publish its result.
pub(crate) enum Joined {
    /// Another caller's dial is in flight.
    Wait(Slot),
    /// We start the dial: send the result on the sender, then call `finish`.
    Start(watch::Sender<Option<DialResult>>, Slot),
}

impl DialSync {
    pub(crate) fn new() -> Self {
        DialSync {
            active: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Slot>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(&self, peer: PeerId) -> Joined {
        let mut map = self.lock();
        if let Some(slot) = map.get(&peer) {
            return Joined::Wait(slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(peer, rx.clone());
        Joined::Start(tx, rx)
    }

    /// Forgets the dial to `peer`: the next caller starts a new one.
    pub(crate) fn finish(&self, peer: &PeerId) {
        self.lock().remove(peer);
    }
}

/// Waits for the shared result. A dial task that ended without one (cancelled at close)
/// reads as [`SwarmError::Closed`].
pub(crate) async fn wait(mut slot: Slot) -> DialResult {
    match slot.wait_for(Option::is_some).await {
        Ok(r) => r.clone().unwrap_or(Err(SwarmError::Closed)),
        Err(_) => Err(SwarmError::Closed),
    }
}
