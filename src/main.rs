//! The `strata` command line.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use strata::core::{Multiaddr, RawTransport};
use strata::transport::{TcpConfig, TcpTransport};
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
    /// Runs a loopback demonstration of the stack that is built so far.
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

/// Two reuseport TCP transports on loopback, each listening; the second dials the first
/// from its own listen port and the first echoes 1 MiB back.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse()?;
    let server = TcpTransport::new(TcpConfig::default().reuseport(true));
    let client = TcpTransport::new(TcpConfig::default().reuseport(true));
    let mut listener = server.listen(&addr).await?;
    let client_listener = client.listen(&addr).await?;
    let listen_addr = listener.multiaddr().clone();
    println!("server listens {listen_addr}");
    println!("client listens {}", client_listener.multiaddr());
    let echo = tokio::spawn(async move {
        let mut conn = listener.accept().await?;
        let remote = conn.remote_multiaddr().clone();
        let mut buf = vec![0u8; ECHO_BYTES];
        conn.read_exact(&mut buf).await?;
        conn.write_all(&buf).await?;
        // SO_LINGER 0 drops unsent bytes on close: the client closes first, once it has
        // read everything.
        let _ = conn.read(&mut [0u8; 1]).await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(remote)
    });
    let started = Instant::now();
    let mut conn = client.dial(&listen_addr).await?;
    let connect = started.elapsed();
    println!(
        "client dialed  from {} in {connect:?}",
        conn.local_multiaddr()
    );
    let payload = vec![0x5a; ECHO_BYTES];
    conn.write_all(&payload).await?;
    let mut echoed = vec![0u8; ECHO_BYTES];
    conn.read_exact(&mut echoed).await?;
    drop(conn);
    let seen = echo.await?.map_err(|e| e.to_string())?;
    println!("server saw     {seen}");
    let verified = echoed == payload;
    println!(
        "echo           {} bytes, {}",
        echoed.len(),
        if verified { "verified" } else { "MISMATCH" }
    );
    if !verified {
        return Err("echo mismatch".into());
    }
    drop(client_listener);
    Ok(())
}
