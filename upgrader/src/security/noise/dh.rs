//! snow's crypto with our static X25519 public key known in advance.
//!
//! snow derives the public half of the static key from the private half at the start of
//! every handshake: a base-point multiplication, about a twentieth of a Noise connection's
//! CPU. A transport's static key never changes, so the transport computes the public half
//! once and hands both to snow through [`StaticKeyResolver`]. Everything else is snow's
//! own: ephemeral keys and the Diffie-Hellman itself are the same curve25519-dalek calls
//! its default resolver makes, and the cipher, hash and RNG come from its ring and
//! default resolvers as before.

use curve25519_dalek::montgomery::MontgomeryPoint;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

const KEY_LEN: usize = 32;

/// A static X25519 key pair: the private key and its public key, computed once.
#[derive(Clone, Copy)]
pub(crate) struct StaticKeyPair {
    pub(crate) private: [u8; KEY_LEN],
    pub(crate) public: [u8; KEY_LEN],
}

impl StaticKeyPair {
    /// The pair for `private` (clamped when used, as X25519 does).
    pub(crate) fn from_private(private: [u8; KEY_LEN]) -> Self {
        StaticKeyPair {
            private,
            public: MontgomeryPoint::mul_base_clamped(private).to_bytes(),
        }
    }
}

/// snow's resolvers (ring first, then the pure-Rust defaults), with an X25519 that knows
/// one static key pair.
pub(crate) struct StaticKeyResolver {
    known: StaticKeyPair,
    others: FallbackResolver,
}

impl StaticKeyResolver {
    pub(crate) fn new(known: StaticKeyPair) -> Self {
        StaticKeyResolver {
            known,
            others: FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver)),
        }
    }
}

impl CryptoResolver for StaticKeyResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.others.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                known: self.known,
                private: [0; KEY_LEN],
                public: [0; KEY_LEN],
            })),
            other => self.others.resolve_dh(other),
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        self.others.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        self.others.resolve_cipher(choice)
    }
}

/// X25519 as snow's default resolver does it, except that setting the known private
/// key takes the known public key instead of deriving it.
struct X25519 {
    known: StaticKeyPair,
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

/// Equality without an early exit on the first differing byte.
fn same_key(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut private = [0u8; KEY_LEN];
        let n = privkey.len().min(KEY_LEN);
        private[..n].copy_from_slice(&privkey[..n]);
        self.private = private;
        self.public = if same_key(&private, &self.known.private) {
            self.known.public
        } else {
            MontgomeryPoint::mul_base_clamped(private).to_bytes()
        };
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut private = [0u8; KEY_LEN];
        rng.try_fill_bytes(&mut private)?;
        self.private = private;
        self.public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow's own resolver asserts on a short key; an error is the better answer.
        let theirs: [u8; KEY_LEN] = pubkey
            .get(..KEY_LEN)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = MontgomeryPoint(theirs).mul_clamped(self.private).to_bytes();
        out.get_mut(..KEY_LEN)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(&shared);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snow_dh() -> Box<dyn Dh> {
        DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .expect("snow's X25519")
    }

    fn ours(known: StaticKeyPair) -> Box<dyn Dh> {
        StaticKeyResolver::new(known)
            .resolve_dh(&DHChoice::Curve25519)
            .expect("our X25519")
    }

    /// The known key gives the known public key; any other key, and generated ones,
    /// give what snow's own X25519 gives; shared secrets agree with snow's both ways.
    #[test]
    fn agrees_with_snows_own_x25519() {
        for _ in 0..16 {
            let (a, b): ([u8; 32], [u8; 32]) = (rand::random(), rand::random());
            let known = StaticKeyPair::from_private(a);
            let mut reference = snow_dh();
            reference.set(&a);
            assert_eq!(known.public.as_slice(), reference.pubkey());

            let mut mine = ours(known);
            mine.set(&a);
            assert_eq!(mine.pubkey(), reference.pubkey(), "the known key");
            let mut other = ours(known);
            other.set(&b);
            let mut theirs = snow_dh();
            theirs.set(&b);
            assert_eq!(other.pubkey(), theirs.pubkey(), "another key");

            let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
            mine.dh(theirs.pubkey(), &mut ab).unwrap();
            theirs.dh(mine.pubkey(), &mut ba).unwrap();
            assert_eq!(ab, ba, "one shared secret");
            assert_ne!(ab, [0; 32]);

            let mut rng = StaticKeyResolver::new(known).resolve_rng().expect("rng");
            let mut fresh = ours(known);
            fresh.generate(&mut *rng).unwrap();
            let mut check = snow_dh();
            check.set(fresh.privkey());
            assert_eq!(fresh.pubkey(), check.pubkey(), "a generated key");
        }
    }

    #[test]
    fn short_keys_are_errors_not_panics() {
        let dh = ours(StaticKeyPair::from_private([7; 32]));
        let mut out = [0u8; 32];
        assert!(matches!(dh.dh(&[1; 31], &mut out), Err(snow::Error::Dh)));
        let mut short_out = [0u8; 16];
        assert!(matches!(
            dh.dh(&[9; 32], &mut short_out),
            Err(snow::Error::Dh)
        ));
    }
}
