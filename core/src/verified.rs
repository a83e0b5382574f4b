//! Signatures verified lately, remembered by the exact bytes that carried them.
//!
//! A peer that reconnects presents the same credentials again: the same TLS certificate,
//! or the same Noise payload over the same static key. Checking their signatures is most
//! of a handshake's CPU after the key exchange, and the answer for the same bytes never
//! changes, so each cache here remembers the public key that a byte string proved.
//! Only the very bytes that passed are taken, compared whole; an entry may carry a
//! validity window (a certificate's), checked again on every hit.
//!
//! Bounded: a fixed number of entries, the oldest going first, and a size limit on what
//! is remembered, so that a stranger's padded credentials (before they proved anything)
//! cannot pin memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::PublicKey;

struct Entry {
    key: PublicKey,
    not_before: i64,
    not_after: i64,
}

#[derive(Default)]
struct Entries {
    by_bytes: HashMap<Arc<[u8]>, Entry>,
    order: VecDeque<Arc<[u8]>>,
}

/// A bounded, process-wide cache of verified credentials (see the module docs). Meant for
/// a `static`: [`VerifiedCache::new`] is `const`.
pub struct VerifiedCache {
    capacity: usize,
    max_len: usize,
    entries: Mutex<Option<Entries>>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl VerifiedCache {
    /// At most `capacity` entries of at most `max_len` bytes each.
    pub const fn new(capacity: usize, max_len: usize) -> Self {
        VerifiedCache {
            capacity,
            max_len,
            entries: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Entries>> {
        // A panic elsewhere while holding the lock leaves the map consistent (every
        // mutation below is a single call): keep using it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key that exactly `bytes` proved, if remembered and within its validity now.
    pub fn lookup(&self, bytes: &[u8]) -> Option<PublicKey> {
        let entries = self.lock();
        let entry = entries.as_ref()?.by_bytes.get(bytes)?;
        let now = now();
        (entry.not_before <= now && now <= entry.not_after).then(|| entry.key.clone())
    }

    /// Remembers that `bytes` proved `key`, valid from `not_before` to `not_after`
    /// (seconds since the Unix epoch). Too large an input is not remembered.
    pub fn insert(&self, bytes: &[u8], key: &PublicKey, not_before: i64, not_after: i64) {
        if bytes.len() > self.max_len || self.capacity == 0 {
            return;
        }
        let mut guard = self.lock();
        let entries = guard.get_or_insert_with(Entries::default);
        if entries.by_bytes.contains_key(bytes) {
            return;
        }
        if entries.order.len() >= self.capacity {
            if let Some(oldest) = entries.order.pop_front() {
                entries.by_bytes.remove(&oldest);
            }
        }
        let bytes: Arc<[u8]> = bytes.into();
        entries.order.push_back(bytes.clone());
        entries.by_bytes.insert(
            bytes,
            Entry {
                key: key.clone(),
                not_before,
                not_after,
            },
        );
    }

    /// Remembers that `bytes` proved `key`, with no validity window of its own.
    pub fn insert_forever(&self, bytes: &[u8], key: &PublicKey) {
        self.insert(bytes, key, i64::MIN, i64::MAX);
    }

    /// How many entries are remembered.
    pub fn len(&self) -> usize {
        self.lock().as_ref().map_or(0, |e| e.order.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn only_the_exact_bytes_within_their_window_are_served() {
        let cache = VerifiedCache::new(4, 64);
        let key = Keypair::generate_ed25519().public();
        cache.insert(b"expired", &key, 0, 1);
        assert_eq!(cache.lookup(b"expired"), None);
        cache.insert_forever(b"current", &key);
        assert_eq!(cache.lookup(b"current"), Some(key.clone()));
        assert_eq!(cache.lookup(b"curren"), None);
        assert_eq!(cache.lookup(b"current!"), None);
        // Too large to remember: it cannot pin memory.
        cache.insert_forever(&[7u8; 65], &key);
        assert_eq!(cache.lookup(&[7u8; 65]), None);
    }

    #[test]
    fn the_oldest_entry_goes_first_at_capacity() {
        let cache = VerifiedCache::new(2, 64);
        let key = Keypair::generate_ed25519().public();
        cache.insert_forever(b"one", &key);
        cache.insert_forever(b"two", &key);
        cache.insert_forever(b"two", &key);
        assert_eq!(cache.len(), 2);
        cache.insert_forever(b"three", &key);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.lookup(b"one"), None);
        assert!(cache.lookup(b"two").is_some() && cache.lookup(b"three").is_some());
    }
}
