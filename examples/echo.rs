//! The go-libp2p echo example: a listener serves `/echo/1.0.0`, a dialer sends a line and
//! prints what comes back.
//!
//! ```text
//! cargo run --example echo                      # both sides in one process, on loopback
//! cargo run --example echo -- listen            # serve; prints `LISTEN <multiaddr>` lines
//! cargo run --example echo -- <multiaddr/p2p/..> # dial a listener and echo one line
//! ```

use strata::core::addr::peer_id_of;
use strata::{Host, HostBuilder, Multiaddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOL: &str = "/echo/1.0.0";
const MESSAGE: &str = "Hello, strata!";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        Some("listen") => {
            let server = listener("/ip4/0.0.0.0/tcp/0".parse()?).await?;
            for addr in server.addrs_with_peer_id() {
                println!("LISTEN {addr}");
            }
            tokio::signal::ctrl_c().await?;
            server.close().await;
        }
        Some(addr) => println!("echoed: {}", dial(addr.parse()?, MESSAGE).await?),
        None => {
            let server = listener("/ip4/127.0.0.1/tcp/0".parse()?).await?;
            let addr = server.addrs_with_peer_id().into_iter().next();
            println!("sent: {MESSAGE}");
            println!(
                "echoed: {}",
                dial(addr.ok_or("no address")?, MESSAGE).await?
            );
            server.close().await;
        }
    }
    Ok(())
}

/// A host that answers every `/echo/1.0.0` stream with what it read.
async fn listener(addr: Multiaddr) -> Result<Host, Error> {
    let (host, _) = HostBuilder::new().listen_on(addr).build().await?;
    host.set_stream_handler(PROTOCOL, |mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() && stream.write_all(&buf).await.is_ok() {
            let _ = stream.close_write().await;
        }
    });
    Ok(host)
}

/// Connects to `addr`, sends `text` on an echo stream and returns the reply.
async fn dial(addr: Multiaddr, text: &str) -> Result<String, Error> {
    let peer = peer_id_of(&addr).ok_or("the address must end with /p2p/<peer id>")?;
    let (host, _) = HostBuilder::new().build().await?;
    host.connect(peer, &[addr]).await?;
    let mut stream = host.new_stream(peer, &[PROTOCOL]).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.close_write().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    host.close().await;
    Ok(reply)
}
