//! yamux ("/yamux/1.0.0") over a secured connection: our own implementation of the
//! specification, built for bounded memory.
//!
//! * [`frame`]: the twelve-byte header codec, with no I/O.
//! * `session`: the state the handle, the streams and the driver share.
//! * `driver`: the one task per connection that owns the socket.
//! * `stream`: a stream as a [`strata_core::StreamIo`].
//!
//! Every stream's receive window is reserved from the connection's resource scope before
//! the peer may fill it (see [`YamuxConfig`]), so what a peer can make us buffer is
//! bounded by the configuration and by the resource manager; a stream whose window
//! cannot be reserved is refused, and a window grows only while memory is plentiful.
//!
//! Streams open lazily: the remote learns of a stream we opened with its first frame,
//! that is when we first write to it (multistream-select always writes first). Inbound
//! streams are acknowledged when the application accepts them.

mod config;
mod driver;
pub mod frame;
mod session;
mod stream;

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{CloseReason, ConnError, ConnScope, Direction, PeerId, Stream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{YamuxConfig, YamuxConfigError, MAX_STREAMS_LIMIT};

use super::{MuxedConn, StreamMuxer};
use crate::security::SecureStream;
use driver::Driver;
use session::{OpenError, Session};
use stream::YamuxStream;

/// The protocol ID of yamux, as negotiated by multistream-select.
pub const YAMUX_PROTOCOL_ID: &str = "/yamux/1.0.0";

/// The yamux stream muxer, as go-libp2p's `yamux.Transport`.
#[derive(Debug, Clone, Default)]
pub struct Yamux {
    config: YamuxConfig,
}

impl Yamux {
    /// A yamux muxer with the given settings, once they pass [`YamuxConfig::validate`].
    pub fn new(config: YamuxConfig) -> Result<Self, YamuxConfigError> {
        config.validate()?;
        Ok(Yamux { config })
    }

    /// The muxer's settings.
    pub fn config(&self) -> &YamuxConfig {
        &self.config
    }
}

impl StreamMuxer for Yamux {
    fn protocol_id(&self) -> &'static str {
        YAMUX_PROTOCOL_ID
    }

    /// Starts the connection's driver task on the current tokio runtime. Outside a
    /// runtime there is nowhere to run it: the connection is returned already ended.
    fn new_conn(
        &self,
        io: Box<dyn SecureStream>,
        direction: Direction,
        remote_peer: PeerId,
        scope: Arc<ConnScope>,
    ) -> Arc<dyn MuxedConn> {
        let session = Arc::new(Session::new(
            remote_peer,
            self.config.clone(),
            direction,
            scope,
            io,
        ));
        let close = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut driver = Driver::new(session.clone(), close.clone(), abort.clone());
        let tasks = TaskTracker::new();
        let ready = match tokio::runtime::Handle::try_current() {
            Ok(_) => driver.reserve_buffers(),
            Err(_) => Err(CloseReason::Error(
                "no tokio runtime to drive the yamux connection".to_owned(),
            )),
        };
        match ready {
            Ok(()) => drop(tasks.spawn(driver.run())),
            Err(reason) => {
                tracing::warn!(peer = %remote_peer, %reason, "yamux connection cannot start");
                drop(driver);
                drop(session.io.take());
                drop(session.end(reason));
            }
        }
        tasks.close();
        Arc::new(YamuxConn {
            session,
            close,
            abort,
            tasks,
        })
    }
}

/// A handle to one yamux connection. Dropping the last one closes the connection.
struct YamuxConn {
    session: Arc<Session>,
    close: CancellationToken,
    abort: CancellationToken,
    /// The driver task: `closed()` returns only once it has ended.
    tasks: TaskTracker,
}

impl Drop for YamuxConn {
    fn drop(&mut self) {
        self.close.cancel();
    }
}

impl YamuxConn {
    fn closed_error(&self, reason: CloseReason) -> ConnError {
        ConnError::Closed {
            peer: self.session.peer,
            reason,
        }
    }
}

#[async_trait]
impl MuxedConn for YamuxConn {
    async fn open_stream(&self) -> Result<Stream, ConnError> {
        let peer = self.session.peer;
        match self.session.open() {
            Ok(id) => Ok(Stream::new(
                Box::new(YamuxStream::new(self.session.clone(), id)),
                Direction::Outbound,
            )),
            Err(OpenError::Closed(reason)) => Err(self.closed_error(reason)),
            Err(OpenError::Limit) => Err(ConnError::StreamLimit { peer }),
            Err(OpenError::Resource(source)) => Err(ConnError::Resource { peer, source }),
            Err(OpenError::Exhausted) => Err(ConnError::Muxer {
                peer,
                message: "yamux stream IDs exhausted".into(),
            }),
        }
    }

    async fn accept_stream(&self) -> Result<Stream, ConnError> {
        loop {
            let notified = self.session.accept.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.session.take_inbound() {
                Ok(Some(id)) => {
                    return Ok(Stream::new(
                        Box::new(YamuxStream::new(self.session.clone(), id)),
                        Direction::Inbound,
                    ))
                }
                Ok(None) => notified.await,
                Err(reason) => return Err(self.closed_error(reason)),
            }
        }
    }

    fn go_away(&self) {
        self.session.go_away();
    }

    async fn close(&self) {
        self.close.cancel();
        self.closed().await;
    }

    fn abort(&self) {
        self.abort.cancel();
    }

    async fn closed(&self) -> CloseReason {
        let mut reason = self.session.reason.subscribe();
        let result = match reason.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        self.tasks.wait().await;
        result.unwrap_or_else(|| CloseReason::Error("yamux driver task failed".to_owned()))
    }

    fn is_closed(&self) -> bool {
        self.session.reason.borrow().is_some()
    }
}
