//! Two real upgraded connections (memory transport, Noise or TLS, yamux) and negotiated
//! streams between them, for the host service tests; and an echo protocol for tests
//! with whole hosts.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use strata_core::identity::keypair_from_seed;
use strata_core::{BoxCapableConn, Keypair, Multiaddr, Stream, Transport};
use strata_transport::MemoryTransport;
use strata_upgrader::multistream::{dialer_select, listener_select};
use strata_upgrader::muxer::yamux::Yamux;
use strata_upgrader::{
    NoiseTransport, SecureTransport, StreamMuxer, TlsTransport, Upgraded, Upgrader, UpgraderConfig,
};
use tokio::time::timeout;

/// Bound on any await that a bug could make hang.
pub const LIMIT: Duration = Duration::from_secs(20);

/// The security protocol of a pair.
#[derive(Clone, Copy, Debug)]
pub enum Sec {
    Tls,
    Noise,
}

fn node(key: &Keypair, sec: Sec) -> Upgraded<MemoryTransport> {
    let security: Arc<dyn SecureTransport> = match sec {
        Sec::Tls => Arc::new(TlsTransport::new(key.clone()).unwrap()),
        Sec::Noise => Arc::new(NoiseTransport::new(key.clone())),
    };
    let muxer: Arc<dyn StreamMuxer> = Arc::new(Yamux::default());
    let up = Upgrader::new(
        key.public().to_peer_id(),
        vec![security],
        vec![muxer],
        UpgraderConfig::default(),
    )
    .unwrap();
    Upgraded::new(MemoryTransport::new(), Arc::new(up))
}

/// A connected pair: (a = dialer, b = listener) with their keys.
pub struct Pair {
    pub ka: Keypair,
    pub kb: Keypair,
    pub a: BoxCapableConn,
    pub b: BoxCapableConn,
}

/// Connects node `seed_a` to node `seed_b` with `sec` and yamux.
pub async fn pair(seed_a: u64, seed_b: u64, sec: Sec) -> Pair {
    let ka = keypair_from_seed(seed_a);
    let kb = keypair_from_seed(seed_b);
    let ta = node(&ka, sec);
    let tb = node(&kb, sec);
    let addr: Multiaddr = "/memory/0".parse().unwrap();
    let mut lb = tb.listen(&addr).await.unwrap();
    let laddr = lb.multiaddr().clone();
    let (a, b) = timeout(LIMIT, async {
        tokio::join!(ta.dial(&laddr, Some(kb.public().to_peer_id())), lb.accept())
    })
    .await
    .expect("connect timed out");
    Pair {
        ka,
        kb,
        a: a.unwrap(),
        b: b.unwrap(),
    }
}

/// Opens a stream from `from`, accepts it on `to`, and negotiates `protocol` on it with
/// multistream-select, as the host will. Returns (opened, accepted).
pub async fn streams(
    from: &BoxCapableConn,
    to: &BoxCapableConn,
    protocol: &str,
) -> (Stream, Stream) {
    timeout(LIMIT, async {
        let open = async {
            let mut s = from.open_stream().await.unwrap();
            let p = dialer_select(&mut s, &[protocol]).await.unwrap();
            s.set_protocol(p);
            s
        };
        let accept = async {
            let mut s = to.accept_stream().await.unwrap();
            let p = listener_select(&mut s, |p| p == protocol, || vec![protocol.to_string()])
                .await
                .unwrap();
            s.set_protocol(p);
            s
        };
        tokio::join!(open, accept)
    })
    .await
    .expect("stream negotiation timed out")
}

/// The echo protocol the host tests serve.
pub const ECHO: &str = "/echo/1.0.0";

/// Serves ECHO on `host`: each stream is read to its end and written back.
pub fn serve_echo(host: &strata_host::Host) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    host.set_stream_handler(ECHO, |mut stream| async move {
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_ok() {
            let _ = stream.write_all(&buf).await;
            let _ = stream.close_write().await;
        }
    });
}

/// Sends `data` to `peer` over a new ECHO stream and returns what came back.
pub async fn echo(host: &strata_host::Host, peer: strata_core::PeerId, data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = timeout(LIMIT, host.new_stream(peer, &[ECHO]))
        .await
        .unwrap()
        .unwrap();
    s.write_all(data).await.unwrap();
    s.close_write().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

/// Asserts that `rt` runs no more tasks than `before`. A task leaves the runtime's count a
/// moment after its future is dropped (which is what shutdowns wait for), so the count is
/// given a few seconds to settle; a leaked task never leaves it.
pub fn assert_tasks_back_to(rt: &tokio::runtime::Runtime, before: usize) {
    let settle = std::time::Instant::now() + Duration::from_secs(5);
    while rt.metrics().num_alive_tasks() != before && std::time::Instant::now() < settle {
        std::thread::yield_now();
    }
    assert_eq!(rt.metrics().num_alive_tasks(), before, "tasks left running");
}
