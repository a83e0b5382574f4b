//! Positions in the Kademlia keyspace: the SHA-256 digest of a key's bytes (a record's
//! key, a CID's multihash, a peer ID's bytes), compared by XOR distance, as every libp2p
//! implementation does.

use sha2::{Digest, Sha256};
use strata_core::PeerId;

/// A position in the keyspace: 256 bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KadKey([u8; 32]);

/// The XOR distance between two positions; smaller is closer (compared as a big-endian
/// number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 32]);

impl KadKey {
    /// The position of arbitrary key bytes: their SHA-256.
    pub fn from_bytes(key: &[u8]) -> Self {
        KadKey(Sha256::digest(key).into())
    }

    /// The position of a peer: the SHA-256 of its peer ID's bytes (the multihash).
    pub fn from_peer(peer: &PeerId) -> Self {
        Self::from_bytes(&peer.to_bytes())
    }

    /// A position given as its 32 bytes.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        KadKey(digest)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &KadKey) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// How many leading bits this and `other` share (256 for the same position).
    pub fn common_prefix_len(&self, other: &KadKey) -> usize {
        self.distance(other).leading_zeros()
    }
}

impl std::fmt::Debug for KadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KadKey(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Distance {
    /// Leading zero bits: the common prefix length of the two positions.
    pub fn leading_zeros(&self) -> usize {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                n += b.leading_zeros() as usize;
                break;
            }
        }
        n
    }
}

/// Random key bytes whose position shares exactly `cpl` leading bits with `around`: the
/// target of a lookup that refreshes bucket `cpl`. Found by trying random keys (about
/// 2^(cpl+1) tries), so `cpl` must be small; refreshes stop at [`MAX_REFRESH_CPL`].
pub fn random_key_with_cpl(around: &KadKey, cpl: usize) -> Vec<u8> {
    let cpl = cpl.min(MAX_REFRESH_CPL);
    loop {
        if let Some(key) = try_random_key_with_cpl(around, cpl, usize::MAX) {
            return key;
        }
    }
}

/// As [`random_key_with_cpl`] for any `cpl`, giving up after `max_tries` random keys.
pub fn try_random_key_with_cpl(around: &KadKey, cpl: usize, max_tries: usize) -> Option<Vec<u8>> {
    (0..max_tries).find_map(|_| {
        let candidate: [u8; 32] = rand::random();
        (KadKey::from_bytes(&candidate).common_prefix_len(around) == cpl)
            .then(|| candidate.to_vec())
    })
}

/// Buckets past this common prefix length are not refreshed by random lookups (go-libp2p
/// stops at 15 too): finding a key for them costs too many tries, and the lookup of our
/// own ID covers the closest buckets.
pub const MAX_REFRESH_CPL: usize = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_xor_and_orders_big_endian() {
        let a = KadKey([0u8; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x40;
        let b = KadKey(b);
        let mut c = [0u8; 32];
        c[31] = 0xff;
        let c = KadKey(c);
        assert!(a.distance(&c) < a.distance(&b));
        assert_eq!(a.common_prefix_len(&b), 1);
        assert_eq!(a.common_prefix_len(&c), 248);
        assert_eq!(a.common_prefix_len(&a), 256);
        assert_eq!(a.distance(&b), b.distance(&a));
    }

    #[test]
    fn refresh_keys_land_in_their_bucket() {
        let me = KadKey::from_bytes(b"me");
        for cpl in [0, 1, 5, 10] {
            let key = random_key_with_cpl(&me, cpl);
            assert_eq!(KadKey::from_bytes(&key).common_prefix_len(&me), cpl);
        }
    }

    #[test]
    fn a_peer_sits_at_the_hash_of_its_id_bytes() {
        let peer = strata_core::identity::keypair_from_seed(3)
            .public()
            .to_peer_id();
        let expected: [u8; 32] = Sha256::digest(peer.to_bytes()).into();
        assert_eq!(KadKey::from_peer(&peer).as_bytes(), &expected);
    }
}
