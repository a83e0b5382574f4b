//! The resource manager on its own: admission caps, eviction, scope limits, memory
//! priorities, and that every count returns to zero when the scopes are dropped.

use strata_core::identity::keypair_from_seed;
use strata_core::rcmgr::{priority, Resource};
use strata_core::{Direction, Multiaddr, PeerId, ResourceManager, SpanOwner};
use strata_rcmgr::{AdmissionLimits, BasicResourceManager, LimitConfig, ScopeLimit};

fn peer(seed: u64) -> PeerId {
    keypair_from_seed(seed).public().to_peer_id()
}

fn from(ip: &str) -> Multiaddr {
    format!("/ip4/{ip}/tcp/40000").parse().unwrap()
}

fn manager(admission: AdmissionLimits) -> BasicResourceManager {
    let mut limits = LimitConfig::unlimited();
    limits.admission = admission;
    BasicResourceManager::new(limits).unwrap()
}

fn caps(ip_hs: usize, ip_conns: usize, net_hs: usize, net_conns: usize) -> AdmissionLimits {
    AdmissionLimits {
        handshakes_per_ip: ip_hs,
        conns_per_ip: ip_conns,
        handshakes_per_subnet: net_hs,
        conns_per_subnet: net_conns,
        ..AdmissionLimits::default()
    }
}

#[test]
fn an_address_over_its_cap_is_refused_and_others_still_pass() {
    let m = manager(caps(2, 4, 100, 100));
    let a1 = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap();
    let _a2 = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap();
    let e = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap_err();
    assert_eq!(e.scope, "ip:10.0.0.2");
    assert_eq!(e.resource, Resource::PendingHandshakes);
    assert_eq!(e.limit, 2);
    let _b = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.3"))
        .unwrap();
    // A finished handshake frees its handshake slot but keeps its connection slot.
    a1.established();
    let _a3 = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap();
    assert_eq!(m.stat().pending_handshakes, 3);
    assert_eq!(m.stat().refused_admissions, 1);
    // Outbound connections are ours to make: no per-address caps.
    for _ in 0..5 {
        std::mem::forget(
            m.open_connection(Direction::Outbound, true, &from("10.0.0.2"))
                .unwrap(),
        );
    }
}

#[test]
fn a_full_subnet_evicts_its_oldest_idle_handshake_for_a_newcomer() {
    let m = manager(caps(2, 2, 3, 3));
    let first = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap();
    let second = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.3"))
        .unwrap();
    let third = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.4"))
        .unwrap();
    // `first` has spoken: it is a live handshake, not an idle socket.
    first.handshake_progress();
    let newcomer = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.5"))
        .unwrap();
    assert!(!first.is_evicted());
    assert!(second.is_evicted(), "the oldest idle handshake makes way");
    assert!(!third.is_evicted());
    assert_eq!(m.stat().evictions, 1);
    // Its slot was given back at once, and dropping the evicted scope gives nothing back
    // twice.
    drop(second);
    assert_eq!(m.stat().pending_handshakes, 3);
    // Another subnet is untouched by all this.
    let _other = m
        .open_connection(Direction::Inbound, true, &from("10.0.1.2"))
        .unwrap();
    third.handshake_progress();
    newcomer.handshake_progress();
    let e = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.6"))
        .unwrap_err();
    assert_eq!(e.scope, "subnet:10.0.0.0/24");
    assert_eq!(m.stat().pending_handshakes, 4);
}

#[test]
fn the_global_pending_bound_evicts_idle_handshakes_from_anywhere() {
    let mut limits = LimitConfig::unlimited();
    limits.transient.conns = 2;
    limits.transient.conns_inbound = 2;
    let m = BasicResourceManager::new(limits).unwrap();
    let a = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.2"))
        .unwrap();
    let b = m
        .open_connection(Direction::Inbound, true, &from("10.9.0.2"))
        .unwrap();
    a.handshake_progress();
    let _c = m
        .open_connection(Direction::Inbound, true, &from("10.7.0.2"))
        .unwrap();
    assert!(b.is_evicted() && !a.is_evicted());
    // Once nothing idle is left, the newcomer is refused.
    _c.handshake_progress();
    let e = m
        .open_connection(Direction::Inbound, true, &from("10.8.0.2"))
        .unwrap_err();
    assert_eq!(e.scope, "transient");
}

#[test]
fn allowlisted_networks_bypass_the_address_caps() {
    let mut admission = caps(1, 1, 1, 1);
    admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let m = manager(admission);
    let held: Vec<_> = (0..20)
        .map(|_| {
            m.open_connection(Direction::Inbound, true, &from("127.0.0.1"))
                .unwrap()
        })
        .collect();
    let _one = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .unwrap();
    assert!(m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .is_err());
    assert_eq!(m.stat().tracked_ips, 1);
    drop(held);
}

#[test]
fn system_and_peer_connection_limits_apply_at_their_stage() {
    let mut limits = LimitConfig::unlimited();
    limits.system.conns_inbound = 2;
    limits.peer.conns = 1;
    limits.peer.conns_inbound = 1;
    limits.peer.conns_outbound = 1;
    let m = BasicResourceManager::new(limits).unwrap();
    let a = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .unwrap();
    let b = m
        .open_connection(Direction::Inbound, true, &from("10.0.1.1"))
        .unwrap();
    a.handshake_progress();
    b.handshake_progress();
    let e = m
        .open_connection(Direction::Inbound, true, &from("10.0.2.1"))
        .unwrap_err();
    assert_eq!(
        (e.scope.as_str(), e.resource),
        ("system", Resource::InboundConnections)
    );
    // Outbound is limited separately.
    let out = m
        .open_connection(Direction::Outbound, true, &from("10.0.3.1"))
        .unwrap();
    a.set_peer(peer(1)).unwrap();
    let e = b.set_peer(peer(1)).unwrap_err();
    assert_eq!(e.scope, format!("peer:{}", peer(1)));
    out.set_peer(peer(2)).unwrap();
    let stat = m.stat();
    assert_eq!(stat.system.conns_inbound, 2);
    assert_eq!(stat.transient.conns_inbound, 1, "b is still transient");
    assert_eq!(stat.peers[&peer(1)].conns_inbound, 1);
    assert_eq!(stat.system.fds, 3);
    drop((a, b, out));
    let stat = m.stat();
    assert!(
        stat.system.is_empty() && stat.transient.is_empty(),
        "{stat:?}"
    );
    assert!(stat.peers.is_empty());
    assert_eq!(stat.tracked_ips, 0);
}

#[test]
fn memory_is_charged_up_the_scopes_with_priorities() {
    let mut limits = LimitConfig::unlimited();
    limits.conn = ScopeLimit::memory_only(1000);
    limits.peer = ScopeLimit::memory_only(1500);
    limits.system.memory = 10_000;
    let m = BasicResourceManager::new(limits).unwrap();
    let c = m
        .open_connection(Direction::Outbound, true, &from("10.0.0.1"))
        .unwrap();
    c.reserve_memory(300, priority::ALWAYS).unwrap();
    assert_eq!(m.stat().transient.memory, 300);
    c.set_peer(peer(1)).unwrap();
    let stat = m.stat();
    assert_eq!(
        (stat.transient.memory, stat.peers[&peer(1)].memory),
        (0, 300)
    );
    // LOW may use about 40% of the connection's 1000 bytes: 300 + 200 is too much.
    let e = c.reserve_memory(200, priority::LOW).unwrap_err();
    assert_eq!((e.scope.as_str(), e.resource), ("conn", Resource::Memory));
    c.reserve_memory(600, priority::ALWAYS).unwrap();
    assert!(c.reserve_memory(200, priority::ALWAYS).is_err());
    // The peer's limit binds across its connections.
    let d = m
        .open_connection(Direction::Outbound, true, &from("10.0.0.2"))
        .unwrap();
    d.set_peer(peer(1)).unwrap();
    let e = d.reserve_memory(700, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, format!("peer:{}", peer(1)));
    c.release_memory(900);
    d.reserve_memory(700, priority::ALWAYS).unwrap();
    drop(c);
    d.release_memory(700);
    drop(d);
    assert!(m.stat().system.is_empty());
}

#[test]
fn memory_outlives_the_slot_until_released() {
    let m = manager(caps(8, 32, 64, 256));
    let c = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .unwrap();
    c.set_peer(peer(1)).unwrap();
    c.established();
    let held = c.memory().reserve(4096, priority::ALWAYS).unwrap();
    drop(c);
    // The connection is gone as a connection, but its buffer is still charged, to the
    // peer, the address and the system.
    let stat = m.stat();
    assert_eq!(stat.system.conns(), 0);
    assert_eq!(stat.system.memory, 4096);
    assert_eq!(stat.peers[&peer(1)].memory, 4096);
    assert_eq!(stat.tracked_ips, 1);
    // No new reservation on an ended connection.
    assert!(held.memory().reserve(1, priority::ALWAYS).is_err());
    drop(held);
    let stat = m.stat();
    assert!(stat.system.is_empty() && stat.peers.is_empty(), "{stat:?}");
    assert_eq!(stat.tracked_ips, 0);

    // Streams alike.
    let s = m.open_stream(peer(2), Direction::Inbound).unwrap();
    s.set_protocol("/p/1").unwrap();
    s.set_service("svc").unwrap();
    let held = s.memory().reserve(100, priority::ALWAYS).unwrap();
    let stat = m.stat();
    assert_eq!(
        (
            stat.protocols["/p/1"].memory,
            stat.services["svc"].memory,
            stat.peers[&peer(2)].memory
        ),
        (100, 100, 100)
    );
    drop(s);
    assert_eq!(m.stat().system.streams(), 0);
    assert_eq!(m.stat().system.memory, 100);
    drop(held);
    let stat = m.stat();
    assert!(stat.system.is_empty() && stat.protocols.is_empty() && stat.services.is_empty());
}

#[test]
fn stream_memory_is_bounded_by_its_protocol_and_service() {
    let mut limits = LimitConfig::unlimited();
    limits
        .protocol_overrides
        .insert("/p/1".to_owned(), ScopeLimit::memory_only(1000));
    limits
        .service_overrides
        .insert("svc".to_owned(), ScopeLimit::memory_only(1500));
    let m = BasicResourceManager::new(limits).unwrap();
    let a = m.open_stream(peer(1), Direction::Inbound).unwrap();
    a.set_protocol("/p/1").unwrap();
    let _r = a.memory().reserve(900, priority::ALWAYS).unwrap();
    let e = a.memory().reserve(200, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, "protocol:/p/1");
    let b = m.open_stream(peer(2), Direction::Inbound).unwrap();
    b.set_service("svc").unwrap();
    let _r2 = b.memory().reserve(1400, priority::ALWAYS).unwrap();
    let c = m.open_stream(peer(3), Direction::Inbound).unwrap();
    c.set_service("svc").unwrap();
    let e = c.memory().reserve(200, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, "service:svc");
}

#[test]
fn spans_charge_their_owners_and_go_when_dropped() {
    let mut limits = LimitConfig::unlimited();
    limits.peer = ScopeLimit::memory_only(1000);
    let m = BasicResourceManager::new(limits).unwrap();
    let owner = SpanOwner::peer(peer(1)).with_protocol("/q/1");
    let span = m.open_span(&owner);
    let a = span.reserve(600, priority::ALWAYS).unwrap();
    let other = m.open_span(&SpanOwner::peer(peer(1)));
    let e = other.reserve(600, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, format!("peer:{}", peer(1)));
    let stat = m.stat();
    assert_eq!(stat.protocols["/q/1"].memory, 600);
    assert_eq!(stat.system.memory, 600);
    drop(span);
    assert_eq!(m.stat().system.memory, 600, "the reservation keeps it");
    drop(a);
    drop(other);
    let stat = m.stat();
    assert!(stat.system.is_empty() && stat.peers.is_empty() && stat.protocols.is_empty());
}

#[test]
fn one_address_cannot_hold_more_than_its_memory_cap() {
    let mut limits = LimitConfig::unlimited();
    limits.admission = AdmissionLimits {
        memory_per_ip: 1000,
        memory_per_subnet: 1500,
        ..caps(8, 32, 64, 256)
    };
    let m = BasicResourceManager::new(limits).unwrap();
    let open = |ip: &str, seed| {
        let c = m
            .open_connection(Direction::Inbound, true, &from(ip))
            .unwrap();
        c.set_peer(peer(seed)).unwrap();
        c.established();
        c
    };
    // Fresh identities do not help: the address's connections share one budget.
    let (a, b) = (open("10.0.0.1", 1), open("10.0.0.1", 2));
    let _ra = a.memory().reserve(700, priority::ALWAYS).unwrap();
    let e = b.memory().reserve(400, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, "ip:10.0.0.1");
    // Another address of the subnet has its own, within the subnet's.
    let c = open("10.0.0.2", 3);
    let _rc = c.memory().reserve(700, priority::ALWAYS).unwrap();
    let e = c.memory().reserve(200, priority::ALWAYS).unwrap_err();
    assert_eq!(e.scope, "subnet:10.0.0.0/24");
    // Another subnet is untouched.
    let d = open("10.0.1.1", 4);
    let _rd = d.memory().reserve(900, priority::ALWAYS).unwrap();
}

#[test]
fn memory_pressure_evicts_the_oldest_unauthenticated_handshake() {
    let mut limits = LimitConfig::unlimited();
    limits.transient = ScopeLimit::memory_only(1000);
    limits.system.memory = 10_000;
    let m = BasicResourceManager::new(limits).unwrap();
    let old = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .unwrap();
    let _r_old = old.memory().reserve(800, priority::ALWAYS).unwrap();
    let young = m
        .open_connection(Direction::Inbound, true, &from("10.0.1.1"))
        .unwrap();
    // The newcomer's handshake buffer does not fit beside the old one's: the old,
    // unauthenticated handshake is evicted and its memory given back.
    let _r_young = young.memory().reserve(600, priority::ALWAYS).unwrap();
    assert!(old.is_evicted());
    assert!(!young.is_evicted());
    let stat = m.stat();
    assert_eq!(stat.transient.memory, 600);
    assert_eq!(stat.evictions, 1);
    // An established connection is never evicted for memory.
    young.set_peer(peer(1)).unwrap();
    young.established();
    let third = m
        .open_connection(Direction::Inbound, true, &from("10.0.2.1"))
        .unwrap();
    let _r_third = third.memory().reserve(1000, priority::ALWAYS).unwrap();
    assert!(!young.is_evicted());
    assert!(m
        .open_connection(Direction::Inbound, true, &from("10.0.3.1"))
        .unwrap()
        .memory()
        .reserve(100, priority::ALWAYS)
        .is_ok());
    assert!(
        third.is_evicted(),
        "the oldest unauthenticated one made room"
    );
}

#[test]
fn autoscaling_never_panics_on_few_descriptors() {
    for fds in [0u64, 16, 64, 127, 128, 1000, 1_000_000] {
        for memory in [256 << 20, 1 << 30, 24 << 30] {
            let limits = LimitConfig::scaled_for(memory, fds);
            limits
                .validate()
                .unwrap_or_else(|e| panic!("{fds} fds, {memory} bytes: {e}"));
            assert!(limits.transient.conns <= limits.system.conns);
            BasicResourceManager::new(limits).unwrap();
        }
    }
}

#[test]
fn streams_are_limited_per_peer_and_per_protocol() {
    let mut limits = LimitConfig::unlimited();
    limits.peer.streams_inbound = 2;
    limits.protocol_overrides.insert(
        "/tight/1".to_owned(),
        ScopeLimit {
            streams: 1,
            streams_inbound: 1,
            streams_outbound: 1,
            ..ScopeLimit::UNLIMITED
        },
    );
    let m = BasicResourceManager::new(limits).unwrap();
    let s1 = m.open_stream(peer(1), Direction::Inbound).unwrap();
    let s2 = m.open_stream(peer(1), Direction::Inbound).unwrap();
    let e = m.open_stream(peer(1), Direction::Inbound).unwrap_err();
    assert_eq!(e.resource, Resource::InboundStreams);
    // Another peer is not affected.
    let t1 = m.open_stream(peer(2), Direction::Inbound).unwrap();
    s1.set_protocol("/tight/1").unwrap();
    let e = t1.set_protocol("/tight/1").unwrap_err();
    assert_eq!(e.scope, "protocol:/tight/1");
    t1.set_protocol("/other/1").unwrap();
    s2.set_service("svc").unwrap();
    let stat = m.stat();
    assert_eq!(stat.protocols["/tight/1"].streams_inbound, 1);
    assert_eq!(stat.services["svc"].streams_inbound, 1);
    assert_eq!(stat.transient.streams_inbound, 1, "s2 has no protocol yet");
    drop((s1, s2, t1));
    let stat = m.stat();
    assert!(stat.system.is_empty() && stat.transient.is_empty());
    assert!(stat.peers.is_empty() && stat.protocols.is_empty() && stat.services.is_empty());
}

#[test]
fn many_addresses_leave_nothing_behind() {
    let m = manager(AdmissionLimits::default());
    for round in 0..3 {
        let scopes: Vec<_> = (0..2000u32)
            .filter_map(|i| {
                let ip = format!("10.{}.{}.{}", round, (i >> 8) & 0xff, i & 0xff);
                m.open_connection(Direction::Inbound, true, &from(&ip)).ok()
            })
            .collect();
        assert!(m.stat().tracked_ips > 0);
        drop(scopes);
        let stat = m.stat();
        assert_eq!(stat.tracked_ips, 0);
        assert_eq!(stat.pending_handshakes, 0);
        assert!(stat.system.is_empty());
    }
}

#[test]
fn pressure_is_reported_while_pending_handshakes_hold_half_their_memory() {
    let mut limits = LimitConfig::unlimited();
    limits.transient = ScopeLimit::memory_only(1000);
    let m = BasicResourceManager::new(limits).unwrap();
    assert!(!m.under_pressure());
    let c = m
        .open_connection(Direction::Inbound, true, &from("10.0.0.1"))
        .unwrap();
    let held = c.memory().reserve(400, priority::ALWAYS).unwrap();
    assert!(!m.under_pressure());
    let more = c.memory().reserve(200, priority::ALWAYS).unwrap();
    assert!(m.under_pressure());
    drop((held, more));
    assert!(!m.under_pressure());
}
