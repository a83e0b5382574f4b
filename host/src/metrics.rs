//! Prometheus metrics on `prometheus-client` (the crate rust-libp2p uses), registered with
//! [`crate::HostBuilder::metrics`] under the `strata_` prefix.
//!
//! Counted as things happen: connections opened and closed (by direction, transport,
//! security and muxer), handshake durations, dial errors by kind and dial outcomes,
//! streams by protocol and direction, and the bytes each protocol moves. Read at scrape
//! time: each listener's accept queue, the notifiees' lateness and drops, and the
//! resource manager's usage. Protocol labels come from the host's own handler IDs and
//! the protocols it asks for, never from strings a remote made up, so the label sets stay
//! bounded whatever peers send.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use strata_core::accept::AcceptStats;
use strata_core::rcmgr::ScopeStat;
use strata_core::{Direction, Multiaddr, Protocol, Stream, StreamIo};
use strata_swarm::{AddrDialError, Conn, DisconnectReason, MetricsTracer, Swarm};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Labels of a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    direction: &'static str,
    transport: &'static str,
    security: String,
    muxer: String,
}

/// Labels of a handshake: the stack it negotiated.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StackLabels {
    transport: &'static str,
    security: String,
    muxer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialErrorLabels {
    transport: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    protocol: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

fn handshake_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// The transport an address would be dialed on, as a label.
fn transport_of(addr: &Multiaddr) -> &'static str {
    let mut transport = "other";
    for p in addr.iter() {
        transport = match p {
            Protocol::QuicV1 => return "quic-v1",
            // `/tls/ws` (and `/tls/sni/HOST/ws`): TLS came first, so secure WebSocket.
            Protocol::Ws(_) if transport == "tls" => return "wss",
            Protocol::Ws(_) => return "ws",
            Protocol::Wss(_) => return "wss",
            Protocol::Tls => "tls",
            Protocol::Memory(_) => return "memory",
            Protocol::Tcp(_) => "tcp",
            _ => continue,
        };
    }
    transport
}

fn conn_labels(conn: &Conn) -> ConnLabels {
    let state = conn.state();
    ConnLabels {
        direction: direction_label(conn.direction()),
        transport: state.transport,
        security: state.security.clone(),
        muxer: state.muxer.clone(),
    }
}

/// The host's metrics. Cheap to update: each event is one or two atomic additions on
/// counters looked up by label.
#[derive(Debug)]
pub(crate) struct HostMetrics {
    conns_opened: Family<ConnLabels, Counter>,
    conns_closed: Family<ConnLabels, Counter>,
    handshake: Family<StackLabels, Histogram, fn() -> Histogram>,
    dial_errors: Family<DialErrorLabels, Counter>,
    dials: Family<OutcomeLabels, Counter>,
    streams_opened: Family<StreamLabels, Counter>,
    bytes_received: Family<ProtocolLabels, Counter>,
    bytes_sent: Family<ProtocolLabels, Counter>,
    /// The swarm read at scrape time (set once the host is built).
    swarm: Arc<OnceLock<Swarm>>,
}

impl HostMetrics {
    /// Creates the metrics and registers them (and a collector for the figures read at
    /// scrape time) in `registry`, under the `strata` prefix.
    pub(crate) fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(HostMetrics {
            conns_opened: Family::default(),
            conns_closed: Family::default(),
            handshake: Family::new_with_constructor(handshake_histogram),
            dial_errors: Family::default(),
            dials: Family::default(),
            streams_opened: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            swarm: Arc::new(OnceLock::new()),
        });
        let r = registry.sub_registry_with_prefix("strata");
        r.register(
            "connections_opened",
            "Connections opened, by direction, transport, security and muxer",
            metrics.conns_opened.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed, by direction, transport, security and muxer",
            metrics.conns_closed.clone(),
        );
        r.register_with_unit(
            "handshake_duration",
            "Time from the raw connection to the secured, multiplexed one",
            Unit::Seconds,
            metrics.handshake.clone(),
        );
        r.register(
            "dial_errors",
            "Addresses that could not be dialed, by transport and kind of error",
            metrics.dial_errors.clone(),
        );
        r.register(
            "dials_completed",
            "Dials (to a peer or to one address) finished, by outcome",
            metrics.dials.clone(),
        );
        r.register(
            "streams_opened",
            "Streams opened with a negotiated protocol, by protocol and direction",
            metrics.streams_opened.clone(),
        );
        r.register(
            "stream_bytes_received",
            "Bytes read from streams, by protocol",
            metrics.bytes_received.clone(),
        );
        r.register(
            "stream_bytes_sent",
            "Bytes written to streams, by protocol",
            metrics.bytes_sent.clone(),
        );
        r.register_collector(Box::new(ScrapeTimeFigures {
            swarm: metrics.swarm.clone(),
        }));
        metrics
    }

    /// Starts reading the swarm's figures at scrape time and hearing its events.
    pub(crate) fn attach(self: &Arc<Self>, swarm: &Swarm) {
        let _ = self.swarm.set(swarm.clone());
        swarm.set_metrics_tracer(self.clone());
    }

    /// Counts a stream whose protocol is settled, and counts its bytes from now on.
    pub(crate) fn stream_opened(&self, stream: &mut Stream, protocol: &str) {
        self.streams_opened
            .get_or_create(&StreamLabels {
                protocol: protocol.to_string(),
                direction: direction_label(stream.direction()),
            })
            .inc();
        let labels = ProtocolLabels {
            protocol: protocol.to_string(),
        };
        let received = self.bytes_received.get_or_create(&labels).clone();
        let sent = self.bytes_sent.get_or_create(&labels).clone();
        stream.map_io(|inner| Box::new(CountingIo::new(inner, received, sent)));
    }
}

impl MetricsTracer for HostMetrics {
    fn opened_connection(&self, conn: &Conn) {
        self.conns_opened.get_or_create(&conn_labels(conn)).inc();
        let state = conn.state();
        self.handshake
            .get_or_create(&StackLabels {
                transport: state.transport,
                security: state.security.clone(),
                muxer: state.muxer.clone(),
            })
            .observe(state.handshake.as_secs_f64());
    }

    fn closed_connection(&self, conn: &Conn, _reason: &DisconnectReason) {
        self.conns_closed.get_or_create(&conn_labels(conn)).inc();
    }

    fn failed_dialing(&self, addr: &Multiaddr, error: &AddrDialError) {
        self.dial_errors
            .get_or_create(&DialErrorLabels {
                transport: transport_of(addr),
                error: error.kind(),
            })
            .inc();
    }

    fn dial_completed(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.dials.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// Bytes a [`CountingIo`] holds back before adding them to the shared counters: the
/// counters are atomics shared by every stream of a protocol, so a per-read update
/// would contend across cores on a busy protocol.
const COUNT_BATCH: u64 = 64 * 1024;

/// A stream that counts the bytes through it. Counts are kept locally and added to the
/// shared counters every [`COUNT_BATCH`] bytes, whenever the stream waits or flushes, at
/// the end of either direction, and when the stream goes: a finished stream's bytes are
/// always all counted, and an idle one's are current.
struct CountingIo {
    inner: Box<dyn StreamIo>,
    received: Counter,
    sent: Counter,
    unflushed_received: u64,
    unflushed_sent: u64,
}

impl CountingIo {
    fn new(inner: Box<dyn StreamIo>, received: Counter, sent: Counter) -> Self {
        CountingIo {
            inner,
            received,
            sent,
            unflushed_received: 0,
            unflushed_sent: 0,
        }
    }

    fn count_sent(&mut self, poll: &Poll<std::io::Result<usize>>) {
        match poll {
            Poll::Ready(Ok(n)) => {
                self.unflushed_sent += *n as u64;
                if self.unflushed_sent >= COUNT_BATCH {
                    self.flush_counts();
                }
            }
            // Waiting or failed: a moment to bring the shared counters up to date.
            Poll::Ready(Err(_)) | Poll::Pending => self.flush_counts(),
        }
    }

    fn flush_counts(&mut self) {
        if self.unflushed_received > 0 {
            self.received
                .inc_by(std::mem::take(&mut self.unflushed_received));
        }
        if self.unflushed_sent > 0 {
            self.sent.inc_by(std::mem::take(&mut self.unflushed_sent));
        }
    }
}

impl Drop for CountingIo {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.unflushed_received += read;
        // At the end, on an error, and whenever the stream waits (idle: the counts of a
        // long-lived quiet stream stay current, and a busy one rarely waits).
        let settled = match &poll {
            Poll::Ready(Ok(())) => read == 0 && had_room,
            Poll::Ready(Err(_)) | Poll::Pending => true,
        };
        if settled || self.unflushed_received >= COUNT_BATCH {
            self.flush_counts();
        }
        poll
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.count_sent(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        self.count_sent(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_counts();
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_counts();
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

impl StreamIo for CountingIo {
    fn reset(&mut self) {
        self.flush_counts();
        self.inner.reset();
    }
}

/// The figures read from the swarm when scraped: accept queues, notifiees, resource
/// manager.
#[derive(Debug)]
struct ScrapeTimeFigures {
    swarm: Arc<OnceLock<Swarm>>,
}

/// Label pairs of one sample.
type Labels = Vec<(&'static str, String)>;

/// Writes one gauge or counter family: a descriptor, then one sample per label set.
fn encode_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

fn gauges(samples: Vec<(Labels, u64)>) -> Vec<(Labels, ConstGauge<i64>)> {
    samples.into_iter().map(|(l, v)| (l, gauge(v))).collect()
}

fn counters(samples: Vec<(Labels, u64)>) -> Vec<(Labels, ConstCounter<u64>)> {
    samples
        .into_iter()
        .map(|(l, v)| (l, ConstCounter::new(v)))
        .collect()
}

impl prometheus_client::collector::Collector for ScrapeTimeFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(swarm) = self.swarm.get() else {
            return Ok(());
        };
        let e = &mut encoder;

        // Accept queues, one label set per listener.
        let listeners = swarm.accept_stats();
        let per_listener = |f: fn(&AcceptStats) -> u64| -> Vec<(Labels, u64)> {
            listeners
                .iter()
                .map(|(addr, s)| (vec![("listener", addr.to_string())], f(s)))
                .collect()
        };
        encode_family(
            e,
            "accept_queue_length",
            "Upgraded connections waiting to be accepted, by listener",
            None,
            gauges(per_listener(|s| s.queued() as u64)),
        )?;
        encode_family(
            e,
            "accept_handshakes_inflight",
            "Inbound handshakes running, by listener",
            None,
            gauges(per_listener(|s| s.inflight() as u64)),
        )?;
        encode_family(
            e,
            "accept_refused",
            "Inbound connections refused before their handshake, by listener",
            None,
            counters(per_listener(|s| s.counters().refused.load(Relaxed))),
        )?;
        encode_family(
            e,
            "accept_evicted",
            "Pending inbound handshakes evicted for a newcomer, by listener",
            None,
            counters(per_listener(|s| s.counters().evicted.load(Relaxed))),
        )?;
        encode_family(
            e,
            "accept_failed",
            "Inbound handshakes that failed or timed out, by listener",
            None,
            counters(per_listener(|s| s.counters().failed.load(Relaxed))),
        )?;

        // Notifiees.
        let n = swarm.notifiee_stats();
        for (name, help, value) in [
            (
                "notifiee_late",
                "Connections that went on without waiting longer for a slow `connected`",
                n.late,
            ),
            (
                "notifiee_dropped",
                "`connected` notifications not queued because a notifiee's queue was full",
                n.dropped,
            ),
            (
                "notifiee_coalesced",
                "Connections that ended before a notifiee heard they began",
                n.coalesced,
            ),
        ] {
            encode_family(e, name, help, None, counters(vec![(vec![], value)]))?;
        }

        // The resource manager: the system and transient scopes.
        let stat = swarm.resource_manager().stat();
        let scopes = [("system", stat.system), ("transient", stat.transient)];
        let by_direction = |inbound: fn(&ScopeStat) -> usize, outbound: fn(&ScopeStat) -> usize| {
            let mut out: Vec<(Labels, u64)> = Vec::new();
            for (scope, s) in &scopes {
                for (direction, v) in [("inbound", inbound(s)), ("outbound", outbound(s))] {
                    let labels = vec![
                        ("scope", scope.to_string()),
                        ("direction", direction.into()),
                    ];
                    out.push((labels, v as u64));
                }
            }
            gauges(out)
        };
        let by_scope = |f: fn(&ScopeStat) -> u64| {
            gauges(
                scopes
                    .iter()
                    .map(|(scope, s)| (vec![("scope", scope.to_string())], f(s)))
                    .collect(),
            )
        };
        encode_family(
            e,
            "rcmgr_connections",
            "Connections counted by the resource manager, by scope and direction",
            None,
            by_direction(|s| s.conns_inbound, |s| s.conns_outbound),
        )?;
        encode_family(
            e,
            "rcmgr_streams",
            "Streams counted by the resource manager, by scope and direction",
            None,
            by_direction(|s| s.streams_inbound, |s| s.streams_outbound),
        )?;
        encode_family(
            e,
            "rcmgr_memory",
            "Memory reserved with the resource manager, by scope",
            Some(&Unit::Bytes),
            by_scope(|s| s.memory),
        )?;
        encode_family(
            e,
            "rcmgr_fds",
            "File descriptors counted by the resource manager, by scope",
            None,
            by_scope(|s| s.fds as u64),
        )?;
        encode_family(
            e,
            "rcmgr_pending_handshakes",
            "Inbound connections admitted and still in their handshake",
            None,
            gauges(vec![(vec![], stat.pending_handshakes as u64)]),
        )?;
        encode_family(
            e,
            "rcmgr_refused_admissions",
            "Inbound connections refused at admission",
            None,
            counters(vec![(vec![], stat.refused_admissions)]),
        )?;
        encode_family(
            e,
            "rcmgr_evictions",
            "Idle pending handshakes dropped to make way for a newcomer",
            None,
            counters(vec![(vec![], stat.evictions)]),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn transports_are_labelled_by_address() {
        for (addr, label) in [
            ("/ip4/127.0.0.1/tcp/1", "tcp"),
            ("/ip4/127.0.0.1/udp/1/quic-v1", "quic-v1"),
            ("/ip4/127.0.0.1/tcp/1/ws", "ws"),
            ("/ip4/127.0.0.1/tcp/1/wss", "wss"),
            ("/ip4/127.0.0.1/tcp/1/tls/ws", "wss"),
            ("/dns/example.com/tcp/443/tls/sni/example.com/ws", "wss"),
            ("/memory/3", "memory"),
        ] {
            let addr: Multiaddr = addr.parse().unwrap();
            assert_eq!(transport_of(&addr), label, "{addr}");
        }
    }

    /// A duplex pipe as a muxed stream.
    struct Pipe(tokio::io::DuplexStream);

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl StreamIo for Pipe {
        fn reset(&mut self) {}
    }

    #[tokio::test]
    async fn counts_are_batched_yet_current_when_the_stream_waits_and_exact_at_its_end() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (received, sent) = (Counter::default(), Counter::default());
        let mut io = CountingIo::new(Box::new(Pipe(ours)), received.clone(), sent.clone());
        io.write_all(&[1; 100]).await.unwrap();
        // Below the batch: held locally, no shared update per write.
        assert_eq!(sent.get(), 0);
        // The stream waits for data: counts go out while it is idle.
        let mut buf = [0u8; 200];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let waiting = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(waiting.is_pending());
        assert_eq!(sent.get(), 100);
        let mut echo = [0u8; 100];
        theirs.read_exact(&mut echo).await.unwrap();
        theirs.write_all(&echo[..40]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 40);
        // Still inside the batch, and not waiting: not yet shared.
        assert_eq!(received.get(), 0);
        // A batch's worth goes out at once.
        io.write_all(&vec![2; COUNT_BATCH as usize]).await.unwrap();
        assert_eq!(sent.get(), 100 + COUNT_BATCH);
        drop(theirs);
        // The end of the stream: everything received is counted.
        assert_eq!(io.read(&mut [0u8; 8]).await.unwrap(), 0);
        assert_eq!(received.get(), 40);
        drop(io);
        assert_eq!(sent.get(), 100 + COUNT_BATCH);
    }

    #[test]
    fn dial_transport_labels() {
        let label = |s: &str| transport_of(&s.parse().unwrap());
        assert_eq!(label("/ip4/1.2.3.4/tcp/1"), "tcp");
        assert_eq!(label("/ip4/1.2.3.4/tcp/1/ws"), "ws");
        assert_eq!(label("/ip4/1.2.3.4/udp/1/quic-v1"), "quic-v1");
        assert_eq!(label("/ip4/1.2.3.4/udp/1"), "other");
    }
}
