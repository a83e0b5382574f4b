//! The connection manager: keeps the number of connections between watermarks by
//! trimming the least valuable ones, as go-libp2p's `BasicConnMgr`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use strata_core::PeerId;
use strata_swarm::{Conn, DisconnectReason};

use crate::host::Host;

/// Watermarks, grace period and how long a trim may take.
///
/// | field | default |
/// |---|---|
/// | `low_water` | 160 |
/// | `high_water` | 192 |
/// | `grace_period` | 20 s |
/// | `trim_deadline` | 2 s: trimmed connections close together, gracefully, and any still closing then is reset |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnManagerConfig {
    /// Trimming stops once this many connections remain.
    pub low_water: usize,
    /// Trimming starts when a new connection takes the count above this.
    pub high_water: usize,
    /// New connections are not trimmed for this long.
    pub grace_period: Duration,
    /// How long one trim may take: the connections it closes are closed at once, each
    /// gracefully, and those whose peers have not let go by then are reset.
    pub trim_deadline: Duration,
}

impl Default for ConnManagerConfig {
    fn default() -> Self {
        ConnManagerConfig {
            low_water: 160,
            high_water: 192,
            grace_period: Duration::from_secs(20),
            trim_deadline: Duration::from_secs(2),
        }
    }
}

/// Contradictory watermarks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection manager low watermark {low} must not exceed the high watermark {high}")]
pub struct ConnManagerConfigError {
    /// The low watermark given.
    pub low: usize,
    /// The high watermark given.
    pub high: usize,
}

#[derive(Default)]
struct PeerInfo {
    tags: HashMap<String, i64>,
    protections: HashMap<String, ()>,
}

/// Trims connections above the high watermark down to the low one: protected peers and
/// connections younger than the grace period are kept; the rest go lowest tag value
/// first, oldest first among equals.
pub struct ConnManager {
    config: ConnManagerConfig,
    peers: Mutex<HashMap<PeerId, PeerInfo>>,
    trim_request: tokio::sync::Notify,
}

impl ConnManager {
    /// A connection manager with these settings.
    pub fn new(config: ConnManagerConfig) -> Result<Self, ConnManagerConfigError> {
        if config.low_water > config.high_water {
            return Err(ConnManagerConfigError {
                low: config.low_water,
                high: config.high_water,
            });
        }
        Ok(ConnManager {
            config,
            peers: Mutex::new(HashMap::new()),
            trim_request: tokio::sync::Notify::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ConnManagerConfig {
        &self.config
    }

    fn with_peers<R>(&self, f: impl FnOnce(&mut HashMap<PeerId, PeerInfo>) -> R) -> R {
        f(&mut self.peers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sets a tag's value for a peer (higher is more valuable).
    pub fn tag_peer(&self, peer: PeerId, tag: &str, value: i64) {
        self.with_peers(|p| {
            p.entry(peer)
                .or_default()
                .tags
                .insert(tag.to_string(), value);
        });
    }

    /// Removes a tag.
    pub fn untag_peer(&self, peer: PeerId, tag: &str) {
        self.with_peers(|p| {
            if let Some(info) = p.get_mut(&peer) {
                info.tags.remove(tag);
            }
        });
    }

    /// The sum of a peer's tags.
    pub fn tag_value(&self, peer: &PeerId) -> i64 {
        self.with_peers(|p| p.get(peer).map_or(0, |i| i.tags.values().sum()))
    }

    /// Protects a peer's connections from trimming, under `tag`.
    pub fn protect(&self, peer: PeerId, tag: &str) {
        self.with_peers(|p| {
            p.entry(peer)
                .or_default()
                .protections
                .insert(tag.to_string(), ());
        });
    }

    /// Removes the protection `tag`; returns whether the peer is still protected.
    pub fn unprotect(&self, peer: PeerId, tag: &str) -> bool {
        self.with_peers(|p| match p.get_mut(&peer) {
            Some(info) => {
                info.protections.remove(tag);
                !info.protections.is_empty()
            }
            None => false,
        })
    }

    /// True if some tag protects the peer.
    pub fn is_protected(&self, peer: &PeerId) -> bool {
        self.with_peers(|p| p.get(peer).is_some_and(|i| !i.protections.is_empty()))
    }

    pub(crate) fn on_connected(&self, host: &Host, _conn: &Conn) {
        if host.network().conns().len() > self.config.high_water {
            self.trim_request.notify_one();
        }
    }

    /// The connection manager's service: trims when asked (a new connection took the
    /// count above the high watermark), one trim at a time, until cancelled.
    pub(crate) async fn run(&self, host: &Host, cancel: &tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.trim_request.notified() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.trim(host) => {}
            }
        }
    }

    /// Closes the least valuable connections until at most `low_water` remain: all at
    /// once, each gracefully, and within `trim_deadline` whatever their peers do.
    pub async fn trim(&self, host: &Host) {
        let conns = host.network().conns();
        let open: Vec<Conn> = conns.into_iter().filter(|c| !c.is_closed()).collect();
        if open.len() <= self.config.low_water {
            return;
        }
        let excess = open.len() - self.config.low_water;
        let mut candidates: Vec<(i64, Duration, Conn)> = open
            .into_iter()
            .filter(|c| c.age() >= self.config.grace_period && !self.is_protected(&c.remote_peer()))
            .map(|c| (self.tag_value(&c.remote_peer()), c.age(), c))
            .collect();
        // Lowest value first; among equals the oldest first.
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let deadline = self.config.trim_deadline;
        futures::future::join_all(candidates.into_iter().take(excess).map(
            |(_, _, conn)| async move {
                conn.close_within(DisconnectReason::ConnManager, deadline)
                    .await
            },
        ))
        .await;
    }
}
