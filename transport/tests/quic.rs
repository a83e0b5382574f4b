//! QUIC transport between two Strata endpoints on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_core::addr::quic_socket_addr;
use strata_core::identity::generate_ed25519;
use strata_core::{
    BoxCapableConn, CloseReason, ConnectionGater, Direction, Multiaddr, SecurityError, Stream,
    Transport, TransportError, UpgradeError,
};
use strata_transport::{QuicConfig, QuicTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Bound on every await: a bug fails the test instead of hanging it.
const T: Duration = Duration::from_secs(10);

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

fn transport() -> QuicTransport {
    QuicTransport::new(generate_ed25519(), QuicConfig::default()).unwrap()
}

fn port_of(addr: &Multiaddr) -> u16 {
    quic_socket_addr(addr).unwrap().port()
}

/// A listener on `listen_on` of a fresh transport, and a connection to it from `client`;
/// returns (client side, server side, server transport).
async fn connect_on(
    client: &QuicTransport,
    listen_on: &str,
) -> (BoxCapableConn, BoxCapableConn, QuicTransport) {
    let server = transport();
    let mut listener = server.listen(&ma(listen_on)).await.unwrap();
    let addr = listener.multiaddr().clone();
    let (dialed, accepted) = timeout(
        T,
        futures_join(
            client.dial(&addr, Some(server.local_peer())),
            listener.accept(),
        ),
    )
    .await
    .unwrap();
    // The listener may go: accepted connections outlive it.
    drop(listener);
    (dialed.unwrap(), accepted.unwrap(), server)
}

async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// Echoes every inbound stream: reads to EOF, writes it all back, finishes.
fn spawn_echo(conn: BoxCapableConn) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(mut s) = conn.accept_stream().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                    let _ = s.close_write().await;
                }
            });
        }
    })
}

async fn echo_round(conn: &BoxCapableConn, payload: Vec<u8>) {
    let mut s: Stream = conn.open_stream().await.unwrap();
    assert_eq!(s.direction(), Direction::Outbound);
    s.write_all(&payload).await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);
}

/// Dial with the expected peer: both sides know each other's peer ID and key, the
/// directions and addresses line up, and the state is go-libp2p's QUIC state.
#[tokio::test]
async fn connect_with_expected_peer() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert_eq!(c.remote_peer(), server.local_peer());
    assert_eq!(s.remote_peer(), client.local_peer());
    assert_eq!(c.local_peer(), client.local_peer());
    assert_eq!(c.remote_public_key().to_peer_id(), server.local_peer());
    assert_eq!(s.remote_public_key().to_peer_id(), client.local_peer());
    assert_eq!(c.direction(), Direction::Outbound);
    assert_eq!(s.direction(), Direction::Inbound);
    assert_eq!(c.remote_multiaddr(), s.local_multiaddr());
    assert_eq!(c.local_multiaddr(), s.remote_multiaddr());
    for conn in [&c, &s] {
        let st = conn.state();
        assert_eq!(st.transport, "quic-v1");
        assert_eq!(st.muxer, "quic");
        assert!(!st.used_early_muxer_negotiation);
    }
    assert_eq!(client.protocols(), &["quic-v1"]);
    assert!(client.can_dial(&ma("/ip6/::1/udp/1/quic-v1")));
    assert!(!client.can_dial(&ma("/ip4/127.0.0.1/tcp/1")));
    // The expected peer may also come from the /p2p suffix.
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let with_p2p = listener
        .multiaddr()
        .clone()
        .with(strata_core::Protocol::P2p(server.local_peer()));
    let (dialed, accepted) = timeout(
        T,
        futures_join(client.dial(&with_p2p, None), listener.accept()),
    )
    .await
    .unwrap();
    assert_eq!(dialed.unwrap().remote_peer(), server.local_peer());
    accepted.unwrap();
    client.close().await;
    server.close().await;
}

/// 50 concurrent streams each way, each echoing its own payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_both_ways() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let echo_c = spawn_echo(c.clone());
    let echo_s = spawn_echo(s.clone());
    let mut rounds = Vec::new();
    for i in 0..50u32 {
        for conn in [c.clone(), s.clone()] {
            let payload: Vec<u8> = (0..(1000 + i * 997)).map(|b| (b ^ i) as u8).collect();
            rounds.push(tokio::spawn(
                async move { echo_round(&conn, payload).await },
            ));
        }
    }
    for r in rounds {
        timeout(T, r).await.unwrap().unwrap();
    }
    echo_c.abort();
    echo_s.abort();
    client.close().await;
    server.close().await;
}

/// A connection starts with few stream slots (16) and grows them as the peer uses
/// them: 200 streams held open at once are all accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_grows_with_open_streams() {
    use tokio::io::AsyncWriteExt;
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while held.len() < 200 {
            let mut stream = s.accept_stream().await.unwrap();
            let mut b = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut b)
                .await
                .unwrap();
            held.push(stream);
        }
        (s, held)
    });
    let mut opened = Vec::new();
    for _ in 0..200 {
        let mut stream = timeout(T, c.open_stream()).await.unwrap().unwrap();
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        opened.push(stream);
    }
    let (_s, held) = timeout(T, accepting).await.unwrap().unwrap();
    assert_eq!(held.len(), 200);
    drop(opened);
    client.close().await;
    server.close().await;
}

/// Finishing our side: the remote reads EOF and can still write back.
#[tokio::test]
async fn half_close() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let mut out = c.open_stream().await.unwrap();
    out.write_all(b"ping").await.unwrap();
    out.close_write().await.unwrap();
    // A second close_write is harmless, as on TCP.
    out.close_write().await.unwrap();
    let mut inb = timeout(T, s.accept_stream()).await.unwrap().unwrap();
    assert_eq!(inb.direction(), Direction::Inbound);
    let mut got = Vec::new();
    timeout(T, inb.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"ping");
    inb.write_all(b"pong").await.unwrap();
    inb.close_write().await.unwrap();
    let mut back = Vec::new();
    timeout(T, out.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"pong");
    client.close().await;
    server.close().await;
}

/// A reset stream: the remote's read fails rather than seeing a clean EOF.
#[tokio::test]
async fn reset_fails_remote_read() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let mut out = c.open_stream().await.unwrap();
    out.write_all(b"x").await.unwrap();
    let mut inb = timeout(T, s.accept_stream()).await.unwrap().unwrap();
    let mut one = [0u8; 1];
    timeout(T, inb.read_exact(&mut one)).await.unwrap().unwrap();
    out.reset();
    let mut rest = Vec::new();
    let read = timeout(T, inb.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err(), "a reset must fail the read, got {read:?}");
    // Our own side is gone too: writing on the reset stream fails.
    assert!(out.write_all(b"more").await.is_err());
    client.close().await;
    server.close().await;
}

/// With keep-alive off, a silent connection ends with IdleTimeout on both sides.
#[tokio::test]
async fn idle_timeout_is_reported() {
    let config = QuicConfig::default()
        .max_idle_timeout(Duration::from_millis(300))
        .keep_alive_interval(None);
    let client = QuicTransport::new(generate_ed25519(), config.clone()).unwrap();
    let server = QuicTransport::new(generate_ed25519(), config).unwrap();
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let (c, s) = timeout(T, futures_join(client.dial(&addr, None), listener.accept()))
        .await
        .unwrap();
    let (c, s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        timeout(T, c.closed()).await.unwrap(),
        CloseReason::IdleTimeout
    );
    assert_eq!(
        timeout(T, s.closed()).await.unwrap(),
        CloseReason::IdleTimeout
    );
    assert!(c.is_closed() && s.is_closed());
    assert!(matches!(
        c.open_stream().await,
        Err(strata_core::ConnError::Closed {
            reason: CloseReason::IdleTimeout,
            ..
        })
    ));
    client.close().await;
    server.close().await;
}

/// Closing one side: it sees Local, the remote sees Remote, and pending accepts end.
#[tokio::test]
async fn remote_close_is_reported() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert!(!s.is_closed());
    let pending = {
        let s = s.clone();
        tokio::spawn(async move { s.accept_stream().await })
    };
    timeout(T, c.close()).await.unwrap();
    assert!(c.is_closed());
    assert_eq!(timeout(T, c.closed()).await.unwrap(), CloseReason::Local);
    assert_eq!(timeout(T, s.closed()).await.unwrap(), CloseReason::Remote);
    let accepted = timeout(T, pending).await.unwrap().unwrap();
    assert!(matches!(
        accepted,
        Err(strata_core::ConnError::Closed {
            reason: CloseReason::Remote,
            ..
        })
    ));
    client.close().await;
    server.close().await;
}

/// Dialing with another expected peer fails with a typed PeerIdMismatch naming both.
#[tokio::test]
async fn wrong_expected_peer_is_refused() {
    let client = transport();
    let server = transport();
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let wrong = generate_ed25519().public().to_peer_id();
    let accepting = tokio::spawn(async move {
        let _ = listener.accept().await;
    });
    let err = match timeout(T, client.dial(&addr, Some(wrong))).await.unwrap() {
        Ok(_) => panic!("dial to the wrong peer succeeded"),
        Err(e) => e,
    };
    match err {
        TransportError::Upgrade {
            addr: a,
            source: UpgradeError::Security(SecurityError::PeerIdMismatch { expected, actual }),
        } => {
            assert_eq!(a, addr);
            assert_eq!(expected, wrong);
            assert_eq!(actual, server.local_peer());
        }
        other => panic!("expected PeerIdMismatch, got {other:?}"),
    }
    accepting.abort();
    client.close().await;
    server.close().await;
}

/// A plain quinn server whose certificate lacks the libp2p extension is refused by our
/// dialer with a security error.
#[tokio::test]
async fn certificate_without_libp2p_extension_is_refused() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert: CertificateDer<'static> = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![b"libp2p".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let ep = endpoint.clone();
    let serving = tokio::spawn(async move {
        if let Some(incoming) = ep.accept().await {
            let _ = incoming.await;
        }
    });
    let client = transport();
    let addr = ma(&format!("/ip4/127.0.0.1/udp/{port}/quic-v1"));
    let err = match timeout(T, client.dial(&addr, None)).await.unwrap() {
        Ok(_) => panic!("a certificate without the libp2p extension was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err.security_error(),
            Some(SecurityError::InvalidCertificate(_))
        ),
        "expected an invalid-certificate error, got {err:?}"
    );
    serving.abort();
    endpoint.close(0u32.into(), b"");
    client.close().await;
}

/// A transport that listens dials from its listen port: the remote sees that address.
#[tokio::test]
async fn dial_leaves_from_the_listen_port() {
    let client = transport();
    let client_listener = client
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let (c, s, server) = connect_on(&client, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert_eq!(s.remote_multiaddr(), client_listener.multiaddr());
    assert_eq!(c.local_multiaddr(), client_listener.multiaddr());
    drop(client_listener);
    client.close().await;
    server.close().await;
}

/// Port 0 is replaced by the bound port; a second listener on that port is AddrInUse.
#[tokio::test]
async fn port_zero_reports_the_real_port() {
    let t = transport();
    let listener = t.listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1")).await.unwrap();
    let port = port_of(listener.multiaddr());
    assert_ne!(port, 0);
    let again = ma(&format!("/ip4/127.0.0.1/udp/{port}/quic-v1"));
    assert!(matches!(
        t.listen(&again).await,
        Err(TransportError::AddrInUse { addr }) if addr == again
    ));
    t.close().await;
}

/// IPv6 loopback works end to end.
#[tokio::test]
async fn ipv6_loopback() {
    let client = transport();
    let (c, s, server) = connect_on(&client, "/ip6/::1/udp/0/quic-v1").await;
    assert!(c
        .remote_multiaddr()
        .to_string()
        .starts_with("/ip6/::1/udp/"));
    assert!(s
        .remote_multiaddr()
        .to_string()
        .starts_with("/ip6/::1/udp/"));
    let echo = spawn_echo(s.clone());
    timeout(T, echo_round(&c, b"over ipv6".to_vec()))
        .await
        .unwrap();
    echo.abort();
    client.close().await;
    server.close().await;
}

/// Closing the transport closes its endpoints, its connections and its listeners; later
/// dials and listens fail with TransportClosed.
#[tokio::test]
async fn transport_close_closes_everything() {
    let client = transport();
    let server = transport();
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let (c, s) = timeout(T, futures_join(client.dial(&addr, None), listener.accept()))
        .await
        .unwrap();
    let (c, s) = (c.unwrap(), s.unwrap());
    timeout(T, server.close()).await.unwrap();
    assert!(s.is_closed());
    assert_eq!(timeout(T, s.closed()).await.unwrap(), CloseReason::Local);
    assert_eq!(timeout(T, c.closed()).await.unwrap(), CloseReason::Remote);
    assert!(matches!(
        timeout(T, listener.accept()).await.unwrap(),
        Err(TransportError::ListenerClosed { .. })
    ));
    // Nobody listens there any more: the dial fails (refused, or no answer in time).
    let quick = QuicTransport::new(
        generate_ed25519(),
        QuicConfig::default().handshake_timeout(Duration::from_millis(500)),
    )
    .unwrap();
    assert!(matches!(
        timeout(T, quick.dial(&addr, None))
            .await
            .unwrap()
            .map(|_| ())
            .unwrap_err(),
        TransportError::Dial { .. }
            | TransportError::Upgrade {
                source: UpgradeError::Timeout(_),
                ..
            }
    ));
    quick.close().await;
    assert!(matches!(
        server.dial(&addr, None).await.map(|_| ()).unwrap_err(),
        TransportError::TransportClosed
    ));
    assert!(matches!(
        server
            .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
            .await
            .map(|_| ())
            .unwrap_err(),
        TransportError::TransportClosed
    ));
    // Idempotent.
    timeout(T, server.close()).await.unwrap();
    listener.close().await;
    timeout(T, client.close()).await.unwrap();
}

/// The gater's accept hook refuses before the handshake, its secured hook after; the
/// listener goes on serving other connections.
#[tokio::test]
async fn gater_refuses_at_accept_and_secured() {
    /// Refuses the first connection it sees at each hook, allows the rest.
    struct Gate {
        accepts: AtomicUsize,
        secured: AtomicUsize,
    }
    impl ConnectionGater for Gate {
        fn intercept_accept(&self, _local: &Multiaddr, _remote: &Multiaddr) -> bool {
            self.accepts.fetch_add(1, Ordering::SeqCst) > 0
        }
        fn intercept_secured(
            &self,
            d: Direction,
            _p: &strata_core::PeerId,
            _l: &Multiaddr,
            _r: &Multiaddr,
        ) -> bool {
            assert_eq!(d, Direction::Inbound);
            self.secured.fetch_add(1, Ordering::SeqCst) > 0
        }
    }
    let gate = Arc::new(Gate {
        accepts: AtomicUsize::new(0),
        secured: AtomicUsize::new(0),
    });
    let server = transport().with_gater(gate.clone());
    let client = transport();
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    // First dial: refused at accept, before any handshake.
    let refused = timeout(T, client.dial(&addr, None)).await.unwrap();
    assert!(
        matches!(refused, Err(TransportError::Dial { ref source, .. }) if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{:?}",
        refused.map(|_| ())
    );
    // Second dial: the handshake completes, then the secured hook closes it.
    let gated = timeout(T, client.dial(&addr, None)).await.unwrap();
    if let Ok(conn) = gated {
        // The client may finish its side of the handshake before the server decides.
        let reason = timeout(T, conn.closed()).await.unwrap();
        assert_ne!(reason, CloseReason::Local);
    }
    // Third dial: allowed.
    let (c, s) = timeout(T, futures_join(client.dial(&addr, None), listener.accept()))
        .await
        .unwrap();
    assert_eq!(c.unwrap().remote_peer(), server.local_peer());
    assert_eq!(s.unwrap().remote_peer(), client.local_peer());
    assert_eq!(gate.accepts.load(Ordering::SeqCst), 3);
    assert_eq!(gate.secured.load(Ordering::SeqCst), 2);
    client.close().await;
    server.close().await;
}

/// Accepted-but-not-taken connections wait in the bounded queue; closing the listener
/// closes them.
#[tokio::test]
async fn listener_close_closes_queued_connections() {
    let server = QuicTransport::new(
        generate_ed25519(),
        QuicConfig::default().accept_queue_len(2),
    )
    .unwrap();
    let client = transport();
    let mut listener = server
        .listen(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let a = timeout(T, client.dial(&addr, None)).await.unwrap().unwrap();
    let b = timeout(T, client.dial(&addr, None)).await.unwrap().unwrap();
    timeout(T, listener.close()).await.unwrap();
    assert_eq!(timeout(T, a.closed()).await.unwrap(), CloseReason::Remote);
    assert_eq!(timeout(T, b.closed()).await.unwrap(), CloseReason::Remote);
    assert!(matches!(
        listener.accept().await,
        Err(TransportError::ListenerClosed { .. })
    ));
    client.close().await;
    server.close().await;
}

/// With the queue full, the listener takes no new connection attempt from the endpoint:
/// the next dial's handshake cannot finish until the consumer accepts one.
#[tokio::test]
async fn full_accept_queue_holds_back_the_next_handshake() {
    let server = QuicTransport::new(
        generate_ed25519(),
        QuicConfig::default().accept_queue_len(2),
    )
    .unwrap();
    let client = Arc::new(transport());
    let mut listener = server
        .listen_quic(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let mut queued = listener.queued();
    let addr = strata_core::Listener::multiaddr(&listener).clone();
    let _a = timeout(T, client.dial(&addr, None)).await.unwrap().unwrap();
    let _b = timeout(T, client.dial(&addr, None)).await.unwrap().unwrap();
    timeout(T, queued.wait_for(|n| *n == 2))
        .await
        .unwrap()
        .unwrap();
    let (c2, addr2) = (client.clone(), addr.clone());
    let mut third = tokio::spawn(async move { c2.dial(&addr2, None).await });
    assert!(
        timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "the third handshake must wait while the queue is full"
    );
    let first = timeout(T, strata_core::Listener::accept(&mut listener))
        .await
        .unwrap()
        .unwrap();
    let c = timeout(T, third).await.unwrap().unwrap().unwrap();
    assert!(!c.is_closed() && !first.is_closed());
    client.close().await;
    server.close().await;
}

/// A resource manager that allows everything but says memory is short.
struct UnderPressure;

impl strata_core::ResourceManager for UnderPressure {
    fn open_connection(
        &self,
        _direction: Direction,
        _use_fd: bool,
        _remote: &Multiaddr,
    ) -> Result<strata_core::ConnScope, strata_core::ResourceError> {
        Ok(strata_core::ConnScope::unlimited())
    }
    fn open_stream(
        &self,
        _peer: strata_core::PeerId,
        _direction: Direction,
    ) -> Result<strata_core::StreamScope, strata_core::ResourceError> {
        Ok(strata_core::StreamScope::unlimited())
    }
    fn under_pressure(&self) -> bool {
        true
    }
}

/// The first datagram a dial sends: a real Initial (a ClientHello), captured by dialing a
/// UDP socket that never answers.
async fn an_initial() -> Vec<u8> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = ma(&format!(
        "/ip4/127.0.0.1/udp/{}/quic-v1",
        capture.local_addr().unwrap().port()
    ));
    let client = transport();
    let dial = tokio::spawn({
        let client = client.clone();
        async move {
            let _ = client.dial(&to, None).await;
        }
    });
    let mut buf = vec![0u8; 2048];
    let (n, _) = timeout(T, capture.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    dial.abort();
    client.close().await;
    buf.truncate(n);
    buf
}

/// The long-header packet type of the listener's answer to `initial` sent from a fresh
/// address: 0 Initial (a handshake starts), 3 Retry (prove your address first).
async fn answer_type(server: &QuicTransport, initial: &[u8]) -> u8 {
    let listener = server
        .listen_quic(&ma("/ip4/127.0.0.1/udp/0/quic-v1"))
        .await
        .unwrap();
    let to = quic_socket_addr(strata_core::Listener::multiaddr(&listener)).unwrap();
    let from = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    from.send_to(initial, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = timeout(T, from.recv_from(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0 && buf[0] & 0x80 != 0, "a long-header answer");
    (buf[0] >> 4) & 0x03
}

#[tokio::test]
async fn under_memory_pressure_an_unproven_address_is_asked_for_a_retry() {
    // A handshake or two in flight is far below `retry_above`: only the pressure the
    // resource manager reports makes the listener ask for a Retry before keeping state.
    let calm = transport();
    assert_eq!(answer_type(&calm, &an_initial().await).await, 0, "Initial");
    let pressed = QuicTransport::new(generate_ed25519(), QuicConfig::default())
        .unwrap()
        .with_resource_manager(Arc::new(UnderPressure));
    assert_eq!(answer_type(&pressed, &an_initial().await).await, 3, "Retry");
    calm.close().await;
    pressed.close().await;
}
