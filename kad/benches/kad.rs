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
//! * `flood ...`: 25 attacker hosts (one loopback address each) fill a DHT server's
//!   provider store (4,096 keys each, the per-peer cap, two addresses per record) and 16
//!   more send it 16 KiB records until the record store refuses; after the attackers are
//!   gone, the heap the server still holds beside what its resource manager books for
//!   the `libp2p.dht` service.
//!
//! `KAD_BENCH_NODES` and `KAD_BENCH_KEYS` change the network and key counts.

use std::time::{Duration, Instant};

use futures::StreamExt;
use strata_core::identity::keypair_from_seed;
use strata_core::sys::CountingAllocator;
use strata_core::{Multiaddr, PeerId, ScopeMemory};
use strata_host::{ConnManagerConfig, Host, HostBuilder};
use strata_kad::routing::RoutingTable;
use strata_kad::store::{ProviderStore, RecordStore};
use strata_kad::{DiversityLimits, Kad, KadConfig, KadKey, KadStats, StoreLimits};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

fn live() -> isize {
    CountingAllocator::live()
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

    // Provider records: keys of 34 bytes (a sha2-256 multihash), 10 providers each and 1
    // provider each, every record with addresses of its own as each arrives in its own
    // message (their containers are freed by the end; the store keeps the addresses).
    let limits = StoreLimits {
        max_provider_records: usize::MAX,
        max_provided_keys_per_peer: usize::MAX,
        max_providers_per_key: usize::MAX,
        ..StoreLimits::default()
    };
    let now = std::time::Instant::now();
    for (key_count, per_key) in [(10_000u32, 10usize), (100_000, 1)] {
        let keys: Vec<Vec<u8>> = (0..key_count)
            .map(|i| {
                let mut k = vec![0x12, 0x20];
                k.extend_from_slice(&[i as u8; 32]);
                k[2..6].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        let before = live();
        let fresh: Vec<Vec<Vec<Multiaddr>>> = keys
            .iter()
            .map(|_| (0..per_key).map(addrs).collect())
            .collect();
        let mut store =
            ProviderStore::new(PeerId::random(), limits.clone(), ScopeMemory::unlimited());
        for (k, per_provider) in keys.iter().zip(fresh) {
            for (p, a) in peers.iter().zip(per_provider) {
                store.add(k, *p, &a, now).unwrap();
            }
        }
        let heap = (live() - before) as f64 / store.len() as f64;
        let addr_bytes: usize = peer_addrs[0]
            .iter()
            .map(|a| a.len() + strata_kad::store::ADDR_OVERHEAD)
            .sum();
        let key_cost = strata_kad::store::PROVIDER_KEY_OVERHEAD + 34;
        let reserved = strata_kad::store::PROVIDER_OVERHEAD as f64
            + addr_bytes as f64
            + key_cost as f64 / per_key as f64;
        println!(
            "memory provider_record_bytes={heap:.0} reserved_per_record={reserved:.0} records={} ({per_key} providers per key, 2 addresses each)",
            store.len()
        );
    }

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
    let (host, addr) = HostBuilder::tcp_on(seed, &ip)
        .conn_manager(ConnManagerConfig {
            low_water: 16,
            high_water: 32,
            grace_period: Duration::from_secs(1),
            ..ConnManagerConfig::default()
        })
        .build_listening()
        .await
        .unwrap();
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

/// A raw DHT stream from `from` to `to`.
async fn raw_stream(from: &Host, to: &Node) -> strata_core::Stream {
    from.peerstore().add_addrs(
        to.host.id(),
        std::slice::from_ref(&to.addr),
        Duration::from_secs(600),
    );
    from.new_stream(to.host.id(), &[strata_kad::DEFAULT_PROTOCOL])
        .await
        .unwrap()
}

async fn flood() {
    use strata_kad::proto::{self, ConnectionType, Message, MessageType, PeerInfo, Record};
    use strata_kad::rpc::{read_message, write_message};
    use tokio::io::AsyncWriteExt;

    let mut config = KadConfig::default();
    config
        .validators
        .insert("test", strata_kad::AcceptAnyValidator);
    let (host, outcomes) = HostBuilder::new()
        .identity(keypair_from_seed(30_000))
        .no_quic()
        .listen_on("/ip4/127.0.60.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let victim = Node {
        kad: Kad::new(host.clone(), config),
        addr: outcomes[0].result.as_ref().unwrap().clone(),
        host,
    };
    // Everything the attackers allocate is freed when they close: what is left is the
    // victim's.
    let before = live();
    let rss_before = strata_core::sys::rss_kib(None);
    let mut attackers = Vec::new();
    for i in 0..41u64 {
        let (h, o) = HostBuilder::new()
            .identity(keypair_from_seed(30_001 + i))
            .no_quic()
            .listen_on(format!("/ip4/127.0.61.{}/tcp/0", i + 1).parse().unwrap())
            .build()
            .await
            .unwrap();
        attackers.push((h, o[0].result.as_ref().unwrap().clone()));
    }
    let t = Instant::now();
    let ping = Message::request(MessageType::Ping, Vec::new());
    // Provider records: 4,096 keys from each of 25 peers, on one stream each.
    futures::stream::iter(attackers.iter().take(25).enumerate())
        .for_each_concurrent(5, |(i, (h, addr))| {
            let (victim, ping) = (&victim, &ping);
            async move {
                let me = PeerInfo {
                    id: h.id(),
                    addrs: vec![addr.clone(), format!("{addr}/ws").parse().unwrap()],
                }
                .to_wire(ConnectionType::Connected);
                let mut s = raw_stream(h, victim).await;
                let mut batch = Vec::new();
                for k in 0..4096u32 {
                    let mut key = vec![0x12, 0x20];
                    key.extend_from_slice(&[i as u8; 32]);
                    key[2..6].copy_from_slice(&k.to_be_bytes());
                    let mut m = Message::request(MessageType::AddProvider, key);
                    m.provider_peers.push(me.clone());
                    batch.extend_from_slice(&proto::encode(&m));
                }
                s.write_all(&batch).await.unwrap();
                write_message(&mut s, ping).await.unwrap();
                read_message(&mut s, 1 << 20).await.unwrap();
            }
        })
        .await;
    // Records of 16 KiB, from 16 more peers, until refused.
    let mut taken = 0;
    for (i, (h, _)) in attackers.iter().skip(25).enumerate() {
        let mut s = raw_stream(h, &victim).await;
        for k in 0..64 {
            let key = format!("/test/{i}-{k}").into_bytes();
            let mut put = Message::request(MessageType::PutValue, key.clone());
            put.record = Some(Record {
                key,
                value: vec![k as u8; 16 << 10],
                time_received: String::new(),
            });
            if write_message(&mut s, &put).await.is_err() {
                break;
            }
            match read_message(&mut s, 1 << 20).await {
                Ok(Some(_)) => taken += 1,
                _ => {
                    s = raw_stream(h, &victim).await;
                }
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    for (h, _) in attackers {
        h.close().await;
    }
    let stats = victim.kad.store_stats();
    let held = (live() - before) as f64 / (1 << 20) as f64;
    let rss = (strata_core::sys::rss_kib(None) as f64 - rss_before as f64) / 1024.0;
    let booked = victim
        .host
        .resource_manager()
        .stat()
        .services
        .get(strata_kad::SERVICE_NAME)
        .map_or(0, |s| s.memory) as f64
        / (1 << 20) as f64;
    println!(
        "flood provider_records={} records={taken} record_bytes={} secs={secs:.1} heap_after_mib={held:.1} rss_growth_mib={rss:.1} booked_mib={booked:.1}",
        stats.provider_records, stats.record_bytes
    );
    victim.host.close().await;
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
    rt.block_on(flood());
    let (nodes, keys) = if quick { (20, 200) } else { (200, 10_000) };
    rt.block_on(provide(
        env("KAD_BENCH_NODES", nodes),
        env("KAD_BENCH_KEYS", keys),
    ));
    rt.shutdown_timeout(Duration::from_secs(5));
}
