//! Perf (`/perf/1.0.0`), the libp2p throughput protocol: the client writes a big-endian
//! u64 (how many bytes it wants back), uploads its bytes and closes its write side; the
//! server drains to that end, then sends the bytes asked for and closes.
//!
//! Both sides stream through one fixed 64 KiB buffer: no per-byte work, and the server
//! never allocates the amount asked for (a client may ask for `u64::MAX`, which is
//! legal; it simply stops reading, and the server's writes fail or time out).

use std::io;
use std::time::Duration;

use strata_core::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// Protocol ID of perf.
pub const PERF_PROTOCOL: &str = "/perf/1.0.0";
/// Size of the blocks read and written.
pub const PERF_BLOCK_SIZE: usize = 64 * 1024;
/// Longest any single read or write may make no progress before the transfer is given
/// up. It bounds idleness, not the transfer: a large, slow transfer that keeps moving is
/// never cut.
pub const PERF_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What is sent: the content does not matter (the security layer encrypts it anyway), and
/// a static block spares an allocation per transfer.
static ZEROS: [u8; PERF_BLOCK_SIZE] = [0; PERF_BLOCK_SIZE];

/// Why a perf run failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The stream failed.
    #[error("perf stream: {0}")]
    Io(#[from] io::Error),
    /// A read or write made no progress in time.
    #[error("perf transfer idle for {0:?}")]
    Timeout(Duration),
    /// The stream ended before the 8-byte header.
    #[error("perf stream ended before the 8-byte header")]
    ShortHeader,
    /// The server sent another amount than asked for.
    #[error("perf download: asked for {expected} bytes, got {actual}")]
    UnexpectedLength {
        /// Bytes asked for.
        expected: u64,
        /// Bytes received (when more, counted up to the first excess block).
        actual: u64,
    },
}

/// The measurements of one perf run, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerfResult {
    /// Bytes uploaded.
    pub upload_bytes: u64,
    /// Bytes downloaded.
    pub download_bytes: u64,
    /// From the start to our write side closed (header and upload sent).
    pub upload_time: Duration,
    /// From our write side closed to the server's end of stream.
    pub download_time: Duration,
}

impl PerfResult {
    /// Upload and download together.
    pub fn total_time(&self) -> Duration {
        self.upload_time + self.download_time
    }
}

/// What the server did on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerfServed {
    /// Bytes the client uploaded.
    pub received: u64,
    /// Bytes sent back.
    pub sent: u64,
}

/// Runs the client side: asks for `download` bytes, uploads `upload` bytes, closes our
/// write side, then reads the server's bytes to its end and checks the count.
pub async fn perf_client<S>(
    stream: &mut S,
    upload: u64,
    download: u64,
) -> Result<PerfResult, PerfError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    perf_client_within(stream, upload, download, PERF_IDLE_TIMEOUT).await
}

/// [`perf_client`] with an idle deadline of the caller's choosing.
pub async fn perf_client_within<S>(
    stream: &mut S,
    upload: u64,
    download: u64,
    idle: Duration,
) -> Result<PerfResult, PerfError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    bounded(idle, stream.write_all(&download.to_be_bytes())).await?;
    send_bytes(stream, upload, idle).await?;
    bounded(idle, stream.shutdown()).await?;
    let upload_time = start.elapsed();
    let got = drain(stream, idle, Some(download)).await?;
    let download_time = start.elapsed().saturating_sub(upload_time);
    if got != download {
        return Err(PerfError::UnexpectedLength {
            expected: download,
            actual: got,
        });
    }
    Ok(PerfResult {
        upload_bytes: upload,
        download_bytes: got,
        upload_time,
        download_time,
    })
}

/// Serves one perf stream: reads the header, drains the upload to its end, sends the
/// bytes asked for, and closes. On error the stream is reset.
pub async fn perf_service(stream: Stream) -> Result<PerfServed, PerfError> {
    perf_service_within(stream, PERF_IDLE_TIMEOUT).await
}

/// [`perf_service`] with an idle deadline of the caller's choosing.
pub async fn perf_service_within(
    mut stream: Stream,
    idle: Duration,
) -> Result<PerfServed, PerfError> {
    match serve(&mut stream, idle).await {
        Ok(served) => Ok(served),
        Err(e) => {
            tracing::debug!(error = %e, "perf service ends");
            stream.reset();
            Err(e)
        }
    }
}

async fn serve(stream: &mut Stream, idle: Duration) -> Result<PerfServed, PerfError> {
    let mut header = [0u8; 8];
    bounded(idle, stream.read_exact(&mut header))
        .await
        .map_err(|e| match e {
            PerfError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => PerfError::ShortHeader,
            e => e,
        })?;
    let requested = u64::from_be_bytes(header);
    let received = drain(stream, idle, None).await?;
    send_bytes(stream, requested, idle).await?;
    bounded(idle, stream.shutdown()).await?;
    Ok(PerfServed {
        received,
        sent: requested,
    })
}

/// Writes `n` bytes, a block at a time.
async fn send_bytes<S>(stream: &mut S, mut n: u64, idle: Duration) -> Result<(), PerfError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    while n > 0 {
        let len = n.min(PERF_BLOCK_SIZE as u64) as usize;
        bounded(idle, stream.write_all(&ZEROS[..len])).await?;
        n -= len as u64;
    }
    Ok(())
}

/// Reads to the end of the stream and counts. With `limit`, stops with an error as soon
/// as more than that arrives, instead of reading on.
async fn drain<S>(stream: &mut S, idle: Duration, limit: Option<u64>) -> Result<u64, PerfError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut buf = vec![0u8; PERF_BLOCK_SIZE];
    let mut total = 0u64;
    loop {
        let n = bounded(idle, stream.read(&mut buf)).await?;
        if n == 0 {
            return Ok(total);
        }
        total = total.saturating_add(n as u64);
        if let Some(expected) = limit.filter(|&l| total > l) {
            return Err(PerfError::UnexpectedLength {
                expected,
                actual: total,
            });
        }
    }
}

async fn bounded<T>(
    idle: Duration,
    op: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, PerfError> {
    Ok(timeout(idle, op)
        .await
        .map_err(|_| PerfError::Timeout(idle))??)
}
