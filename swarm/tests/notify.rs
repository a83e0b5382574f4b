//! The notifiee guarantees (a)–(f) and the event stream, over real transports.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::FutureExt;
use strata_core::Multiaddr;
use strata_swarm::{
    Conn, Connectedness, DisconnectReason, Notifiee, NotifyBundle, Swarm, SwarmConfig, SwarmEvent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;

/// (a) For each connection, every notifiee has returned from `connected` before its
/// `disconnected` starts; for each listener, `listen` before `listen_close`. The slow
/// notifiee makes the race real: the connection closes while `connected` still sleeps.
#[tokio::test]
async fn a_connected_before_disconnected_and_listen_before_listen_close() {
    let a = swarm(201, Kind::Mem);
    let b = swarm(202, Kind::Mem);
    let slow = Recorder::slow(Duration::from_millis(150));
    let fast = Recorder::default();
    let _h1 = a.notify(Arc::new(slow.clone()));
    let _h2 = a.notify(Arc::new(fast.clone()));
    let addr = listen(&b, Kind::Mem).await;
    for _ in 0..3 {
        let c = t(a.dial_addr(addr.clone())).await.unwrap();
        t(c.close()).await;
    }
    let own = listen(&a, Kind::Mem).await;
    t(a.listen_close(&own)).await.unwrap();
    for r in [&slow, &fast] {
        r.wait_for(|s| {
            disconnects(s).len() == 3 && s.iter().any(|e| matches!(e, Seen::ListenClose(_)))
        })
        .await;
        let seen = r.seen();
        for (i, e) in seen.iter().enumerate() {
            if let Seen::Disconnected(id, reason) = e {
                assert_eq!(reason, &DisconnectReason::Local);
                let connected_at = seen.iter().position(|x| *x == Seen::Connected(*id));
                assert!(connected_at.is_some_and(|c| c < i), "{seen:?}");
            }
        }
        let l = seen.iter().position(|x| *x == Seen::Listen(own.clone()));
        let lc = seen
            .iter()
            .position(|x| *x == Seen::ListenClose(own.clone()));
        assert!(l.is_some() && l < lc, "{seen:?}");
    }
    t(a.close()).await;
    t(b.close()).await;
}

/// (b) `connected` has returned, for every notifiee, before the connection's first
/// inbound stream reaches the handler.
#[tokio::test]
async fn b_connected_before_first_inbound_stream() {
    let a = swarm(211, Kind::Tcp);
    let b = swarm(212, Kind::Tcp);
    let done = Arc::new(AtomicBool::new(false));
    struct SlowConnected(Arc<AtomicBool>);
    #[async_trait::async_trait]
    impl Notifiee for SlowConnected {
        async fn connected(&self, _s: &Swarm, _c: &Conn) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _h = b.notify(Arc::new(SlowConnected(done.clone())));
    let seen_in_handler = Arc::new(Mutex::new(Vec::new()));
    let (seen2, done2) = (seen_in_handler.clone(), done.clone());
    b.set_stream_handler(Arc::new(move |mut s, _c| {
        seen2.lock().unwrap().push(done2.load(Ordering::SeqCst));
        async move {
            let _ = s.write_all(b"ok").await;
            let _ = s.close_write().await;
        }
        .boxed()
    }));
    introduce(&a, &b, Kind::Tcp).await;
    // Dial and open a stream at once, while b's notifiee is still in `connected`.
    let mut s = t(a.new_stream(b.local_peer())).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut buf = Vec::new();
    t(s.read_to_end(&mut buf)).await.unwrap();
    assert_eq!(buf, b"ok");
    assert_eq!(*seen_in_handler.lock().unwrap(), vec![true]);
    t(a.close()).await;
    t(b.close()).await;
}

/// (c) No notifiee runs under a swarm lock: notifiees call swarm methods, register and
/// unregister notifiees, and open streams, from inside their callbacks.
#[tokio::test]
async fn c_notifiees_may_call_the_swarm() {
    let a = swarm(221, Kind::Mem);
    let b = swarm(222, Kind::Mem);
    b.set_stream_handler(echo());
    introduce(&a, &b, Kind::Mem).await;
    struct Reentrant {
        done: Arc<tokio::sync::Notify>,
        ok: Arc<AtomicUsize>,
    }
    #[async_trait::async_trait]
    impl Notifiee for Reentrant {
        async fn connected(&self, s: &Swarm, c: &Conn) {
            assert_eq!(s.conns_to_peer(&c.remote_peer()).len(), 1);
            assert!(s.best_conn(&c.remote_peer()).is_some());
            let _ = s.peers();
            let _ = s.listen_addresses();
            let inner = s.notify(Arc::new(NotifyBundle::new()));
            drop(inner);
            // A dial that finds the connection, and a stream on it.
            let again = s.dial_peer(c.remote_peer()).await.unwrap();
            assert_eq!(again.id(), c.id());
            let mut st = s.new_stream(c.remote_peer()).await.unwrap();
            st.write_all(b"re").await.unwrap();
            let mut back = [0u8; 2];
            st.read_exact(&mut back).await.unwrap();
            self.ok.fetch_add(1, Ordering::SeqCst);
        }
        async fn disconnected(&self, s: &Swarm, c: &Conn, _r: &DisconnectReason) {
            assert!(s.conns_to_peer(&c.remote_peer()).is_empty());
            self.ok.fetch_add(1, Ordering::SeqCst);
            self.done.notify_one();
        }
    }
    let done = Arc::new(tokio::sync::Notify::new());
    let ok = Arc::new(AtomicUsize::new(0));
    let _h = a.notify(Arc::new(Reentrant {
        done: done.clone(),
        ok: ok.clone(),
    }));
    let c = t(a.dial_peer(b.local_peer())).await.unwrap();
    // Closing waits for nothing the notifiee does; its disconnected runs afterwards.
    let wait = done.notified();
    t(c.close()).await;
    t(wait).await;
    assert_eq!(ok.load(Ordering::SeqCst), 2);
    t(a.close()).await;
    t(b.close()).await;
}

/// (d) A notifiee that sleeps for seconds delays others by at most the connected bound:
/// dials, accepts, streams and another notifiee go on, each new connection waiting for
/// it no longer than the bound (and the lateness is counted), and close() does not wait
/// for it beyond its grace.
#[tokio::test]
async fn d_slow_notifiee_delays_only_itself() {
    let cfg = SwarmConfig {
        notifiee_close_grace: Duration::from_millis(200),
        notifiee_connected_bound: Duration::from_millis(200),
        ..Default::default()
    };
    let a = swarm_with(231, Kind::Tcp, cfg.clone());
    let sleeper = Recorder::slow(Duration::from_secs(5));
    let quick = Recorder::default();
    let _h1 = a.notify(Arc::new(sleeper.clone()));
    let _h2 = a.notify(Arc::new(quick.clone()));
    // a also accepts: the slow notifiee is told of inbound connections too.
    a.set_stream_handler(echo());
    let a_addr = listen(&a, Kind::Tcp).await;
    let start = Instant::now();
    let mut others = Vec::new();
    for seed in 232..236 {
        let b = swarm(seed, Kind::Tcp);
        b.set_stream_handler(echo());
        introduce(&a, &b, Kind::Tcp).await;
        t(a.dial_peer(b.local_peer())).await.unwrap();
        ping(&a, b.local_peer(), b"go").await;
        others.push(b);
    }
    let inbound = swarm(236, Kind::Tcp);
    t(inbound.dial_addr(a_addr)).await.unwrap();
    quick
        .wait_for(|s| s.iter().filter(|e| matches!(e, Seen::Connected(_))).count() == 5)
        .await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(sleeper
        .seen()
        .iter()
        .all(|e| !matches!(e, Seen::Connected(_))));
    assert!(a.notifiee_stats().late >= 4, "{:?}", a.notifiee_stats());
    let start = Instant::now();
    t(a.close()).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for s in others.into_iter().chain([inbound]) {
        t(s.close()).await;
    }
}

/// (e) A panicking notifiee is caught and logged; it stays registered, the swarm and the
/// other notifiees go on.
#[tokio::test]
async fn e_panicking_notifiee_is_contained() {
    let a = swarm(241, Kind::Mem);
    let b = swarm(242, Kind::Mem);
    b.set_stream_handler(echo());
    introduce(&a, &b, Kind::Mem).await;
    let panics = Arc::new(AtomicUsize::new(0));
    let p2 = panics.clone();
    let p3 = panics.clone();
    let _bad = a.notify(Arc::new(
        NotifyBundle::new()
            .on_connected(move |_, _| {
                p2.fetch_add(1, Ordering::SeqCst);
                panic!("notifiee panics on purpose")
            })
            .on_disconnected(move |_, _, _| {
                p3.fetch_add(1, Ordering::SeqCst);
                panic!("and again")
            }),
    ));
    let good = Recorder::default();
    let _good = a.notify(Arc::new(good.clone()));
    for _ in 0..2 {
        let c = t(a.dial_peer(b.local_peer())).await.unwrap();
        ping(&a, b.local_peer(), b"still works").await;
        t(c.close()).await;
    }
    good.wait_for(|s| disconnects(s).len() == 2).await;
    // The panicking one was called each time: it stayed registered.
    t(async {
        while panics.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    t(a.close()).await;
    t(b.close()).await;
}

/// (f) `disconnected` carries the reason: local, remote, shutdown, and those given with
/// `close_with` (gated, limit exceeded, idle, error).
#[tokio::test]
async fn f_disconnect_reasons() {
    let a = swarm(251, Kind::Tcp);
    let b = swarm(252, Kind::Tcp);
    let (ra, rb) = (Recorder::default(), Recorder::default());
    let _ha = a.notify(Arc::new(ra.clone()));
    let _hb = b.notify(Arc::new(rb.clone()));
    let addr = listen(&b, Kind::Tcp).await;
    let expected_local = [
        DisconnectReason::Local,
        DisconnectReason::Gated,
        DisconnectReason::LimitExceeded,
        DisconnectReason::Idle,
        DisconnectReason::Error("application error".into()),
    ];
    for (i, reason) in expected_local.iter().enumerate() {
        let c = t(a.dial_addr(addr.clone())).await.unwrap();
        // Wait for b to have it: TCP closes with linger 0, so a connection closed before
        // b finished its side of the handshake would never reach b at all.
        rb.wait_for(|s| s.iter().filter(|e| matches!(e, Seen::Connected(_))).count() == i + 1)
            .await;
        t(c.close_with(reason.clone())).await;
    }
    ra.wait_for(|s| disconnects(s).len() == 5).await;
    rb.wait_for(|s| disconnects(s).len() == 5).await;
    assert_eq!(disconnects(&ra.seen()), expected_local);
    assert!(disconnects(&rb.seen())
        .iter()
        .all(|r| *r == DisconnectReason::Remote));
    t(a.dial_addr(addr.clone())).await.unwrap();
    rb.wait_for(|s| s.iter().filter(|e| matches!(e, Seen::Connected(_))).count() == 6)
        .await;
    t(b.close()).await;
    // b's own notifiee hears Shutdown; a hears the remote close.
    assert_eq!(
        disconnects(&rb.seen()).last(),
        Some(&DisconnectReason::Shutdown)
    );
    ra.wait_for(|s| disconnects(s).len() == 6).await;
    assert_eq!(
        disconnects(&ra.seen()).last(),
        Some(&DisconnectReason::Remote)
    );
    t(a.close()).await;
}

/// Events: connectedness changes once per peer and in order; a lagging receiver is told
/// how many it missed; a notify handle unregisters on drop.
#[tokio::test]
async fn events_connectedness_and_lag() {
    let a = swarm(261, Kind::Mem);
    let b = swarm(262, Kind::Mem);
    let addr = listen(&b, Kind::Mem).await;
    let mut ev = a.events();
    let c1 = t(a.dial_addr(addr.clone())).await.unwrap();
    let c2 = t(a.dial_addr(addr.clone())).await.unwrap();
    assert_eq!(a.connectedness(&b.local_peer()), Connectedness::Connected);
    t(c1.close()).await;
    t(c2.close()).await;
    let mut changes = Vec::new();
    let mut count = 0;
    while changes.len() < 2 {
        match t(ev.recv()).await.unwrap() {
            SwarmEvent::PeerConnectedness {
                peer,
                connectedness,
            } => {
                assert_eq!(peer, b.local_peer());
                changes.push(connectedness);
            }
            _ => count += 1,
        }
    }
    assert_eq!(
        changes,
        vec![Connectedness::Connected, Connectedness::NotConnected]
    );
    assert!(count >= 3, "{count}");
    // A swarm whose event channel holds 4: 6 events went out, the receiver missed 2,
    // and the swarm did not wait for it.
    let cfg = SwarmConfig {
        events_capacity: 4,
        ..Default::default()
    };
    let small = swarm_with(263, Kind::Mem, cfg);
    let mut lagging = small.events();
    let c1 = t(small.dial_addr(addr.clone())).await.unwrap();
    let c2 = t(small.dial_addr(addr.clone())).await.unwrap();
    t(c1.close()).await;
    t(c2.close()).await;
    t(async {
        while small.conns().len() + small.peers().len() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    t(small.close()).await;
    match t(lagging.recv()).await {
        Err(RecvError::Lagged(n)) => assert_eq!(n, 2),
        other => panic!("expected lag, got {other:?}"),
    }
    // Unregistering by drop.
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let handle = a.notify(Arc::new(NotifyBundle::new().on_listen(
        move |_, _: &Multiaddr| {
            h2.fetch_add(1, Ordering::SeqCst);
        },
    )));
    let probe = Recorder::default();
    let _p = a.notify(Arc::new(probe.clone()));
    drop(handle);
    listen(&a, Kind::Mem).await;
    probe
        .wait_for(|s| s.iter().any(|e| matches!(e, Seen::Listen(_))))
        .await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    t(a.close()).await;
    t(b.close()).await;
}

/// A notifiee that closes the swarm from inside `connected` does not deadlock it.
#[tokio::test]
async fn notifiee_may_close_the_swarm() {
    let cfg = SwarmConfig {
        notifiee_close_grace: Duration::from_millis(100),
        ..Default::default()
    };
    let a = swarm_with(271, Kind::Mem, cfg);
    let b = swarm(272, Kind::Mem);
    introduce(&a, &b, Kind::Mem).await;
    let _h = a.notify(Arc::new(NotifyBundle::new().on_connected(|s, _| {
        let s = s.clone();
        // Sync closure: close from a task of its own, and from the async path below.
        tokio::spawn(async move { s.close().await });
    })));
    struct Closer;
    #[async_trait::async_trait]
    impl Notifiee for Closer {
        async fn connected(&self, s: &Swarm, _c: &Conn) {
            s.close().await;
        }
    }
    let _h2 = a.notify(Arc::new(Closer));
    let _ = t(a.dial_peer(b.local_peer())).await;
    t(a.close()).await;
    assert!(a.is_closed());
    t(b.close()).await;
}
