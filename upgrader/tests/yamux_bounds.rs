//! The yamux muxer against tight memory and hostile peers: windows reserved from the
//! resource scope (a connection short of memory gets a smaller window, never a failed
//! transfer), streams refused when their window cannot be reserved, data that arrived
//! before a close still read, and a raw peer sending frames that break the protocol,
//! flood pings or write to streams that do not exist.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{
    CloseReason, ConnError, ConnScope, Direction, Multiaddr, PeerId, ResourceManager,
};
use strata_rcmgr::{BasicResourceManager, LimitConfig, ScopeLimit};
use strata_upgrader::muxer::yamux::frame::{flags, FrameType, Header, HEADER_LEN};
use strata_upgrader::{MuxedConn, SecureStream, StreamMuxer, Yamux, YamuxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn muxed(
    config: YamuxConfig,
    io: impl SecureStream,
    direction: Direction,
    scope: ConnScope,
) -> Arc<dyn MuxedConn> {
    Yamux::new(config)
        .unwrap()
        .new_conn(Box::new(io), direction, PeerId::random(), Arc::new(scope))
}

fn some_addr() -> Multiaddr {
    "/ip4/10.0.0.1/tcp/1".parse().unwrap()
}

/// A resource manager whose connections may hold `conn_memory` bytes.
fn tight(conn_memory: u64) -> BasicResourceManager {
    let mut limits = LimitConfig::unlimited();
    limits.conn = ScopeLimit::memory_only(conn_memory);
    BasicResourceManager::new(limits).unwrap()
}

fn scope_of(m: &BasicResourceManager) -> ConnScope {
    m.open_connection(Direction::Inbound, true, &some_addr())
        .unwrap()
}

/// Buffers a driver books for the connection's life (its read buffer and the control
/// frames that may wait; defaults). A receiver's write queue holds control frames only,
/// which that covers.
const DRIVER_BUFFERS: u64 = 128 * 1024 + 32 * 1024;
const WINDOW: u64 = 256 * 1024;

/// A connection limit under which windows (reserved at `HIGH` priority, the last fifth
/// kept for the connection's own buffers) may reach exactly `bytes` with the buffers.
fn windows_up_to(bytes: u64) -> u64 {
    (bytes * 256).div_ceil(204)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_short_of_memory_moves_64_mib_with_a_small_window() {
    // The receiver may hold its buffers and two initial windows: no room to grow.
    let receiver_rcmgr = tight(DRIVER_BUFFERS + 2 * WINDOW);
    let generous = tight(u64::MAX);
    let (x, y) = tokio::io::duplex(1 << 20);
    let a = muxed(
        YamuxConfig::default(),
        x,
        Direction::Outbound,
        scope_of(&generous),
    );
    let b = muxed(
        YamuxConfig::default(),
        y,
        Direction::Inbound,
        scope_of(&receiver_rcmgr),
    );
    const TOTAL: usize = 64 << 20;
    let sink = tokio::spawn({
        let b = b.clone();
        let rcmgr = receiver_rcmgr.clone();
        async move {
            let mut s = b.accept_stream().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            let mut peak = 0u64;
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                for (i, byte) in buf[..n].iter().enumerate() {
                    assert_eq!(*byte, ((got + i) % 251) as u8, "corrupt at {}", got + i);
                }
                got += n;
                peak = peak.max(rcmgr.stat().system.memory);
            }
            (got, peak)
        }
    });
    let mut s = within("open", a.open_stream()).await.unwrap();
    let chunk: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    within("send", s.write_all(&chunk)).await.unwrap();
    s.close_write().await.unwrap();
    let (got, peak) = within("receive", sink).await.unwrap();
    assert_eq!(got, TOTAL);
    assert!(
        peak <= DRIVER_BUFFERS + 2 * WINDOW,
        "the receiver held {peak} bytes"
    );
    a.close().await;
    // The receiver's driver releases its reservations when it ends; closing only the
    // sender would race with the receiver noticing the GoAway.
    b.close().await;
    assert!(receiver_rcmgr.stat().system.is_empty());
}

#[tokio::test]
async fn a_stream_that_cannot_reserve_even_the_smallest_window_is_refused() {
    // Room for the buffers and exactly two stream windows on each side.
    let ra = tight(windows_up_to(DRIVER_BUFFERS + 2 * WINDOW));
    let rb = tight(windows_up_to(DRIVER_BUFFERS + 2 * WINDOW));
    let (x, y) = tokio::io::duplex(1 << 20);
    let a = muxed(
        YamuxConfig::default(),
        x,
        Direction::Outbound,
        scope_of(&ra),
    );
    let b = muxed(YamuxConfig::default(), y, Direction::Inbound, scope_of(&rb));
    // b opens one stream itself, so it can take only one from a.
    let _own = within("b opens", b.open_stream()).await.unwrap();
    let mut s1 = a.open_stream().await.unwrap();
    let mut s2 = a.open_stream().await.unwrap();
    // A third outbound stream is a typed resource error, not a failure of the connection.
    let err = a.open_stream().await.unwrap_err();
    assert!(matches!(err, ConnError::Resource { .. }), "{err}");
    s1.write_all(b"first").await.unwrap();
    s2.write_all(b"second").await.unwrap();
    let mut first = within("accept", b.accept_stream()).await.unwrap();
    let mut buf = [0u8; 5];
    within("read", first.read_exact(&mut buf)).await.unwrap();
    // The second is reset: b has no memory for its window.
    let err = within("refused stream", s2.read(&mut [0u8; 1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(!a.is_closed() && !b.is_closed());
    // Freeing a stream frees its window.
    drop(first);
    drop(s1);
    let mut s3 = within("open again", async {
        loop {
            match a.open_stream().await {
                Ok(s) => return s,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    s3.write_all(b"third").await.unwrap();
    let mut third = within("accept again", b.accept_stream()).await.unwrap();
    let mut buf = [0u8; 5];
    within("read third", third.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"third");
}

#[tokio::test]
async fn data_sent_just_before_a_close_is_still_read() {
    for _ in 0..20 {
        let (x, y) = tokio::io::duplex(1 << 20);
        let a = muxed(
            YamuxConfig::default(),
            x,
            Direction::Outbound,
            ConnScope::unlimited(),
        );
        let b = muxed(
            YamuxConfig::default(),
            y,
            Direction::Inbound,
            ConnScope::unlimited(),
        );
        let mut s = a.open_stream().await.unwrap();
        s.write_all(b"last words").await.unwrap();
        s.close_write().await.unwrap();
        // Close at once, as a peer that says its piece and leaves.
        within("close", a.close()).await;
        let mut inb = within("accept", b.accept_stream()).await.unwrap();
        let mut got = Vec::new();
        within("read", inb.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words");
        assert_eq!(within("closed", b.closed()).await, CloseReason::Remote);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_short_of_memory_gets_a_smaller_window_not_a_reset() {
    // Room for b's buffers, one full window (its own stream) and a 64 KiB one.
    let rb = tight(windows_up_to(DRIVER_BUFFERS + WINDOW + 64 * 1024));
    let generous = tight(u64::MAX);
    let (x, y) = tokio::io::duplex(1 << 20);
    let a = muxed(
        YamuxConfig::default(),
        x,
        Direction::Outbound,
        scope_of(&generous),
    );
    let b = muxed(YamuxConfig::default(), y, Direction::Inbound, scope_of(&rb));
    let _own = within("b opens", b.open_stream()).await.unwrap();
    // 4 MiB in 32 KiB pieces, each answered before the next: b never holds more than a
    // piece, so its 64 KiB window is enough, for the first 256 KiB as for the rest.
    let mut s = a.open_stream().await.unwrap();
    s.write_all(&[1u8; 32 * 1024]).await.unwrap();
    let mut inb = within("accept", b.accept_stream()).await.unwrap();
    let mut piece = vec![0u8; 32 * 1024];
    let mut peak = 0;
    for round in 0..128 {
        if round > 0 {
            within("send", s.write_all(&[1u8; 32 * 1024]))
                .await
                .unwrap();
        }
        within("receive", inb.read_exact(&mut piece)).await.unwrap();
        inb.write_all(b"k").await.unwrap();
        let mut k = [0u8; 1];
        within("answer", s.read_exact(&mut k)).await.unwrap();
        peak = peak.max(rb.stat().system.memory);
    }
    // Its buffers, its own stream's window, the 64 KiB one, and one step of write queue
    // for its answers.
    assert!(
        peak <= DRIVER_BUFFERS + WINDOW + 64 * 1024 + 64 * 1024,
        "b held {peak} bytes"
    );
    assert!(!a.is_closed() && !b.is_closed());

    // A sender that fills the specification's 256 KiB at once while nothing is read:
    // more than the memory there is, so that stream (only) is reset.
    drop(inb);
    drop(s);
    let mut t = within("open", a.open_stream()).await.unwrap();
    t.write_all(&[2u8; 1024]).await.unwrap();
    let _second = within("accept", b.accept_stream()).await.unwrap();
    let blast = t.write_all(&[2u8; 255 * 1024]);
    let _ = within("blast", blast).await;
    let err = within("the reset", t.read(&mut [0u8; 1]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert!(!a.is_closed() && !b.is_closed());
    assert!(rb.stat().system.memory <= DRIVER_BUFFERS + WINDOW + 64 * 1024 + 64 * 1024);
}

#[tokio::test]
async fn buffered_data_stays_charged_after_the_connection_ends_until_it_is_read() {
    let rb = tight(u64::MAX);
    let (x, y) = tokio::io::duplex(1 << 20);
    let a = muxed(
        YamuxConfig::default(),
        x,
        Direction::Outbound,
        ConnScope::unlimited(),
    );
    let b = muxed(YamuxConfig::default(), y, Direction::Inbound, scope_of(&rb));
    let mut s = a.open_stream().await.unwrap();
    s.write_all(&[7u8; 200 * 1024]).await.unwrap();
    s.close_write().await.unwrap();
    let mut inb = within("accept", b.accept_stream()).await.unwrap();
    let mut first = [0u8; 1];
    within("first byte", inb.read_exact(&mut first))
        .await
        .unwrap();
    within("close", a.close()).await;
    within("b ends", b.closed()).await;
    // The connection no longer counts as one, but the unread bytes are still held, and
    // charged: at least what is unread, at most the stream's window.
    let stat = rb.stat();
    assert_eq!(stat.system.conns(), 0, "{stat:?}");
    assert!(
        stat.system.memory >= 200 * 1024 - 1 && stat.system.memory <= WINDOW,
        "{stat:?}"
    );
    let mut rest = Vec::new();
    within("the rest", inb.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest.len(), 200 * 1024 - 1);
    assert_eq!(rb.stat().system.memory, 0, "drained: nothing held");
    drop(inb);
    assert!(rb.stat().system.is_empty());
}

/// A connection driven by us against a raw peer whose bytes the test writes.
fn against_raw() -> (Arc<dyn MuxedConn>, DuplexStream) {
    against_raw_with(YamuxConfig::default())
}

fn against_raw_with(config: YamuxConfig) -> (Arc<dyn MuxedConn>, DuplexStream) {
    let (x, y) = tokio::io::duplex(64 * 1024);
    let conn = muxed(config, x, Direction::Inbound, ConnScope::unlimited());
    (conn, y)
}

#[tokio::test]
async fn a_refused_stream_opened_again_breaks_the_protocol() {
    // Four streams fill the limit; stream 9 is refused with a reset. IDs are never
    // reused, so a SYN for 9 again is a protocol error, not another reset to queue.
    let config = YamuxConfig {
        max_streams: 4,
        ..YamuxConfig::default()
    };
    let (conn, raw) = against_raw_with(config);
    let (mut rd, mut wr) = tokio::io::split(raw);
    for id in [1u32, 3, 5, 7, 9] {
        wr.write_all(&frame(FrameType::WindowUpdate, flags::SYN, id, 0))
            .await
            .unwrap();
    }
    let mut buf = [0u8; HEADER_LEN];
    loop {
        within("the reset", rd.read_exact(&mut buf)).await.unwrap();
        let h = Header::decode(&buf).unwrap();
        if h.stream == 9 {
            assert!(h.has(flags::RST));
            break;
        }
    }
    assert!(!conn.is_closed());
    wr.write_all(&frame(FrameType::WindowUpdate, flags::SYN, 9, 0))
        .await
        .unwrap();
    ends_with_error(&conn, "opened again after it was refused").await;
}

#[tokio::test]
async fn streams_opened_and_dropped_by_a_peer_that_never_reads_stop_our_reading() {
    // Each stream the remote opens and we accept and drop queues an acknowledgement and
    // a reset. A remote that never reads them is held back once 16 KiB of them wait:
    // its writes stall, nothing of ours grows, and after close_timeout without a byte
    // read the connection is closed.
    let config = YamuxConfig {
        close_timeout: Duration::from_millis(1500),
        ..YamuxConfig::default()
    };
    let (conn, raw) = against_raw_with(config);
    let (_rd, mut wr) = tokio::io::split(raw);
    let acceptor = tokio::spawn({
        let conn = conn.clone();
        async move {
            let mut taken = 0u32;
            while let Ok(s) = conn.accept_stream().await {
                drop(s);
                taken += 1;
            }
            taken
        }
    });
    const STREAMS: u32 = 100_000;
    let flood: Vec<u8> = (0..STREAMS)
        .flat_map(|i| frame(FrameType::WindowUpdate, flags::SYN, 2 * i + 1, 0))
        .collect();
    let mut writer = tokio::spawn(async move { wr.write_all(&flood).await.map(|_| wr) });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut writer)
            .await
            .is_err(),
        "a peer that does not read got all its streams read"
    );
    ends_with_error(&conn, "read none of our frames").await;
    let taken = within("acceptor", acceptor).await.unwrap();
    // 64 KiB of our answers fit the pipe, 16 KiB more wait in the queue (24 bytes a
    // stream), and a few more may be in flight: far fewer than were sent.
    assert!(taken < 5_000, "{taken} streams taken");
    drop(writer);
}

fn frame(typ: FrameType, fl: u16, stream: u32, length: u32) -> [u8; HEADER_LEN] {
    Header::new(typ, fl, stream, length).encode()
}

async fn ends_with_error(conn: &Arc<dyn MuxedConn>, needle: &str) {
    match within("the connection ends", conn.closed()).await {
        CloseReason::Error(text) => assert!(text.contains(needle), "{text}"),
        other => panic!("expected an error mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_that_break_the_protocol_end_the_connection_with_a_typed_error() {
    // A header of another version.
    let (conn, mut raw) = against_raw();
    let mut bad = frame(FrameType::Ping, flags::SYN, 0, 1);
    bad[0] = 7;
    raw.write_all(&bad).await.unwrap();
    ends_with_error(&conn, "version").await;

    // More data than the stream's window.
    let (conn, mut raw) = against_raw();
    raw.write_all(&frame(FrameType::Data, flags::SYN, 1, 0))
        .await
        .unwrap();
    raw.write_all(&frame(FrameType::Data, 0, 1, 256 * 1024 + 1))
        .await
        .unwrap();
    ends_with_error(&conn, "window").await;

    // A stream of our parity (we are the server: even IDs are ours).
    let (conn, mut raw) = against_raw();
    raw.write_all(&frame(FrameType::WindowUpdate, flags::SYN, 2, 0))
        .await
        .unwrap();
    ends_with_error(&conn, "parity").await;

    // The same stream opened twice.
    let (conn, mut raw) = against_raw();
    for _ in 0..2 {
        raw.write_all(&frame(FrameType::WindowUpdate, flags::SYN, 3, 0))
            .await
            .unwrap();
    }
    ends_with_error(&conn, "twice").await;

    // A window credit that overflows.
    let (conn, mut raw) = against_raw();
    raw.write_all(&frame(FrameType::WindowUpdate, flags::SYN, 5, 0))
        .await
        .unwrap();
    raw.write_all(&frame(FrameType::WindowUpdate, 0, 5, u32::MAX))
        .await
        .unwrap();
    ends_with_error(&conn, "overflow").await;

    // A connection that ends inside a frame.
    let (conn, mut raw) = against_raw();
    raw.write_all(&frame(FrameType::Data, flags::SYN, 7, 100))
        .await
        .unwrap();
    raw.write_all(b"only part").await.unwrap();
    drop(raw);
    ends_with_error(&conn, "inside a frame").await;
}

#[tokio::test]
async fn a_ping_flood_from_a_peer_that_never_reads_is_pushed_back_and_fully_answered() {
    let (conn, raw) = against_raw();
    let (mut rd, mut wr) = tokio::io::split(raw);
    // 200,000 pings (2.4 MB), each with its own value. While the flooder reads nothing,
    // our answers fill the pipe (64 KiB), a few more wait in our queue, and then we stop
    // reading: the flood cannot all be written, and nothing of ours grows.
    const PINGS: u32 = 200_000;
    let flood: Vec<u8> = (0..PINGS)
        .flat_map(|i| frame(FrameType::Ping, flags::SYN, 0, i))
        .collect();
    let mut writer = tokio::spawn(async move {
        wr.write_all(&flood).await.unwrap();
        wr
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut writer)
            .await
            .is_err(),
        "a peer that does not read got its whole flood read"
    );
    assert!(!conn.is_closed());
    // Once the flooder reads, the flood goes through and every ping is answered, in order.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = 0u32;
    while answered < PINGS {
        let n = within("answers", rd.read(&mut buf)).await.unwrap();
        assert!(n > 0, "the connection ended after {answered} answers");
        got.extend_from_slice(&buf[..n]);
        let whole = got.len() / HEADER_LEN * HEADER_LEN;
        for h in got[..whole].chunks_exact(HEADER_LEN) {
            let h = Header::decode(h.try_into().unwrap()).unwrap();
            if h.typ == FrameType::Ping && h.has(flags::ACK) {
                assert_eq!(h.length, answered, "answers out of order");
                answered += 1;
            }
        }
        got.drain(..whole);
    }
    within("the flood", writer).await.unwrap();
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn data_for_unknown_streams_is_dropped_and_answered_with_a_reset() {
    let (conn, raw) = against_raw();
    let (mut rd, mut wr) = tokio::io::split(raw);
    // Data on stream 9, never opened, then a real stream that must still work.
    wr.write_all(&frame(FrameType::Data, 0, 9, 4))
        .await
        .unwrap();
    wr.write_all(b"junk").await.unwrap();
    wr.write_all(&frame(FrameType::Data, flags::SYN, 11, 2))
        .await
        .unwrap();
    wr.write_all(b"ok").await.unwrap();
    let mut s = within("accept", conn.accept_stream()).await.unwrap();
    let mut two = [0u8; 2];
    within("read", s.read_exact(&mut two)).await.unwrap();
    assert_eq!(&two, b"ok");
    // Among what we sent back: a reset for stream 9.
    let mut seen_rst = false;
    let mut buf = [0u8; HEADER_LEN];
    while !seen_rst {
        within("read a frame", rd.read_exact(&mut buf))
            .await
            .unwrap();
        let h = Header::decode(&buf).unwrap();
        seen_rst = h.stream == 9 && h.has(flags::RST);
    }
}

#[tokio::test]
async fn a_body_larger_than_any_buffer_arrives_whole() {
    // go-yamux sends a whole window in one frame; grant 4 MiB, then send it at once.
    let (conn, raw) = against_raw();
    let (mut rd, mut wr) = tokio::io::split(raw);
    let body: Vec<u8> = (0..(4usize << 20)).map(|i| (i % 253) as u8).collect();
    let reader = tokio::spawn({
        let conn = conn.clone();
        async move {
            let mut s = conn.accept_stream().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        }
    });
    // Open with 256 KiB in the SYN frame, then read our window updates until the
    // remaining 3.75 MiB fit, and send them as one frame with FIN.
    let first = 256 * 1024;
    wr.write_all(&frame(FrameType::Data, flags::SYN, 1, first as u32))
        .await
        .unwrap();
    wr.write_all(&body[..first]).await.unwrap();
    let mut credit = 0u64;
    let mut buf = [0u8; HEADER_LEN];
    let rest = (body.len() - first) as u64;
    let mut sent = first;
    while sent < body.len() {
        within("a window update", rd.read_exact(&mut buf))
            .await
            .unwrap();
        let h = Header::decode(&buf).unwrap();
        if h.typ == FrameType::WindowUpdate && h.stream == 1 {
            credit += u64::from(h.length);
        }
        let n = credit.min(rest - (sent - first) as u64) as usize;
        if n > 0 {
            let fin = if sent + n == body.len() {
                flags::FIN
            } else {
                0
            };
            wr.write_all(&frame(FrameType::Data, fin, 1, n as u32))
                .await
                .unwrap();
            wr.write_all(&body[sent..sent + n]).await.unwrap();
            sent += n;
            credit -= n as u64;
        }
    }
    let got = within("the stream's whole body", reader).await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the body arrived corrupted");
}
