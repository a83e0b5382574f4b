//! Observed addresses: what peers tell us, in identify's `observed_addr`, our address
//! looks like from where they are. Behind a NAT that is the only way a node learns its
//! public address. An address is believed once enough distinct observers report it for
//! the same local listener, observers that sit in distinct networks (IPv4 /24, IPv6 /48,
//! by the address their connection comes from, not by what they claim), so that one
//! network cannot make us announce what it likes; it is forgotten when its observers
//! disconnect or stop reporting it. go-libp2p's `ObservedAddrManager` is the model.
//!
//! Everything is bounded: observations count only for our own listeners, at most
//! [`MAX_OBSERVED_PER_LISTENER`] addresses per listener and [`MAX_GROUPS_PER_ADDR`]
//! networks per address are kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use strata_core::{Multiaddr, PeerId, Protocol};
use tokio::time::Instant;

/// Distinct observer networks that make an address believed (go-libp2p's
/// `ActivationThresh`).
pub const ACTIVATION_THRESHOLD: usize = 4;
/// How long an observation counts without being repeated.
pub const OBSERVATION_TTL: Duration = Duration::from_secs(30 * 60);
/// Addresses kept per listener.
pub const MAX_OBSERVED_PER_LISTENER: usize = 16;
/// Observer networks kept per address.
pub const MAX_GROUPS_PER_ADDR: usize = 64;

/// The network an observer's connection comes from: its IPv4 /24 or IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group([u8; 7]);

fn group_of(ip: IpAddr) -> Group {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Group([4, o[0], o[1], o[2], 0, 0, 0])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            Group([6, o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

/// What identifies a listener for observations: its transport stack without the IP,
/// with its port (`/tcp/4001`, `/udp/4001/quic-v1`).
fn listener_key(addr: &Multiaddr) -> Option<String> {
    let mut parts = addr.iter();
    match parts.next()? {
        Protocol::Ip4(_) | Protocol::Ip6(_) => {}
        _ => return None,
    }
    let rest: Multiaddr = parts
        .take_while(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    (!rest.is_empty()).then(|| rest.to_string())
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

#[derive(Default)]
struct Observed {
    /// Per observer network: the last observer and when it last reported.
    groups: HashMap<Group, (PeerId, Instant)>,
}

/// The observed-address manager. See the module docs.
#[derive(Default)]
pub struct ObservedAddrs {
    /// Listener key → observed address → its observers.
    by_listener: Mutex<HashMap<String, HashMap<Multiaddr, Observed>>>,
}

impl ObservedAddrs {
    /// `observer`, connected from `remote`, says that our side of its connection
    /// (`local`, one of `listen_addrs` by transport and port) looks like `observed`.
    /// Ignored unless `local` is a listener's and `observed` has the listener's
    /// transport and port shape, a specific IP, and no peer ID.
    pub fn record(
        &self,
        listen_addrs: &[Multiaddr],
        local: &Multiaddr,
        remote: &Multiaddr,
        observed: &Multiaddr,
        observer: PeerId,
        now: Instant,
    ) {
        let (Some(key), Some(observer_ip), Some(observed_ip)) =
            (listener_key(local), ip_of(remote), ip_of(observed))
        else {
            return;
        };
        if observed_ip.is_unspecified() || observed_ip.is_multicast() {
            return;
        }
        let is_listener = listen_addrs
            .iter()
            .any(|a| listener_key(a).as_deref() == Some(key.as_str()));
        // The observed address must be our listener seen from outside: the same
        // transport and port (a port-reusing dial makes an outbound connection's
        // observed port the listen port too).
        if !is_listener || listener_key(observed).as_deref() != Some(key.as_str()) {
            return;
        }
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        let addrs = all.entry(key).or_default();
        if !addrs.contains_key(observed) {
            prune(addrs, now);
            if addrs.len() >= MAX_OBSERVED_PER_LISTENER {
                return;
            }
        }
        let entry = addrs.entry(observed.clone()).or_default();
        let group = group_of(observer_ip);
        if entry.groups.len() >= MAX_GROUPS_PER_ADDR && !entry.groups.contains_key(&group) {
            return;
        }
        entry.groups.insert(group, (observer, now));
    }

    /// The believed addresses: reported by at least [`ACTIVATION_THRESHOLD`] networks,
    /// each through an observer still connected (`connected`) and within
    /// [`OBSERVATION_TTL`].
    pub fn believed(&self, connected: impl Fn(&PeerId) -> bool, now: Instant) -> Vec<Multiaddr> {
        let mut all = self.by_listener.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for addrs in all.values_mut() {
            for observed in addrs.values_mut() {
                observed.groups.retain(|_, (peer, at)| {
                    now.saturating_duration_since(*at) < OBSERVATION_TTL && connected(peer)
                });
            }
            addrs.retain(|_, o| !o.groups.is_empty());
            for (addr, observed) in addrs.iter() {
                if observed.groups.len() >= ACTIVATION_THRESHOLD {
                    out.push(addr.clone());
                }
            }
        }
        all.retain(|_, addrs| !addrs.is_empty());
        out.sort();
        out
    }
}

fn prune(addrs: &mut HashMap<Multiaddr, Observed>, now: Instant) {
    for observed in addrs.values_mut() {
        observed
            .groups
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < OBSERVATION_TTL);
    }
    addrs.retain(|_, o| !o.groups.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn peer(n: u64) -> PeerId {
        strata_core::identity::peer_id_from_seed(n)
    }

    fn listen() -> Vec<Multiaddr> {
        vec![
            ma("/ip4/0.0.0.0/tcp/4001"),
            ma("/ip4/0.0.0.0/udp/4001/quic-v1"),
        ]
    }

    #[test]
    fn four_networks_make_an_address_believed_and_one_network_never_does() {
        let m = ObservedAddrs::default();
        let now = Instant::now();
        let local = ma("/ip4/10.0.0.2/tcp/4001");
        let public = ma("/ip4/203.0.113.7/tcp/4001");
        // Ten observers from one /24: one network.
        for n in 0..10 {
            let remote = ma(&format!("/ip4/198.51.100.{}/tcp/5000", n + 1));
            m.record(&listen(), &local, &remote, &public, peer(n), now);
        }
        assert!(m.believed(|_| true, now).is_empty());
        // Three more networks: four in all.
        for n in 0..3 {
            let remote = ma(&format!("/ip4/192.0.{}.9/tcp/5000", n + 1));
            m.record(&listen(), &local, &remote, &public, peer(100 + n), now);
        }
        assert_eq!(m.believed(|_| true, now), vec![public.clone()]);
        // Forgotten when its observers disconnect, or stop reporting.
        assert!(m.believed(|p| *p == peer(0), now).is_empty());
        let m2 = ObservedAddrs::default();
        for n in 0..4 {
            let remote = ma(&format!("/ip4/192.0.{}.9/tcp/5000", n + 1));
            m2.record(&listen(), &local, &remote, &public, peer(n), now);
        }
        assert_eq!(m2.believed(|_| true, now).len(), 1);
        assert!(m2
            .believed(|_| true, now + OBSERVATION_TTL + Duration::from_secs(1))
            .is_empty());
    }

    #[test]
    fn only_our_listeners_seen_from_outside_are_recorded() {
        let m = ObservedAddrs::default();
        let now = Instant::now();
        for n in 0..4u64 {
            let remote = ma(&format!("/ip4/192.0.{}.9/tcp/5000", n + 1));
            // An outbound connection from an ephemeral port: not a listener.
            m.record(
                &listen(),
                &ma("/ip4/10.0.0.2/tcp/53211"),
                &remote,
                &ma("/ip4/203.0.113.7/tcp/53211"),
                peer(n),
                now,
            );
            // A different port than the listener's, or another transport.
            m.record(
                &listen(),
                &ma("/ip4/10.0.0.2/tcp/4001"),
                &remote,
                &ma("/ip4/203.0.113.7/tcp/9999"),
                peer(n),
                now,
            );
            m.record(
                &listen(),
                &ma("/ip4/10.0.0.2/tcp/4001"),
                &remote,
                &ma("/ip4/203.0.113.7/udp/4001/quic-v1"),
                peer(n),
                now,
            );
            // Unspecified.
            m.record(
                &listen(),
                &ma("/ip4/10.0.0.2/tcp/4001"),
                &remote,
                &ma("/ip4/0.0.0.0/tcp/4001"),
                peer(n),
                now,
            );
            // QUIC seen as QUIC: fine.
            m.record(
                &listen(),
                &ma("/ip4/10.0.0.2/udp/4001/quic-v1"),
                &ma(&format!("/ip4/192.0.{}.9/udp/5000/quic-v1", n + 1)),
                &ma("/ip4/203.0.113.7/udp/4001/quic-v1"),
                peer(n),
                now,
            );
        }
        assert_eq!(
            m.believed(|_| true, now),
            vec![ma("/ip4/203.0.113.7/udp/4001/quic-v1")]
        );
    }

    #[test]
    fn a_flood_of_claimed_addresses_stays_bounded() {
        let m = ObservedAddrs::default();
        let now = Instant::now();
        let local = ma("/ip4/10.0.0.2/tcp/4001");
        for n in 0..10_000u64 {
            let remote = ma(&format!(
                "/ip4/{}.{}.{}.1/tcp/5000",
                1 + n % 200,
                n / 200 % 250,
                n % 7
            ));
            let claimed = ma(&format!(
                "/ip4/203.0.{}.{}/tcp/4001",
                n / 250 % 250,
                n % 250
            ));
            m.record(&listen(), &local, &remote, &claimed, peer(n), now);
        }
        let all = m.by_listener.lock().unwrap();
        assert_eq!(all.len(), 1);
        let addrs = all.values().next().unwrap();
        assert!(addrs.len() <= MAX_OBSERVED_PER_LISTENER);
        assert!(addrs
            .values()
            .all(|o| o.groups.len() <= MAX_GROUPS_PER_ADDR));
    }
}
