//! Yamux settings, their defaults, and the checks that keep yamux from panicking on them.

use std::time::Duration;

/// The yamux initial stream window (256 KiB, fixed by the yamux specification). yamux wants
/// the connection receive window to give every stream at least this much.
const DEFAULT_CREDIT: usize = 256 * 1024;

/// The largest frame body yamux (rust and go) accepts from a peer; a bigger split size
/// would make every remote tear the connection down.
const MAX_FRAME_BODY: usize = 1024 * 1024;

/// The most streams a connection may allow. yamux multiplies the stream limit by 256 KiB
/// without overflow checks, so the limit must stay far from `usize::MAX / 256 KiB`; a
/// million streams is already far beyond what any connection should hold.
pub const MAX_STREAMS_LIMIT: usize = 1 << 20;

/// Settings of the yamux muxer.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `max_streams` | 512 | streams open at once on a connection, both directions together |
/// | `max_connection_receive_window` | `Some(1 GiB)` | memory all streams of a connection may buffer |
/// | `split_send_size` | 256 KiB | largest data frame we send; bigger writes are split |
/// | `inbound_backlog` | 256 | inbound streams waiting for `accept_stream`; past it they are reset |
/// | `close_timeout` | 10 s | how long `close()` waits for GoAway to be written before it drops the socket |
///
/// `max_streams` and `max_connection_receive_window` are the values of yamux and of
/// rust-libp2p (which uses yamux's defaults): 512 streams at the 256 KiB initial window
/// need 128 MiB, and the rest of the 1 GiB is room for windows that grow on fast, long
/// links. Keeping a bound rather than `None` caps what one peer can make us buffer.
///
/// `split_send_size` is 256 KiB rather than yamux's 16 KiB: each frame costs a copy, a
/// channel hop and a socket write, and on loopback TCP (one stream, 1 GiB, release build)
/// 16 KiB frames moved 560-920 MiB/s, 64 KiB 850-1070, 256 KiB 1065-1110 and 1 MiB
/// 1150-1370. 256 KiB is the initial yamux window, so every peer accepts such a frame
/// whatever its own limits (1 MiB frames would rely on a grown window and on the
/// remote's frame size limit). The cost is coarser interleaving: another stream's frame
/// may wait behind one 256 KiB frame (2 ms at 1 Gbit/s). Lower it where latency across
/// streams matters more than bulk throughput.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamuxConfig {
    /// Streams open at once on one connection, inbound and outbound together. Opening one
    /// more fails with [`strata_core::ConnError::StreamLimit`]; an inbound one past it is
    /// reset. Between 1 and [`MAX_STREAMS_LIMIT`].
    pub max_streams: usize,
    /// The most bytes all streams of a connection may have in their receive windows
    /// (`None`: no bound). Must be at least 256 KiB × `max_streams`.
    pub max_connection_receive_window: Option<usize>,
    /// The largest data frame payload we send. Between 1 byte and 1 MiB (the largest
    /// frame yamux implementations accept).
    pub split_send_size: usize,
    /// Inbound streams held for `accept_stream`. When it is full, a new inbound stream is
    /// reset and logged rather than queued without bound. Must be at least 1.
    pub inbound_backlog: usize,
    /// How long a graceful `close()` may take (GoAway and pending frames written, socket
    /// shut down) before the connection is dropped without more ado.
    pub close_timeout: Duration,
}

impl Default for YamuxConfig {
    fn default() -> Self {
        YamuxConfig {
            max_streams: 512,
            max_connection_receive_window: Some(1024 * 1024 * 1024),
            split_send_size: 256 * 1024,
            inbound_backlog: 256,
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`YamuxConfig`] whose settings contradict each other or yamux's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamuxConfigError {
    /// `max_streams` is 0: no stream could ever be opened.
    #[error("yamux max_streams must be at least 1")]
    ZeroMaxStreams,
    /// `max_streams` is above [`MAX_STREAMS_LIMIT`].
    #[error("yamux max_streams {0} is above the limit of {MAX_STREAMS_LIMIT}")]
    TooManyStreams(usize),
    /// The connection window cannot give every stream the 256 KiB yamux starts it with.
    #[error(
        "yamux max_connection_receive_window {window} is below 256 KiB x max_streams ({max_streams}) = {required}"
    )]
    WindowTooSmall {
        /// The window asked for.
        window: usize,
        /// The stream limit asked for.
        max_streams: usize,
        /// The smallest window that fits (saturated at `usize::MAX`).
        required: usize,
    },
    /// `split_send_size` is 0 or larger than the 1 MiB frames peers accept.
    #[error("yamux split_send_size {0} must be between 1 and 1 MiB")]
    SplitSendSize(usize),
    /// `inbound_backlog` is 0: no inbound stream could be accepted.
    #[error("yamux inbound_backlog must be at least 1")]
    ZeroInboundBacklog,
}

impl YamuxConfig {
    /// Checks that the settings fit together and that yamux will accept them (yamux
    /// itself panics on some of them).
    pub fn validate(&self) -> Result<(), YamuxConfigError> {
        if self.max_streams == 0 {
            return Err(YamuxConfigError::ZeroMaxStreams);
        }
        if self.max_streams > MAX_STREAMS_LIMIT {
            return Err(YamuxConfigError::TooManyStreams(self.max_streams));
        }
        if let Some(window) = self.max_connection_receive_window {
            let required = self.max_streams.saturating_mul(DEFAULT_CREDIT);
            if window < required {
                return Err(YamuxConfigError::WindowTooSmall {
                    window,
                    max_streams: self.max_streams,
                    required,
                });
            }
        }
        if self.split_send_size == 0 || self.split_send_size > MAX_FRAME_BODY {
            return Err(YamuxConfigError::SplitSendSize(self.split_send_size));
        }
        if self.inbound_backlog == 0 {
            return Err(YamuxConfigError::ZeroInboundBacklog);
        }
        Ok(())
    }

    /// The stream limit handed to yamux itself.
    ///
    /// We enforce `max_streams` ourselves, counting live stream handles, because yamux
    /// treats its own limit harshly: an outbound open past it tears down the whole
    /// connection, and an inbound stream past it makes yamux send GoAway. yamux forgets a
    /// dropped stream only when its connection task next runs, so its count can lag ours;
    /// the headroom (up to `max_streams` again, as far as the receive window allows) keeps
    /// that lag from ever reaching yamux's limit.
    pub(crate) fn yamux_stream_limit(&self) -> usize {
        let fits_window = match self.max_connection_receive_window {
            Some(window) => window / DEFAULT_CREDIT,
            None => usize::MAX,
        };
        let headroom = self
            .max_streams
            .min(fits_window.saturating_sub(self.max_streams));
        self.max_streams.saturating_add(headroom)
    }

    /// The yamux configuration for these (validated) settings.
    pub(crate) fn to_yamux(&self) -> yamux::Config {
        let mut cfg = yamux::Config::default();
        // The order matters: yamux asserts window >= 256 KiB x streams in both setters,
        // so lift the window bound first, set the stream limit, then set the real window
        // (which `yamux_stream_limit` keeps large enough).
        cfg.set_max_connection_receive_window(None);
        cfg.set_max_num_streams(self.yamux_stream_limit());
        cfg.set_max_connection_receive_window(self.max_connection_receive_window);
        cfg.set_split_send_size(self.split_send_size);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_leave_headroom() {
        let cfg = YamuxConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.yamux_stream_limit(), 1024);
        let _ = cfg.to_yamux();
    }

    #[test]
    fn headroom_is_bounded_by_the_window() {
        let cfg = YamuxConfig {
            max_streams: 4096,
            ..YamuxConfig::default()
        };
        cfg.validate().unwrap();
        // 1 GiB / 256 KiB = 4096: no room beyond the limit itself.
        assert_eq!(cfg.yamux_stream_limit(), 4096);
        let _ = cfg.to_yamux();

        let unbounded = YamuxConfig {
            max_streams: MAX_STREAMS_LIMIT,
            max_connection_receive_window: None,
            ..YamuxConfig::default()
        };
        unbounded.validate().unwrap();
        assert_eq!(unbounded.yamux_stream_limit(), 2 * MAX_STREAMS_LIMIT);
        let _ = unbounded.to_yamux();
    }

    #[test]
    fn contradictions_are_errors() {
        let base = YamuxConfig::default();
        let too_many = YamuxConfig {
            max_streams: 4097,
            ..base.clone()
        };
        assert!(matches!(
            too_many.validate(),
            Err(YamuxConfigError::WindowTooSmall {
                max_streams: 4097,
                ..
            })
        ));
        let overflow = YamuxConfig {
            max_streams: usize::MAX,
            max_connection_receive_window: None,
            ..base.clone()
        };
        assert_eq!(
            overflow.validate(),
            Err(YamuxConfigError::TooManyStreams(usize::MAX))
        );
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
                    split_send_size: 0,
                    ..base.clone()
                },
                YamuxConfigError::SplitSendSize(0),
            ),
            (
                YamuxConfig {
                    split_send_size: MAX_FRAME_BODY + 1,
                    ..base.clone()
                },
                YamuxConfigError::SplitSendSize(MAX_FRAME_BODY + 1),
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
