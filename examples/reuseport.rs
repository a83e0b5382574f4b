//! TCP port reuse (SO_REUSEPORT): two hosts listen on one port, and a third host's dial
//! leaves from its own listen port, so the remote sees the address it can dial back (what
//! NAT traversal and go-libp2p peers expect).
//!
//! ```text
//! cargo run --example reuseport
//! ```

use std::time::Duration;

use strata::transport::TcpConfig;
use strata::{Host, HostBuilder, Multiaddr};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = host("/ip4/127.0.0.1/tcp/0".parse()?).await?;
    let a_addr = first_addr(&a)?;
    // B asks for the very port A got.
    let b = host(a_addr.clone()).await?;
    let b_addr = first_addr(&b)?;
    println!("A listening on {a_addr}");
    println!("B listening on {b_addr}");
    println!(
        "A and B share port {}: {}",
        port(&a_addr)?,
        port(&a_addr)? == port(&b_addr)?
    );

    let c = host("/ip4/127.0.0.1/tcp/0".parse()?).await?;
    let c_addr = first_addr(&c)?;
    println!("C listening on {c_addr}");

    // The kernel hands the connection to A's or B's socket; dial the address without a
    // peer ID and see who answered.
    let conn = c.network().dial_addr(a_addr).await?;
    let (name, answered) = if conn.remote_peer() == a.id() {
        ("A", &a)
    } else {
        ("B", &b)
    };
    // The answering side registers the inbound connection on its own task: wait for it.
    let mut seen = None;
    for _ in 0..100 {
        if let Some(inbound) = answered.network().conns_to_peer(&c.id()).first() {
            seen = Some(inbound.remote_multiaddr().clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.ok_or("the answering host has no connection from C")?;
    println!("C dialed from {}", conn.local_multiaddr());
    println!("{name} answered and sees C at {seen}");
    println!(
        "the dial left from C's listen port {}: {}",
        port(&c_addr)?,
        port(&seen)? == port(&c_addr)?
    );

    for h in [c, b, a] {
        h.close().await;
    }
    Ok(())
}

/// A TCP-only host with port reuse on, listening on `addr`.
async fn host(addr: Multiaddr) -> Result<Host, Error> {
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .tcp(TcpConfig::default().reuseport(true))
        .listen_on(addr)
        .build()
        .await?;
    for o in outcomes {
        o.result?;
    }
    Ok(host)
}

fn first_addr(host: &Host) -> Result<Multiaddr, Error> {
    Ok(host.addrs().into_iter().next().ok_or("no listen address")?)
}

fn port(addr: &Multiaddr) -> Result<u16, Error> {
    addr.iter()
        .find_map(|p| match p {
            strata::core::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .ok_or_else(|| format!("{addr} has no TCP port").into())
}
