//! Peer identity: key pairs, public keys and peer IDs.
//!
//! The types come from `libp2p-identity` so that a Strata peer ID is byte-for-byte the one
//! rust-libp2p, go-libp2p and js-libp2p compute. Strata generates Ed25519 keys by default
//! and accepts Ed25519, ECDSA (P-256), secp256k1 and RSA public keys from remote peers.

pub use libp2p_identity::{DecodingError, KeyType, Keypair, PeerId, PublicKey, SigningError};

/// Generates a fresh Ed25519 key pair, the default identity of a Strata node.
pub fn generate_ed25519() -> Keypair {
    Keypair::generate_ed25519()
}

/// Derives a deterministic Ed25519 key pair from a small seed, for tests and the CLI.
///
/// The 32-byte secret is the seed in little-endian order followed by zeros, so seeds
/// below 256 give the same keys as the `bytes[0] = seed` convention used by the
/// rust-libp2p examples. Never use a seeded key for a node that matters: anyone who
/// knows the seed owns the identity.
pub fn keypair_from_seed(seed: u64) -> Keypair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    // The secret is exactly 32 bytes, the only length `ed25519_from_bytes` refuses otherwise.
    Keypair::ed25519_from_bytes(secret).expect("a 32-byte array is a valid ed25519 secret")
}

/// The peer ID of [`keypair_from_seed`]`(seed)`.
pub fn peer_id_from_seed(seed: u64) -> PeerId {
    keypair_from_seed(seed).public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Ed25519 public key and peer ID from the libp2p TLS spec's first test vector.
    const SPEC_ED25519_PUBLIC_KEY_PROTOBUF: &str =
        "08011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b9";
    const SPEC_ED25519_PEER_ID: &str = "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn spec_ed25519_public_key_gives_spec_peer_id() {
        let key = PublicKey::try_decode_protobuf(&hex(SPEC_ED25519_PUBLIC_KEY_PROTOBUF)).unwrap();
        assert_eq!(key.key_type(), KeyType::Ed25519);
        assert_eq!(key.to_peer_id().to_base58(), SPEC_ED25519_PEER_ID);
    }

    #[test]
    fn peer_id_text_round_trip() {
        let id = generate_ed25519().public().to_peer_id();
        let text = id.to_string();
        assert!(
            text.starts_with("12D3KooW"),
            "ed25519 peer IDs are identity multihashes: {text}"
        );
        let parsed: PeerId = text.parse().unwrap();
        assert_eq!(parsed, id);
        let spec: PeerId = SPEC_ED25519_PEER_ID.parse().unwrap();
        assert_eq!(spec.to_string(), SPEC_ED25519_PEER_ID);
    }

    #[test]
    fn bad_peer_id_text_is_an_error() {
        assert!("12D3KooWnotapeerid".parse::<PeerId>().is_err());
        assert!("".parse::<PeerId>().is_err());
    }

    #[test]
    fn seeded_keys_are_stable_and_distinct() {
        let a = keypair_from_seed(1).public().to_peer_id();
        assert_eq!(a, keypair_from_seed(1).public().to_peer_id());
        assert_ne!(a, keypair_from_seed(2).public().to_peer_id());
        // Pinned so that a change of derivation (which would change every CLI peer ID) fails here.
        assert_eq!(
            keypair_from_seed(0).public().to_peer_id().to_string(),
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
        );
    }

    #[test]
    fn generated_keys_are_ed25519_and_sign() {
        let key = generate_ed25519();
        assert_eq!(key.key_type(), KeyType::Ed25519);
        let sig = key.sign(b"strata").unwrap();
        assert!(key.public().verify(b"strata", &sig));
        assert!(!key.public().verify(b"other", &sig));
    }
}
