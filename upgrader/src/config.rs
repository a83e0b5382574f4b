//! Upgrader settings and their defaults, in one place.

use std::time::Duration;

/// Settings of an [`crate::Upgrader`] and the listeners it wraps.
///
/// | field | default | why |
/// |---|---|---|
/// | `handshake_timeout` | 15 s | the deadline of one whole upgrade (negotiation, security, muxer), and of the wait for room in the accept queue |
/// | `progress_timeout` | 5 s | an inbound connection must complete its first multistream-select message within this, or it is cut: a silent or byte-a-second socket is gone long before the handshake deadline |
/// | `accept_queue_len` | 16 | upgraded connections waiting for the swarm; while full, the listener takes no new sockets |
/// | `max_inflight_handshakes` | a quarter of the descriptor limit, at least 256 | inbound handshakes running at once on one listener; a socket past it is reset at once (the listener never stops accepting because of it). Per-address caps, which keep one flooder from filling it, are the resource manager's |
/// | `optimistic_security` | on | a dialer sends its security proposal and its first handshake message in one flight instead of waiting a round trip for the answer; a refusal costs one round trip more |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgraderConfig {
    /// Deadline of one whole upgrade.
    pub handshake_timeout: Duration,
    /// Deadline of an inbound connection's first negotiation message.
    pub progress_timeout: Duration,
    /// Upgraded inbound connections that may wait for `accept`.
    pub accept_queue_len: usize,
    /// Inbound handshakes that may run at once; past it, new sockets are reset.
    pub max_inflight_handshakes: usize,
    /// Dial with the first security handshake message pipelined behind the proposal.
    pub optimistic_security: bool,
}

impl Default for UpgraderConfig {
    fn default() -> Self {
        UpgraderConfig {
            handshake_timeout: Duration::from_secs(15),
            progress_timeout: Duration::from_secs(5),
            accept_queue_len: 16,
            max_inflight_handshakes: default_max_inflight(),
            optimistic_security: true,
        }
    }
}

/// A quarter of the descriptor limit (a pending handshake holds one), at least 256.
pub fn default_max_inflight() -> usize {
    usize::try_from(strata_core::sys::fd_limit() / 4)
        .unwrap_or(usize::MAX)
        .max(256)
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
        if self.progress_timeout.is_zero() {
            return Err(UpgraderConfigError::Zero("progress_timeout"));
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
