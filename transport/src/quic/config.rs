//! QUIC transport settings, their defaults, and their translation into quinn's configs.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// The connection window (each way) an inbound connection has during its handshake,
/// before its real windows are reserved: what a client may send right behind its
/// Finished.
pub(crate) const FIRST_WINDOW: u64 = 64 * 1024;

/// Settings of a [`crate::QuicTransport`].
///
/// | field | default | why |
/// |---|---|---|
/// | `handshake_timeout` | 15 s | the deadline of every handshake, inbound and outbound, as the upgrader's |
/// | `progress_timeout` | 5 s | an inbound handshake must complete within this (QUIC's handshake is one round trip; a client that sent its Initial and went silent is cut), as the upgrader's progress deadline |
/// | `max_idle_timeout` | 30 s | a connection with no traffic for this long ends with [`strata_core::CloseReason::IdleTimeout`] |
/// | `keep_alive_interval` | `Some(15 s)` | half the idle timeout, so an idle but live connection survives one lost ping |
/// | `max_concurrent_bidi_streams` | 256 | the most streams the remote may have open at once (as rust-libp2p); a connection starts at 16 and the limit grows fourfold each time the remote has half of it open (quinn keeps state for every stream slot: 256 cost an idle connection about 18 KiB) |
/// | `stream_receive_window` | 10 MiB | per-stream flow-control window: one stream can fill a fast path |
/// | `receive_window` | 15 MiB | the largest per-connection window, larger than one stream's so one stream cannot starve the others; a connection starts at 1/64 of it and grows by fourfold steps with its traffic, booked as it grows |
/// | `send_window` | 15 MiB | the largest of the bytes in flight we buffer per connection, matched to the receive window (it starts and grows with it) |
/// | `accept_queue_len` | 16 | connections accepted but not yet taken by [`strata_core::Listener::accept`] |
/// | `max_inflight_handshakes` | 1024 | inbound handshakes running at once per listener; an attempt past it is refused (per-address caps are the resource manager's) |
/// | `retry_above` | 64 | with more handshakes than this in flight, or while the resource manager reports pressure (pending handshakes holding half of what they may), an attempt from an address not yet validated gets a Retry first (stateless; a spoofed source never answers it) |
/// | `close_timeout` | 1 s | how long closing the transport waits for its connections to drain (RFC 9000's 3×PTO) before it stops them |
///
/// An inbound handshake holds only its real cost (quinn's connection state, rustls,
/// a 64 KiB first window); the receive and send windows are reserved once the handshake
/// is done and given to the connection then (the largest that memory allows).
///
/// Windows are bytes; [`QuicConfig::validate`] checks that each fits a QUIC variable-length
/// integer (below 2^62), so building the transport never panics inside quinn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// Deadline of each handshake (dial or accept), including the gater's checks.
    pub handshake_timeout: Duration,
    /// Deadline by which an inbound handshake must be complete.
    pub progress_timeout: Duration,
    /// A connection without any traffic for this long is closed.
    pub max_idle_timeout: Duration,
    /// Send a PING after this much silence so the idle timeout does not fire; `None` off.
    pub keep_alive_interval: Option<Duration>,
    /// Bidirectional streams the remote may have open at once.
    pub max_concurrent_bidi_streams: u64,
    /// Bytes one stream may receive ahead of the reader.
    pub stream_receive_window: u64,
    /// Bytes all streams of one connection may receive ahead of their readers.
    pub receive_window: u64,
    /// Bytes one connection buffers for sending ahead of acknowledgements.
    pub send_window: u64,
    /// Finished inbound connections a listener holds until they are accepted; past it, the
    /// listener stops taking new connections from its endpoint.
    pub accept_queue_len: usize,
    /// Inbound handshakes a listener runs at once.
    pub max_inflight_handshakes: usize,
    /// Handshakes in flight above which new attempts must validate their address
    /// (QUIC Retry) before any state is kept for them.
    pub retry_above: usize,
    /// How long [`crate::QuicTransport::close`] waits for endpoints to drain.
    pub close_timeout: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            handshake_timeout: Duration::from_secs(15),
            progress_timeout: Duration::from_secs(5),
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Some(Duration::from_secs(15)),
            max_concurrent_bidi_streams: 256,
            stream_receive_window: 10 * 1024 * 1024,
            receive_window: 15 * 1024 * 1024,
            send_window: 15 * 1024 * 1024,
            accept_queue_len: 16,
            max_inflight_handshakes: 1024,
            retry_above: 64,
            close_timeout: Duration::from_secs(1),
        }
    }
}

/// A [`QuicConfig`] value that quinn cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuicConfigError {
    /// A value does not fit a QUIC variable-length integer (2^62 - 1 at most).
    #[error("QUIC setting {field} = {value} is too large (at most 2^62 - 1)")]
    TooLarge {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// The idle timeout is too long for QUIC's millisecond varint.
    #[error("QUIC max_idle_timeout {0:?} is too long")]
    IdleTimeout(Duration),
    /// A setting that must be positive is zero.
    #[error("QUIC setting {0} must not be zero")]
    Zero(&'static str),
}

impl QuicConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the handshake deadline.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the idle timeout.
    pub fn max_idle_timeout(mut self, timeout: Duration) -> Self {
        self.max_idle_timeout = timeout;
        self
    }

    /// Sets the keep-alive interval; `None` turns keep-alive off.
    pub fn keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// Sets how many bidirectional streams the remote may have open at once.
    pub fn max_concurrent_bidi_streams(mut self, streams: u64) -> Self {
        self.max_concurrent_bidi_streams = streams;
        self
    }

    /// Sets the per-stream and per-connection receive windows.
    pub fn receive_windows(mut self, stream: u64, connection: u64) -> Self {
        self.stream_receive_window = stream;
        self.receive_window = connection;
        self
    }

    /// Sets the accept queue length.
    pub fn accept_queue_len(mut self, len: usize) -> Self {
        self.accept_queue_len = len;
        self
    }

    /// Sets the bound on inbound handshakes in flight.
    pub fn max_inflight_handshakes(mut self, max: usize) -> Self {
        self.max_inflight_handshakes = max;
        self
    }

    /// Checks every value quinn would otherwise reject with a panic.
    pub fn validate(&self) -> Result<(), QuicConfigError> {
        self.transport_config().map(|_| ())
    }

    /// Sets the number of handshakes in flight above which attempts get a Retry first.
    pub fn retry_above(mut self, n: usize) -> Self {
        self.retry_above = n;
        self
    }

    /// Sets the inbound progress deadline.
    pub fn progress_timeout(mut self, timeout: Duration) -> Self {
        self.progress_timeout = timeout;
        self
    }

    /// The receive windows offered, largest first: the configured ones, then smaller
    /// ones for connections whose scope cannot reserve more (a connection short of memory
    /// gets a smaller window, never a refusal while the smallest fits). Each is
    /// (connection window, stream window).
    pub(crate) fn window_tiers(&self) -> Vec<(u64, u64)> {
        const FLOOR: u64 = 64 * 1024;
        let mut tiers = Vec::new();
        for div in [1u64, 4, 16, 64] {
            let conn = (self.receive_window / div).max(FLOOR.min(self.receive_window));
            let stream = (self.stream_receive_window / div).min(conn).max(1);
            if tiers.last().is_none_or(|&(c, _)| c > conn) {
                tiers.push((conn, stream));
            }
        }
        tiers
    }

    /// The quinn transport parameters these settings make (windows, stream limits,
    /// timeouts), for a plain quinn endpoint that should behave as Strata's does: the
    /// throughput bench's raw quinn baseline uses it, so both run with the same windows.
    pub fn quinn_transport_config(&self) -> Result<Arc<TransportConfig>, QuicConfigError> {
        self.transport_config()
    }

    /// quinn's transport parameters for these settings (shared by client and server).
    pub(crate) fn transport_config(&self) -> Result<Arc<TransportConfig>, QuicConfigError> {
        self.transport_config_with(self.receive_window, self.stream_receive_window)
    }

    /// quinn's transport parameters with the given receive windows.
    pub(crate) fn transport_config_with(
        &self,
        receive_window: u64,
        stream_receive_window: u64,
    ) -> Result<Arc<TransportConfig>, QuicConfigError> {
        if self.accept_queue_len == 0 {
            return Err(QuicConfigError::Zero("accept_queue_len"));
        }
        if self.max_inflight_handshakes == 0 {
            return Err(QuicConfigError::Zero("max_inflight_handshakes"));
        }
        let varint = |field: &'static str, value: u64| {
            VarInt::from_u64(value).map_err(|_| QuicConfigError::TooLarge { field, value })
        };
        let idle = IdleTimeout::try_from(self.max_idle_timeout)
            .map_err(|_| QuicConfigError::IdleTimeout(self.max_idle_timeout))?;
        let mut t = TransportConfig::default();
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(self.keep_alive_interval);
        // A connection starts with a few stream slots; the limit grows with use (see
        // `stream::StreamBudget`).
        varint(
            "max_concurrent_bidi_streams",
            self.max_concurrent_bidi_streams,
        )?;
        t.max_concurrent_bidi_streams(varint(
            "max_concurrent_bidi_streams",
            self.max_concurrent_bidi_streams
                .min(super::stream::START_STREAMS),
        )?);
        // libp2p uses bidirectional streams only, and no datagrams.
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        t.datagram_receive_buffer_size(None);
        t.stream_receive_window(varint("stream_receive_window", stream_receive_window)?);
        t.receive_window(varint("receive_window", receive_window)?);
        // What we buffer for sending follows what we may receive: a connection short of
        // memory gets a smaller one of each.
        t.send_window(self.send_window.min(receive_window.max(FIRST_WINDOW)));
        t.allow_spin(false);
        Ok(Arc::new(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(QuicConfig::default().validate(), Ok(()));
    }

    #[test]
    fn window_tiers_shrink_to_a_floor() {
        let tiers = QuicConfig::default().window_tiers();
        assert_eq!(tiers[0], (15 * 1024 * 1024, 10 * 1024 * 1024));
        assert!(tiers.windows(2).all(|w| w[1].0 < w[0].0));
        assert!(tiers.iter().all(|&(c, s)| s <= c && c >= 64 * 1024));
        let tiny = QuicConfig::default()
            .receive_windows(1000, 1000)
            .window_tiers();
        assert_eq!(tiny, vec![(1000, 1000)]);
    }

    #[test]
    fn out_of_range_values_are_typed_errors() {
        let too_big = 1u64 << 62;
        let c = QuicConfig::default().receive_windows(too_big, 1);
        assert_eq!(
            c.validate(),
            Err(QuicConfigError::TooLarge {
                field: "stream_receive_window",
                value: too_big
            })
        );
        let c = QuicConfig::default().max_concurrent_bidi_streams(u64::MAX);
        assert!(matches!(
            c.validate(),
            Err(QuicConfigError::TooLarge { .. })
        ));
        let c = QuicConfig::default().max_idle_timeout(Duration::from_secs(u64::MAX / 2));
        assert!(matches!(c.validate(), Err(QuicConfigError::IdleTimeout(_))));
        let c = QuicConfig::default().accept_queue_len(0);
        assert_eq!(c.validate(), Err(QuicConfigError::Zero("accept_queue_len")));
    }
}
