//! Admission under flood: how long a real peer takes to connect (TCP+Noise, identify
//! skipped: connect plus one echo round trip) with no flood, with 5,000 silent sockets
//! from 127.0.0.2, with 5,000 spread over 50 addresses of the real peer's own /24, and
//! with a slowloris of 1,000 sockets trickling one byte a second from 128 addresses; and
//! the listener's RSS in each case. The listener runs in a child process (this binary,
//! re-run with STRATA_BENCH_ROLE=listener) with the host's default limits, so the RSS is
//! its alone.
//!
//! Run: `cargo bench --bench admission`. Targets: under every flood, connect time within
//! 2x the time without it and under 1 s; listener RSS under 64 MiB.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata::core::sys::{raise_fd_limit, rss_kib};

use strata::core::addr::tcp_socket_addr;
use strata::core::{Multiaddr, PeerId};
use strata::host::{HostBuilder, Security};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ECHO: &str = "/echo/1.0.0";
const SAMPLES: usize = 15;

/// The child: a host with default limits, echoing, until stdin closes.
async fn listener() {
    raise_fd_limit();
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    host.set_stream_handler(ECHO, |mut s| async move {
        let mut buf = Vec::new();
        if s.read_to_end(&mut buf).await.is_ok() {
            let _ = s.write_all(&buf).await;
            let _ = s.close_write().await;
        }
    });
    let addr = outcomes[0].result.as_ref().unwrap();
    println!("{addr}/p2p/{}", host.id());
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    host.close().await;
}

/// The median time for a fresh client to connect and echo one message.
async fn connect_time(server: PeerId, addr: &Multiaddr) -> Duration {
    let mut times = Vec::new();
    for _ in 0..SAMPLES {
        let (client, _) = HostBuilder::new()
            .no_quic()
            .security(vec![Security::Noise])
            .build()
            .await
            .unwrap();
        let start = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(10), async {
            client.connect(server, std::slice::from_ref(addr)).await?;
            let mut s = client.new_stream(server, &[ECHO]).await?;
            s.write_all(b"x").await?;
            s.close_write().await?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await?;
            Ok::<_, Box<dyn std::error::Error>>(back == b"x")
        })
        .await;
        let took = start.elapsed();
        client.close().await;
        match ok {
            Ok(Ok(true)) => times.push(took),
            _ => times.push(Duration::from_secs(10)),
        }
    }
    times.sort();
    times[times.len() / 2]
}

async fn silent(target: SocketAddr, source: IpAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for chunk in 0..count.div_ceil(200) {
        let n = (count - chunk * 200).min(200);
        let connects = (0..n).map(|_| async move {
            let socket = TcpSocket::new_v4().ok()?;
            socket.bind(SocketAddr::new(source, 0)).ok()?;
            socket.connect(target).await.ok()
        });
        held.extend(
            futures::future::join_all(connects)
                .await
                .into_iter()
                .flatten(),
        );
    }
    held
}

/// 1,000 sockets from 128 addresses, each sending the multistream header one byte a
/// second, reconnecting when cut, until `stop`.
fn slowloris(target: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) {
    for s in 1..=16u8 {
        for i in 1..=8u8 {
            for _ in 0..8 {
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let source = IpAddr::from([127, 0, s, i]);
                    while !*stop.borrow() {
                        let Ok(socket) = TcpSocket::new_v4() else {
                            return;
                        };
                        if socket.bind(SocketAddr::new(source, 0)).is_err() {
                            return;
                        }
                        let Ok(mut conn) = socket.connect(target).await else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        for byte in b"\x13/multistream/1.0.0\n" {
                            if conn.write_all(&[*byte]).await.is_err() {
                                break;
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                _ = stop.changed() => return,
                            }
                        }
                    }
                });
            }
        }
    }
}

struct Row {
    case: &'static str,
    connect: Duration,
    rss_kib: u64,
}

async fn parent() {
    raise_fd_limit();
    let exe = std::env::current_exe().unwrap();
    let mut child: Child = Command::new(exe)
        .env("STRATA_BENCH_ROLE", "listener")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let full: Multiaddr = line.trim().parse().unwrap();
    let server = strata::core::addr::peer_id_of(&full).unwrap();
    let addr = strata::core::addr::without_peer_id(&full);
    let target = tcp_socket_addr(&addr).unwrap();
    let mut rows = Vec::new();

    let connect = connect_time(server, &addr).await;
    rows.push(Row {
        case: "no flood",
        connect,
        rss_kib: rss_kib(Some(pid)),
    });

    let flood = silent(target, "127.0.0.2".parse().unwrap(), 5000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connect = connect_time(server, &addr).await;
    rows.push(Row {
        case: "5,000 silent sockets from 127.0.0.2",
        connect,
        rss_kib: rss_kib(Some(pid)),
    });
    drop(flood);

    let mut flood = Vec::new();
    for i in 10..60u8 {
        flood.extend(silent(target, IpAddr::from([127, 0, 0, i]), 100).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connect = connect_time(server, &addr).await;
    rows.push(Row {
        case: "5,000 silent sockets from 50 addresses of the same /24",
        connect,
        rss_kib: rss_kib(Some(pid)),
    });
    drop(flood);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    slowloris(target, stop_rx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connect = connect_time(server, &addr).await;
    rows.push(Row {
        case: "slowloris: 1,000 sockets, one byte a second",
        connect,
        rss_kib: rss_kib(Some(pid)),
    });
    let _ = stop_tx.send(true);

    drop(child.stdin.take());
    let _ = child.wait();

    let base = rows[0].connect;
    println!("admission under flood (median of {SAMPLES} connects, TCP+Noise, echo round trip)");
    println!("| case | connect | vs no flood | listener RSS |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} ms | {:.2}x | {:.1} MiB |",
            r.case,
            r.connect.as_secs_f64() * 1000.0,
            r.connect.as_secs_f64() / base.as_secs_f64(),
            r.rss_kib as f64 / 1024.0
        );
    }
    let ok = rows.iter().all(|r| {
        r.connect <= base * 2 && r.connect < Duration::from_secs(1) && r.rss_kib < 64 * 1024
    });
    println!(
        "targets (within 2x and under 1 s, RSS under 64 MiB): {}",
        if ok { "met" } else { "NOT met" }
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    if std::env::var("STRATA_BENCH_ROLE").as_deref() == Ok("listener") {
        listener().await;
    } else {
        parent().await;
    }
}
