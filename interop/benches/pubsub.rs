//! GossipSub side by side, in this process: 100 Strata hosts, then 100 rust-libp2p 0.57
//! (libp2p-gossipsub 0.50) nodes, over TCP with Noise and yamux on loopback, in the same
//! topology (each node dials 4 random others, seeded) and the same workload: messages
//! from random publishers at a fixed rate, all nodes subscribed to one topic. Run with
//! `cargo bench -p strata-interop --bench pubsub`.
//!
//! Per run it prints one line: the delivery ratio (deliveries over messages × the other
//! 99 nodes), the delivery latency's p50 and p99 (from publish to each receiver's
//! subscription), duplicates received per delivered message (each stack's own counter:
//! Strata's router stats, rust-libp2p's gossipsub metrics), bytes on the wire per
//! delivered message (the kernel's TCP byte counts of every socket, framing and
//! encryption included) and CPU time per delivered message (the process's, during the
//! run). Runs: 1,000 messages of 1 KiB at 100 a second; then 100 messages of 64 KiB at
//! 20 a second with IDONTWANT on and off, for the bytes it saves.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use strata_core::sys::{cpu_time, raise_fd_limit, tcp_bytes_received};
use strata_core::Multiaddr;
use strata_host::{Host, HostBuilder};
use strata_pubsub::{rust_libp2p_message_id, Gossipsub, GossipsubConfig};

#[path = "../tests/gossipnode/mod.rs"]
mod gossipnode;
use gossipnode::RustGossip;

const NODES: usize = 100;
const DEGREE: usize = 4;
const TOPIC: &str = "bench";

struct Workload {
    messages: usize,
    size: usize,
    rate: f64,
    idontwant: bool,
}

struct Outcome {
    delivered: usize,
    latencies_ms: Vec<f64>,
    duplicates: u64,
    bytes: u64,
    cpu: Duration,
}

fn loopback(i: usize) -> String {
    format!("127.0.{}.{}", 10 + i / 200, 1 + i % 200)
}

/// Each node's four random peers, the same for both stacks.
fn topology() -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    (0..NODES)
        .map(|i| {
            let mut picked = HashSet::new();
            while picked.len() < DEGREE {
                let j = rng.gen_range(0..NODES);
                if j != i {
                    picked.insert(j);
                }
            }
            picked.into_iter().collect()
        })
        .collect()
}

/// The publishers, in order, the same for both stacks.
fn publishers(count: usize) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..count).map(|_| rng.gen_range(0..NODES)).collect()
}

fn payload(index: usize, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size.max(8)];
    data[..8].copy_from_slice(&(index as u64).to_be_bytes());
    data
}

fn index_of(data: &[u8]) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[..8]);
    u64::from_be_bytes(b) as usize
}

/// Where the receivers record each delivery's latency.
struct Recorder {
    sent: Mutex<Vec<Option<Instant>>>,
    latencies_ms: Mutex<Vec<f64>>,
}

impl Recorder {
    fn new(messages: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            sent: Mutex::new(vec![None; messages]),
            latencies_ms: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, data: &[u8], at: Instant) {
        let i = index_of(data);
        let sent = self.sent.lock().unwrap().get(i).copied().flatten();
        if let Some(sent) = sent {
            let ms = at.saturating_duration_since(sent).as_secs_f64() * 1000.0;
            self.latencies_ms.lock().unwrap().push(ms);
        }
    }

    fn count(&self) -> usize {
        self.latencies_ms.lock().unwrap().len()
    }
}

/// Publishes the workload at its rate with `publish(node, data)`, then waits for every
/// delivery (or 10 s after the last publish).
async fn drive<F, Fut>(w: &Workload, recorder: &Arc<Recorder>, publish: F)
where
    F: Fn(usize, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let gap = Duration::from_secs_f64(1.0 / w.rate);
    let mut tick = tokio::time::interval(gap);
    for (i, from) in publishers(w.messages).into_iter().enumerate() {
        tick.tick().await;
        recorder.sent.lock().unwrap()[i] = Some(Instant::now());
        publish(from, payload(i, w.size)).await;
    }
    let want = w.messages * (NODES - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.count() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn strata_run(w: &Workload) -> Outcome {
    let links = topology();
    let mut hosts: Vec<(Host, Gossipsub, Multiaddr)> = Vec::new();
    for i in 0..NODES {
        let (host, addr) = HostBuilder::tcp_on(10_000 + i as u64, &loopback(i))
            .build_listening()
            .await
            .unwrap();
        let mut config = GossipsubConfig {
            message_id: Arc::new(rust_libp2p_message_id),
            ..GossipsubConfig::default()
        };
        if !w.idontwant {
            config.idontwant_message_threshold = usize::MAX;
        }
        let pubsub = Gossipsub::new(host.clone(), config);
        hosts.push((host, pubsub, addr));
    }
    let recorder = Recorder::new(w.messages);
    for (host, pubsub, _) in &hosts {
        let mut sub = pubsub.subscribe(TOPIC);
        let rec = recorder.clone();
        let me = host.id();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                // Our own messages come back to our own subscription: not a delivery.
                if m.received_from != me {
                    rec.record(&m.data, Instant::now());
                }
            }
        });
    }
    for (i, peers) in links.iter().enumerate() {
        for &j in peers {
            let (id, addr) = (hosts[j].0.id(), hosts[j].2.clone());
            let _ = hosts[i].0.connect(id, &[addr]).await;
        }
    }
    // Meshes form at the heartbeats.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hosts.iter().any(|(_, p, _)| p.mesh_peers(TOPIC).len() < 2) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dup_before: u64 = hosts
        .iter()
        .map(|(_, p, _)| p.stats().router.duplicates)
        .sum();
    let (bytes_before, cpu_before) = (tcp_bytes_received(), cpu_time());
    drive(w, &recorder, |from, data| {
        let pubsub = hosts[from].1.clone();
        async move {
            let _ = pubsub.publish(TOPIC, data).await;
        }
    })
    .await;
    let (bytes, cpu) = (tcp_bytes_received() - bytes_before, cpu_time() - cpu_before);
    let duplicates = hosts
        .iter()
        .map(|(_, p, _)| p.stats().router.duplicates)
        .sum::<u64>()
        - dup_before;
    for (host, _, _) in hosts {
        host.shutdown(Duration::from_secs(1)).await;
    }
    let latencies_ms = recorder.latencies_ms.lock().unwrap().clone();
    Outcome {
        delivered: latencies_ms.len(),
        latencies_ms,
        duplicates,
        bytes,
        cpu,
    }
}

/// The sum of a counter over every node in rust-libp2p's metrics text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn rust_run(w: &Workload) -> Outcome {
    let links = topology();
    let registry = Arc::new(Mutex::new(prometheus_client::registry::Registry::default()));
    let mut nodes = Vec::new();
    let recorder = Recorder::new(w.messages);
    for i in 0..NODES {
        let (node, mut rx) = RustGossip::start_with_metrics(
            10_000 + i as u64,
            &loopback(i),
            w.idontwant,
            Some(registry.clone()),
        )
        .await;
        node.subscribe(TOPIC);
        let rec = recorder.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                rec.record(&m.data, m.at);
            }
        });
        nodes.push(node);
    }
    for (i, peers) in links.iter().enumerate() {
        for &j in peers {
            nodes[i].dial(nodes[j].addr.clone());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut short = false;
        for n in &nodes {
            if n.mesh(TOPIC).await.len() < 2 {
                short = true;
                break;
            }
        }
        if !short || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = |r: &Arc<Mutex<prometheus_client::registry::Registry>>| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r.lock().unwrap()).unwrap();
        (
            metric_sum(&text, "topic_msg_recv_counts_unfiltered_total"),
            metric_sum(&text, "topic_msg_recv_counts_total"),
        )
    };
    let (all_before, first_before) = counts(&registry);
    let (bytes_before, cpu_before) = (tcp_bytes_received(), cpu_time());
    drive(w, &recorder, |from, data| {
        let node = &nodes[from];
        async move {
            let _ = node.publish(TOPIC, data).await;
        }
    })
    .await;
    let (bytes, cpu) = (tcp_bytes_received() - bytes_before, cpu_time() - cpu_before);
    let (all, first) = counts(&registry);
    let duplicates = (all - all_before).saturating_sub(first - first_before);
    drop(nodes);
    let latencies_ms = recorder.latencies_ms.lock().unwrap().clone();
    Outcome {
        delivered: latencies_ms.len(),
        latencies_ms,
        duplicates,
        bytes,
        cpu,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Line {
    p99: f64,
    duplicates: f64,
    bytes: f64,
    cpu_us: f64,
}

fn report(stack: &str, w: &Workload, mut o: Outcome) -> Line {
    o.latencies_ms.sort_by(f64::total_cmp);
    let want = (w.messages * (NODES - 1)) as f64;
    let delivered = o.delivered.max(1) as f64;
    let line = Line {
        p99: percentile(&o.latencies_ms, 0.99),
        duplicates: o.duplicates as f64 / delivered,
        bytes: o.bytes as f64 / delivered,
        cpu_us: o.cpu.as_secs_f64() * 1e6 / delivered,
    };
    println!(
        "pubsub stack={stack} size={} messages={} idontwant={} delivery_ratio={:.4} p50_ms={:.2} p99_ms={:.2} duplicates_per_msg={:.2} bytes_per_msg={:.0} cpu_us_per_msg={:.1}",
        w.size,
        w.messages,
        if w.idontwant { "on" } else { "off" },
        o.delivered as f64 / want,
        percentile(&o.latencies_ms, 0.5),
        line.p99,
        line.duplicates,
        line.bytes,
        line.cpu_us,
    );
    line
}

fn main() {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let small = Workload {
            messages: 1000,
            size: 1024,
            rate: 100.0,
            idontwant: true,
        };
        let s = report("strata", &small, strata_run(&small).await);
        let r = report("rust-libp2p", &small, rust_run(&small).await);
        println!(
            "pubsub ratios size=1024 p99={:.2} duplicates={:.2} bytes={:.2} cpu={:.2}",
            s.p99 / r.p99,
            s.duplicates / r.duplicates,
            s.bytes / r.bytes,
            s.cpu_us / r.cpu_us
        );
        let mut saved = Vec::new();
        for (stack, strata) in [("strata", true), ("rust-libp2p", false)] {
            let mut bytes = [0.0; 2];
            for (k, idontwant) in [true, false].into_iter().enumerate() {
                let w = Workload {
                    messages: 100,
                    size: 64 * 1024,
                    rate: 20.0,
                    idontwant,
                };
                let o = if strata {
                    strata_run(&w).await
                } else {
                    rust_run(&w).await
                };
                bytes[k] = report(stack, &w, o).bytes;
            }
            saved.push((stack, 1.0 - bytes[0] / bytes[1]));
        }
        for (stack, share) in saved {
            println!(
                "pubsub idontwant stack={stack} size=65536 bytes_saved={:.1}%",
                share * 100.0
            );
        }
    });
}
