//! `strata pubsub`: a GossipSub node for scripts. It listens and prints
//! `LISTEN <multiaddr>/p2p/<id>` per address, subscribes to the topic, dials the
//! `--dial` peers, waits until a peer shares the topic (or `--wait-ms`), publishes
//! `--publish` messages `<own peer id>:<i>` about 20 ms apart, and prints
//! `RECV <source peer id> <data>` for each message from another node. With `--expect M`
//! it prints `GOT m of M` last and exits 0 once it has M messages (and has published its
//! own), or 1 at the timeout.
//! These lines are a contract for scripts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata::core::addr::peer_id_of;
use strata::core::identity::{generate_ed25519, keypair_from_seed};
use strata::core::Multiaddr;
use strata::host::HostBuilder;
use strata::pubsub::{Gossipsub, GossipsubConfig};

use crate::print_line;

type CliError = Box<dyn std::error::Error + Send + Sync>;

/// The time between published messages.
const PUBLISH_GAP: Duration = Duration::from_millis(20);

/// What `strata pubsub` was asked.
pub struct PubsubArgs {
    /// The topic.
    pub topic: String,
    /// Addresses to listen on (a default when empty).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial, with `/p2p/<id>`.
    pub dial: Vec<Multiaddr>,
    /// Messages to publish.
    pub publish: u64,
    /// Messages to wait for, if any.
    pub expect: Option<u64>,
    /// The longest wait for a peer on the topic before publishing.
    pub wait: Duration,
    /// The longest run with `--expect`.
    pub timeout: Duration,
    /// The identity's seed.
    pub seed: Option<u64>,
}

/// Runs the command; `Ok(false)` when `--expect` was not met in time.
pub async fn run(args: PubsubArgs) -> Result<bool, CliError> {
    let key = args.seed.map_or_else(generate_ed25519, keypair_from_seed);
    let listen = if args.listen.is_empty() {
        vec!["/ip4/127.0.0.1/tcp/0".parse()?]
    } else {
        args.listen
    };
    let mut b = HostBuilder::new().identity(key);
    for a in listen {
        b = b.listen_on(a);
    }
    let (host, outcomes) = b.build().await?;
    for o in &outcomes {
        if let Err(e) = &o.result {
            eprintln!("strata: cannot listen on {}: {e}", o.requested);
        }
    }
    if outcomes.iter().all(|o| o.result.is_err()) {
        host.close().await;
        return Err("error: no address to listen on".into());
    }
    for addr in host.addrs_with_peer_id() {
        print_line(format!("LISTEN {addr}"));
    }
    let pubsub = Gossipsub::new(host.clone(), GossipsubConfig::default());
    let mut sub = pubsub.subscribe(&args.topic);
    let me = host.id();

    let deadline = tokio::time::Instant::now() + args.timeout;
    // Counted outside `run`, which the timeout drops.
    let got = AtomicU64::new(0);
    let run = async {
        for addr in &args.dial {
            let Some(peer) = peer_id_of(addr) else {
                return Err(format!("error: {addr} has no /p2p/<peer id>").into());
            };
            if let Err(e) = host.connect(peer, std::slice::from_ref(addr)).await {
                return Err(format!("error: cannot dial {addr}: {e}").into());
            }
        }
        let publishing = async {
            let wait_until = tokio::time::Instant::now() + args.wait;
            let mut events = pubsub.events();
            while pubsub.topic_peers(&args.topic).is_empty()
                && tokio::time::Instant::now() < wait_until
            {
                // Woken by the next subscription heard, or the end of the wait.
                let _ = tokio::time::timeout_at(wait_until, events.recv()).await;
            }
            for i in 0..args.publish {
                if i > 0 {
                    tokio::time::sleep(PUBLISH_GAP).await;
                }
                let data = format!("{me}:{i}");
                if let Err(e) = pubsub.publish(&args.topic, data.into_bytes()).await {
                    eprintln!("strata: publish {i}: {e}");
                }
            }
        };
        let receiving = async {
            while let Some(m) = sub.next().await {
                if m.received_from == me {
                    continue;
                }
                let source = m.source.map_or_else(|| "-".to_owned(), |s| s.to_string());
                print_line(format!(
                    "RECV {source} {}",
                    String::from_utf8_lossy(&m.data)
                ));
                let n = got.fetch_add(1, Ordering::Relaxed) + 1;
                if args.expect.is_some_and(|want| n >= want) {
                    break;
                }
            }
        };
        // Done when both are: its own messages all out, and (with --expect) M received.
        tokio::join!(receiving, publishing);
        Ok::<(), CliError>(())
    };
    let result = match args.expect {
        Some(want) => match tokio::time::timeout_at(deadline, run).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) | Err(_) => {
                let got = got.load(Ordering::Relaxed);
                print_line(format!("GOT {got} of {want}"));
                Ok(got >= want)
            }
        },
        None => {
            tokio::select! {
                r = run => r.map(|()| true),
                _ = tokio::signal::ctrl_c() => Ok(true),
            }
        }
    };
    host.shutdown(Duration::from_secs(2)).await;
    result
}
