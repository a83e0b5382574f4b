//! Ping over real yamux streams between upgraded connections.

mod common;

use std::time::Duration;

use common::{pair, streams, Sec, LIMIT};
use strata_host::ping::{
    ping_once, ping_once_within, ping_service, ping_service_within, PingError, PING_PROTOCOL,
    PING_SIZE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// One ping returns a positive round trip, and the service answers it.
#[tokio::test]
async fn ping_returns_rtt() {
    let p = pair(1, 2, Sec::Noise).await;
    let (mut client, server) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    let service = tokio::spawn(ping_service(server));
    let rtt = timeout(LIMIT, ping_once(&mut client))
        .await
        .unwrap()
        .unwrap();
    assert!(rtt > Duration::ZERO, "{rtt:?}");
    client.close_write().await.unwrap();
    let answered = timeout(LIMIT, service).await.unwrap().unwrap().unwrap();
    assert_eq!(answered, 1);
}

/// The service answers many pings on one stream and ends cleanly (closing its side) when
/// the client closes.
#[tokio::test]
async fn service_answers_several_pings_on_one_stream() {
    let p = pair(3, 4, Sec::Tls).await;
    let (mut client, server) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    let service = tokio::spawn(ping_service(server));
    for _ in 0..10 {
        let rtt = timeout(LIMIT, ping_once(&mut client))
            .await
            .unwrap()
            .unwrap();
        assert!(rtt > Duration::ZERO);
    }
    client.close_write().await.unwrap();
    assert_eq!(timeout(LIMIT, service).await.unwrap().unwrap().unwrap(), 10);
    // The service closed its write side: we read a clean end.
    let mut rest = Vec::new();
    timeout(LIMIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

/// An echo that differs from what was sent is a typed mismatch.
#[tokio::test]
async fn corrupted_echo_is_a_mismatch() {
    let p = pair(5, 6, Sec::Noise).await;
    let (mut client, mut server) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    let liar = tokio::spawn(async move {
        let mut buf = [0u8; PING_SIZE];
        server.read_exact(&mut buf).await.unwrap();
        buf[PING_SIZE - 1] ^= 0x01;
        server.write_all(&buf).await.unwrap();
        server.flush().await.unwrap();
        server
    });
    let got = timeout(LIMIT, ping_once(&mut client)).await.unwrap();
    assert!(matches!(got, Err(PingError::Mismatch)), "{got:?}");
    drop(liar.await.unwrap());
}

/// A responder that closes without echoing, or never answers, gives a typed error, not
/// a hang.
#[tokio::test]
async fn closed_or_silent_responder_is_typed() {
    let p = pair(7, 8, Sec::Noise).await;
    let (mut client, mut server) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    server.close_write().await.unwrap();
    let got = timeout(LIMIT, ping_once(&mut client)).await.unwrap();
    assert!(matches!(got, Err(PingError::Closed)), "{got:?}");

    let (mut client, _silent) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    let got = timeout(
        LIMIT,
        ping_once_within(&mut client, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    assert!(matches!(got, Err(PingError::Timeout(_))), "{got:?}");
}

/// A client that opens the stream and goes silent does not hold the service forever: it
/// gives up after its idle deadline, and resets the stream.
#[tokio::test]
async fn service_gives_up_on_a_silent_client() {
    let p = pair(9, 10, Sec::Noise).await;
    let (mut client, server) = streams(&p.a, &p.b, PING_PROTOCOL).await;
    let got = timeout(
        LIMIT,
        ping_service_within(server, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    assert!(matches!(got, Err(PingError::Timeout(_))), "{got:?}");
    let mut buf = [0u8; 1];
    let read = timeout(LIMIT, client.read(&mut buf)).await.unwrap();
    assert!(read.is_err(), "the client sees a reset, got {read:?}");
}
