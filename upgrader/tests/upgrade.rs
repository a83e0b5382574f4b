//! The upgrader end to end over real loopback TCP: security and muxer negotiation, the
//! accept queue, deadlines, the gater, and hostile peers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::identity::keypair_from_seed;
use strata_core::{
    BoxCapableConn, BoxListener, CapableConn, ConnectionGater, Direction, GateStage, Keypair,
    Multiaddr, PeerId, SecurityError, Transport, TransportError, UpgradeError,
};
use strata_transport::{TcpConfig, TcpTransport};
use strata_upgrader::multistream::{encode, Message};
use strata_upgrader::muxer::yamux::Yamux;
use strata_upgrader::{
    NoiseTransport, PlaintextTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded,
    Upgrader, UpgraderConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Sec {
    Tls,
    Noise,
    Plaintext,
}

fn security(key: &Keypair, sec: Sec) -> Arc<dyn SecureTransport> {
    match sec {
        Sec::Tls => Arc::new(TlsTransport::new(key.clone()).unwrap()),
        Sec::Noise => Arc::new(NoiseTransport::new(key.clone())),
        Sec::Plaintext => Arc::new(PlaintextTransport::insecure_for_tests(key.clone())),
    }
}

fn upgrader(key: &Keypair, secs: &[Sec], config: UpgraderConfig) -> Upgrader {
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    Upgrader::new(
        key.public().to_peer_id(),
        secs.iter().map(|s| security(key, *s)).collect(),
        vec![muxer],
        config,
    )
    .unwrap()
}

fn tcp(up: Upgrader) -> Upgraded<TcpTransport> {
    Upgraded::new(
        TcpTransport::new(TcpConfig::default().reuseport(false)),
        Arc::new(up),
    )
}

fn node(seed: u64, secs: &[Sec]) -> (Keypair, Upgraded<TcpTransport>) {
    let key = keypair_from_seed(seed);
    let t = tcp(upgrader(&key, secs, UpgraderConfig::default()));
    (key, t)
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

async fn listen(t: &Upgraded<TcpTransport>) -> BoxListener {
    t.listen(&loopback()).await.unwrap()
}

async fn accept(l: &mut BoxListener) -> BoxCapableConn {
    timeout(LIMIT, l.accept())
        .await
        .expect("accept timed out")
        .unwrap()
}

/// Opens a stream from `a`, accepts it on `b`, and checks bytes cross both ways.
async fn check_stream(a: &BoxCapableConn, b: &BoxCapableConn) {
    let mut out = a.open_stream().await.unwrap();
    out.write_all(b"hello").await.unwrap();
    out.flush().await.unwrap();
    let mut inb = timeout(LIMIT, b.accept_stream()).await.unwrap().unwrap();
    let mut buf = [0u8; 5];
    inb.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    inb.write_all(b"world").await.unwrap();
    inb.flush().await.unwrap();
    out.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"world");
}

async fn connect_pair(
    dialer: &Upgraded<TcpTransport>,
    listener: &mut BoxListener,
    expect: Option<PeerId>,
) -> (BoxCapableConn, BoxCapableConn) {
    let addr = listener.multiaddr().clone();
    let (d, l) = tokio::join!(dialer.dial(&addr, expect), accept(listener));
    (d.unwrap(), l)
}

#[tokio::test]
async fn tls_and_noise_upgrade_with_early_muxer_negotiation() {
    for (sec, id) in [(Sec::Tls, "/tls/1.0.0"), (Sec::Noise, "/noise")] {
        let (ka, a) = node(1, &[sec]);
        let (kb, b) = node(2, &[sec]);
        let mut lb = listen(&b).await;
        let (ca, cb) = connect_pair(&a, &mut lb, Some(kb.public().to_peer_id())).await;
        assert_eq!(ca.remote_peer(), kb.public().to_peer_id());
        assert_eq!(cb.remote_peer(), ka.public().to_peer_id());
        assert_eq!(cb.remote_public_key(), &ka.public());
        assert_eq!(ca.direction(), Direction::Outbound);
        assert_eq!(cb.direction(), Direction::Inbound);
        for c in [&ca, &cb] {
            assert_eq!(c.state().security, id);
            assert_eq!(c.state().muxer, "/yamux/1.0.0");
            assert_eq!(c.state().transport, "tcp");
            assert!(
                c.state().used_early_muxer_negotiation,
                "{id}: ALPN / extensions pick yamux"
            );
        }
        assert_eq!(cb.remote_multiaddr(), ca.local_multiaddr());
        check_stream(&ca, &cb).await;
        check_stream(&cb, &ca).await;
    }
}

#[tokio::test]
async fn muxer_falls_back_to_multistream_select() {
    let (_, a) = node(1, &[Sec::Plaintext]);
    let (_, b) = node(2, &[Sec::Plaintext]);
    let mut lb = listen(&b).await;
    let (ca, cb) = connect_pair(&a, &mut lb, None).await;
    for c in [&ca, &cb] {
        assert_eq!(c.state().security, "/plaintext/2.0.0");
        assert_eq!(c.state().muxer, "/yamux/1.0.0");
        assert!(!c.state().used_early_muxer_negotiation);
    }
    check_stream(&ca, &cb).await;
}

#[tokio::test]
async fn dialer_preference_wins_among_shared_security_protocols() {
    let (_, a) = node(1, &[Sec::Noise, Sec::Tls]);
    let (_, b) = node(2, &[Sec::Tls, Sec::Noise]);
    let mut lb = listen(&b).await;
    let (ca, cb) = connect_pair(&a, &mut lb, None).await;
    assert_eq!(ca.state().security, "/noise");
    assert_eq!(cb.state().security, "/noise");
    // And the second choice when the first is unknown to the listener.
    let (_, c) = node(3, &[Sec::Plaintext, Sec::Tls]);
    let (cc, _) = connect_pair(&c, &mut lb, None).await;
    assert_eq!(cc.state().security, "/tls/1.0.0");
}

#[tokio::test]
async fn wrong_expected_peer_is_a_typed_mismatch() {
    for sec in [Sec::Tls, Sec::Noise] {
        let (_, a) = node(1, &[sec]);
        let (kb, b) = node(2, &[sec]);
        let mut lb = listen(&b).await;
        let wrong = keypair_from_seed(99).public().to_peer_id();
        let err = a.dial(lb.multiaddr(), Some(wrong)).await.err().unwrap();
        match err.security_error() {
            Some(SecurityError::PeerIdMismatch { expected, actual }) => {
                assert_eq!(*expected, wrong);
                assert_eq!(*actual, kb.public().to_peer_id());
            }
            _ => panic!("expected PeerIdMismatch, got {err:?}"),
        }
        // The /p2p suffix of the address is an expectation too.
        let addr = lb
            .multiaddr()
            .clone()
            .with(strata_core::Protocol::P2p(wrong));
        assert!(a
            .dial(&addr, None)
            .await
            .err()
            .unwrap()
            .security_error()
            .is_some());
        lb.close().await;
    }
}

#[tokio::test]
async fn no_common_security_protocol_is_a_negotiation_error() {
    let (_, a) = node(1, &[Sec::Plaintext]);
    let (_, b) = node(2, &[Sec::Tls]);
    let lb = listen(&b).await;
    match a.dial(lb.multiaddr(), None).await {
        Err(TransportError::Upgrade {
            source: UpgradeError::Negotiation { step, message },
            ..
        }) => {
            assert_eq!(step, "security");
            assert!(message.contains("/plaintext/2.0.0"), "{message}");
        }
        other => panic!("expected a negotiation error, got {:?}", other.err()),
    }
}

/// A raw TCP client that writes `bytes` and reports whether the server then closed.
async fn hostile_client(addr: &Multiaddr, bytes: &[u8]) -> tokio::net::TcpStream {
    let sa = strata_core::addr::tcp_socket_addr(addr).unwrap();
    let mut s = tokio::net::TcpStream::connect(sa).await.unwrap();
    // The server may already have reset a socket it refused; reads then show it.
    if !bytes.is_empty() {
        let _ = s.write_all(bytes).await;
    }
    s
}

/// Reads until the server closes; true if it did within the limit.
async fn server_closes(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match timeout(LIMIT, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn hostile_bytes_close_the_connection_and_the_listener_goes_on() {
    let (_, a) = node(1, &[Sec::Tls]);
    let (kb, b) = node(2, &[Sec::Tls]);
    let mut lb = listen(&b).await;
    let addr = lb.multiaddr().clone();
    let oversized = [0xff, 0x7f];
    let garbage = b"GET / HTTP/1.1\r\nHost: example\r\n".repeat(4);
    let mut header_then_unknown = Vec::new();
    strata_upgrader::multistream::encode(
        &strata_upgrader::multistream::Message::Header,
        &mut header_then_unknown,
    );
    for bytes in [&oversized[..], &garbage[..]] {
        let mut s = hostile_client(&addr, bytes).await;
        assert!(
            server_closes(&mut s).await,
            "the server must close on {bytes:?}"
        );
    }
    // An unknown security protocol is answered with na, and the connection stays for more.
    strata_upgrader::multistream::encode(
        &strata_upgrader::multistream::Message::Protocol("/unknown/1.0.0".into()),
        &mut header_then_unknown,
    );
    let mut s = hostile_client(&addr, &header_then_unknown).await;
    let mut answer = vec![0u8; 20 + 4];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[20..], b"\x03na\n");
    // A real peer still connects.
    let (ca, _cb) = connect_pair(&a, &mut lb, Some(kb.public().to_peer_id())).await;
    assert!(!ca.is_closed());
}

#[tokio::test]
async fn a_silent_peer_times_out_and_frees_its_handshake_slot() {
    let kb = keypair_from_seed(2);
    let config = UpgraderConfig {
        handshake_timeout: Duration::from_millis(300),
        max_inflight_handshakes: 1,
        ..UpgraderConfig::default()
    };
    let b = tcp(upgrader(&kb, &[Sec::Noise], config));
    let (_, a) = node(1, &[Sec::Noise]);
    let mut lb = listen(&b).await;
    let mut silent = hostile_client(lb.multiaddr(), b"").await;
    // The only slot is the silent peer's: a socket past the bound is reset at once, and
    // gets no handshake byte.
    let sa = strata_core::addr::tcp_socket_addr(lb.multiaddr()).unwrap();
    // The reset may come before connect() returns, which then reports it.
    if let Ok(mut extra) = tokio::net::TcpStream::connect(sa).await {
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("a socket past the bound is closed at once");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "no handshake byte: {read:?}"
        );
    }
    assert!(
        server_closes(&mut silent).await,
        "the silent peer is cut at the deadline"
    );
    // Its slot is free again for a real peer.
    let (ca, _cb) = connect_pair(&a, &mut lb, None).await;
    assert!(!ca.is_closed());
}

#[tokio::test]
async fn two_hundred_silent_peers_do_not_lock_out_a_real_one() {
    let (_, a) = node(1, &[Sec::Tls]);
    let (_, b) = node(2, &[Sec::Tls]);
    let mut lb = listen(&b).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(hostile_client(lb.multiaddr(), b"").await);
    }
    // Well inside the 15 s handshake deadline that would free the silent peers' slots.
    let (ca, _cb) = timeout(Duration::from_secs(5), connect_pair(&a, &mut lb, None))
        .await
        .expect("a real peer must get through a flood of silent ones");
    assert!(!ca.is_closed());
}

#[tokio::test]
async fn full_accept_queue_holds_back_the_next_connection() {
    let (_, a) = node(1, &[Sec::Noise]);
    let raw = TcpTransport::new(TcpConfig::default().reuseport(false));
    let up = Arc::new(upgrader(
        &keypair_from_seed(2),
        &[Sec::Noise],
        UpgraderConfig::default(),
    ));
    let raw_listener = strata_core::RawTransport::listen(&raw, &loopback())
        .await
        .unwrap();
    let lb = strata_upgrader::UpgradedListener::new(raw_listener, up, "tcp");
    let mut queued = lb.queued();
    let mut lb: BoxListener = Box::new(lb);
    let addr = lb.multiaddr().clone();
    let a = Arc::new(a);
    let mut dialed = Vec::new();
    for _ in 0..16 {
        dialed.push(timeout(LIMIT, a.dial(&addr, None)).await.unwrap().unwrap());
    }
    timeout(LIMIT, queued.wait_for(|n| *n == 16))
        .await
        .unwrap()
        .unwrap();
    // The queue holds 16 upgraded connections and nobody accepts: the 17th stays in the
    // kernel's backlog, so its handshake cannot even start.
    let a2 = a.clone();
    let addr2 = addr.clone();
    let mut seventeenth = tokio::spawn(async move { a2.dial(&addr2, None).await });
    assert!(
        timeout(Duration::from_millis(500), &mut seventeenth)
            .await
            .is_err(),
        "the 17th connection must wait while the queue is full"
    );
    let first = accept(&mut lb).await;
    let c17 = timeout(LIMIT, seventeenth).await.unwrap().unwrap().unwrap();
    assert!(!c17.is_closed() && !first.is_closed());
    // Everything queued is handed out, and none of it is already closed.
    for _ in 0..16 {
        assert!(!accept(&mut lb).await.is_closed());
    }
    assert_eq!(*queued.borrow(), 0);
}

#[tokio::test]
async fn closing_the_listener_closes_queued_connections_and_ends_its_tasks() {
    let (_, a) = node(1, &[Sec::Noise]);
    let (_, b) = node(2, &[Sec::Noise]);
    let raw = TcpTransport::new(TcpConfig::default().reuseport(false));
    let up = Arc::new(upgrader(
        &keypair_from_seed(2),
        &[Sec::Noise],
        UpgraderConfig::default(),
    ));
    let raw_listener = strata_core::RawTransport::listen(&raw, &loopback())
        .await
        .unwrap();
    let mut lb = strata_upgrader::UpgradedListener::new(raw_listener, up, "tcp");
    drop(b);
    let addr = strata_core::Listener::multiaddr(&lb).clone();
    let mut dialed = Vec::new();
    for _ in 0..3 {
        dialed.push(a.dial(&addr, None).await.unwrap());
    }
    strata_core::Listener::close(&mut lb).await;
    assert_eq!(lb.task_count(), 0);
    for c in &dialed {
        timeout(LIMIT, c.closed())
            .await
            .expect("queued connections are closed");
    }
    assert!(matches!(
        strata_core::Listener::accept(&mut lb).await,
        Err(TransportError::ListenerClosed { .. })
    ));
}

#[derive(Default)]
struct RefusePeer {
    refused: Option<PeerId>,
    accept_calls: AtomicUsize,
    refuse_all_accepts: bool,
    refuse_upgraded: bool,
}

impl ConnectionGater for RefusePeer {
    fn intercept_accept(&self, _: &Multiaddr, _: &Multiaddr) -> bool {
        self.accept_calls.fetch_add(1, Ordering::SeqCst);
        !self.refuse_all_accepts
    }
    fn intercept_secured(&self, _: Direction, peer: &PeerId, _: &Multiaddr, _: &Multiaddr) -> bool {
        Some(*peer) != self.refused
    }
    fn intercept_upgraded(&self, _: &dyn CapableConn) -> bool {
        !self.refuse_upgraded
    }
}

#[tokio::test]
async fn gater_refusals_close_the_connection_at_each_stage() {
    let ka = keypair_from_seed(1);
    let (_, a) = node(1, &[Sec::Tls]);
    let (_, ok_peer) = node(3, &[Sec::Tls]);
    let kb = keypair_from_seed(2);

    // Secured: the refused peer's dial fails, another peer gets through.
    let gater = Arc::new(RefusePeer {
        refused: Some(ka.public().to_peer_id()),
        ..Default::default()
    });
    let b = tcp(upgrader(&kb, &[Sec::Tls], UpgraderConfig::default()).with_gater(gater.clone()));
    let mut lb = listen(&b).await;
    let addr = lb.multiaddr().clone();
    let refused = a.dial(&addr, None).await;
    let refused_conn_ended = match refused {
        Err(_) => true,
        // TLS 1.3: the client may finish before the server's verdict; then the
        // connection must end right after.
        Ok(c) => timeout(LIMIT, c.closed()).await.is_ok(),
    };
    assert!(refused_conn_ended);
    let (c, _) = connect_pair(&ok_peer, &mut lb, None).await;
    assert_eq!(c.remote_peer(), kb.public().to_peer_id());
    assert!(gater.accept_calls.load(Ordering::SeqCst) >= 2);

    // Accept: nothing gets a handshake.
    let gater = Arc::new(RefusePeer {
        refuse_all_accepts: true,
        ..Default::default()
    });
    let b = tcp(upgrader(&kb, &[Sec::Tls], UpgraderConfig::default()).with_gater(gater));
    let lb = listen(&b).await;
    assert!(a.dial(lb.multiaddr(), None).await.is_err());

    // Upgraded.
    let gater = Arc::new(RefusePeer {
        refuse_upgraded: true,
        ..Default::default()
    });
    let b = tcp(upgrader(&kb, &[Sec::Noise], UpgraderConfig::default()).with_gater(gater));
    let lb = listen(&b).await;
    let (_, a_noise) = node(1, &[Sec::Noise]);
    let c = a_noise.dial(lb.multiaddr(), None).await.unwrap();
    timeout(LIMIT, c.closed())
        .await
        .expect("a connection refused once upgraded is closed");
}

#[tokio::test]
async fn gated_outbound_upgrade_is_a_typed_error() {
    let ka = keypair_from_seed(1);
    let kb = keypair_from_seed(2);
    let gater = Arc::new(RefusePeer {
        refused: Some(kb.public().to_peer_id()),
        ..Default::default()
    });
    let a = tcp(upgrader(&ka, &[Sec::Noise], UpgraderConfig::default()).with_gater(gater));
    let (_, b) = node(2, &[Sec::Noise]);
    let lb = listen(&b).await;
    match a.dial(lb.multiaddr(), None).await {
        Err(TransportError::Upgrade {
            source: UpgradeError::Gated(GateStage::Secured),
            ..
        }) => {}
        other => panic!("expected Gated(Secured), got {:?}", other.err()),
    }
}

#[test]
fn contradictory_upgrader_settings_are_errors() {
    let key = keypair_from_seed(1);
    let peer = key.public().to_peer_id();
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let sec = security(&key, Sec::Noise);
    use strata_upgrader::UpgraderConfigError as E;
    assert_eq!(
        Upgrader::new(peer, vec![], vec![muxer.clone()], UpgraderConfig::default()).err(),
        Some(E::NoSecurity)
    );
    assert_eq!(
        Upgrader::new(peer, vec![sec.clone()], vec![], UpgraderConfig::default()).err(),
        Some(E::NoMuxer)
    );
    assert_eq!(
        Upgrader::new(
            peer,
            vec![sec.clone(), sec.clone()],
            vec![muxer.clone()],
            UpgraderConfig::default()
        )
        .err(),
        Some(E::Duplicate("/noise".into()))
    );
    let zero = UpgraderConfig {
        accept_queue_len: 0,
        ..UpgraderConfig::default()
    };
    assert_eq!(
        Upgrader::new(peer, vec![sec], vec![muxer], zero).err(),
        Some(E::Zero("accept_queue_len"))
    );
}

/// A local close over TCP (SO_LINGER 0) ends cleanly for the remote: it reads GoAway and
/// EOF and reports `Remote`, even while it is busy writing, instead of a reset turning
/// into an I/O error.
#[tokio::test]
async fn local_close_is_a_clean_remote_close_for_a_busy_peer() {
    for sec in [Sec::Tls, Sec::Noise] {
        for _ in 0..10 {
            let (_, a) = node(1, &[sec]);
            let (_, b) = node(2, &[sec]);
            let mut lb = listen(&b).await;
            let (ca, cb) = connect_pair(&a, &mut lb, None).await;
            let mut busy = cb.open_stream().await.unwrap();
            let writer = tokio::spawn(async move {
                let chunk = vec![7u8; 16 * 1024];
                while busy.write_all(&chunk).await.is_ok() {}
            });
            let _inbound = timeout(LIMIT, ca.accept_stream()).await.unwrap().unwrap();
            ca.close().await;
            let reason = timeout(LIMIT, cb.closed()).await.unwrap();
            assert_eq!(reason, strata_core::CloseReason::Remote);
            assert_eq!(ca.closed().await, strata_core::CloseReason::Local);
            timeout(LIMIT, writer).await.unwrap().unwrap();
        }
    }
}

#[test]
fn a_full_queue_of_connections_whose_peers_never_answer_closes_at_once() {
    // The peers run on a runtime of their own that freezes once they are queued: they
    // will never answer a Go Away or read a byte again.
    let peers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut lb, addr, queued) = rt.block_on(async {
        let raw = TcpTransport::new(TcpConfig::default().reuseport(false));
        let up = Arc::new(upgrader(
            &keypair_from_seed(2),
            &[Sec::Noise],
            UpgraderConfig::default(),
        ));
        let raw_listener = strata_core::RawTransport::listen(&raw, &loopback())
            .await
            .unwrap();
        let lb = strata_upgrader::UpgradedListener::new(raw_listener, up, "tcp");
        let addr = strata_core::Listener::multiaddr(&lb).clone();
        let queued = lb.queued();
        (lb, addr, queued)
    });
    let dialed = peers_rt.block_on(async {
        let (_, a) = node(1, &[Sec::Noise]);
        let mut dialed = Vec::new();
        for _ in 0..16 {
            dialed.push(timeout(LIMIT, a.dial(&addr, None)).await.unwrap().unwrap());
        }
        dialed
    });
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<()>();
    peers_rt.spawn(async move {
        frozen_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    frozen_rx.recv().unwrap();
    rt.block_on(async {
        let mut queued = queued;
        timeout(LIMIT, queued.wait_for(|n| *n == 16))
            .await
            .unwrap()
            .unwrap();
        let start = std::time::Instant::now();
        strata_core::Listener::close(&mut lb).await;
        let took = start.elapsed();
        assert!(took < Duration::from_millis(200), "close took {took:?}");
        assert_eq!(lb.task_count(), 0);
    });
    release_tx.send(()).unwrap();
    peers_rt.block_on(async {
        for c in &dialed {
            timeout(LIMIT, c.closed())
                .await
                .expect("the peers see their connections end");
        }
    });
}

/// A raw transport whose first dial lands on a peer that speaks as a dialer too, as two
/// dialers meeting in one TCP connection (simultaneous open) do; `dial_fresh` reaches
/// the real listener.
struct SimultaneousOpen {
    tcp: TcpTransport,
    impostor: Multiaddr,
    listener: Multiaddr,
    fresh_dials: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl strata_core::RawTransport for SimultaneousOpen {
    fn protocols(&self) -> &[&'static str] {
        &["tcp"]
    }
    fn can_dial(&self, _: &Multiaddr) -> bool {
        true
    }
    fn can_listen(&self, _: &Multiaddr) -> bool {
        false
    }
    async fn dial(&self, _: &Multiaddr) -> Result<strata_core::BoxRawConn, TransportError> {
        Ok(Box::new(self.tcp.dial_tcp(&self.impostor).await?))
    }
    fn dials_from_listen_port(&self) -> bool {
        true
    }
    async fn dial_fresh(&self, _: &Multiaddr) -> Result<strata_core::BoxRawConn, TransportError> {
        self.fresh_dials
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(self.tcp.dial_tcp(&self.listener).await?))
    }
    async fn listen(
        &self,
        addr: &Multiaddr,
    ) -> Result<strata_core::BoxRawListener, TransportError> {
        self.tcp.listen(addr).await
    }
}

#[tokio::test]
async fn a_dial_that_meets_another_dialer_retries_from_a_fresh_port() {
    let tcp = TcpTransport::new(TcpConfig::default().reuseport(false));
    // The impostor: whoever connects is answered as a dialer would answer.
    let mut impostor = strata_core::RawTransport::listen(&tcp, &loopback())
        .await
        .unwrap();
    let impostor_addr = impostor.multiaddr().clone();
    let impostor_key = keypair_from_seed(9);
    let impostor_up = Arc::new(upgrader(
        &impostor_key,
        &[Sec::Tls],
        UpgraderConfig::default(),
    ));
    let impostor_task = tokio::spawn(async move {
        let raw = impostor.accept().await.unwrap();
        let scope = strata_core::ConnScope::unlimited();
        impostor_up
            .upgrade_outbound(raw, None, "tcp", scope)
            .await
            .is_err()
    });
    let (kb, b) = node(2, &[Sec::Tls]);
    let mut lb = listen(&b).await;
    let fresh_dials = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = Upgraded::new(
        SimultaneousOpen {
            tcp: tcp.clone(),
            impostor: impostor_addr,
            listener: lb.multiaddr().clone(),
            fresh_dials: fresh_dials.clone(),
        },
        Arc::new(upgrader(
            &keypair_from_seed(1),
            &[Sec::Tls],
            UpgraderConfig::default(),
        )),
    );
    let target: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    let (dialed, accepted) = tokio::join!(timeout(LIMIT, a.dial(&target, None)), accept(&mut lb));
    let conn = dialed
        .unwrap()
        .expect("the retry from a fresh port connects");
    assert_eq!(conn.remote_peer(), kb.public().to_peer_id());
    assert_eq!(
        accepted.remote_peer(),
        keypair_from_seed(1).public().to_peer_id()
    );
    assert_eq!(fresh_dials.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        impostor_task.await.unwrap(),
        "the two dialers could not agree"
    );
}

/// Handshakes the listener saw fail so far.
fn failed_handshakes(l: &BoxListener) -> u64 {
    l.accept_stats()
        .expect("an upgraded listener has an accept queue")
        .counters()
        .failed
        .load(Ordering::Relaxed)
}

#[tokio::test]
async fn optimistic_dialer_reaches_a_listener_of_its_second_choice_on_one_connection() {
    for (offered, spoken, id) in [
        ([Sec::Tls, Sec::Noise], Sec::Noise, "/noise"),
        ([Sec::Noise, Sec::Tls], Sec::Tls, "/tls/1.0.0"),
    ] {
        let (_, a) = node(1, &offered);
        let (_, b) = node(2, &[spoken]);
        let mut lb = listen(&b).await;
        let (ca, cb) = connect_pair(&a, &mut lb, None).await;
        assert_eq!(ca.state().security, id);
        assert_eq!(cb.state().security, id);
        check_stream(&ca, &cb).await;
        // The listener skipped the refused handshake: no connection failed on the way
        // (a retry on a new connection would have left one behind).
        assert_eq!(failed_handshakes(&lb), 0, "{id}");
        lb.close().await;
    }
}

#[tokio::test]
async fn a_dialer_without_optimism_still_negotiates() {
    let key = keypair_from_seed(1);
    let config = UpgraderConfig {
        optimistic_security: false,
        ..UpgraderConfig::default()
    };
    let a = tcp(upgrader(&key, &[Sec::Tls, Sec::Noise], config));
    let (_, b) = node(2, &[Sec::Noise]);
    let mut lb = listen(&b).await;
    let (ca, cb) = connect_pair(&a, &mut lb, None).await;
    assert_eq!(ca.state().security, "/noise");
    check_stream(&ca, &cb).await;
}

#[tokio::test]
async fn junk_or_a_cut_handshake_behind_a_refused_proposal_fails_only_that_connection() {
    let (_, b) = node(2, &[Sec::Noise]);
    let mut lb = listen(&b).await;
    let mut proposal = Vec::new();
    for m in [Message::Header, Message::Protocol("/tls/1.0.0".into())] {
        encode(&m, &mut proposal);
    }
    // A TLS record cut off mid-flight, then the end of the connection.
    let mut cut = proposal.clone();
    cut.extend([0x16, 0x03, 0x01, 0x01, 0x00, 1, 2, 3]);
    // Junk where the next proposal should be.
    let mut junk = proposal.clone();
    junk.extend([0x16, 0x03, 0x01, 0x00, 0x02, 9, 9]);
    junk.extend([0x30; 64]);
    for (i, bytes) in [cut, junk].iter().enumerate() {
        let mut s = hostile_client(lb.multiaddr(), bytes).await;
        s.shutdown().await.unwrap();
        assert!(server_closes(&mut s).await);
        let failed = timeout(LIMIT, async {
            while failed_handshakes(&lb) <= i as u64 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(failed.is_ok(), "the listener counts the failed handshake");
    }
    // The listener goes on.
    let (_, a) = node(1, &[Sec::Tls, Sec::Noise]);
    let (ca, cb) = connect_pair(&a, &mut lb, None).await;
    check_stream(&ca, &cb).await;
}
