//! The WebSocket transport over real loopback sockets: bytes both ways, the addresses it
//! reports, and clear errors for peers that do not speak WebSocket or send too much.

use std::time::Duration;

use strata_core::{Multiaddr, RawTransport, TransportError};
use strata_transport::{TcpConfig, WsConfig, WsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

mod common;
use common::echo_once;

const LIMIT: Duration = Duration::from_secs(10);

fn transport() -> WsTransport {
    WsTransport::new(WsConfig {
        tcp: TcpConfig::default().reuseport(false),
        ..WsConfig::default()
    })
}

fn any() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0/ws".parse().unwrap()
}

#[tokio::test]
async fn bytes_cross_both_ways_and_addresses_end_in_ws() {
    echo_once(&transport(), "/ip4/127.0.0.1/tcp/0/ws", Multiaddr::clone).await;
}

#[tokio::test]
async fn a_peer_that_does_not_speak_websocket_gets_a_clear_error() {
    let t = transport();
    // A client that sends multistream-select straight away.
    let mut l = t.listen(&any()).await.unwrap();
    let tcp_addr = strata_core::addr::tcp_socket_addr(
        &l.multiaddr()
            .to_string()
            .trim_end_matches("/ws")
            .parse()
            .unwrap(),
    )
    .unwrap();
    let mut raw = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    raw.write_all(b"\x13/multistream/1.0.0\n\x0b/tls/1.0.0\n")
        .await
        .unwrap();
    let mut accepted = l.accept().await.unwrap();
    let err = timeout(LIMIT, accepted.read(&mut [0u8; 16]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("not a websocket client"), "{err}");

    // A server that is not a WebSocket server: the dial fails with the reason.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = plain.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}/ws").parse().unwrap();
    match timeout(LIMIT, t.dial(&addr)).await.unwrap() {
        Err(TransportError::Dial { source, .. }) => {
            assert!(
                source.to_string().contains("websocket handshake failed"),
                "{source}"
            )
        }
        other => panic!("expected a dial error, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_oversized_handshake_or_message_is_refused() {
    let t = WsTransport::new(WsConfig {
        tcp: TcpConfig::default().reuseport(false),
        max_handshake_size: 512,
        max_message_size: 4096,
        max_frame_size: 4096,
        ..WsConfig::default()
    });
    let mut l = t.listen(&any()).await.unwrap();
    let addr = l.multiaddr().clone();
    let tcp_addr = strata_core::addr::tcp_socket_addr(
        &addr.to_string().trim_end_matches("/ws").parse().unwrap(),
    )
    .unwrap();
    // A handshake request padded past 512 bytes.
    let mut raw = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    request.push_str(&format!("X-Pad: {}\r\n", "a".repeat(1000)));
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut accepted = l.accept().await.unwrap();
    let err = timeout(LIMIT, accepted.read(&mut [0u8; 16]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");

    // A message past 4096 bytes from a real client.
    let server = tokio::spawn(async move {
        let mut c = l.accept().await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        c.read(&mut buf).await
    });
    let mut c = t.dial(&addr).await.unwrap();
    c.write_all(&vec![1u8; 8192]).await.unwrap();
    c.flush().await.unwrap();
    let read = timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(read.is_err(), "an oversized message is an error: {read:?}");
}
