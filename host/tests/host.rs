//! Hosts built with the builder, talking over real connections.

use std::sync::Arc;
use std::time::Duration;

use strata_core::{Multiaddr, PeerId};
use strata_host::{
    BuildError, ConnManagerConfig, Host, HostBuilder, HostError, HostEvent, Security,
};
use strata_swarm::{DisconnectReason, NotifyBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
mod common;
use common::{echo, serve_echo, ECHO};

fn memory_builder() -> HostBuilder {
    HostBuilder::new()
        .no_tcp()
        .no_quic()
        .memory()
        .security(vec![Security::Noise])
        .listen_on("/memory/0".parse().unwrap())
}

async fn memory_host() -> Host {
    let (host, outcomes) = memory_builder().build().await.unwrap();
    assert!(outcomes.iter().all(|o| o.result.is_ok()), "{outcomes:?}");
    host
}

async fn identified(
    events: &mut tokio::sync::broadcast::Receiver<HostEvent>,
    peer: PeerId,
) -> Box<strata_host::IdentifyInfo> {
    loop {
        match timeout(LIMIT, events.recv()).await.unwrap() {
            Ok(HostEvent::Identified { peer: p, info }) if p == peer => return info,
            Ok(HostEvent::IdentifyFailed { peer: p, error }) if p == peer => {
                panic!("identify failed: {error}")
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn echo_identify_and_ping_between_two_hosts() {
    let server = memory_host().await;
    serve_echo(&server);
    let client = memory_host().await;
    let mut events = client.events();
    client.connect(server.id(), &server.addrs()).await.unwrap();
    let info = identified(&mut events, server.id()).await;
    assert_eq!(info.agent_version, strata_host::DEFAULT_AGENT_VERSION);
    assert!(
        info.protocols.iter().any(|p| p == ECHO),
        "{:?}",
        info.protocols
    );
    assert!(info.protocols.iter().any(|p| p == "/ipfs/ping/1.0.0"));
    assert_eq!(info.listen_addrs, server.addrs());
    // The peerstore now knows what the server speaks.
    assert_eq!(
        client
            .peerstore()
            .first_supported_protocol(&server.id(), &[ECHO])
            .as_deref(),
        Some(ECHO)
    );
    assert_eq!(
        client.peerstore().agent_version(&server.id()).as_deref(),
        Some(strata_host::DEFAULT_AGENT_VERSION)
    );

    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(echo(&client, server.id(), &data).await, data);
    let rtt = client.ping(server.id()).await.unwrap();
    assert!(rtt > Duration::ZERO);
    assert!(client.peerstore().latency_ewma(&server.id()).is_some());
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn unknown_protocol_is_refused_and_lazy_streams_report_a_refusal_on_read() {
    let server = memory_host().await;
    let client = memory_host().await;
    client.connect(server.id(), &server.addrs()).await.unwrap();
    match client.new_stream(server.id(), &["/nope/1.0.0"]).await {
        Err(HostError::Negotiation { peer, .. }) => assert_eq!(peer, server.id()),
        other => panic!("expected a negotiation error, got {other:?}"),
    }
    // If the peerstore believes the peer speaks a protocol, the stream opens lazily and
    // the refusal shows on the first read.
    client
        .peerstore()
        .add_protocols(server.id(), &["/believed/1.0.0"])
        .unwrap();
    let mut s = client
        .new_stream(server.id(), &["/believed/1.0.0"])
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let refused = s.read(&mut [0u8; 1]).await.unwrap_err();
    assert!(strata_host::ProtocolNotConfirmed::is(&refused), "{refused}");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn ping_records_the_protocol_and_a_refused_ping_is_a_negotiation_error() {
    let server = memory_host().await;
    let client = memory_host().await;
    let mut events = client.events();
    client.connect(server.id(), &server.addrs()).await.unwrap();
    // Identify has told the client about ping; forget it, so only the ping can teach it.
    identified(&mut events, server.id()).await;
    let ping = [strata_host::ping::PING_PROTOCOL];
    client.peerstore().remove_protocols(&server.id(), &ping);
    client.ping(server.id()).await.unwrap();
    assert!(client
        .peerstore()
        .get_protocols(&server.id())
        .contains(&strata_host::ping::PING_PROTOCOL.to_string()));
    // Without a ping handler the lazy proposal is refused: a typed negotiation error,
    // not an I/O error from the ping exchange.
    server.remove_stream_handler(strata_host::ping::PING_PROTOCOL);
    match client.ping(server.id()).await {
        Err(HostError::Negotiation { peer, .. }) => assert_eq!(peer, server.id()),
        other => panic!("expected a negotiation error, got {other:?}"),
    }
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn new_handlers_reach_connected_peers_by_identify_push() {
    let server = memory_host().await;
    let client = memory_host().await;
    let mut events = client.events();
    client.connect(server.id(), &server.addrs()).await.unwrap();
    identified(&mut events, server.id()).await;
    server.set_stream_handler("/late/1.0.0", |_s| async {});
    loop {
        let info = identified(&mut events, server.id()).await;
        if info.protocols.iter().any(|p| p == "/late/1.0.0") {
            break;
        }
    }
    assert!(client
        .peerstore()
        .get_protocols(&server.id())
        .contains(&"/late/1.0.0".to_string()));
    server.remove_stream_handler("/late/1.0.0");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn handler_match_serves_a_family_of_protocols() {
    let server = memory_host().await;
    server.set_stream_handler_match(
        "/kv/",
        |p| p.starts_with("/kv/"),
        |mut s| async move {
            let proto = s.protocol().unwrap_or_default().to_string();
            let _ = s.write_all(proto.as_bytes()).await;
            let _ = s.close_write().await;
        },
    );
    let client = memory_host().await;
    client.connect(server.id(), &server.addrs()).await.unwrap();
    let mut s = client
        .new_stream(server.id(), &["/kv/2.0.0"])
        .await
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "/kv/2.0.0");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn tcp_hosts_with_tls_and_noise() {
    for sec in [Security::Tls, Security::Noise] {
        let build = || {
            HostBuilder::new()
                .no_quic()
                .security(vec![sec.clone()])
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .build()
        };
        let (server, _) = build().await.unwrap();
        serve_echo(&server);
        let (client, _) = build().await.unwrap();
        let addr = server.addrs_with_peer_id()[0].clone();
        assert!(addr.to_string().ends_with(&server.id().to_string()));
        client.connect(server.id(), &server.addrs()).await.unwrap();
        assert_eq!(echo(&client, server.id(), b"over tcp").await, b"over tcp");
        client.close().await;
        server.close().await;
    }
}

/// Two hosts on WebSocket only (`ws`, listening on `/ip4/127.0.0.1/tcp/0{suffix}`), with
/// TLS and then Noise inside: connect, identify and echo.
async fn websocket_hosts_echo_and_identify(ws: strata_transport::WsConfig, suffix: &str) {
    for sec in [Security::Tls, Security::Noise] {
        let build = || {
            HostBuilder::new()
                .no_tcp()
                .no_quic()
                .websocket(ws.clone())
                .security(vec![sec.clone()])
                .listen_on(format!("/ip4/127.0.0.1/tcp/0{suffix}").parse().unwrap())
                .build()
        };
        let (server, outcomes) = build().await.unwrap();
        let listened = outcomes[0].result.as_ref().unwrap();
        assert!(listened.to_string().ends_with(suffix), "{listened}");
        serve_echo(&server);
        let (client, _) = build().await.unwrap();
        let mut events = client.events();
        client.connect(server.id(), &server.addrs()).await.unwrap();
        let info = identified(&mut events, server.id()).await;
        assert!(info.protocols.iter().any(|p| p == ECHO));
        assert_eq!(
            echo(&client, server.id(), b"over websocket").await,
            b"over websocket"
        );
        let conn = client.network().best_conn(&server.id()).unwrap();
        assert!(conn.remote_multiaddr().to_string().ends_with(suffix));
        client.close().await;
        server.close().await;
    }
}

#[tokio::test]
async fn websocket_hosts_with_tls_and_noise_echo_and_identify() {
    websocket_hosts_echo_and_identify(strata_transport::WsConfig::default(), "/ws").await;
}

/// Secure WebSocket between two hosts: web TLS with a certificate for 127.0.0.1 that the
/// dialer trusts, then the libp2p upgrade (TLS or Noise, yamux) inside it.
#[tokio::test]
async fn secure_websocket_hosts_echo_and_identify() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let ws = strata_transport::WsConfig {
        tls: strata_transport::WsTlsConfig::default()
            .with_certificate(vec![der.clone()], key)
            .unwrap()
            .trusting([der])
            .unwrap(),
        ..strata_transport::WsConfig::default()
    };
    websocket_hosts_echo_and_identify(ws, "/tls/ws").await;
}

#[tokio::test]
async fn builder_refuses_contradictions_and_reports_each_listen_address() {
    assert!(matches!(
        HostBuilder::new().no_tcp().no_quic().build().await,
        Err(BuildError::NoTransport)
    ));
    assert!(matches!(
        HostBuilder::new().no_quic().security(vec![]).build().await,
        Err(BuildError::NoSecurity)
    ));
    let bad_cm = ConnManagerConfig {
        low_water: 10,
        high_water: 5,
        ..ConnManagerConfig::default()
    };
    assert!(matches!(
        HostBuilder::new()
            .no_quic()
            .conn_manager(bad_cm)
            .build()
            .await,
        Err(BuildError::ConnManager(_))
    ));
    let unsupported: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let (host, outcomes) = HostBuilder::new()
        .no_quic()
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .listen_on(unsupported.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    assert!(outcomes[0].result.is_ok());
    assert_eq!(outcomes[1].requested, unsupported);
    assert!(
        outcomes[1].result.is_err(),
        "no QUIC transport: {:?}",
        outcomes[1]
    );
    host.close().await;
}

#[tokio::test]
async fn connection_manager_trims_with_its_own_reason() {
    let (reason_tx, mut reasons) = tokio::sync::mpsc::unbounded_channel();
    let cm = ConnManagerConfig {
        low_water: 1,
        high_water: 2,
        grace_period: Duration::ZERO,
        ..ConnManagerConfig::default()
    };
    let (hub, _) = memory_builder()
        .conn_manager(cm)
        .notifiee(Arc::new(NotifyBundle::new().on_disconnected(
            move |_, _, reason| {
                let _ = reason_tx.send(reason.clone());
            },
        )))
        .build()
        .await
        .unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let p = memory_host().await;
        p.connect(hub.id(), &hub.addrs()).await.unwrap();
        peers.push(p);
    }
    // Three connections is above the high watermark of two: trimmed down to one.
    for _ in 0..2 {
        let reason = timeout(LIMIT, reasons.recv()).await.unwrap().unwrap();
        assert_eq!(reason, DisconnectReason::ConnManager);
    }
    hub.close().await;
    for p in peers {
        p.close().await;
    }
}

#[tokio::test]
async fn protected_peers_are_not_trimmed() {
    let cm = ConnManagerConfig {
        low_water: 0,
        high_water: 0,
        grace_period: Duration::ZERO,
        ..ConnManagerConfig::default()
    };
    let (trimmed_tx, mut trimmed) = tokio::sync::mpsc::unbounded_channel();
    let (hub, _) = memory_builder()
        .conn_manager(cm)
        .notifiee(Arc::new(NotifyBundle::new().on_disconnected(
            move |_, conn, reason| {
                let _ = trimmed_tx.send((conn.remote_peer(), reason.clone()));
            },
        )))
        .build()
        .await
        .unwrap();
    let friend = memory_host().await;
    hub.conn_manager().unwrap().protect(friend.id(), "friend");
    friend.connect(hub.id(), &hub.addrs()).await.unwrap();
    let other = memory_host().await;
    other.connect(hub.id(), &hub.addrs()).await.unwrap();
    // The unprotected peer is trimmed; the protected one stays.
    let (peer, reason) = timeout(LIMIT, trimmed.recv()).await.unwrap().unwrap();
    assert_eq!((peer, reason), (other.id(), DisconnectReason::ConnManager));
    assert!(!hub.network().conns_to_peer(&friend.id()).is_empty());
    assert!(hub
        .conn_manager()
        .unwrap()
        .unprotect(friend.id(), "other-tag"));
    assert!(!hub.conn_manager().unwrap().unprotect(friend.id(), "friend"));
    hub.close().await;
    friend.close().await;
    other.close().await;
}

#[tokio::test]
async fn closed_host_refuses_work() {
    let host = memory_host().await;
    let other = memory_host().await;
    host.close().await;
    host.close().await; // idempotent
    assert!(matches!(
        host.connect(other.id(), &other.addrs()).await,
        Err(HostError::Swarm(strata_swarm::SwarmError::Closed))
    ));
    other.close().await;
}

#[tokio::test]
async fn keep_alive_pings_record_latency_and_disconnect_closes_every_connection() {
    let server = memory_host().await;
    let (client, _) = memory_builder()
        .ping_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let mut events = client.events();
    client.connect(server.id(), &server.addrs()).await.unwrap();
    loop {
        if let Ok(HostEvent::Pinged { peer, rtt }) = timeout(LIMIT, events.recv()).await.unwrap() {
            assert_eq!(peer, server.id());
            assert!(rtt > Duration::ZERO);
            break;
        }
    }
    assert!(client.peerstore().latency_ewma(&server.id()).is_some());

    client.disconnect(server.id()).await;
    assert_eq!(
        client.network().connectedness(&server.id()),
        strata_swarm::Connectedness::NotConnected
    );
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn connections_in_their_grace_period_are_not_trimmed() {
    let cm = ConnManagerConfig {
        low_water: 0,
        high_water: 1,
        grace_period: Duration::from_secs(3600),
        ..ConnManagerConfig::default()
    };
    let (hub, _) = memory_builder().conn_manager(cm).build().await.unwrap();
    let mut opened = hub.network().events();
    let a = memory_host().await;
    let b = memory_host().await;
    a.connect(hub.id(), &hub.addrs()).await.unwrap();
    b.connect(hub.id(), &hub.addrs()).await.unwrap();
    let mut count = 0;
    while count < 2 {
        if let Ok(strata_swarm::SwarmEvent::ConnectionOpened { .. }) =
            timeout(LIMIT, opened.recv()).await.unwrap()
        {
            count += 1;
        }
    }
    // Over the high watermark, but every connection is younger than the grace period.
    hub.conn_manager().unwrap().trim(&hub).await;
    assert_eq!(hub.network().conns().len(), 2);
    // Tags rank peers: the value is the sum of a peer's tags.
    let cmgr = hub.conn_manager().unwrap();
    cmgr.tag_peer(a.id(), "useful", 10);
    cmgr.tag_peer(a.id(), "friend", 5);
    assert_eq!(cmgr.tag_value(&a.id()), 15);
    cmgr.untag_peer(a.id(), "friend");
    assert_eq!(cmgr.tag_value(&a.id()), 10);
    hub.close().await;
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn build_listening_returns_the_resolved_address_or_why_there_is_none() {
    let (host, addr) = HostBuilder::tcp_on(4242, "127.0.0.1")
        .build_listening()
        .await
        .unwrap();
    assert_eq!(
        host.id(),
        strata_core::identity::keypair_from_seed(4242)
            .public()
            .to_peer_id()
    );
    let text = addr.to_string();
    assert!(text.starts_with("/ip4/127.0.0.1/tcp/"), "{text}");
    assert!(!text.ends_with("/tcp/0"), "{text}");
    assert!(host.addrs().contains(&addr));
    host.close().await;
    let none = HostBuilder::new().no_quic().build_listening().await;
    assert!(matches!(none, Err(strata_host::BuildError::NoListenAddr)));
}

/// An idle QUIC connection books the smallest window tier (not the 15 MiB windows a bulk
/// transfer wants); one that moves data grows its windows, booked as they grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_windows_start_small_and_grow_with_traffic() {
    let quic = |seed: u64| {
        HostBuilder::new()
            .identity(strata_core::identity::keypair_from_seed(seed))
            .no_tcp()
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
    };
    let (server, addr) = quic(901).build_listening().await.unwrap();
    let (client, _) = quic(902).build_listening().await.unwrap();
    serve_echo(&server);
    let booked = |h: &Host| h.resource_manager().stat().system.memory;
    let before = booked(&server);
    client.connect(server.id(), &[addr]).await.unwrap();
    // The server's side is booked once its handshake is done and the swarm has it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.peerstore().is_connected(&client.id()) {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let idle = booked(&server) - before;
    assert!(idle >= 2 * 240 * 1024, "the windows are booked: {idle}");
    // The smallest tier (240 KiB each way by default) and the handshake's state.
    assert!(
        idle < 2 * 1024 * 1024,
        "an idle connection books {idle} bytes"
    );
    // 64 MiB through an echo stream.
    let mut s = client.new_stream(server.id(), &[ECHO]).await.unwrap();
    let payload: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut s);
    let write = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(payload.len());
    let read = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(write, read);
    assert_eq!(n.unwrap(), payload.len());
    assert!(back == payload, "the echo differs");
    drop(s);
    // Once the stream is gone, what stays booked is the connection's: grown windows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.resource_manager().stat().system.streams_inbound > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream stays");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = booked(&server) - before;
    assert!(
        grown >= idle + 1024 * 1024,
        "windows did not grow: {grown} bytes booked, {idle} idle"
    );
    client.close().await;
    server.close().await;
}

/// A handler for an object serves while the object lives and resets streams after.
#[tokio::test]
async fn a_handler_for_an_object_serves_while_it_lives() {
    let a = memory_host().await;
    let b = memory_host().await;
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    b.set_stream_handler_for("/count/1.0.0", &served, |served, mut s| async move {
        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = s.write_all(b"ok").await;
        let _ = s.shutdown().await;
    });
    a.connect(b.id(), &b.addrs()).await.unwrap();
    let mut s = a.new_stream(b.id(), &["/count/1.0.0"]).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The handler does not keep the object alive.
    assert_eq!(Arc::strong_count(&served), 1);
    drop(served);
    let mut s = a.new_stream(b.id(), &["/count/1.0.0"]).await.unwrap();
    let mut got = Vec::new();
    let read = s.read_to_end(&mut got).await;
    assert!(read.is_err() || got.is_empty(), "{read:?} {got:?}");
    assert!(got.is_empty());
    a.close().await;
    b.close().await;
}
