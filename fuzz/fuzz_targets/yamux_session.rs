#![no_main]
//! The yamux session: whatever bytes a remote sends, as a byte stream into a live
//! connection whose streams are accepted and read, and written back to. The connection
//! must end (with an error or cleanly) without a panic, and nothing it buffers may
//! outgrow its windows.

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata_core::{ConnScope, Direction, PeerId};
use strata_upgrader::{StreamMuxer, Yamux};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&side, wire)) = data.split_first() else {
        return;
    };
    let direction = if side % 2 == 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let wire = wire.to_vec();
    strata_fuzz::block_on(async move {
        let (mut remote, ours) = tokio::io::duplex(1 << 16);
        let conn = Yamux::default().new_conn(
            Box::new(ours),
            direction,
            PeerId::random(),
            Arc::new(ConnScope::unlimited()),
        );
        let feed = async move {
            let _ = remote.write_all(&wire).await;
            let _ = remote.shutdown().await;
            // Drain what we answer until the connection is gone.
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = remote.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let serve = {
            let conn = conn.clone();
            async move {
                while let Ok(mut s) = conn.accept_stream().await {
                    let mut buf = vec![0u8; 1024];
                    if let Ok(n) = s.read(&mut buf).await {
                        let _ = s.write_all(&buf[..n]).await;
                    }
                    s.reset();
                }
            }
        };
        let opener = {
            let conn = conn.clone();
            async move {
                if let Ok(mut s) = conn.open_stream().await {
                    let _ = s.write_all(b"hello").await;
                    let _ = s.close_write().await;
                }
            }
        };
        let _ = tokio::time::timeout(strata_fuzz::RUN_LIMIT, async {
            tokio::join!(feed, serve, opener);
        })
        .await;
        conn.close().await;
    });
});
