//! Attacks that get past admission, run against a listener in a child process and
//! measured by what they really cost it: its RSS and its live heap bytes (a counting
//! allocator), sampled every 20 ms beside what its resource manager reports. A
//! well-behaved peer on 127.0.0.1 connects and echoes throughout; the attackers come
//! from other loopback addresses (127.0.1.0/24 and up), so the per-address caps apply to
//! them and not to it.
//!
//! Shared by `tests/attacks.rs` (which asserts the bounds) and `benches/attacks.rs`
//! (which prints the figures). Both binaries re-run themselves as the listener: see
//! [`run_listener_if_child`].

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata::core::sys::{raise_fd_limit, rss_kib, CountingAllocator};

use futures::future::join_all;
use strata::core::addr::{quic_socket_addr, tcp_socket_addr};
use strata::core::{Multiaddr, PeerId, Stream};
use strata::host::{HostBuilder, MessageConfig, MessageHandler, Security};
use strata::pubsub::proto::{Control, IHave, RawMessage, Rpc, SubOpts};
use strata::pubsub::{Gossipsub, GossipsubConfig, MESHSUB_V12};
use strata::rcmgr::LimitConfig;
use strata::transport::{QuicConfig, QuicTransport, TcpTransport, WsConfig};
use strata::upgrader::muxer::yamux::frame::{flags, FrameType, Header};
use strata::upgrader::{NoiseTransport, SecureStream, SecureTransport, YAMUX_PROTOCOL_ID};
use strata::Host;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

// ---------------------------------------------------------------------------------------
// The counting allocator (what the listener really holds on the heap).

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------
// The listener (the child process).

/// Set in the child's environment: it is the listener.
const ROLE: &str = "STRATA_ATTACK_LISTENER";

pub const MIB: u64 = 1024 * 1024;

/// The listener's memory limits: a 512 MiB system budget (a 4 GiB machine's), 64 MiB for
/// unauthenticated connections, 64 MiB per peer, per connection and per source address,
/// 128 MiB per subnet; 512 pending handshakes at most, so that a flood of them needs
/// eviction, and 4,096 connections in all.
pub fn listener_limits() -> LimitConfig {
    let mut limits = LimitConfig::scaled_for(4 << 30, raise_fd_limit());
    // Room for the floods' connections: admission and the pending bound decide.
    limits.system.conns = 4096;
    limits.system.conns_inbound = 4096;
    limits.system.conns_outbound = 4096;
    limits.admission.memory_per_ip = 64 * MIB;
    limits.admission.memory_per_subnet = 128 * MIB;
    limits.transient.conns = 512;
    limits.transient.conns_inbound = 512;
    limits.transient.conns_outbound = 512;
    limits.transient.fds = 512;
    limits
}

pub const ECHO: &str = "/echo/1.0.0";
/// Streams taken and never read, held until the listener ends.
pub const SINK: &str = "/sink/1.0.0";
/// A message protocol whose handler never returns.
pub const STALL: &str = "/stall/1.0.0";
/// A message protocol on which the listener sends 1 MiB messages as fast as it may.
pub const SPAM: &str = "/spam/1.0.0";

struct Stalled;

#[async_trait::async_trait]
impl MessageHandler for Stalled {
    async fn received(&self, _peer: PeerId, _message: bytes::Bytes) {
        std::future::pending::<()>().await
    }
}

/// Sends 1 MiB messages to every peer that speaks [`SPAM`], as fast as the queue takes
/// them.
struct Spammer(std::sync::OnceLock<Host>);

#[async_trait::async_trait]
impl MessageHandler for Spammer {
    async fn connected(&self, peer: PeerId) {
        let Some(host) = self.0.get().cloned() else {
            return;
        };
        tokio::spawn(async move {
            // A fresh buffer each time: what waits in the queue is real memory.
            while host.send(peer, SPAM, vec![1u8; MIB as usize]).await.is_ok() {}
        });
    }
}

/// In the child (the environment says so): runs the listener until stdin closes, then
/// exits the process. Elsewhere: returns at once.
pub fn run_listener_if_child() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(listener());
    std::process::exit(0);
}

async fn listener() {
    let (host, outcomes) = HostBuilder::new()
        .resource_limits(listener_limits())
        .websocket(WsConfig::default())
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .listen_on("/ip4/127.0.0.1/tcp/0/ws".parse().unwrap())
        .build()
        .await
        .expect("the listener builds");
    host.set_stream_handler(ECHO, |mut s| async move {
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).await.is_ok() {
            let _ = s.write_all(&buf).await;
            let _ = s.close_write().await;
        }
    });
    host.set_stream_handler(SINK, |s| async move {
        let _held = s;
        std::future::pending::<()>().await
    });
    host.add_message_protocol(STALL, MessageConfig::default(), Arc::new(Stalled))
        .unwrap();
    let spammer = Arc::new(Spammer(std::sync::OnceLock::new()));
    let _ = spammer.0.set(host.clone());
    host.add_message_protocol(SPAM, MessageConfig::default(), spammer)
        .unwrap();
    // GossipSub, subscribed to the topic the pubsub attacks aim at.
    let pubsub = Gossipsub::new(host.clone(), GossipsubConfig::default());
    let _topic = pubsub.subscribe(PUBSUB_TOPIC);
    let addrs: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{}/p2p/{}", o.result.as_ref().unwrap(), host.id()))
        .collect();
    println!("READY {}", addrs.join(" "));
    let _ = std::io::stdout().flush();
    let rcmgr = host.resource_manager().clone();
    let spam_host = host.clone();
    let stats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let stat = rcmgr.stat();
            let spam = spam_host.message_stats(SPAM).map_or(0, |s| s.messages_sent);
            let line = format!(
                "STAT {} {} {} {} {} {} {} {}",
                CountingAllocator::live(),
                rss_kib(None),
                stat.system.memory,
                stat.transient.memory,
                stat.pending_handshakes,
                stat.system.conns(),
                spam,
                stat.evictions
            );
            // The parent is gone: so is the reason to run.
            let mut out = std::io::stdout();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                std::process::exit(0);
            }
        }
    });
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    stats.abort();
    host.close().await;
}

// ---------------------------------------------------------------------------------------
// The parent's view of the listener.

/// One sample of the listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Live heap bytes (the counting allocator).
    pub live: i64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// What the resource manager has reserved, system-wide.
    pub books: u64,
    /// Of which unauthenticated connections hold.
    pub transient: u64,
    /// Handshakes in flight.
    pub pending: u64,
    /// Connections (pending and established).
    pub conns: u64,
    /// Messages the listener has queued on [`SPAM`].
    pub spam_sent: u64,
    /// Pending handshakes evicted for newcomers, since the start.
    pub evictions: u64,
}

impl Sample {
    fn parse(line: &str) -> Option<Sample> {
        let mut f = line.strip_prefix("STAT ")?.split(' ');
        Some(Sample {
            live: f.next()?.parse().ok()?,
            rss_kib: f.next()?.parse().ok()?,
            books: f.next()?.parse().ok()?,
            transient: f.next()?.parse().ok()?,
            pending: f.next()?.parse().ok()?,
            conns: f.next()?.parse().ok()?,
            spam_sent: f.next()?.parse().ok()?,
            evictions: f.next()?.parse().ok()?,
        })
    }

    fn max(self, o: Sample) -> Sample {
        Sample {
            live: self.live.max(o.live),
            rss_kib: self.rss_kib.max(o.rss_kib),
            books: self.books.max(o.books),
            transient: self.transient.max(o.transient),
            pending: self.pending.max(o.pending),
            conns: self.conns.max(o.conns),
            spam_sent: self.spam_sent.max(o.spam_sent),
            evictions: self.evictions.max(o.evictions),
        }
    }
}

#[derive(Default)]
struct Monitor {
    latest: Sample,
    peak: Sample,
    count: u64,
}

/// The listener process: its addresses, and its samples as they come.
pub struct Target {
    child: Child,
    pub peer: PeerId,
    pub tcp: Multiaddr,
    pub quic: Multiaddr,
    pub ws: Multiaddr,
    monitor: Arc<Mutex<Monitor>>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    /// Starts this very binary as the listener (`args` make it run the listener entry:
    /// a test's name for a test binary, nothing for a bench).
    pub fn start(args: &[&str]) -> Target {
        let exe = std::env::current_exe().expect("this binary's path");
        let mut child = Command::new(exe)
            .args(args)
            .env(ROLE, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the listener starts");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines
                .next()
                .expect("the listener prints READY")
                .expect("a line");
            // The test harness may print its own words first on the same line.
            if let Some(at) = line.find("READY ") {
                break line[at + "READY ".len()..].to_owned();
            }
        };
        let addrs: Vec<Multiaddr> = ready.split(' ').map(|a| a.parse().unwrap()).collect();
        let find = |pred: &dyn Fn(&str) -> bool| {
            addrs
                .iter()
                .find(|a| pred(&a.to_string()))
                .cloned()
                .expect("an address of each kind")
        };
        let tcp = find(&|a| a.contains("/tcp/") && !a.contains("/ws"));
        let quic = find(&|a| a.contains("/quic-v1"));
        let ws = find(&|a| a.contains("/ws"));
        let peer = strata::core::addr::peer_id_of(&tcp).expect("a /p2p suffix");
        let monitor = Arc::new(Mutex::new(Monitor::default()));
        let m = monitor.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(s) = Sample::parse(&line) {
                    let mut m = m.lock().unwrap();
                    m.latest = s;
                    m.peak = m.peak.max(s);
                    m.count += 1;
                }
            }
        });
        Target {
            child,
            peer,
            tcp,
            quic,
            ws,
            monitor,
        }
    }

    /// The newest sample, once one has come after this call (samples come every 20 ms).
    pub async fn sample(&self) -> Sample {
        let seen = self.monitor.lock().unwrap().count;
        loop {
            {
                let m = self.monitor.lock().unwrap();
                if m.count > seen {
                    return m.latest;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The listener at rest: a fresh sample, and the peaks start from it.
    pub async fn rest(&self) -> Sample {
        let s = self.sample().await;
        self.monitor.lock().unwrap().peak = s;
        s
    }

    /// The highest of each figure since [`Target::rest`].
    pub async fn peak(&self) -> Sample {
        self.sample().await;
        self.monitor.lock().unwrap().peak
    }

    pub fn tcp_socket(&self) -> SocketAddr {
        tcp_socket_addr(&strata::core::addr::without_peer_id(&self.tcp)).unwrap()
    }

    pub fn quic_socket(&self) -> SocketAddr {
        quic_socket_addr(&self.quic).unwrap()
    }

    pub fn ws_socket(&self) -> SocketAddr {
        let text = self.ws.to_string();
        let tcp: Multiaddr = text[..text.find("/ws").unwrap()].parse().unwrap();
        tcp_socket_addr(&tcp).unwrap()
    }
}

/// What one attack cost, for the report.
#[derive(Debug, Clone)]
pub struct Cost {
    pub attack: String,
    pub rest: Sample,
    pub peak: Sample,
    /// The well-behaved peer's slowest connect-and-echo during the attack.
    pub honest_worst: Duration,
    pub honest_probes: usize,
}

impl Cost {
    /// Growth of the listener's RSS over rest, bytes.
    pub fn rss_growth(&self) -> u64 {
        self.peak.rss_kib.saturating_sub(self.rest.rss_kib) * 1024
    }

    /// Growth of the listener's live heap over rest, bytes.
    pub fn live_growth(&self) -> u64 {
        (self.peak.live - self.rest.live).max(0) as u64
    }

    /// Growth of the books over rest, bytes.
    pub fn books_growth(&self) -> u64 {
        self.peak.books.saturating_sub(self.rest.books)
    }

    pub fn report(&self) -> String {
        format!(
            "{:<50} RSS rest {:>5.1} MiB, peak {:>6.1} MiB (+{:>5.1}); heap +{:>5.1} MiB; books peak {:>6.1} MiB; honest worst {:>6.1} ms ({} probes)",
            self.attack,
            self.rest.rss_kib as f64 / 1024.0,
            self.peak.rss_kib as f64 / 1024.0,
            self.rss_growth() as f64 / MIB as f64,
            self.live_growth() as f64 / MIB as f64,
            self.peak.books as f64 / MIB as f64,
            self.honest_worst.as_secs_f64() * 1e3,
            self.honest_probes,
        )
    }
}

// ---------------------------------------------------------------------------------------
// The well-behaved peer.

/// A TCP+Noise host on 127.0.0.1 that connects to the target afresh and echoes.
struct Honest {
    host: Host,
    target: PeerId,
    addr: Multiaddr,
}

impl Honest {
    async fn new(peer: PeerId, addr: Multiaddr) -> Honest {
        let (host, _) = HostBuilder::new()
            .no_quic()
            .security(vec![Security::Noise])
            .build()
            .await
            .unwrap();
        Honest {
            host,
            target: peer,
            addr,
        }
    }

    /// A new connection and one echo: how long it took (an error is a failure).
    async fn probe(&self) -> Result<Duration, String> {
        self.host.network().close_peer(&self.target).await;
        self.host.network().clear_backoff(&self.target);
        let started = Instant::now();
        let run = async {
            self.host
                .connect(self.target, std::slice::from_ref(&self.addr))
                .await
                .map_err(|e| e.to_string())?;
            let mut s = self
                .host
                .new_stream(self.target, &[ECHO])
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(b"still here")
                .await
                .map_err(|e| e.to_string())?;
            s.close_write().await.map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.map_err(|e| e.to_string())?;
            if back != b"still here" {
                return Err("echo corrupted".to_owned());
            }
            Ok::<(), String>(())
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .map_err(|_| "no echo within 5 s".to_owned())??;
        Ok(started.elapsed())
    }
}

/// The well-behaved peer, probing every 200 ms on a thread and a runtime of its own (so
/// that attackers in this process, busy on theirs, do not slow it down; what it measures
/// is the listener).
pub struct Prober {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, usize)>,
}

impl Prober {
    /// Starts probing `target`; returns once the first probe has succeeded (it panics if
    /// the peer cannot connect before any attack).
    pub async fn start(target: &Target) -> Prober {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (peer, addr) = (
            target.peer,
            strata::core::addr::without_peer_id(&target.tcp),
        );
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let honest = Honest::new(peer, addr).await;
                let first = honest.probe().await;
                let _ = ready_tx.send(first.clone());
                let mut worst = first.unwrap_or(Duration::from_secs(5));
                let mut probes = 1;
                while !stopped.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let took = match honest.probe().await {
                        Ok(d) => d,
                        Err(e) => {
                            eprintln!("honest probe failed: {e}");
                            Duration::from_secs(5)
                        }
                    };
                    probes += 1;
                    worst = worst.max(took);
                }
                honest.host.close().await;
                (worst, probes)
            })
        });
        ready_rx
            .await
            .expect("the prober starts")
            .expect("the honest peer connects before the attack");
        Prober { stop, thread }
    }

    /// Stops probing; returns the slowest probe (a failed one counts as 5 s) and how many
    /// ran.
    pub async fn finish(self) -> (Duration, usize) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("the prober ends"))
            .await
            .expect("joined")
    }
}

/// Runs `attack` against `target` from rest, with the honest peer probing; returns its
/// cost and its output.
pub async fn measure<F: std::future::Future>(
    name: &str,
    target: &Target,
    attack: F,
) -> (Cost, F::Output) {
    let prober = Prober::start(target).await;
    let rest = target.rest().await;
    let out = attack.await;
    let peak = target.peak().await;
    let (honest_worst, honest_probes) = prober.finish().await;
    let cost = Cost {
        attack: name.to_owned(),
        rest,
        peak,
        honest_worst,
        honest_probes,
    };
    println!("{}", cost.report());
    (cost, out)
}

/// `127.0.<subnet>.<host>`.
pub fn loopback(subnet: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, subnet, host))
}

/// A TCP connection from `source` to `target`.
pub async fn tcp_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// A client host (TCP, Noise) whose connections leave from `source`.
pub async fn client_from(source: IpAddr, seed: Option<u64>) -> Host {
    let mut b = HostBuilder::new()
        .no_quic()
        .security(vec![Security::Noise])
        .listen_on(format!("/ip4/{source}/tcp/0").parse().unwrap());
    if let Some(seed) = seed {
        b = b.identity(strata::identity::keypair_from_seed(seed));
    }
    b.build().await.unwrap().0
}

// ---------------------------------------------------------------------------------------
// The attacks. Each returns when it is done; its cost is sampled meanwhile.

/// A Noise-secured connection from `source` on which we speak yamux raw.
async fn raw_yamux(target: &Target, source: IpAddr) -> Box<dyn SecureStream> {
    let tcp = TcpTransport::default();
    let _listener = tcp
        .listen_tcp(&format!("/ip4/{source}/tcp/0").parse().unwrap())
        .await
        .unwrap();
    let mut raw = tcp
        .dial_tcp(&strata::core::addr::without_peer_id(&target.tcp))
        .await
        .unwrap();
    strata::upgrader::multistream::dialer_select(&mut raw, &["/noise"])
        .await
        .unwrap();
    let noise = NoiseTransport::new(strata::identity::generate_ed25519());
    let secured = noise
        .secure_outbound(
            Box::new(raw),
            Some(target.peer),
            &[YAMUX_PROTOCOL_ID.to_owned()],
        )
        .await
        .unwrap();
    assert_eq!(
        secured.early_muxer.as_deref(),
        Some(YAMUX_PROTOCOL_ID),
        "yamux picked inside the Noise handshake"
    );
    secured.io
}

fn header(typ: FrameType, fl: u16, stream: u32) -> [u8; 12] {
    Header::new(typ, fl, stream, 0).encode()
}

/// Writes `frames` frames made by `frame(i)` in batches, never reading, for at most
/// `time`; returns how many were taken by the socket.
async fn write_frames(
    io: &mut Box<dyn SecureStream>,
    frames: u64,
    time: Duration,
    frame: impl Fn(u64, &mut Vec<u8>),
) -> u64 {
    let deadline = tokio::time::Instant::now() + time;
    let mut sent = 0;
    let mut batch = Vec::with_capacity(96 * 1024);
    while sent < frames {
        batch.clear();
        let n = (frames - sent).min(4096);
        for i in sent..sent + n {
            frame(i, &mut batch);
        }
        match tokio::time::timeout_at(deadline, io.write_all(&batch)).await {
            Ok(Ok(())) => sent += n,
            _ => break,
        }
    }
    sent
}

/// A peer that never reads sends SYNs for `frames` new streams, past its stream limit
/// (512): at most `time`. Returns the SYNs the listener's socket took.
pub async fn syn_flood(target: &Target, frames: u64, time: Duration) -> u64 {
    let mut io = raw_yamux(target, loopback(1, 1)).await;
    write_frames(&mut io, frames, time, |i, out| {
        out.extend_from_slice(&header(
            FrameType::WindowUpdate,
            flags::SYN,
            2 * i as u32 + 1,
        ))
    })
    .await
}

/// A peer that never reads opens `streams` streams and resets each at once; then it
/// waits (reading at last) until the listener has answered a ping sent behind them, so
/// that the measurement covers the listener's work on all of them.
pub async fn open_and_reset(target: &Target, streams: u64, time: Duration) -> u64 {
    let mut io = raw_yamux(target, loopback(1, 2)).await;
    let sent = write_frames(&mut io, streams, time, |i, out| {
        let id = 2 * i as u32 + 1;
        out.extend_from_slice(&header(FrameType::WindowUpdate, flags::SYN, id));
        out.extend_from_slice(&header(FrameType::WindowUpdate, flags::RST, id));
    })
    .await;
    fence(&mut io, time).await;
    sent
}

/// Sends a ping and reads (discarding everything else) until its answer: every frame
/// sent before it has then been read by the listener.
async fn fence(io: &mut Box<dyn SecureStream>, time: Duration) {
    const NONCE: u32 = 0x5eed;
    let ping = Header::new(FrameType::Ping, flags::SYN, 0, NONCE).encode();
    let run = async {
        io.write_all(&ping).await.ok()?;
        let mut head = [0u8; 12];
        loop {
            io.read_exact(&mut head).await.ok()?;
            let h = Header::decode(&head).ok()?;
            if h.typ == FrameType::Ping && h.has(flags::ACK) && h.length == NONCE {
                return Some(());
            }
            if h.typ == FrameType::Data && h.length > 0 {
                let mut body = vec![0u8; h.length as usize];
                io.read_exact(&mut body).await.ok()?;
            }
        }
    };
    let _ = tokio::time::timeout(time, run).await;
}

/// Opens `streams` streams to [`SINK`] on `host`'s connection to the target and writes
/// `bytes` on each (the sink never reads), for at most `time`: a write still waiting
/// then is waiting for a window the sink will never give back, so its window is full.
/// Returns the streams that took everything or filled their window, for the caller to
/// hold (dropping one resets it, which frees what the listener buffered); streams the
/// listener refused or reset are gone.
async fn fill_sinks(
    host: &Host,
    target: &Target,
    streams: usize,
    bytes: usize,
    time: Duration,
) -> Vec<Stream> {
    let deadline = tokio::time::Instant::now() + time;
    let writes = (0..streams).map(|_| async {
        let mut s = tokio::time::timeout_at(deadline, host.new_stream(target.peer, &[SINK]))
            .await
            .ok()?
            .ok()?;
        match tokio::time::timeout_at(deadline, s.write_all(&vec![9u8; bytes])).await {
            Ok(Ok(())) | Err(_) => Some(s),
            Ok(Err(_)) => None,
        }
    });
    join_all(writes).await.into_iter().flatten().collect()
}

/// Connects `hosts` to the target, at most `batch` handshakes at a time (the per-address
/// handshake cap is 8).
async fn connect_all(hosts: &[Host], target: &Target, batch: usize) -> usize {
    let addr = strata::core::addr::without_peer_id(&target.tcp);
    let mut ok = 0;
    for group in hosts.chunks(batch) {
        let connects = group.iter().map(|h| {
            let addr = addr.clone();
            async move { h.connect(target.peer, &[addr]).await.is_ok() }
        });
        ok += join_all(connects).await.into_iter().filter(|c| *c).count();
    }
    ok
}

/// `peers` fresh identities from `sources` each open `streams` streams to the sink and
/// fill their windows (256 KiB each), giving up on a write after `time`. Returns the
/// hosts and the streams, for the caller to hold.
pub async fn fill_windows(
    target: &Target,
    sources: &[IpAddr],
    peers: usize,
    streams: usize,
    time: Duration,
) -> (Vec<Host>, Vec<Stream>) {
    let mut hosts = Vec::new();
    for i in 0..peers {
        hosts.push(client_from(sources[i % sources.len()], None).await);
    }
    let connected = connect_all(&hosts, target, 8).await;
    assert!(connected > 0, "no attacker connected");
    // Each attacker is seen from its own address (its caps are the ones that apply).
    for (i, h) in hosts.iter().enumerate() {
        for c in h.network().conns() {
            let local = c.local_multiaddr().to_string();
            let want = format!("/ip4/{}/", sources[i % sources.len()]);
            assert!(local.starts_with(&want), "attacker {i} left from {local}");
        }
    }
    // Fifty peers at a time: the memory they pile up is the same, the listener's CPU
    // is shared with the well-behaved peer rather than swamped (debug builds on two
    // cores).
    let mut held = Vec::new();
    for group in hosts.chunks(50) {
        let fills = group
            .iter()
            .map(|h| fill_sinks(h, target, streams, 256 * 1024, time));
        held.extend(join_all(fills).await.into_iter().flatten());
    }
    (hosts, held)
}

/// A message-protocol peer whose handler the listener has stalled: it sends 1 MiB
/// messages as fast as it may, for `time`. Returns how many were queued.
pub async fn stalled_handler(target: &Target, time: Duration) -> u64 {
    let host = client_from(loopback(2, 1), None).await;
    host.add_message_protocol(STALL, MessageConfig::default(), Arc::new(Stalled))
        .unwrap();
    connect_all(std::slice::from_ref(&host), target, 1).await;
    let deadline = tokio::time::Instant::now() + time;
    // The stream comes up once identify has told both sides who speaks what.
    let mut sent = 0;
    let message = bytes::Bytes::from(vec![2u8; MIB as usize]);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, host.send(target.peer, STALL, message.clone()))
            .await
        {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break,
        }
    }
    host.close().await;
    sent
}

/// A message-protocol peer that never reads what the listener sends it ([`SPAM`]: the
/// listener sends as fast as it may), for `time`.
pub async fn never_reads_messages(target: &Target, time: Duration) {
    let host = client_from(loopback(2, 2), None).await;
    // Its handler never returns: once its queue is full it reads nothing more.
    host.add_message_protocol(SPAM, MessageConfig::default(), Arc::new(Stalled))
        .unwrap();
    connect_all(std::slice::from_ref(&host), target, 1).await;
    tokio::time::sleep(time).await;
    host.close().await;
}

/// The topic the listener's GossipSub is subscribed to.
pub const PUBSUB_TOPIC: &str = "attack";

/// A pubsub stream from a fresh host on `source` to the listener.
async fn pubsub_stream(target: &Target, source: IpAddr) -> (Host, Stream) {
    let host = client_from(source, None).await;
    connect_all(std::slice::from_ref(&host), target, 1).await;
    let stream = host
        .new_stream(target.peer, &[MESHSUB_V12])
        .await
        .expect("a pubsub stream");
    (host, stream)
}

/// Writes `rpc` again and again to the listener from each of `sources` for `time`.
async fn pubsub_flood(
    target: &Target,
    sources: &[IpAddr],
    time: Duration,
    rpc: impl Fn(u64) -> Rpc,
) {
    let mut attackers = Vec::new();
    for &source in sources {
        attackers.push(pubsub_stream(target, source).await);
    }
    let deadline = tokio::time::Instant::now() + time;
    let rpc = &rpc;
    join_all(
        attackers
            .iter_mut()
            .enumerate()
            .map(|(a, (_, stream))| async move {
                let mut n = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let frame = rpc((a as u64) << 32 | n).encode();
                    if stream.write_all(&frame).await.is_err() {
                        break;
                    }
                    n += 1;
                }
            }),
    )
    .await;
    for (host, _) in attackers {
        host.close().await;
    }
}

/// Each of `sources` subscribes to ever new topics (1,000 per RPC, names of 64 bytes)
/// and announces IHAVEs of 5,000 IDs, for `time`.
pub async fn pubsub_subscriptions_and_ihave(target: &Target, sources: &[IpAddr], time: Duration) {
    pubsub_flood(target, sources, time, |n| Rpc {
        subscriptions: (0..1000u64)
            .map(|i| SubOpts {
                subscribe: true,
                topic: format!("{n:016x}/{i:08x}/{}", "t".repeat(38)),
            })
            .collect(),
        control: Some(Control {
            ihave: vec![IHave {
                topic: PUBSUB_TOPIC.into(),
                ids: (0..5000u64)
                    .map(|i| bytes::Bytes::from((n << 16 | i).to_be_bytes().to_vec()))
                    .collect(),
            }],
            ..Control::default()
        }),
        ..Rpc::default()
    })
    .await;
}

/// Each of `sources` sends RPCs of sixteen 60 KiB messages with bad signatures (each
/// must be read, decoded and checked), for `time`.
pub async fn pubsub_forged_messages(target: &Target, sources: &[IpAddr], time: Duration) {
    let data = bytes::Bytes::from(vec![0x5a; 60 * 1024]);
    let from = bytes::Bytes::from(
        strata::identity::generate_ed25519()
            .public()
            .to_peer_id()
            .to_bytes(),
    );
    pubsub_flood(target, sources, time, move |n| Rpc {
        publish: (0..16u64)
            .map(|i| RawMessage {
                from: Some(from.clone()),
                data: Some(data.clone()),
                seqno: Some(bytes::Bytes::from((n << 8 | i).to_be_bytes().to_vec())),
                topic: PUBSUB_TOPIC.into(),
                signature: Some(bytes::Bytes::from(vec![7u8; 64])),
                key: None,
            })
            .collect(),
        ..Rpc::default()
    })
    .await;
}

/// The first datagram of a QUIC connection attempt (a real Initial with a ClientHello)
/// for each of `count` attempts, captured by dialing a UDP socket that never answers.
async fn capture_initials(count: usize) -> Vec<Vec<u8>> {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to: Multiaddr = format!(
        "/ip4/127.0.0.1/udp/{}/quic-v1",
        capture.local_addr().unwrap().port()
    )
    .parse()
    .unwrap();
    let quic = QuicTransport::new(
        strata::identity::generate_ed25519(),
        QuicConfig::default().handshake_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let dials: Vec<_> = (0..count)
        .map(|_| {
            let (quic, to) = (quic.clone(), to.clone());
            tokio::spawn(async move {
                let _ = quic.dial_quic(&to, None).await;
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    while initials.len() < count {
        let (n, _) = capture.recv_from(&mut buf).await.unwrap();
        // A long header: flags, version (4), DCID length, DCID.
        let Some(&dcid_len) = buf.get(5) else {
            continue;
        };
        let Some(dcid) = buf.get(6..6 + dcid_len as usize) else {
            continue;
        };
        if buf[0] & 0x80 != 0 && seen.insert(dcid.to_vec()) {
            initials.push(buf[..n].to_vec());
        }
    }
    for d in dials {
        d.abort();
    }
    quic.close().await;
    initials
}

/// `count` QUIC handshakes from `sources` that send their Initial (a real ClientHello)
/// and then go silent, held for `hold`.
pub async fn silent_quic_handshakes(
    target: &Target,
    sources: &[IpAddr],
    count: usize,
    hold: Duration,
) {
    let initials = capture_initials(count).await;
    let mut sockets = Vec::new();
    for (i, initial) in initials.iter().enumerate() {
        let s = tokio::net::UdpSocket::bind(SocketAddr::new(sources[i % sources.len()], 0))
            .await
            .unwrap();
        let _ = s.send_to(initial, target.quic_socket()).await;
        sockets.push(s);
    }
    tokio::time::sleep(hold).await;
    drop(sockets);
}

/// `count` WebSocket connections from `sources` that complete the HTTP upgrade, announce
/// a 1 MiB binary frame and send it a byte every 200 ms, until the listener has closed
/// them all or `hold` has passed. Returns how many it closed, and when the last went
/// (from when all were open).
pub async fn slow_ws_frames(
    target: &Target,
    sources: &[IpAddr],
    count: usize,
    hold: Duration,
) -> (usize, Duration) {
    let to = target.ws_socket();
    let opens = (0..count).map(|i| async move {
        let mut s = tcp_from(sources[i % sources.len()], to).await.ok()?;
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        while !response.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            response.push(byte[0]);
        }
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&MIB.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&frame).await.ok()?;
        Some(s)
    });
    let conns: Vec<TcpStream> = join_all(opens).await.into_iter().flatten().collect();
    let refused = count - conns.len();
    let (closed, took) = until_closed(&conns, hold, |c| {
        let _ = c.try_write(&[7]);
    })
    .await;
    (refused + closed, took)
}

/// Polls `conns` every 200 ms (doing `tick` to each open one) until the listener has
/// closed them all or `hold` has passed; returns how many it closed and how long that
/// took.
pub async fn until_closed(
    conns: &[TcpStream],
    hold: Duration,
    tick: impl Fn(&TcpStream),
) -> (usize, Duration) {
    let started = Instant::now();
    let mut open: Vec<&TcpStream> = conns.iter().collect();
    while !open.is_empty() && started.elapsed() < hold {
        tokio::time::sleep(Duration::from_millis(200)).await;
        open.retain(|c| !is_closed(c));
        for c in &open {
            tick(c);
        }
    }
    (conns.len() - open.len(), started.elapsed())
}

/// Whether the other side has closed `s` (a read sees EOF or a reset).
fn is_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `count` TCP connections from `sources` that finish multistream-select (the Noise
/// proposal) and stall inside Noise's first message, until the listener has closed them
/// all or `hold` has passed. Returns how many it closed (refusals included) and when the
/// last went (from when all were open).
pub async fn stall_inside_noise(
    target: &Target,
    sources: &[IpAddr],
    count: usize,
    hold: Duration,
) -> (usize, Duration) {
    let to = target.tcp_socket();
    let mut hello = Vec::new();
    for m in ["/multistream/1.0.0\n", "/noise\n"] {
        hello.push(m.len() as u8);
        hello.extend_from_slice(m.as_bytes());
    }
    // A Noise frame of 32 bytes announced, 5 sent.
    hello.extend_from_slice(&[0, 32, 1, 2, 3, 4, 5]);
    let mut conns = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(200) {
        let opens = batch.iter().map(|&i| {
            let hello = hello.clone();
            async move {
                let mut s = tcp_from(sources[i % sources.len()], to).await.ok()?;
                s.write_all(&hello).await.ok()?;
                Some(s)
            }
        });
        conns.extend(join_all(opens).await.into_iter().flatten());
    }
    let refused = count - conns.len();
    let (closed, took) = until_closed(&conns, hold, |_| {}).await;
    (refused + closed, took)
}

/// `streams` streams per connection from `peers` hosts, each opened to identify push and
/// sent only a 3-byte length prefix (65,535), held for `hold`.
pub async fn identify_push_prefixes(
    target: &Target,
    peers: usize,
    streams: usize,
    hold: Duration,
) -> Vec<Host> {
    let mut hosts = Vec::new();
    for i in 0..peers {
        hosts.push(client_from(loopback(6, 1 + i as u8), None).await);
    }
    connect_all(&hosts, target, 8).await;
    let opens = hosts.iter().flat_map(|h| {
        (0..streams).map(move |_| async move {
            let conn = h.network().best_conn(&target.peer)?;
            let mut s = conn.new_stream().await.ok()?;
            strata::upgrader::multistream::dialer_select(
                &mut s,
                &[strata::host::IDENTIFY_PUSH_PROTOCOL],
            )
            .await
            .ok()?;
            s.write_all(&[0xff, 0xff, 0x03]).await.ok()?;
            Some(s)
        })
    });
    let held: Vec<Option<Stream>> = join_all(opens).await;
    tokio::time::sleep(hold).await;
    drop(held);
    hosts
}
