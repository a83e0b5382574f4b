//! TCP transport over real loopback sockets.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use strata_core::addr::tcp_socket_addr;
use strata_core::{Multiaddr, RawConnection, RawListener, RawTransport, TransportError};
use strata_transport::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

fn transport(reuseport: bool) -> TcpTransport {
    TcpTransport::new(TcpConfig::default().reuseport(reuseport))
}

fn port_of(addr: &Multiaddr) -> u16 {
    tcp_socket_addr(addr).unwrap().port()
}

/// Listens, dials, and moves bytes both ways; returns (dialer's local, listener's view of remote).
async fn round_trip(listen_on: &str) -> (Multiaddr, Multiaddr) {
    let server = transport(true);
    let client = transport(true);
    let mut listener = server.listen(&ma(listen_on)).await.unwrap();
    let addr = listener.multiaddr().clone();
    assert_ne!(
        port_of(&addr),
        0,
        "port 0 must be replaced by the bound port"
    );
    let accept = tokio::spawn(async move {
        let mut conn = listener.accept().await.unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        conn.write_all(b"world").await.unwrap();
        conn.remote_multiaddr().clone()
    });
    let mut conn = client.dial(&addr).await.unwrap();
    assert_eq!(conn.remote_multiaddr(), &addr);
    conn.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"world");
    (conn.local_multiaddr().clone(), accept.await.unwrap())
}

#[tokio::test]
async fn dial_and_listen_ipv4_loopback() {
    let (dialer_local, seen_remote) = round_trip("/ip4/127.0.0.1/tcp/0").await;
    assert_eq!(dialer_local, seen_remote);
    assert!(seen_remote.to_string().starts_with("/ip4/127.0.0.1/tcp/"));
}

#[tokio::test]
async fn dial_and_listen_ipv6_loopback() {
    let (dialer_local, seen_remote) = round_trip("/ip6/::1/tcp/0").await;
    assert_eq!(dialer_local, seen_remote);
    assert!(seen_remote.to_string().starts_with("/ip6/::1/tcp/"));
}

#[tokio::test]
async fn listener_reports_the_bound_port() {
    let t = transport(false);
    let listener = t.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let bound = listener.local_addr().unwrap();
    assert_ne!(bound.port(), 0);
    assert_eq!(
        listener.multiaddr(),
        &ma(&format!("/ip4/127.0.0.1/tcp/{}", bound.port()))
    );
}

#[tokio::test]
async fn dials_dns_multiaddrs() {
    let server = transport(false);
    let mut listener = server
        .listen_tcp(&ma("/ip4/127.0.0.1/tcp/0"))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
    let conn = transport(false)
        .dial(&ma(&format!("/dns4/localhost/tcp/{port}")))
        .await
        .unwrap();
    assert_eq!(
        conn.remote_multiaddr(),
        &ma(&format!("/ip4/127.0.0.1/tcp/{port}"))
    );
    accept.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_reuseport_listeners_share_a_port_and_both_accept() {
    let t = transport(true);
    let first = t.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let shared = first.multiaddr().clone();
    let second = t.listen_tcp(&shared).await.unwrap();
    assert_eq!(second.multiaddr(), &shared);

    // The kernel spreads connections over the two sockets by hashing the 4-tuple; with 64
    // connections from distinct ports, both receive some (all on one: odds 2^-63).
    const CONNS: usize = 64;
    let accepted = Arc::new(AtomicUsize::new(0));
    // A watch keeps its value, so a task busy accepting when the last connection lands
    // still sees that all are done.
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let run = |mut l: strata_transport::TcpListener| {
        let accepted = accepted.clone();
        let done_tx = done_tx.clone();
        let mut done_rx = done_rx.clone();
        tokio::spawn(async move {
            // Accepted connections are kept open: dropping one resets it (SO_LINGER 0),
            // which could fail a dial still completing on the other side.
            let mut kept = Vec::new();
            let mut mine = 0usize;
            loop {
                tokio::select! {
                    conn = l.accept() => {
                        kept.push(conn.unwrap());
                        mine += 1;
                        if accepted.fetch_add(1, Ordering::SeqCst) + 1 == CONNS {
                            done_tx.send_replace(true);
                            return (mine, kept);
                        }
                    }
                    _ = done_rx.wait_for(|d| *d) => return (mine, kept),
                }
            }
        })
    };
    let a = run(first);
    let b = run(second);
    let client = transport(false);
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(client.dial(&shared).await.unwrap());
    }
    let ((a, _kept_a), (b, _kept_b)) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a + b, CONNS);
    assert!(a > 0 && b > 0, "both listeners must accept: {a} and {b}");
}

#[tokio::test]
async fn dial_leaves_from_the_listen_port() {
    let a = transport(true);
    let b = transport(true);
    // A listener on an address of its own, so the fallback's address shows.
    let a_listener = a.listen_tcp(&ma("/ip4/127.0.0.2/tcp/0")).await.unwrap();
    let a_port = a_listener.local_addr().unwrap().port();
    let mut b_listener = b.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let b_addr = b_listener.multiaddr().clone();
    let (conn, accepted) = tokio::join!(a.dial(&b_addr), b_listener.accept());
    let (conn, accepted) = (conn.unwrap(), accepted.unwrap());
    assert_eq!(port_of(conn.local_multiaddr()), a_port);
    assert_eq!(
        port_of(accepted.remote_multiaddr()),
        a_port,
        "the remote sees our listen port"
    );

    // A second connection to the same remote cannot reuse the 4-tuple: it falls back to
    // an ephemeral port (of the listener's address) instead of failing.
    let (again, accepted_again) = tokio::join!(a.dial(&b_addr), b_listener.accept());
    let again = again.unwrap();
    assert_ne!(port_of(again.local_multiaddr()), a_port);
    assert!(
        again
            .local_multiaddr()
            .to_string()
            .starts_with("/ip4/127.0.0.2/"),
        "{}",
        again.local_multiaddr()
    );
    assert_eq!(
        accepted_again.unwrap().remote_multiaddr(),
        again.local_multiaddr()
    );
    // A dial from a fresh port (the retry after a simultaneous open) leaves from the
    // listener's address too.
    let (fresh, _) = tokio::join!(a.dial_tcp_fresh(&b_addr), b_listener.accept());
    let fresh = fresh.unwrap();
    assert_ne!(port_of(fresh.local_multiaddr()), a_port);
    assert!(
        fresh
            .local_multiaddr()
            .to_string()
            .starts_with("/ip4/127.0.0.2/"),
        "{}",
        fresh.local_multiaddr()
    );
    drop(a_listener);
}

#[tokio::test]
async fn without_reuseport_dials_use_ephemeral_ports() {
    let a = transport(false);
    let a_listener = a.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let a_port = a_listener.local_addr().unwrap().port();
    let mut b_listener = transport(false)
        .listen_tcp(&ma("/ip4/127.0.0.1/tcp/0"))
        .await
        .unwrap();
    let b_addr = b_listener.multiaddr().clone();
    let (conn, _) = tokio::join!(a.dial(&b_addr), b_listener.accept());
    assert_ne!(port_of(conn.unwrap().local_multiaddr()), a_port);
}

#[tokio::test]
async fn without_reuseport_a_taken_port_is_an_error() {
    let t = transport(false);
    let first = t.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let taken = first.multiaddr().clone();
    match t.listen_tcp(&taken).await {
        Err(TransportError::AddrInUse { addr }) => assert_eq!(addr, taken),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    // Reuse on one side only is not enough either: both sockets must opt in.
    match transport(true).listen_tcp(&taken).await {
        Err(TransportError::AddrInUse { .. }) => {}
        other => panic!("expected AddrInUse, got {other:?}"),
    }
}

#[tokio::test]
async fn dial_to_a_closed_port_names_the_address() {
    let t = transport(false);
    let listener = t.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let addr = listener.multiaddr().clone();
    drop(listener);
    match t.dial(&addr).await {
        Err(e @ TransportError::Dial { .. }) => assert!(e.to_string().contains(&addr.to_string())),
        other => panic!("expected a dial error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn closed_listener_refuses_to_accept() {
    let t = transport(false);
    let mut listener = t.listen_tcp(&ma("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    listener.close();
    assert!(matches!(
        listener.accept().await,
        Err(TransportError::ListenerClosed { .. })
    ));
}

#[tokio::test]
async fn unsupported_addresses_are_refused_with_typed_errors() {
    let t = transport(false);
    for addr in [
        "/ip4/127.0.0.1/udp/1/quic-v1",
        "/memory/3",
        "/ip4/127.0.0.1/tcp/1/ws",
    ] {
        let addr = ma(addr);
        assert!(!t.can_dial(&addr));
        assert!(!t.can_listen(&addr));
        assert!(matches!(t.dial(&addr).await, Err(TransportError::Addr(_))));
        assert!(matches!(
            t.listen(&addr).await,
            Err(TransportError::Addr(_))
        ));
    }
    assert!(t.can_dial(&ma("/dns/localhost/tcp/1")));
    assert!(t.can_listen(&ma("/ip6/::1/tcp/0")));
}

#[tokio::test]
async fn many_connections_get_distinct_ports() {
    let server = transport(false);
    let mut listener = server
        .listen_tcp(&ma("/ip4/127.0.0.1/tcp/0"))
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let accept = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut kept = Vec::new();
        for _ in 0..20 {
            let conn = listener.accept().await.unwrap();
            seen.insert(conn.remote_multiaddr().clone());
            kept.push(conn);
        }
        (seen.len(), kept)
    });
    let client = transport(false);
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(client.dial(&addr).await.unwrap());
    }
    let (distinct, _kept) = accept.await.unwrap();
    assert_eq!(distinct, 20);
}
