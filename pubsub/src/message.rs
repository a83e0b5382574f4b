//! Messages: what applications see, their IDs, and signing and verification under the
//! signature policies of the pubsub spec.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use strata_core::{Keypair, PeerId, PublicKey};

use crate::proto::RawMessage;

/// A message's ID, as the configured [`MessageIdFn`] computes it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Bytes);

impl MessageId {
    /// The ID's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId(")?;
        for b in self.0.iter().take(16) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > 16 {
            write!(f, "..")?;
        }
        write!(f, ")")
    }
}

/// A message delivered to a subscriber or shown to a validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its ID.
    pub id: MessageId,
    /// The author, when the message names one (not under `StrictNoSign` or anonymous).
    pub source: Option<PeerId>,
    /// The payload.
    pub data: Bytes,
    /// The author's sequence number, when it has one.
    pub sequence_number: Option<u64>,
    /// The topic.
    pub topic: String,
    /// The peer it came from (our own ID for what we publish).
    pub received_from: PeerId,
}

/// Computes a message's ID from its wire form.
pub type MessageIdFn = Arc<dyn Fn(&RawMessage) -> MessageId + Send + Sync>;

/// go-libp2p's default ID: the author's peer ID bytes followed by the sequence number
/// bytes. A message with neither (`StrictNoSign`, anonymous) gets the SHA-256 of its
/// topic and data instead, so that distinct messages never share the empty ID (go and
/// rust-libp2p leave this to a user-set function).
pub fn default_message_id(msg: &RawMessage) -> MessageId {
    let (Some(from), Some(seqno)) = (msg.from.as_deref(), msg.seqno.as_deref()) else {
        return content_message_id(msg);
    };
    let mut id = Vec::with_capacity(from.len() + seqno.len());
    id.extend_from_slice(from);
    id.extend_from_slice(seqno);
    MessageId(Bytes::from(id))
}

/// A content-based ID: the SHA-256 of the topic and the data (for networks of unsigned
/// messages, where the same content is the same message).
pub fn content_message_id(msg: &RawMessage) -> MessageId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((msg.topic.len() as u64).to_be_bytes());
    h.update(msg.topic.as_bytes());
    h.update(msg.data.as_deref().unwrap_or_default());
    MessageId(Bytes::copy_from_slice(&h.finalize()))
}

/// rust-libp2p's default ID: the author's base58 peer ID followed by the sequence number
/// in decimal. Use it on a network whose other nodes are rust-libp2p with its default,
/// so gossip (IHAVE, IWANT, IDONTWANT) names the same messages on both sides.
pub fn rust_libp2p_message_id(msg: &RawMessage) -> MessageId {
    let source = msg
        .from
        .as_deref()
        .and_then(|b| PeerId::from_bytes(b).ok())
        .or_else(|| PeerId::from_bytes(&[0, 1, 0]).ok())
        .map(|p| p.to_base58())
        .unwrap_or_default();
    let seqno = msg.seqno.as_deref().and_then(seqno_of).unwrap_or(0);
    MessageId(Bytes::from(format!("{source}{seqno}")))
}

/// A sequence number's value (8 bytes, big-endian).
pub fn seqno_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// How messages are signed and which are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Ours carry author, sequence number and signature; others' must too, with a valid
    /// signature (the spec's default).
    StrictSign,
    /// Ours carry none of the three; others' must carry none.
    StrictNoSign,
    /// Ours carry none; others' are accepted either way, and a signature that is present
    /// is checked.
    Anonymous,
}

/// Why a message from the network is refused before it is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A field the policy requires is missing.
    #[error("message lacks {0}")]
    Missing(&'static str),
    /// A field the policy forbids is present.
    #[error("message carries {0}, which the policy forbids")]
    Forbidden(&'static str),
    /// The author is not a peer ID.
    #[error("message author is not a peer ID")]
    InvalidAuthor,
    /// The key does not decode, or does not belong to the author.
    #[error("message key does not belong to its author")]
    InvalidKey,
    /// The signature does not verify.
    #[error("invalid message signature")]
    InvalidSignature,
    /// The sequence number is not 8 bytes.
    #[error("message sequence number is not 8 bytes")]
    InvalidSeqno,
}

/// The public key of `peer` embedded in its ID (Ed25519 and secp256k1 IDs are identity
/// multihashes of the key).
fn key_in_peer_id(peer: &PeerId) -> Option<PublicKey> {
    // The multihash: code 0x00 (identity), a length of at most 127 bytes, the key.
    let bytes = peer.to_bytes();
    match bytes.as_slice() {
        [0, len, digest @ ..] if usize::from(*len) == digest.len() => {
            PublicKey::try_decode_protobuf(digest).ok()
        }
        _ => None,
    }
}

/// Checks `msg` against `policy`: its author (if any) and its signature.
pub fn verify(msg: &RawMessage, policy: SignaturePolicy) -> Result<Option<PeerId>, SignatureError> {
    match policy {
        SignaturePolicy::StrictNoSign => {
            for (name, field) in [
                ("an author", &msg.from),
                ("a sequence number", &msg.seqno),
                ("a signature", &msg.signature),
                ("a key", &msg.key),
            ] {
                if field.is_some() {
                    return Err(SignatureError::Forbidden(name));
                }
            }
            Ok(None)
        }
        SignaturePolicy::Anonymous if msg.signature.is_none() => {
            Ok(msg.from.as_deref().and_then(|f| PeerId::from_bytes(f).ok()))
        }
        _ => {
            let from = msg
                .from
                .as_deref()
                .ok_or(SignatureError::Missing("an author"))?;
            let author = PeerId::from_bytes(from).map_err(|_| SignatureError::InvalidAuthor)?;
            let seqno = msg
                .seqno
                .as_deref()
                .ok_or(SignatureError::Missing("a sequence number"))?;
            if seqno.len() != 8 {
                return Err(SignatureError::InvalidSeqno);
            }
            let signature = msg
                .signature
                .as_deref()
                .ok_or(SignatureError::Missing("a signature"))?;
            let key = match &msg.key {
                Some(k) => {
                    let key = PublicKey::try_decode_protobuf(k)
                        .map_err(|_| SignatureError::InvalidKey)?;
                    if key.to_peer_id() != author {
                        return Err(SignatureError::InvalidKey);
                    }
                    key
                }
                None => key_in_peer_id(&author).ok_or(SignatureError::Missing("a key"))?,
            };
            if key.verify(&msg.signing_bytes(), signature) {
                Ok(Some(author))
            } else {
                Err(SignatureError::InvalidSignature)
            }
        }
    }
}

/// A message of ours under `policy`: signed with `keypair` under `StrictSign`.
pub fn build(
    keypair: &Keypair,
    policy: SignaturePolicy,
    topic: &str,
    data: Bytes,
    seqno: u64,
) -> Result<RawMessage, strata_core::identity::SigningError> {
    let mut msg = RawMessage {
        data: Some(data),
        topic: topic.to_owned(),
        ..RawMessage::default()
    };
    if policy == SignaturePolicy::StrictSign {
        let author = keypair.public().to_peer_id();
        msg.from = Some(Bytes::from(author.to_bytes()));
        msg.seqno = Some(Bytes::copy_from_slice(&seqno.to_be_bytes()));
        msg.signature = Some(Bytes::from(keypair.sign(&msg.signing_bytes())?));
        if key_in_peer_id(&author).is_none() {
            msg.key = Some(Bytes::from(keypair.public().encode_protobuf()));
        }
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_verifies_and_any_change_breaks_it() {
        let key = Keypair::generate_ed25519();
        let msg = build(
            &key,
            SignaturePolicy::StrictSign,
            "t",
            Bytes::from_static(b"x"),
            7,
        )
        .unwrap();
        assert_eq!(
            verify(&msg, SignaturePolicy::StrictSign),
            Ok(Some(key.public().to_peer_id()))
        );
        let mut changed = msg.clone();
        changed.data = Some(Bytes::from_static(b"y"));
        assert_eq!(
            verify(&changed, SignaturePolicy::StrictSign),
            Err(SignatureError::InvalidSignature)
        );
        // Another author's ID on the same signature.
        let mut other = msg.clone();
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        other.from = Some(Bytes::from(stranger.to_bytes()));
        assert_eq!(
            verify(&other, SignaturePolicy::StrictSign),
            Err(SignatureError::InvalidSignature)
        );
        // A key that is not the author's.
        let mut wrong_key = msg.clone();
        wrong_key.key = Some(Bytes::from(
            Keypair::generate_ed25519().public().encode_protobuf(),
        ));
        assert_eq!(
            verify(&wrong_key, SignaturePolicy::StrictSign),
            Err(SignatureError::InvalidKey)
        );
        let mut unsigned = msg.clone();
        unsigned.signature = None;
        assert_eq!(
            verify(&unsigned, SignaturePolicy::StrictSign),
            Err(SignatureError::Missing("a signature"))
        );
        assert_eq!(
            verify(&msg, SignaturePolicy::StrictNoSign),
            Err(SignatureError::Forbidden("an author"))
        );
    }

    #[test]
    fn a_key_the_peer_id_does_not_embed_travels_with_the_message() {
        let key = Keypair::generate_ecdsa();
        let msg = build(
            &key,
            SignaturePolicy::StrictSign,
            "t",
            Bytes::from_static(b"x"),
            1,
        )
        .unwrap();
        assert_eq!(msg.key, Some(Bytes::from(key.public().encode_protobuf())));
        assert_eq!(
            verify(&msg, SignaturePolicy::StrictSign),
            Ok(Some(key.public().to_peer_id()))
        );
        let mut keyless = msg.clone();
        keyless.key = None;
        assert_eq!(
            verify(&keyless, SignaturePolicy::StrictSign),
            Err(SignatureError::Missing("a key"))
        );
        // An Ed25519 ID embeds its key: none is sent.
        let ed = Keypair::generate_ed25519();
        let msg = build(&ed, SignaturePolicy::StrictSign, "t", Bytes::new(), 1).unwrap();
        assert_eq!(msg.key, None);
    }

    #[test]
    fn ids_follow_go_and_rust_libp2p() {
        let key = Keypair::generate_ed25519();
        let author = key.public().to_peer_id();
        let msg = build(&key, SignaturePolicy::StrictSign, "t", Bytes::new(), 42).unwrap();
        let mut go = author.to_bytes();
        go.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(default_message_id(&msg).as_bytes(), &go[..]);
        assert_eq!(
            rust_libp2p_message_id(&msg).as_bytes(),
            format!("{}42", author.to_base58()).as_bytes()
        );
        let unsigned = build(&key, SignaturePolicy::StrictNoSign, "t", Bytes::new(), 1).unwrap();
        assert_eq!(unsigned.from, None);
        assert_eq!(verify(&unsigned, SignaturePolicy::StrictNoSign), Ok(None));
        // Unsigned messages are told apart by content.
        let other = build(
            &key,
            SignaturePolicy::StrictNoSign,
            "t",
            Bytes::from_static(b"x"),
            1,
        )
        .unwrap();
        assert_eq!(default_message_id(&unsigned).as_bytes().len(), 32);
        assert_ne!(default_message_id(&unsigned), default_message_id(&other));
    }
}
