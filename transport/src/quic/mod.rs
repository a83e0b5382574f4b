//! QUIC (`/udp/PORT/quic-v1`) on quinn: connections born capable.
//!
//! QUIC's TLS 1.3 handshake authenticates the peer with the libp2p certificate (ALPN
//! "libp2p", client authentication required), and QUIC's bidirectional streams are the
//! libp2p streams, so no upgrader runs: dialing and accepting hand out
//! [`strata_core::CapableConn`]s directly, under the same accept discipline (handshake bound, deadline,
//! accept queue, gater) as an upgraded TCP listener.
//!
//! * [`config`]: settings and their defaults.
//! * `endpoint`: one UDP endpoint per listen address; dials reuse one (port reuse).
//! * [`QuicListener`]: the accept discipline.
//! * [`QuicConn`] and [`QuicStream`]: the connection and its streams.

pub mod config;
mod conn;
mod endpoint;
mod listener;
mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use quinn::ConnectionError;
use strata_core::addr::{self, quic_multiaddr, quic_socket_addr};
use strata_core::rcmgr::{null_resource_manager, priority};
use strata_core::tls::{
    client_config_with_cert, server_config_with_cert, Libp2pCertificate, TlsSetupError, LIBP2P_ALPN,
};
use strata_core::{
    AddrError, BoxCapableConn, BoxListener, ConnScope, ConnectionGater, Direction, GateStage,
    Keypair, Multiaddr, PeerId, Reservation, ResourceError, SecurityError, SharedResourceManager,
    Transport, TransportError, UpgradeError,
};
use tokio_util::sync::CancellationToken;

pub use config::{QuicConfig, QuicConfigError};
pub use conn::QuicConn;
pub use listener::QuicListener;
pub use stream::QuicStream;

use conn::{remote_public_key, CLOSE_NORMAL};
use endpoint::{EndpointError, Endpoints, TrackedRuntime};

/// The server name given to quinn when dialing. libp2p sends no SNI (the TLS config turns
/// it off) and checks no names, but quinn wants a syntactically valid one.
const SERVER_NAME: &str = "l";

/// Building a [`QuicTransport`] failed.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The configuration has a value quinn cannot take.
    #[error(transparent)]
    Config(#[from] QuicConfigError),
    /// The certificate or the TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// quinn refused the TLS configuration (for example no TLS 1.3 suite).
    #[error("quinn refused the TLS configuration: {0}")]
    Crypto(String),
}

/// What the transport, its listeners and their tasks share.
pub(crate) struct Shared {
    pub(crate) local_peer: PeerId,
    pub(crate) config: QuicConfig,
    /// Client and server configs per receive window, largest first. A connection
    /// starts at the last (smallest) and grows through them as its traffic needs.
    tiers: Vec<WindowTier>,
    /// The client config a dial starts with: the smallest connection window, the full
    /// stream window (the connection window bounds it, and it cannot grow later).
    start_client: quinn::ClientConfig,
    /// The server config of inbound handshakes: small windows (see
    /// [`config::FIRST_WINDOW`]) until the handshake is done and the real ones are
    /// reserved. Listening endpoints start with it too.
    handshake_server: Arc<quinn::ServerConfig>,
    pub(crate) endpoints: Endpoints,
    runtime: Arc<TrackedRuntime>,
    /// Cancelled when the transport closes; every listener's token is its child.
    pub(crate) cancel: CancellationToken,
    /// Serialises `close` so that every caller returns only once closing is done.
    close_lock: tokio::sync::Mutex<()>,
}

/// The QUIC transport. Cheap to clone; clones share the endpoints.
///
/// Dials check the remote's certificate and, when an expected peer is given (as an
/// argument or as the address's `/p2p` suffix), its peer ID. Listeners run the accept
/// discipline described in [`QuicListener`]. [`QuicTransport::close`] closes every
/// endpoint, with every connection on it, and waits for quinn's tasks to end.
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
    gater: Arc<dyn ConnectionGater>,
    rcmgr: SharedResourceManager,
}

/// What an inbound QUIC handshake holds before its windows are reserved: quinn's
/// connection state, rustls' handshake and its buffers, and the first window each way
/// (64 KiB). The counting allocator of the facade's `tests/attacks.rs`
/// measures about 60 KiB of live heap per handshake held (client silent after its
/// Initial), the windows unused.
pub const QUIC_HANDSHAKE_MEMORY: usize = 96 * 1024 + 2 * config::FIRST_WINDOW as usize;

/// The configs for one receive window size.
pub(crate) struct WindowTier {
    window: u64,
    /// The send window that goes with it.
    send_window: u64,
}

impl WindowTier {
    /// What the tier's windows may hold: the receive window and the send window.
    fn memory(&self) -> usize {
        usize::try_from(self.window.saturating_add(self.send_window)).unwrap_or(usize::MAX)
    }
}

impl Shared {
    /// Reserves the windows of the smallest tier, receive and send together, and
    /// returns its index: every connection starts there (an idle connection books what
    /// an idle connection can be made to hold, not what a bulk transfer needs) and
    /// grows with its traffic ([`Shared::grow_windows`]).
    pub(crate) fn reserve_windows(&self, held: &mut Reservation) -> Result<usize, ResourceError> {
        let last = self.tiers.len().saturating_sub(1);
        let tier = self.tiers.get(last).ok_or(ResourceError {
            scope: "conn".into(),
            resource: strata_core::rcmgr::Resource::Memory,
            limit: 0,
        })?;
        held.grow(tier.memory(), priority::ALWAYS)?;
        Ok(last)
    }

    /// Moves a connection at tier `from` to the next larger tier if its scope can
    /// reserve the difference (the largest only while memory is plentiful), and gives it
    /// the larger windows; returns the tier it is at.
    pub(crate) fn grow_windows(
        &self,
        conn: &quinn::Connection,
        held: &mut Reservation,
        from: usize,
    ) -> usize {
        let Some(to) = from.checked_sub(1) else {
            return from;
        };
        let (Some(old), Some(new)) = (self.tiers.get(from), self.tiers.get(to)) else {
            return from;
        };
        let prio = if to == 0 {
            priority::MEDIUM
        } else {
            priority::HIGH
        };
        if held
            .grow(new.memory().saturating_sub(old.memory()), prio)
            .is_err()
        {
            return from;
        }
        if let Ok(window) = quinn::VarInt::from_u64(new.window) {
            conn.set_receive_window(window);
        }
        conn.set_send_window(new.send_window);
        to
    }
}

/// How often a connection's traffic is looked at while it moves data; an idle one is
/// looked at less and less often, down to [`TUNE_IDLE`].
const TUNE_ACTIVE: std::time::Duration = std::time::Duration::from_millis(10);
/// The longest wait between looks at an idle connection.
const TUNE_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether a connection that moved `bytes` (the larger of the two directions) in
/// `elapsed`, at round-trip time `rtt`, may be held back by a window of `window`: its
/// bandwidth-delay product reaches half the window, or it moved a window's worth in
/// one look (a fast path whose RTT is tiny still gets room for bursts).
fn needs_larger_window(
    bytes: u64,
    elapsed: std::time::Duration,
    rtt: std::time::Duration,
    window: u64,
) -> bool {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let bdp = bytes as f64 / secs * rtt.as_secs_f64();
    bdp * 2.0 >= window as f64 || bytes >= window
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local_peer", &self.shared.local_peer)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A transport for `identity` with the given settings. Generates the libp2p
    /// certificate once; every endpoint presents it.
    pub fn new(identity: Keypair, config: QuicConfig) -> Result<Self, QuicError> {
        config.validate()?;
        let cert = Libp2pCertificate::generate(&identity)?;
        let alpn = vec![LIBP2P_ALPN.to_vec()];
        // The expected peer is checked after the handshake (see `dial`), so that a
        // mismatch can name the peer the remote proved; one client config serves all dials.
        let client_tls = client_config_with_cert(&cert, None, alpn.clone())?;
        let server_tls = server_config_with_cert(&cert, alpn)?;
        let client_crypto = Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
                .map_err(|e| QuicError::Crypto(e.to_string()))?,
        );
        let server_crypto = Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
                .map_err(|e| QuicError::Crypto(e.to_string()))?,
        );
        let tiers: Vec<WindowTier> = config
            .window_tiers()
            .into_iter()
            .map(|(window, _)| WindowTier {
                window,
                send_window: config.send_window.min(window.max(config::FIRST_WINDOW)),
            })
            .collect();
        let Some(smallest) = tiers.last() else {
            return Err(QuicConfigError::Zero("receive_window").into());
        };
        // Dials start at the smallest connection window with the full stream window
        // (quinn cannot raise a stream window later; the connection window bounds it).
        let mut start_client = quinn::ClientConfig::new(client_crypto.clone());
        start_client.transport_config(
            config.transport_config_with(smallest.window, config.stream_receive_window)?,
        );
        // Inbound handshakes start small: the real windows come once it is done. The
        // stream window is the configured one (the connection window bounds it).
        let first = config::FIRST_WINDOW.min(config.receive_window);
        let transport = config.transport_config_with(first, config.stream_receive_window)?;
        let mut server = quinn::ServerConfig::with_crypto(server_crypto);
        server.transport_config(transport);
        // A Strata connection does not follow its peer to a new address (its multiaddrs
        // are fixed), so migration stays off, as in rust-libp2p.
        server.migration(false);
        // Connection attempts quinn holds while the listener takes none (backpressure);
        // past this it refuses them.
        server.max_incoming(config.max_inflight_handshakes);
        let runtime = Arc::new(TrackedRuntime::new());
        Ok(QuicTransport {
            shared: Arc::new(Shared {
                local_peer: identity.public().to_peer_id(),
                config,
                tiers,
                start_client,
                handshake_server: Arc::new(server),
                endpoints: Endpoints::new(runtime.clone()),
                runtime,
                cancel: CancellationToken::new(),
                close_lock: tokio::sync::Mutex::new(()),
            }),
            gater: Arc::new(strata_core::AllowAll),
            rcmgr: null_resource_manager(),
        })
    }

    /// Admits connections and reserves their receive windows with `rcmgr` (the default
    /// allows everything). Applies to listeners made afterwards.
    pub fn with_resource_manager(mut self, rcmgr: SharedResourceManager) -> Self {
        self.rcmgr = rcmgr;
        self
    }

    /// Consults `gater` on inbound connections (accept, secured, upgraded) and on dials
    /// (secured, upgraded); the swarm checks the dial hooks. Applies to listeners made
    /// afterwards.
    pub fn with_gater(mut self, gater: Arc<dyn ConnectionGater>) -> Self {
        self.gater = gater;
        self
    }

    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.shared.local_peer
    }

    /// The transport's settings.
    pub fn config(&self) -> &QuicConfig {
        &self.shared.config
    }

    /// Listens on a QUIC multiaddr and returns the concrete listener; port 0 picks a port
    /// and the listener's multiaddr names it.
    pub async fn listen_quic(&self, addr: &Multiaddr) -> Result<QuicListener, TransportError> {
        let target = quic_socket_addr(&addr::without_peer_id(addr))?;
        let (id, endpoint, bound) = self
            .shared
            .endpoints
            .listen(target, (*self.shared.handshake_server).clone())
            .map_err(|e| match e {
                EndpointError::Closed => TransportError::TransportClosed,
                EndpointError::Io(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
                    TransportError::AddrInUse { addr: addr.clone() }
                }
                EndpointError::Io(source) => TransportError::Listen {
                    addr: addr.clone(),
                    source,
                },
            })?;
        tracing::debug!(addr = %quic_multiaddr(bound), "listening");
        Ok(QuicListener::new(
            self.shared.clone(),
            self.gater.clone(),
            self.rcmgr.clone(),
            id,
            endpoint,
            bound,
        ))
    }

    /// Dials a QUIC multiaddr and returns the concrete connection.
    pub async fn dial_quic(
        &self,
        addr: &Multiaddr,
        expected_peer: Option<PeerId>,
    ) -> Result<QuicConn, TransportError> {
        let expected = match (expected_peer, addr::peer_id_of(addr)) {
            (Some(wanted), Some(existing)) if wanted != existing => {
                return Err(AddrError::PeerIdConflict {
                    addr: addr.clone(),
                    existing,
                    wanted,
                }
                .into())
            }
            (Some(p), _) | (None, Some(p)) => Some(p),
            (None, None) => None,
        };
        let remote = quic_socket_addr(addr)?;
        let resource_err = |source| TransportError::Resource {
            addr: addr.clone(),
            source,
        };
        let scope = self
            .rcmgr
            .open_connection(Direction::Outbound, false, addr)
            .map_err(resource_err)?;
        let mut held = scope.memory().empty();
        let tier = self
            .shared
            .reserve_windows(&mut held)
            .map_err(resource_err)?;
        let client = self.shared.start_client.clone();
        let endpoint = self
            .shared
            .endpoints
            .for_dial(remote)
            .map_err(|e| match e {
                EndpointError::Closed => TransportError::TransportClosed,
                EndpointError::Io(source) => TransportError::Dial {
                    addr: addr.clone(),
                    source,
                },
            })?;
        let started = std::time::Instant::now();
        let connecting =
            endpoint
                .connect_with(client, remote, SERVER_NAME)
                .map_err(|e| match e {
                    quinn::ConnectError::EndpointStopping => TransportError::TransportClosed,
                    e => TransportError::Dial {
                        addr: addr.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                    },
                })?;
        let upgrade_err = |source: UpgradeError| TransportError::Upgrade {
            addr: addr.clone(),
            source,
        };
        let timeout = self.shared.config.handshake_timeout;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(upgrade_err(UpgradeError::Timeout(timeout))),
            Ok(Err(ConnectionError::LocallyClosed)) => return Err(TransportError::TransportClosed),
            Ok(Err(e)) => return Err(dial_error(addr, e)),
            Ok(Ok(conn)) => conn,
        };
        let key = match remote_public_key(&conn) {
            Ok(key) => key,
            Err(e) => {
                conn.close(CLOSE_NORMAL, b"bad certificate");
                return Err(upgrade_err(UpgradeError::Security(e)));
            }
        };
        let actual = key.to_peer_id();
        if let Some(expected) = expected {
            if expected != actual {
                conn.close(CLOSE_NORMAL, b"peer id mismatch");
                return Err(upgrade_err(UpgradeError::Security(
                    SecurityError::PeerIdMismatch { expected, actual },
                )));
            }
        }
        let bound = endpoint
            .local_addr()
            .map_err(|source| TransportError::Dial {
                addr: addr.clone(),
                source,
            })?;
        let local = match conn.local_ip() {
            Some(ip) => local_multiaddr(bound, Some(ip)),
            // quinn knows the local IP of server-side connections only; ask the routing
            // table which source address a packet to the remote would leave from.
            None => local_multiaddr(bound, route_source(bound, remote)),
        };
        let remote_addr = quic_multiaddr(conn.remote_address());
        if !self
            .gater
            .intercept_secured(Direction::Outbound, &actual, &local, &remote_addr)
        {
            conn.close(CLOSE_NORMAL, b"gated");
            return Err(upgrade_err(UpgradeError::Gated(GateStage::Secured)));
        }
        if let Err(e) = scope.set_peer(actual) {
            conn.close(CLOSE_NORMAL, b"resource limit");
            return Err(upgrade_err(UpgradeError::Resource(e)));
        }
        scope.established();
        let conn = QuicConn::new(
            conn,
            self.shared.local_peer,
            key,
            local,
            remote_addr,
            Direction::Outbound,
            started.elapsed(),
        )
        .with_max_streams(self.shared.config.max_concurrent_bidi_streams);
        // QUIC has no separate muxer step: the connection is as upgraded as it will be.
        if !self.gater.intercept_upgraded(&conn) {
            conn.quinn().close(CLOSE_NORMAL, b"gated");
            return Err(upgrade_err(UpgradeError::Gated(GateStage::Upgraded)));
        }
        self.shared
            .hold_until_closed(conn.quinn().clone(), scope, held, tier);
        Ok(conn)
    }

    /// Closes every endpoint (and so every connection and listener of this transport) and
    /// waits, at most `close_timeout`, for them to drain; then stops what is left. QUIC
    /// drains a closed connection for three probe timeouts; one that never measured its
    /// RTT (a refused dial) drains for about 3 s, which is why the wait is bounded.
    /// Idempotent; later dials and listens fail with [`TransportError::TransportClosed`].
    pub async fn close(&self) {
        self.close_within(self.shared.config.close_timeout).await
    }

    /// [`QuicTransport::close`], waiting at most `within` (and at most `close_timeout`)
    /// for the endpoints to drain before stopping them.
    pub async fn close_within(&self, within: std::time::Duration) {
        let _serial = self.shared.close_lock.lock().await;
        self.shared.cancel.cancel();
        let endpoints = self.shared.endpoints.close_all();
        for endpoint in &endpoints {
            endpoint.close(CLOSE_NORMAL, b"");
        }
        // The endpoints' drivers send the CONNECTION_CLOSE frames, then end once every
        // connection has drained and no handle is left; drop ours so they can.
        drop(endpoints);
        self.shared
            .runtime
            .shutdown(within.min(self.shared.config.close_timeout))
            .await;
    }
}

impl Shared {
    /// Keeps `scope` (the connection's slot) and `held` (its windows and state) until
    /// the connection has ended, on a task the transport's close waits for.
    /// The task also tunes the windows: starting at tier `tier` (the smallest), it
    /// moves the connection to larger ones as its traffic needs them and its scope can
    /// reserve them (window auto-tuning, as TCP's receive buffer auto-tuning).
    pub(crate) fn hold_until_closed(
        self: &Arc<Self>,
        conn: quinn::Connection,
        scope: ConnScope,
        mut held: Reservation,
        mut tier: usize,
    ) {
        use quinn::Runtime as _;
        let shared = Arc::downgrade(self);
        self.runtime.spawn(Box::pin(async move {
            let mut wait = TUNE_ACTIVE;
            let mut last = conn.stats();
            let mut at = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = conn.closed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let stats = conn.stats();
                let now = tokio::time::Instant::now();
                let moved = (stats.udp_rx.bytes.saturating_sub(last.udp_rx.bytes))
                    .max(stats.udp_tx.bytes.saturating_sub(last.udp_tx.bytes));
                let window = shared.tiers.get(tier).map_or(u64::MAX, |t| t.window);
                if tier > 0 && needs_larger_window(moved, now - at, stats.path.rtt, window) {
                    tier = shared.grow_windows(&conn, &mut held, tier);
                }
                // Back off while idle (a packet or two, keep-alives); look often again
                // once data moves.
                wait = if moved > 4 * 1500 {
                    TUNE_ACTIVE
                } else {
                    (wait * 2).min(TUNE_IDLE)
                };
                last = stats;
                at = now;
            }
            drop(held);
            drop(scope);
        }));
    }

    /// Reserves the windows of an inbound connection whose handshake is done (beside
    /// what `held` holds for its state) and gives them to the connection; returns the
    /// tier it starts at.
    pub(crate) fn open_windows(
        &self,
        conn: &quinn::Connection,
        held: &mut Reservation,
    ) -> Result<usize, ResourceError> {
        let index = self.reserve_windows(held)?;
        if let Some(tier) = self.tiers.get(index) {
            if let Ok(window) = quinn::VarInt::from_u64(tier.window) {
                conn.set_receive_window(window);
            }
            conn.set_send_window(tier.send_window);
        }
        Ok(index)
    }
}

/// The local multiaddr of a connection on an endpoint bound to `bound`: the packet's
/// destination IP when the endpoint is bound to the unspecified address and knows it.
pub(crate) fn local_multiaddr(bound: SocketAddr, local_ip: Option<IpAddr>) -> Multiaddr {
    match local_ip {
        Some(ip) if bound.ip().is_unspecified() => {
            quic_multiaddr(SocketAddr::new(ip, bound.port()))
        }
        _ => quic_multiaddr(bound),
    }
}

/// The source IP the kernel picks for packets to `remote`, when `bound` is a wildcard
/// (connecting a UDP socket sends nothing; it only consults the routing table).
fn route_source(bound: SocketAddr, remote: SocketAddr) -> Option<IpAddr> {
    if !bound.ip().is_unspecified() {
        return None;
    }
    let any = SocketAddr::new(bound.ip(), 0);
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(remote).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// TLS alert codes that mean the certificate itself was refused (bad_certificate,
/// unsupported_certificate, certificate_revoked, certificate_expired,
/// certificate_unknown, certificate_required).
const CERT_ALERTS: [u8; 6] = [42, 43, 44, 45, 46, 116];

/// A handshake failure as a security error: a crypto (TLS alert) error, raised by us or
/// by the remote, is a security failure; anything else is an I/O failure of the handshake.
pub(crate) fn handshake_error(e: ConnectionError) -> UpgradeError {
    let crypto = |code: quinn::TransportErrorCode, text: String| {
        let code = u64::from(code);
        if !(0x100..0x200).contains(&code) {
            return None;
        }
        let alert = (code - 0x100) as u8;
        Some(if CERT_ALERTS.contains(&alert) {
            SecurityError::InvalidCertificate(text)
        } else {
            SecurityError::Handshake(text)
        })
    };
    let security = match &e {
        ConnectionError::TransportError(te) => crypto(te.code, te.to_string()),
        ConnectionError::ConnectionClosed(c) => crypto(
            c.error_code,
            format!("the remote refused the handshake: {c}"),
        ),
        _ => None,
    };
    UpgradeError::Security(security.unwrap_or_else(|| {
        let kind = match e {
            ConnectionError::TimedOut => std::io::ErrorKind::TimedOut,
            ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_) => {
                std::io::ErrorKind::ConnectionAborted
            }
            ConnectionError::Reset => std::io::ErrorKind::ConnectionReset,
            _ => std::io::ErrorKind::Other,
        };
        SecurityError::Io(std::io::Error::new(kind, e))
    }))
}

/// A failed dial: a remote that refused the connection or never answered is a dial
/// failure; a handshake failure is an upgrade failure, as on TCP.
fn dial_error(addr: &Multiaddr, e: ConnectionError) -> TransportError {
    let refused = match &e {
        ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        }
        _ => false,
    };
    if refused
        || matches!(
            e,
            ConnectionError::TimedOut | ConnectionError::VersionMismatch
        )
    {
        let kind = if refused {
            std::io::ErrorKind::ConnectionRefused
        } else {
            std::io::ErrorKind::TimedOut
        };
        return TransportError::Dial {
            addr: addr.clone(),
            source: std::io::Error::new(kind, e),
        };
    }
    TransportError::Upgrade {
        addr: addr.clone(),
        source: handshake_error(e),
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn protocols(&self) -> &[&'static str] {
        &["quic-v1"]
    }

    fn can_dial(&self, addr: &Multiaddr) -> bool {
        quic_socket_addr(addr).is_ok()
    }

    fn can_listen(&self, addr: &Multiaddr) -> bool {
        quic_socket_addr(&addr::without_peer_id(addr)).is_ok()
    }

    async fn dial(
        &self,
        addr: &Multiaddr,
        expected_peer: Option<PeerId>,
    ) -> Result<BoxCapableConn, TransportError> {
        Ok(Arc::new(self.dial_quic(addr, expected_peer).await?))
    }

    async fn listen(&self, addr: &Multiaddr) -> Result<BoxListener, TransportError> {
        Ok(Box::new(self.listen_quic(addr).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::needs_larger_window;
    use std::time::Duration;

    #[test]
    fn windows_grow_for_a_full_pipe_or_a_window_per_look_not_for_keep_alives() {
        let ms = Duration::from_millis;
        // 10 MB/s at 50 ms RTT is a 500 KB product: more than half of 240 KiB.
        assert!(needs_larger_window(100_000, ms(10), ms(50), 240 * 1024));
        // The same rate on loopback (50 µs) is not, unless a window moved in one look.
        assert!(!needs_larger_window(
            100_000,
            ms(10),
            Duration::from_micros(50),
            240 * 1024
        ));
        assert!(needs_larger_window(
            300_000,
            ms(10),
            Duration::from_micros(50),
            240 * 1024
        ));
        // A keep-alive every 15 s on a slow path: never.
        assert!(!needs_larger_window(60, ms(250), ms(300), 240 * 1024));
    }
}
