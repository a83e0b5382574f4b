//! Sizes a remote picks do not become allocations: this binary counts the largest single
//! allocation the process makes, and the services must stay far below what was asked.

mod common;

use std::time::Duration;

use common::{pair, streams, Sec, LIMIT};
use strata_core::sys::CountingAllocator;
use strata_host::identify::{recv_identify, IdentifyError, IDENTIFY_PROTOCOL};
use strata_host::perf::{perf_service, PERF_PROTOCOL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Well above any buffer the stack uses (yamux windows, 64 KiB blocks), far below what
/// the hostile peers ask for.
const CEILING: usize = 4 * 1024 * 1024;

/// Both scenarios in one test, so that no other test of this binary allocates meanwhile.
#[tokio::test]
async fn remote_sizes_are_not_allocated() {
    // Identify: a frame that claims 1 GiB is refused without allocating it.
    let p = pair(1, 2, Sec::Noise).await;
    let (mut asker, mut answerer) = streams(&p.a, &p.b, IDENTIFY_PROTOCOL).await;
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(1 << 30, &mut prefix);
    answerer.write_all(&prefix).await.unwrap();
    answerer.write_all(&[0u8; 1024]).await.unwrap();
    answerer.flush().await.unwrap();
    let got = timeout(LIMIT, recv_identify(&mut asker, p.a.remote_peer()))
        .await
        .unwrap();
    assert!(
        matches!(got, Err(IdentifyError::MessageTooLarge { .. })),
        "{got:?}"
    );

    // Perf: a client asks for u64::MAX bytes, reads 1 MiB of them, then goes away.
    let p = pair(3, 4, Sec::Noise).await;
    let (mut client, server) = streams(&p.a, &p.b, PERF_PROTOCOL).await;
    let service = tokio::spawn(perf_service(server));
    client.write_all(&u64::MAX.to_be_bytes()).await.unwrap();
    client.write_all(&[7u8; 1000]).await.unwrap();
    client.close_write().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < 1024 * 1024 {
        let n = timeout(LIMIT, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server sends until told to stop");
        got += n;
    }
    // Closing the connection is how a real client stops a download it asked too much of.
    p.a.close().await;
    let served = timeout(Duration::from_secs(30), service)
        .await
        .expect("the server must stop once the client is gone")
        .unwrap();
    assert!(served.is_err(), "the transfer was cut: {served:?}");

    let largest = CountingAllocator::largest();
    eprintln!("largest allocation: {largest} bytes");
    assert!(
        largest < CEILING,
        "largest allocation {largest} bytes, ceiling {CEILING}"
    );
}
