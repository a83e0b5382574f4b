//! The go-libp2p chat example: two peers exchange lines over `/chat/1.0.0`.
//!
//! ```text
//! cargo run --example chat                        # a scripted exchange in one process
//! cargo run --example chat -- listen              # terminal 1: prints `LISTEN <multiaddr>`
//! cargo run --example chat -- <multiaddr/p2p/..>  # terminal 2: dial it
//! ```
//!
//! With arguments, each side sends the lines typed on stdin and prints the peer's lines;
//! end stdin (Ctrl-D) to stop sending.

use strata::core::addr::peer_id_of;
use strata::{HostBuilder, Multiaddr, Stream};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const PROTOCOL: &str = "/chat/1.0.0";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    match std::env::args().nth(1).as_deref() {
        Some("listen") => {
            let (host, _) = HostBuilder::new()
                .listen_on("/ip4/0.0.0.0/tcp/0".parse()?)
                .build()
                .await?;
            let mut incoming = accept_chats(&host);
            for addr in host.addrs_with_peer_id() {
                println!("LISTEN {addr}");
            }
            let stream = incoming.recv().await.ok_or("host closed")?;
            chat(stream, BufReader::new(tokio::io::stdin()), "peer").await?;
            host.close().await;
        }
        Some(addr) => {
            let addr: Multiaddr = addr.parse()?;
            let peer = peer_id_of(&addr).ok_or("the address must end with /p2p/<peer id>")?;
            let (host, _) = HostBuilder::new().build().await?;
            host.connect(peer, &[addr]).await?;
            let stream = host.new_stream(peer, &[PROTOCOL]).await?;
            chat(stream, BufReader::new(tokio::io::stdin()), "peer").await?;
            host.close().await;
        }
        None => {
            // Alice listens, Bob dials; each sends its script and prints what it hears.
            let listen = "/ip4/127.0.0.1/tcp/0".parse()?;
            let (alice, _) = HostBuilder::new().listen_on(listen).build().await?;
            let mut incoming = accept_chats(&alice);
            let (bob, _) = HostBuilder::new().build().await?;
            bob.connect(alice.id(), &alice.addrs()).await?;
            let to_alice = bob.new_stream(alice.id(), &[PROTOCOL]).await?;
            let to_bob = incoming.recv().await.ok_or("alice closed")?;
            let bob_says = &b"hi alice\nhow is the weather?\nbye\n"[..];
            let alice_says = &b"hi bob\nsunny here\nbye bob\n"[..];
            tokio::try_join!(
                chat(to_alice, bob_says, "bob heard"),
                chat(to_bob, alice_says, "alice heard"),
            )?;
            bob.close().await;
            alice.close().await;
            println!("chat done");
        }
    }
    Ok(())
}

/// Serves `/chat/1.0.0`: every incoming chat stream is handed to the receiver.
fn accept_chats(host: &strata::Host) -> mpsc::Receiver<Stream> {
    let (tx, rx) = mpsc::channel(1);
    host.set_stream_handler(PROTOCOL, move |stream| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(stream).await;
        }
    });
    rx
}

/// Sends every line of `input`, prints every line the peer sends as `<label>: <line>`,
/// and returns once both directions have ended.
async fn chat(
    stream: Stream,
    input: impl AsyncBufRead + Unpin,
    label: &'static str,
) -> Result<(), Error> {
    let (read, mut write) = tokio::io::split(stream);
    let printer = tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await? {
            println!("{label}: {line}");
        }
        Ok::<_, std::io::Error>(())
    });
    let mut lines = input.lines();
    while let Some(line) = lines.next_line().await? {
        write.write_all(format!("{line}\n").as_bytes()).await?;
    }
    write.shutdown().await?;
    printer.await??;
    Ok(())
}
