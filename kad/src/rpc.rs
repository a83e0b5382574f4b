//! Messages on streams: reading one under the memory rule, writing one, and the client
//! side's requests, with one stream per peer kept for the next request as go-libp2p's
//! message sender does (a reused stream that turns out to be gone is replaced once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_core::{PeerId, Reservation, Stream};
use strata_host::messaging::FrameError;
use strata_host::messaging::{read_message_body, read_message_len};
use strata_host::{Host, TEMP_ADDR_TTL};
use tokio::io::AsyncWriteExt;

use crate::error::RpcError;
use crate::proto::{self, DecodeError, Message, MessageType, PeerInfo};

/// The resource-manager service DHT streams and stores are charged to (go-libp2p's name).
pub const SERVICE_NAME: &str = "libp2p.dht";

/// Decoding a message holds, besides its body, at most this much more (the bounded peer
/// lists, see [`proto::decode_body`]); it is reserved with the body.
const DECODE_OVERHEAD: usize = 64 << 10;

/// Idle streams kept for reuse, in all.
const MAX_IDLE_STREAMS: usize = 256;
/// An idle stream older than this is not reused (servers close idle streams: go after a
/// minute, js after ten seconds).
const IDLE_REUSE: Duration = Duration::from_secs(8);

/// Reads one message from `stream`: `None` at a clean end between messages. The length
/// is checked against `max` before anything is allocated; the body and its decoding are
/// reserved from the stream's memory, held until the message has been decoded.
pub async fn read_message(stream: &mut Stream, max: usize) -> Result<Option<Message>, RpcError> {
    let memory = stream.scope().memory().clone();
    let len = match read_message_len(stream, max).await {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(e) => return Err(frame_error(e, max)),
    };
    let decoding: Reservation = memory
        .reserve(
            DECODE_OVERHEAD.min(len * 2),
            strata_core::rcmgr::priority::ALWAYS,
        )
        .map_err(|e| RpcError::Resource(e.to_string()))?;
    let (body, _held) = read_message_body(stream, len, &memory)
        .await
        .map_err(|e| frame_error(e, max))?;
    let msg = proto::decode_body(&body)?;
    drop(decoding);
    Ok(Some(msg))
}

fn frame_error(e: FrameError, max: usize) -> RpcError {
    match e {
        FrameError::TooLarge { len, .. } => RpcError::Decode(DecodeError::TooLarge { len, max }),
        FrameError::InvalidLength => RpcError::Decode(DecodeError::InvalidLength),
        FrameError::Resource(e) => RpcError::Resource(e.to_string()),
        FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            RpcError::Decode(DecodeError::Truncated)
        }
        FrameError::Io(e) => RpcError::Io(e),
    }
}

/// Writes one message (length-prefixed) and flushes it.
pub async fn write_message(stream: &mut Stream, msg: &Message) -> std::io::Result<()> {
    stream.write_all(&proto::encode(msg)).await?;
    stream.flush().await
}

/// Counters of what the client side sent.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub messages: AtomicU64,
    pub streams: AtomicU64,
    pub dials: AtomicU64,
    pub failures: AtomicU64,
}

/// What the DHT has sent so far, for comparing ways of doing the same work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KadStats {
    /// Requests that wait for an answer (FIND_NODE, GET_VALUE, GET_PROVIDERS, PUT_VALUE).
    pub requests: u64,
    /// Messages sent, requests and one-way messages (ADD_PROVIDER) together.
    pub messages: u64,
    /// Streams opened.
    pub streams: u64,
    /// Peers we were not connected to when a message was due: connections opened.
    pub dials: u64,
    /// Requests that failed (no answer, a bad answer, no connection).
    pub failures: u64,
}

impl KadStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &KadStats) -> KadStats {
        KadStats {
            requests: self.requests - earlier.requests,
            messages: self.messages - earlier.messages,
            streams: self.streams - earlier.streams,
            dials: self.dials - earlier.dials,
            failures: self.failures - earlier.failures,
        }
    }
}

/// The client side: sends requests to peers.
pub(crate) struct Client {
    host: Host,
    protocol: String,
    max_message: usize,
    timeout: Duration,
    idle: Mutex<HashMap<PeerId, (Stream, Instant)>>,
    pub(crate) counters: Counters,
}

impl Client {
    pub(crate) fn new(host: Host, protocol: String, max_message: usize, timeout: Duration) -> Self {
        Client {
            host,
            protocol,
            max_message,
            timeout,
            idle: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    pub(crate) fn stats(&self) -> KadStats {
        let c = &self.counters;
        KadStats {
            requests: c.requests.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            streams: c.streams.load(Ordering::Relaxed),
            dials: c.dials.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, (Stream, Instant)>> {
        // Streams only; a panic elsewhere leaves nothing half-done.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self, peer: &PeerId) -> Option<Stream> {
        let (stream, since) = self.idle().remove(peer)?;
        (since.elapsed() < IDLE_REUSE).then_some(stream)
    }

    fn put_idle(&self, peer: PeerId, stream: Stream) {
        let mut idle = self.idle();
        if idle.len() >= MAX_IDLE_STREAMS && !idle.contains_key(&peer) {
            // Full: the oldest goes.
            if let Some(oldest) = idle.iter().min_by_key(|(_, (_, t))| *t).map(|(p, _)| *p) {
                idle.remove(&oldest);
            }
        }
        idle.insert(peer, (stream, Instant::now()));
    }

    /// Drops idle streams too old to reuse.
    pub(crate) fn prune_idle(&self) {
        self.idle().retain(|_, (_, t)| t.elapsed() < IDLE_REUSE);
    }

    /// Drops every kept stream.
    pub(crate) fn clear_idle(&self) {
        self.idle().clear();
    }

    /// Forgets the idle stream to `peer` (it left).
    pub(crate) fn forget(&self, peer: &PeerId) {
        self.idle().remove(peer);
    }

    async fn open(&self, peer: &PeerInfo) -> Result<Stream, RpcError> {
        if !peer.addrs.is_empty() {
            self.host
                .peerstore()
                .add_addrs(peer.id, &peer.addrs, TEMP_ADDR_TTL);
        }
        if !self.host.peerstore().is_connected(&peer.id) {
            self.counters.dials.fetch_add(1, Ordering::Relaxed);
        }
        let stream = self
            .host
            .new_stream_optimistic(peer.id, &self.protocol)
            .await
            .map_err(|source| RpcError::Open {
                peer: peer.id,
                source: Box::new(source),
            })?;
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = stream.scope().set_service(SERVICE_NAME) {
            let mut stream = stream;
            stream.reset();
            return Err(RpcError::Resource(e.to_string()));
        }
        Ok(stream)
    }

    /// Sends `msg` to `peer` and reads its answer, on a kept stream if there is one,
    /// within the request timeout.
    pub(crate) async fn request(
        &self,
        peer: &PeerInfo,
        msg: &Message,
    ) -> Result<Message, RpcError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let out = tokio::time::timeout(self.timeout, self.exchange(peer, msg)).await;
        let out = match out {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout),
        };
        if out.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Sends `msgs` to `peer`, none answered (ADD_PROVIDER), on one stream.
    pub(crate) async fn send(&self, peer: &PeerInfo, msgs: &[Message]) -> Result<(), RpcError> {
        let out = tokio::time::timeout(self.timeout, self.exchange_many(peer, msgs)).await;
        let out = out.unwrap_or(Err(RpcError::Timeout));
        if out.is_err() {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Writes `msgs` on a kept stream or a new one, then closes its write side: nothing
    /// answers these, so the stream is not kept (a kept stream may later be dropped,
    /// which resets it, and a reset lets the remote drop what it has not read yet; the
    /// close lets it read everything first).
    async fn exchange_many(&self, peer: &PeerInfo, msgs: &[Message]) -> Result<(), RpcError> {
        let mut bytes = Vec::new();
        for m in msgs {
            bytes.extend_from_slice(&proto::encode(m));
        }
        if let Some(mut stream) = self.take_idle(&peer.id) {
            if Self::write_and_close(&mut stream, &bytes).await.is_ok() {
                self.counters
                    .messages
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                return Ok(());
            }
            // A kept stream the server closed meanwhile: once more on a new one.
            stream.reset();
        }
        let mut stream = self.open(peer).await?;
        match Self::write_and_close(&mut stream, &bytes).await {
            Ok(()) => {
                self.counters
                    .messages
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                stream.reset();
                Err(e.into())
            }
        }
    }

    async fn write_and_close(stream: &mut Stream, bytes: &[u8]) -> std::io::Result<()> {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        stream.close_write().await
    }

    async fn exchange(&self, peer: &PeerInfo, msg: &Message) -> Result<Message, RpcError> {
        if let Some(mut stream) = self.take_idle(&peer.id) {
            match self.on_stream(&mut stream, msg).await {
                Ok(answer) => {
                    self.put_idle(peer.id, stream);
                    return Ok(answer);
                }
                // A kept stream the server closed meanwhile: once more on a new one.
                Err(
                    RpcError::Io(_) | RpcError::Closed | RpcError::Decode(DecodeError::Truncated),
                ) => {
                    stream.reset();
                }
                Err(e) => {
                    stream.reset();
                    return Err(e);
                }
            }
        }
        let mut stream = self.open(peer).await?;
        match self.on_stream(&mut stream, msg).await {
            Ok(answer) => {
                self.put_idle(peer.id, stream);
                Ok(answer)
            }
            Err(e) => {
                stream.reset();
                Err(e)
            }
        }
    }

    async fn on_stream(&self, stream: &mut Stream, msg: &Message) -> Result<Message, RpcError> {
        write_message(stream, msg).await?;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let answer = read_message(stream, self.max_message)
            .await?
            .ok_or(RpcError::Closed)?;
        if answer.r#type != msg.r#type {
            return Err(RpcError::UnexpectedType {
                sent: msg.r#type,
                got: answer.r#type,
            });
        }
        if msg.kind() == Some(MessageType::PutValue) {
            let sent = msg.record.as_ref().map(|r| &r.value);
            let echoed = answer.record.as_ref().map(|r| &r.value);
            if sent != echoed {
                return Err(RpcError::Mismatch);
            }
        }
        Ok(answer)
    }
}
