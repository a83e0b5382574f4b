//! Perf over real yamux streams between upgraded connections.

mod common;

use std::time::Duration;

use common::{pair, streams, Sec};
use strata_host::perf::{
    perf_client, perf_client_within, perf_service, PerfError, PerfServed, PERF_PROTOCOL,
};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

const MIB: u64 = 1024 * 1024;
const LONG: Duration = Duration::from_secs(120);

/// 8 MiB up and 8 MiB down; both sides count exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_exact() {
    let p = pair(1, 2, Sec::Noise).await;
    let (mut client, server) = streams(&p.a, &p.b, PERF_PROTOCOL).await;
    let service = tokio::spawn(perf_service(server));
    let result = timeout(LONG, perf_client(&mut client, 8 * MIB, 8 * MIB))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.upload_bytes, 8 * MIB);
    assert_eq!(result.download_bytes, 8 * MIB);
    assert!(result.upload_time > Duration::ZERO && result.download_time > Duration::ZERO);
    let served = timeout(LONG, service).await.unwrap().unwrap().unwrap();
    assert_eq!(
        served,
        PerfServed {
            received: 8 * MIB,
            sent: 8 * MIB
        }
    );
}

/// Uneven and empty transfers count exactly too, over TLS.
#[tokio::test]
async fn uneven_and_empty_transfers() {
    let p = pair(3, 4, Sec::Tls).await;
    for (up, down) in [(0, 0), (1, 0), (0, 1), (100_001, 65_537)] {
        let (mut client, server) = streams(&p.a, &p.b, PERF_PROTOCOL).await;
        let service = tokio::spawn(perf_service(server));
        let r = timeout(LONG, perf_client(&mut client, up, down))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.upload_bytes, r.download_bytes), (up, down));
        let served = timeout(LONG, service).await.unwrap().unwrap().unwrap();
        assert_eq!((served.received, served.sent), (up, down));
    }
}

/// A server that sends fewer bytes than asked for is caught by the client.
#[tokio::test]
async fn short_download_is_typed() {
    let p = pair(5, 6, Sec::Noise).await;
    let (mut client, mut server) = streams(&p.a, &p.b, PERF_PROTOCOL).await;
    let short = tokio::spawn(async move {
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut rest)
            .await
            .unwrap();
        server.write_all(&[0u8; 10]).await.unwrap();
        server.close_write().await.unwrap();
    });
    let got = timeout(LONG, perf_client(&mut client, 5, 20))
        .await
        .unwrap();
    assert!(
        matches!(
            got,
            Err(PerfError::UnexpectedLength {
                expected: 20,
                actual: 10
            })
        ),
        "{got:?}"
    );
    short.await.unwrap();
}

/// A server that never answers makes the client give up after its idle deadline.
#[tokio::test]
async fn silent_server_times_out() {
    let p = pair(7, 8, Sec::Noise).await;
    let (mut client, _silent) = streams(&p.a, &p.b, PERF_PROTOCOL).await;
    let got = timeout(
        LONG,
        perf_client_within(&mut client, 0, 1, Duration::from_millis(200)),
    )
    .await
    .unwrap();
    assert!(matches!(got, Err(PerfError::Timeout(_))), "{got:?}");
}
