#![no_main]
//! The perf server reading a client's request (an 8-byte size, then an upload to EOF)
//! from whatever bytes arrive, and the perf client reading a server's answer.

use libfuzzer_sys::fuzz_target;
use strata_host::perf::{perf_client, perf_service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let data = data.to_vec();
    strata_fuzz::block_on(async move {
        // A real yamux pair gives the service a real Stream.
        let (a, b) = strata_fuzz::yamux_pair();
        let client = async {
            let Ok(mut s) = a.open_stream().await else { return };
            let _ = s.write_all(&data).await;
            let _ = s.close_write().await;
            let mut sink = vec![0u8; 4096];
            // The service answers with at most what was asked; read a bounded amount.
            let mut total = 0usize;
            while let Ok(n) = s.read(&mut sink).await {
                total += n;
                if n == 0 || total > 1 << 20 {
                    break;
                }
            }
        };
        let server = async {
            if let Ok(s) = b.accept_stream().await {
                let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, perf_service(s)).await;
            }
        };
        let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, async { tokio::join!(client, server) }).await;
        // The other way: a server that answers with the input.
        let (c, d) = strata_fuzz::yamux_pair();
        let answer = async {
            if let Ok(mut s) = d.accept_stream().await {
                let mut req = Vec::new();
                let _ = s.read_to_end(&mut req).await;
                let _ = s.write_all(&data).await;
                let _ = s.close_write().await;
            }
        };
        let ask = async {
            if let Ok(mut s) = c.open_stream().await {
                let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, perf_client(&mut s, 16, 64)).await;
            }
        };
        let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, async { tokio::join!(answer, ask) }).await;
        for conn in [a, b, c, d] {
            conn.close().await;
        }
    });
});
