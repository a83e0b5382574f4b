//! Listening: one tracked accept task per listener, closing one listener, listeners that
//! die on their own, and the listen addresses with unspecified IPs expanded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_core::accept::AcceptStats;
use strata_core::{BoxListener, Multiaddr, Protocol};
use tokio_util::sync::CancellationToken;

use crate::error::SwarmError;
use crate::events::SwarmEvent;
use crate::swarm::Swarm;

struct Entry {
    requested: Multiaddr,
    addr: Multiaddr,
    stats: Option<AcceptStats>,
    stop: CancellationToken,
    ended: CancellationToken,
}

/// The swarm's listeners, by an internal ID.
pub(crate) struct Listeners {
    next: AtomicU64,
    // Short map edits only; never held across an await or a callback.
    map: Mutex<HashMap<u64, Entry>>,
}

impl Listeners {
    pub(crate) fn new() -> Self {
        Listeners {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// True for an address with port 0 (or `/memory/0`): each listen gets a new port, so
/// asking twice is not a duplicate.
fn picks_a_port(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::Tcp(0) | Protocol::Udp(0) | Protocol::Memory(0)))
}

impl Swarm {
    /// Listens on each address. One result per address, in order: the real address
    /// listened on (port 0 resolved), or why not. One failure does not stop the others.
    pub async fn listen(
        &self,
        addrs: impl IntoIterator<Item = Multiaddr>,
    ) -> Vec<Result<Multiaddr, SwarmError>> {
        let mut out = Vec::new();
        for addr in addrs {
            out.push(self.listen_one(addr).await);
        }
        out
    }

    async fn listen_one(&self, addr: Multiaddr) -> Result<Multiaddr, SwarmError> {
        self.check_open()?;
        {
            let map = self.0.listeners.lock();
            if map
                .values()
                .any(|e| e.addr == addr || (e.requested == addr && !picks_a_port(&addr)))
            {
                return Err(SwarmError::AlreadyListening(addr));
            }
        }
        let transport = self
            .transport_for_listen(&addr)
            .ok_or_else(|| SwarmError::NoTransport(addr.clone()))?;
        let mut listener = transport
            .listen(&addr)
            .await
            .map_err(|e| SwarmError::Listen {
                addr: addr.clone(),
                error: Arc::new(e),
            })?;
        let real = listener.multiaddr().clone();
        let id = self.0.listeners.next.fetch_add(1, Ordering::Relaxed);
        let stop = self.0.listeners_stop.child_token();
        let ended = CancellationToken::new();
        {
            let mut map = self.0.listeners.lock();
            // Checked again: the swarm may have closed while the transport was listening.
            if self.is_closed() {
                drop(map);
                listener.close().await;
                return Err(SwarmError::Closed);
            }
            map.insert(
                id,
                Entry {
                    requested: addr,
                    addr: real.clone(),
                    stats: listener.accept_stats(),
                    stop: stop.clone(),
                    ended: ended.clone(),
                },
            );
        }
        self.emit(SwarmEvent::ListenAddr(real.clone()));
        let told = self.notifier().listen(&real);
        let real_out = real.clone();
        let swarm = self.clone();
        let force = self.0.force.clone();
        self.0.tracker.spawn(async move {
            let _ended = ended.drop_guard();
            let error = swarm.accept_loop(&mut listener, &stop).await;
            // A listener's close may wait on its endpoint draining (QUIC); past a
            // shutdown's deadline the listener is dropped instead, which lets go at once.
            tokio::select! {
                _ = listener.close() => {}
                _ = force.cancelled() => {}
            }
            drop(listener);
            let removed = swarm.0.listeners.lock().remove(&id);
            drop(removed);
            if let Some(e) = &error {
                tracing::warn!(addr = %real, error = %e, "listener failed");
            }
            swarm.emit(SwarmEvent::ListenClosed {
                addr: real.clone(),
                error: error.map(|e| e.to_string()),
            });
            swarm.notifier().listen_close(&real, &told);
        });
        Ok(real_out)
    }

    async fn accept_loop(
        &self,
        listener: &mut BoxListener,
        stop: &CancellationToken,
    ) -> Option<strata_core::TransportError> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = listener.accept() => match accepted {
                    // A refused connection is closed and logged inside add_conn.
                    Ok(conn) => drop(self.add_conn(conn)),
                    Err(e) => return Some(e),
                },
            }
        }
    }

    /// Stops listening on `addr` (the real address, or the one asked for) and returns
    /// once the listener is closed and `listen_close` is queued.
    pub async fn listen_close(&self, addr: &Multiaddr) -> Result<(), SwarmError> {
        self.check_open()?;
        let found = {
            let map = self.0.listeners.lock();
            map.values()
                .find(|e| &e.addr == addr || &e.requested == addr)
                .map(|e| (e.stop.clone(), e.ended.clone()))
        };
        let (stop, ended) = found.ok_or_else(|| SwarmError::NotListening(addr.clone()))?;
        stop.cancel();
        ended.cancelled().await;
        Ok(())
    }

    /// Each listener's accept queue figures (queued, handshakes in flight, refusals), by
    /// the address it listens on.
    pub fn accept_stats(&self) -> Vec<(Multiaddr, AcceptStats)> {
        let map = self.0.listeners.lock();
        map.values()
            .filter_map(|e| Some((e.addr.clone(), e.stats.clone()?)))
            .collect()
    }

    /// The addresses listened on, as the transports report them (`0.0.0.0` stays as is).
    pub fn listen_addresses(&self) -> Vec<Multiaddr> {
        let map = self.0.listeners.lock();
        let mut v: Vec<_> = map.iter().map(|(id, e)| (*id, e.addr.clone())).collect();
        v.sort_by_key(|(id, _)| *id);
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// The listen addresses with `/ip4/0.0.0.0` and `/ip6/::` expanded to the address of
    /// every interface up on this host (from `getifaddrs`), as go-libp2p's
    /// `InterfaceListenAddresses`.
    pub fn interface_listen_addresses(&self) -> Vec<Multiaddr> {
        // Read only if some listener needs expanding (identify asks on every connection).
        let mut ifaddrs: Option<Arc<[IpAddr]>> = None;
        let mut out = Vec::new();
        for addr in self.listen_addresses() {
            let mut iter = addr.iter();
            let unspecified_v4 =
                matches!(iter.next(), Some(Protocol::Ip4(ip)) if ip.is_unspecified());
            let unspecified_v6 =
                matches!(addr.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_unspecified());
            if !unspecified_v4 && !unspecified_v6 {
                out.push(addr);
                continue;
            }
            let rest: Vec<Protocol<'_>> = addr.iter().skip(1).collect();
            for ip in ifaddrs.get_or_insert_with(interface_ips).iter() {
                let head = match ip {
                    IpAddr::V4(v4) if unspecified_v4 => Protocol::Ip4(*v4),
                    IpAddr::V6(v6) if unspecified_v6 => Protocol::Ip6(*v6),
                    _ => continue,
                };
                let mut m = Multiaddr::empty().with(head);
                for p in &rest {
                    m = m.with(p.clone());
                }
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }
}

/// How long a read of the interfaces is reused. Reading them is a netlink dump (tens of
/// microseconds of kernel time), and identify wants them on every new connection.
const INTERFACE_CACHE_TTL: Duration = Duration::from_secs(5);

/// [`read_interface_ips`], read at most once per [`INTERFACE_CACHE_TTL`] in this process.
pub(crate) fn interface_ips() -> Arc<[IpAddr]> {
    static CACHE: Mutex<Option<(Instant, Arc<[IpAddr]>)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((read_at, ips)) = &*cache {
        if read_at.elapsed() < INTERFACE_CACHE_TTL {
            return ips.clone();
        }
    }
    let ips: Arc<[IpAddr]> = read_interface_ips().into();
    *cache = Some((Instant::now(), ips.clone()));
    ips
}

/// The IP addresses of this host's interfaces that are running (`IFF_RUNNING` on Unix),
/// link-local addresses (169.254/16, fe80::/10) left out: they are not reachable beyond
/// the link, and need a scope to dial. Falls back to the loopback addresses if the
/// interfaces cannot be read.
fn read_interface_ips() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => {
            let mut out: Vec<IpAddr> = Vec::new();
            for ip in interfaces
                .iter()
                .filter(|i| i.is_oper_up() && !i.is_link_local())
                .map(|i| i.ip())
            {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            out
        }
        Err(_) => vec![
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_ips_are_running_routable_and_unique() {
        let ips = read_interface_ips();
        // Loopback is up on every machine this runs on.
        assert!(
            ips.contains(&IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            "{ips:?}"
        );
        for ip in &ips {
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            assert!(!link_local, "link-local {ip} listed");
        }
        let mut unique = ips.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ips.len(), "{ips:?}");
        // The cached read is the same list, and stays the same object while fresh.
        let cached = interface_ips();
        assert_eq!(&cached[..], &ips[..]);
        assert!(Arc::ptr_eq(&cached, &interface_ips()));
    }
}
