//! The host builder: compose a host from the parts you choose.

use std::sync::Arc;
use std::time::Duration;

use strata_core::identity::generate_ed25519;
use strata_core::{
    ConnectionGater, Keypair, Multiaddr, RawTransport, SharedResourceManager, Transport,
};
use strata_rcmgr::{BasicResourceManager, LimitConfig, LimitError};
use strata_swarm::{AddrFilter, Notifiee, Swarm, SwarmConfig, SwarmError};
use strata_transport::quic::QuicError;
use strata_transport::{
    MemoryTransport, QuicConfig, QuicTransport, TcpConfig, TcpTransport, WsConfig, WsTransport,
};
use strata_upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
    UpgraderConfigError, Yamux, YamuxConfig, YamuxConfigError,
};

use crate::connmgr::{ConnManager, ConnManagerConfig, ConnManagerConfigError};
use crate::host::{Host, HostSettings};
use crate::metrics::HostMetrics;

/// The agent version a host announces unless told otherwise.
pub const DEFAULT_AGENT_VERSION: &str = concat!("strata/", env!("CARGO_PKG_VERSION"));
/// The identify protocol version libp2p hosts announce.
pub const DEFAULT_PROTOCOL_VERSION: &str = "ipfs/0.1.0";

/// A security protocol to offer, in preference order.
#[derive(Clone)]
pub enum Security {
    /// `/tls/1.0.0`.
    Tls,
    /// `/noise`.
    Noise,
    /// Any other implementation.
    Custom(Arc<dyn SecureTransport>),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Security::Tls => f.write_str("Tls"),
            Security::Noise => f.write_str("Noise"),
            Security::Custom(s) => write!(f, "Custom({})", s.protocol_id()),
        }
    }
}

type RawFactory = Box<dyn FnOnce(Arc<Upgrader>) -> Arc<dyn Transport> + Send>;

/// Which resource manager the host gets.
enum RcmgrChoice {
    Limits(Box<LimitConfig>),
    Given(SharedResourceManager),
}

/// Builds a [`Host`]. Every part has a default:
///
/// | part | default | set with |
/// |---|---|---|
/// | identity | a new Ed25519 key | [`HostBuilder::identity`] |
/// | TCP transport | on, [`TcpConfig::default`] (reuseport on unless `STRATA_TCP_REUSEPORT=false`) | [`HostBuilder::tcp`], [`HostBuilder::no_tcp`] |
/// | QUIC transport | on, [`QuicConfig::default`] | [`HostBuilder::quic`], [`HostBuilder::no_quic`] |
/// | WebSocket transport (`/tcp/N/ws`) | off | [`HostBuilder::websocket`] |
/// | memory transport | off | [`HostBuilder::memory`] |
/// | other transports | none | [`HostBuilder::transport`] (capable), [`HostBuilder::raw_transport`] (upgraded for you) |
/// | security | TLS, then Noise | [`HostBuilder::security`] |
/// | muxer | yamux, [`YamuxConfig::default`] | [`HostBuilder::yamux`] |
/// | listen addresses | none | [`HostBuilder::listen_on`] |
/// | gater | none (allow all) | [`HostBuilder::gater`] |
/// | resource manager: connection, stream, memory and descriptor limits per scope, caps per source IP and subnet | [`BasicResourceManager`] with [`LimitConfig::autoscaled`] (scaled to the machine's memory and descriptor limit) | [`HostBuilder::resource_limits`], [`HostBuilder::resource_manager`] |
/// | address filter | none (only undialable shapes are dropped) | [`HostBuilder::addr_filter`] |
/// | streams per connection, dial settings, notifiee queues, peerstore bounds | [`SwarmConfig::default`] | [`HostBuilder::swarm_config`] |
/// | connection manager | off | [`HostBuilder::conn_manager`] |
/// | notifiees | none | [`HostBuilder::notifiee`] |
/// | agent version | `strata/<version>` | [`HostBuilder::agent_version`] |
/// | accept queue, handshake and progress deadlines, handshakes in flight | [`UpgraderConfig::default`] (16, 15 s, 5 s, a quarter of the descriptor limit) | [`HostBuilder::upgrader_config`] |
/// | perf service | off | [`HostBuilder::enable_perf`] |
/// | keep-alive pings | off | [`HostBuilder::ping_interval`] |
pub struct HostBuilder {
    identity: Option<Keypair>,
    tcp: Option<TcpConfig>,
    quic: Option<QuicConfig>,
    websocket: Option<WsConfig>,
    memory: bool,
    transports: Vec<Arc<dyn Transport>>,
    raw_transports: Vec<RawFactory>,
    security: Vec<Security>,
    yamux: YamuxConfig,
    listen: Vec<Multiaddr>,
    gater: Option<Arc<dyn ConnectionGater>>,
    rcmgr: RcmgrChoice,
    addr_filter: Option<AddrFilter>,
    swarm_config: SwarmConfig,
    connmgr: Option<ConnManagerConfig>,
    notifiees: Vec<Arc<dyn Notifiee>>,
    agent_version: String,
    upgrader_config: UpgraderConfig,
    enable_perf: bool,
    ping_interval: Option<Duration>,
    metrics: Option<Arc<HostMetrics>>,
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            identity: None,
            tcp: Some(TcpConfig::default()),
            quic: Some(QuicConfig::default()),
            websocket: None,
            memory: false,
            transports: Vec::new(),
            raw_transports: Vec::new(),
            security: vec![Security::Tls, Security::Noise],
            yamux: YamuxConfig::default(),
            listen: Vec::new(),
            gater: None,
            rcmgr: RcmgrChoice::Limits(Box::new(LimitConfig::autoscaled())),
            addr_filter: None,
            swarm_config: SwarmConfig::default(),
            connmgr: None,
            notifiees: Vec::new(),
            agent_version: DEFAULT_AGENT_VERSION.to_string(),
            upgrader_config: UpgraderConfig::default(),
            enable_perf: false,
            ping_interval: None,
            metrics: None,
        }
    }
}

/// A host that cannot be built as configured.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No transport is left to dial or listen with.
    #[error("the host has no transport")]
    NoTransport,
    /// No security protocol was given.
    #[error("the host has no security protocol")]
    NoSecurity,
    /// The upgrader settings contradict each other.
    #[error(transparent)]
    Upgrader(#[from] UpgraderConfigError),
    /// The yamux settings contradict each other.
    #[error(transparent)]
    Yamux(#[from] YamuxConfigError),
    /// The TLS certificate could not be made.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The QUIC transport could not be made.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// The connection manager's watermarks contradict each other.
    #[error(transparent)]
    ConnManager(#[from] ConnManagerConfigError),
    /// The swarm refused a transport (for example two for the same protocol).
    #[error(transparent)]
    Swarm(#[from] SwarmError),
    /// The resource limits contradict each other.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// [`HostBuilder::build_listening`] with no address to listen on.
    #[error("no listen address was given")]
    NoListenAddr,
}

/// One listen address asked for, and what became of it.
#[derive(Debug)]
pub struct ListenOutcome {
    /// The address given to [`HostBuilder::listen_on`].
    pub requested: Multiaddr,
    /// The address listened on (port 0 resolved), or why not.
    pub result: Result<Multiaddr, SwarmError>,
}

impl HostBuilder {
    /// A TCP-only host (no QUIC) with the identity of `seed`
    /// ([`strata_core::identity::keypair_from_seed`]) listening on `/ip4/<ip>/tcp/0`: the
    /// host that tests, benches and examples start from when each node wants its own
    /// loopback address. Finish it with [`HostBuilder::build_listening`].
    pub fn tcp_on(seed: u64, ip: &str) -> Self {
        let mut b = HostBuilder::new()
            .identity(strata_core::identity::keypair_from_seed(seed))
            .no_quic();
        match format!("/ip4/{ip}/tcp/0").parse() {
            Ok(addr) => b = b.listen_on(addr),
            Err(e) => tracing::warn!("not an IPv4 address: {ip}: {e}"),
        }
        b
    }

    /// Builds the host and returns it with the address its first listener got (its
    /// port resolved); the first listener's failure is the error.
    pub async fn build_listening(self) -> Result<(Host, Multiaddr), BuildError> {
        let (host, outcomes) = self.build().await?;
        match outcomes.into_iter().next().map(|o| o.result) {
            Some(Ok(addr)) => Ok((host, addr)),
            Some(Err(e)) => {
                host.close().await;
                Err(BuildError::Swarm(e))
            }
            None => {
                host.close().await;
                Err(BuildError::NoListenAddr)
            }
        }
    }

    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Our identity.
    pub fn identity(mut self, key: Keypair) -> Self {
        self.identity = Some(key);
        self
    }

    /// TCP with these settings.
    pub fn tcp(mut self, config: TcpConfig) -> Self {
        self.tcp = Some(config);
        self
    }

    /// No TCP transport.
    pub fn no_tcp(mut self) -> Self {
        self.tcp = None;
        self
    }

    /// QUIC with these settings.
    pub fn quic(mut self, config: QuicConfig) -> Self {
        self.quic = Some(config);
        self
    }

    /// No QUIC transport.
    pub fn no_quic(mut self) -> Self {
        self.quic = None;
        self
    }

    /// Counts the host's connections, handshakes, dials, streams and bytes into
    /// `registry` (under the `strata_` prefix), and reads its accept queues, notifiees
    /// and resource manager when the registry is encoded. Serve the registry with
    /// `prometheus_client::encoding::text::encode` (the `strata` CLI's `--metrics` does).
    pub fn metrics(mut self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.metrics = Some(HostMetrics::register(registry));
        self
    }

    /// Adds the WebSocket transport (`/ip4|ip6|dns*/…/tcp/N/ws`), upgraded like TCP:
    /// what browsers and most js-libp2p deployments dial.
    pub fn websocket(mut self, config: WsConfig) -> Self {
        self.websocket = Some(config);
        self
    }

    /// Adds the in-memory transport (`/memory/N`), upgraded like TCP.
    pub fn memory(mut self) -> Self {
        self.memory = true;
        self
    }

    /// Adds a capable transport of your own (it does its own security and muxing).
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transports.push(transport);
        self
    }

    /// Adds a raw transport of your own; the host upgrades its connections with the
    /// configured security protocols and muxer.
    pub fn raw_transport<T: RawTransport>(mut self, raw: T) -> Self {
        self.raw_transports
            .push(Box::new(move |up| Arc::new(Upgraded::new(raw, up))));
        self
    }

    /// The security protocols, in preference order.
    pub fn security(mut self, security: Vec<Security>) -> Self {
        self.security = security;
        self
    }

    /// yamux settings.
    pub fn yamux(mut self, config: YamuxConfig) -> Self {
        self.yamux = config;
        self
    }

    /// Listens on `addr` when built.
    pub fn listen_on(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Consults `gater` at every stage.
    pub fn gater(mut self, gater: Arc<dyn ConnectionGater>) -> Self {
        self.gater = Some(gater);
        self
    }

    /// The resource manager's limits (the default scales with the machine). Connection
    /// limits, caps per source IP and subnet, stream and memory limits all live here.
    pub fn resource_limits(mut self, limits: LimitConfig) -> Self {
        self.rcmgr = RcmgrChoice::Limits(Box::new(limits));
        self
    }

    /// A resource manager of your own (or [`strata_core::NullResourceManager`] for none).
    pub fn resource_manager(mut self, rcmgr: SharedResourceManager) -> Self {
        self.rcmgr = RcmgrChoice::Given(rcmgr);
        self
    }

    /// Drops addresses `filter` refuses, before they are stored from identify or dialed
    /// (go-libp2p's address filters).
    pub fn addr_filter(
        mut self,
        filter: impl Fn(&Multiaddr) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.addr_filter = Some(Arc::new(filter));
        self
    }

    /// Streams per connection, dial timeouts, backoff, notifiee queues, peerstore bounds.
    pub fn swarm_config(mut self, config: SwarmConfig) -> Self {
        self.swarm_config = config;
        self
    }

    /// Trims connections between these watermarks.
    pub fn conn_manager(mut self, config: ConnManagerConfig) -> Self {
        self.connmgr = Some(config);
        self
    }

    /// Registers a notifiee before anything starts, so it hears every event.
    pub fn notifiee(mut self, notifiee: Arc<dyn Notifiee>) -> Self {
        self.notifiees.push(notifiee);
        self
    }

    /// The agent version identify announces.
    pub fn agent_version(mut self, version: impl Into<String>) -> Self {
        self.agent_version = version.into();
        self
    }

    /// Accept-queue length, handshakes in flight, handshake timeout.
    pub fn upgrader_config(mut self, config: UpgraderConfig) -> Self {
        self.upgrader_config = config;
        self
    }

    /// Serves `/perf/1.0.0`.
    pub fn enable_perf(mut self) -> Self {
        self.enable_perf = true;
        self
    }

    /// Pings every connected peer at this interval (keep-alive and latency).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = Some(interval);
        self
    }

    /// Builds the host and listens on the addresses given, one outcome per address.
    pub async fn build(self) -> Result<(Host, Vec<ListenOutcome>), BuildError> {
        let key = self.identity.unwrap_or_else(generate_ed25519);
        let peer = key.public().to_peer_id();
        let no_raw = self.tcp.is_none()
            && self.websocket.is_none()
            && !self.memory
            && self.raw_transports.is_empty();
        if no_raw && self.quic.is_none() && self.transports.is_empty() {
            return Err(BuildError::NoTransport);
        }
        if self.security.is_empty() {
            return Err(BuildError::NoSecurity);
        }
        if let Some(cm) = &self.connmgr {
            ConnManager::new(cm.clone())?;
        }
        let rcmgr: SharedResourceManager = match self.rcmgr {
            RcmgrChoice::Limits(limits) => Arc::new(BasicResourceManager::new(*limits)?),
            RcmgrChoice::Given(r) => r,
        };
        let mut security: Vec<Arc<dyn SecureTransport>> = Vec::new();
        for s in &self.security {
            security.push(match s {
                Security::Tls => Arc::new(
                    TlsTransport::new(key.clone()).map_err(|e| BuildError::Tls(e.to_string()))?,
                ),
                Security::Noise => Arc::new(NoiseTransport::new(key.clone())),
                Security::Custom(c) => c.clone(),
            });
        }
        let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::new(self.yamux)?);
        let mut upgrader =
            Upgrader::new(peer, security, vec![muxer], self.upgrader_config.clone())?
                .with_resource_manager(rcmgr.clone());
        if let Some(g) = &self.gater {
            upgrader = upgrader.with_gater(g.clone());
        }
        let upgrader = Arc::new(upgrader);

        let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
        if let Some(tcp) = self.tcp {
            transports.push(Arc::new(Upgraded::new(
                TcpTransport::new(tcp),
                upgrader.clone(),
            )));
        }
        if let Some(ws) = self.websocket {
            transports.push(Arc::new(Upgraded::new(
                WsTransport::new(ws),
                upgrader.clone(),
            )));
        }
        let mut quic_transport = None;
        if let Some(quic) = self.quic {
            let mut q = QuicTransport::new(key.clone(), quic)?.with_resource_manager(rcmgr.clone());
            if let Some(g) = &self.gater {
                q = q.with_gater(g.clone());
            }
            let q = Arc::new(q);
            quic_transport = Some(q.clone());
            transports.push(q);
        }
        if self.memory {
            transports.push(Arc::new(Upgraded::new(
                MemoryTransport::new(),
                upgrader.clone(),
            )));
        }
        for factory in self.raw_transports {
            transports.push(factory(upgrader.clone()));
        }
        transports.extend(self.transports);

        // The host runs the swarm's maintenance as one of its supervised services.
        let swarm_config = SwarmConfig {
            run_maintenance: false,
            ..self.swarm_config.clone()
        };
        let swarm = Swarm::with_parts(peer, swarm_config, self.gater.clone(), rcmgr);
        if let Some(m) = &self.metrics {
            m.attach(&swarm);
        }
        if let Some(filter) = self.addr_filter {
            swarm.set_addr_filter(filter);
        }
        for t in transports {
            if let Err(e) = swarm.add_transport(t) {
                swarm.close().await;
                return Err(e.into());
            }
        }
        for n in self.notifiees {
            swarm.notify(n).forget();
        }
        let connmgr = match self.connmgr {
            Some(cm) => Some(Arc::new(ConnManager::new(cm)?)),
            None => None,
        };
        let settings = HostSettings {
            agent_version: self.agent_version,
            protocol_version: DEFAULT_PROTOCOL_VERSION.to_string(),
            enable_perf: self.enable_perf,
            ping_interval: self.ping_interval,
        };
        let host = Host::assemble(
            key,
            swarm,
            settings,
            connmgr,
            self.swarm_config.events_capacity,
            quic_transport,
            self.metrics,
        );
        let results = host.network().listen(self.listen.clone()).await;
        let outcomes = self
            .listen
            .into_iter()
            .zip(results)
            .map(|(requested, result)| ListenOutcome { requested, result })
            .collect();
        Ok((host, outcomes))
    }
}
