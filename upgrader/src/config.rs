//! Upgrader settings and their defaults, in one place.

use std::time::Duration;

/// Settings of an [`crate::Upgrader`] and the listeners it wraps.
///
/// | field | default | why |
/// |---|---|---|
/// | `handshake_timeout` | 15 s | the deadline of one whole upgrade (negotiation, security, muxer), and of the wait for room in the accept queue |
/// | `accept_queue_len` | 16 | upgraded connections waiting for the swarm; while full, the listener takes no new sockets |
/// | `max_inflight_handshakes` | 256 | inbound handshakes running at once; a flood of silent peers holds at most this many slots, each for at most `handshake_timeout` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgraderConfig {
    /// Deadline of one whole upgrade.
    pub handshake_timeout: Duration,
    /// Upgraded inbound connections that may wait for `accept`.
    pub accept_queue_len: usize,
    /// Inbound handshakes that may run at once.
    pub max_inflight_handshakes: usize,
}

impl Default for UpgraderConfig {
    fn default() -> Self {
        UpgraderConfig {
            handshake_timeout: Duration::from_secs(15),
            accept_queue_len: 16,
            max_inflight_handshakes: 256,
        }
    }
}

/// An upgrader that cannot work as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgraderConfigError {
    /// No security protocol was given.
    #[error("the upgrader needs at least one security protocol")]
    NoSecurity,
    /// No stream muxer was given.
    #[error("the upgrader needs at least one stream muxer")]
    NoMuxer,
    /// Two security protocols or two muxers share a protocol ID.
    #[error("protocol {0} is configured twice")]
    Duplicate(String),
    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl UpgraderConfig {
    pub(crate) fn validate(&self) -> Result<(), UpgraderConfigError> {
        if self.handshake_timeout.is_zero() {
            return Err(UpgraderConfigError::Zero("handshake_timeout"));
        }
        if self.accept_queue_len == 0 {
            return Err(UpgraderConfigError::Zero("accept_queue_len"));
        }
        if self.max_inflight_handshakes == 0 {
            return Err(UpgraderConfigError::Zero("max_inflight_handshakes"));
        }
        Ok(())
    }
}
