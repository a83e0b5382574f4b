//! Dial back-off: an address that failed is not dialed again for a while (go-libp2p's
//! `DialBackoff`). The wait starts at `backoff_base` and doubles with each further failure
//! up to `backoff_max`; a success to the peer, or the user, clears it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use strata_core::{Multiaddr, PeerId};
use tokio::time::Instant;

struct Entry {
    failures: u32,
    until: Instant,
}

/// Back-off state per peer and address.
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    // A plain mutex: every operation is a short map edit, never held across an await or
    // a callback.
    entries: Mutex<HashMap<PeerId, HashMap<Multiaddr, Entry>>>,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, HashMap<Multiaddr, Entry>>> {
        // No operation leaves the map half-changed, so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while `addr` of `peer` is backing off.
    pub(crate) fn is_backing_off(&self, peer: &PeerId, addr: &Multiaddr) -> bool {
        let now = Instant::now();
        self.lock()
            .get(peer)
            .and_then(|m| m.get(addr))
            .is_some_and(|e| e.until > now)
    }

    /// Records a failure of `addr`: the back-off doubles from `base` up to `max`.
    pub(crate) fn add(&self, peer: PeerId, addr: Multiaddr) {
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.entry(peer).or_default().entry(addr).or_insert(Entry {
            failures: 0,
            until: now,
        });
        let factor = 1u32.checked_shl(entry.failures.min(31)).unwrap_or(u32::MAX);
        let wait = self.base.saturating_mul(factor).min(self.max);
        entry.failures = entry.failures.saturating_add(1);
        entry.until = now + wait;
    }

    /// Forgets entries whose back-off ended more than `max` ago: after a quiet period
    /// that long an address starts afresh, so the map holds only addresses that failed
    /// recently.
    pub(crate) fn gc(&self) {
        let now = Instant::now();
        let max = self.max;
        let mut map = self.lock();
        map.retain(|_, addrs| {
            addrs.retain(|_, e| e.until + max > now);
            !addrs.is_empty()
        });
    }

    /// Entries held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Forgets every back-off of `peer`.
    pub(crate) fn clear(&self, peer: &PeerId) {
        self.lock().remove(peer);
    }

    /// Forgets every back-off.
    pub(crate) fn clear_all(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::identity::keypair_from_seed;

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_cap_and_clears() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(12));
        let p = keypair_from_seed(1).public().to_peer_id();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert!(!b.is_backing_off(&p, &a));
        b.add(p, a.clone());
        assert!(b.is_backing_off(&p, &a));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!b.is_backing_off(&p, &a));
        b.add(p, a.clone()); // 10 s now
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.is_backing_off(&p, &a));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!b.is_backing_off(&p, &a));
        b.add(p, a.clone()); // would be 20 s, capped at 12
        tokio::time::advance(Duration::from_secs(13)).await;
        assert!(!b.is_backing_off(&p, &a));
        b.add(p, a.clone());
        b.clear(&p);
        assert!(!b.is_backing_off(&p, &a));
        b.add(p, a.clone());
        b.clear_all();
        assert!(!b.is_backing_off(&p, &a));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_a_quiet_period() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        let p = keypair_from_seed(1).public().to_peer_id();
        for port in 0..100u16 {
            let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
            b.add(p, a);
        }
        b.gc();
        assert_eq!(b.len(), 100, "still backing off or recently so");
        tokio::time::advance(Duration::from_secs(66)).await;
        b.gc();
        assert_eq!(b.len(), 0);
    }
}
