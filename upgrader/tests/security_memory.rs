//! What TLS and Noise really allocate per connection, by a counting allocator, against
//! what they reserve: during handshakes, and during bulk transfers both ways with every
//! buffer busy. The reservation must cover the real memory (the books may round up, never
//! down).
//!
//! One test at a time: the allocator counts the whole process.

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use strata_core::identity::keypair_from_seed;
use strata_core::rcmgr::MemoryOps;
use strata_core::sys::CountingAllocator;
use strata_core::{ResourceError, ScopeMemory};
use strata_transport::TcpTransport;
use strata_upgrader::security::tls::TLS_BUFFERS;
use strata_upgrader::{NoiseTransport, SecureTransport, SecurityScope, TlsTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A scope that allows everything and counts what is reserved.
#[derive(Default)]
struct Books(AtomicIsize);

impl MemoryOps for Books {
    fn reserve_memory(&self, size: usize, _: u8) -> Result<(), ResourceError> {
        self.0.fetch_add(size as isize, Ordering::Relaxed);
        Ok(())
    }
    fn release_memory(&self, size: usize) {
        self.0.fetch_sub(size as isize, Ordering::Relaxed);
    }
}

const PAIRS: usize = 16;
const BULK: usize = 4 << 20;

/// `PAIRS` connections secured by `make` over TCP on loopback; returns the peak of live
/// bytes per connection side during the handshakes and during a bulk transfer both
/// ways, beyond what was live before, and what the books held at most per side.
async fn measure(make: fn(u64) -> Arc<dyn SecureTransport>) -> (isize, isize, isize) {
    let tcp = TcpTransport::default();
    let mut listener =
        strata_core::RawTransport::listen(&tcp, &"/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .await
            .unwrap();
    let addr = listener.multiaddr().clone();
    let books = Arc::new(Books::default());
    let memory = ScopeMemory::new(books.clone());
    let server = make(1);
    let client = make(2);
    let client_peer = keypair_from_seed(2).public().to_peer_id();
    let _ = client_peer;
    // Application buffers first, so they are in the baseline.
    let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..2 * PAIRS)
        .map(|_| (vec![7u8; 64 * 1024], vec![0u8; 64 * 1024]))
        .collect();
    let mut raws = Vec::new();
    for _ in 0..PAIRS {
        let (dialed, accepted) = tokio::join!(
            strata_core::RawTransport::dial(&tcp, &addr),
            strata_core::RawListener::accept(&mut *listener)
        );
        raws.push((dialed.unwrap(), accepted.unwrap()));
    }
    tokio::task::yield_now().await;
    let base = CountingAllocator::live();
    CountingAllocator::reset_peak();
    let handshakes = raws.into_iter().map(|(d, a)| {
        let (server, client, memory) = (server.clone(), client.clone(), memory.clone());
        async move {
            let scope_c = SecurityScope::new(memory.clone(), Default::default());
            let scope_s = SecurityScope::new(memory, Default::default());
            let (c, s) = tokio::join!(
                client.secure_outbound_scoped(d, None, &[], &scope_c),
                server.secure_inbound_scoped(a, &[], &scope_s)
            );
            (c.unwrap().io, s.unwrap().io)
        }
    });
    let streams = futures::future::join_all(handshakes).await;
    let handshake_peak = CountingAllocator::peak() - base;
    let base = CountingAllocator::live();
    CountingAllocator::reset_peak();
    let mut books_peak = books.0.load(Ordering::SeqCst);
    let mut sides = Vec::new();
    for (c, s) in streams {
        sides.push(c);
        sides.push(s);
    }
    let transfers = sides
        .into_iter()
        .zip(bufs.iter_mut())
        .map(|(io, (wbuf, rbuf))| async move {
            let (mut r, mut w) = tokio::io::split(io);
            let write = async {
                let mut sent = 0;
                while sent < BULK {
                    w.write_all(wbuf).await.unwrap();
                    sent += wbuf.len();
                }
                w.flush().await.unwrap();
            };
            let read = async {
                let mut got = 0;
                while got < BULK {
                    let n = r.read(rbuf).await.unwrap();
                    assert!(n > 0);
                    got += n;
                }
            };
            tokio::join!(write, read);
            (r, w)
        });
    let sampler = async {
        loop {
            books_peak = books_peak.max(books.0.load(Ordering::SeqCst));
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let kept = tokio::select! {
        kept = futures::future::join_all(transfers) => kept,
        _ = sampler => unreachable!(),
    };
    let bulk_peak = CountingAllocator::peak() - base;
    drop(kept);
    let sides = (2 * PAIRS) as isize;
    (
        handshake_peak / sides,
        bulk_peak / sides,
        books_peak / sides,
    )
}

fn tls(seed: u64) -> Arc<dyn SecureTransport> {
    Arc::new(TlsTransport::new(keypair_from_seed(seed)).unwrap())
}

fn noise(seed: u64) -> Arc<dyn SecureTransport> {
    Arc::new(NoiseTransport::new(keypair_from_seed(seed)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reserves_at_least_what_it_allocates() {
    let _serial = SERIAL.lock().await;
    let (handshake, bulk, books) = measure(tls).await;
    eprintln!(
        "TLS per connection side: handshake peak {} KiB, bulk peak {} KiB, reserved {} KiB (TLS_BUFFERS {} KiB)",
        handshake / 1024,
        bulk / 1024,
        books / 1024,
        TLS_BUFFERS / 1024
    );
    assert!(books >= TLS_BUFFERS as isize);
    assert!(
        handshake <= TLS_BUFFERS as isize && bulk <= TLS_BUFFERS as isize,
        "TLS holds more than it reserves: handshake {handshake}, bulk {bulk}, reserved {TLS_BUFFERS}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_reserves_at_least_what_it_allocates() {
    let _serial = SERIAL.lock().await;
    let (handshake, bulk, books) = measure(noise).await;
    eprintln!(
        "Noise per connection side: handshake peak {} KiB, bulk peak {} KiB, reserved at most {} KiB",
        handshake / 1024,
        bulk / 1024,
        books / 1024
    );
    // The books follow the buffers as they come and go; the sampler may miss a
    // moment's peak, so a frame's worth of slack.
    assert!(
        bulk <= books + 70 * 1024,
        "Noise holds more than it reserves: bulk {bulk}, reserved {books}"
    );
    // The handshake no longer allocates two whole Noise messages (128 KiB).
    assert!(handshake < 32 * 1024, "handshake peak {handshake}");
}
