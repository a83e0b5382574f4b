//! Dialing: `dial_peer` (shared per peer, addresses ranked and staggered, per-address and
//! per-call timeouts, back-off, limits, gater), `dial_addr`, and `new_stream`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use strata_core::addr::peer_id_of;
use strata_core::{BoxCapableConn, GateStage, Multiaddr, PeerId, Protocol, Stream, Transport};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::dial_sync::{self, DialResult, Joined};
use crate::error::{AddrDialError, AddrErrors, SwarmError};
use crate::swarm::Swarm;

/// Options for [`Swarm::new_stream_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    /// Use an existing connection only; fail with [`SwarmError::NoConn`] rather than
    /// dial (go-libp2p's `network.WithNoDial`).
    pub no_dial: bool,
    /// Bound on the dial, if one is needed, instead of `dial_timeout`.
    pub dial_timeout: Option<Duration>,
}

/// Options for [`Swarm::dial_peer_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DialOptions {
    /// Bound on this call instead of `dial_timeout`. The shared dial itself goes on for
    /// other callers.
    pub timeout: Option<Duration>,
}

/// Transport ranking: QUIC first (one round trip to a secure, muxed connection), then the
/// rest in the order given.
fn rank(addr: &Multiaddr) -> u8 {
    if addr
        .iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
    {
        0
    } else {
        1
    }
}

/// False for addresses no peer can be reached at: unspecified (`0.0.0.0`, `::`),
/// multicast, broadcast and link-local IPs. A remote that announces them is wrong or
/// hostile; they are never stored from identify nor dialed.
pub(crate) fn is_reachable_shape(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local())
        }
        Some(Protocol::Ip6(ip)) => {
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            !(ip.is_unspecified() || ip.is_multicast() || link_local)
        }
        Some(_) => true,
        None => false,
    }
}

/// Loopback, private, link-local and memory addresses answer fast or not at all.
fn is_local(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        Some(Protocol::Memory(_)) => true,
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h == "localhost",
        _ => false,
    }
}

type AddrOutcome = (Multiaddr, Result<BoxCapableConn, AddrDialError>);

impl Swarm {
    /// Connects to `peer` on the addresses given with [`Swarm::add_addrs`], or returns an
    /// open connection. Concurrent calls for one peer share one attempt.
    pub async fn dial_peer(&self, peer: PeerId) -> Result<Conn, SwarmError> {
        self.dial_peer_with(peer, DialOptions::default()).await
    }

    /// [`Swarm::dial_peer`] with options.
    pub async fn dial_peer_with(
        &self,
        peer: PeerId,
        opts: DialOptions,
    ) -> Result<Conn, SwarmError> {
        self.check_open()?;
        if peer == self.local_peer() {
            return Err(SwarmError::DialSelf);
        }
        if let Some(g) = self.gater() {
            if !g.intercept_peer_dial(&peer) {
                return Err(SwarmError::Gated {
                    peer: Some(peer),
                    stage: GateStage::PeerDial,
                });
            }
        }
        if let Some(c) = self.best_conn(&peer) {
            return Ok(c);
        }
        let slot = match self.0.dial_sync.join(peer) {
            Joined::Wait(slot) => slot,
            Joined::Start(tx, slot) => {
                let swarm = self.clone();
                let overall = self.config().dial_timeout;
                self.0.tracker.spawn(async move {
                    let result = tokio::select! {
                        _ = swarm.0.cancel.cancelled() => Err(SwarmError::Closed),
                        r = tokio::time::timeout(overall, swarm.dial_worker(peer)) => {
                            r.unwrap_or(Err(SwarmError::DialTimeout { peer, timeout: overall }))
                        }
                    };
                    if let Some(m) = swarm.metrics() {
                        m.dial_completed(result.is_ok());
                    }
                    // Forget the dial first: a caller arriving after the result starts fresh
                    // (and finds the new connection).
                    swarm.0.dial_sync.finish(&peer);
                    tx.send_replace(Some(result));
                });
                slot
            }
        };
        let timeout = opts.timeout.unwrap_or(self.config().dial_timeout);
        tokio::select! {
            _ = self.0.cancel.cancelled() => Err(SwarmError::Closed),
            r = tokio::time::timeout(timeout, dial_sync::wait(slot)) => {
                r.unwrap_or(Err(SwarmError::DialTimeout { peer, timeout }))
            }
        }
    }

    /// The one dial to `peer`: filters and ranks its addresses, then dials them with a
    /// stagger (a failure starts the next at once) until one succeeds.
    async fn dial_worker(&self, peer: PeerId) -> DialResult {
        if let Some(c) = self.best_conn(&peer) {
            return Ok(c);
        }
        let addrs = self.addrs_of(&peer);
        if addrs.is_empty() {
            return Err(SwarmError::NoAddresses(peer));
        }
        let mut errors = Vec::new();
        let mut candidates = Vec::new();
        for addr in addrs {
            let Some(t) = self.transport_for_dial(&addr) else {
                errors.push((addr, AddrDialError::NoTransport));
                continue;
            };
            if !self.is_dialable(&addr) {
                errors.push((addr, AddrDialError::Filtered));
                continue;
            }
            if self
                .gater()
                .is_some_and(|g| !g.intercept_addr_dial(Some(&peer), &addr))
            {
                errors.push((addr, AddrDialError::Gated));
            } else if self.0.backoff.is_backing_off(&peer, &addr) {
                errors.push((addr, AddrDialError::Backoff));
            } else {
                candidates.push((addr, t));
            }
        }
        if let Some(m) = self.metrics() {
            for (addr, e) in &errors {
                m.failed_dialing(addr, e);
            }
        }
        if candidates.is_empty() {
            if errors
                .iter()
                .all(|(_, e)| matches!(e, AddrDialError::Backoff))
            {
                return Err(SwarmError::DialBackoff(peer));
            }
            return Err(SwarmError::Dial {
                peer,
                errors: AddrErrors(errors),
            });
        }
        candidates.sort_by_key(|(a, _)| rank(a));
        let mut pending: VecDeque<_> = candidates.into();
        let per_peer = self.0.dial_limiter.peer_semaphore();
        let mut inflight = FuturesUnordered::new();
        let stagger = self.config().dial_stagger;
        let mut next_start = Instant::now();
        loop {
            if inflight.is_empty() {
                match pending.pop_front() {
                    Some((addr, t)) => {
                        inflight.push(self.dial_one(peer, addr, t, per_peer.clone()));
                        next_start = Instant::now() + stagger;
                        continue;
                    }
                    None => break,
                }
            }
            tokio::select! {
                Some((addr, outcome)) = inflight.next() => match outcome {
                    Ok(capable) => {
                        self.0.backoff.clear(&peer);
                        if capable.remote_peer() != peer {
                            let actual = capable.remote_peer();
                            self.close_untracked_conn(capable);
                            return Err(SwarmError::PeerIdMismatch { expected: peer, actual });
                        }
                        let (conn, ack) = self.add_conn(capable)?;
                        self.wait_for_notifiees(&conn, ack).await;
                        return Ok(conn);
                    }
                    Err(e) => {
                        tracing::debug!(%peer, %addr, error = %e, "address dial failed");
                        if let Some(m) = self.metrics() {
                            m.failed_dialing(&addr, &e);
                        }
                        self.0.backoff.add(peer, addr.clone());
                        errors.push((addr, e));
                        // A failure frees the way for the next address at once.
                        next_start = Instant::now();
                    }
                },
                _ = tokio::time::sleep_until(next_start), if !pending.is_empty() => {
                    if let Some((addr, t)) = pending.pop_front() {
                        inflight.push(self.dial_one(peer, addr, t, per_peer.clone()));
                        next_start = Instant::now() + stagger;
                    }
                }
            }
        }
        Err(SwarmError::Dial {
            peer,
            errors: AddrErrors(errors),
        })
    }

    async fn dial_one(
        &self,
        peer: PeerId,
        addr: Multiaddr,
        transport: Arc<dyn Transport>,
        per_peer: Arc<Semaphore>,
    ) -> AddrOutcome {
        // Both bounds are waited for outside the timeout: queueing is not the address's fault.
        let _peer_permit = per_peer.acquire_owned().await;
        let _permit = self.0.dial_limiter.acquire().await;
        let timeout = self.addr_timeout(&addr);
        let outcome = match tokio::time::timeout(timeout, transport.dial(&addr, Some(peer))).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(AddrDialError::Transport(Arc::new(e))),
            Err(_) => Err(AddrDialError::Timeout(timeout)),
        };
        (addr, outcome)
    }

    fn addr_timeout(&self, addr: &Multiaddr) -> Duration {
        if is_local(addr) {
            self.config().dial_timeout_local
        } else {
            self.config().dial_timeout_per_addr
        }
    }

    /// Dials one address; the peer is the one its `/p2p` suffix names, if any, else
    /// whoever answers. Neither shared with other dials nor subject to back-off.
    pub async fn dial_addr(&self, addr: Multiaddr) -> Result<Conn, SwarmError> {
        let result = self.dial_addr_inner(addr).await;
        if let Some(m) = self.metrics() {
            if let Err(SwarmError::DialAddr { addr, error }) = &result {
                m.failed_dialing(addr, error);
            }
            m.dial_completed(result.is_ok());
        }
        result
    }

    async fn dial_addr_inner(&self, addr: Multiaddr) -> Result<Conn, SwarmError> {
        self.check_open()?;
        let peer = peer_id_of(&addr);
        if peer == Some(self.local_peer()) {
            return Err(SwarmError::DialSelf);
        }
        let fail = |error| SwarmError::DialAddr {
            addr: addr.clone(),
            error,
        };
        if !is_reachable_shape(&addr) || self.0.addr_filter_refuses(&addr) {
            return Err(fail(AddrDialError::Filtered));
        }
        if self
            .gater()
            .is_some_and(|g| !g.intercept_addr_dial(peer.as_ref(), &addr))
        {
            return Err(fail(AddrDialError::Gated));
        }
        let transport = self
            .transport_for_dial(&addr)
            .ok_or_else(|| SwarmError::NoTransport(addr.clone()))?;
        let timeout = self.addr_timeout(&addr);
        let dial = async {
            let _permit = self.0.dial_limiter.acquire().await;
            tokio::time::timeout(timeout, transport.dial(&addr, peer)).await
        };
        let capable = tokio::select! {
            _ = self.0.cancel.cancelled() => return Err(SwarmError::Closed),
            r = dial => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(fail(AddrDialError::Transport(Arc::new(e)))),
                Err(_) => return Err(fail(AddrDialError::Timeout(timeout))),
            },
        };
        let (conn, ack) = self.add_conn(capable)?;
        self.wait_for_notifiees(&conn, ack).await;
        Ok(conn)
    }

    /// Opens a stream to `peer` on its best connection, dialing first if there is none.
    pub async fn new_stream(&self, peer: PeerId) -> Result<Stream, SwarmError> {
        self.new_stream_with(peer, StreamOptions::default()).await
    }

    /// [`Swarm::new_stream`] with options (for example `no_dial`).
    pub async fn new_stream_with(
        &self,
        peer: PeerId,
        opts: StreamOptions,
    ) -> Result<Stream, SwarmError> {
        self.check_open()?;
        let conn = match self.best_conn(&peer) {
            Some(c) => c,
            None if opts.no_dial => return Err(SwarmError::NoConn(peer)),
            None => {
                self.dial_peer_with(
                    peer,
                    DialOptions {
                        timeout: opts.dial_timeout,
                    },
                )
                .await?
            }
        };
        conn.new_stream().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_ranks_before_tcp_and_local_addresses_are_recognised() {
        let tcp: Multiaddr = "/ip4/1.2.3.4/tcp/1".parse().unwrap();
        let quic: Multiaddr = "/ip4/1.2.3.4/udp/1/quic-v1".parse().unwrap();
        let mut v = [tcp.clone(), quic.clone()];
        v.sort_by_key(rank);
        assert_eq!(v, [quic, tcp.clone()]);
        assert!(!is_local(&tcp));
        for local in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/192.168.1.2/tcp/1",
            "/ip4/10.0.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/memory/5",
            "/dns/localhost/tcp/1",
        ] {
            assert!(is_local(&local.parse().unwrap()), "{local}");
        }
    }
}
