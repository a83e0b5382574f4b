//! A differential test of Strata's yamux against the `yamux` crate (the one rust-libp2p
//! uses): the same frames, written by a remote dialer, go to each implementation acting
//! as the listener, and both must deliver exactly what the remote sent.
//!
//! A [`Script`] is a sequence of remote actions that the yamux specification allows:
//! streams opened with SYN, data within the initial 256 KiB window, window updates,
//! pings, and a FIN on every stream. The frames are encoded here from the specification,
//! not with either implementation's codec. Each implementation accepts every stream and
//! reads it to the end; the outcome is each stream's bytes, in the order the streams
//! were opened, and the opaque values of the pings it answered. Both outcomes must equal
//! the script's own, which makes a three-way comparison: Strata, the crate, the model.
//!
//! [`Script::from_bytes`] turns arbitrary bytes into a valid script, for the fuzz
//! target; property tests generate scripts with proptest.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use strata_core::{ConnScope, Direction, PeerId};
use strata_upgrader::{StreamMuxer, Yamux};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// The window every yamux stream starts with.
const INITIAL_WINDOW: usize = 256 * 1024;
/// The most one script sends on a stream: within the initial window, so that the
/// outcome never depends on when either side grants more.
const MAX_STREAM_BYTES: usize = INITIAL_WINDOW - 4096;
/// Streams per script: below either implementation's backlog of unaccepted streams.
pub const MAX_STREAMS: usize = 32;
/// How long one implementation may take to run a script.
const RUN_LIMIT: Duration = Duration::from_secs(20);

const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const TYPE_GO_AWAY: u8 = 3;
const FLAG_SYN: u16 = 1;
const FLAG_ACK: u16 = 2;
const FLAG_FIN: u16 = 4;
const HEADER_LEN: usize = 12;

/// One action of the remote dialer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Opens the next stream (a window update with SYN and no extra window).
    Open,
    /// Opens the next stream with its first data in the SYN frame.
    OpenWithData {
        /// Bytes in the frame.
        len: u16,
        /// The byte they repeat (with their offset mixed in).
        seed: u8,
    },
    /// Data on the open stream `stream` (an index, modulo the streams still open).
    Data {
        /// Which open stream.
        stream: u8,
        /// Bytes in the frame (cut to what the window allows).
        len: u16,
        /// The byte they repeat (with their offset mixed in).
        seed: u8,
    },
    /// A window update granting the listener `delta` more bytes on `stream`.
    WindowUpdate {
        /// Which open stream.
        stream: u8,
        /// The extra window.
        delta: u16,
    },
    /// A ping the listener must answer with the same opaque value.
    Ping {
        /// The opaque value.
        opaque: u32,
    },
    /// Half-closes `stream`: data, then FIN.
    Fin {
        /// Which open stream.
        stream: u8,
    },
}

/// What an implementation did with a script, or what the script says it must do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Each stream's bytes, in the order the streams were opened.
    pub streams: Vec<Vec<u8>>,
    /// The opaque values of the pings answered, in order.
    pub ping_acks: Vec<u32>,
}

/// A valid sequence of remote frames and the outcome it must have.
#[derive(Debug, Clone)]
pub struct Script {
    /// The frames, as the remote writes them.
    pub wire: Vec<u8>,
    /// What a correct listener delivers.
    pub expected: Outcome,
}

fn header(kind: u8, flags: u16, stream: u32, length: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[1] = kind;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

fn payload(seed: u8, offset: usize, len: usize) -> impl Iterator<Item = u8> {
    (offset..offset + len).map(move |i| seed ^ (i % 251) as u8)
}

impl Script {
    /// Encodes `ops` into frames, skipping what the specification would not allow (data
    /// past the window, actions on streams not open), and closing every stream with a
    /// FIN at the end.
    pub fn new(ops: &[Op]) -> Script {
        let mut wire = Vec::new();
        let mut expected = Outcome::default();
        // Streams still open for writing: (index in `expected.streams`, yamux id).
        let mut open: Vec<(usize, u32)> = Vec::new();
        let mut next_id = 1u32;
        let mut opened = 0usize;
        let data = |wire: &mut Vec<u8>,
                    expected: &mut Outcome,
                    (index, id): (usize, u32),
                    flags: u16,
                    len: u16,
                    seed: u8| {
            let sent = expected.streams[index].len();
            let len = usize::from(len).min(MAX_STREAM_BYTES - sent);
            wire.extend_from_slice(&header(TYPE_DATA, flags, id, len as u32));
            let bytes: Vec<u8> = payload(seed, sent, len).collect();
            wire.extend_from_slice(&bytes);
            expected.streams[index].extend_from_slice(&bytes);
        };
        for op in ops {
            match *op {
                Op::Open | Op::OpenWithData { .. } if opened < MAX_STREAMS => {
                    let stream = (expected.streams.len(), next_id);
                    expected.streams.push(Vec::new());
                    open.push(stream);
                    next_id += 2;
                    opened += 1;
                    match *op {
                        Op::OpenWithData { len, seed } => {
                            data(&mut wire, &mut expected, stream, FLAG_SYN, len, seed)
                        }
                        _ => wire.extend_from_slice(&header(
                            TYPE_WINDOW_UPDATE,
                            FLAG_SYN,
                            stream.1,
                            0,
                        )),
                    }
                }
                Op::Open | Op::OpenWithData { .. } => {}
                Op::Data { stream, len, seed } if !open.is_empty() => {
                    let s = open[usize::from(stream) % open.len()];
                    data(&mut wire, &mut expected, s, 0, len, seed);
                }
                Op::WindowUpdate { stream, delta } if !open.is_empty() => {
                    let (_, id) = open[usize::from(stream) % open.len()];
                    wire.extend_from_slice(&header(TYPE_WINDOW_UPDATE, 0, id, u32::from(delta)));
                }
                Op::Ping { opaque } => {
                    wire.extend_from_slice(&header(TYPE_PING, FLAG_SYN, 0, opaque));
                    expected.ping_acks.push(opaque);
                }
                Op::Fin { stream } if !open.is_empty() => {
                    let (_, id) = open.remove(usize::from(stream) % open.len());
                    wire.extend_from_slice(&header(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0));
                }
                Op::Data { .. } | Op::WindowUpdate { .. } | Op::Fin { .. } => {}
            }
        }
        for (_, id) in open {
            wire.extend_from_slice(&header(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0));
        }
        Script { wire, expected }
    }

    /// A script from arbitrary bytes (for fuzzing): each op takes a tag byte and up to
    /// four argument bytes; a short tail is ignored.
    pub fn from_bytes(bytes: &[u8]) -> Script {
        let ops: Vec<Op> = bytes
            .chunks_exact(5)
            .map(|c| {
                let (a, b) = (c[1], u16::from_be_bytes([c[2], c[3]]));
                match c[0] % 6 {
                    0 => Op::Open,
                    1 => Op::OpenWithData {
                        len: b % 8192,
                        seed: c[4],
                    },
                    2 => Op::Data {
                        stream: a,
                        len: b % 8192,
                        seed: c[4],
                    },
                    3 => Op::WindowUpdate {
                        stream: a,
                        delta: b,
                    },
                    4 => Op::Ping {
                        opaque: u32::from_be_bytes([c[1], c[2], c[3], c[4]]),
                    },
                    _ => Op::Fin { stream: a },
                }
            })
            .collect();
        Script::new(&ops)
    }

    /// The number of streams the script opens.
    pub fn streams(&self) -> usize {
        self.expected.streams.len()
    }
}

/// Plays the remote: writes the script and closes its side, meanwhile reads what the
/// listener answers until it closes too, and returns the opaque values of its ping
/// answers.
async fn remote(mut io: DuplexStream, wire: Vec<u8>) -> Result<Vec<u32>, String> {
    let (mut rd, mut wr) = tokio::io::split(&mut io);
    let write = async {
        wr.write_all(&wire)
            .await
            .map_err(|e| format!("writing the script: {e}"))?;
        // The remote is done: its end of the connection tells the listener so, after
        // every frame (each stream has had its FIN, so no data is cut short).
        wr.shutdown()
            .await
            .map_err(|e| format!("closing the script: {e}"))
    };
    let read = async {
        let mut answer = Vec::new();
        // The listener ends the connection once it has read every stream; a reset counts
        // as that end too.
        let _ = rd.read_to_end(&mut answer).await;
        answer
    };
    let (written, answer) = tokio::join!(write, read);
    written?;
    let mut acks = Vec::new();
    let mut at = 0;
    while let Some(h) = answer.get(at..at + HEADER_LEN) {
        let kind = h[1];
        let flags = u16::from_be_bytes([h[2], h[3]]);
        let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        at += HEADER_LEN;
        match kind {
            TYPE_DATA => at += length as usize,
            TYPE_PING if flags & FLAG_ACK != 0 => acks.push(length),
            TYPE_WINDOW_UPDATE | TYPE_PING | TYPE_GO_AWAY => {}
            other => return Err(format!("the listener sent a frame of type {other}")),
        }
    }
    Ok(acks)
}

/// The remote's outcome, once the listener has closed the connection (bounded, in case
/// an implementation keeps it open).
async fn remote_outcome(
    who: &str,
    remote: tokio::task::JoinHandle<Result<Vec<u32>, String>>,
) -> Result<Vec<u32>, String> {
    tokio::time::timeout(RUN_LIMIT, remote)
        .await
        .map_err(|_| format!("{who}: the connection was never closed"))?
        .map_err(|e| format!("remote: {e}"))?
        .map_err(|e| format!("{who}: {e}"))
}

/// Runs `script` against Strata's yamux as the listener.
pub async fn run_strata(script: &Script) -> Result<Outcome, String> {
    const WHO: &str = "strata";
    let (theirs, ours) = tokio::io::duplex(1 << 16);
    let conn = Yamux::default().new_conn(
        Box::new(ours),
        Direction::Inbound,
        PeerId::random(),
        Arc::new(ConnScope::unlimited()),
    );
    let remote = tokio::spawn(remote(theirs, script.wire.clone()));
    let listener = async {
        let mut readers = Vec::new();
        for _ in 0..script.streams() {
            let mut s = conn
                .accept_stream()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.map(|_| got)
            }));
        }
        let mut streams = Vec::new();
        for r in readers {
            let got = r.await.map_err(|e| format!("reader: {e}"))?;
            streams.push(got.map_err(|e| format!("read: {e}"))?);
        }
        // Run until the remote's end has been read, so every frame has been handled.
        conn.closed().await;
        conn.close().await;
        Ok::<_, String>(streams)
    };
    let streams = tokio::time::timeout(RUN_LIMIT, listener)
        .await
        .map_err(|_| "strata: timed out".to_string())??;
    let ping_acks = remote_outcome(WHO, remote).await?;
    Ok(Outcome { streams, ping_acks })
}

/// Runs `script` against the `yamux` crate as the listener.
pub async fn run_yamux_crate(script: &Script) -> Result<Outcome, String> {
    const WHO: &str = "yamux crate";
    use futures::AsyncReadExt as _;
    let (theirs, ours) = tokio::io::duplex(1 << 16);
    let mut conn =
        yamux::Connection::new(ours.compat(), yamux::Config::default(), yamux::Mode::Server);
    let remote = tokio::spawn(remote(theirs, script.wire.clone()));
    let wanted = script.streams();
    let listener = async {
        let mut readers = Vec::new();
        // The connection makes progress only while polled: keep polling it until the
        // remote's end has been read, so every frame has been handled.
        loop {
            let next = tokio::time::timeout(
                Duration::from_millis(5),
                poll_fn(|cx| conn.poll_next_inbound(cx)),
            )
            .await;
            match next {
                Ok(Some(Ok(mut s))) => readers.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.map(|_| got)
                })),
                Ok(Some(Err(yamux::ConnectionError::Closed))) if readers.len() == wanted => break,
                Ok(Some(Err(e))) => return Err(format!("yamux crate: {e}")),
                // The remote's end, read after all its frames: what the streams
                // buffered stays readable.
                Ok(None) if readers.len() == wanted => break,
                Ok(None) => {
                    return Err(format!(
                        "yamux crate: the connection ended after {} of {wanted} streams",
                        readers.len()
                    ))
                }
                Err(_) => {}
            }
        }
        let mut streams = Vec::new();
        for r in readers {
            let got = r.await.map_err(|e| format!("reader: {e}"))?;
            streams.push(got.map_err(|e| format!("read: {e}"))?);
        }
        let _ = poll_fn(|cx| conn.poll_close(cx)).await;
        Ok::<_, String>(streams)
    };
    let streams = tokio::time::timeout(RUN_LIMIT, listener)
        .await
        .map_err(|_| "yamux crate: timed out".to_string())??;
    let ping_acks = remote_outcome(WHO, remote).await?;
    Ok(Outcome { streams, ping_acks })
}

/// Runs `script` against both implementations and checks both against the model.
pub async fn differential(script: &Script) -> Result<(), String> {
    let ours = run_strata(script).await?;
    let theirs = run_yamux_crate(script).await?;
    let summary = |o: &Outcome| {
        (
            o.streams.iter().map(Vec::len).collect::<Vec<_>>(),
            o.ping_acks.clone(),
        )
    };
    if theirs != script.expected {
        return Err(format!(
            "the yamux crate differs from the model: {:?} against {:?}",
            summary(&theirs),
            summary(&script.expected)
        ));
    }
    if ours != theirs {
        return Err(format!(
            "strata differs from the yamux crate: {:?} against {:?}",
            summary(&ours),
            summary(&theirs)
        ));
    }
    Ok(())
}
