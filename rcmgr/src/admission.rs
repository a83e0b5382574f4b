//! Per-address bookkeeping for admission: handshakes and connections per IP and per
//! subnet, and the pending handshakes in arrival order, so that the oldest idle one can
//! make way for a newcomer.
//!
//! Every map here is keyed by something that holds a connection: an entry exists only
//! while a connection of that address (or subnet) does, so the maps are bounded by the
//! connection limits however many addresses knock.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::ipnet::IpNet;
use crate::limits::AdmissionLimits;

/// How many pending handshakes an eviction looks at, oldest first. Idle sockets stay at
/// the front (live handshakes finish and leave), so the oldest idle one is found early; the
/// bound keeps a newcomer's cost small when none is idle.
const EVICTION_SCAN: usize = 256;

/// Handshakes in flight, connections and the memory their connections hold, of one
/// address or subnet.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AddrCounts {
    pub(crate) pending: usize,
    pub(crate) conns: usize,
    pub(crate) memory: u64,
}

impl AddrCounts {
    fn is_empty(&self) -> bool {
        self.pending == 0 && self.conns == 0 && self.memory == 0
    }
}

/// Where an inbound connection from an IP address is counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddrKey {
    pub(crate) ip: IpAddr,
    pub(crate) subnet: IpNet,
}

/// Which cap refused a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrCap {
    IpHandshakes,
    IpConns,
    SubnetHandshakes,
    SubnetConns,
}

#[derive(Debug, Default)]
pub(crate) struct Admission {
    ips: HashMap<IpAddr, AddrCounts>,
    subnets: HashMap<IpNet, AddrCounts>,
    /// Pending connection IDs per subnet; IDs grow with time, so the set is in arrival
    /// order.
    pending_by_subnet: HashMap<IpNet, BTreeSet<u64>>,
    /// Every pending inbound connection ID, in arrival order.
    pending_all: BTreeSet<u64>,
}

impl Admission {
    /// The key of `ip`, or `None` when the allowlist exempts it.
    pub(crate) fn key(limits: &AdmissionLimits, ip: IpAddr) -> Option<AddrKey> {
        if limits.allowlist.iter().any(|n| n.contains(ip)) {
            return None;
        }
        let ip = crate::ipnet::canonical(ip);
        let prefix = if ip.is_ipv4() {
            limits.ipv4_subnet_prefix
        } else {
            limits.ipv6_subnet_prefix
        };
        Some(AddrKey {
            ip,
            subnet: IpNet::around(ip, prefix),
        })
    }

    /// The first cap a new pending connection from `key` would break, if any.
    pub(crate) fn over_cap(&self, limits: &AdmissionLimits, key: &AddrKey) -> Option<AddrCap> {
        let ip = self.ips.get(&key.ip).copied().unwrap_or_default();
        if ip.pending >= limits.handshakes_per_ip {
            return Some(AddrCap::IpHandshakes);
        }
        if ip.conns >= limits.conns_per_ip {
            return Some(AddrCap::IpConns);
        }
        let net = self.subnets.get(&key.subnet).copied().unwrap_or_default();
        if net.pending >= limits.handshakes_per_subnet {
            return Some(AddrCap::SubnetHandshakes);
        }
        if net.conns >= limits.conns_per_subnet {
            return Some(AddrCap::SubnetConns);
        }
        None
    }

    /// Counts a new pending inbound connection `id`, from `key` unless it is exempt.
    pub(crate) fn add_pending(&mut self, id: u64, key: Option<&AddrKey>) {
        self.pending_all.insert(id);
        let Some(key) = key else { return };
        let ip = self.ips.entry(key.ip).or_default();
        ip.pending += 1;
        ip.conns += 1;
        let net = self.subnets.entry(key.subnet).or_default();
        net.pending += 1;
        net.conns += 1;
        self.pending_by_subnet
            .entry(key.subnet)
            .or_default()
            .insert(id);
    }

    /// Pending connection `id` finished its handshake, or ended during it. It stays
    /// counted as a connection until [`Admission::remove_conn`].
    pub(crate) fn end_pending(&mut self, id: u64, key: Option<&AddrKey>) {
        self.pending_all.remove(&id);
        let Some(key) = key else { return };
        if let Some(ip) = self.ips.get_mut(&key.ip) {
            ip.pending = ip.pending.saturating_sub(1);
        }
        if let Some(net) = self.subnets.get_mut(&key.subnet) {
            net.pending = net.pending.saturating_sub(1);
        }
        if let Some(set) = self.pending_by_subnet.get_mut(&key.subnet) {
            set.remove(&id);
            if set.is_empty() {
                self.pending_by_subnet.remove(&key.subnet);
            }
        }
    }

    /// A connection from `key` ended (call [`Admission::end_pending`] first if it was
    /// still pending). Memory its buffers still hold stays counted until released.
    pub(crate) fn remove_conn(&mut self, key: Option<&AddrKey>) {
        let Some(key) = key else { return };
        if let Some(ip) = self.ips.get_mut(&key.ip) {
            ip.conns = ip.conns.saturating_sub(1);
        }
        if let Some(net) = self.subnets.get_mut(&key.subnet) {
            net.conns = net.conns.saturating_sub(1);
        }
        self.forget_if_empty(key);
    }

    /// The memory held by connections from `key` (address, subnet).
    pub(crate) fn memory(&self, key: &AddrKey) -> (u64, u64) {
        (
            self.ips.get(&key.ip).map_or(0, |c| c.memory),
            self.subnets.get(&key.subnet).map_or(0, |c| c.memory),
        )
    }

    /// Counts `size` more bytes held by a connection from `key`.
    pub(crate) fn add_memory(&mut self, key: &AddrKey, size: u64) {
        self.ips.entry(key.ip).or_default().memory += size;
        self.subnets.entry(key.subnet).or_default().memory += size;
    }

    /// Counts `size` bytes fewer held by a connection from `key`.
    pub(crate) fn sub_memory(&mut self, key: &AddrKey, size: u64) {
        if let Some(ip) = self.ips.get_mut(&key.ip) {
            ip.memory = ip.memory.saturating_sub(size);
        }
        if let Some(net) = self.subnets.get_mut(&key.subnet) {
            net.memory = net.memory.saturating_sub(size);
        }
        self.forget_if_empty(key);
    }

    /// Drops the entries of `key` that count nothing any more.
    fn forget_if_empty(&mut self, key: &AddrKey) {
        if self.ips.get(&key.ip).is_some_and(AddrCounts::is_empty) {
            self.ips.remove(&key.ip);
        }
        if self
            .subnets
            .get(&key.subnet)
            .is_some_and(AddrCounts::is_empty)
        {
            self.subnets.remove(&key.subnet);
        }
    }

    /// The oldest pending connection (in `subnet`, or anywhere) for which `evictable`
    /// says yes, among the oldest [`EVICTION_SCAN`]. Pending connections exempt from the
    /// address caps (allowlisted) are found only when `subnet` is `None`.
    pub(crate) fn oldest(
        &self,
        subnet: Option<&IpNet>,
        evictable: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let set = match subnet {
            Some(net) => self.pending_by_subnet.get(net)?,
            None => &self.pending_all,
        };
        set.iter()
            .copied()
            .take(EVICTION_SCAN)
            .find(|id| evictable(*id))
    }

    /// Inbound connections in their handshake.
    pub(crate) fn pending(&self) -> usize {
        self.pending_all.len()
    }

    /// Distinct source IPs counted.
    pub(crate) fn tracked_ips(&self) -> usize {
        self.ips.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_reported_in_order_and_entries_vanish() {
        let limits = AdmissionLimits {
            handshakes_per_ip: 2,
            conns_per_ip: 3,
            handshakes_per_subnet: 3,
            conns_per_subnet: 4,
            ..AdmissionLimits::default()
        };
        let mut a = Admission::default();
        let k1 = Admission::key(&limits, "10.0.0.1".parse().unwrap()).unwrap();
        let k2 = Admission::key(&limits, "10.0.0.2".parse().unwrap()).unwrap();
        a.add_pending(1, Some(&k1));
        a.add_pending(2, Some(&k1));
        assert_eq!(a.over_cap(&limits, &k1), Some(AddrCap::IpHandshakes));
        a.end_pending(1, Some(&k1));
        a.add_pending(3, Some(&k1));
        a.end_pending(2, Some(&k1));
        assert_eq!(a.over_cap(&limits, &k1), Some(AddrCap::IpConns));
        assert_eq!(a.over_cap(&limits, &k2), None);
        a.add_pending(4, Some(&k2));
        assert_eq!(a.over_cap(&limits, &k2), Some(AddrCap::SubnetConns));
        assert_eq!(a.oldest(Some(&k1.subnet), |_| true), Some(3));
        assert_eq!(a.oldest(None, |id| id != 3), Some(4));
        for (id, k) in [(3, &k1), (4, &k2)] {
            a.end_pending(id, Some(k));
        }
        for k in [&k1, &k1, &k1, &k2] {
            a.remove_conn(Some(k));
        }
        assert_eq!(a.tracked_ips(), 0);
        assert_eq!(a.pending(), 0);
        assert!(a.subnets.is_empty() && a.pending_by_subnet.is_empty());
    }

    #[test]
    fn allowlisted_addresses_have_no_key() {
        let limits = AdmissionLimits {
            allowlist: vec!["10.0.0.0/8".parse().unwrap()],
            ..AdmissionLimits::default()
        };
        assert!(Admission::key(&limits, "10.9.9.9".parse().unwrap()).is_none());
        let k = Admission::key(&limits, "2001:db8:1:2::3".parse().unwrap()).unwrap();
        assert_eq!(k.subnet.to_string(), "2001:db8:1::/56");
    }
}
