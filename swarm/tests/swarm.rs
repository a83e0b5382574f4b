//! Two swarms over TCP (TLS + yamux) and over memory (Noise + yamux): connecting,
//! streams, disconnect reasons, shared dials, back-off, limits, close and shutdown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use strata_core::{Direction, Multiaddr};
use strata_swarm::{
    AddrDialError, DisconnectReason, Limit, StreamOptions, Swarm, SwarmConfig, SwarmError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect_stream_disconnect(kind: Kind, close_from_dialer: bool) {
    let a = swarm(1, kind);
    let b = swarm(2, kind);
    a.set_stream_handler(echo());
    b.set_stream_handler(echo());
    let (ra, rb) = (Recorder::default(), Recorder::default());
    let _ha = a.notify(Arc::new(ra.clone()));
    let _hb = b.notify(Arc::new(rb.clone()));
    introduce(&a, &b, kind).await;

    let conn = t(a.dial_peer(b.local_peer())).await.unwrap();
    assert_eq!(conn.direction(), Direction::Outbound);
    assert_eq!(conn.remote_peer(), b.local_peer());
    // Both ways: a opens to b, and b (already connected, no dial) opens to a.
    ping(&a, b.local_peer(), b"from a").await;
    rb.wait_for(|s| s.iter().any(|e| matches!(e, Seen::Connected(_))))
        .await;
    let mut s = t(b.new_stream_with(
        a.local_peer(),
        StreamOptions {
            no_dial: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    s.write_all(b"from b").await.unwrap();
    let mut back = [0u8; 6];
    t(s.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"from b");
    drop(s);
    assert_eq!(b.conns_to_peer(&a.local_peer()).len(), 1);
    assert_eq!(
        b.conns_to_peer(&a.local_peer())[0].direction(),
        Direction::Inbound
    );

    let (closer, closer_rec, other_rec, other_peer) = if close_from_dialer {
        (&a, &ra, &rb, b.local_peer())
    } else {
        (&b, &rb, &ra, a.local_peer())
    };
    t(closer.close_peer(&other_peer)).await;
    closer_rec.wait_for(|s| !disconnects(s).is_empty()).await;
    other_rec.wait_for(|s| !disconnects(s).is_empty()).await;
    assert_eq!(
        disconnects(&closer_rec.seen()),
        vec![DisconnectReason::Local]
    );
    assert_eq!(
        disconnects(&other_rec.seen()),
        vec![DisconnectReason::Remote]
    );
    assert!(a.conns().is_empty());
    t(a.close()).await;
    t(b.close()).await;
}

#[tokio::test]
async fn tcp_connect_stream_both_ways_and_disconnect_from_either_side() {
    connect_stream_disconnect(Kind::Tcp, true).await;
    connect_stream_disconnect(Kind::Tcp, false).await;
}

#[tokio::test]
async fn memory_connect_stream_both_ways_and_disconnect_from_either_side() {
    connect_stream_disconnect(Kind::Mem, true).await;
    connect_stream_disconnect(Kind::Mem, false).await;
}

#[tokio::test]
async fn concurrent_dials_share_one_connection_and_existing_is_reused() {
    let a = swarm(11, Kind::Tcp);
    let b = swarm(12, Kind::Tcp);
    introduce(&a, &b, Kind::Tcp).await;
    let dials = (0..10).map(|_| a.dial_peer(b.local_peer()));
    let conns = t(futures::future::join_all(dials)).await;
    let ids: Vec<_> = conns.into_iter().map(|c| c.unwrap().id()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(a.conns_to_peer(&b.local_peer()).len(), 1);
    let again = t(a.dial_peer(b.local_peer())).await.unwrap();
    assert_eq!(again.id(), ids[0]);
    t(a.close()).await;
    t(b.close()).await;
}

#[tokio::test]
async fn refused_address_backs_off_until_cleared_and_error_lists_each_address() {
    let a = swarm(21, Kind::Tcp);
    let b = swarm(22, Kind::Tcp);
    // A port nobody listens on: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", dead.local_addr().unwrap().port())
        .parse()
        .unwrap();
    drop(dead);
    a.add_addrs(b.local_peer(), [dead_addr.clone()]);

    let err = t(a.dial_peer(b.local_peer())).await.unwrap_err();
    match &err {
        SwarmError::Dial { peer, errors } => {
            assert_eq!(*peer, b.local_peer());
            assert_eq!(errors.0.len(), 1);
            assert_eq!(errors.0[0].0, dead_addr);
            assert!(matches!(errors.0[0].1, AddrDialError::Transport(_)));
        }
        other => panic!("expected a dial error, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&dead_addr.to_string()), "{text}");

    let err = t(a.dial_peer(b.local_peer())).await.unwrap_err();
    assert!(
        matches!(err, SwarmError::DialBackoff(p) if p == b.local_peer()),
        "{err}"
    );

    a.clear_backoff(&b.local_peer());
    let err = t(a.dial_peer(b.local_peer())).await.unwrap_err();
    assert!(matches!(err, SwarmError::Dial { .. }), "{err}");
    // Now backing off again; the user clears everything and gives a good address.
    introduce(&a, &b, Kind::Tcp).await;
    a.clear_all_backoffs();
    let conn = t(a.dial_peer(b.local_peer())).await.unwrap();
    assert_eq!(conn.remote_peer(), b.local_peer());
    t(a.close()).await;
    t(b.close()).await;
}

#[tokio::test]
async fn stagger_starts_next_address_and_timeouts_apply() {
    // A black-hole address (nothing answers, the dial hangs) before a good one: with a
    // short stagger the good one is started anyway and wins.
    let cfg = SwarmConfig {
        dial_stagger: Duration::from_millis(50),
        dial_timeout_local: Duration::from_millis(500),
        ..Default::default()
    };
    let a = swarm_with(31, Kind::Mem, cfg);
    let b = swarm(32, Kind::Mem);
    // A memory listener that never accepts: the handshake never finishes.
    let hole = strata_transport::MemoryTransport::new()
        .listen_memory(&"/memory/0".parse().unwrap())
        .unwrap();
    let hole_addr = strata_core::RawListener::multiaddr(&hole).clone();
    a.add_addrs(b.local_peer(), [hole_addr.clone()]);
    introduce(&a, &b, Kind::Mem).await;
    let start = Instant::now();
    let conn = t(a.dial_peer(b.local_peer())).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(450));
    assert_eq!(conn.remote_peer(), b.local_peer());

    // Only the black hole: the per-address timeout ends it and is reported.
    let c = swarm(33, Kind::Mem);
    let cfg = SwarmConfig {
        dial_timeout_local: Duration::from_millis(200),
        ..Default::default()
    };
    let d = swarm_with(34, Kind::Mem, cfg);
    d.add_addrs(c.local_peer(), [hole_addr.clone()]);
    let err = t(d.dial_peer(c.local_peer())).await.unwrap_err();
    match err {
        SwarmError::Dial { errors, .. } => {
            assert!(matches!(errors.0[0].1, AddrDialError::Timeout(_)))
        }
        other => panic!("{other}"),
    }
    // And the per-call timeout.
    d.clear_all_backoffs();
    let err = t(d.dial_peer_with(
        c.local_peer(),
        strata_swarm::DialOptions {
            timeout: Some(Duration::from_millis(50)),
        },
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SwarmError::DialTimeout { .. }), "{err}");
    drop(hole);
    for s in [a, b, c, d] {
        t(s.close()).await;
    }
}

#[tokio::test]
async fn connection_and_stream_limits_refuse_the_next_one() {
    // Connection limits are the resource manager's, checked before the handshake.
    let mut limits = strata_rcmgr::LimitConfig::unlimited();
    limits.system.conns_inbound = 2;
    let cfg = SwarmConfig {
        max_streams_per_connection: 2,
        ..Default::default()
    };
    let b = swarm_limited(41, Kind::Tcp, cfg, limits);
    b.set_stream_handler(echo());
    let addr = listen(&b, Kind::Tcp).await;
    let mut clients = Vec::new();
    for seed in 42..44 {
        let a = swarm(seed, Kind::Tcp);
        a.add_addrs(b.local_peer(), [addr.clone()]);
        t(a.dial_peer(b.local_peer())).await.unwrap();
        clients.push(a);
    }
    // The third inbound connection is reset before its handshake: the dial fails.
    let third = swarm(44, Kind::Tcp);
    third.add_addrs(b.local_peer(), [addr.clone()]);
    let err = t(third.dial_peer(b.local_peer())).await.unwrap_err();
    assert!(matches!(err, SwarmError::Dial { .. }), "{err}");
    assert_eq!(b.conns().len(), 2);
    assert_eq!(b.resource_manager().stat().system.conns_inbound, 2);

    // Streams: b allows 2 on a connection; the third is reset.
    let a = &clients[0];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = t(a.new_stream(b.local_peer())).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        t(s.read_exact(&mut one)).await.unwrap();
        held.push(s);
    }
    let mut s = t(a.new_stream(b.local_peer())).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = Vec::new();
    let got = t(s.read_to_end(&mut buf)).await;
    assert!(
        got.is_err() || buf.is_empty(),
        "third stream should be reset"
    );

    // Outbound: a swarm with a stream limit of 1 refuses its own second stream, and its
    // resource manager its second connection to the same peer.
    let mut limits = strata_rcmgr::LimitConfig::unlimited();
    limits.peer.conns = 1;
    limits.peer.conns_outbound = 1;
    let cfg = SwarmConfig {
        max_streams_per_connection: 1,
        ..Default::default()
    };
    // (b is full of inbound connections: c talks to a fresh peer e.)
    let e = swarm(46, Kind::Tcp);
    e.set_stream_handler(echo());
    let addr = listen(&e, Kind::Tcp).await;
    let c = swarm_limited(45, Kind::Tcp, cfg, limits);
    c.add_addrs(e.local_peer(), [addr.clone()]);
    let _s1 = t(c.new_stream(e.local_peer())).await.unwrap();
    let err = t(c.new_stream(e.local_peer())).await.unwrap_err();
    assert!(
        matches!(
            err,
            SwarmError::LimitExceeded {
                what: Limit::StreamsPerConnection,
                ..
            }
        ),
        "{err}"
    );
    let err = t(c.dial_addr(addr.clone())).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("peer:{}", e.local_peer())), "{text}");
    drop(held);
    for s in clients.into_iter().chain([b, third, c, e]) {
        t(s.close()).await;
    }
}

#[tokio::test]
async fn every_operation_after_close_fails_with_swarm_closed() {
    let a = swarm(51, Kind::Mem);
    let b = swarm(52, Kind::Mem);
    let addr = introduce(&a, &b, Kind::Mem).await;
    let listened = listen(&a, Kind::Mem).await;
    t(a.dial_peer(b.local_peer())).await.unwrap();
    t(a.close()).await;
    t(a.close()).await; // idempotent
    assert!(a.is_closed());
    assert!(a.conns().is_empty());
    assert!(a.listen_addresses().is_empty());
    let closed = |r: Result<(), SwarmError>| matches!(r, Err(SwarmError::Closed));
    assert!(closed(
        a.listen([any_addr(Kind::Mem)]).await.remove(0).map(|_| ())
    ));
    assert!(closed(a.dial_peer(b.local_peer()).await.map(|_| ())));
    assert!(closed(a.dial_addr(addr).await.map(|_| ())));
    assert!(closed(a.new_stream(b.local_peer()).await.map(|_| ())));
    assert!(closed(a.listen_close(&listened).await));
    assert!(closed(a.add_transport(transport(51, Kind::Tcp))));
    assert_eq!(SwarmError::Closed.to_string(), "swarm closed");
    t(b.close()).await;
}

#[tokio::test]
async fn shutdown_lets_a_quick_stream_finish_and_cuts_a_slow_one() {
    let a = swarm(61, Kind::Tcp);
    let b = swarm(62, Kind::Tcp);
    b.set_stream_handler(echo());
    introduce(&a, &b, Kind::Tcp).await;
    let mut quick = t(a.new_stream(b.local_peer())).await.unwrap();
    let mut slow = t(a.new_stream(b.local_peer())).await.unwrap();
    slow.write_all(b"s").await.unwrap();
    let quick_task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        quick.write_all(b"quick").await.unwrap();
        let mut back = [0u8; 5];
        quick.read_exact(&mut back).await.unwrap();
        back
    });
    let slow_task = tokio::spawn(async move {
        let mut buf = [0u8; 1];
        slow.read_exact(&mut buf).await.unwrap();
        // Waits for more that never comes, until the shutdown cuts it.
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest).await;
        "cut"
    });
    let start = Instant::now();
    t(a.shutdown(Duration::from_millis(600))).await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(&t(quick_task).await.unwrap(), b"quick");
    assert_eq!(t(slow_task).await.unwrap(), "cut");
    t(b.close()).await;
}

#[tokio::test]
async fn listen_reports_each_address_and_refuses_duplicates() {
    let a = swarm(71, Kind::Tcp);
    let mut r = a
        .listen([
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/memory/0".parse().unwrap(), // no memory transport on this swarm
            "/ip4/0.0.0.0/tcp/0".parse().unwrap(),
        ])
        .await;
    let first = r.remove(0).unwrap();
    assert!(matches!(r.remove(0), Err(SwarmError::NoTransport(_))));
    let wildcard = r.remove(0).unwrap();
    assert_ne!(first.to_string(), "/ip4/127.0.0.1/tcp/0");
    let again = a.listen([first.clone()]).await.remove(0);
    assert!(matches!(again, Err(SwarmError::AlreadyListening(ref x)) if *x == first));
    let ifaces = a.interface_listen_addresses();
    assert!(ifaces.contains(&first));
    let port = wildcard.iter().nth(1).unwrap();
    assert!(
        ifaces
            .iter()
            .any(|m| m.to_string().starts_with("/ip4/127.0.0.1")
                && m.iter().nth(1) == Some(port.clone())),
        "{ifaces:?}"
    );
    assert!(!ifaces
        .iter()
        .any(|m| m.to_string().starts_with("/ip4/0.0.0.0")));
    t(a.listen_close(&first)).await.unwrap();
    assert_eq!(a.listen_addresses(), vec![wildcard]);
    assert!(matches!(
        t(a.listen_close(&first)).await,
        Err(SwarmError::NotListening(_))
    ));
    // Two transports for one protocol are refused.
    assert!(matches!(
        a.add_transport(transport(71, Kind::Tcp)),
        Err(SwarmError::DuplicateTransport("tcp"))
    ));
    t(a.close()).await;
}

#[tokio::test]
async fn dial_self_and_peer_id_mismatch_are_refused() {
    let a = swarm(81, Kind::Mem);
    let b = swarm(82, Kind::Mem);
    let addr = listen(&b, Kind::Mem).await;
    assert!(matches!(
        a.dial_peer(a.local_peer()).await,
        Err(SwarmError::DialSelf)
    ));
    // a believes b's address belongs to peer 83.
    a.add_addrs(peer(83), [addr.clone()]);
    let err = t(a.dial_peer(peer(83))).await.unwrap_err();
    let SwarmError::Dial { errors, .. } = &err else {
        panic!("{err}")
    };
    let AddrDialError::Transport(te) = &errors.0[0].1 else {
        panic!("{err}")
    };
    assert!(
        matches!(
            te.security_error(),
            Some(strata_core::SecurityError::PeerIdMismatch { .. })
        ),
        "{err}"
    );
    // A dial to an address that turns out to be ourselves.
    let own = listen(&a, Kind::Mem).await;
    let err = t(a.dial_addr(own)).await.unwrap_err();
    assert!(matches!(err, SwarmError::DialSelf), "{err}");
    t(a.close()).await;
    t(b.close()).await;
}

#[tokio::test]
async fn panicking_stream_handler_resets_only_its_stream() {
    let a = swarm(91, Kind::Tcp);
    let b = swarm(92, Kind::Tcp);
    b.set_stream_handler(Arc::new(|mut s, _c| {
        async move {
            let mut first = [0u8; 1];
            let _ = s.read_exact(&mut first).await;
            if first[0] == b'p' {
                panic!("handler panics on purpose");
            }
            let _ = s.write_all(&first).await;
            let _ = s.close_write().await;
        }
        .boxed()
    }));
    introduce(&a, &b, Kind::Tcp).await;
    let mut s = t(a.new_stream(b.local_peer())).await.unwrap();
    s.write_all(b"p").await.unwrap();
    let mut buf = Vec::new();
    let got = t(s.read_to_end(&mut buf)).await;
    assert!(
        got.is_err(),
        "a panicking handler's stream must be reset, got {got:?}"
    );
    // The connection and other streams go on.
    let mut s = t(a.new_stream(b.local_peer())).await.unwrap();
    s.write_all(b"k").await.unwrap();
    let mut buf = Vec::new();
    t(s.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(buf, b"k");
    assert_eq!(a.conns().len(), 1);
    t(a.close()).await;
    t(b.close()).await;
}

#[tokio::test]
async fn best_connection_rule_and_gater() {
    struct NoDial;
    impl strata_core::ConnectionGater for NoDial {
        fn intercept_peer_dial(&self, p: &strata_core::PeerId) -> bool {
            *p != peer(103)
        }
        fn intercept_addr_dial(&self, _p: Option<&strata_core::PeerId>, a: &Multiaddr) -> bool {
            // Exactly this address: listeners get random memory ports, which may start
            // with a 7 too.
            a.to_string() != "/memory/7"
        }
    }
    let a = Swarm::with_gater(peer(101), SwarmConfig::default(), Arc::new(NoDial));
    a.add_transport(transport(101, Kind::Mem)).unwrap();
    let b = swarm(102, Kind::Mem);
    b.set_stream_handler(echo());
    let addr = listen(&b, Kind::Mem).await;
    let c1 = t(a.dial_addr(addr.clone())).await.unwrap();
    let c2 = t(a.dial_addr(addr.clone())).await.unwrap();
    // Equal streams, both outbound: the newest wins.
    assert_eq!(a.best_conn(&b.local_peer()).unwrap().id(), c2.id());
    // One stream on c2: c1 has fewer.
    let _s = t(c2.new_stream()).await.unwrap();
    assert_eq!(a.best_conn(&b.local_peer()).unwrap().id(), c1.id());
    assert!(matches!(
        a.dial_peer(peer(103)).await,
        Err(SwarmError::Gated {
            stage: strata_core::GateStage::PeerDial,
            ..
        })
    ));
    let err = a.dial_addr("/memory/7".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(
            err,
            SwarmError::DialAddr {
                error: AddrDialError::Gated,
                ..
            }
        ),
        "{err}"
    );
    t(a.close()).await;
    t(b.close()).await;
}
