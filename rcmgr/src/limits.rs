//! Limits per scope, admission caps per source address, their defaults scaled to the
//! machine, and the checks that refuse contradictory settings.

use std::collections::HashMap;

use strata_core::PeerId;

use crate::ipnet::IpNet;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The limits of one scope. A count of `usize::MAX` (memory `u64::MAX`) is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeLimit {
    /// Connections, both directions.
    pub conns: usize,
    /// Inbound connections.
    pub conns_inbound: usize,
    /// Outbound connections.
    pub conns_outbound: usize,
    /// Streams, both directions.
    pub streams: usize,
    /// Inbound streams.
    pub streams_inbound: usize,
    /// Outbound streams.
    pub streams_outbound: usize,
    /// Bytes of memory.
    pub memory: u64,
    /// File descriptors.
    pub fds: usize,
}

impl ScopeLimit {
    /// No limit on anything.
    pub const UNLIMITED: ScopeLimit = ScopeLimit {
        conns: usize::MAX,
        conns_inbound: usize::MAX,
        conns_outbound: usize::MAX,
        streams: usize::MAX,
        streams_inbound: usize::MAX,
        streams_outbound: usize::MAX,
        memory: u64::MAX,
        fds: usize::MAX,
    };

    /// Only a memory limit.
    pub const fn memory_only(memory: u64) -> ScopeLimit {
        ScopeLimit {
            memory,
            ..ScopeLimit::UNLIMITED
        }
    }
}

/// Caps per source address, checked when a connection is accepted, before any handshake
/// byte. A pending handshake counts both as a handshake and as a connection of its
/// address until it finishes; afterwards only as a connection.
///
/// IPv4 addresses are grouped in subnets of `ipv4_subnet_prefix` bits, IPv6 addresses in
/// subnets of `ipv6_subnet_prefix` bits (one site: ISPs hand out /48 to /56). Addresses in
/// `allowlist` are exempt from these caps (the scope limits still apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Handshakes in flight from one IP address.
    pub handshakes_per_ip: usize,
    /// Connections (pending or established) from one IP address.
    pub conns_per_ip: usize,
    /// Handshakes in flight from one subnet.
    pub handshakes_per_subnet: usize,
    /// Connections (pending or established) from one subnet.
    pub conns_per_subnet: usize,
    /// Bytes the connections from one IP address may hold together (their muxer windows
    /// and buffers), so that one address with many fresh identities cannot claim the
    /// system's memory.
    pub memory_per_ip: u64,
    /// Bytes the connections from one subnet may hold together.
    pub memory_per_subnet: u64,
    /// Prefix length of an IPv4 subnet.
    pub ipv4_subnet_prefix: u8,
    /// Prefix length of an IPv6 subnet.
    pub ipv6_subnet_prefix: u8,
    /// Networks exempt from the per-address caps.
    pub allowlist: Vec<IpNet>,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            handshakes_per_ip: 8,
            conns_per_ip: 32,
            handshakes_per_subnet: 64,
            conns_per_subnet: 256,
            memory_per_ip: 96 * MIB,
            memory_per_subnet: 384 * MIB,
            ipv4_subnet_prefix: 24,
            ipv6_subnet_prefix: 56,
            allowlist: Vec::new(),
        }
    }
}

/// Every limit of a [`crate::BasicResourceManager`].
///
/// The transient scope holds connections before the security handshake names their peer
/// (and streams before their protocol is known); its connection limit is therefore the
/// global bound on pending handshakes. Memory is charged to the connection, then its peer
/// (or the transient scope), then the system; stream counts to the peer, the transient
/// scope or the protocol, the service, and the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitConfig {
    /// Everything together.
    pub system: ScopeLimit,
    /// Connections not yet authenticated, streams not yet negotiated.
    pub transient: ScopeLimit,
    /// Each peer, unless `peer_overrides` names it.
    pub peer: ScopeLimit,
    /// Limits of particular peers.
    pub peer_overrides: HashMap<PeerId, ScopeLimit>,
    /// Each connection (its memory: security buffers and muxer windows).
    pub conn: ScopeLimit,
    /// Each stream (its memory).
    pub stream: ScopeLimit,
    /// Each protocol, unless `protocol_overrides` names it.
    pub protocol: ScopeLimit,
    /// Limits of particular protocols.
    pub protocol_overrides: HashMap<String, ScopeLimit>,
    /// Each service, unless `service_overrides` names it.
    pub service: ScopeLimit,
    /// Limits of particular services.
    pub service_overrides: HashMap<String, ScopeLimit>,
    /// Caps per source address.
    pub admission: AdmissionLimits,
}

impl Default for LimitConfig {
    /// [`LimitConfig::autoscaled`].
    fn default() -> Self {
        Self::autoscaled()
    }
}

/// Limits that contradict each other, or that would let nothing through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A limit that must let something through is zero.
    #[error("resource limit {0} must be greater than zero")]
    Zero(&'static str),
    /// A part is larger than the whole it belongs to, so the whole would always bind first.
    #[error("resource limit {part} ({part_value}) exceeds {whole} ({whole_value})")]
    Exceeds {
        /// The smaller scope's limit.
        part: String,
        /// Its value.
        part_value: u64,
        /// The larger scope's limit.
        whole: String,
        /// Its value.
        whole_value: u64,
    },
    /// A subnet prefix is longer than the address.
    #[error("subnet prefix {name} /{prefix} is too long (at most /{max})")]
    Prefix {
        /// Which prefix.
        name: &'static str,
        /// The value given.
        prefix: u8,
        /// The longest allowed.
        max: u8,
    },
}

/// A part's limit above its whole's could never be reached: a mistake. A part with no
/// limit of its own (the maximum value) simply inherits the whole's.
fn not_above(part: &str, part_value: u64, whole: &str, whole_value: u64) -> Result<(), LimitError> {
    let unlimited = part_value == u64::MAX || part_value == usize::MAX as u64;
    if !unlimited && part_value > whole_value {
        return Err(LimitError::Exceeds {
            part: part.to_owned(),
            part_value,
            whole: whole.to_owned(),
            whole_value,
        });
    }
    Ok(())
}

fn nonzero(name: &'static str, v: u64) -> Result<(), LimitError> {
    if v == 0 {
        return Err(LimitError::Zero(name));
    }
    Ok(())
}

fn u(v: usize) -> u64 {
    v as u64
}

impl LimitConfig {
    /// Defaults scaled to this machine: its physical memory and its descriptor limit
    /// (see [`LimitConfig::scaled_for`]).
    pub fn autoscaled() -> Self {
        Self::scaled_for(
            strata_core::sys::total_memory(),
            strata_core::sys::fd_limit(),
        )
    }

    /// Defaults for a machine with `memory` bytes and a limit of `fd_limit` descriptors,
    /// after go-libp2p's autoscaling:
    ///
    /// | scope | limit | value |
    /// |---|---|---|
    /// | system | memory | 1/8 of the machine's memory, at least 128 MiB |
    /// | system | descriptors | half the descriptor limit |
    /// | system | connections | 128 + 64 per GiB of memory, at most the descriptors; inbound 3/4 of that |
    /// | system | streams | 64 per connection, in each direction |
    /// | transient | connections (the bound on pending handshakes) | a quarter of the descriptor limit, at least 64 |
    /// | transient | streams, memory | 1/8 of the system's |
    /// | peer | connections | 8 in each direction, 8 in all |
    /// | peer | streams | 512 inbound, 1024 outbound, 1024 in all |
    /// | peer | memory | 1/32 of the system's, between 64 MiB and 1 GiB |
    /// | connection | memory | 64 MiB (the muxer windows and security buffers) |
    /// | stream | memory | 16 MiB |
    /// | protocol | streams | half the system's |
    /// | service | — | none |
    /// | per IP | handshakes, connections | 8, 32 |
    /// | per IP | memory | the peer's memory |
    /// | per subnet (IPv4 /24, IPv6 /56) | handshakes, connections | 64, 256 |
    /// | per subnet | memory | 1/8 of the system's |
    ///
    /// Any descriptor limit works, however small: connections and pending handshakes
    /// never get a floor above the descriptors there are (at least 16 connections).
    pub fn scaled_for(memory: u64, fd_limit: u64) -> Self {
        let system_memory = (memory / 8).max(128 * MIB);
        let fds = (fd_limit / 2).max(32) as usize;
        let gib = (memory / GIB) as usize;
        let conns = (128 + 64 * gib).min(fds).max(16);
        let streams = conns.saturating_mul(64);
        let system = ScopeLimit {
            conns,
            conns_inbound: conns * 3 / 4,
            conns_outbound: conns,
            streams,
            streams_inbound: streams,
            streams_outbound: streams,
            memory: system_memory,
            fds,
        };
        // At least 64 pending handshakes where the system allows that many connections;
        // a machine with very few descriptors gets what it has (clamp's floor must not
        // pass its ceiling).
        let pending = ((fd_limit / 4) as usize).max(64).min(conns);
        let transient = ScopeLimit {
            conns: pending,
            conns_inbound: pending,
            conns_outbound: pending,
            streams: streams / 8,
            streams_inbound: streams / 8,
            streams_outbound: streams / 8,
            memory: system_memory / 8,
            fds: pending.min(fds),
        };
        let peer = ScopeLimit {
            conns: 8,
            conns_inbound: 8,
            conns_outbound: 8,
            streams: 1024,
            streams_inbound: 512,
            streams_outbound: 1024,
            memory: (system_memory / 32).clamp(64 * MIB, GIB).min(system_memory),
            fds: 8,
        };
        let protocol = ScopeLimit {
            streams: streams / 2,
            streams_inbound: streams / 2,
            streams_outbound: streams / 2,
            ..ScopeLimit::UNLIMITED
        };
        LimitConfig {
            system,
            transient,
            peer,
            peer_overrides: HashMap::new(),
            conn: ScopeLimit::memory_only((64 * MIB).min(peer.memory)),
            stream: ScopeLimit::memory_only((16 * MIB).min(peer.memory)),
            protocol,
            protocol_overrides: HashMap::new(),
            service: ScopeLimit::UNLIMITED,
            service_overrides: HashMap::new(),
            admission: AdmissionLimits {
                memory_per_ip: peer.memory,
                memory_per_subnet: (system_memory / 8).max(peer.memory),
                ..AdmissionLimits::default()
            },
        }
    }

    /// Limits that let everything through (no admission caps either): for tests and for
    /// nodes behind a gate of their own.
    pub fn unlimited() -> Self {
        LimitConfig {
            system: ScopeLimit::UNLIMITED,
            transient: ScopeLimit::UNLIMITED,
            peer: ScopeLimit::UNLIMITED,
            peer_overrides: HashMap::new(),
            conn: ScopeLimit::UNLIMITED,
            stream: ScopeLimit::UNLIMITED,
            protocol: ScopeLimit::UNLIMITED,
            protocol_overrides: HashMap::new(),
            service: ScopeLimit::UNLIMITED,
            service_overrides: HashMap::new(),
            admission: AdmissionLimits {
                handshakes_per_ip: usize::MAX,
                conns_per_ip: usize::MAX,
                handshakes_per_subnet: usize::MAX,
                conns_per_subnet: usize::MAX,
                memory_per_ip: u64::MAX,
                memory_per_subnet: u64::MAX,
                ..AdmissionLimits::default()
            },
        }
    }

    /// Refuses limits that contradict each other or let nothing through.
    pub fn validate(&self) -> Result<(), LimitError> {
        let s = &self.system;
        nonzero("system.conns", u(s.conns))?;
        nonzero("system.streams", u(s.streams))?;
        nonzero("system.memory", s.memory)?;
        nonzero("system.fds", u(s.fds))?;
        nonzero("transient.conns", u(self.transient.conns))?;
        nonzero("peer.conns", u(self.peer.conns))?;
        nonzero("conn.memory", self.conn.memory)?;
        let a = &self.admission;
        nonzero("admission.handshakes_per_ip", u(a.handshakes_per_ip))?;
        nonzero(
            "admission.handshakes_per_subnet",
            u(a.handshakes_per_subnet),
        )?;
        nonzero("admission.memory_per_ip", a.memory_per_ip)?;
        not_above(
            "admission.memory_per_ip",
            a.memory_per_ip,
            "admission.memory_per_subnet",
            a.memory_per_subnet,
        )?;
        for (name, scope) in [
            ("system", &self.system),
            ("transient", &self.transient),
            ("peer", &self.peer),
        ] {
            check_directions(name, scope)?;
        }
        for scope in self.peer_overrides.values() {
            check_directions("peer_override", scope)?;
        }
        not_above(
            "transient.conns",
            u(self.transient.conns),
            "system.conns",
            u(s.conns),
        )?;
        not_above(
            "transient.memory",
            self.transient.memory,
            "system.memory",
            s.memory,
        )?;
        not_above("peer.conns", u(self.peer.conns), "system.conns", u(s.conns))?;
        not_above(
            "peer.streams",
            u(self.peer.streams),
            "system.streams",
            u(s.streams),
        )?;
        not_above("peer.memory", self.peer.memory, "system.memory", s.memory)?;
        not_above(
            "conn.memory",
            self.conn.memory,
            "peer.memory",
            self.peer.memory,
        )?;
        not_above(
            "stream.memory",
            self.stream.memory,
            "peer.memory",
            self.peer.memory,
        )?;
        not_above(
            "admission.handshakes_per_ip",
            u(a.handshakes_per_ip),
            "admission.conns_per_ip",
            u(a.conns_per_ip),
        )?;
        not_above(
            "admission.handshakes_per_subnet",
            u(a.handshakes_per_subnet),
            "admission.conns_per_subnet",
            u(a.conns_per_subnet),
        )?;
        not_above(
            "admission.handshakes_per_ip",
            u(a.handshakes_per_ip),
            "admission.handshakes_per_subnet",
            u(a.handshakes_per_subnet),
        )?;
        not_above(
            "admission.conns_per_ip",
            u(a.conns_per_ip),
            "admission.conns_per_subnet",
            u(a.conns_per_subnet),
        )?;
        if a.ipv4_subnet_prefix > 32 {
            return Err(LimitError::Prefix {
                name: "ipv4_subnet_prefix",
                prefix: a.ipv4_subnet_prefix,
                max: 32,
            });
        }
        if a.ipv6_subnet_prefix > 128 {
            return Err(LimitError::Prefix {
                name: "ipv6_subnet_prefix",
                prefix: a.ipv6_subnet_prefix,
                max: 128,
            });
        }
        Ok(())
    }

    /// The limits of `peer`.
    pub(crate) fn peer_limit(&self, peer: &PeerId) -> &ScopeLimit {
        self.peer_overrides.get(peer).unwrap_or(&self.peer)
    }

    /// The limits of `protocol`.
    pub(crate) fn protocol_limit(&self, protocol: &str) -> &ScopeLimit {
        self.protocol_overrides
            .get(protocol)
            .unwrap_or(&self.protocol)
    }

    /// The limits of `service`.
    pub(crate) fn service_limit(&self, service: &str) -> &ScopeLimit {
        self.service_overrides.get(service).unwrap_or(&self.service)
    }
}

/// A directional limit above the scope's total could never be reached.
fn check_directions(name: &str, s: &ScopeLimit) -> Result<(), LimitError> {
    let pairs = [
        ("conns_inbound", s.conns_inbound, "conns", s.conns),
        ("conns_outbound", s.conns_outbound, "conns", s.conns),
        ("streams_inbound", s.streams_inbound, "streams", s.streams),
        ("streams_outbound", s.streams_outbound, "streams", s.streams),
    ];
    for (part, pv, whole, wv) in pairs {
        not_above(
            &format!("{name}.{part}"),
            u(pv),
            &format!("{name}.{whole}"),
            u(wv),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_scale_with_the_machine_and_are_valid() {
        let small = LimitConfig::scaled_for(GIB, 1024);
        small.validate().unwrap();
        assert_eq!(small.system.memory, 128 * MIB);
        assert_eq!(small.system.fds, 512);
        assert_eq!(small.system.conns, 192);
        // A quarter of 1024 descriptors is 256, but never more than the system's connections.
        assert_eq!(small.transient.conns, 192);

        let big = LimitConfig::scaled_for(24 * GIB, 20_000);
        big.validate().unwrap();
        assert_eq!(big.system.memory, 3 * GIB);
        assert_eq!(big.system.conns, 128 + 64 * 24);
        assert_eq!(big.system.conns_inbound, big.system.conns * 3 / 4);
        assert_eq!(big.transient.conns, 1664);
        assert_eq!(big.peer.memory, 96 * MIB);
        assert!(big.conn.memory <= big.peer.memory);

        LimitConfig::autoscaled().validate().unwrap();
        LimitConfig::unlimited().validate().unwrap();
    }

    #[test]
    fn contradictions_are_refused() {
        let base = LimitConfig::scaled_for(4 * GIB, 4096);
        let mut c = base.clone();
        c.system.conns_inbound = c.system.conns + 1;
        assert!(matches!(
            c.validate(),
            Err(LimitError::Exceeds { ref part, .. }) if part == "system.conns_inbound"
        ));
        let mut c = base.clone();
        c.peer.memory = c.system.memory + 1;
        assert!(matches!(
            c.validate(),
            Err(LimitError::Exceeds { ref part, .. }) if part == "peer.memory"
        ));
        let mut c = base.clone();
        c.admission.handshakes_per_ip = c.admission.conns_per_ip + 1;
        assert!(matches!(c.validate(), Err(LimitError::Exceeds { .. })));
        let mut c = base.clone();
        c.admission.conns_per_ip = c.admission.conns_per_subnet + 1;
        assert!(matches!(c.validate(), Err(LimitError::Exceeds { .. })));
        let mut c = base.clone();
        c.transient.conns = c.system.conns + 1;
        assert!(matches!(c.validate(), Err(LimitError::Exceeds { .. })));
        let mut c = base.clone();
        c.system.memory = 0;
        assert_eq!(c.validate(), Err(LimitError::Zero("system.memory")));
        let mut c = base.clone();
        c.admission.handshakes_per_ip = 0;
        assert_eq!(
            c.validate(),
            Err(LimitError::Zero("admission.handshakes_per_ip"))
        );
        let mut c = base.clone();
        c.admission.ipv6_subnet_prefix = 129;
        assert!(matches!(c.validate(), Err(LimitError::Prefix { .. })));
        let mut c = base;
        c.peer_overrides.insert(
            strata_core::identity::keypair_from_seed(1)
                .public()
                .to_peer_id(),
            ScopeLimit {
                streams_inbound: 10,
                streams: 5,
                ..ScopeLimit::UNLIMITED
            },
        );
        assert!(matches!(c.validate(), Err(LimitError::Exceeds { .. })));
    }
}
