//! Shared by the WebSocket transport tests.

use std::time::Duration;

use strata_core::{Multiaddr, RawTransport};
use strata_transport::WsTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// Listens on `listen` (a `/ip4/127.0.0.1/tcp/0/...` address), dials what `dial` makes of
/// the bound address, and has the listener echo 100,000 bytes back before it closes.
/// Both sides must see addresses in the listened spelling (the port resolved), the
/// dialer the one it dialed.
pub async fn echo_once(t: &WsTransport, listen: &str, dial: impl Fn(&Multiaddr) -> Multiaddr) {
    let mut l = t
        .listen(&listen.parse::<Multiaddr>().unwrap())
        .await
        .unwrap();
    let addr = l.multiaddr().clone();
    let suffix = listen.trim_start_matches("/ip4/127.0.0.1/tcp/0").to_owned();
    assert!(addr.to_string().ends_with(&suffix), "{addr}");
    assert!(!addr.to_string().contains("/tcp/0/"), "{addr}");
    let server_suffix = suffix.clone();
    let server = tokio::spawn(async move {
        let mut c = l.accept().await.unwrap();
        assert!(c.remote_multiaddr().to_string().ends_with(&server_suffix));
        let mut buf = vec![0u8; 100_000];
        c.read_exact(&mut buf).await.unwrap();
        c.write_all(&buf).await.unwrap();
        c.flush().await.unwrap();
        c.shutdown().await.unwrap();
        // The closing handshake: wait for the client's Close before letting go (our
        // sockets reset on drop, which would destroy what the client has not read).
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
    });
    let target = dial(&addr);
    let mut c = timeout(LIMIT, t.dial(&target)).await.unwrap().unwrap();
    // The dialer's view keeps the spelling it dialed (with or without /sni/).
    assert_eq!(c.remote_multiaddr(), &target);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&data).await.unwrap();
    c.flush().await.unwrap();
    let mut back = Vec::new();
    timeout(LIMIT, c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, data);
    server.await.unwrap();
}
