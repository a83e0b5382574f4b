//! Message protocols: keep a channel to every peer that speaks a protocol, receive its
//! messages, and send to one peer, to a chosen set, or to everyone.
//!
//! For each connected peer that supports a registered protocol (identify says which do),
//! the host keeps one long-lived stream. The peer with the lower peer ID opens it, so two
//! peers that dial each other at the same moment still agree on one stream; if it breaks
//! while the connection lives, the opener opens it again. Messages are frames of an
//! unsigned-varint length and the message, at most `max_message_size`; a larger frame is
//! a typed error and resets that stream (the connection stays).
//!
//! Sending goes through a bounded queue per peer, written by one task per stream, so
//! messages to one peer arrive in order and a slow or dead peer holds up only its own
//! queue: [`Host::send`] waits for room, [`Host::try_send`] says `Full`.
//! [`Host::send_to`] waits for room in each queue at once; [`Host::broadcast`] never
//! waits (a peer whose queue is full gets `Full`).
//!
//! Callbacks run on one task per peer, in order: `connected`, then every `received`, then
//! `disconnected`. A slow handler delays only its own peer: the stream is not read while
//! it works, which holds the peer back by flow control.
//!
//! Memory: both queues of a peer are bounded in bytes (`max_queue_bytes` each way) as
//! well as in messages, and every queued byte is reserved from the resource manager: a
//! received message from its stream's scope, before its body is read (and as it
//! arrives, not as its prefix announced); a message waiting to be sent from a span of
//! the peer and the protocol. A received message that does not fit waits unread (the
//! remote is held back by flow control); one the scope refuses resets the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use strata_core::rcmgr::priority;
use strata_core::{PeerId, Reservation, ScopeMemory, SpanOwner, Stream};
use strata_swarm::DisconnectReason;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::HostError;
use crate::framing::{read_body_reserved, BodyError};
use crate::host::{serve_as, Host, MESSAGING_SERVICE};

/// Settings of one message protocol.
///
/// | field | default |
/// |---|---|
/// | `max_message_size` | 1 MiB |
/// | `queue_len` | 256 messages per peer, each way |
/// | `max_queue_bytes` | 4 MiB per peer, each way (at least `max_message_size`) |
/// | `reopen_backoff` | 100 ms before a broken stream is opened again |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageConfig {
    /// The largest message sent or accepted.
    pub max_message_size: usize,
    /// Messages that may wait to be written to one peer (and, received, for its handler).
    pub queue_len: usize,
    /// Bytes of messages that may wait to be written to one peer, and received from it
    /// for its handler; raised to `max_message_size` if below it.
    pub max_queue_bytes: usize,
    /// How long the opener waits before opening a broken stream again.
    pub reopen_backoff: Duration,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            max_message_size: 1024 * 1024,
            queue_len: 256,
            max_queue_bytes: 4 * 1024 * 1024,
            reopen_backoff: Duration::from_millis(100),
        }
    }
}

/// What a message protocol's application hears. Every method does nothing by default.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// The stream to `peer` is up: messages can flow.
    async fn connected(&self, _peer: PeerId) {}
    /// `peer` sent `message`.
    async fn received(&self, _peer: PeerId, _message: Bytes) {}
    /// The connection to `peer` is gone, for `reason`.
    async fn disconnected(&self, _peer: PeerId, _reason: DisconnectReason) {}
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No message protocol of that name is registered.
    #[error("no message protocol {0}")]
    UnknownProtocol(String),
    /// There is no stream to the peer for the protocol (not connected, or it does not
    /// speak it).
    #[error("no {protocol} stream to {peer}")]
    NotConnected {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: String,
    },
    /// The peer's queue is full ([`Host::try_send`], [`Host::broadcast`]).
    #[error("the queue to {0} is full")]
    Full(PeerId),
    /// The message is larger than the protocol allows.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The resource manager has no memory for the message in the peer's queue.
    #[error("no memory to queue the message: {0}")]
    Resource(strata_core::ResourceError),
}

/// A stream's frames broke the protocol or the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame announced more than `max_message_size` bytes.
    #[error("message frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid message length prefix")]
    InvalidLength,
    /// The stream's scope has no memory for the message.
    #[error("no memory for the message: {0}")]
    Resource(strata_core::ResourceError),
    /// The stream failed or ended inside a frame.
    #[error("message stream: {0}")]
    Io(#[from] std::io::Error),
}

/// One result per peer, as [`Host::send_to`] and [`Host::broadcast`] return them.
pub type PerPeer = Vec<(PeerId, Result<(), SendError>)>;

/// Counters of one protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// Messages queued for sending.
    pub messages_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Sends refused because a queue was full.
    pub queue_full: u64,
    /// Frames refused for being too large (received) or messages refused (sent).
    pub oversize: u64,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    queue_full: AtomicU64,
    oversize: AtomicU64,
}

/// Writes one frame: the unsigned-varint length, then the message.
pub async fn write_message<S>(stream: &mut S, message: &[u8]) -> std::io::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    let mut prefix = Vec::with_capacity(crate::varint::MAX_UVARINT_LEN);
    crate::varint::encode(message.len() as u64, &mut prefix);
    stream.write_all(&prefix).await?;
    stream.write_all(message).await
}

/// Reads one frame of at most `max` bytes; `None` at a clean end between frames. A length
/// above `max` is refused before anything is allocated for it, and the body's buffer
/// grows as its bytes arrive.
pub async fn read_message<S>(stream: &mut S, max: usize) -> Result<Option<Bytes>, FrameError>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    let Some(len) = read_message_len(stream, max).await? else {
        return Ok(None);
    };
    let (body, _held) = read_message_body(stream, len, &ScopeMemory::unlimited()).await?;
    Ok(Some(body))
}

/// Reads a frame's length prefix, checked against `max`; `None` at a clean end between
/// frames.
pub async fn read_message_len<S>(stream: &mut S, max: usize) -> Result<Option<usize>, FrameError>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    let len = match crate::varint::read(stream).await {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(crate::varint::PrefixError::Truncated) => {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
        }
        Err(crate::varint::PrefixError::Invalid) => return Err(FrameError::InvalidLength),
        Err(crate::varint::PrefixError::Io(e)) => return Err(e.into()),
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len as usize))
}

/// Reads a frame's body of `len` bytes (from [`read_message_len`]), reserving it from
/// `memory` as it arrives; the reservation goes with the bytes.
pub async fn read_message_body<S>(
    stream: &mut S,
    len: usize,
    memory: &ScopeMemory,
) -> Result<(Bytes, Reservation), FrameError>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    read_body_reserved(stream, len, memory)
        .await
        .map_err(|e| match e {
            BodyError::Resource(e) => FrameError::Resource(e),
            BodyError::Truncated => {
                FrameError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            }
            BodyError::Io(e) => FrameError::Io(e),
        })
}

/// A message in a queue, with the room it takes (in the queue's byte bound) and the
/// memory reserved for it; both go when the message leaves the queue.
struct Queued {
    message: Bytes,
    _room: OwnedSemaphorePermit,
    _held: Reservation,
}

/// Reads the next message for the handler's queue: waits (reading nothing, which holds
/// the remote back) until the queue has room for its announced length, then reads its
/// body, reserved from `memory` as it arrives.
async fn read_queued<S>(
    stream: &mut S,
    max: usize,
    room: &Arc<Semaphore>,
    memory: &ScopeMemory,
) -> Result<Option<Queued>, FrameError>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    let Some(len) = read_message_len(stream, max).await? else {
        return Ok(None);
    };
    let room = room
        .clone()
        .acquire_many_owned(u32::try_from(len).unwrap_or(u32::MAX))
        .await
        .map_err(|_| FrameError::Io(std::io::ErrorKind::BrokenPipe.into()))?;
    let (message, held) = read_message_body(stream, len, memory).await?;
    Ok(Some(Queued {
        message,
        _room: room,
        _held: held,
    }))
}

/// What the per-peer callback task delivers, in order (after `connected`, which starts
/// it).
enum Callback {
    Received(Queued),
    Disconnected(DisconnectReason),
}

/// One peer's session on one protocol.
struct Session {
    tx: mpsc::Sender<Queued>,
    /// The queue's receiving end, taken by the writer of the current stream.
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    /// Bytes the outgoing queue may still take.
    out_room: Arc<Semaphore>,
    /// Where messages waiting to be sent are reserved: the peer's, for this protocol.
    out_memory: ScopeMemory,
    callbacks: mpsc::Sender<Callback>,
    /// Bytes of received messages the handler may still have waiting.
    in_room: Arc<Semaphore>,
    /// Ends the current stream's reader and writer (when a newer stream replaces it).
    stream_cancel: Mutex<CancellationToken>,
    /// Ends everything of the session.
    cancel: CancellationToken,
}

/// One registered protocol.
struct Proto {
    name: String,
    config: MessageConfig,
    handler: Arc<dyn MessageHandler>,
    sessions: Mutex<HashMap<PeerId, Arc<Session>>>,
    /// Peers whose stream we are opening now.
    opening: Mutex<std::collections::HashSet<PeerId>>,
    counters: Counters,
}

/// The room a message takes in a queue's byte bound (`prepare` checked it against the
/// protocol's limit, which fits the bound).
fn room_for(message: &Bytes) -> u32 {
    u32::try_from(message.len()).unwrap_or(u32::MAX)
}

impl Session {
    /// A message to send, with its room in the queue: reserves its bytes from the peer's
    /// memory.
    fn queue(&self, message: Bytes, room: OwnedSemaphorePermit) -> Result<Queued, SendError> {
        let held = self
            .out_memory
            .reserve(message.len(), priority::ALWAYS)
            .map_err(SendError::Resource)?;
        Ok(Queued {
            message,
            _room: room,
            _held: held,
        })
    }

    /// True while a stream carries the session.
    fn has_live_stream(&self) -> bool {
        !self
            .stream_cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_cancelled()
    }
}

impl Proto {
    fn session(&self, peer: &PeerId) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }
}

/// The host's message protocols.
#[derive(Default)]
pub(crate) struct Messaging {
    protocols: RwLock<HashMap<String, Arc<Proto>>>,
}

impl Messaging {
    fn get(&self, protocol: &str) -> Option<Arc<Proto>> {
        self.protocols
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(protocol)
            .cloned()
    }

    fn all(&self) -> Vec<Arc<Proto>> {
        self.protocols
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

impl Host {
    /// Registers a message protocol: announces it, serves its streams, and keeps one
    /// stream to every connected peer that speaks it (see the [module](crate::messaging)).
    pub fn add_message_protocol(
        &self,
        protocol: &str,
        config: MessageConfig,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<(), HostError> {
        let proto = Arc::new(Proto {
            name: protocol.to_owned(),
            config,
            handler,
            sessions: Mutex::new(HashMap::new()),
            opening: Mutex::new(Default::default()),
            counters: Counters::default(),
        });
        {
            let mut map = self
                .0
                .messaging
                .protocols
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if map.contains_key(protocol) {
                return Err(HostError::ProtocolExists(protocol.to_owned()));
            }
            map.insert(protocol.to_owned(), proto.clone());
        }
        let weak = Arc::downgrade(&self.0);
        let inbound = proto.clone();
        self.set_conn_handler(
            protocol,
            None,
            Arc::new(move |stream, conn| {
                let weak = weak.clone();
                let proto = inbound.clone();
                Box::pin(async move {
                    if let Some(inner) = weak.upgrade() {
                        Host(inner).attach(&proto, stream, conn.remote_peer());
                    }
                })
            }),
        );
        self.push_identify();
        // Peers already connected and known to speak it get their stream now.
        for peer in self.0.swarm.peers() {
            self.open_if_opener(&proto, peer);
        }
        Ok(())
    }

    /// Queues `message` for `peer`, waiting while its queue is full.
    pub async fn send(
        &self,
        peer: PeerId,
        protocol: &str,
        message: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let (proto, session, message) = self.prepare(peer, protocol, message.into())?;
        let len = message.len() as u64;
        let closed = || SendError::NotConnected {
            peer,
            protocol: protocol.to_owned(),
        };
        let room = session
            .out_room
            .clone()
            .acquire_many_owned(room_for(&message))
            .await
            .map_err(|_| closed())?;
        let queued = session.queue(message, room)?;
        session.tx.send(queued).await.map_err(|_| closed())?;
        proto.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
        proto.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Queues `message` for `peer` if its queue has room; `Full` if not.
    pub fn try_send(
        &self,
        peer: PeerId,
        protocol: &str,
        message: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        let (proto, session, message) = self.prepare(peer, protocol, message.into())?;
        let len = message.len() as u64;
        let room = match session
            .out_room
            .clone()
            .try_acquire_many_owned(room_for(&message))
        {
            Ok(room) => room,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                proto.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(SendError::Full(peer));
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(SendError::NotConnected {
                    peer,
                    protocol: protocol.to_owned(),
                })
            }
        };
        match session.tx.try_send(session.queue(message, room)?) {
            Ok(()) => {
                proto.counters.messages_sent.fetch_add(1, Ordering::Relaxed);
                proto.counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                proto.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                Err(SendError::Full(peer))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::NotConnected {
                peer,
                protocol: protocol.to_owned(),
            }),
        }
    }

    /// Queues `message` for each of `peers`, waiting for room in every queue at once (a
    /// full queue holds up only its own peer); one result per peer.
    pub async fn send_to(
        &self,
        peers: &[PeerId],
        protocol: &str,
        message: impl Into<Bytes>,
    ) -> PerPeer {
        let message = message.into();
        let sends = peers.iter().map(|&peer| {
            let message = message.clone();
            async move { (peer, self.send(peer, protocol, message).await) }
        });
        futures::future::join_all(sends).await
    }

    /// Queues `message` for every peer with a stream on `protocol` that `filter` accepts,
    /// without waiting: a peer whose queue is full gets `Full`. One result per peer.
    pub fn broadcast(
        &self,
        protocol: &str,
        message: impl Into<Bytes>,
        filter: impl Fn(&PeerId) -> bool,
    ) -> Result<PerPeer, SendError> {
        let proto = self
            .0
            .messaging
            .get(protocol)
            .ok_or_else(|| SendError::UnknownProtocol(protocol.to_owned()))?;
        let message = message.into();
        let peers: Vec<PeerId> = proto
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .filter(|p| filter(p))
            .collect();
        Ok(peers
            .into_iter()
            .map(|peer| (peer, self.try_send(peer, protocol, message.clone())))
            .collect())
    }

    /// The peers with a stream on `protocol` now.
    pub fn message_peers(&self, protocol: &str) -> Vec<PeerId> {
        self.0.messaging.get(protocol).map_or_else(Vec::new, |p| {
            p.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect()
        })
    }

    /// The counters of `protocol`.
    pub fn message_stats(&self, protocol: &str) -> Option<MessageStats> {
        let p = self.0.messaging.get(protocol)?;
        let c = &p.counters;
        Some(MessageStats {
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            messages_received: c.messages_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed),
            oversize: c.oversize.load(Ordering::Relaxed),
        })
    }

    fn prepare(
        &self,
        peer: PeerId,
        protocol: &str,
        message: Bytes,
    ) -> Result<(Arc<Proto>, Arc<Session>, Bytes), SendError> {
        let proto = self
            .0
            .messaging
            .get(protocol)
            .ok_or_else(|| SendError::UnknownProtocol(protocol.to_owned()))?;
        if message.len() > proto.config.max_message_size {
            proto.counters.oversize.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::TooLarge {
                len: message.len(),
                max: proto.config.max_message_size,
            });
        }
        let session = proto
            .session(&peer)
            .ok_or_else(|| SendError::NotConnected {
                peer,
                protocol: protocol.to_owned(),
            })?;
        Ok((proto, session, message))
    }

    /// Identify told us what `peer` speaks: open the streams we are to open.
    pub(crate) fn messaging_identified(&self, peer: PeerId) {
        for proto in self.0.messaging.all() {
            self.open_if_opener(&proto, peer);
        }
    }

    /// The last connection to `peer` closed: its sessions end, and each handler hears it.
    pub(crate) fn messaging_disconnected(&self, peer: PeerId, reason: &DisconnectReason) {
        for proto in self.0.messaging.all() {
            let session = proto
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
            if let Some(session) = session {
                session.cancel.cancel();
                // Queued after every `received`: the callback task delivers it last and
                // ends. Waits only if the handler is behind by a whole queue.
                let callbacks = session.callbacks.clone();
                let reason = reason.clone();
                let cancel = self.0.cancel.clone();
                self.0.tasks.spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = callbacks.send(Callback::Disconnected(reason)) => {}
                    }
                });
            }
        }
    }

    /// Opens the stream to `peer` if we are the opener (the lower peer ID), it speaks
    /// the protocol, and no stream is up or being opened.
    fn open_if_opener(&self, proto: &Arc<Proto>, peer: PeerId) {
        if self.0.cancel.is_cancelled() || self.id() >= peer {
            return;
        }
        if !self
            .peerstore()
            .supports_protocols(&peer, &[proto.name.as_str()])
            .contains(&proto.name)
        {
            return;
        }
        if proto.session(&peer).is_some_and(|s| s.has_live_stream()) {
            return;
        }
        if !proto
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer)
        {
            return;
        }
        let host = self.clone();
        let proto = proto.clone();
        self.0.tasks.spawn(async move {
            let protocols = [proto.name.as_str()];
            let opened = tokio::select! {
                _ = host.0.cancel.cancelled() => None,
                r = host.new_stream(peer, &protocols) => r.ok(),
            };
            proto
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&peer);
            match opened {
                Some(stream) => host.attach(&proto, stream, peer),
                None => tracing::debug!(%peer, protocol = %proto.name, "opening the message stream failed"),
            }
        });
    }

    /// Takes `stream` as the session's stream with `peer` (making the session if there is
    /// none), replacing any older one, and starts its reader and writer.
    fn attach(&self, proto: &Arc<Proto>, stream: Stream, peer: PeerId) {
        if self.0.cancel.is_cancelled() {
            return;
        }
        let (session, callbacks) = {
            let mut sessions = proto.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match sessions.get(&peer) {
                Some(s) => (s.clone(), None),
                None => {
                    let (tx, rx) = mpsc::channel(proto.config.queue_len.max(1));
                    let (cb_tx, cb_rx) = mpsc::channel(proto.config.queue_len.max(1));
                    let queue_bytes = proto
                        .config
                        .max_queue_bytes
                        .max(proto.config.max_message_size)
                        .min(Semaphore::MAX_PERMITS);
                    let owner = SpanOwner::peer(peer)
                        .with_protocol(proto.name.clone())
                        .with_service(MESSAGING_SERVICE);
                    let s = Arc::new(Session {
                        tx,
                        rx: Arc::new(tokio::sync::Mutex::new(rx)),
                        out_room: Arc::new(Semaphore::new(queue_bytes)),
                        out_memory: self.resource_manager().open_span(&owner),
                        callbacks: cb_tx,
                        in_room: Arc::new(Semaphore::new(queue_bytes)),
                        stream_cancel: Mutex::new(CancellationToken::new()),
                        cancel: self.0.cancel.child_token(),
                    });
                    sessions.insert(peer, s.clone());
                    (s, Some(cb_rx))
                }
            }
        };
        if let Some(callbacks) = callbacks {
            self.spawn_callbacks(proto.clone(), peer, callbacks);
        }
        // A newer stream replaces the older one: only one is read and written.
        let stream_cancel = session.cancel.child_token();
        let old = std::mem::replace(
            &mut *session
                .stream_cancel
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            stream_cancel.clone(),
        );
        old.cancel();
        if serve_as(&stream, MESSAGING_SERVICE).is_err() {
            stream_cancel.cancel();
            return;
        }
        // Received messages are reserved from the stream's scope as they arrive.
        let memory = stream.scope().memory().clone();
        let (mut reader, mut writer) = tokio::io::split(stream);
        // Writer: the queue, in order, onto this stream.
        let rx = session.rx.clone();
        let wcancel = stream_cancel.clone();
        self.0.tasks.spawn(async move {
            let mut rx = tokio::select! {
                _ = wcancel.cancelled() => return,
                rx = rx.lock() => rx,
            };
            loop {
                let queued = tokio::select! {
                    _ = wcancel.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                // Its room and memory go when it is written (or dropped).
                let wrote = tokio::select! {
                    _ = wcancel.cancelled() => break,
                    r = write_message(&mut writer, &queued.message) => r,
                };
                if wrote.is_err() {
                    wcancel.cancel();
                    break;
                }
            }
        });
        // Reader: frames to the callback task, in order; a broken stream is reopened.
        let host = self.clone();
        let proto = proto.clone();
        self.0.tasks.spawn(async move {
            let max = proto.config.max_message_size;
            loop {
                let frame = tokio::select! {
                    _ = stream_cancel.cancelled() => return,
                    f = read_queued(&mut reader, max, &session.in_room, &memory) => f,
                };
                match frame {
                    Ok(Some(queued)) => {
                        let len = queued.message.len() as u64;
                        proto.counters.messages_received.fetch_add(1, Ordering::Relaxed);
                        proto
                            .counters
                            .bytes_received
                            .fetch_add(len, Ordering::Relaxed);
                        tokio::select! {
                            _ = stream_cancel.cancelled() => return,
                            _ = session.callbacks.send(Callback::Received(queued)) => {}
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, FrameError::TooLarge { .. }) {
                            proto.counters.oversize.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(%peer, protocol = %proto.name, "message stream failed: {e}");
                        break;
                    }
                }
            }
            // Both halves go: the writer stops, and a stream dropped before either side
            // finished it is reset (the remote sees a reset; the connection stays).
            stream_cancel.cancel();
            drop(reader);
            // The stream broke while the connection may live: the opener opens a new one.
            tokio::select! {
                _ = session.cancel.cancelled() => return,
                _ = tokio::time::sleep(proto.config.reopen_backoff) => {}
            }
            if host.0.swarm.best_conn(&peer).is_some() {
                host.open_if_opener(&proto, peer);
            }
        });
    }

    /// The task that runs one peer's callbacks, in order, until `disconnected`.
    fn spawn_callbacks(&self, proto: Arc<Proto>, peer: PeerId, mut rx: mpsc::Receiver<Callback>) {
        let cancel = self.0.cancel.clone();
        self.0.tasks.spawn(async move {
            let handler = proto.handler.clone();
            let run = async {
                handler.connected(peer).await;
                while let Some(cb) = rx.recv().await {
                    match cb {
                        // Its room and memory go once the handler is done with it.
                        Callback::Received(queued) => {
                            handler.received(peer, queued.message.clone()).await;
                            drop(queued);
                        }
                        Callback::Disconnected(reason) => {
                            handler.disconnected(peer, reason).await;
                            return;
                        }
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = run => {}
            }
        });
    }
}
