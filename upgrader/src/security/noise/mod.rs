//! Noise ("/noise"): the libp2p Noise handshake, Noise_XX_25519_ChaChaPoly_SHA256.
//!
//! The XX pattern takes three messages: the initiator sends an ephemeral key, the
//! responder answers with its ephemeral and static keys plus its payload, and the
//! initiator finishes with its static key and payload. Each payload carries the libp2p
//! identity key and its signature over the Noise static key (see [`payload`]), which is
//! what ties the encrypted channel to a peer ID, and optionally the muxers offered for
//! early muxer negotiation. Afterwards [`NoiseStream`] encrypts the connection.

mod dh;
pub mod framed;
pub mod payload;

use async_trait::async_trait;
use strata_core::{BoxRawConn, Keypair, PeerId, SecurityError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use framed::NoiseStream;

use crate::security::{SecureTransport, Secured, SecurityScope};
use dh::{StaticKeyPair, StaticKeyResolver};
use framed::{encode_len, LEN_PREFIX, MAX_FRAME_LEN};
use payload::RemoteIdentity;
use strata_core::rcmgr::priority;

/// The protocol ID negotiated with multistream-select.
pub const PROTOCOL_ID: &str = "/noise";

/// The Noise protocol name; libp2p uses an empty prologue.
const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// Our static X25519 key and the identity's signature over it.
struct StaticIdentity {
    /// The private key, and its public key computed once (see [`dh`]).
    keys: StaticKeyPair,
    /// Our libp2p public key in protobuf form, as the payload carries it.
    identity_key: Vec<u8>,
    identity_sig: Vec<u8>,
}

/// The libp2p Noise security transport.
///
/// Each `NoiseTransport` has its own static X25519 key, generated in [`NoiseTransport::new`]
/// and signed by the libp2p identity, and uses it for every handshake it runs.
pub struct NoiseTransport {
    local_peer: PeerId,
    /// An error here (the OS RNG or the signer failed at construction) fails every
    /// handshake with it, so that construction itself cannot panic.
    statics: Result<StaticIdentity, String>,
}

impl std::fmt::Debug for NoiseTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseTransport")
            .field("local_peer", &self.local_peer)
            .finish_non_exhaustive()
    }
}

fn params() -> Result<snow::params::NoiseParams, SecurityError> {
    NOISE_PARAMS
        .parse()
        .map_err(|e| SecurityError::Handshake(format!("noise parameters: {e}")))
}

fn snow_err(stage: &str, e: snow::Error) -> SecurityError {
    SecurityError::Handshake(format!("{stage}: {e}"))
}

impl NoiseTransport {
    /// A Noise transport for `identity`, with a fresh static X25519 key.
    pub fn new(identity: Keypair) -> Self {
        let statics = params()
            .map_err(|e| e.to_string())
            .and_then(|p| {
                snow::Builder::new(p)
                    .generate_keypair()
                    .map_err(|e| format!("generating the noise static key failed: {e}"))
            })
            .and_then(|kp| {
                let private: [u8; 32] =
                    kp.private.as_slice().try_into().map_err(|_| {
                        format!("the noise static key has {} bytes", kp.private.len())
                    })?;
                let keys = StaticKeyPair::from_private(private);
                let identity_sig = payload::sign_static_key(&identity, &keys.public)?;
                Ok(StaticIdentity {
                    keys,
                    identity_key: identity.public().encode_protobuf(),
                    identity_sig,
                })
            });
        NoiseTransport {
            local_peer: identity.public().to_peer_id(),
            statics,
        }
    }

    /// Our peer ID.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    fn statics(&self) -> Result<&StaticIdentity, SecurityError> {
        self.statics
            .as_ref()
            .map_err(|e| SecurityError::Handshake(e.clone()))
    }

    fn builder<'a>(&self, statics: &'a StaticIdentity) -> Result<snow::Builder<'a>, SecurityError> {
        snow::Builder::with_resolver(params()?, Box::new(StaticKeyResolver::new(statics.keys)))
            .local_private_key(&statics.keys.private)
            .map_err(|e| snow_err("noise static key", e))
    }
}

/// The most a handshake message we send adds to its payload: an ephemeral key (32), an
/// encrypted static key (32 + 16) and the payload's tag (16).
const HANDSHAKE_OVERHEAD: usize = 96;

/// One handshake's buffers, each the size of the message at hand (a few hundred bytes,
/// not a whole Noise message's 64 KiB), reserved from the connection's memory before
/// they are allocated and released when the message is done.
struct HandshakeBufs<'a> {
    scope: &'a SecurityScope,
}

fn handshake_memory(e: strata_core::ResourceError) -> SecurityError {
    SecurityError::Handshake(format!("no memory for a noise handshake message: {e}"))
}

impl<'a> HandshakeBufs<'a> {
    fn new(scope: &'a SecurityScope) -> Self {
        HandshakeBufs { scope }
    }

    /// Writes the next handshake message, carrying `payload`, as one frame.
    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        hs: &mut snow::HandshakeState,
        payload: &[u8],
    ) -> Result<(), SecurityError> {
        let size =
            (LEN_PREFIX + payload.len() + HANDSHAKE_OVERHEAD).min(LEN_PREFIX + MAX_FRAME_LEN);
        let _held = self
            .scope
            .memory
            .reserve(size, priority::ALWAYS)
            .map_err(handshake_memory)?;
        let mut frame = vec![0u8; size];
        let len = hs
            .write_message(payload, &mut frame[LEN_PREFIX..])
            .map_err(|e| snow_err("writing a noise handshake message", e))?;
        frame[..LEN_PREFIX].copy_from_slice(&encode_len(len));
        io.write_all(&frame[..LEN_PREFIX + len]).await?;
        io.flush().await?;
        Ok(())
    }

    /// Reads the next handshake frame and returns the payload it decrypts to. The remote
    /// has then completed a handshake message: that is progress.
    ///
    /// It reads exactly one frame and nothing past it, so any transport data the peer
    /// sends right behind its last handshake message stays in `io` for the stream.
    async fn recv<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        hs: &mut snow::HandshakeState,
    ) -> Result<Vec<u8>, SecurityError> {
        let mut prefix = [0u8; LEN_PREFIX];
        io.read_exact(&mut prefix).await?;
        let len = usize::from(u16::from_be_bytes(prefix));
        if len == 0 {
            return Err(SecurityError::Handshake(
                "empty noise handshake frame".into(),
            ));
        }
        // The frame as it grows (at most twice its length), and the payload it decrypts
        // to (never longer).
        let _held = self
            .scope
            .memory
            .reserve(3 * len, priority::ALWAYS)
            .map_err(handshake_memory)?;
        let mut frame = Vec::new();
        // Grows as bytes arrive, not to what the prefix announced.
        (&mut *io).take(len as u64).read_to_end(&mut frame).await?;
        if frame.len() < len {
            return Err(SecurityError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut payload = vec![0u8; len];
        let n = hs
            .read_message(&frame, &mut payload)
            .map_err(|e| snow_err("reading a noise handshake message", e))?;
        payload.truncate(n);
        self.scope.progressed();
        Ok(payload)
    }
}

/// Checks the payload the remote sent against the static key the handshake proved.
fn verify_remote(
    hs: &snow::HandshakeState,
    payload: &[u8],
) -> Result<RemoteIdentity, SecurityError> {
    let remote_static = hs.get_remote_static().ok_or_else(|| {
        SecurityError::Handshake("the remote static key is missing after its message".into())
    })?;
    payload::decode_and_verify(payload, remote_static)
}

fn finish(
    io: BoxRawConn,
    hs: snow::HandshakeState,
    remote: RemoteIdentity,
    early_muxer: Option<String>,
    scope: &SecurityScope,
) -> Result<Secured, SecurityError> {
    let state = hs
        .into_transport_mode()
        .map_err(|e| snow_err("entering noise transport mode", e))?;
    Ok(Secured {
        io: Box::new(NoiseStream::with_memory(io, state, scope.memory.clone())),
        remote_peer: remote.peer_id,
        remote_public_key: remote.public_key,
        early_muxer,
    })
}

#[async_trait]
impl SecureTransport for NoiseTransport {
    fn protocol_id(&self) -> &'static str {
        PROTOCOL_ID
    }

    async fn secure_outbound_scoped(
        &self,
        mut io: BoxRawConn,
        expected: Option<PeerId>,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        let statics = self.statics()?;
        let mut hs = self
            .builder(statics)?
            .build_initiator()
            .map_err(|e| snow_err("starting the noise handshake", e))?;
        let mut bufs = HandshakeBufs::new(scope);

        // -> e
        bufs.send(&mut io, &mut hs, &[]).await?;
        // <- e, ee, s, es, payload
        let remote_payload = bufs.recv(&mut io, &mut hs).await?;
        let remote = verify_remote(&hs, &remote_payload)?;
        // Refuse the wrong peer before we send our own identity to it.
        if let Some(expected) = expected {
            if remote.peer_id != expected {
                return Err(SecurityError::PeerIdMismatch {
                    expected,
                    actual: remote.peer_id,
                });
            }
        }
        // -> s, se, payload
        let ours = payload::encode_payload(&statics.identity_key, &statics.identity_sig, muxers);
        bufs.send(&mut io, &mut hs, &ours).await?;

        let early_muxer = payload::select_muxer(muxers, &remote.muxers);
        finish(io, hs, remote, early_muxer, scope)
    }

    async fn secure_inbound_scoped(
        &self,
        mut io: BoxRawConn,
        muxers: &[String],
        scope: &SecurityScope,
    ) -> Result<Secured, SecurityError> {
        let statics = self.statics()?;
        let mut hs = self
            .builder(statics)?
            .build_responder()
            .map_err(|e| snow_err("starting the noise handshake", e))?;
        let mut bufs = HandshakeBufs::new(scope);

        // -> e (its payload is empty by the spec; anything there is ignored)
        bufs.recv(&mut io, &mut hs).await?;
        // <- e, ee, s, es, payload
        let ours = payload::encode_payload(&statics.identity_key, &statics.identity_sig, muxers);
        bufs.send(&mut io, &mut hs, &ours).await?;
        // -> s, se, payload
        let remote_payload = bufs.recv(&mut io, &mut hs).await?;
        let remote = verify_remote(&hs, &remote_payload)?;

        let early_muxer = payload::select_muxer(&remote.muxers, muxers);
        finish(io, hs, remote, early_muxer, scope)
    }
}
