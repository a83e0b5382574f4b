//! What the interop tests share: a rust-libp2p node that echoes a protocol through
//! libp2p-stream and reports its listen addresses and connections, and the Strata side of
//! an echo. Each test binary uses a part of it.
#![allow(dead_code)]

use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, Swarm};
use strata_core::{BoxCapableConn, Multiaddr, PeerId};
use strata_host::Host;
use strata_upgrader::multistream::{dialer_select, listener_select};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The protocol every node echoes.
pub const ECHO: &str = "/echo/1.0.0";
/// Bytes each echo test moves.
pub const ONE_MIB: usize = 1 << 20;
/// Bound on every wait, so a failure fails rather than hangs.
pub const LIMIT: Duration = Duration::from_secs(30);

/// What the rust-libp2p node reports.
#[derive(Debug)]
pub enum Event {
    Listening(Multiaddr),
    Connected(PeerId),
}

/// A running rust-libp2p node; dropping it stops it.
pub struct Libp2pNode {
    pub peer: PeerId,
    pub control: libp2p_stream::Control,
    pub events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Libp2pNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes every stream that arrives on `incoming` (reads to the end, writes it back).
pub async fn serve_echo(mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((_, mut stream)) = incoming.next().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.unwrap();
            stream.write_all(&buf).await.unwrap();
            stream.close().await.unwrap();
        });
    }
}

/// Runs `swarm` (after `setup` may listen or dial), echoing ECHO and reporting events.
pub fn start_libp2p(
    mut swarm: Swarm<libp2p_stream::Behaviour>,
    setup: impl FnOnce(&mut Swarm<libp2p_stream::Behaviour>),
) -> Libp2pNode {
    setup(&mut swarm);
    let peer = *swarm.local_peer_id();
    let mut control = swarm.behaviour().new_control();
    let incoming = control.accept(StreamProtocol::new(ECHO)).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let drive = async move {
            loop {
                let event = match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => Event::Listening(address),
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => Event::Connected(peer_id),
                    _ => continue,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        };
        tokio::join!(serve_echo(incoming), drive);
    });
    Libp2pNode {
        peer,
        control,
        events,
        task,
    }
}

impl Libp2pNode {
    /// The next address the node listens on.
    pub async fn listening(&mut self) -> Multiaddr {
        loop {
            if let Event::Listening(a) = timeout(LIMIT, self.events.recv()).await.unwrap().unwrap()
            {
                return a;
            }
        }
    }

    /// The next peer the node connects to.
    pub async fn connected(&mut self) -> PeerId {
        loop {
            if let Event::Connected(p) = timeout(LIMIT, self.events.recv()).await.unwrap().unwrap()
            {
                return p;
            }
        }
    }
}

/// The bytes each echo carries.
pub fn payload() -> Vec<u8> {
    (0..ONE_MIB).map(|i| (i % 251) as u8).collect()
}

/// Opens a stream on `conn`, negotiates ECHO, sends the payload and checks the echo.
pub async fn strata_echo_client(conn: &BoxCapableConn) {
    let mut stream = conn.open_stream().await.unwrap();
    let picked = timeout(LIMIT, dialer_select(&mut stream, &[ECHO]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(picked, ECHO);
    let data = payload();
    stream.write_all(&data).await.unwrap();
    stream.close_write().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo must be intact");
}

/// Serves one ECHO stream on `conn`: accepts it, negotiates, echoes to the end, then keeps
/// the connection until it closes, so the client can read everything first.
pub async fn strata_echo_server(conn: BoxCapableConn) {
    let mut stream = conn.accept_stream().await.unwrap();
    let proto = listener_select(&mut stream, |p| p == ECHO, || vec![ECHO.to_string()])
        .await
        .unwrap();
    assert_eq!(proto, ECHO);
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.close_write().await.unwrap();
    let _ = conn.closed().await;
}

/// 1 MiB echoed by the rust-libp2p node `peer` for Strata's `host` (libp2p-stream serves
/// ECHO), then by Strata for the node (the host's handler serves it), over their
/// connection.
pub async fn echo_both_ways(host: &Host, peer: PeerId, control: &mut libp2p_stream::Control) {
    let data = payload();
    let mut s = timeout(LIMIT, host.new_stream(peer, &[ECHO]))
        .await
        .unwrap()
        .unwrap();
    timeout(LIMIT, s.write_all(&data)).await.unwrap().unwrap();
    timeout(LIMIT, s.close_write()).await.unwrap().unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "the echo from rust-libp2p must be intact");

    let mut s = timeout(
        LIMIT,
        control.open_stream(host.id(), StreamProtocol::new(ECHO)),
    )
    .await
    .unwrap()
    .unwrap();
    timeout(LIMIT, s.write_all(&data)).await.unwrap().unwrap();
    timeout(LIMIT, s.close()).await.unwrap().unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(back == data, "the echo from Strata must be intact");
}
