//! The swarm's settings, in one place with their defaults.

use std::time::Duration;

use crate::peerstore::PeerstoreConfig;

/// Everything a [`crate::Swarm`] can be tuned with.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `dial_timeout` | 60 s | a whole `dial_peer` / `new_stream` call, all addresses together |
/// | `dial_timeout_per_addr` | 15 s | one address (connect and upgrade) |
/// | `dial_timeout_local` | 5 s | one loopback, private or memory address |
/// | `dial_stagger` | 250 ms | delay between starting one address dial and the next (happy eyeballs); QUIC ranks before TCP |
/// | `backoff_base` | 5 s | back-off after an address first fails |
/// | `backoff_max` | 5 min | cap: the back-off doubles with each failure up to this |
/// | `max_dials_in_flight` | 128 | address dials in flight, whole swarm |
/// | `max_dials_per_peer` | 8 | address dials in flight to one peer |
/// | `max_streams_per_connection` | 512 | open streams on one connection, both directions |
/// | `events_capacity` | 1024 | events buffered for each [`crate::Swarm::events`] receiver before it lags |
/// | `notifiee_queue_len` | 1024 | `connected` notifications queued for one notifiee; past it they are dropped (and that connection's `disconnected` with them) and counted as lag |
/// | `notifiee_connected_bound` | 1 s | how long a connection's inbound streams, and a dial's caller, wait for the notifiees' `connected` before going on without them |
/// | `close_deadline` | 1 s | how long [`crate::Swarm::close`] lets connections close gracefully before it resets them |
/// | `notifiee_close_grace` | 500 ms | how long `close()` lets notifiees drain what is queued before cancelling them (never past the close's deadline) |
/// | `maintenance_interval` | 10 s | how often the peerstore is cleaned and old back-off entries dropped |
/// | `run_maintenance` | on | whether the swarm runs that cleaning on a task of its own; a host turns it off and runs [`crate::Swarm::maintain`] as a supervised service instead |
/// | `peerstore` | [`PeerstoreConfig::default`] | the peerstore's bounds |
///
/// Connection limits (total, by direction, per peer, per source address) are the resource
/// manager's (see [`crate::Swarm::with_parts`]), checked when a connection is accepted or
/// dialed, before its handshake.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Bound on a whole dial to a peer (every address), per call.
    pub dial_timeout: Duration,
    /// Bound on dialing one public address.
    pub dial_timeout_per_addr: Duration,
    /// Bound on dialing one loopback, private (RFC 1918, ULA, link-local) or memory address.
    pub dial_timeout_local: Duration,
    /// Delay between starting successive address dials to one peer. A failed dial starts
    /// the next address at once.
    pub dial_stagger: Duration,
    /// Back-off after an address's first failure.
    pub backoff_base: Duration,
    /// Longest back-off; each further failure doubles it up to this.
    pub backoff_max: Duration,
    /// Address dials in flight across the swarm.
    pub max_dials_in_flight: usize,
    /// Address dials in flight to one peer.
    pub max_dials_per_peer: usize,
    /// Open streams on one connection, both directions together.
    pub max_streams_per_connection: usize,
    /// Capacity of the event broadcast; a receiver further behind is told how many it missed.
    pub events_capacity: usize,
    /// `connected` notifications one notifiee may have queued.
    pub notifiee_queue_len: usize,
    /// How long a new connection's inbound streams (and the caller of a dial) wait for
    /// the notifiees to return from `connected`.
    pub notifiee_connected_bound: Duration,
    /// How long `close()` lets connections close gracefully before resetting them.
    pub close_deadline: Duration,
    /// How long `close()` lets notifiees work through events already queued before it
    /// cancels them; bounds how long a slow notifiee can hold up `close()`.
    pub notifiee_close_grace: Duration,
    /// How often the swarm cleans the peerstore and the dial back-off.
    pub maintenance_interval: Duration,
    /// Whether the swarm runs its maintenance on a task of its own (off when the owner
    /// calls [`crate::Swarm::maintain`] itself).
    pub run_maintenance: bool,
    /// The peerstore's bounds.
    pub peerstore: PeerstoreConfig,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            dial_timeout: Duration::from_secs(60),
            dial_timeout_per_addr: Duration::from_secs(15),
            dial_timeout_local: Duration::from_secs(5),
            dial_stagger: Duration::from_millis(250),
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            max_dials_in_flight: 128,
            max_dials_per_peer: 8,
            max_streams_per_connection: 512,
            events_capacity: 1024,
            notifiee_queue_len: 1024,
            notifiee_connected_bound: Duration::from_secs(1),
            close_deadline: Duration::from_secs(1),
            notifiee_close_grace: Duration::from_millis(500),
            maintenance_interval: Duration::from_secs(10),
            run_maintenance: true,
            peerstore: PeerstoreConfig::default(),
        }
    }
}
