//! Ping (`/ipfs/ping/1.0.0`): the initiator sends 32 random bytes, the responder echoes
//! them, and the round trip is the latency. One stream carries any number of pings.

use std::io;
use std::time::Duration;

use rand::RngCore;
use strata_core::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// Protocol ID of ping.
pub const PING_PROTOCOL: &str = "/ipfs/ping/1.0.0";
/// Bytes in one ping.
pub const PING_SIZE: usize = 32;
/// Longest a ping may wait for its echo (rust-libp2p's default ping timeout).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the service waits for the next ping before it gives the stream up, as
/// go-libp2p's ping service (60 s): a silent peer cannot hold the task forever.
pub const PING_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a ping failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The stream failed.
    #[error("ping stream: {0}")]
    Io(#[from] io::Error),
    /// No echo (or, for the service, no ping) in time.
    #[error("ping timed out after {0:?}")]
    Timeout(Duration),
    /// The echo differs from what was sent.
    #[error("ping echo does not match the bytes sent")]
    Mismatch,
    /// The remote closed the stream before echoing in full.
    #[error("remote closed the ping stream before echoing")]
    Closed,
}

/// Sends one ping and waits for its echo, within [`PING_TIMEOUT`]; returns the round trip.
/// Call it again on the same stream for more pings.
pub async fn ping_once<S>(stream: &mut S) -> Result<Duration, PingError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    ping_once_within(stream, PING_TIMEOUT).await
}

/// [`ping_once`] with a deadline of the caller's choosing.
pub async fn ping_once_within<S>(stream: &mut S, deadline: Duration) -> Result<Duration, PingError>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut sent = [0u8; PING_SIZE];
    rand::thread_rng().fill_bytes(&mut sent);
    let exchange = async {
        let start = Instant::now();
        stream.write_all(&sent).await?;
        stream.flush().await?;
        let mut echo = [0u8; PING_SIZE];
        stream.read_exact(&mut echo).await.map_err(eof_is_closed)?;
        let rtt = start.elapsed();
        if echo != sent {
            return Err(PingError::Mismatch);
        }
        Ok(rtt)
    };
    timeout(deadline, exchange)
        .await
        .map_err(|_| PingError::Timeout(deadline))?
}

/// Answers pings on `stream` until the remote closes its write side; returns how many
/// were answered. Each wait for the next ping is bounded by [`PING_IDLE_TIMEOUT`]. Memory
/// is one 32-byte buffer. On error the stream is reset, so the remote sees a failure, not
/// a clean end.
pub async fn ping_service(stream: Stream) -> Result<u64, PingError> {
    ping_service_within(stream, PING_IDLE_TIMEOUT).await
}

/// [`ping_service`] with an idle deadline of the caller's choosing.
pub async fn ping_service_within(mut stream: Stream, idle: Duration) -> Result<u64, PingError> {
    match echo_loop(&mut stream, idle).await {
        Ok(n) => {
            // The remote is done; end our side cleanly. It may already be gone: no matter.
            let _ = stream.close_write().await;
            Ok(n)
        }
        Err(e) => {
            tracing::debug!(error = %e, "ping service ends");
            stream.reset();
            Err(e)
        }
    }
}

async fn echo_loop(stream: &mut Stream, idle: Duration) -> Result<u64, PingError> {
    let mut buf = [0u8; PING_SIZE];
    let mut answered = 0u64;
    loop {
        // Read the first byte apart from the rest: EOF there is the clean end of the
        // stream, EOF later is a ping cut short.
        let n = timeout(idle, stream.read(&mut buf[..1]))
            .await
            .map_err(|_| PingError::Timeout(idle))??;
        if n == 0 {
            return Ok(answered);
        }
        timeout(idle, stream.read_exact(&mut buf[1..]))
            .await
            .map_err(|_| PingError::Timeout(idle))?
            .map_err(eof_is_closed)?;
        timeout(idle, async {
            stream.write_all(&buf).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| PingError::Timeout(idle))??;
        answered += 1;
    }
}

fn eof_is_closed(e: io::Error) -> PingError {
    // A stream that ended before the remote confirmed ping is a refusal, not a ping
    // cut short: keep it whole for the caller (see `Host::ping`).
    if e.kind() == io::ErrorKind::UnexpectedEof && !crate::ProtocolNotConfirmed::is(&e) {
        PingError::Closed
    } else {
        PingError::Io(e)
    }
}
