//! The in-memory transport.

use strata_core::{Multiaddr, RawListener, RawTransport, TransportError};
use strata_transport::MemoryTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ma(s: &str) -> Multiaddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn dial_listen_and_exchange_bytes() {
    let t = MemoryTransport::new();
    let mut listener = t.listen(&ma("/memory/0")).await.unwrap();
    let addr = listener.multiaddr().clone();
    assert_ne!(addr, ma("/memory/0"), "port 0 is replaced by a real port");
    let mut client = t.dial(&addr).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(client.remote_multiaddr(), &addr);
    assert_eq!(server.local_multiaddr(), &addr);
    assert_eq!(server.remote_multiaddr(), client.local_multiaddr());
    client.write_all(b"ping").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping");
    server.write_all(b"pong").await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"pong");
}

#[tokio::test]
async fn closing_the_listener_refuses_dials_and_frees_the_port() {
    let t = MemoryTransport::new();
    let mut listener = t.listen_memory(&ma("/memory/0")).unwrap();
    let addr = listener.multiaddr().clone();
    assert!(matches!(
        t.listen_memory(&addr),
        Err(TransportError::AddrInUse { .. })
    ));
    listener.close();
    assert!(matches!(
        listener.accept().await,
        Err(TransportError::ListenerClosed { .. })
    ));
    match t.dial_memory(&addr) {
        Err(TransportError::Dial { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a refused dial, got {other:?}"),
    }
    // The port is free again.
    let again = t.listen_memory(&addr).unwrap();
    assert_eq!(again.multiaddr(), &addr);
    drop(again);
    assert!(
        t.dial_memory(&addr).is_err(),
        "dropping a listener closes it too"
    );
}

#[tokio::test]
async fn bad_memory_addresses_are_typed_errors() {
    let t = MemoryTransport::new();
    for bad in ["/ip4/127.0.0.1/tcp/1", "/memory/1/tcp/2"] {
        let addr = ma(bad);
        assert!(!t.can_dial(&addr));
        assert!(matches!(t.dial(&addr).await, Err(TransportError::Addr(_))));
    }
    assert!(t.can_dial(&ma("/memory/12")));
}
