//! What each attack of `tests/attacks.rs` costs a release-built listener: its peak RSS
//! and live heap beside what its resource manager reported, and the slowest connect and
//! echo of a well-behaved peer during the attack. The listener runs in a child process
//! (this binary, re-run as it) with the limits of `tests/attack/mod.rs`: 512 MiB in all,
//! 64 MiB per source address and for unauthenticated connections, 128 MiB per subnet.
//!
//! Run: `cargo bench --bench attacks` (ONLY=<part of a name> runs matching ones).

#[path = "../tests/attack/mod.rs"]
mod attack;

use std::time::Duration;

use attack::*;

fn main() {
    run_listener_if_child();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(run());
}

fn wanted(name: &str) -> bool {
    std::env::var("ONLY").map_or(true, |only| name.contains(&only))
}

/// Runs one attack against a fresh listener (its row is printed as it ends).
async fn row<F, Fut, T>(name: &str, attack: F) -> Option<(Cost, T)>
where
    F: FnOnce(&'static Target) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    if !wanted(name) {
        return None;
    }
    // Leaked: one listener per attack, for the length of the bench (each exits when
    // this process does).
    let target: &'static Target = Box::leak(Box::new(Target::start(&[])));
    Some(measure(name, target, attack(target)).await)
}

async fn run() {
    println!("listener limits: 512 MiB in all; 64 MiB per address, per peer and unauthenticated; 128 MiB per subnet");
    row("5,000,000 SYNs, never reading", |t| {
        syn_flood(t, 5_000_000, Duration::from_secs(4))
    })
    .await;
    row("100,000 streams opened and reset, never reading", |t| {
        open_and_reset(t, 100_000, Duration::from_secs(20))
    })
    .await;
    row(
        "one address, 32 identities filling windows",
        |t| async move {
            let (hosts, _streams) =
                fill_windows(t, &[loopback(3, 1)], 32, 128, Duration::from_secs(3)).await;
            for h in hosts {
                h.close().await;
            }
        },
    )
    .await;
    row("1 MiB messages to a stalled handler", |t| {
        stalled_handler(t, Duration::from_secs(4))
    })
    .await;
    row("1 MiB messages to a peer that never reads", |t| {
        never_reads_messages(t, Duration::from_secs(4))
    })
    .await;
    let pubsub_sources: Vec<_> = (1..=20).map(|h| loopback(60, h)).collect();
    row(
        "pubsub: 20 peers, 1,000 new topics and 5,000 IHAVE IDs per RPC",
        |t| pubsub_subscriptions_and_ihave(t, &pubsub_sources, Duration::from_secs(4)),
    )
    .await;
    row("pubsub: 20 peers, 1 MiB RPCs of forged messages", |t| {
        pubsub_forged_messages(t, &pubsub_sources, Duration::from_secs(4))
    })
    .await;
    let quic_sources: Vec<_> = (1..=50).map(|h| loopback(4, h)).collect();
    row("500 silent QUIC handshakes from 50 addresses", |t| {
        silent_quic_handshakes(t, &quic_sources, 500, Duration::from_secs(7))
    })
    .await;
    let ws_sources: Vec<_> = (0..40u8).map(|i| loopback(40 + i / 5, 1 + i % 5)).collect();
    row("200 WebSocket connections, 1 MiB frames, slowly", |t| {
        slow_ws_frames(t, &ws_sources, 200, Duration::from_secs(10))
    })
    .await;
    let noise_sources: Vec<_> = (0..125u8)
        .map(|i| loopback(20 + i / 8, 1 + i % 8))
        .collect();
    row("1,000 connections stalled inside Noise", |t| {
        stall_inside_noise(t, &noise_sources, 1000, Duration::from_secs(10))
    })
    .await;
    let fill_sources: Vec<_> = (1..=50).map(|h| loopback(8, h)).collect();
    row(
        "200 peers x 64 full windows, leave, 200 more",
        |t| async move {
            for _ in 0..2 {
                let (hosts, streams) =
                    fill_windows(t, &fill_sources, 200, 64, Duration::from_secs(1)).await;
                for h in hosts {
                    h.close().await;
                }
                drop(streams);
            }
        },
    )
    .await;
    row(
        "identify push: 8 x 128 streams, 3-byte prefix",
        |t| async move {
            for h in identify_push_prefixes(t, 8, 128, Duration::from_secs(2)).await {
                h.close().await;
            }
        },
    )
    .await;
    if wanted("books") {
        // The books against the allocator under load: 4 peers, 64 full windows each.
        let target = Target::start(&[]);
        let rest = target.rest().await;
        let sources: Vec<_> = (1..=4).map(|h| loopback(9, h)).collect();
        let (hosts, streams) = fill_windows(&target, &sources, 4, 64, Duration::from_secs(5)).await;
        let now = target.sample().await;
        println!(
            "books under load (4 peers x 64 full windows): resource manager +{:.1} MiB, allocator +{:.1} MiB, {} streams",
            now.books.saturating_sub(rest.books) as f64 / MIB as f64,
            (now.live - rest.live).max(0) as f64 / MIB as f64,
            streams.len()
        );
        for h in hosts {
            h.close().await;
        }
    }
}
