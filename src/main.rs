//! The `strata` command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use strata::core::identity::generate_ed25519;
use strata::core::{Keypair, Multiaddr, Transport};
use strata::transport::{TcpConfig, TcpTransport};
use strata::upgrader::multistream::{dialer_select, listener_select};
use strata::upgrader::muxer::yamux::Yamux;
use strata::upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

#[derive(Subcommand)]
enum Command {
    /// Runs a loopback demonstration: TCP with TLS and with Noise, yamux, an echo.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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

const ECHO_BYTES: usize = 1 << 20;
const ECHO_PROTOCOL: &str = "/echo/1.0.0";

type DemoError = Box<dyn std::error::Error + Send + Sync>;

fn upgraded_tcp(key: &Keypair, noise: bool) -> Result<Upgraded<TcpTransport>, DemoError> {
    let security: Arc<dyn SecureTransport> = if noise {
        Arc::new(NoiseTransport::new(key.clone()))
    } else {
        Arc::new(TlsTransport::new(key.clone())?)
    };
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let upgrader = Upgrader::new(
        key.public().to_peer_id(),
        vec![security],
        vec![muxer],
        UpgraderConfig::default(),
    )?;
    Ok(Upgraded::new(
        TcpTransport::new(TcpConfig::default().reuseport(true)),
        Arc::new(upgrader),
    ))
}

/// Two nodes on loopback for each security protocol: both listen on reuseport TCP, the
/// client dials the server from its own listen port, the upgrade authenticates both and
/// picks yamux, and 1 MiB is echoed over a stream negotiated with multistream-select.
async fn demo() -> Result<(), DemoError> {
    for noise in [false, true] {
        demo_one(noise).await?;
    }
    Ok(())
}

async fn demo_one(noise: bool) -> Result<(), DemoError> {
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let (server_key, client_key) = (generate_ed25519(), generate_ed25519());
    let server = upgraded_tcp(&server_key, noise)?;
    let client = upgraded_tcp(&client_key, noise)?;
    let mut listener = server.listen(&addr).await?;
    let client_listener = client.listen(&addr).await?;
    let server_addr = listener.multiaddr().clone();
    let server_id = server_key.public().to_peer_id();
    println!(
        "== TCP + {} + yamux",
        if noise { "Noise" } else { "TLS 1.3" }
    );
    println!("server listens {server_addr} as {server_id}");
    println!(
        "client listens {} as {}",
        client_listener.multiaddr(),
        client_key.public().to_peer_id()
    );

    let echo = tokio::spawn(async move {
        let conn = listener.accept().await?;
        let seen = (conn.remote_multiaddr().clone(), conn.remote_peer());
        let mut stream = conn.accept_stream().await?;
        listener_select(
            &mut stream,
            |p| p == ECHO_PROTOCOL,
            || vec![ECHO_PROTOCOL.to_string()],
        )
        .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        stream.write_all(&buf).await?;
        stream.close_write().await?;
        // Keep the connection until the client, having read everything, closes it.
        conn.closed().await;
        Ok::<_, DemoError>(seen)
    });

    let started = Instant::now();
    let conn = client.dial(&server_addr, Some(server_id)).await?;
    let connect = started.elapsed();
    let state = conn.state();
    println!(
        "client dialed  from {} in {:.2} ms: {} + {}, muxer picked in the handshake: {}",
        conn.local_multiaddr(),
        connect.as_secs_f64() * 1e3,
        state.security,
        state.muxer,
        if state.used_early_muxer_negotiation {
            "yes"
        } else {
            "no"
        }
    );
    let mut stream = conn.open_stream().await?;
    dialer_select(&mut stream, &[ECHO_PROTOCOL]).await?;
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    stream.write_all(&payload).await?;
    stream.close_write().await?;
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await?;
    let took = started.elapsed();
    conn.close().await;
    let (seen_addr, seen_peer) = echo.await??;
    println!("server saw     {seen_addr} as {seen_peer}");
    let verified = echoed == payload;
    println!(
        "echo           {} bytes over {ECHO_PROTOCOL} in {:.2} ms, {}",
        echoed.len(),
        took.as_secs_f64() * 1e3,
        if verified { "verified" } else { "MISMATCH" }
    );
    if !verified {
        return Err("echo mismatch".into());
    }
    drop(client_listener);
    Ok(())
}
