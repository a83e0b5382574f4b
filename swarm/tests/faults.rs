//! Faults that arise on their own, not by a local close: a listener whose accept fails,
//! a connection ended by an I/O or protocol error, and a remote that vanishes without a
//! clean close over real TCP.
//!
//! The listener and connection faults are injected by a test-only [`Transport`] that wraps
//! the real memory transport (Noise + yamux): it behaves exactly like the real one until the
//! test flips a switch, so what the swarm sees is a real connection that then fails.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use strata_core::{
    BoxCapableConn, BoxListener, CapableConn, CloseReason, ConnError, ConnState, Direction,
    Listener, Multiaddr, PeerId, Protocol, PublicKey, Stream, Transport, TransportError,
};
use strata_swarm::{DisconnectReason, Swarm, SwarmConfig, SwarmEvent};
use tokio::sync::{broadcast, watch, Notify};

/// Wraps a real transport; remembers a switch for each listener it opens and each
/// connection it dials, so the test can make either fail.
struct FaultyTransport {
    inner: Arc<dyn Transport>,
    listeners: Mutex<Vec<Arc<Notify>>>,
    conns: Mutex<Vec<Arc<FaultState>>>,
}

impl FaultyTransport {
    fn new(inner: Arc<dyn Transport>) -> Arc<Self> {
        Arc::new(FaultyTransport {
            inner,
            listeners: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
        })
    }

    /// Makes the `i`th listener's pending (or next) accept fail.
    fn fail_listener(&self, i: usize) {
        // notify_one stores a permit, so the failure is not lost if accept is between calls.
        self.listeners.lock().unwrap()[i].notify_one();
    }

    /// Breaks the `i`th dialed connection as an I/O fault would: it reports `error`,
    /// accepts no more streams, and the real connection underneath is torn down.
    async fn break_conn(&self, i: usize, error: &str) {
        let state = self.conns.lock().unwrap()[i].clone();
        state.fault.send_replace(Some(error.to_string()));
        state.inner.close().await;
    }

    /// Makes the `i`th dialed connection's accept_stream fail with a muxer error while
    /// the connection itself stays up.
    fn fail_accept(&self, i: usize, error: &str) {
        let state = self.conns.lock().unwrap()[i].clone();
        state.accept_error.send_replace(Some(error.to_string()));
    }
}

#[async_trait]
impl Transport for FaultyTransport {
    fn protocols(&self) -> &[&'static str] {
        self.inner.protocols()
    }
    fn can_dial(&self, addr: &Multiaddr) -> bool {
        self.inner.can_dial(addr)
    }
    fn can_listen(&self, addr: &Multiaddr) -> bool {
        self.inner.can_listen(addr)
    }
    async fn dial(
        &self,
        addr: &Multiaddr,
        expected_peer: Option<PeerId>,
    ) -> Result<BoxCapableConn, TransportError> {
        let inner = self.inner.dial(addr, expected_peer).await?;
        let state = Arc::new(FaultState {
            inner,
            fault: watch::channel(None).0,
            accept_error: watch::channel(None).0,
        });
        self.conns.lock().unwrap().push(state.clone());
        Ok(Arc::new(FaultyConn(state)))
    }
    async fn listen(&self, addr: &Multiaddr) -> Result<BoxListener, TransportError> {
        let inner = self.inner.listen(addr).await?;
        let trigger = Arc::new(Notify::new());
        self.listeners.lock().unwrap().push(trigger.clone());
        Ok(Box::new(FlakyListener {
            inner,
            trigger,
            failed: false,
        }))
    }
}

/// A real listener whose accept fails, once, when the test triggers it; as the `Listener`
/// contract says, every later accept then reports the listener closed.
struct FlakyListener {
    inner: BoxListener,
    trigger: Arc<Notify>,
    failed: bool,
}

#[async_trait]
impl Listener for FlakyListener {
    fn multiaddr(&self) -> &Multiaddr {
        self.inner.multiaddr()
    }
    async fn accept(&mut self) -> Result<BoxCapableConn, TransportError> {
        let addr = self.inner.multiaddr().clone();
        if self.failed {
            return Err(TransportError::ListenerClosed { addr });
        }
        tokio::select! {
            _ = self.trigger.notified() => {
                self.failed = true;
                Err(TransportError::Accept {
                    addr,
                    source: std::io::Error::other("injected accept failure"),
                })
            }
            r = self.inner.accept() => r,
        }
    }
    async fn close(&mut self) {
        self.inner.close().await
    }
}

struct FaultState {
    inner: BoxCapableConn,
    /// `Some(text)` once the connection has failed.
    fault: watch::Sender<Option<String>>,
    /// `Some(text)`: accept_stream fails with a muxer error, the connection staying up.
    accept_error: watch::Sender<Option<String>>,
}

/// A real connection that, once its fault is set, reports `CloseReason::Error(text)` and
/// fails `accept_stream`, as a connection killed by a garbled frame or a socket error does.
struct FaultyConn(Arc<FaultState>);

impl FaultyConn {
    fn fault(&self) -> Option<String> {
        self.0.fault.borrow().clone()
    }
    fn closed_err(&self, text: String) -> ConnError {
        ConnError::Closed {
            peer: self.0.inner.remote_peer(),
            reason: CloseReason::Error(text),
        }
    }
}

#[async_trait]
impl CapableConn for FaultyConn {
    fn local_peer(&self) -> PeerId {
        self.0.inner.local_peer()
    }
    fn remote_peer(&self) -> PeerId {
        self.0.inner.remote_peer()
    }
    fn remote_public_key(&self) -> &PublicKey {
        self.0.inner.remote_public_key()
    }
    fn local_multiaddr(&self) -> &Multiaddr {
        self.0.inner.local_multiaddr()
    }
    fn remote_multiaddr(&self) -> &Multiaddr {
        self.0.inner.remote_multiaddr()
    }
    fn direction(&self) -> Direction {
        self.0.inner.direction()
    }
    fn state(&self) -> &ConnState {
        self.0.inner.state()
    }
    async fn open_stream(&self) -> Result<Stream, ConnError> {
        match self.fault() {
            Some(e) => Err(self.closed_err(e)),
            None => self.0.inner.open_stream().await,
        }
    }
    async fn accept_stream(&self) -> Result<Stream, ConnError> {
        let mut rx = self.0.fault.subscribe();
        let mut accept_rx = self.0.accept_error.subscribe();
        tokio::select! {
            r = rx.wait_for(Option::is_some) => {
                let text = r.ok().and_then(|v| v.clone()).unwrap_or_default();
                Err(self.closed_err(text))
            }
            r = accept_rx.wait_for(Option::is_some) => Err(ConnError::Muxer {
                peer: self.0.inner.remote_peer(),
                message: r.ok().and_then(|v| v.clone()).unwrap_or_default(),
            }),
            r = self.0.inner.accept_stream() => match self.fault() {
                Some(e) => Err(self.closed_err(e)),
                None => r,
            },
        }
    }
    fn go_away(&self) {
        self.0.inner.go_away()
    }
    async fn close(&self) {
        self.0.inner.close().await
    }
    fn abort(&self) {
        self.0.inner.abort()
    }
    async fn closed(&self) -> CloseReason {
        let mut rx = self.0.fault.subscribe();
        tokio::select! {
            biased;
            r = rx.wait_for(Option::is_some) => {
                CloseReason::Error(r.ok().and_then(|v| v.clone()).unwrap_or_default())
            }
            r = self.0.inner.closed() => match self.fault() {
                // The fault tears the real connection down; its own reason is a symptom.
                Some(e) => CloseReason::Error(e),
                None => r,
            },
        }
    }
    fn is_closed(&self) -> bool {
        self.fault().is_some() || self.0.inner.is_closed()
    }
}

fn faulty_swarm(seed: u64) -> (Swarm, Arc<FaultyTransport>) {
    let ft = FaultyTransport::new(transport(seed, Kind::Mem));
    let s = Swarm::new(peer(seed), SwarmConfig::default());
    s.add_transport(ft.clone()).unwrap();
    (s, ft)
}

/// Receives events until `pick` returns something, bounded by the test timeout.
async fn next_matching<T>(
    rx: &mut broadcast::Receiver<SwarmEvent>,
    pick: impl Fn(SwarmEvent) -> Option<T>,
) -> T {
    t(async {
        loop {
            if let Some(v) = pick(rx.recv().await.expect("event stream ended or lagged")) {
                return v;
            }
        }
    })
    .await
}

/// A listener whose accept fails on its own is removed from the swarm and reported
/// (`listen_close` to the notifiee, `ListenClosed` with the error on the event stream),
/// and its address is free again: listening on it anew works and accepts connections.
#[tokio::test]
async fn listener_failing_on_its_own_is_removed_reported_and_replaceable() {
    let (s, ft) = faulty_swarm(601);
    let rec = Recorder::default();
    let _h = s.notify(Arc::new(rec.clone()));
    let mut events = s.events();
    let addr = s.listen([any_addr(Kind::Mem)]).await.remove(0).unwrap();
    assert_eq!(s.listen_addresses(), vec![addr.clone()]);

    ft.fail_listener(0);
    rec.wait_for(|seen| seen.contains(&Seen::ListenClose(addr.clone())))
        .await;
    let error = next_matching(&mut events, |e| match e {
        SwarmEvent::ListenClosed { addr: a, error } if a == addr => Some(error),
        _ => None,
    })
    .await;
    let error = error.expect("a listener that failed must report its error");
    assert!(error.contains("injected accept failure"), "{error}");
    // The entry is removed before the close is reported, so this is not a race.
    assert!(s.listen_addresses().is_empty());

    let again = s.listen([addr.clone()]).await.remove(0).unwrap();
    assert_eq!(again, addr);
    assert_eq!(s.listen_addresses(), vec![addr.clone()]);
    let b = swarm(602, Kind::Mem);
    let conn = t(b.dial_addr(addr.clone())).await.unwrap();
    assert_eq!(conn.remote_peer(), s.local_peer());
    // Both listens are announced (delivery is asynchronous: wait for it).
    rec.wait_for(|seen| {
        seen.iter()
            .filter(|x| **x == Seen::Listen(addr.clone()))
            .count()
            == 2
    })
    .await;
    t(b.close()).await;
    t(s.close()).await;
}

/// A connection ended by a fault (not by anyone's close) is reported as
/// `DisconnectReason::Error` with the fault's text, to notifiees and on the event stream,
/// and is removed from the swarm.
#[tokio::test]
async fn connection_fault_is_reported_as_error_with_its_text() {
    const FAULT: &str = "yamux: invalid frame header (injected)";
    let (a, ft) = faulty_swarm(611);
    let b = swarm(612, Kind::Mem);
    b.set_stream_handler(echo());
    introduce(&a, &b, Kind::Mem).await;
    let rec = Recorder::default();
    let _h = a.notify(Arc::new(rec.clone()));
    let mut events = a.events();

    let conn = t(a.dial_peer(b.local_peer())).await.unwrap();
    // The wrapped connection is a working one until the fault.
    ping(&a, b.local_peer(), b"before the fault").await;

    ft.break_conn(0, FAULT).await;
    rec.wait_for(|seen| !disconnects(seen).is_empty()).await;
    assert_eq!(
        disconnects(&rec.seen()),
        vec![DisconnectReason::Error(FAULT.to_string())]
    );
    let reason = next_matching(&mut events, |e| match e {
        SwarmEvent::ConnectionClosed {
            conn: c, reason, ..
        } if c == conn.id() => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::Error(FAULT.to_string()));
    assert!(a.conns_to_peer(&b.local_peer()).is_empty());
    t(a.close()).await;
    t(b.close()).await;
}

/// An accept error that does not end the connection (a muxer error) must not leave a
/// half-dead connection in the swarm, one that takes no more inbound streams yet is still
/// handed out for new streams: the swarm closes it and reports `Error` with the muxer's
/// text.
#[tokio::test]
async fn accept_error_on_a_live_connection_closes_it_as_error() {
    const MUXER: &str = "stream accept queue corrupted (injected)";
    let (a, ft) = faulty_swarm(631);
    let b = swarm(632, Kind::Mem);
    introduce(&a, &b, Kind::Mem).await;
    let rec = Recorder::default();
    let _h = a.notify(Arc::new(rec.clone()));

    let conn = t(a.dial_peer(b.local_peer())).await.unwrap();
    ft.fail_accept(0, MUXER);
    rec.wait_for(|seen| !disconnects(seen).is_empty()).await;
    let reasons = disconnects(&rec.seen());
    assert!(
        matches!(&reasons[..], [DisconnectReason::Error(e)] if e.contains(MUXER)),
        "{reasons:?}"
    );
    assert!(conn.is_closed());
    assert!(a.conns_to_peer(&b.local_peer()).is_empty());
    t(a.close()).await;
    t(b.close()).await;
}

/// A remote that vanishes over real TCP (its socket goes away with no yamux GoAway: here
/// a relay in the middle drops both sockets) is reported as `Remote` or `Error`, never as
/// `Local`: we did not close it.
#[tokio::test]
async fn remote_vanishing_over_tcp_is_never_reported_as_local() {
    let a = swarm(621, Kind::Tcp);
    let b = swarm(622, Kind::Tcp);
    b.set_stream_handler(echo());
    let b_addr = listen(&b, Kind::Tcp).await;
    let b_port = b_addr
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let relay_task = tokio::spawn(async move {
        let (mut inbound, _) = relay.accept().await?;
        let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", b_port)).await?;
        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
    });
    let via: Multiaddr = format!("/ip4/127.0.0.1/tcp/{relay_port}").parse().unwrap();
    a.add_addrs(b.local_peer(), [via]);
    let rec = Recorder::default();
    let _h = a.notify(Arc::new(rec.clone()));

    t(a.dial_peer(b.local_peer())).await.unwrap();
    ping(&a, b.local_peer(), b"through the relay").await;

    // Aborting the relay drops both of its sockets: the remote is simply gone.
    relay_task.abort();
    rec.wait_for(|seen| !disconnects(seen).is_empty()).await;
    let reasons = disconnects(&rec.seen());
    assert_eq!(reasons.len(), 1);
    assert!(
        matches!(
            reasons[0],
            DisconnectReason::Remote | DisconnectReason::Error(_)
        ),
        "a vanished remote was reported as {:?}",
        reasons[0]
    );
    t(a.close()).await;
    t(b.close()).await;
}
