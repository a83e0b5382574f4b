//! The UDP endpoints of one QUIC transport: one per listen address, plus at most one
//! shared client endpoint per address family for dials that no listener can carry.
//!
//! Dials leave from a listening endpoint of the remote's family when there is one, so the
//! remote sees our listen port (what hole punching and address discovery need); only when
//! there is none do they go out from the shared client endpoint. Every quinn task (the
//! endpoint and connection drivers) runs on [`TrackedRuntime`], so closing the transport
//! can wait for all of them and, past its deadline, stop them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Endpoint, EndpointConfig, Runtime, ServerConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// tokio, with every task quinn spawns tracked, and stopped when `force` is cancelled.
#[derive(Debug, Clone)]
pub(crate) struct TrackedRuntime {
    tracker: TaskTracker,
    force: CancellationToken,
}

impl TrackedRuntime {
    pub(crate) fn new() -> Self {
        TrackedRuntime {
            tracker: TaskTracker::new(),
            force: CancellationToken::new(),
        }
    }

    /// Waits for every quinn task to end (the endpoint drivers end once their endpoint is
    /// closed, has no handle left and every connection has drained); stops the rest after
    /// `timeout`. Nothing is lost by stopping a draining connection: it sends nothing more.
    pub(crate) async fn shutdown(&self, timeout: std::time::Duration) {
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::debug!("QUIC endpoints did not drain in {timeout:?}; stopping them");
            self.force.cancel();
            self.tracker.wait().await;
        }
    }
}

impl Runtime for TrackedRuntime {
    fn new_timer(&self, i: Instant) -> Pin<Box<dyn AsyncTimer>> {
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        let force = self.force.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = future => {}
                _ = force.cancelled() => {}
            }
        });
    }

    fn wrap_udp_socket(&self, t: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(t)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

/// A listening endpoint, as the registry knows it.
#[derive(Debug)]
struct Listening {
    id: u64,
    bound: SocketAddr,
    endpoint: Endpoint,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    next_id: u64,
    listening: Vec<Listening>,
    client_v4: Option<Endpoint>,
    client_v6: Option<Endpoint>,
    /// Endpoints of closed listeners that still carry connections; closed with the
    /// transport.
    retired: Vec<Endpoint>,
}

/// Why no endpoint could be had.
#[derive(Debug)]
pub(crate) enum EndpointError {
    /// The transport has been closed.
    Closed,
    /// Binding the UDP socket failed.
    Io(io::Error),
}

/// The endpoints of one transport.
#[derive(Debug)]
pub(crate) struct Endpoints {
    inner: Mutex<Inner>,
    runtime: Arc<TrackedRuntime>,
    endpoint_config: EndpointConfig,
}

impl Endpoints {
    pub(crate) fn new(runtime: Arc<TrackedRuntime>) -> Self {
        let mut endpoint_config = EndpointConfig::default();
        // QUIC v1 only (no draft versions), as libp2p's quic-v1.
        endpoint_config.supported_versions(vec![1]);
        Endpoints {
            inner: Mutex::new(Inner::default()),
            runtime,
            endpoint_config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain bookkeeping; a panic elsewhere leaves it consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds a listening endpoint on `addr` (port 0 picks one) and registers it for port
    /// reuse. Returns its ID in the registry and the endpoint.
    pub(crate) fn listen(
        &self,
        addr: SocketAddr,
        server: ServerConfig,
    ) -> Result<(u64, Endpoint, SocketAddr), EndpointError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(EndpointError::Closed);
        }
        let endpoint = self.bind(addr, Some(server)).map_err(EndpointError::Io)?;
        let bound = endpoint.local_addr().map_err(EndpointError::Io)?;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.listening.push(Listening {
            id,
            bound,
            endpoint: endpoint.clone(),
        });
        Ok((id, endpoint, bound))
    }

    /// Forgets a listener's endpoint: no new dials leave from it and it accepts no new
    /// connections. Returns it when no connection uses it any more, for the caller to
    /// close; otherwise it lives on (its connections with it) until the transport closes.
    pub(crate) fn unlisten(&self, id: u64) -> Option<Endpoint> {
        let mut inner = self.lock();
        let pos = inner.listening.iter().position(|l| l.id == id)?;
        let Listening { endpoint, .. } = inner.listening.swap_remove(pos);
        endpoint.set_server_config(None);
        if endpoint.open_connections() == 0 {
            Some(endpoint)
        } else {
            inner.retired.push(endpoint.clone());
            None
        }
    }

    /// The endpoint to dial `remote` from: a listening endpoint of the same family that
    /// can reach it, else the shared client endpoint of that family (made on first use).
    pub(crate) fn for_dial(&self, remote: SocketAddr) -> Result<Endpoint, EndpointError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(EndpointError::Closed);
        }
        if let Some(l) = inner
            .listening
            .iter()
            .find(|l| can_reach(l.bound.ip(), remote.ip()))
        {
            return Ok(l.endpoint.clone());
        }
        let slot = if remote.is_ipv4() {
            &mut inner.client_v4
        } else {
            &mut inner.client_v6
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let any = if remote.is_ipv4() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        } else {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
        };
        let endpoint = self.bind(any, None).map_err(EndpointError::Io)?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// Marks the registry closed and hands out every endpoint it holds, for closing.
    pub(crate) fn close_all(&self) -> Vec<Endpoint> {
        let mut inner = self.lock();
        inner.closed = true;
        let mut all: Vec<Endpoint> = inner.listening.drain(..).map(|l| l.endpoint).collect();
        all.extend(inner.client_v4.take());
        all.extend(inner.client_v6.take());
        all.append(&mut inner.retired);
        all
    }

    fn bind(&self, addr: SocketAddr, server: Option<ServerConfig>) -> io::Result<Endpoint> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Keep the families apart: an IPv6 endpoint serves IPv6 only, so an IPv4 dial
            // never leaves from it with a mapped address.
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Endpoint::new(
            self.endpoint_config.clone(),
            server,
            socket.into(),
            self.runtime.clone(),
        )
    }
}

/// Whether a socket bound to `local` can send to `remote`: same family, and a loopback
/// socket only to loopback (a socket bound to a specific address cannot leave through
/// another interface's address either, so only loopback-to-loopback or an unspecified
/// bind are sure to work; a specific non-loopback bind is trusted for non-loopback
/// remotes).
fn can_reach(local: IpAddr, remote: IpAddr) -> bool {
    if local.is_ipv4() != remote.is_ipv4() {
        return false;
    }
    if local.is_unspecified() {
        return true;
    }
    local.is_loopback() == remote.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_choice() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(can_reach(ip("0.0.0.0"), ip("1.2.3.4")));
        assert!(can_reach(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(can_reach(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!can_reach(ip("127.0.0.1"), ip("1.2.3.4")));
        assert!(!can_reach(ip("10.0.0.1"), ip("127.0.0.1")));
        assert!(!can_reach(ip("::"), ip("127.0.0.1")));
        assert!(!can_reach(ip("0.0.0.0"), ip("::1")));
        assert!(can_reach(ip("::1"), ip("::1")));
    }
}
