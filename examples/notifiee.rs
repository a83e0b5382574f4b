//! Notifiees: hearing about listeners and connections as they come and go.
//!
//! Host A registers a notifiee written as a type (the [`Notifiee`] trait); host B one made
//! of closures ([`NotifyBundle`]). Then A listens, B connects, A closes the connection, A
//! closes its listener, and both shut down; every event is printed as it arrives,
//! disconnections with their reason.
//!
//! ```text
//! cargo run --example notifiee
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use strata::swarm::{Conn, DisconnectReason, Notifiee, NotifyBundle, Swarm};
use strata::{HostBuilder, Multiaddr};
use tokio::sync::mpsc;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Logs every event as `<name> <event> ...` and reports `<name> <event>` to the demo.
struct Logger {
    name: &'static str,
    seen: mpsc::UnboundedSender<String>,
}

impl Logger {
    fn log(&self, event: &str, detail: String) {
        println!("{} {event} {detail}", self.name);
        let _ = self.seen.send(format!("{} {event}", self.name));
    }
}

#[async_trait]
impl Notifiee for Logger {
    async fn listen(&self, _: &Swarm, addr: &Multiaddr) {
        self.log("listen", addr.to_string());
    }
    async fn listen_close(&self, _: &Swarm, addr: &Multiaddr) {
        self.log("listen_close", addr.to_string());
    }
    async fn connected(&self, _: &Swarm, conn: &Conn) {
        let detail = format!(
            "{} at {} ({:?})",
            conn.remote_peer(),
            conn.remote_multiaddr(),
            conn.direction()
        );
        self.log("connected", detail);
    }
    async fn disconnected(&self, _: &Swarm, conn: &Conn, reason: &DisconnectReason) {
        self.log(
            "disconnected",
            format!("{} reason: {reason}", conn.remote_peer()),
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut events = Events {
        rx,
        seen: HashSet::new(),
    };

    // Host A: the trait notifiee, registered before it starts so it hears its listen.
    let logger = Arc::new(Logger {
        name: "A",
        seen: tx.clone(),
    });
    let (a, _) = HostBuilder::new()
        .notifiee(logger)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
        .build()
        .await?;
    events.wait("A listen").await?;
    let listen_addr = a.addrs().into_iter().next().ok_or("A has no address")?;

    // Host B: a bundle of closures, registered on the running host.
    let (b, _) = HostBuilder::new().build().await?;
    let (t1, t2) = (tx.clone(), tx.clone());
    let bundle = NotifyBundle::new()
        .on_connected(move |_, conn| {
            println!(
                "B connected {} at {} ({:?})",
                conn.remote_peer(),
                conn.remote_multiaddr(),
                conn.direction()
            );
            let _ = t1.send("B connected".to_string());
        })
        .on_disconnected(move |_, conn, reason| {
            println!("B disconnected {} reason: {reason}", conn.remote_peer());
            let _ = t2.send("B disconnected".to_string());
        });
    let handle = b.notify(Arc::new(bundle));

    b.connect(a.id(), &a.addrs()).await?;
    events.wait("A connected").await?;
    events.wait("B connected").await?;

    // A closes the connection: A hears "closed locally", B "closed by the remote peer".
    for conn in a.network().conns_to_peer(&b.id()) {
        conn.close().await;
    }
    events.wait("A disconnected").await?;
    events.wait("B disconnected").await?;

    a.network().listen_close(&listen_addr).await?;
    events.wait("A listen_close").await?;

    handle.unregister();
    b.close().await;
    a.close().await;
    println!("both hosts shut down");
    Ok(())
}

/// The events reported so far, to step the demo only once each has happened.
struct Events {
    rx: mpsc::UnboundedReceiver<String>,
    seen: HashSet<String>,
}

impl Events {
    async fn wait(&mut self, event: &str) -> Result<(), Error> {
        while !self.seen.contains(event) {
            let next = tokio::time::timeout(Duration::from_secs(10), self.rx.recv()).await;
            let next = next.map_err(|_| format!("no `{event}` event in time"))?;
            self.seen.insert(next.ok_or("notifiees gone")?);
        }
        Ok(())
    }
}
