//! DHT figures, printed as lines (run with `cargo bench -p strata-kad --bench kad`):
//!
//! * `memory ...`: heap bytes per routing-table entry, per stored provider record and per
//!   stored record, by a counting allocator, beside what the stores reserve for each.
//! * `provide ...`: 10,000 keys provided in a network of 200 Strata nodes on loopback
//!   (each keeping 16 to 32 connections, as its connection manager trims above that),
//!   once with `provide_many` and once with one `provide` per key (32 at a time), each
//!   from a fresh node: requests, messages, streams and connections opened, the time, and
//!   how many of each sampled key's true 20 closest nodes hold the record.
//!
//! `KAD_BENCH_NODES` and `KAD_BENCH_KEYS` change the network and key counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use strata_core::identity::keypair_from_seed;
use strata_core::{Multiaddr, PeerId, ScopeMemory};
use strata_host::{ConnManagerConfig, Host, HostBuilder};
use strata_kad::routing::RoutingTable;
use strata_kad::store::{ProviderStore, RecordStore};
use strata_kad::{DiversityLimits, Kad, KadConfig, KadKey, KadStats, StoreLimits};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// plain atomic that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Two addresses, as a typical DHT server lists (TCP and QUIC).
fn addrs(i: usize) -> Vec<Multiaddr> {
    let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    vec![
        format!("/ip4/{ip}/tcp/4001").parse().unwrap(),
        format!("/ip4/{ip}/udp/4001/quic-v1").parse().unwrap(),
    ]
}

fn memory() {
    // Routing table: buckets large enough that every peer is taken.
    let peers: Vec<PeerId> = (0..20_000).map(|_| PeerId::random()).collect();
    let peer_addrs: Vec<Vec<Multiaddr>> = (0..peers.len()).map(addrs).collect();
    let before = live();
    let mut table = RoutingTable::new(PeerId::random(), 20_000, DiversityLimits::default());
    let now = std::time::Instant::now();
    for (p, a) in peers.iter().zip(&peer_addrs) {
        table.update(*p, a, now);
    }
    let per_entry = (live() - before) as f64 / table.len() as f64;
    println!(
        "memory routing_entry_bytes={per_entry:.0} entries={} (2 addresses each)",
        table.len()
    );
    drop(table);

    // Provider records: 10,000 keys of 34 bytes (a sha2-256 multihash) x 10 providers.
    let limits = StoreLimits {
        max_provider_records: usize::MAX,
        max_provided_keys_per_peer: usize::MAX,
        max_providers_per_key: usize::MAX,
        ..StoreLimits::default()
    };
    let keys: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let mut k = vec![0x12, 0x20];
            k.extend_from_slice(&[i as u8; 32]);
            k[2..6].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect();
    let providers: Vec<PeerId> = peers[..10].to_vec();
    let now = std::time::Instant::now();
    // Each record with addresses of its own, as each arrives in its own message (their
    // containers are freed by the end; the addresses are kept by the store).
    let before = live();
    let fresh: Vec<Vec<Vec<Multiaddr>>> = keys
        .iter()
        .map(|_| (0..providers.len()).map(addrs).collect())
        .collect();
    let mut store = ProviderStore::new(PeerId::random(), limits.clone(), ScopeMemory::unlimited());
    for (k, per_provider) in keys.iter().zip(fresh) {
        for (p, a) in providers.iter().zip(per_provider) {
            store.add(k, *p, &a, now).unwrap();
        }
    }
    let heap = (live() - before) as f64 / store.len() as f64;
    let reserved = {
        let addr_bytes: usize = peer_addrs[0]
            .iter()
            .map(|a| a.len() + strata_kad::store::ADDR_OVERHEAD)
            .sum();
        let per_key = strata_kad::store::PROVIDER_KEY_OVERHEAD + 34;
        strata_kad::store::PROVIDER_OVERHEAD as f64 + addr_bytes as f64 + per_key as f64 / 10.0
    };
    println!(
        "memory provider_record_bytes={heap:.0} reserved_per_record={reserved:.0} records={} (10 providers per key, 2 addresses each)",
        store.len()
    );
    drop(store);

    // Records: 1,000 of a 20-byte key and a 1,000-byte value.
    let before = live();
    let mut records = RecordStore::new(
        StoreLimits {
            max_records: usize::MAX,
            ..limits
        },
        ScopeMemory::unlimited(),
    );
    for (i, peer) in peers.iter().take(1000).enumerate() {
        records
            .put(
                format!("/test/key-{i:09}").as_bytes(),
                vec![7; 1000],
                Some(*peer),
                now,
            )
            .unwrap();
    }
    let heap = (live() - before) as f64 / 1000.0;
    let reserved = strata_kad::store::RECORD_OVERHEAD + 18 + 1000;
    println!("memory record_bytes={heap:.0} reserved_per_record={reserved} (18-byte key, 1000-byte value)");
}

struct Node {
    host: Host,
    kad: Kad,
    addr: Multiaddr,
}

async fn node(seed: u64, i: usize) -> Node {
    let ip = format!("127.0.{}.{}", 100 + i / 200, 1 + i % 200);
    // Few connections per node, as on a real network where a node cannot hold one to
    // everyone (and so that 200 nodes fit one process's descriptors): trimmed above 32.
    let (host, outcomes) = HostBuilder::new()
        .identity(keypair_from_seed(seed))
        .conn_manager(ConnManagerConfig {
            low_water: 16,
            high_water: 32,
            grace_period: Duration::from_secs(1),
            ..ConnManagerConfig::default()
        })
        .no_quic()
        .listen_on(format!("/ip4/{ip}/tcp/0").parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    let kad = Kad::new(host.clone(), KadConfig::default());
    Node { host, kad, addr }
}

async fn join(n: &Node, boot: &Node) {
    n.kad
        .add_address(boot.host.id(), std::slice::from_ref(&boot.addr));
    if let Err(e) = n.kad.bootstrap().await {
        let why = n
            .host
            .connect(boot.host.id(), std::slice::from_ref(&boot.addr))
            .await;
        eprintln!(
            "bootstrap of {} at {} failed: {e} (dial: {why:?})",
            n.host.id(),
            n.addr
        );
    }
}

fn line(name: &str, keys: usize, nodes: usize, s: &KadStats, secs: f64, held: f64) {
    println!(
        "provide {name} keys={keys} nodes={nodes} requests={} messages={} streams={} dials={} failures={} secs={secs:.1} placement={:.1}%",
        s.requests, s.messages, s.streams, s.dials, s.failures, held * 100.0
    );
}

/// `placement` once the announcements in flight have landed (ADD_PROVIDER has no
/// answer): measured until it stops changing.
async fn settled_placement(network: &[Node], keys: &[Vec<u8>], provider: PeerId) -> f64 {
    let mut last = -1.0;
    for _ in 0..50 {
        let now = placement(network, keys, provider);
        if now == last {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    last
}

/// The share of the true `k` closest nodes of sampled keys that hold `provider`'s record.
fn placement(network: &[Node], keys: &[Vec<u8>], provider: PeerId) -> f64 {
    let ids: Vec<PeerId> = network.iter().map(|n| n.host.id()).collect();
    let mut held = 0;
    let mut want = 0;
    for key in keys.iter().step_by((keys.len() / 50).max(1)) {
        let target = KadKey::from_bytes(key);
        let mut closest: Vec<usize> = (0..ids.len()).collect();
        closest.sort_by_key(|&i| KadKey::from_peer(&ids[i]).distance(&target));
        for &i in closest.iter().take(20) {
            want += 1;
            if network[i]
                .kad
                .local_providers(key)
                .iter()
                .any(|p| p.id == provider)
            {
                held += 1;
            }
        }
    }
    held as f64 / want as f64
}

async fn provide(nodes: usize, key_count: usize) {
    let started = Instant::now();
    let mut network = Vec::with_capacity(nodes);
    for i in 0..nodes {
        network.push(node(10_000 + i as u64, i).await);
    }
    // Each joins through an earlier node (not all through one, whose connection limits
    // would refuse the later ones).
    for i in 1..nodes {
        join(&network[i], &network[i / 2]).await;
    }
    join(&network[0], &network[1]).await;
    let sizes: Vec<usize> = network
        .iter()
        .map(|n| n.kad.routing_table().len())
        .collect();
    eprintln!(
        "network of {nodes} up in {:.1} s, tables {}..{}",
        started.elapsed().as_secs_f64(),
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    let keys: Vec<Vec<u8>> = (0..key_count as u32)
        .map(|i| {
            let mut k = vec![0x12, 0x20];
            k.extend_from_slice(&[0u8; 32]);
            k[2..6].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect();

    let sweeper = node(20_000, nodes).await;
    join(&sweeper, &network[nodes / 3]).await;
    let before = sweeper.kad.stats();
    let t = Instant::now();
    let report = sweeper.kad.provide_many(keys.clone()).await.unwrap();
    let swept_secs = t.elapsed().as_secs_f64();
    let swept = sweeper.kad.stats().since(&before);
    let swept_held = settled_placement(&network, &keys, sweeper.host.id()).await;
    eprintln!(
        "provide_many: {} regions, {} lookups, {} peers, {} incomplete",
        report.regions, report.lookups, report.peers, report.incomplete_regions
    );

    let each = node(20_001, nodes + 1).await;
    join(&each, &network[nodes / 3]).await;
    let before = each.kad.stats();
    let t = Instant::now();
    let kad = each.kad.clone();
    let failed = futures::stream::iter(keys.clone())
        .map(|k| {
            let kad = kad.clone();
            async move { kad.provide(&k).await.is_err() }
        })
        .buffer_unordered(32)
        .filter(|f| futures::future::ready(*f))
        .count()
        .await;
    let each_secs = t.elapsed().as_secs_f64();
    let each_stats = each.kad.stats().since(&before);
    let each_held = settled_placement(&network, &keys, each.host.id()).await;
    if failed > 0 {
        eprintln!("{failed} single provides failed");
    }
    line(
        "provide_many",
        key_count,
        nodes,
        &swept,
        swept_secs,
        swept_held,
    );
    line("each", key_count, nodes, &each_stats, each_secs, each_held);
    let r = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!(
        "provide ratio requests={:.3} messages={:.3} streams={:.3} dials={:.3}",
        r(swept.requests, each_stats.requests),
        r(swept.messages, each_stats.messages),
        r(swept.streams, each_stats.streams),
        r(swept.dials, each_stats.dials),
    );
    for n in network.into_iter().chain([sweeper, each]) {
        n.host.close().await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and gets a
    // quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    memory();
    let fds = strata_core::sys::raise_fd_limit();
    eprintln!("descriptor limit {fds}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (nodes, keys) = if quick { (20, 200) } else { (200, 10_000) };
    rt.block_on(provide(
        env("KAD_BENCH_NODES", nodes),
        env("KAD_BENCH_KEYS", keys),
    ));
    rt.shutdown_timeout(Duration::from_secs(5));
}
