//! The upgraded listener: a raw listener whose connections come out upgraded, under the
//! shared accept discipline of [`strata_core::accept`] (bounded parallel handshakes with
//! a deadline, a threshold-bounded queue, backpressure while it is full).

use std::sync::Arc;

use async_trait::async_trait;
use strata_core::accept::{AcceptCounters, AcceptQueue, AcceptSettings, IncomingSource};
use strata_core::{
    BoxCapableConn, BoxRawConn, BoxRawListener, Listener, Multiaddr, TransportError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::upgrader::Upgrader;

/// A raw listener whose connections come out upgraded.
pub struct UpgradedListener {
    addr: Multiaddr,
    queue: AcceptQueue,
}

/// Raw sockets as the accept queue's source.
struct RawSource(BoxRawListener);

#[async_trait]
impl IncomingSource for RawSource {
    type Pending = BoxRawConn;

    async fn next(
        &mut self,
        _inflight: usize,
    ) -> Option<Result<(BoxRawConn, Multiaddr), TransportError>> {
        Some(self.0.accept().await.map(|raw| {
            let remote = raw.remote_multiaddr().clone();
            (raw, remote)
        }))
    }
}

impl UpgradedListener {
    /// Starts accepting on `raw` and upgrading with `upgrader`.
    pub fn new(raw: BoxRawListener, upgrader: Arc<Upgrader>, transport: &'static str) -> Self {
        let addr = raw.multiaddr().clone();
        let rcmgr = upgrader.resource_manager().clone();
        let config = upgrader.config();
        let settings = AcceptSettings {
            handshake_timeout: config.handshake_timeout,
            queue_len: config.accept_queue_len,
            max_inflight: config.max_inflight_handshakes,
        };
        let queue = AcceptQueue::start(
            addr.clone(),
            settings,
            RawSource(raw),
            Arc::new(move |raw, scope| {
                let upgrader = upgrader.clone();
                Box::pin(async move { upgrader.upgrade_inbound(raw, transport, scope).await })
            }),
            rcmgr,
            CancellationToken::new(),
        );
        UpgradedListener { addr, queue }
    }

    /// The number of upgraded connections waiting for `accept`, as it changes.
    pub fn queued(&self) -> watch::Receiver<usize> {
        self.queue.queued()
    }

    /// Handshakes running or waiting for room in the queue, plus the accept loop itself.
    pub fn task_count(&self) -> usize {
        self.queue.task_count()
    }

    /// Handshakes running now.
    pub fn inflight(&self) -> usize {
        self.queue.inflight()
    }

    /// What the accept loop has refused, seen evicted, or seen fail.
    pub fn counters(&self) -> &AcceptCounters {
        self.queue.counters()
    }
}

#[async_trait]
impl Listener for UpgradedListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
        self.queue.accept().await
    }

    async fn close(&mut self) {
        self.queue.close().await
    }

    fn accept_stats(&self) -> Option<strata_core::accept::AcceptStats> {
        Some(self.queue.stats())
    }
}
