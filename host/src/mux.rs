//! The protocol mux: handlers by protocol ID (or by predicate), and the negotiation that
//! picks one for each inbound stream.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use strata_core::Stream;
use strata_swarm::Conn;
use strata_upgrader::multistream::listener_select;

use crate::metrics::HostMetrics;

/// How long an inbound stream may take to name its protocol.
pub const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A handler for one inbound stream, with the connection it arrived on.
pub(crate) type ConnHandler = Arc<dyn Fn(Stream, Conn) -> BoxFuture<'static, ()> + Send + Sync>;

/// Decides whether a protocol ID belongs to a `set_stream_handler_match` handler.
pub type ProtocolMatch = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
struct Entry {
    protocol: String,
    matcher: Option<ProtocolMatch>,
    handler: ConnHandler,
}

/// Handlers by protocol, in registration order; an exact ID wins over a predicate.
pub(crate) struct ProtocolMux {
    entries: RwLock<Vec<Entry>>,
    metrics: Option<Arc<HostMetrics>>,
}

impl ProtocolMux {
    pub(crate) fn new(metrics: Option<Arc<HostMetrics>>) -> Self {
        ProtocolMux {
            entries: RwLock::default(),
            metrics,
        }
    }

    pub(crate) fn set(&self, protocol: &str, matcher: Option<ProtocolMatch>, handler: ConnHandler) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.retain(|e| e.protocol != protocol);
        entries.push(Entry {
            protocol: protocol.to_string(),
            matcher,
            handler,
        });
    }

    pub(crate) fn remove(&self, protocol: &str) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        entries.retain(|e| e.protocol != protocol);
        before != entries.len()
    }

    /// The protocol IDs with a handler, as identify announces them.
    pub(crate) fn protocols(&self) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.iter().map(|e| e.protocol.clone()).collect()
    }

    /// The handler for `protocol`, with the ID it was registered under.
    fn find(&self, protocol: &str) -> Option<(String, ConnHandler)> {
        // Cloned out so no lock is held while the handler runs.
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .find(|e| e.protocol == protocol)
            .or_else(|| {
                entries
                    .iter()
                    .find(|e| e.matcher.as_ref().is_some_and(|m| m(protocol)))
            })
            .map(|e| (e.protocol.clone(), e.handler.clone()))
    }

    /// Negotiates the protocol of an inbound stream and runs its handler. An unknown
    /// protocol gets `na`; a stream that names none within the deadline is reset.
    pub(crate) async fn handle(&self, mut stream: Stream, conn: Conn) {
        let negotiated = tokio::time::timeout(
            NEGOTIATION_TIMEOUT,
            listener_select(&mut stream, |p| self.find(p).is_some(), || self.protocols()),
        )
        .await;
        let protocol = match negotiated {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(peer = %conn.remote_peer(), "inbound stream negotiation failed: {e}");
                stream.reset();
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %conn.remote_peer(), "inbound stream named no protocol in time");
                stream.reset();
                return;
            }
        };
        // Removed between negotiation and here: nothing to run it.
        let Some((registered, handler)) = self.find(&protocol) else {
            stream.reset();
            return;
        };
        // The protocol's own stream limit: over it, this stream is reset and other
        // protocols are unaffected.
        if let Err(e) = stream.scope().set_protocol(&protocol) {
            tracing::debug!(peer = %conn.remote_peer(), %protocol, "inbound stream refused: {e}");
            stream.reset();
            return;
        }
        tracing::Span::current().record("protocol", protocol.as_str());
        if let Some(m) = &self.metrics {
            // Labelled by the handler's own ID: a predicate handler may accept protocol
            // names a remote makes up, which must not grow the label sets.
            m.stream_opened(&mut stream, &registered);
        }
        stream.set_protocol(protocol);
        handler(stream, conn).await;
    }
}
