//! A host stays reachable under floods from other loopback source addresses: silent
//! sockets held open, the same spread over fifty addresses of the real peer's own /24,
//! a slowloris, and a full inbound limit. Real sockets on 127.0.0.0/8; the flooders bind
//! their source address. The tests run one at a time (they count descriptors and
//! sockets) and stop by themselves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_core::sys::raise_fd_limit;

use strata_core::addr::tcp_socket_addr;
use strata_core::{Multiaddr, ResourceManager};
use strata_host::{Host, HostBuilder, Security};
use strata_rcmgr::{BasicResourceManager, LimitConfig};
use strata_upgrader::UpgraderConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::time::timeout;

mod common;
use common::{echo, serve_echo, ECHO};
const LIMIT: Duration = Duration::from_secs(30);

/// One flood at a time: each holds thousands of descriptors.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How many flood sockets this machine's descriptor limit allows (the 5,000 when
/// it can; the listener side needs its own share).
fn flood_size(wanted: usize) -> usize {
    let limit = raise_fd_limit() as usize;
    let fits = limit.saturating_sub(1024) / 2;
    if fits < wanted {
        eprintln!("descriptor limit {limit}: flooding with {fits} sockets, not {wanted}");
    }
    wanted.min(fits)
}

/// A TCP-only host listening on 127.0.0.1 with TLS and Noise, under `limits`.
async fn server(limits: LimitConfig, upgrader: UpgraderConfig) -> (Host, SocketAddr) {
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .resource_limits(limits)
        .upgrader_config(upgrader)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let addr = outcomes[0].result.as_ref().unwrap().clone();
    serve_echo(&host);
    (host, tcp_socket_addr(&addr).unwrap())
}

/// Connects `count` sockets from `source`, sending nothing. Sockets the server reset at
/// once may fail to connect; those are not returned.
async fn flood_from(target: SocketAddr, source: IpAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
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

/// Sockets the server still holds open: a read would block rather than see EOF or a
/// reset.
fn still_open(socks: &[TcpStream]) -> usize {
    let mut buf = [0u8; 16];
    socks
        .iter()
        .filter(|s| {
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Waits until the server has taken every flood socket from the kernel: each was either
/// refused or is pending.
async fn settled(host: &Host, sent: usize) {
    timeout(LIMIT, async {
        loop {
            let stat = host.resource_manager().stat();
            let seen = stat.refused_admissions as usize + stat.pending_handshakes;
            if seen + stat.evictions as usize >= sent {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listener took every flood socket");
}

/// A real peer from 127.0.0.1 with `sec` connects over TCP and echoes a stream; returns
/// the time it took.
async fn real_peer(server: &Host, sec: Security) -> Duration {
    let client = HostBuilder::new().no_quic().security(vec![sec]);
    real_peer_with(server, client, &server.addrs()).await
}

/// A real peer built from `client` connects to `server` at `addrs` and echoes a stream;
/// returns the time it took.
async fn real_peer_with(server: &Host, client: HostBuilder, addrs: &[Multiaddr]) -> Duration {
    let (client, _) = client.build().await.unwrap();
    let start = Instant::now();
    timeout(Duration::from_secs(5), client.connect(server.id(), addrs))
        .await
        .expect("the real peer connects")
        .unwrap();
    let back = echo(&client, server.id(), b"through the flood").await;
    assert_eq!(back, b"through the flood");
    let took = start.elapsed();
    client.close().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_one_address_hold_only_its_cap() {
    let _serial = SERIAL.lock().await;
    let n = flood_size(5000);
    let (host, target) = server(LimitConfig::autoscaled(), UpgraderConfig::default()).await;
    let cap = LimitConfig::autoscaled().admission.handshakes_per_ip;
    let flood = flood_from(target, "127.0.0.2".parse().unwrap(), n).await;
    settled(&host, n).await;
    let stat = host.resource_manager().stat();
    assert!(
        stat.pending_handshakes <= cap,
        "the flooder holds {} handshakes, its cap is {cap}",
        stat.pending_handshakes
    );
    let open = still_open(&flood);
    assert!(open <= cap, "{open} flood sockets still open, cap {cap}");
    assert!(stat.refused_admissions as usize >= n - cap);
    for sec in [Security::Tls, Security::Noise] {
        let took = real_peer(&host, sec).await;
        assert!(took < Duration::from_secs(1), "connect took {took:?}");
    }
    drop(flood);
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_fifty_addresses_of_the_same_subnet() {
    let _serial = SERIAL.lock().await;
    let n = flood_size(5000);
    let (host, target) = server(LimitConfig::autoscaled(), UpgraderConfig::default()).await;
    let limits = LimitConfig::autoscaled().admission;
    let mut flood = Vec::new();
    for i in 10..60u8 {
        let source = IpAddr::from([127, 0, 0, i]);
        flood.extend(flood_from(target, source, n / 50).await);
    }
    settled(&host, n / 50 * 50).await;
    let stat = host.resource_manager().stat();
    assert!(stat.pending_handshakes <= limits.handshakes_per_subnet);
    assert!(still_open(&flood) <= limits.handshakes_per_subnet);
    // 127.0.0.1 shares the flooders' /24: an idle flood socket makes way for it.
    for sec in [Security::Tls, Security::Noise] {
        let took = real_peer(&host, sec).await;
        assert!(took < Duration::from_secs(1), "connect took {took:?}");
    }
    assert!(host.resource_manager().stat().evictions >= 2);
    drop(flood);
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_cut_at_the_progress_deadline() {
    let _serial = SERIAL.lock().await;
    let n = flood_size(1000);
    let progress = Duration::from_secs(2);
    // Exempt from the per-address caps, so that every socket is admitted and it is the
    // deadline that cuts them.
    let mut limits = LimitConfig::autoscaled();
    limits.admission.allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    let upgrader = UpgraderConfig {
        progress_timeout: progress,
        ..UpgraderConfig::default()
    };
    let (host, target) = server(limits, upgrader).await;
    let header = b"\x13/multistream/1.0.0\n";
    let socks = flood_from(target, "127.0.0.3".parse().unwrap(), n).await;
    assert_eq!(socks.len(), n);
    let start = Instant::now();
    // Each socket trickles the multistream header, one byte a second, and reports when
    // the server cut it.
    let tasks = socks.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 64];
        for byte in header.iter() {
            if s.write_all(&[*byte]).await.is_err() {
                return start.elapsed();
            }
            match timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
                Ok(Ok(_)) => panic!("the server answered a slowloris"),
                Err(_) => {}
            }
        }
        panic!("a slowloris socket outlived its whole header");
    });
    let cut_at = futures::future::join_all(tasks).await;
    let earliest = cut_at.iter().min().copied().unwrap_or_default();
    let latest = cut_at.iter().max().copied().unwrap_or_default();
    assert!(
        earliest >= progress - Duration::from_millis(300),
        "{earliest:?}"
    );
    assert!(
        latest <= progress + Duration::from_millis(1500),
        "{latest:?}"
    );
    assert_eq!(host.resource_manager().stat().pending_handshakes, 0);
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_inbound_limit_the_next_socket_is_reset_before_any_handshake_byte() {
    let _serial = SERIAL.lock().await;
    let mut limits = LimitConfig::unlimited();
    limits.system.conns_inbound = 2;
    let (host, target) = server(limits, UpgraderConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client, _) = HostBuilder::new().no_quic().build().await.unwrap();
        client.connect(host.id(), &host.addrs()).await.unwrap();
        clients.push(client);
    }
    assert_eq!(host.resource_manager().stat().system.conns_inbound, 2);
    for _ in 0..3 {
        let start = Instant::now();
        // A dialer that sends its multistream header and TLS proposal, as a real one
        // would, gets nothing back: not a header, not a TLS byte.
        let Ok(mut s) = TcpStream::connect(target).await else {
            continue; // reset before connect() even returned
        };
        let _ = s
            .write_all(b"\x13/multistream/1.0.0\n\x0b/tls/1.0.0\n")
            .await;
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the socket is closed, not left hanging");
        assert!(matches!(read, Ok(0) | Err(_)), "got a reply: {read:?}");
        // At once, not at the 5 s progress deadline (a loaded CI machine may take a
        // few hundred milliseconds to schedule the accept loop).
        let gone = start.elapsed();
        assert!(gone < Duration::from_secs(1), "gone after {gone:?}");
    }
    assert!(host.resource_manager().stat().refused_admissions >= 1);
    for c in clients {
        c.close().await;
    }
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_a_peers_limit_are_reset_and_other_peers_go_on() {
    let _serial = SERIAL.lock().await;
    let mut limits = LimitConfig::unlimited();
    // Identify and ping use streams too; leave room for them.
    limits.peer.streams_inbound = 6;
    let (host, _) = server(limits, UpgraderConfig::default()).await;
    // Streams that stay open until the test ends.
    host.set_stream_handler("/hold/1.0.0", |mut stream| async move {
        // Each admitted stream says so: the dialer tells held from refused by an event,
        // not by a timeout.
        if stream.write_all(b"+").await.is_err() {
            return;
        }
        let mut buf = [0u8; 16];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let (greedy, _) = HostBuilder::new().no_quic().build().await.unwrap();
    let (other, _) = HostBuilder::new().no_quic().build().await.unwrap();
    greedy.connect(host.id(), &host.addrs()).await.unwrap();
    other.connect(host.id(), &host.addrs()).await.unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match greedy.new_stream(host.id(), &["/hold/1.0.0"]).await {
            Ok(mut s) => {
                // A stream the host reset shows it on the next read.
                s.write_all(b"x").await.unwrap_or(());
                let mut buf = [0u8; 1];
                match timeout(LIMIT, s.read(&mut buf)).await.expect("an answer") {
                    Ok(1) if buf == *b"+" => held.push(s),
                    Ok(n) => panic!("unexpected answer of {n} bytes"),
                    Err(_) => refused += 1,
                }
            }
            Err(_) => refused += 1,
        }
    }
    assert!(held.len() <= 6, "{} streams held", held.len());
    assert!(refused >= 14, "{refused} refused");
    let stat = host.resource_manager().stat();
    assert!(stat.peers[&greedy.id()].streams_inbound <= 6);
    // The other peer's streams go on.
    for _ in 0..3 {
        let mut s = other.new_stream(host.id(), &[ECHO]).await.unwrap();
        s.write_all(b"fine").await.unwrap();
        s.close_write().await.unwrap();
        let mut back = Vec::new();
        timeout(LIMIT, s.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"fine");
    }
    drop(held);
    for h in [greedy, other, host] {
        h.close().await;
    }
}

#[tokio::test]
async fn the_resource_manager_counts_nothing_once_everything_is_closed() {
    let _serial = SERIAL.lock().await;
    let limits = LimitConfig::autoscaled();
    let rcmgr = Arc::new(BasicResourceManager::new(limits).unwrap());
    let (host, _) = HostBuilder::new()
        .no_quic()
        .resource_manager(rcmgr.clone())
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .build()
        .await
        .unwrap();
    serve_echo(&host);
    let (client, _) = HostBuilder::new().no_quic().build().await.unwrap();
    client.connect(host.id(), &host.addrs()).await.unwrap();
    let mut s = client.new_stream(host.id(), &[ECHO]).await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    let busy = rcmgr.stat();
    assert_eq!(busy.system.conns_inbound, 1);
    assert!(busy.system.memory > 0, "buffers are accounted: {busy:?}");
    assert!(busy.peers.contains_key(&client.id()));
    let mut events = host.events();
    client.close().await;
    // The connection releases its scope before the swarm reports it closed.
    timeout(LIMIT, async {
        loop {
            if let Ok(strata_host::HostEvent::Swarm(strata_swarm::SwarmEvent::ConnectionClosed {
                ..
            })) = events.recv().await
            {
                return;
            }
        }
    })
    .await
    .expect("the host sees the connection close");
    let idle = rcmgr.stat();
    assert!(idle.system.is_empty(), "{idle:?}");
    assert!(
        idle.peers.is_empty() && idle.transient.is_empty(),
        "{idle:?}"
    );
    assert_eq!(idle.tracked_ips, 0);
    host.close().await;
}

/// Forwards every datagram that reaches `front` to `target`, from a socket bound to
/// `source`, and drops whatever comes back: a flooder whose handshakes never complete.
async fn one_way_udp_relay(
    source: IpAddr,
    target: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<u64>) {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind(SocketAddr::new(source, 0))
        .await
        .unwrap();
    let addr = front.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let mut sink = vec![0u8; 2048];
        let mut forwarded = 0u64;
        loop {
            tokio::select! {
                r = front.recv_from(&mut buf) => match r {
                    Ok((n, _)) => {
                        if back.send_to(&buf[..n], target).await.is_ok() {
                            forwarded += 1;
                        }
                    }
                    Err(_) => return forwarded,
                },
                // Answers from the server are read and dropped.
                _ = back.recv_from(&mut sink) => {}
                _ = tokio::time::sleep(Duration::from_secs(3)) => return forwarded,
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_quic_initials_from_one_address_does_not_stop_a_real_peer() {
    let _serial = SERIAL.lock().await;
    let (host, outcomes) = HostBuilder::new()
        .no_tcp()
        .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
        .build()
        .await
        .unwrap();
    serve_echo(&host);
    let listen = outcomes[0].result.as_ref().unwrap().clone();
    let target = strata_core::addr::quic_socket_addr(&listen).unwrap();
    let (relay, relay_task) = one_way_udp_relay("127.0.0.2".parse().unwrap(), target).await;
    // 2,000 dials through the relay: 2,000 Initial packets from 127.0.0.2, none of
    // whose handshakes can complete.
    let flooder = strata_transport::QuicTransport::new(
        strata_core::identity::generate_ed25519(),
        strata_transport::QuicConfig::default().handshake_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let relay_addr = strata_core::addr::quic_multiaddr(relay);
    let dials = (0..2000).map(|_| {
        let flooder = flooder.clone();
        let relay_addr = relay_addr.clone();
        async move { flooder.dial_quic(&relay_addr, None).await.is_ok() }
    });
    let flood = tokio::spawn(futures::future::join_all(dials));
    // Wait until the listener has seen the burst.
    timeout(LIMIT, async {
        while host.resource_manager().stat().refused_admissions < 1000 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the burst reaches the listener");
    let cap = LimitConfig::autoscaled().admission.handshakes_per_ip;
    assert!(host.resource_manager().stat().pending_handshakes <= cap);
    // A real peer from 127.0.0.1 connects and echoes meanwhile.
    let client = HostBuilder::new().no_tcp();
    let took = real_peer_with(&host, client, std::slice::from_ref(&listen)).await;
    assert!(took < Duration::from_secs(1), "connect took {took:?}");
    let completed = flood.await.unwrap().into_iter().filter(|ok| *ok).count();
    assert_eq!(
        completed, 0,
        "no flood handshake can complete through the relay"
    );
    assert!(relay_task.await.unwrap() >= 2000);
    flooder.close().await;
    host.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_a_protocols_limit_are_reset_and_other_protocols_go_on() {
    let _serial = SERIAL.lock().await;
    let mut limits = LimitConfig::unlimited();
    limits.protocol_overrides.insert(
        "/hold/1.0.0".into(),
        strata_rcmgr::ScopeLimit {
            streams: 3,
            streams_inbound: 3,
            streams_outbound: 3,
            ..strata_rcmgr::ScopeLimit::UNLIMITED
        },
    );
    let (host, _) = server(limits, UpgraderConfig::default()).await;
    host.set_stream_handler("/hold/1.0.0", |mut stream| async move {
        // Each admitted stream says so: the dialer tells held from refused by an event,
        // not by a timeout.
        if stream.write_all(b"+").await.is_err() {
            return;
        }
        let mut buf = [0u8; 16];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let (client, _) = HostBuilder::new().no_quic().build().await.unwrap();
    client.connect(host.id(), &host.addrs()).await.unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let mut s = client
            .new_stream(host.id(), &["/hold/1.0.0"])
            .await
            .unwrap();
        s.write_all(b"x").await.unwrap_or(());
        let mut buf = [0u8; 1];
        match timeout(LIMIT, s.read(&mut buf)).await.expect("an answer") {
            Ok(1) if buf == *b"+" => held.push(s),
            Ok(n) => panic!("unexpected answer of {n} bytes"),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 3, "the protocol's limit");
    assert_eq!(refused, 5);
    let stat = host.resource_manager().stat();
    assert_eq!(stat.protocols["/hold/1.0.0"].streams_inbound, 3);
    // Negotiated streams leave the transient scope.
    assert_eq!(stat.transient.streams(), 0, "{stat:?}");
    // Another protocol on the same connection is unaffected.
    let mut s = client.new_stream(host.id(), &[ECHO]).await.unwrap();
    s.write_all(b"fine").await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"fine");
    drop(held);
    client.close().await;
    host.close().await;
}
