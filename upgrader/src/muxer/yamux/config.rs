//! Yamux settings, their defaults, and the checks that refuse settings that cannot work.

use std::time::Duration;

use super::frame::INITIAL_WINDOW;

/// The largest data frame we send. Peers accept bodies up to the window they granted;
/// 1 MiB keeps one frame from holding the connection for long.
const MAX_SPLIT: usize = 1024 * 1024;

/// The most streams a connection may allow.
pub const MAX_STREAMS_LIMIT: usize = 1 << 20;

/// Settings of the yamux muxer.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `max_streams` | 512 | streams open at once on a connection, both directions together |
/// | `max_connection_receive_window` | `Some(32 MiB)` | the most receive window all streams of a connection may hold together: what one peer can make us buffer per connection |
/// | `max_stream_receive_window` | 16 MiB | the most one stream's window may grow to |
/// | `split_send_size` | 256 KiB | largest data frame we send; bigger writes are split |
/// | `inbound_backlog` | 256 | inbound streams waiting for `accept_stream`; past it they are reset |
/// | `close_timeout` | 10 s | how long a graceful `close()` may take (Go Away sent, the peer letting go) before the socket is dropped |
///
/// Every stream starts with the 256 KiB window the yamux specification fixes, and each
/// window is reserved from the connection's resource scope (at creation, then as it
/// grows) before the peer is allowed to fill it. So a connection never buffers more than
/// `max_connection_receive_window`, nor more than the resource manager grants it; with
/// the defaults that is 128 streams at their initial window (a stream that cannot reserve
/// its window is refused: a new inbound one is reset, a new outbound one is a
/// [`strata_core::ConnError::Resource`] error). A window grows only while memory is
/// plentiful (a low-priority reservation), when its stream is read faster than four
/// round trips per window; otherwise it stays smaller, and the transfer goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamuxConfig {
    /// Streams open at once on one connection, inbound and outbound together. Opening one
    /// more fails with [`strata_core::ConnError::StreamLimit`]; an inbound one past it is
    /// reset. Between 1 and [`MAX_STREAMS_LIMIT`].
    pub max_streams: usize,
    /// The most bytes all streams of a connection may have in their receive windows
    /// (`None`: only the resource manager bounds it). At least 256 KiB.
    pub max_connection_receive_window: Option<usize>,
    /// The most one stream's receive window may grow to. At least 256 KiB.
    pub max_stream_receive_window: u32,
    /// The largest data frame payload we send. Between 1 byte and 1 MiB.
    pub split_send_size: usize,
    /// Inbound streams held for `accept_stream`. When it is full, a new inbound stream is
    /// reset and logged rather than queued without bound. Must be at least 1.
    pub inbound_backlog: usize,
    /// How long a graceful `close()` may take (Go Away and pending frames written, the
    /// peer closing its side) before the connection is dropped without more ado.
    pub close_timeout: Duration,
}

impl Default for YamuxConfig {
    fn default() -> Self {
        YamuxConfig {
            max_streams: 512,
            max_connection_receive_window: Some(32 * 1024 * 1024),
            max_stream_receive_window: 16 * 1024 * 1024,
            split_send_size: 256 * 1024,
            inbound_backlog: 256,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`YamuxConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamuxConfigError {
    /// `max_streams` is 0: no stream could ever be opened.
    #[error("yamux max_streams must be at least 1")]
    ZeroMaxStreams,
    /// `max_streams` is above [`MAX_STREAMS_LIMIT`].
    #[error("yamux max_streams {0} is above the limit of {MAX_STREAMS_LIMIT}")]
    TooManyStreams(usize),
    /// A window below the 256 KiB every stream starts with: no stream could open.
    #[error("yamux {field} {window} is below the 256 KiB initial stream window")]
    WindowTooSmall {
        /// Which window.
        field: &'static str,
        /// The window asked for.
        window: usize,
    },
    /// `split_send_size` is 0 or larger than 1 MiB.
    #[error("yamux split_send_size {0} must be between 1 and 1 MiB")]
    SplitSendSize(usize),
    /// `inbound_backlog` is 0: no inbound stream could be accepted.
    #[error("yamux inbound_backlog must be at least 1")]
    ZeroInboundBacklog,
}

impl YamuxConfig {
    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), YamuxConfigError> {
        if self.max_streams == 0 {
            return Err(YamuxConfigError::ZeroMaxStreams);
        }
        if self.max_streams > MAX_STREAMS_LIMIT {
            return Err(YamuxConfigError::TooManyStreams(self.max_streams));
        }
        let initial = INITIAL_WINDOW as usize;
        if let Some(window) = self.max_connection_receive_window {
            if window < initial {
                return Err(YamuxConfigError::WindowTooSmall {
                    field: "max_connection_receive_window",
                    window,
                });
            }
        }
        if self.max_stream_receive_window < INITIAL_WINDOW {
            return Err(YamuxConfigError::WindowTooSmall {
                field: "max_stream_receive_window",
                window: self.max_stream_receive_window as usize,
            });
        }
        if self.split_send_size == 0 || self.split_send_size > MAX_SPLIT {
            return Err(YamuxConfigError::SplitSendSize(self.split_send_size));
        }
        if self.inbound_backlog == 0 {
            return Err(YamuxConfigError::ZeroInboundBacklog);
        }
        Ok(())
    }

    /// Bytes of frames a connection may have queued for the socket before writers wait.
    pub(crate) fn write_queue_limit(&self) -> usize {
        (2 * self.split_send_size).max(256 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        YamuxConfig::default().validate().unwrap();
        let unbounded = YamuxConfig {
            max_streams: MAX_STREAMS_LIMIT,
            max_connection_receive_window: None,
            ..YamuxConfig::default()
        };
        unbounded.validate().unwrap();
    }

    #[test]
    fn contradictions_are_errors() {
        let base = YamuxConfig::default();
        for (cfg, err) in [
            (
                YamuxConfig {
                    max_streams: 0,
                    ..base.clone()
                },
                YamuxConfigError::ZeroMaxStreams,
            ),
            (
                YamuxConfig {
                    max_streams: usize::MAX,
                    ..base.clone()
                },
                YamuxConfigError::TooManyStreams(usize::MAX),
            ),
            (
                YamuxConfig {
                    max_connection_receive_window: Some(1000),
                    ..base.clone()
                },
                YamuxConfigError::WindowTooSmall {
                    field: "max_connection_receive_window",
                    window: 1000,
                },
            ),
            (
                YamuxConfig {
                    max_stream_receive_window: 1000,
                    ..base.clone()
                },
                YamuxConfigError::WindowTooSmall {
                    field: "max_stream_receive_window",
                    window: 1000,
                },
            ),
            (
                YamuxConfig {
                    split_send_size: 0,
                    ..base.clone()
                },
                YamuxConfigError::SplitSendSize(0),
            ),
            (
                YamuxConfig {
                    split_send_size: MAX_SPLIT + 1,
                    ..base.clone()
                },
                YamuxConfigError::SplitSendSize(MAX_SPLIT + 1),
            ),
            (
                YamuxConfig {
                    inbound_backlog: 0,
                    ..base.clone()
                },
                YamuxConfigError::ZeroInboundBacklog,
            ),
        ] {
            assert_eq!(cfg.validate(), Err(err));
        }
    }
}
