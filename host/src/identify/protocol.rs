//! Identify over a stream: send our info, receive and check the remote's, and record it.
//!
//! The same two functions serve both protocols; only who sends differs. On
//! [`IDENTIFY_PROTOCOL`](super::IDENTIFY_PROTOCOL) the peer that accepted the stream
//! sends; on [`IDENTIFY_PUSH_PROTOCOL`](super::IDENTIFY_PUSH_PROTOCOL) the peer that
//! opened it does. Either way the sender closes its write side after the message and the
//! receiver reads to that end.

use std::time::Duration;

use strata_core::rcmgr::priority;
use strata_core::{PeerId, ScopeMemory};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::{read_body_reserved, BodyError};

use super::message::{encode_frame, FrameBudget, Identify, IdentifyError, IdentifyInfo};
use crate::peerstore::{
    Peerstore, PeerstoreError, CONNECTED_ADDR_TTL, RECENTLY_CONNECTED_ADDR_TTL, TEMP_ADDR_TTL,
};

/// How long a whole send or receive may take, as go-libp2p's identify
/// `StreamReadTimeout` (60 s): a silent peer cannot hold an identify task for longer.
pub const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `info` as one frame and closes our write side, within [`IDENTIFY_TIMEOUT`].
pub async fn send_identify<S>(stream: &mut S, info: &IdentifyInfo) -> Result<(), IdentifyError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    send_identify_within(stream, info, IDENTIFY_TIMEOUT).await
}

/// [`send_identify`] with a deadline of the caller's choosing.
pub async fn send_identify_within<S>(
    stream: &mut S,
    info: &IdentifyInfo,
    deadline: Duration,
) -> Result<(), IdentifyError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    let frame = encode_frame(info)?;
    let send = async {
        stream.write_all(&frame).await?;
        // shutdown flushes, then half-closes: the receiver reads EOF after the frame.
        stream.shutdown().await?;
        Ok(())
    };
    tokio::time::timeout(deadline, send)
        .await
        .map_err(|_| IdentifyError::Timeout(deadline))?
}

/// Reads the remote's identify frames up to the end of the stream, within
/// [`IDENTIFY_TIMEOUT`], and checks that the key announced is that of `expected_peer`,
/// the authenticated peer of the connection ([`IdentifyError::PeerIdMismatch`] if not).
///
/// Memory is bounded: a length prefix above the limit is refused before anything is
/// allocated for it, and all frames together may not exceed it either.
pub async fn recv_identify<S>(
    stream: &mut S,
    expected_peer: PeerId,
) -> Result<IdentifyInfo, IdentifyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    recv_identify_within(stream, expected_peer, IDENTIFY_TIMEOUT).await
}

/// [`recv_identify`] with a deadline of the caller's choosing.
pub async fn recv_identify_within<S>(
    stream: &mut S,
    expected_peer: PeerId,
    deadline: Duration,
) -> Result<IdentifyInfo, IdentifyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    recv_identify_reserving(stream, expected_peer, deadline, &ScopeMemory::unlimited()).await
}

/// [`recv_identify_within`], reserving what the remote's frames take from `memory` (the
/// stream's scope) as they arrive: a remote that announces the largest message and sends
/// nothing costs nothing.
pub async fn recv_identify_reserving<S>(
    stream: &mut S,
    expected_peer: PeerId,
    deadline: Duration,
    memory: &ScopeMemory,
) -> Result<IdentifyInfo, IdentifyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let msg = tokio::time::timeout(deadline, read_frames(stream, memory))
        .await
        .map_err(|_| IdentifyError::Timeout(deadline))??;
    let info = IdentifyInfo::from_message(msg)?;
    info.check_peer(expected_peer)?;
    Ok(info)
}

async fn read_frames<S>(stream: &mut S, memory: &ScopeMemory) -> Result<Identify, IdentifyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut budget = FrameBudget::default();
    let mut msg = Identify::default();
    // What the decoded message holds: about what its frames carried.
    let mut decoded = memory.empty();
    while let Some(len) = read_length(stream).await? {
        let len = budget.admit(len)?;
        let (body, _held) = read_body_reserved(stream, len, memory)
            .await
            .map_err(|e| match e {
                BodyError::Resource(e) => IdentifyError::Resource(e),
                BodyError::Truncated => IdentifyError::Truncated,
                BodyError::Io(e) => eof_is_truncated(e),
            })?;
        decoded.grow(len, priority::ALWAYS)?;
        prost::Message::merge(&mut msg, body)?;
    }
    Ok(msg)
}

/// Reads one length prefix a byte at a time (so nothing past it is consumed). `None` on a
/// clean end of stream before its first byte.
async fn read_length<S>(stream: &mut S) -> Result<Option<u64>, IdentifyError>
where
    S: AsyncRead + Unpin + ?Sized,
{
    Ok(crate::varint::read(stream).await?)
}

fn eof_is_truncated(e: std::io::Error) -> IdentifyError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        IdentifyError::Truncated
    } else {
        IdentifyError::Io(e)
    }
}

/// Records what `peer` announced, as go-libp2p's identify does on receipt:
///
/// * its key (checked against `peer`: a mismatch changes nothing and is returned);
/// * its listen addresses, with [`CONNECTED_ADDR_TTL`] while `connected` (the usual case:
///   identify runs on a live connection) or [`RECENTLY_CONNECTED_ADDR_TTL`] if the
///   connection has closed meanwhile. Addresses it announced before and no longer does
///   drop to [`TEMP_ADDR_TTL`], so they fade out instead of lingering;
/// * its protocols, replacing those known before;
/// * its agent and protocol versions.
pub fn apply_to_peerstore(
    ps: &Peerstore,
    peer: PeerId,
    info: &IdentifyInfo,
    connected: bool,
) -> Result<(), PeerstoreError> {
    ps.add_pub_key(peer, info.public_key.clone())?;
    ps.set_protocols(peer, &info.protocols)?;
    let ttl = if connected {
        CONNECTED_ADDR_TTL
    } else {
        RECENTLY_CONNECTED_ADDR_TTL
    };
    ps.update_addrs(peer, CONNECTED_ADDR_TTL, TEMP_ADDR_TTL);
    ps.update_addrs(peer, RECENTLY_CONNECTED_ADDR_TTL, TEMP_ADDR_TTL);
    ps.add_addrs(peer, &info.listen_addrs, ttl);
    ps.set_agent_version(peer, info.agent_version.clone());
    ps.set_protocol_version(peer, info.protocol_version.clone());
    Ok(())
}
