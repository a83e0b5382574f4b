#![no_main]
//! Ping: the service echoing whatever 32-byte chunks arrive (and a trailing partial
//! one), and the client checking an answer made of the input.

use libfuzzer_sys::fuzz_target;
use strata_host::ping::{ping_once, ping_service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    strata_fuzz::block_on(async move {
        let (a, b) = strata_fuzz::yamux_pair();
        let client = async {
            let Ok(mut s) = a.open_stream().await else { return };
            let _ = s.write_all(&data).await;
            let _ = s.close_write().await;
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back).await;
        };
        let server = async {
            if let Ok(s) = b.accept_stream().await {
                let _ = ping_service(s).await;
            }
        };
        let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, async { tokio::join!(client, server) }).await;
        // The client against an answer made of the input.
        let answer = async {
            if let Ok(mut s) = a.accept_stream().await {
                let mut req = [0u8; 32];
                let _ = s.read_exact(&mut req).await;
                let _ = s.write_all(&data).await;
                let _ = s.close_write().await;
            }
        };
        let ask = async {
            if let Ok(mut s) = b.open_stream().await {
                let _ = ping_once(&mut s).await;
            }
        };
        let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, async { tokio::join!(answer, ask) }).await;
        a.close().await;
        b.close().await;
    });
});
