//! yamux ("/yamux/1.0.0") over a secured connection, built on the `yamux` crate.
//!
//! One driver task per connection owns the yamux connection (see `driver`); the
//! [`MuxedConn`] handle talks to it through channels, and each stream is a [`YamuxStream`]
//! wrapped in a [`strata_core::Stream`].
//!
//! yamux opens streams lazily: the remote learns of a stream we opened with its first
//! frame, that is when we first write to it (multistream-select always writes first).

mod config;
mod driver;
mod graceful;
mod stream;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use async_trait::async_trait;
use strata_core::{CloseReason, ConnError, ConnScope, Direction, PeerId, Stream};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

pub use config::{YamuxConfig, YamuxConfigError, MAX_STREAMS_LIMIT};

use super::{MuxedConn, StreamMuxer};
use crate::security::SecureStream;
use driver::{Driver, OpenReply};
use graceful::GracefulClose;
use stream::{ConnShared, YamuxStream};

/// The protocol ID of yamux, as negotiated by multistream-select.
pub const YAMUX_PROTOCOL_ID: &str = "/yamux/1.0.0";

/// Open requests that may wait for the driver at once; further callers wait their turn.
const OPEN_QUEUE: usize = 32;

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
        let mode = match direction {
            Direction::Outbound => yamux::Mode::Client,
            Direction::Inbound => yamux::Mode::Server,
        };
        let (open_tx, open_rx) = mpsc::channel(OPEN_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(self.config.inbound_backlog);
        let (reason_tx, reason_rx) = watch::channel(None);
        let close_requested = CancellationToken::new();
        let shared = ConnShared {
            ended: CancellationToken::new(),
            reason: reason_rx.clone(),
            live: Arc::new(AtomicUsize::new(0)),
        };
        let driver = Driver {
            conn: yamux::Connection::new(
                GracefulClose::new(io).compat(),
                self.config.to_yamux(),
                mode,
            ),
            peer: remote_peer,
            max_streams: self.config.max_streams,
            close_timeout: self.config.close_timeout,
            open_rx,
            inbound_tx,
            close_requested: close_requested.clone(),
            shared: shared.clone(),
            reason_tx,
            scope,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The task ends on its own once the connection ends, which `close()` or
                // dropping every handle brings about; the announcement on `reason` is its
                // completion signal.
                drop(runtime.spawn(driver.run()));
            }
            Err(_) => {
                tracing::warn!(peer = %remote_peer, "yamux connection made outside a tokio runtime");
                let Driver { reason_tx, .. } = driver;
                reason_tx.send_replace(Some(CloseReason::Error(
                    "no tokio runtime to drive the yamux connection".to_owned(),
                )));
                shared.ended.cancel();
            }
        }
        Arc::new(YamuxConn {
            peer: remote_peer,
            open_tx,
            inbound_rx: Mutex::new(inbound_rx),
            close_requested,
            reason: reason_rx,
        })
    }
}

/// A handle to one yamux connection. Dropping the last one closes the connection.
struct YamuxConn {
    peer: PeerId,
    open_tx: mpsc::Sender<OpenReply>,
    /// Behind an async mutex so that many tasks can wait in `accept_stream` at once.
    inbound_rx: Mutex<mpsc::Receiver<YamuxStream>>,
    close_requested: CancellationToken,
    reason: watch::Receiver<Option<CloseReason>>,
}

impl YamuxConn {
    /// The error for a connection that has ended (or is ending: waits for the reason).
    async fn closed_error(&self) -> ConnError {
        ConnError::Closed {
            peer: self.peer,
            reason: self.closed().await,
        }
    }

    fn ended_error(&self) -> Option<ConnError> {
        self.reason
            .borrow()
            .clone()
            .map(|reason| ConnError::Closed {
                peer: self.peer,
                reason,
            })
    }
}

impl Drop for YamuxConn {
    fn drop(&mut self) {
        // The driver would notice the closed open channel too; this says it outright.
        self.close_requested.cancel();
    }
}

#[async_trait]
impl MuxedConn for YamuxConn {
    async fn open_stream(&self) -> Result<Stream, ConnError> {
        if let Some(e) = self.ended_error() {
            return Err(e);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        if self.open_tx.send(reply_tx).await.is_err() {
            return Err(self.closed_error().await);
        }
        match reply_rx.await {
            Ok(Ok(stream)) => Ok(Stream::new(Box::new(stream), Direction::Outbound)),
            Ok(Err(e)) => Err(e),
            // The driver dropped the request: the connection is closing or has ended.
            Err(_) => Err(self.closed_error().await),
        }
    }

    async fn accept_stream(&self) -> Result<Stream, ConnError> {
        if let Some(e) = self.ended_error() {
            return Err(e);
        }
        let received = self.inbound_rx.lock().await.recv().await;
        match received {
            Some(stream) => Ok(Stream::new(Box::new(stream), Direction::Inbound)),
            None => Err(self.closed_error().await),
        }
    }

    async fn close(&self) {
        self.close_requested.cancel();
        self.closed().await;
    }

    async fn closed(&self) -> CloseReason {
        let mut reason = self.reason.clone();
        let result = match reason.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        // The driver always announces before it drops the sender; without an
        // announcement it must have panicked.
        result.unwrap_or_else(|| CloseReason::Error("yamux driver task failed".to_owned()))
    }

    fn is_closed(&self) -> bool {
        self.reason.borrow().is_some()
    }
}
