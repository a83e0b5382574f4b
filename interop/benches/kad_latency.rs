//! DHT lookup latency in one loopback DHT of 20 Strata and 20 rust-libp2p (libp2p-kad
//! 0.49) server nodes, same run: the median and p95 of `get_value`, `find_peer` and
//! `get_providers` started from a fresh Strata client and from a fresh rust-libp2p client
//! (neither stores records, so every answer comes over the network). Run with
//! `cargo bench -p strata-interop --bench kad_latency`; prints one line per operation and
//! side, then the ratios.
//!
//! rust-libp2p has no find-peer query: its users look a peer up with
//! `get_closest_peers(peer)`, which is what its side measures. Its `get_record` and
//! `get_providers` are stopped at the first result, as Strata's are (quorum one).

use std::time::{Duration, Instant};

use strata_core::PeerId;

#[path = "../tests/kadnode/mod.rs"]
mod kadnode;
use kadnode::{strata_node, RustKad};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(op: &str, side: &str, mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let median = percentile(&samples, 0.5);
    println!(
        "kad_latency op={op} from={side} n={} median_ms={median:.3} p95_ms={:.3}",
        samples.len(),
        percentile(&samples, 0.95)
    );
    median
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

async fn run(samples: usize) {
    let mut strata = Vec::new();
    for i in 0..20u64 {
        strata.push(strata_node(8000 + i, &format!("127.0.30.{}", i + 1)).await);
    }
    let mut rust = Vec::new();
    for i in 0..20u64 {
        rust.push(RustKad::start(8100 + i, &format!("127.0.31.{}", i + 1)).await);
    }
    let (boot, boot_addr) = (strata[0].0.id(), strata[0].2.clone());
    for _ in 0..2 {
        for (_, kad, _) in &strata[1..] {
            kad.add_address(boot, std::slice::from_ref(&boot_addr));
            let _ = kad.bootstrap().await;
        }
        for r in &rust {
            r.add_address(boot, boot_addr.clone());
            let _ = r.bootstrap().await;
        }
    }
    let _ = strata[0].1.bootstrap().await;

    // Records and providers, put from both sides.
    let keys: Vec<Vec<u8>> = (0..samples)
        .map(|i| format!("/test/bench-{i}").into_bytes())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        if i % 2 == 0 {
            strata[i % 20].1.put_value(key, vec![1; 100]).await.unwrap();
        } else {
            rust[i % 20].put(key, &[1; 100]).await.unwrap();
        }
    }
    let pkeys: Vec<Vec<u8>> = (0..samples)
        .map(|i| format!("content-{i}").into_bytes())
        .collect();
    for (i, key) in pkeys.iter().enumerate() {
        if i % 2 == 0 {
            strata[i % 20].1.provide(key).await.unwrap();
        } else {
            rust[i % 20].provide(key).await.unwrap();
        }
    }
    let targets: Vec<PeerId> = (0..samples)
        .map(|i| {
            if i % 2 == 0 {
                strata[i % 20].0.id()
            } else {
                rust[i % 20].peer
            }
        })
        .collect();

    // The askers: a fresh client of each kind, joined through the same node.
    let (client_host, client, _) = strata_node(8200, "127.0.32.1").await;
    client.set_mode(strata_kad::Mode::Client);
    client.add_address(boot, std::slice::from_ref(&boot_addr));
    client.bootstrap().await.unwrap();
    let rust_client = RustKad::start(8300, "127.0.32.2").await;
    rust_client.add_address(boot, boot_addr.clone());
    rust_client.bootstrap().await.unwrap();

    let mut strata_get = Vec::new();
    let mut rust_get = Vec::new();
    for key in &keys {
        let t = Instant::now();
        client.get_value(key).await.unwrap();
        strata_get.push(ms(t));
        let t = Instant::now();
        rust_client.get(key).await.unwrap();
        rust_get.push(ms(t));
    }
    let mut strata_find = Vec::new();
    let mut rust_find = Vec::new();
    for target in &targets {
        // Not connected first: a real lookup each time.
        client_host.disconnect(*target).await;
        client_host.peerstore().clear_addrs(target);
        let t = Instant::now();
        client.find_peer(*target).await.unwrap();
        strata_find.push(ms(t));
        let t = Instant::now();
        let found = rust_client.closest(&target.to_bytes()).await.unwrap();
        rust_find.push(ms(t));
        assert!(found.iter().any(|(p, _)| p == target));
    }
    let mut strata_prov = Vec::new();
    let mut rust_prov = Vec::new();
    for key in &pkeys {
        let t = Instant::now();
        client.find_providers(key, 1).await.unwrap();
        strata_prov.push(ms(t));
        let t = Instant::now();
        rust_client.providers(key).await.unwrap();
        rust_prov.push(ms(t));
    }
    let mut ratios = Vec::new();
    for (op, s, r) in [
        ("get_value", strata_get, rust_get),
        ("find_peer", strata_find, rust_find),
        ("get_providers", strata_prov, rust_prov),
    ] {
        let sm = report(op, "strata", s);
        let rm = report(op, "rust-libp2p", r);
        ratios.push(format!("{op}={:.2}", sm / rm));
    }
    println!(
        "kad_latency median_ratio_strata_over_rust {}",
        ratios.join(" ")
    );
    for (host, _, _) in strata {
        host.close().await;
    }
    client_host.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` gets a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(if quick { 4 } else { 100 }));
    rt.shutdown_timeout(Duration::from_secs(5));
}
