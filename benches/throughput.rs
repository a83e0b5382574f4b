//! Throughput and handshake rate on loopback, side by side in one run:
//! raw TLS 1.3 over TCP (tokio-rustls, no muxer) against Strata TCP+TLS+yamux; raw Noise
//! transport frames over TCP (snow, no muxer) against Strata TCP+Noise+yamux; raw quinn
//! (one bidirectional stream, no libp2p, Strata's windows) against Strata QUIC (one
//! stream); then upgrades per second.
//!
//! Run: `cargo bench --bench throughput`. STRATA_BENCH_MIB sets the MiB per run;
//! STRATA_BENCH_ROUNDS the rounds of each measure (3), each compared with its baseline
//! measured right before it (the figure is the median of those ratios);
//! STRATA_BENCH_SPLIT sets yamux's split send size;
//! STRATA_BENCH_PROFILE=raw|raw-noise|tls|noise|streams|upgrades-tls|upgrades-noise runs
//! one measure once (for perf).

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::core::identity::generate_ed25519;
use strata::core::{Keypair, Multiaddr, RawListener, Transport};
use strata::transport::{QuicConfig, QuicTransport, TcpConfig, TcpTransport};
use strata::upgrader::muxer::yamux::Yamux;
use strata::upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
/// Rounds of each measure (STRATA_BENCH_ROUNDS, 3 by default): more rounds
/// give a steadier median on a noisy machine.
fn rounds() -> usize {
    std::env::var("STRATA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn mib() -> usize {
    std::env::var("STRATA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

/// Writes `total` bytes into `w` while `r` drains them; returns MiB/s measured from the
/// first write until the reader has seen the last byte.
async fn pump<W, R>(mut w: W, mut r: R, total: usize) -> f64
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut seen = 0;
        while seen < total {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "early EOF");
            seen += n;
        }
        r
    });
    let started = Instant::now();
    let chunk = vec![0x5au8; CHUNK];
    let mut sent = 0;
    while sent < total {
        w.write_all(&chunk).await.unwrap();
        sent += CHUNK;
    }
    w.flush().await.unwrap();
    let _r = reader.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    drop(w);
    total as f64 / (1024.0 * 1024.0) / secs
}

async fn raw_tls(total: usize) -> f64 {
    let server_key = generate_ed25519();
    let client_key = generate_ed25519();
    let alpn = vec![b"libp2p".to_vec()];
    let server_cfg = strata::core::tls::server_config(&server_key, alpn.clone()).unwrap();
    let client_cfg = strata::core::tls::client_config(&client_key, alpn).unwrap();
    let tcp = TcpTransport::new(TcpConfig::default().reuseport(false));
    let mut listener = tcp.listen_tcp(&loopback()).await.unwrap();
    let addr = listener.multiaddr().clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let raw = listener.accept().await.unwrap();
        acceptor.accept(raw).await.unwrap()
    });
    let raw = tcp.dial_tcp(&addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
    let client = connector.connect(name, raw).await.unwrap();
    let server = server.await.unwrap();
    pump(client, server, total).await
}

/// Noise's transport framing: a 2-byte big-endian length, then at most 65,535 bytes of
/// ciphertext (16 of them the tag).
const NOISE_MAX_FRAME: usize = 65535;
const NOISE_TAG: usize = 16;

/// Raw Noise over TCP: an XX handshake with the same suite as libp2p's (snow, 25519,
/// ChaChaPoly, SHA-256), then transport frames, no muxer and no libp2p payload. The
/// sender seals as many full frames as fit in one chunk and writes them at once; the
/// receiver opens them from a large read buffer: the cheapest the cipher allows.
async fn raw_noise(total: usize) -> f64 {
    use tokio::net::{TcpListener, TcpStream};
    let params: snow::params::NoiseParams = "Noise_XX_25519_ChaChaPoly_SHA256".parse().unwrap();
    let keypair = || {
        snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap()
    };
    let (ik, rk) = (keypair(), keypair());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    async fn send_msg(s: &mut TcpStream, hs: &mut snow::HandshakeState) {
        let mut buf = vec![0u8; NOISE_MAX_FRAME];
        let n = hs.write_message(&[], &mut buf).unwrap();
        s.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        s.write_all(&buf[..n]).await.unwrap();
    }
    async fn recv_msg(s: &mut TcpStream, hs: &mut snow::HandshakeState) {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).await.unwrap();
        hs.read_message(&msg, &mut vec![0u8; NOISE_MAX_FRAME])
            .unwrap();
    }

    let responder = {
        let params = params.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut hs = snow::Builder::new(params)
                .local_private_key(&rk.private)
                .unwrap()
                .build_responder()
                .unwrap();
            recv_msg(&mut s, &mut hs).await;
            send_msg(&mut s, &mut hs).await;
            recv_msg(&mut s, &mut hs).await;
            (s, hs.into_transport_mode().unwrap())
        })
    };
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut hs = snow::Builder::new(params)
        .local_private_key(&ik.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    send_msg(&mut s, &mut hs).await;
    recv_msg(&mut s, &mut hs).await;
    send_msg(&mut s, &mut hs).await;
    let mut sender = hs.into_transport_mode().unwrap();
    let (mut r, mut receiver) = responder.await.unwrap();

    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4 * CHUNK];
        let mut plain = vec![0u8; NOISE_MAX_FRAME];
        let (mut start, mut end, mut seen) = (0, 0, 0);
        while seen < total {
            // Open every whole frame in the buffer, then read more.
            while end - start >= 2 {
                let len = u16::from_be_bytes([buf[start], buf[start + 1]]) as usize;
                if end - start < 2 + len {
                    break;
                }
                let frame = &buf[start + 2..start + 2 + len];
                seen += receiver.read_message(frame, &mut plain).unwrap();
                start += 2 + len;
            }
            if seen == total {
                break;
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            let n = r.read(&mut buf[end..]).await.unwrap();
            assert!(n > 0, "early EOF");
            end += n;
        }
    });
    let started = Instant::now();
    let plain = vec![0x5au8; NOISE_MAX_FRAME - NOISE_TAG];
    let frames_per_chunk = CHUNK / NOISE_MAX_FRAME + 1;
    let mut out = vec![0u8; frames_per_chunk * (2 + NOISE_MAX_FRAME)];
    let mut sent = 0;
    while sent < total {
        let mut at = 0;
        for _ in 0..frames_per_chunk {
            let take = plain.len().min(total - sent);
            if take == 0 {
                break;
            }
            let n = sender
                .write_message(&plain[..take], &mut out[at + 2..])
                .unwrap();
            out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
            at += 2 + n;
            sent += take;
        }
        s.write_all(&out[..at]).await.unwrap();
    }
    reader.await.unwrap();
    total as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64()
}

fn strata_transport(key: &Keypair, noise: bool) -> Upgraded<TcpTransport> {
    strata_transport_with(key, noise, strata::upgrader::YamuxConfig::default())
}

fn strata_transport_with(
    key: &Keypair,
    noise: bool,
    mut yamux: strata::upgrader::YamuxConfig,
) -> Upgraded<TcpTransport> {
    let security: Arc<dyn SecureTransport> = if noise {
        Arc::new(NoiseTransport::new(key.clone()))
    } else {
        Arc::new(TlsTransport::new(key.clone()).unwrap())
    };
    // STRATA_BENCH_SPLIT overrides yamux's split send size (bytes), to compare frame sizes.
    if let Some(split) = std::env::var("STRATA_BENCH_SPLIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        yamux.split_send_size = split;
    }
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::new(yamux).unwrap());
    let up = Upgrader::new(
        key.public().to_peer_id(),
        vec![security],
        vec![muxer],
        UpgraderConfig::default(),
    )
    .unwrap();
    Upgraded::new(
        TcpTransport::new(TcpConfig::default().reuseport(false)),
        Arc::new(up),
    )
}

async fn strata_stream(noise: bool, total: usize) -> f64 {
    let a = strata_transport(&generate_ed25519(), noise);
    let b = strata_transport(&generate_ed25519(), noise);
    let mut listener = b.listen(&loopback()).await.unwrap();
    let addr = listener.multiaddr().clone();
    let (client, server) = tokio::join!(a.dial(&addr, None), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    let out = client.open_stream().await.unwrap();
    let (inb, out) = tokio::join!(server.accept_stream(), async {
        let mut out = out;
        out.write_all(b"x").await.unwrap(); // yamux announces a stream with its first frame
        out
    });
    let mut inb = inb.unwrap();
    inb.read_exact(&mut [0u8; 1]).await.unwrap();
    let rate = pump(out, inb, total).await;
    client.close().await;
    server.close().await;
    rate
}

async fn handshakes_per_sec(noise: bool, count: usize) -> f64 {
    let a = strata_transport(&generate_ed25519(), noise);
    let b = strata_transport(&generate_ed25519(), noise);
    let mut listener = b.listen(&loopback()).await.unwrap();
    let addr = listener.multiaddr().clone();
    let server = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..count {
            conns.push(listener.accept().await.unwrap());
        }
        conns
    });
    let started = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..count {
        conns.push(a.dial(&addr, None).await.unwrap());
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    for c in server.await.unwrap().iter().chain(conns.iter()) {
        c.close().await;
    }
    rate
}

/// What [`many_streams`] measured.
struct ManyStreams {
    /// Aggregate MiB/s, from the first open until the last byte arrived.
    rate: f64,
    /// From `open_stream` on the dialer until the listener read the stream's first byte.
    first_byte_p50: Duration,
    first_byte_p99: Duration,
    first_byte_max: Duration,
}

thread_local! {
    /// A read buffer as large as one stream's data, shared by the readers of a thread:
    /// each read fills it and is done with it before the task yields, so 10,000 readers
    /// need neither 10,000 buffers nor small reads.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// Reads what `s` has into the thread's scratch buffer; returns the bytes read (0 at EOF).
async fn read_into_scratch<R: AsyncRead + Unpin>(s: &mut R) -> usize {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut *s).poll_read(cx, &mut buf) {
                std::task::Poll::Ready(result) => {
                    result.unwrap();
                    std::task::Poll::Ready(buf.filled().len())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
    })
    .await
}

/// `streams` streams on one TCP+TLS+yamux connection, opened at once, each sending
/// `per_stream` bytes that the listener reads to the end. The connection's limits are
/// raised to fit them all (the defaults allow 512 streams and a 32 MiB connection window,
/// 128 streams at their initial window).
async fn many_streams(streams: usize, per_stream: usize) -> ManyStreams {
    let yamux = strata::upgrader::YamuxConfig {
        max_streams: streams + 16,
        max_connection_receive_window: None,
        inbound_backlog: streams,
        ..Default::default()
    };
    let a = strata_transport_with(&generate_ed25519(), false, yamux.clone());
    let b = strata_transport_with(&generate_ed25519(), false, yamux);
    let mut listener = b.listen(&loopback()).await.unwrap();
    let addr = listener.multiaddr().clone();
    let (client, server) = tokio::join!(a.dial(&addr, None), listener.accept());
    let (client, server) = (Arc::new(client.unwrap()), Arc::new(server.unwrap()));
    let base = Instant::now();

    // The listener: every stream read to its end by a task of its own; each records when
    // its first byte arrived, keyed by the index the stream's first 4 bytes carry.
    let receiver = tokio::spawn({
        let server = server.clone();
        async move {
            let mut readers = tokio::task::JoinSet::new();
            for _ in 0..streams {
                let mut s = server.accept_stream().await.unwrap();
                readers.spawn(async move {
                    let mut index = [0u8; 4];
                    s.read_exact(&mut index).await.unwrap();
                    let first = base.elapsed();
                    let mut got = 4;
                    loop {
                        let n = read_into_scratch(&mut s).await;
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    assert_eq!(got, per_stream);
                    (u32::from_be_bytes(index) as usize, first)
                });
            }
            let mut first_bytes = vec![Duration::ZERO; streams];
            while let Some(done) = readers.join_next().await {
                let (i, first) = done.unwrap();
                first_bytes[i] = first;
            }
            (first_bytes, base.elapsed())
        }
    });
    // One payload shared by every writer: the bench measures the muxer, not 10,000
    // allocations of the data.
    let payload: Arc<[u8]> = vec![0x5au8; per_stream - 4].into();
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..streams {
        let client = client.clone();
        let payload = payload.clone();
        writers.spawn(async move {
            let opened = base.elapsed();
            let mut s = client.open_stream().await.unwrap();
            s.write_all(&(i as u32).to_be_bytes()).await.unwrap();
            s.write_all(&payload).await.unwrap();
            s.close_write().await.unwrap();
            (i, opened, s)
        });
    }
    let mut opened = vec![Duration::ZERO; streams];
    let mut open_streams = Vec::with_capacity(streams);
    while let Some(done) = writers.join_next().await {
        let (i, at, s) = done.unwrap();
        opened[i] = at;
        open_streams.push(s);
    }
    let (first_bytes, ended) = receiver.await.unwrap();
    drop(open_streams);
    let mut latencies: Vec<Duration> = first_bytes
        .iter()
        .zip(&opened)
        .map(|(first, open)| first.saturating_sub(*open))
        .collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    client.close().await;
    server.close().await;
    ManyStreams {
        rate: (streams * per_stream) as f64 / (1024.0 * 1024.0) / ended.as_secs_f64(),
        first_byte_p50: at(0.5),
        first_byte_p99: at(0.99),
        first_byte_max: at(1.0),
    }
}

/// Raw quinn: two plain endpoints with the same transport settings as Strata's QUIC
/// (windows, stream limits: `QuicConfig::quinn_transport_config`), the same TLS 1.3
/// certificates and suites (rustls with ring), one bidirectional stream.
async fn raw_quinn(total: usize) -> f64 {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    let alpn = vec![b"libp2p".to_vec()];
    let server_tls = strata::core::tls::server_config(&generate_ed25519(), alpn.clone()).unwrap();
    let client_tls = strata::core::tls::client_config(&generate_ed25519(), alpn).unwrap();
    let transport = QuicConfig::default().quinn_transport_config().unwrap();
    let mut server_cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).unwrap()));
    server_cfg.transport_config(transport.clone());
    let mut client_cfg =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).unwrap()));
    client_cfg.transport_config(transport);
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        (server, conn, send, recv)
    });
    let conn = client
        .connect_with(client_cfg, server_addr, "l")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap(); // a QUIC stream is announced by its first bytes
    let (server, server_conn, _server_send, mut recv) = accept.await.unwrap();
    recv.read_exact(&mut [0u8; 1]).await.unwrap();
    let rate = pump(send, recv, total).await;
    conn.close(0u32.into(), b"");
    server_conn.close(0u32.into(), b"");
    client.wait_idle().await;
    server.wait_idle().await;
    rate
}

async fn strata_quic(total: usize) -> f64 {
    let a = QuicTransport::new(generate_ed25519(), QuicConfig::default()).unwrap();
    let b = QuicTransport::new(generate_ed25519(), QuicConfig::default()).unwrap();
    let mut listener = b
        .listen(&"/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();
    let (client, server) = tokio::join!(a.dial(&addr, Some(b.local_peer())), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    let mut out = client.open_stream().await.unwrap();
    out.write_all(b"x").await.unwrap(); // a QUIC stream is announced by its first bytes
    let mut inb = server.accept_stream().await.unwrap();
    inb.read_exact(&mut [0u8; 1]).await.unwrap();
    let rate = pump(out, inb, total).await;
    a.close().await;
    b.close().await;
    rate
}

/// Each round's `ours[i] / baseline[i]` in percent, in round order: how steady the
/// machine was.
fn round_ratios(ours: &[f64], baseline: &[f64]) -> String {
    ours.iter()
        .zip(baseline)
        .map(|(o, b)| format!("{:.0}%", 100.0 * o / b))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The median over rounds of `ours[i] / baseline[i]`.
fn median_ratio(ours: &[f64], baseline: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = ours.iter().zip(baseline).map(|(o, b)| o / b).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn best(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| b.total_cmp(a));
    runs[0]
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing and
    // should stay quick.
    let bench = std::env::args().any(|a| a == "--bench");
    // STRATA_BENCH_PROFILE runs only one measure, once, for a profiler.
    if let Ok(stack) = std::env::var("STRATA_BENCH_PROFILE") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let rate = rt.block_on(async {
            match stack.as_str() {
                "raw" => raw_tls(mib() << 20).await,
                "raw-noise" => raw_noise(mib() << 20).await,
                "streams" => many_streams(10_000, 64 * 1024).await.rate,
                "upgrades-tls" => handshakes_per_sec(false, 3000).await,
                "upgrades-noise" => handshakes_per_sec(true, 3000).await,
                other => strata_stream(other == "noise", mib() << 20).await,
            }
        });
        let unit = if stack.starts_with("upgrades") {
            "upgrades/s"
        } else {
            "MiB/s"
        };
        println!("{stack} {rate:.1} {unit}");
        return;
    }
    let total = if bench { mib() << 20 } else { 8 << 20 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rounds = if bench { rounds() } else { 1 };
    rt.block_on(async {
        let (mut raw, mut tls) = (Vec::new(), Vec::new());
        let (mut raw_n, mut noise) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            raw.push(raw_tls(total).await);
            tls.push(strata_stream(false, total).await);
            raw_n.push(raw_noise(total).await);
            noise.push(strata_stream(true, total).await);
        }
        let (mut quinn, mut quic) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            quinn.push(raw_quinn(total).await);
            quic.push(strata_quic(total).await);
        }
        // Each ratio is the median of the rounds' own ratios (a run and its baseline
        // measured back to back), which a drifting machine disturbs less than a ratio
        // of bests.
        let tls_ratio = median_ratio(&tls, &raw);
        let noise_ratio = median_ratio(&noise, &raw_n);
        let quic_ratio = median_ratio(&quic, &quinn);
        let spreads = [
            round_ratios(&tls, &raw),
            round_ratios(&noise, &raw_n),
            round_ratios(&quic, &quinn),
        ];
        let (raw, tls, raw_n, noise) = (best(raw), best(tls), best(raw_n), best(noise));
        let (quinn, quic) = (best(quinn), best(quic));
        println!(
            "throughput, one stream, {} MiB per run, best of {} (ratio: median of the rounds'):",
            total >> 20,
            rounds
        );
        println!("  raw TLS 1.3 over TCP (tokio-rustls)   {raw:9.1} MiB/s");
        println!(
            "  strata TCP+TLS+yamux                  {tls:9.1} MiB/s  {:5.1}% of raw TLS",
            100.0 * tls_ratio
        );
        println!("  raw Noise frames over TCP (snow)      {raw_n:9.1} MiB/s");
        println!(
            "  strata TCP+Noise+yamux                {noise:9.1} MiB/s  {:5.1}% of raw Noise",
            100.0 * noise_ratio
        );
        println!("  raw quinn (one bidi stream)           {quinn:9.1} MiB/s");
        println!(
            "  strata QUIC                           {quic:9.1} MiB/s  {:5.1}% of raw quinn",
            100.0 * quic_ratio
        );
        println!(
            "  each round's ratio: TLS {}; Noise {}; QUIC {}",
            spreads[0], spreads[1], spreads[2]
        );
        // Many streams against one, the same bytes over TCP+TLS+yamux.
        let (streams, per_stream) = if bench {
            (10_000, 64 * 1024)
        } else {
            (200, 16 * 1024)
        };
        // In rounds too, each against one stream measured right before it.
        let (mut ones, mut manys, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            ones.push(strata_stream(false, streams * per_stream).await);
            let many = many_streams(streams, per_stream).await;
            manys.push(many.rate);
            latencies.push(many);
        }
        let many_ratio = median_ratio(&manys, &ones);
        let many_spread = round_ratios(&manys, &ones);
        // The latencies reported are those of the median round by rate.
        latencies.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let many = &latencies[latencies.len() / 2];
        println!(
            "{streams} concurrent streams on one TCP+TLS+yamux connection, {} KiB each:",
            per_stream / 1024
        );
        println!(
            "  one stream, same bytes                {:9.1} MiB/s",
            best(ones)
        );
        println!(
            "  {:<36}{:9.1} MiB/s  {:5.1}% of one stream",
            format!("{streams} streams at once"),
            best(manys),
            100.0 * many_ratio
        );
        println!("  each round's ratio: {many_spread}");
        println!(
            "  open to first byte: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            many.first_byte_p50.as_secs_f64() * 1e3,
            many.first_byte_p99.as_secs_f64() * 1e3,
            many.first_byte_max.as_secs_f64() * 1e3
        );
        let count = if bench { 300 } else { 20 };
        let tls_hs = handshakes_per_sec(false, count).await;
        let noise_hs = handshakes_per_sec(true, count).await;
        println!("upgrades per second (sequential dials, {count} each):");
        println!("  TCP+TLS+yamux    {tls_hs:8.0}/s");
        println!("  TCP+Noise+yamux  {noise_hs:8.0}/s");
    });
}
