//! Which listen port an outbound dial should leave from.
//!
//! With port reuse on, a dial binds to the port of a matching listener so the remote sees
//! our listen port (as NAT traversal and go-libp2p peers expect). The registry holds the
//! addresses of the live listeners; a listener removes itself when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The listen addresses of one transport's live listeners.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListenRegistry {
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl ListenRegistry {
    /// Records a listener; the guard removes it again.
    pub(crate) fn register(&self, addr: SocketAddr) -> RegistryGuard {
        self.lock().push(addr);
        RegistryGuard {
            registry: self.clone(),
            addr,
        }
    }

    /// The local address to bind a dial to `remote` to: a loopback listener of the same
    /// family for a loopback target; else a listener on a specific (not loopback) address
    /// of the same family, else one on the unspecified address.
    ///
    /// A listener whose port is the target's, on the target's IP or unspecified, is
    /// skipped: binding to it would connect the socket to itself (TCP simultaneous open).
    /// One on another address with the same port number is a different endpoint.
    pub(crate) fn local_for(&self, remote: SocketAddr) -> Option<SocketAddr> {
        let addrs = self.lock();
        let self_connect = |a: &SocketAddr| {
            a.port() == remote.port() && (a.ip() == remote.ip() || a.ip().is_unspecified())
        };
        let same_family = || {
            addrs
                .iter()
                .filter(|a| a.is_ipv4() == remote.is_ipv4() && !self_connect(a))
        };
        if remote.ip().is_loopback() {
            if let Some(a) = same_family().find(|a| a.ip().is_loopback()) {
                return Some(*a);
            }
        } else if let Some(a) =
            same_family().find(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
        {
            // A listener on a specific address is the address the user chose to be
            // reached at: a dial leaves from it, so that a NAT maps it as it maps the
            // listener (what peers observe is then the listen port).
            return Some(*a);
        }
        same_family().find(|a| a.ip().is_unspecified()).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SocketAddr>> {
        // The vector stays consistent even if a holder panicked: each operation is one push
        // or one remove.
        self.addrs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a listener's address from the registry when dropped.
#[derive(Debug)]
pub(crate) struct RegistryGuard {
    registry: ListenRegistry,
    addr: SocketAddr,
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        let mut addrs = self.registry.lock();
        if let Some(i) = addrs.iter().position(|a| *a == self.addr) {
            addrs.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn picks_by_family_and_scope() {
        let reg = ListenRegistry::default();
        assert_eq!(reg.local_for(sa("127.0.0.1:1")), None);
        let any4 = reg.register(sa("0.0.0.0:4000"));
        assert_eq!(reg.local_for(sa("10.0.0.1:1")), Some(sa("0.0.0.0:4000")));
        assert_eq!(reg.local_for(sa("127.0.0.1:1")), Some(sa("0.0.0.0:4000")));
        assert_eq!(reg.local_for(sa("[::1]:1")), None, "no IPv6 listener");
        let lo4 = reg.register(sa("127.0.0.1:5000"));
        assert_eq!(reg.local_for(sa("127.0.0.1:1")), Some(sa("127.0.0.1:5000")));
        assert_eq!(reg.local_for(sa("10.0.0.1:1")), Some(sa("0.0.0.0:4000")));
        drop(any4);
        assert_eq!(
            reg.local_for(sa("10.0.0.1:1")),
            None,
            "a loopback listener cannot reach out"
        );
        drop(lo4);
        assert_eq!(reg.local_for(sa("127.0.0.1:1")), None);
        // A listener on a specific address reaches out from it (before the wildcard).
        let _any = reg.register(sa("0.0.0.0:4100"));
        let _lan = reg.register(sa("10.77.1.2:4200"));
        assert_eq!(reg.local_for(sa("10.78.1.2:1")), Some(sa("10.77.1.2:4200")));
        assert_eq!(reg.local_for(sa("127.0.0.1:1")), Some(sa("0.0.0.0:4100")));
    }

    #[test]
    fn never_picks_the_target_itself() {
        let reg = ListenRegistry::default();
        let _lo = reg.register(sa("127.0.0.1:5000"));
        let _any = reg.register(sa("0.0.0.0:6000"));
        assert_eq!(
            reg.local_for(sa("127.0.0.1:5000")),
            Some(sa("0.0.0.0:6000"))
        );
        assert_eq!(reg.local_for(sa("10.1.1.1:6000")), None);
        assert_eq!(
            reg.local_for(sa("127.0.0.1:6000")),
            Some(sa("127.0.0.1:5000"))
        );
        // Another loopback address with the target's port number is another endpoint.
        let reg = ListenRegistry::default();
        let _other = reg.register(sa("127.0.0.2:5000"));
        assert_eq!(
            reg.local_for(sa("127.0.0.1:5000")),
            Some(sa("127.0.0.2:5000"))
        );
    }
}
