//! The TCP listener: an accept loop that rides out descriptor exhaustion.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use strata_core::addr::tcp_multiaddr;
use strata_core::{BoxRawConn, Multiaddr, RawListener, TransportError};
use tokio::sync::watch;

use super::reuse::RegistryGuard;
use super::{configure_stream, TcpConfig, TcpConn};

/// First pause after a passing accept error.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between accept attempts while errors persist.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A TCP listener. Dropping it closes the socket.
pub struct TcpListener {
    inner: Option<tokio::net::TcpListener>,
    addr: Multiaddr,
    config: TcpConfig,
    backoff: Option<Duration>,
    transient_errors: watch::Sender<u64>,
    _registration: Option<RegistryGuard>,
}

impl TcpListener {
    pub(crate) fn new(
        inner: tokio::net::TcpListener,
        addr: Multiaddr,
        config: TcpConfig,
        registration: Option<RegistryGuard>,
    ) -> Self {
        TcpListener {
            inner: Some(inner),
            addr,
            config,
            backoff: None,
            transient_errors: watch::channel(0).0,
            _registration: registration,
        }
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.inner {
            Some(l) => l.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "listener closed",
            )),
        }
    }

    /// A counter of the passing accept errors (EMFILE, ENFILE, ECONNABORTED, ENOBUFS)
    /// this listener has ridden out, for monitoring.
    pub fn transient_errors(&self) -> watch::Receiver<u64> {
        self.transient_errors.subscribe()
    }

    /// Closes the socket; later accepts return [`TransportError::ListenerClosed`].
    pub fn close(&mut self) {
        self.inner = None;
        self._registration = None;
    }

    /// Waits for the next connection, as the concrete [`TcpConn`].
    pub async fn accept_conn(&mut self) -> Result<TcpConn, TransportError> {
        loop {
            let Some(inner) = &self.inner else {
                return Err(TransportError::ListenerClosed {
                    addr: self.addr.clone(),
                });
            };
            match inner.accept().await {
                Ok((stream, _)) => {
                    self.backoff = None;
                    // A connection whose socket cannot even be configured or named is dropped;
                    // the listener itself is fine, so go on to the next one.
                    match configure_stream(&stream, &self.config)
                        .and_then(|()| TcpConn::new(stream))
                    {
                        Ok(conn) => return Ok(conn),
                        Err(e) => {
                            tracing::debug!(listener = %self.addr, "dropping accepted socket: {e}")
                        }
                    }
                }
                Err(e) if is_passing_accept_error(&e) => {
                    let pause = self
                        .backoff
                        .map_or(ACCEPT_BACKOFF_MIN, |b| (b * 2).min(ACCEPT_BACKOFF_MAX));
                    self.backoff = Some(pause);
                    self.transient_errors.send_modify(|n| *n += 1);
                    tracing::warn!(listener = %self.addr, "accept failed ({e}); retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                }
                Err(source) => {
                    self.close();
                    return Err(TransportError::Accept {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
        }
    }
}

/// Errors that say the process or the system is short of something for a moment, or
/// that one connection died before we took it: the listener is still good.
fn is_passing_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc::EMFILE
            || code == libc::ENFILE
            || code == libc::ECONNABORTED
            || code == libc::ENOBUFS
    ) || e.kind() == io::ErrorKind::ConnectionAborted
}

#[async_trait]
impl RawListener for TcpListener {
    fn multiaddr(&self) -> &Multiaddr {
        &self.addr
    }

    async fn accept(&mut self) -> Result<BoxRawConn, TransportError> {
        Ok(Box::new(self.accept_conn().await?))
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("addr", &self.addr)
            .field("open", &self.inner.is_some())
            .finish()
    }
}

/// The multiaddr a listener reports for its bound socket.
pub(crate) fn listen_multiaddr(listener: &tokio::net::TcpListener) -> io::Result<Multiaddr> {
    Ok(tcp_multiaddr(listener.local_addr()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_errors_are_recognised() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ECONNABORTED,
            libc::ENOBUFS,
        ] {
            assert!(is_passing_accept_error(&io::Error::from_raw_os_error(code)));
        }
        assert!(!is_passing_accept_error(&io::Error::from_raw_os_error(
            libc::EBADF
        )));
        assert!(!is_passing_accept_error(&io::Error::from_raw_os_error(
            libc::EINVAL
        )));
    }
}
