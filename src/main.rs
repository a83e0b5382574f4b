//! The `strata` command line: `listen`, `dial`, `dht`, `pubsub` and `demo`. Its output is a
//! contract for scripts: `LISTEN <multiaddr>` lines, `EVENT ...` lines, one JSON line
//! from `dial` and from each `dht` command, and `RECV` and `GOT` lines from `pubsub`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::{Parser, Subcommand, ValueEnum};
use strata::core::addr::peer_id_of;
use strata::core::identity::{generate_ed25519, keypair_from_seed};
use strata::core::{Multiaddr, PeerId};
use strata::host::prometheus_client::registry::Registry;
use strata::host::{
    perf_client, Host, HostBuilder, HostEvent, IdentifyInfo, Security, PERF_PROTOCOL,
};
use strata::metrics::MetricsServer;
use strata::swarm::{Conn, DisconnectReason, Notifiee, Swarm};
use strata::transport::WsTlsConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod dht;
mod pubsub;
mod report;
use report::{round3, DialReport, RemoteReport};

/// The echo protocol `strata listen` serves.
const ECHO_PROTOCOL: &str = "/echo/1.0.0";
const IDENTIFY_WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a libp2p-compatible networking stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SecurityArg {
    Tls,
    Noise,
}

#[derive(Subcommand)]
enum Command {
    /// Listens and serves identify, ping, /echo/1.0.0 and perf until interrupted.
    Listen {
        /// TCP address to listen on (repeatable).
        #[arg(long)]
        tcp: Vec<Multiaddr>,
        /// QUIC address to listen on (repeatable).
        #[arg(long)]
        quic: Vec<Multiaddr>,
        /// WebSocket address to listen on (repeatable), for example
        /// /ip4/127.0.0.1/tcp/0/ws, or /ip4/127.0.0.1/tcp/0/tls/ws for secure WebSocket
        /// (with --ws-cert and --ws-key).
        #[arg(long)]
        ws: Vec<Multiaddr>,
        /// PEM certificate chain that /tls/ws (or /wss) listeners present.
        #[arg(long, value_name = "FILE", requires = "ws_key")]
        ws_cert: Option<PathBuf>,
        /// PEM private key of --ws-cert.
        #[arg(long, value_name = "FILE", requires = "ws_cert")]
        ws_key: Option<PathBuf>,
        /// Derive the identity from this seed (for reproducible peer IDs).
        #[arg(long)]
        seed: Option<u64>,
        /// The security protocol to offer (both by default, TLS first).
        #[arg(long, value_enum)]
        security: Option<SecurityArg>,
        /// Print one line per listener and connection event.
        #[arg(long)]
        events: bool,
        /// Seconds a SIGINT or SIGTERM gives open streams to finish before everything
        /// is forced closed; a second signal forces it at once.
        #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_secs)]
        shutdown_timeout: f64,
        /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9090;
        /// port 0 picks a free one).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Also run a Kademlia DHT server (/ipfs/kad/1.0.0), with records under /strata/
        /// accepted and loopback addresses kept.
        #[arg(long)]
        kad: bool,
        /// A DHT peer to join through, with its /p2p/<peer id> (repeatable; with --kad).
        #[arg(long, value_name = "ADDR", requires = "kad")]
        bootstrap: Vec<Multiaddr>,
    },
    /// One DHT operation by a fresh client-mode node: one JSON line, exit 0; or
    /// `strata: error: ...` and exit 1. At most 30 s.
    Dht {
        #[command(subcommand)]
        command: dht::DhtCommand,
        /// A DHT peer to join through, with its /p2p/<peer id> (repeatable, at least one).
        #[arg(long, value_name = "ADDR", global = true)]
        bootstrap: Vec<Multiaddr>,
        /// Derive the identity from this seed.
        #[arg(long, global = true)]
        seed: Option<u64>,
    },
    /// A GossipSub node: prints `LISTEN <multiaddr>/p2p/<id>` per address, subscribes to
    /// the topic, dials the --dial peers, waits for a peer on the topic (at most
    /// --wait-ms), publishes --publish messages `<own id>:<i>` about 20 ms apart, and
    /// prints `RECV <source peer id> <data>` per message from others. With --expect M:
    /// `GOT m of M` last, exit 0 at M messages, exit 1 at the timeout.
    Pubsub {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Address to listen on (repeatable; default /ip4/127.0.0.1/tcp/0).
        #[arg(long, value_name = "ADDR")]
        listen: Vec<Multiaddr>,
        /// A peer to dial, with its /p2p/<peer id> (repeatable).
        #[arg(long, value_name = "ADDR")]
        dial: Vec<Multiaddr>,
        /// Messages to publish.
        #[arg(long, value_name = "K", default_value_t = 0)]
        publish: u64,
        /// Exit once this many messages from others have arrived.
        #[arg(long, value_name = "M")]
        expect: Option<u64>,
        /// The longest wait for a peer on the topic before publishing, in ms.
        #[arg(long, value_name = "W", default_value_t = 5000)]
        wait_ms: u64,
        /// The longest run with --expect, in seconds.
        #[arg(long, value_name = "S", default_value_t = 30.0)]
        timeout: f64,
        /// Derive the identity from this seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Connects to a peer, does what is asked, prints one JSON line.
    Dial {
        /// The peer's address, with its /p2p/<peer id>.
        addr: Multiaddr,
        /// Derive the identity from this seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The security protocol to use (both by default, TLS first).
        #[arg(long, value_enum)]
        security: Option<SecurityArg>,
        /// PEM certificates to trust when dialing a /tls/ws (or /wss) address.
        #[arg(long, value_name = "FILE")]
        ws_trust: Option<PathBuf>,
        /// Measure one ping round trip.
        #[arg(long)]
        ping: bool,
        /// Echo this many bytes over /echo/1.0.0 and verify them.
        #[arg(long, value_name = "BYTES")]
        echo: Option<usize>,
        /// Upload this many bytes with /perf/1.0.0.
        #[arg(long, value_name = "BYTES")]
        perf_up: Option<u64>,
        /// Download this many bytes with /perf/1.0.0.
        #[arg(long, value_name = "BYTES")]
        perf_down: Option<u64>,
        /// Open this many new connections one after another and report the rate.
        #[arg(long, value_name = "K")]
        conns: Option<u32>,
    },
    /// Two hosts on loopback over TCP+TLS, TCP+Noise and QUIC: connect, identify, ping,
    /// echo and a short perf run, with a readable summary.
    Demo,
}

type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Logs go to stderr, filtered by `RUST_LOG` (for example `RUST_LOG=strata_swarm=debug`);
/// without it only errors are shown. Stdout stays the scripts' contract.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let result = match Cli::parse().command {
        Command::Listen {
            tcp,
            quic,
            ws,
            ws_cert,
            ws_key,
            seed,
            security,
            events,
            shutdown_timeout,
            metrics,
            kad,
            bootstrap,
        } => match ws_server_tls(ws_cert, ws_key) {
            Ok(ws_tls) => {
                let opts = ListenOpts {
                    seed,
                    security,
                    events,
                    shutdown: Duration::from_secs_f64(shutdown_timeout),
                    metrics,
                    ws_tls,
                    kad: kad.then_some(bootstrap),
                };
                listen(tcp, quic, ws, opts).await
            }
            Err(e) => Err(e),
        },
        Command::Dial {
            addr,
            seed,
            security,
            ws_trust,
            ping,
            echo,
            perf_up,
            perf_down,
            conns,
        } => {
            let asks = Asks {
                ping,
                echo,
                perf_up,
                perf_down,
                conns,
            };
            match ws_client_tls(ws_trust) {
                Ok(ws_tls) => dial(addr, seed, security, ws_tls, asks).await,
                Err(e) => Err(e),
            }
        }
        Command::Dht {
            command,
            bootstrap,
            seed,
        } => dht::run(command, bootstrap, seed).await,
        Command::Pubsub {
            topic,
            listen,
            dial,
            publish,
            expect,
            wait_ms,
            timeout,
            seed,
        } => {
            let args = pubsub::PubsubArgs {
                topic,
                listen,
                dial,
                publish,
                expect,
                wait: Duration::from_millis(wait_ms),
                // At most a day: a deadline past the clock's range would panic.
                timeout: Duration::try_from_secs_f64(timeout.clamp(0.0, 86_400.0))
                    .unwrap_or_default(),
                seed,
            };
            match pubsub::run(args).await {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
        Command::Demo => demo().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A secure WebSocket address: `/tls/.../ws` or `/wss`.
fn is_secure_ws(addr: &Multiaddr) -> bool {
    use strata::core::Protocol;
    addr.iter()
        .any(|p| matches!(p, Protocol::Wss(_) | Protocol::Tls))
        && addr
            .iter()
            .any(|p| matches!(p, Protocol::Wss(_) | Protocol::Ws(_)))
}

/// Secure WebSocket for listeners: the certificate chain and key from PEM files.
fn ws_server_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<WsTlsConfig, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(WsTlsConfig::default());
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ws-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| format!("--ws-key {}: {e}", key.display()))?;
    Ok(WsTlsConfig::default()
        .with_certificate(chain, key)
        .map_err(|e| format!("--ws-cert/--ws-key: {e}"))?)
}

/// Secure WebSocket for dials: the roots to trust from a PEM file.
fn ws_client_tls(trust: Option<PathBuf>) -> Result<WsTlsConfig, CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let Some(trust) = trust else {
        return Ok(WsTlsConfig::default());
    };
    let roots = CertificateDer::pem_file_iter(&trust)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ws-trust {}: {e}", trust.display()))?;
    Ok(WsTlsConfig::default()
        .trusting(roots)
        .map_err(|e| format!("--ws-trust {}: {e}", trust.display()))?)
}

fn builder(seed: Option<u64>, security: Option<SecurityArg>, ws_tls: WsTlsConfig) -> HostBuilder {
    let key = seed.map_or_else(generate_ed25519, keypair_from_seed);
    let security = match security {
        None => vec![Security::Tls, Security::Noise],
        Some(SecurityArg::Tls) => vec![Security::Tls],
        Some(SecurityArg::Noise) => vec![Security::Noise],
    };
    // WebSocket is on in the CLI: `dial` takes /ws addresses, `listen --ws` serves them.
    HostBuilder::new()
        .identity(key)
        .security(security)
        .websocket(strata::transport::WsConfig {
            tls: ws_tls,
            ..strata::transport::WsConfig::default()
        })
        .enable_perf()
}

fn serve_echo(host: &Host) {
    host.set_stream_handler(ECHO_PROTOCOL, |mut stream| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let _ = stream.close_write().await;
    });
}

/// Prints one `EVENT` line per notifiee call.
struct PrintEvents;

pub(crate) fn print_line(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[async_trait]
impl Notifiee for PrintEvents {
    async fn listen(&self, _: &Swarm, addr: &Multiaddr) {
        print_line(format!("EVENT listen {addr}"));
    }
    async fn listen_close(&self, _: &Swarm, addr: &Multiaddr) {
        print_line(format!("EVENT listen_close {addr}"));
    }
    async fn connected(&self, _: &Swarm, conn: &Conn) {
        print_line(format!(
            "EVENT connected {} {} {:?}",
            conn.remote_peer(),
            conn.remote_multiaddr(),
            conn.direction()
        ));
    }
    async fn disconnected(&self, _: &Swarm, conn: &Conn, reason: &DisconnectReason) {
        print_line(format!(
            "EVENT disconnected {} {} {reason}",
            conn.remote_peer(),
            conn.remote_multiaddr()
        ));
    }
}

/// A non-negative number of seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// How `listen` runs.
struct ListenOpts {
    seed: Option<u64>,
    security: Option<SecurityArg>,
    events: bool,
    shutdown: Duration,
    metrics: Option<std::net::SocketAddr>,
    ws_tls: WsTlsConfig,
    /// Run a DHT server, joining through these peers.
    kad: Option<Vec<Multiaddr>>,
}

/// Resolves on the next SIGINT or SIGTERM.
struct Signals {
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.term.recv() => {}
        }
    }
}

async fn listen(
    tcp: Vec<Multiaddr>,
    quic: Vec<Multiaddr>,
    ws: Vec<Multiaddr>,
    opts: ListenOpts,
) -> Result<(), CliError> {
    let ListenOpts {
        seed,
        security,
        events,
        shutdown,
        metrics,
        ws_tls,
        kad,
    } = opts;
    if ws_tls.server.is_none() && ws.iter().any(is_secure_ws) {
        return Err("listening on /tls/ws (or /wss) needs --ws-cert and --ws-key".into());
    }
    // Set up before anything listens, so that no signal can slip by unhandled.
    let mut signals = Signals::new()?;
    let mut b = builder(seed, security, ws_tls);
    let (tcp, quic) = if tcp.is_empty() && quic.is_empty() && ws.is_empty() {
        (
            vec!["/ip4/0.0.0.0/tcp/0".parse()?],
            vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?],
        )
    } else {
        (tcp, quic)
    };
    for a in tcp.into_iter().chain(quic).chain(ws) {
        b = b.listen_on(a);
    }
    if events {
        b = b.notifiee(Arc::new(PrintEvents));
    }
    let mut registry = Registry::default();
    if metrics.is_some() {
        b = b.metrics(&mut registry);
    }
    let (host, outcomes) = b.build().await?;
    serve_echo(&host);
    let _dht = match &kad {
        Some(bootstrap) => match dht::serve(&host, bootstrap) {
            Ok(kad) => Some(kad),
            Err(e) => {
                host.close().await;
                return Err(e);
            }
        },
        None => None,
    };
    for o in &outcomes {
        if let Err(e) = &o.result {
            eprintln!("strata: cannot listen on {}: {e}", o.requested);
        }
    }
    if outcomes.iter().all(|o| o.result.is_err()) {
        host.close().await;
        return Err("no address to listen on".into());
    }
    for addr in host.addrs_with_peer_id() {
        print_line(format!("LISTEN {addr}"));
    }
    let server = match metrics {
        Some(addr) => match MetricsServer::bind(addr, Arc::new(registry)).await {
            Ok(server) => Some(server),
            Err(e) => {
                host.close().await;
                return Err(format!("cannot serve metrics on {addr}: {e}").into());
            }
        },
        None => None,
    };
    if let Some(s) = &server {
        print_line(format!("METRICS {}", s.url()));
    }
    signals.next().await;
    if let Some(s) = server {
        s.close().await;
    }
    // Graceful, bounded by the timeout whatever the peers do; a second signal does not
    // wait for it.
    tokio::select! {
        _ = host.shutdown(shutdown) => Ok(()),
        _ = signals.next() => {
            eprintln!("strata: second signal; exiting at once");
            std::process::exit(130);
        }
    }
}

/// What `dial` was asked to do.
struct Asks {
    ping: bool,
    echo: Option<usize>,
    perf_up: Option<u64>,
    perf_down: Option<u64>,
    conns: Option<u32>,
}

async fn dial(
    addr: Multiaddr,
    seed: Option<u64>,
    security: Option<SecurityArg>,
    ws_tls: WsTlsConfig,
    asks: Asks,
) -> Result<(), CliError> {
    let peer = peer_id_of(&addr).ok_or("the address must end with /p2p/<peer id>")?;
    if ws_tls.client.is_none() && is_secure_ws(&addr) {
        return Err("dialing /tls/ws (or /wss) needs --ws-trust".into());
    }
    let (host, _) = builder(seed, security, ws_tls).build().await?;
    let result = dial_with(&host, peer, addr, asks).await;
    host.close().await;
    print_line(result?.to_json_line());
    Ok(())
}

async fn wait_identified(
    events: &mut tokio::sync::broadcast::Receiver<HostEvent>,
    peer: PeerId,
) -> Result<Box<IdentifyInfo>, CliError> {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(HostEvent::Identified { peer: p, info }) if p == peer => return Ok(info),
                Ok(HostEvent::IdentifyFailed { peer: p, error }) if p == peer => {
                    return Err(format!("identify failed: {error}").into())
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    tokio::time::timeout(IDENTIFY_WAIT, wait)
        .await
        .map_err(|_| "the remote did not identify itself in time")?
}

async fn dial_with(
    host: &Host,
    peer: PeerId,
    addr: Multiaddr,
    asks: Asks,
) -> Result<DialReport, CliError> {
    let mut events = host.events();
    let started = Instant::now();
    host.connect(peer, std::slice::from_ref(&addr)).await?;
    let connect_ms = ms(started.elapsed());
    let remote = wait_identified(&mut events, peer).await?;
    let mut report = DialReport {
        peer_id: peer.to_string(),
        connect_ms: round3(connect_ms),
        ping_rtt_ms: None,
        echo_verified: None,
        perf_up_gbps: None,
        perf_down_gbps: None,
        conns_per_sec: None,
        remote: RemoteReport::from(&*remote),
    };
    if asks.ping {
        let rtt = host.ping(peer).await?;
        report.ping_rtt_ms = Some(round3(ms(rtt)));
    }
    if let Some(n) = asks.echo {
        report.echo_verified = Some(echo(host, peer, n).await?);
    }
    if asks.perf_up.is_some() || asks.perf_down.is_some() {
        let mut stream = host.new_stream(peer, &[PERF_PROTOCOL]).await?;
        let r = perf_client(
            &mut stream,
            asks.perf_up.unwrap_or(0),
            asks.perf_down.unwrap_or(0),
        )
        .await?;
        if asks.perf_up.is_some() {
            report.perf_up_gbps = Some(round3(gbps(r.upload_bytes, r.upload_time)));
        }
        if asks.perf_down.is_some() {
            report.perf_down_gbps = Some(round3(gbps(r.download_bytes, r.download_time)));
        }
    }
    if let Some(k) = asks.conns {
        let started = Instant::now();
        for _ in 0..k {
            let conn = host.network().dial_addr(addr.clone()).await?;
            conn.close().await;
        }
        let rate = f64::from(k) / started.elapsed().as_secs_f64();
        report.conns_per_sec = Some(round3(rate));
    }
    Ok(report)
}

async fn echo(host: &Host, peer: PeerId, bytes: usize) -> Result<bool, CliError> {
    let stream = host.new_stream(peer, &[ECHO_PROTOCOL]).await?;
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    });
    let mut back = Vec::with_capacity(bytes);
    r.read_to_end(&mut back).await?;
    let _w = writer.await??;
    Ok(back == payload)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn gbps(bytes: u64, took: Duration) -> f64 {
    let secs = took.as_secs_f64();
    if secs == 0.0 {
        return 0.0;
    }
    bytes as f64 * 8.0 / secs / 1e9
}

/// Two hosts per stack on loopback: connect, identify, ping, echo, perf.
async fn demo() -> Result<(), CliError> {
    let stacks: [(&str, Security, Multiaddr); 3] = [
        (
            "TCP + TLS 1.3 + yamux",
            Security::Tls,
            "/ip4/127.0.0.1/tcp/0".parse()?,
        ),
        (
            "TCP + Noise + yamux",
            Security::Noise,
            "/ip4/127.0.0.1/tcp/0".parse()?,
        ),
        (
            "QUIC v1",
            Security::Tls,
            "/ip4/127.0.0.1/udp/0/quic-v1".parse()?,
        ),
    ];
    for (name, security, listen) in stacks {
        let make = || {
            HostBuilder::new()
                .security(vec![security.clone()])
                .enable_perf()
                .listen_on(listen.clone())
                .build()
        };
        let (server, _) = make().await?;
        serve_echo(&server);
        let (client, _) = make().await?;
        let server_addr = server
            .addrs_with_peer_id()
            .into_iter()
            .next()
            .ok_or("server has no address")?;
        println!("== {name}");
        println!("server   {server_addr}");
        let asks = Asks {
            ping: true,
            echo: Some(1 << 20),
            perf_up: Some(16 << 20),
            perf_down: Some(16 << 20),
            conns: None,
        };
        let report = dial_with(&client, server.id(), server_addr, asks).await;
        let conn = client.network().best_conn(&server.id());
        client.close().await;
        server.close().await;
        let report = report?;
        let shown = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        if let Some(c) = conn {
            let state = c.state();
            // QUIC secures itself (TLS 1.3 inside QUIC); go-libp2p reports no security there.
            let security = if state.security.is_empty() {
                "built-in TLS 1.3"
            } else {
                &state.security
            };
            println!(
                "conn     {} -> {} via {} + {} + {}",
                c.local_multiaddr(),
                c.remote_multiaddr(),
                state.transport,
                security,
                state.muxer
            );
        }
        println!("connect  {} ms", report.connect_ms);
        // Shown as the JSON `strata dial` prints them.
        println!(
            "identify agent {} protocols {}",
            serde_json::Value::from(report.remote.agent_version.clone()),
            serde_json::Value::from(report.remote.protocols.clone())
        );
        println!("ping     {} ms", shown(report.ping_rtt_ms));
        println!(
            "echo     1048576 bytes verified={}",
            report.echo_verified.unwrap_or(false)
        );
        println!(
            "perf     up {} Gbit/s, down {} Gbit/s (16 MiB each)",
            shown(report.perf_up_gbps),
            shown(report.perf_down_gbps)
        );
    }
    Ok(())
}
