//! The libp2p Noise handshake payload: its protobuf messages, the signature that binds the
//! Noise static key to the libp2p identity, and early muxer selection.
//!
//! Everything here is a pure function over bytes so that unit tests and fuzzers can drive
//! it without a socket.

use prost::Message;
use strata_core::verified::VerifiedCache;
use strata_core::{Keypair, PeerId, PublicKey, SecurityError};

/// What the identity key signs, followed by the 32-byte X25519 static public key.
pub const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";

/// The `NoiseExtensions` protobuf message of the libp2p Noise spec.
#[derive(Clone, PartialEq, Message)]
pub struct NoiseExtensions {
    /// Certificate hashes, used by WebTransport only; carried but never acted on here.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub webtransport_certhashes: Vec<Vec<u8>>,
    /// Stream muxer protocol IDs for early muxer negotiation, in the sender's preference order.
    #[prost(string, repeated, tag = "2")]
    pub stream_muxers: Vec<String>,
}

/// The `NoiseHandshakePayload` protobuf message that rides in handshake messages 2 and 3.
#[derive(Clone, PartialEq, Message)]
pub struct NoiseHandshakePayload {
    /// The sender's libp2p public key, in the libp2p `PublicKey` protobuf encoding.
    #[prost(bytes = "vec", tag = "1")]
    pub identity_key: Vec<u8>,
    /// The identity key's signature over [`STATIC_KEY_DOMAIN`] ‖ the sender's static key.
    #[prost(bytes = "vec", tag = "2")]
    pub identity_sig: Vec<u8>,
    /// Optional extensions (early muxer negotiation).
    #[prost(message, optional, tag = "4")]
    pub extensions: Option<NoiseExtensions>,
}

/// The bytes the identity key signs for a given X25519 static public key.
pub fn static_key_message(static_public: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(STATIC_KEY_DOMAIN.len() + static_public.len());
    msg.extend_from_slice(STATIC_KEY_DOMAIN);
    msg.extend_from_slice(static_public);
    msg
}

/// Signs our static key with our identity, giving the `identity_sig` field.
pub fn sign_static_key(identity: &Keypair, static_public: &[u8]) -> Result<Vec<u8>, String> {
    identity
        .sign(&static_key_message(static_public))
        .map_err(|e| format!("signing the noise static key failed: {e}"))
}

/// Encodes our handshake payload. `muxers` goes into the extensions only when non-empty,
/// so a peer without muxers sends no extensions at all (as older implementations do).
pub fn encode_payload(identity_key: &[u8], identity_sig: &[u8], muxers: &[String]) -> Vec<u8> {
    let extensions = (!muxers.is_empty()).then(|| NoiseExtensions {
        webtransport_certhashes: Vec::new(),
        stream_muxers: muxers.to_vec(),
    });
    NoiseHandshakePayload {
        identity_key: identity_key.to_vec(),
        identity_sig: identity_sig.to_vec(),
        extensions,
    }
    .encode_to_vec()
}

/// What a verified remote payload proves.
#[derive(Debug, Clone)]
pub struct RemoteIdentity {
    /// The remote's libp2p public key.
    pub public_key: PublicKey,
    /// The peer ID derived from that key.
    pub peer_id: PeerId,
    /// The muxers the remote offered for early negotiation (empty when it offered none).
    pub muxers: Vec<String>,
}

/// Identities proved lately: a peer that reconnects sends the same identity key and
/// signature over the same static key, and its key is decoded and its signature checked
/// once. Ed25519, secp256k1 and ECDSA keys with their signatures fit in 512 bytes; RSA
/// proofs are larger and checked every time.
static VERIFIED: VerifiedCache = VerifiedCache::new(512, 512);

/// The exact bytes of a proof, unambiguous: the identity key with its length, then the
/// static key (always 32 bytes in Noise_XX_25519) and the signature.
fn proof_bytes(identity_key: &[u8], remote_static: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + identity_key.len() + remote_static.len() + sig.len());
    out.extend_from_slice(&(identity_key.len() as u64).to_be_bytes());
    out.extend_from_slice(identity_key);
    out.extend_from_slice(&(remote_static.len() as u64).to_be_bytes());
    out.extend_from_slice(remote_static);
    out.extend_from_slice(sig);
    out
}

/// Decodes the remote's payload and checks that its identity key signed `remote_static`,
/// the static key the Noise handshake authenticated.
///
/// Any malformed protobuf, missing or undecodable key, or bad signature is
/// [`SecurityError::InvalidPayload`].
pub fn decode_and_verify(
    payload: &[u8],
    remote_static: &[u8],
) -> Result<RemoteIdentity, SecurityError> {
    let decoded = NoiseHandshakePayload::decode(payload)
        .map_err(|e| SecurityError::InvalidPayload(format!("not a noise payload: {e}")))?;
    if decoded.identity_key.is_empty() {
        return Err(SecurityError::InvalidPayload(
            "the payload carries no identity key".into(),
        ));
    }
    if decoded.identity_sig.is_empty() {
        return Err(SecurityError::InvalidPayload(
            "the payload carries no identity signature".into(),
        ));
    }
    let proof = proof_bytes(&decoded.identity_key, remote_static, &decoded.identity_sig);
    let public_key = match VERIFIED.lookup(&proof) {
        Some(key) => key,
        None => {
            let key = PublicKey::try_decode_protobuf(&decoded.identity_key)
                .map_err(|e| SecurityError::InvalidPayload(format!("bad identity key: {e}")))?;
            if !key.verify(&static_key_message(remote_static), &decoded.identity_sig) {
                return Err(SecurityError::InvalidPayload(
                    "the identity signature does not cover the noise static key".into(),
                ));
            }
            VERIFIED.insert_forever(&proof, &key);
            key
        }
    };
    Ok(RemoteIdentity {
        peer_id: public_key.to_peer_id(),
        public_key,
        muxers: decoded
            .extensions
            .map(|ext| ext.stream_muxers)
            .unwrap_or_default(),
    })
}

/// The early muxer: the first muxer in the initiator's list that the responder also lists.
///
/// The inlined-muxer-negotiation spec says the initiator's order wins, and go-libp2p does
/// the same; both sides call this with the same arguments so they agree. No overlap (or a
/// side that offered nothing) gives `None`, and the upgrader falls back to a
/// multistream-select round, as go-libp2p does, rather than failing the handshake.
pub fn select_muxer(initiator: &[String], responder: &[String]) -> Option<String> {
    initiator
        .iter()
        .find(|m| responder.iter().any(|r| r == *m))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn payload_round_trip_verifies() {
        let id = Keypair::generate_ed25519();
        let static_key = [7u8; 32];
        let sig = sign_static_key(&id, &static_key).unwrap();
        let bytes = encode_payload(
            &id.public().encode_protobuf(),
            &sig,
            &strings(&["/yamux/1.0.0"]),
        );
        let remote = decode_and_verify(&bytes, &static_key).unwrap();
        assert_eq!(remote.peer_id, id.public().to_peer_id());
        assert_eq!(remote.public_key, id.public());
        assert_eq!(remote.muxers, strings(&["/yamux/1.0.0"]));
    }

    #[test]
    fn a_proved_identity_is_remembered_only_for_its_exact_proof() {
        let id = Keypair::generate_ed25519();
        let static_key = [9u8; 32];
        let sig = sign_static_key(&id, &static_key).unwrap();
        let key = id.public().encode_protobuf();
        let bytes = encode_payload(&key, &sig, &[]);
        assert_eq!(
            decode_and_verify(&bytes, &static_key).unwrap().public_key,
            id.public()
        );
        assert_eq!(
            VERIFIED.lookup(&proof_bytes(&key, &static_key, &sig)),
            Some(id.public())
        );
        // Seen again (a reconnection): the same identity, from the cache.
        assert_eq!(
            decode_and_verify(&bytes, &static_key).unwrap().public_key,
            id.public()
        );
        // The same payload over another static key, or with a flipped signature bit, is
        // not served from the cache: it is checked, and refused.
        assert!(decode_and_verify(&bytes, &[8u8; 32]).is_err());
        let mut bad_sig = sig.clone();
        bad_sig[0] ^= 1;
        let altered = encode_payload(&key, &bad_sig, &[]);
        assert!(decode_and_verify(&altered, &static_key).is_err());
        assert_eq!(
            VERIFIED.lookup(&proof_bytes(&key, &static_key, &bad_sig)),
            None
        );
    }

    #[test]
    fn payload_without_muxers_has_no_extensions() {
        let id = Keypair::generate_ed25519();
        let sig = sign_static_key(&id, &[1u8; 32]).unwrap();
        let bytes = encode_payload(&id.public().encode_protobuf(), &sig, &[]);
        let decoded = NoiseHandshakePayload::decode(bytes.as_slice()).unwrap();
        assert!(decoded.extensions.is_none());
        assert!(decode_and_verify(&bytes, &[1u8; 32])
            .unwrap()
            .muxers
            .is_empty());
    }

    #[test]
    fn signature_over_another_static_key_is_refused() {
        let id = Keypair::generate_ed25519();
        let sig = sign_static_key(&id, &[1u8; 32]).unwrap();
        let bytes = encode_payload(&id.public().encode_protobuf(), &sig, &[]);
        assert!(matches!(
            decode_and_verify(&bytes, &[2u8; 32]),
            Err(SecurityError::InvalidPayload(_))
        ));
    }

    #[test]
    fn missing_or_garbage_fields_are_invalid_payloads() {
        let id = Keypair::generate_ed25519();
        let key = id.public().encode_protobuf();
        let sig = sign_static_key(&id, &[1u8; 32]).unwrap();
        for bytes in [
            encode_payload(&[], &sig, &[]),
            encode_payload(&key, &[], &[]),
            encode_payload(&[0xff; 40], &sig, &[]),
            vec![0xff, 0xff, 0xff],
            // Field 1, length-delimited, claims 100 bytes but has 1.
            vec![0x0a, 100, 0],
        ] {
            assert!(
                matches!(
                    decode_and_verify(&bytes, &[1u8; 32]),
                    Err(SecurityError::InvalidPayload(_))
                ),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn muxer_selection_follows_the_initiator() {
        let yamux_first = strings(&["/yamux/1.0.0", "/mplex/6.7.0"]);
        let mplex_first = strings(&["/mplex/6.7.0", "/yamux/1.0.0"]);
        assert_eq!(
            select_muxer(&yamux_first, &mplex_first).as_deref(),
            Some("/yamux/1.0.0")
        );
        assert_eq!(
            select_muxer(&mplex_first, &yamux_first).as_deref(),
            Some("/mplex/6.7.0")
        );
        assert_eq!(
            select_muxer(&strings(&["/a"]), &strings(&["/mplex/6.7.0", "/a"])).as_deref(),
            Some("/a")
        );
        assert_eq!(select_muxer(&yamux_first, &[]), None);
        assert_eq!(select_muxer(&[], &yamux_first), None);
        assert_eq!(select_muxer(&strings(&["/a"]), &strings(&["/b"])), None);
    }
}
