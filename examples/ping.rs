//! The go-libp2p ping example: measure round trips to a peer over `/ipfs/ping/1.0.0`,
//! which every host serves.
//!
//! ```text
//! cargo run --example ping                                # 3 pings between two local hosts
//! cargo run --example ping -- listen                      # serve; prints `LISTEN <multiaddr>`
//! cargo run --example ping -- <multiaddr/p2p/..> [count]  # ping a peer (5 times by default)
//! ```

use strata::core::addr::peer_id_of;
use strata::{Host, HostBuilder, PeerId};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("listen") => {
            let listen = "/ip4/0.0.0.0/tcp/0".parse()?;
            let (host, _) = HostBuilder::new().listen_on(listen).build().await?;
            for addr in host.addrs_with_peer_id() {
                println!("LISTEN {addr}");
            }
            tokio::signal::ctrl_c().await?;
            host.close().await;
        }
        Some(addr) => {
            let addr = addr.parse()?;
            let count = match args.get(1) {
                Some(n) => n.parse()?,
                None => 5,
            };
            let peer = peer_id_of(&addr).ok_or("the address must end with /p2p/<peer id>")?;
            let (host, _) = HostBuilder::new().build().await?;
            host.connect(peer, &[addr]).await?;
            ping(&host, peer, count).await?;
            host.close().await;
        }
        None => {
            let listen = "/ip4/127.0.0.1/tcp/0".parse()?;
            let (server, _) = HostBuilder::new().listen_on(listen).build().await?;
            let (client, _) = HostBuilder::new().build().await?;
            client.connect(server.id(), &server.addrs()).await?;
            ping(&client, server.id(), 3).await?;
            client.close().await;
            server.close().await;
        }
    }
    Ok(())
}

/// Pings `peer` `count` times and prints each round trip.
async fn ping(host: &Host, peer: PeerId, count: u32) -> Result<(), Error> {
    println!("pinging {peer}");
    for _ in 0..count {
        let rtt = host.ping(peer).await?;
        println!("rtt {:.3} ms", rtt.as_secs_f64() * 1e3);
    }
    Ok(())
}
