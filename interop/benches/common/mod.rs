//! What the benches beside rust-libp2p share: the three stacks, and a Strata host and a
//! rust-libp2p swarm built for each with their defaults.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{noise, tcp, tls, yamux, Swarm, SwarmBuilder};
use strata_core::Multiaddr;
use strata_host::{HostBuilder, Security};

/// A transport stack, the same on both sides.
#[derive(Clone, Copy, Debug)]
pub enum Stack {
    Tls,
    Noise,
    Quic,
}

impl Stack {
    pub const ALL: [Stack; 3] = [Stack::Tls, Stack::Noise, Stack::Quic];

    /// The stacks named by STACK (`tls`, `noise` or `quic`, comma separated), or all.
    pub fn selected() -> Vec<Stack> {
        let Ok(wanted) = std::env::var("STACK") else {
            return Self::ALL.to_vec();
        };
        Self::ALL
            .into_iter()
            .filter(|s| wanted.split(',').any(|w| w.eq_ignore_ascii_case(s.short())))
            .collect()
    }

    pub fn short(self) -> &'static str {
        match self {
            Stack::Tls => "tls",
            Stack::Noise => "noise",
            Stack::Quic => "quic",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stack::Tls => "TCP+TLS+yamux",
            Stack::Noise => "TCP+Noise+yamux",
            Stack::Quic => "QUIC",
        }
    }

    /// A loopback address with a free port.
    pub fn listen_addr(self) -> Multiaddr {
        match self {
            Stack::Tls | Stack::Noise => "/ip4/127.0.0.1/tcp/0",
            Stack::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
        .parse()
        .unwrap()
    }
}

/// A Strata host builder speaking only `stack`.
pub fn strata_builder(stack: Stack) -> HostBuilder {
    match stack {
        Stack::Tls => HostBuilder::new().no_quic().security(vec![Security::Tls]),
        Stack::Noise => HostBuilder::new().no_quic().security(vec![Security::Noise]),
        Stack::Quic => HostBuilder::new().no_tcp(),
    }
}

/// A rust-libp2p swarm speaking only `stack`, running `behaviour`, with connections kept
/// for a minute while idle.
pub fn libp2p_swarm<B: NetworkBehaviour>(
    stack: Stack,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Swarm<B> {
    libp2p_swarm_idle(stack, Duration::from_secs(60), behaviour)
}

/// As [`libp2p_swarm`], with connections kept for `idle_timeout` while idle.
pub fn libp2p_swarm_idle<B: NetworkBehaviour>(
    stack: Stack,
    idle_timeout: Duration,
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Swarm<B> {
    let builder = SwarmBuilder::with_new_identity().with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(idle_timeout);
    match stack {
        Stack::Tls => builder
            .with_tcp(
                tcp::Config::default(),
                tls::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Stack::Noise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Stack::Quic => builder
            .with_quic()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
    }
}
