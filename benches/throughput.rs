//! Throughput and handshake rate on loopback, side by side in one run:
//! raw TLS 1.3 over TCP (tokio-rustls, no muxer) against Strata TCP+TLS+yamux and
//! TCP+Noise+yamux; raw quinn (one bidirectional stream, no libp2p) against Strata QUIC
//! (one stream); then upgrades per second.
//!
//! Run: `cargo bench --bench throughput`. STRATA_BENCH_MIB sets the MiB per run;
//! STRATA_BENCH_SPLIT sets yamux's split send size; STRATA_BENCH_PROFILE=raw|tls|noise runs
//! one stack once (for perf).

use std::sync::Arc;
use std::time::Instant;

use strata::core::identity::generate_ed25519;
use strata::core::{Keypair, Multiaddr, RawListener, Transport};
use strata::transport::{QuicConfig, QuicTransport, TcpConfig, TcpTransport};
use strata::upgrader::muxer::yamux::Yamux;
use strata::upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const CHUNK: usize = 256 * 1024;
const ROUNDS: usize = 3;

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

fn strata_transport(key: &Keypair, noise: bool) -> Upgraded<TcpTransport> {
    let security: Arc<dyn SecureTransport> = if noise {
        Arc::new(NoiseTransport::new(key.clone()))
    } else {
        Arc::new(TlsTransport::new(key.clone()).unwrap())
    };
    // STRATA_BENCH_SPLIT overrides yamux's split send size (bytes), to compare frame sizes.
    let mut yamux = strata::upgrader::YamuxConfig::default();
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

/// Raw quinn: two plain endpoints with quinn's default transport settings, the same TLS
/// 1.3 certificates and suites (rustls with ring), one bidirectional stream.
async fn raw_quinn(total: usize) -> f64 {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    let alpn = vec![b"libp2p".to_vec()];
    let server_tls = strata::core::tls::server_config(&generate_ed25519(), alpn.clone()).unwrap();
    let client_tls = strata::core::tls::client_config(&generate_ed25519(), alpn).unwrap();
    let server_cfg =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).unwrap()));
    let client_cfg =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).unwrap()));
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

fn best(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(|a, b| b.total_cmp(a));
    runs[0]
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing and
    // should stay quick.
    let bench = std::env::args().any(|a| a == "--bench");
    // STRATA_BENCH_PROFILE=raw|tls|noise runs only raw TLS or that Strata stack, once,
    // for a profiler.
    if let Ok(stack) = std::env::var("STRATA_BENCH_PROFILE") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let rate = rt.block_on(async {
            match stack.as_str() {
                "raw" => raw_tls(mib() << 20).await,
                other => strata_stream(other == "noise", mib() << 20).await,
            }
        });
        println!("{stack} {rate:.1} MiB/s");
        return;
    }
    let total = if bench { mib() << 20 } else { 8 << 20 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut raw, mut tls, mut noise) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..if bench { ROUNDS } else { 1 } {
            raw.push(raw_tls(total).await);
            tls.push(strata_stream(false, total).await);
            noise.push(strata_stream(true, total).await);
        }
        let (mut quinn, mut quic) = (Vec::new(), Vec::new());
        for _ in 0..if bench { ROUNDS } else { 1 } {
            quinn.push(raw_quinn(total).await);
            quic.push(strata_quic(total).await);
        }
        let (raw, tls, noise) = (best(raw), best(tls), best(noise));
        let (quinn, quic) = (best(quinn), best(quic));
        println!(
            "throughput, one stream, {} MiB per run, best of {}:",
            total >> 20,
            if bench { ROUNDS } else { 1 }
        );
        println!("  raw TLS 1.3 over TCP (tokio-rustls)   {raw:9.1} MiB/s");
        println!(
            "  strata TCP+TLS+yamux                  {tls:9.1} MiB/s  {:5.1}% of raw TLS",
            100.0 * tls / raw
        );
        println!(
            "  strata TCP+Noise+yamux                {noise:9.1} MiB/s  {:5.1}% of raw TLS",
            100.0 * noise / raw
        );
        println!("  raw quinn (one bidi stream)           {quinn:9.1} MiB/s");
        println!(
            "  strata QUIC                           {quic:9.1} MiB/s  {:5.1}% of raw quinn",
            100.0 * quic / quinn
        );
        let count = if bench { 300 } else { 20 };
        let tls_hs = handshakes_per_sec(false, count).await;
        let noise_hs = handshakes_per_sec(true, count).await;
        println!("upgrades per second (sequential dials, {count} each):");
        println!("  TCP+TLS+yamux    {tls_hs:8.0}/s");
        println!("  TCP+Noise+yamux  {noise_hs:8.0}/s");
    });
}
