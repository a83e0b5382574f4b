//! The dial limits: `max_dials_per_peer` and `max_dials_in_flight` bound how many address
//! dials are in flight at once, observed from the far end: TCP listeners that accept and
//! never speak, so each dial's handshake hangs until its per-address timeout.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use strata_core::{Multiaddr, PeerId};
use strata_swarm::{AddrDialError, SwarmConfig, SwarmError};
use tokio::sync::Notify;

/// What the hanging listeners saw, across all of them.
#[derive(Default)]
struct Seen {
    /// Accepted sockets, kept open (we never write or close them).
    open: Vec<std::net::TcpStream>,
    /// The most sockets the dialer held open at once, measured at each accept.
    max_open: usize,
    accepts: usize,
}

#[derive(Default)]
struct Hanging {
    seen: Mutex<Seen>,
    changed: Notify,
}

/// True while the dialer still holds its end. Reads (and discards) what the dialer sent
/// (its multistream-select header) to get to the end-of-stream behind it, if any.
fn still_open(s: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match (&mut &*s).read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

impl Hanging {
    /// A listener on 127.0.0.1 that accepts and never speaks; returns its address.
    async fn listener(self: &Arc<Self>) -> Multiaddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                // Kept as a non-blocking std socket so the check below is a plain syscall.
                let s = s.into_std().unwrap();
                let mut seen = me.seen.lock().unwrap();
                // On loopback a dialer's FIN for an abandoned dial is processed before the
                // SYN of a dial it starts afterwards, so sockets the dialer has given up
                // on read as closed here, and what stays open was in flight together.
                seen.open.retain(still_open);
                seen.open.push(s);
                seen.max_open = seen.max_open.max(seen.open.len());
                seen.accepts += 1;
                drop(seen);
                me.changed.notify_waiters();
            }
        });
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    /// Waits until `n` connections have been accepted in all, then returns the most that
    /// were open at once.
    async fn max_open_after(&self, n: usize) -> usize {
        t(async {
            loop {
                let notified = self.changed.notified();
                {
                    let seen = self.seen.lock().unwrap();
                    if seen.accepts >= n {
                        assert_eq!(seen.accepts, n, "an address was dialed twice");
                        return seen.max_open;
                    }
                }
                notified.await;
            }
        })
        .await
    }
}

fn config(per_peer: usize, global: usize) -> SwarmConfig {
    SwarmConfig {
        // Each hanging dial ends after this: short, so the test is quick.
        dial_timeout_local: Duration::from_millis(300),
        // Much shorter than the timeout: without a limit every address would be in flight
        // together.
        dial_stagger: Duration::from_millis(10),
        max_dials_per_peer: per_peer,
        max_dials_in_flight: global,
        ..Default::default()
    }
}

/// Every address failed by timing out (so each was really dialed and hung).
fn assert_all_timed_out(r: Result<strata_swarm::Conn, SwarmError>, n: usize) {
    match r {
        Err(SwarmError::Dial { errors, .. }) => {
            assert_eq!(errors.0.len(), n, "{errors:?}");
            assert!(
                errors
                    .0
                    .iter()
                    .all(|(_, e)| matches!(e, AddrDialError::Timeout(_))),
                "{errors:?}"
            );
        }
        other => panic!("expected every address to time out, got {other:?}"),
    }
}

async fn dial_three_hanging(per_peer: usize) -> usize {
    let hang = Arc::new(Hanging::default());
    let s = swarm_with(700 + per_peer as u64, Kind::Tcp, config(per_peer, 128));
    let target = peer(799);
    let mut addrs = Vec::new();
    for _ in 0..3 {
        addrs.push(hang.listener().await);
    }
    s.add_addrs(target, addrs);
    assert_all_timed_out(t(s.dial_peer(target)).await, 3);
    let max = hang.max_open_after(3).await;
    t(s.close()).await;
    max
}

/// With `max_dials_per_peer = 1`, a peer's addresses are dialed one at a time: never two
/// hanging handshakes to it at once, and each address is still tried. The control run
/// without the limit shows the observation does see concurrent dials.
#[tokio::test]
async fn max_dials_per_peer_bounds_address_dials_in_flight() {
    assert_eq!(dial_three_hanging(1).await, 1);
    // Control: with the default-sized limit, the staggered dials overlap.
    assert!(dial_three_hanging(8).await >= 2);
}

/// With `max_dials_in_flight = 1`, two peers dialed at the same time share the one slot:
/// never two hanging handshakes at once across the swarm, and every address is tried.
#[tokio::test]
async fn max_dials_in_flight_bounds_dials_across_peers() {
    let hang = Arc::new(Hanging::default());
    let s = swarm_with(710, Kind::Tcp, config(8, 1));
    let peers: Vec<PeerId> = vec![peer(711), peer(712)];
    for p in &peers {
        let a = hang.listener().await;
        let b = hang.listener().await;
        s.add_addrs(*p, [a, b]);
    }
    let (r1, r2) = t(async { tokio::join!(s.dial_peer(peers[0]), s.dial_peer(peers[1])) }).await;
    assert_all_timed_out(r1, 2);
    assert_all_timed_out(r2, 2);
    assert_eq!(hang.max_open_after(4).await, 1);
    t(s.close()).await;
}
