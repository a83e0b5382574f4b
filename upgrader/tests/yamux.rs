//! yamux over real bytes: in-memory duplex pipes for most tests, loopback TCP for one.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_core::{CloseReason, ConnError, ConnScope, Direction, PeerId, RawListener, Stream};
use strata_transport::TcpTransport;
use strata_upgrader::{
    MuxedConn, SecureStream, StreamMuxer, Yamux, YamuxConfig, YamuxConfigError, YAMUX_PROTOCOL_ID,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Long enough for a slow CI machine, short enough that a hang fails the test.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn muxed(config: YamuxConfig, io: impl SecureStream, direction: Direction) -> Arc<dyn MuxedConn> {
    Yamux::new(config).unwrap().new_conn(
        Box::new(io),
        direction,
        PeerId::random(),
        Arc::new(ConnScope::unlimited()),
    )
}

/// A dialer (client) and listener (server) connection over an in-memory pipe.
fn pair_with(a: YamuxConfig, b: YamuxConfig) -> (Arc<dyn MuxedConn>, Arc<dyn MuxedConn>) {
    let (x, y) = tokio::io::duplex(1 << 20);
    (
        muxed(a, x, Direction::Outbound),
        muxed(b, y, Direction::Inbound),
    )
}

fn pair() -> (Arc<dyn MuxedConn>, Arc<dyn MuxedConn>) {
    pair_with(YamuxConfig::default(), YamuxConfig::default())
}

/// Opens a stream on `a` and accepts it on `b`; the first write carries yamux's SYN.
async fn open_pair(a: &Arc<dyn MuxedConn>, b: &Arc<dyn MuxedConn>) -> (Stream, Stream) {
    let mut out = within("open", a.open_stream()).await.unwrap();
    out.write_all(b"syn").await.unwrap();
    let mut inb = within("accept", b.accept_stream()).await.unwrap();
    let mut syn = [0u8; 3];
    within("first bytes", inb.read_exact(&mut syn))
        .await
        .unwrap();
    assert_eq!(&syn, b"syn");
    (out, inb)
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

/// Reads everything to EOF, writes it back, closes the write side.
async fn echo(mut s: Stream) -> io::Result<()> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    s.write_all(&buf).await?;
    s.close_write().await
}

fn assert_closed(result: Result<Stream, ConnError>, want: Option<CloseReason>) {
    match result {
        Err(ConnError::Closed { reason, .. }) => {
            if let Some(want) = want {
                assert_eq!(reason, want);
            }
        }
        other => panic!("expected ConnError::Closed, got {other:?}"),
    }
}

#[test]
fn protocol_id_and_invalid_config() {
    assert_eq!(YAMUX_PROTOCOL_ID, "/yamux/1.0.0");
    assert_eq!(Yamux::default().protocol_id(), "/yamux/1.0.0");
    // Settings that cannot work are typed errors.
    let err = Yamux::new(YamuxConfig {
        max_streams: 4,
        max_connection_receive_window: Some(1024),
        ..YamuxConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, YamuxConfigError::WindowTooSmall { .. }));
    let err = Yamux::new(YamuxConfig {
        max_streams: usize::MAX,
        max_connection_receive_window: None,
        ..YamuxConfig::default()
    })
    .unwrap_err();
    assert_eq!(err, YamuxConfigError::TooManyStreams(usize::MAX));
    assert_eq!(
        Yamux::new(YamuxConfig {
            inbound_backlog: 0,
            ..YamuxConfig::default()
        })
        .unwrap_err(),
        YamuxConfigError::ZeroInboundBacklog
    );
    assert_eq!(
        Yamux::new(YamuxConfig {
            split_send_size: 2 << 20,
            ..YamuxConfig::default()
        })
        .unwrap_err(),
        YamuxConfigError::SplitSendSize(2 << 20)
    );
    // A large but consistent configuration is fine.
    Yamux::new(YamuxConfig {
        max_streams: 10_000,
        max_connection_receive_window: None,
        ..YamuxConfig::default()
    })
    .unwrap();
}

#[tokio::test]
async fn open_and_accept_in_both_directions() {
    let (a, b) = pair();
    for (opener, acceptor) in [(&a, &b), (&b, &a)] {
        let (mut out, mut inb) = open_pair(opener, acceptor).await;
        assert_eq!(out.direction(), Direction::Outbound);
        assert_eq!(inb.direction(), Direction::Inbound);
        out.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        within("read hello", inb.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, b"hello");
        inb.write_all(b"world").await.unwrap();
        within("read world", out.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, b"world");
    }
    assert!(!a.is_closed() && !b.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_echo_intact() {
    const OPENERS: usize = 10;
    const PER_OPENER: usize = 10;
    const ACCEPTORS: usize = 4;
    const LEN: usize = 48 * 1024;
    let (a, b) = pair();

    let mut acceptors = Vec::new();
    for _ in 0..ACCEPTORS {
        let b = b.clone();
        acceptors.push(tokio::spawn(async move {
            let mut echoes = Vec::new();
            // Runs until the connection closes at the end of the test.
            while let Ok(s) = b.accept_stream().await {
                echoes.push(tokio::spawn(echo(s)));
            }
            for e in echoes {
                e.await.unwrap().unwrap();
            }
        }));
    }

    let mut openers = Vec::new();
    for t in 0..OPENERS {
        let a = a.clone();
        openers.push(tokio::spawn(async move {
            let mut streams = Vec::new();
            for i in 0..PER_OPENER {
                let n = t * PER_OPENER + i;
                let a = a.clone();
                streams.push(tokio::spawn(async move {
                    let mut s = a.open_stream().await.unwrap();
                    let data = payload(n, LEN);
                    s.write_all(&data).await.unwrap();
                    s.close_write().await.unwrap();
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).await.unwrap();
                    assert!(back == data, "stream {n} came back altered");
                }));
            }
            for s in streams {
                s.await.unwrap();
            }
        }));
    }
    for o in openers {
        within("openers", o).await.unwrap();
    }
    within("close", a.close()).await;
    for acc in acceptors {
        within("acceptors", acc).await.unwrap();
    }
    assert_eq!(within("closed", b.closed()).await, CloseReason::Remote);
}

/// A secured stream that takes at most 7 bytes per write and pushes back every other
/// write (waking the writer at once): every yamux header is cut in two, bodies in many
/// pieces, and a write that took part of a frame is followed by a refusal.
struct Trickle(tokio::io::DuplexStream, bool);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.1 = !self.1;
        if self.1 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = buf.len().min(7);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Writers that find the queue empty write their frames straight into the secured
/// stream; when it takes only part of a frame, the rest must go first, before any other
/// frame. Two streams write at once through a stream that cuts every frame: each must
/// arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_by_a_trickling_stream_arrive_whole() {
    const LEN: usize = 96 * 1024;
    let (x, y) = tokio::io::duplex(300);
    let a = muxed(
        YamuxConfig::default(),
        Trickle(x, false),
        Direction::Outbound,
    );
    let b = muxed(
        YamuxConfig::default(),
        Trickle(y, false),
        Direction::Inbound,
    );
    echo_each_and_check(a, b, &[(LEN, 1000), (LEN, 1337)], false).await;
}

/// Stream `n` sends `len` bytes of `payload(n, len)` from `a` in writes of `write` bytes
/// and closes; `b` echoes every stream (in small reads if `small_reads`); each must come
/// back whole. Then `a` closes and `b`'s echoes all end cleanly.
async fn echo_each_and_check(
    a: Arc<dyn MuxedConn>,
    b: Arc<dyn MuxedConn>,
    streams: &[(usize, usize)],
    small_reads: bool,
) {
    let acceptor = tokio::spawn(async move {
        let mut echoes = Vec::new();
        while let Ok(s) = b.accept_stream().await {
            echoes.push(if small_reads {
                tokio::spawn(echo_in_small_reads(s))
            } else {
                tokio::spawn(echo(s))
            });
        }
        for e in echoes {
            e.await.unwrap().unwrap();
        }
    });
    let mut writers = Vec::new();
    for (n, &(len, write)) in streams.iter().enumerate() {
        let a = a.clone();
        writers.push(tokio::spawn(async move {
            let mut s = a.open_stream().await.unwrap();
            let data = payload(n, len);
            for chunk in data.chunks(write) {
                s.write_all(chunk).await.unwrap();
            }
            s.close_write().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert!(back == data, "stream {n} came back altered");
        }));
    }
    for w in writers {
        within("writers", w).await.unwrap();
    }
    within("close", a.close()).await;
    within("acceptor", acceptor).await.unwrap();
}

/// A secured stream whose reads hand out at most the next of `sizes` bytes each (round
/// and round), so that the reader meets headers and bodies cut at every size, from a few
/// bytes to more than a whole read buffer.
struct CutReads {
    io: tokio::io::DuplexStream,
    sizes: &'static [usize],
    next: usize,
}

impl tokio::io::AsyncRead for CutReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let most = self.sizes[self.next % self.sizes.len()].min(buf.remaining());
        let mut room = vec![0u8; most];
        let mut limited = tokio::io::ReadBuf::new(&mut room);
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, &mut limited);
        if polled.is_ready() {
            self.next += 1;
            buf.put_slice(limited.filled());
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CutReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The rest of a large body is read straight into its stream's buffer, everything else
/// through the read buffer. Bulk streams (256 KiB frames) and a stream of small writes
/// go at once, through reads cut at sizes from 5 bytes to 200 KiB, while the readers
/// take their time: a direct read that ran past its body into the next header, or bytes
/// joined to a stream's buffer in the wrong place, would corrupt a stream or break the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_read_directly_arrive_whole_between_small_frames() {
    const SIZES: &[usize] = &[5, 70_000, 3_000, 200_000, 12, 1_500, 40_000, 17];
    const BULK: usize = 1536 * 1024;
    let (x, y) = tokio::io::duplex(256 * 1024);
    let cut = |io| CutReads {
        io,
        sizes: SIZES,
        next: 0,
    };
    let a = muxed(YamuxConfig::default(), cut(x), Direction::Outbound);
    let b = muxed(YamuxConfig::default(), cut(y), Direction::Inbound);
    let streams = [(BULK, BULK), (BULK, BULK), (64 * 1024, 100)];
    echo_each_and_check(a, b, &streams, true).await;
}

/// Reads everything to EOF in reads of a few KiB, yielding between them (so that the
/// driver appends to a buffer the reader is draining), then writes it back.
async fn echo_in_small_reads(mut s: Stream) -> io::Result<()> {
    let mut all = Vec::new();
    let mut buf = [0u8; 3000];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
        tokio::task::yield_now().await;
    }
    s.write_all(&all).await?;
    s.close_write().await
}

#[tokio::test]
async fn half_close_leaves_the_other_direction_open() {
    let (a, b) = pair();
    let (mut out, mut inb) = open_pair(&a, &b).await;
    out.write_all(b"ping").await.unwrap();
    out.close_write().await.unwrap();
    // Writing after our own half-close fails.
    assert!(out.write_all(b"more").await.is_err());

    let mut got = Vec::new();
    within("read to EOF", inb.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"ping");
    // EOF again on a second read.
    assert_eq!(inb.read(&mut [0u8; 8]).await.unwrap(), 0);

    inb.write_all(b"pong").await.unwrap();
    inb.close_write().await.unwrap();
    let mut back = Vec::new();
    within("read back", out.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"pong");
}

#[tokio::test]
async fn reset_is_an_error_for_the_remote_not_eof() {
    let (a, b) = pair();
    let (mut out, mut inb) = open_pair(&a, &b).await;

    // The remote is blocked in a read when the reset arrives.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let result = inb.read(&mut buf).await;
        (inb, result)
    });
    out.reset();
    let (mut inb, result) = within("remote read after reset", reader).await.unwrap();
    let err = result.expect_err("a reset must not read as a clean EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(inb.write_all(b"late").await.is_err());

    // Our own side fails from now on.
    let err = out.read(&mut [0u8; 4]).await.unwrap_err();
    assert!(err.to_string().contains("stream reset"), "{err}");
    assert!(out.write_all(b"x").await.is_err());

    // The connection itself is unharmed.
    let (mut out2, mut inb2) = open_pair(&a, &b).await;
    out2.write_all(b"ok").await.unwrap();
    let mut got = [0u8; 2];
    within("read on a new stream", inb2.read_exact(&mut got))
        .await
        .unwrap();
}

#[tokio::test]
async fn close_sends_goaway_and_ends_everything_pending() {
    let (a, b) = pair();
    let (mut out, mut inb) = open_pair(&a, &b).await;

    let pending_accept_a = tokio::spawn({
        let a = a.clone();
        async move { a.accept_stream().await }
    });
    let pending_accept_b = tokio::spawn({
        let b = b.clone();
        async move { b.accept_stream().await }
    });
    let pending_read_local = tokio::spawn(async move { out.read(&mut [0u8; 8]).await });
    let pending_read_remote = tokio::spawn(async move { inb.read(&mut [0u8; 8]).await });
    // Let the spawned tasks reach their awaits (they are pending on events that only the
    // close below produces, so no ordering is assumed beyond "they have started").
    tokio::task::yield_now().await;

    within("close", a.close()).await;
    assert!(a.is_closed());
    assert_eq!(within("closed a", a.closed()).await, CloseReason::Local);
    assert_eq!(within("closed b", b.closed()).await, CloseReason::Remote);
    // Idempotent.
    within("close again", a.close()).await;

    assert_closed(
        within("accept a", pending_accept_a).await.unwrap(),
        Some(CloseReason::Local),
    );
    assert_closed(
        within("accept b", pending_accept_b).await.unwrap(),
        Some(CloseReason::Remote),
    );
    assert!(within("local read", pending_read_local)
        .await
        .unwrap()
        .is_err());
    assert!(within("remote read", pending_read_remote)
        .await
        .unwrap()
        .is_err());

    assert_closed(a.open_stream().await, Some(CloseReason::Local));
    assert_closed(b.open_stream().await, Some(CloseReason::Remote));
    assert_closed(b.accept_stream().await, Some(CloseReason::Remote));
}

#[tokio::test]
async fn peer_vanishing_ends_the_connection() {
    let (x, y) = tokio::io::duplex(1 << 20);
    let a = muxed(YamuxConfig::default(), x, Direction::Outbound);
    let mut s = within("open", a.open_stream()).await.unwrap();
    s.write_all(b"into the void").await.unwrap();
    let pending_read = tokio::spawn(async move { s.read(&mut [0u8; 8]).await });
    drop(y);

    let reason = within("closed", a.closed()).await;
    assert!(
        matches!(reason, CloseReason::Remote | CloseReason::Error(_)),
        "{reason:?}"
    );
    assert!(within("pending read", pending_read).await.unwrap().is_err());
    assert_closed(a.open_stream().await, None);
    assert_closed(a.accept_stream().await, None);
}

#[tokio::test]
async fn local_stream_limit_is_a_clean_error() {
    let limited = YamuxConfig {
        max_streams: 2,
        ..YamuxConfig::default()
    };
    let (a, b) = pair_with(limited, YamuxConfig::default());
    let s1 = a.open_stream().await.unwrap();
    let _s2 = a.open_stream().await.unwrap();
    assert!(matches!(
        a.open_stream().await,
        Err(ConnError::StreamLimit { .. })
    ));
    // Dropping a stream frees its slot.
    drop(s1);
    let (mut out, mut inb) = open_pair(&a, &b).await;
    out.write_all(b"!").await.unwrap();
    within("read", inb.read_exact(&mut [0u8; 1])).await.unwrap();
    assert!(!a.is_closed() && !b.is_closed());
}

#[tokio::test]
async fn streams_past_the_remote_limit_are_reset() {
    let limited = YamuxConfig {
        max_streams: 2,
        ..YamuxConfig::default()
    };
    let (a, b) = pair_with(YamuxConfig::default(), limited);
    let mut opened = Vec::new();
    for i in 0..3u8 {
        let mut s = a.open_stream().await.unwrap();
        // yamux sends SYN with the first frame: the remote learns of the stream here.
        s.write_all(&[i]).await.unwrap();
        opened.push(s);
    }
    let mut first = within("accept 1", b.accept_stream()).await.unwrap();
    let _second = within("accept 2", b.accept_stream()).await.unwrap();

    // The third is reset by the remote: reading it fails rather than hanging or reading
    // a clean EOF, and nothing else is disturbed.
    let err = within("read the refused stream", opened[2].read(&mut [0u8; 1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let mut byte = [0u8; 1];
    within("read the first", first.read_exact(&mut byte))
        .await
        .unwrap();
    assert_eq!(byte, [0]);
    first.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    within("echo on the first", opened[0].read_exact(&mut back))
        .await
        .unwrap();
    assert!(!a.is_closed() && !b.is_closed());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (a, b) = pair();
    let (mut out, _inb) = open_pair(&a, &b).await;
    let second = a.clone();
    drop(a);
    // A handle remains: the connection lives on.
    assert!(!second.is_closed());
    drop(second);

    // The driver closes the connection (GoAway) and ends; the remote sees it.
    assert_eq!(
        within("remote closed", b.closed()).await,
        CloseReason::Remote
    );
    // Our stream outlived its connection: it fails instead of hanging.
    assert!(within("read on orphan", out.read(&mut [0u8; 1]))
        .await
        .is_err());
}

#[tokio::test]
async fn inbound_backlog_overflow_resets_streams() {
    let small = YamuxConfig {
        inbound_backlog: 1,
        ..YamuxConfig::default()
    };
    let (a, b) = pair_with(YamuxConfig::default(), small);
    let mut s1 = a.open_stream().await.unwrap();
    s1.write_all(b"1").await.unwrap();
    let mut s2 = a.open_stream().await.unwrap();
    s2.write_all(b"2").await.unwrap();
    // Nobody accepts on b: the first waits in the backlog, the second is reset.
    let err = within("read the overflowed stream", s2.read(&mut [0u8; 1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    let mut first = within("accept", b.accept_stream()).await.unwrap();
    let mut byte = [0u8; 1];
    within("read", first.read_exact(&mut byte)).await.unwrap();
    assert_eq!(&byte, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tcp_echo_and_vanish() {
    let tcp = TcpTransport::default();
    let mut listener = tcp
        .listen_tcp(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.multiaddr().clone();

    // Both sides muxed: a 1 MiB echo.
    let dialed = tcp.dial_tcp(&addr).await.unwrap();
    let accepted = within("accept", listener.accept()).await.unwrap();
    let a = muxed(YamuxConfig::default(), dialed, Direction::Outbound);
    let b = muxed(YamuxConfig::default(), accepted, Direction::Inbound);
    let server = tokio::spawn({
        let b = b.clone();
        async move { echo(b.accept_stream().await.unwrap()).await }
    });
    let mut s = a.open_stream().await.unwrap();
    let data = payload(7, 1 << 20);
    let (mut rd, mut wr) = tokio::io::split(&mut s);
    let send = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = rd.read_to_end(&mut back);
    within("echo", async { tokio::join!(send, recv) })
        .await
        .1
        .unwrap();
    assert!(back == data);
    within("server", server).await.unwrap().unwrap();
    within("close", a.close()).await;
    assert_eq!(
        within("remote closed", b.closed()).await,
        CloseReason::Remote
    );

    // Only one side muxed; the other drops its socket.
    let dialed = tcp.dial_tcp(&addr).await.unwrap();
    let accepted = within("accept", listener.accept()).await.unwrap();
    let a = muxed(YamuxConfig::default(), dialed, Direction::Outbound);
    drop(accepted);
    let reason = within("closed", a.closed()).await;
    assert!(
        matches!(reason, CloseReason::Remote | CloseReason::Error(_)),
        "{reason:?}"
    );
    assert_closed(a.open_stream().await, None);
}

/// Sends `total` bytes over one stream on loopback TCP and returns MiB/s.
async fn tcp_throughput(config: YamuxConfig, total: usize) -> f64 {
    let tcp = TcpTransport::default();
    let mut listener = tcp
        .listen_tcp(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let dialed = tcp.dial_tcp(listener.multiaddr()).await.unwrap();
    let accepted = listener.accept().await.unwrap();
    let a = muxed(config.clone(), dialed, Direction::Outbound);
    let b = muxed(config, accepted, Direction::Inbound);
    let sink = tokio::spawn(async move {
        let mut s = b.accept_stream().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        loop {
            let k = s.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        s.write_all(b"k").await.unwrap();
        s.close_write().await.unwrap();
        n
    });
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut s = a.open_stream().await.unwrap();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.close_write().await.unwrap();
    let mut ack = Vec::new();
    s.read_to_end(&mut ack).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(sink.await.unwrap(), sent);
    a.close().await;
    sent as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// Raw loopback TCP without yamux, as the baseline.
async fn raw_tcp_throughput(total: usize) -> f64 {
    let tcp = TcpTransport::default();
    let mut listener = tcp
        .listen_tcp(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .await
        .unwrap();
    let mut dialed = tcp.dial_tcp(listener.multiaddr()).await.unwrap();
    let mut accepted = listener.accept().await.unwrap();
    let sink = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0;
        loop {
            let k = accepted.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        accepted.write_all(b"k").await.unwrap();
        n
    });
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        dialed.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    dialed.shutdown().await.unwrap();
    let mut ack = [0u8; 1];
    dialed.read_exact(&mut ack).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(sink.await.unwrap(), sent);
    sent as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

/// `cargo test --release -p strata-upgrader --test yamux throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run in release by hand"]
async fn throughput() {
    // 256 MiB unless STRATA_TP_MIB says otherwise (more gives steadier figures).
    let total = std::env::var("STRATA_TP_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(256)
        << 20;
    for round in 0..3 {
        println!("round {round}");
        println!("  raw tcp: {:.0} MiB/s", raw_tcp_throughput(total).await);
        for split in [16 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20] {
            let config = YamuxConfig {
                split_send_size: split,
                ..YamuxConfig::default()
            };
            let mibs = tcp_throughput(config, total).await;
            println!(
                "  yamux split_send_size {:>3} KiB: {mibs:.0} MiB/s",
                split >> 10
            );
        }
    }
}
